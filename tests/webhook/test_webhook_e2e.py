"""End to end: the emulator's admission chain calls the running webhook over HTTPS.

The webhook runs as in a cluster: it bootstraps its certificate into the Secret,
patches ``caBundle`` into the gpumix webhook configurations, and reviews against
its list+watch cache of the emulator.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML
from webhook_kit import (
    deployment,
    hpa,
    namespace,
    node,
    pod_autoscaler,
    scaled_object,
    serve_app,
    webhook_configuration,
)

from gpumix.emulator import Emulator
from gpumix.kube.objects import ObjectRef
from gpumix.kubeio.client import KubeClient
from gpumix.webhook.runtime import Built, build
from gpumix.webhook.settings import CacheSettings, TLSSettings, WebhookSettings

TESTS = Path(__file__).resolve().parents[1]
FIXTURES = TESTS / "fixtures" / "aibrix"
CRDS = TESTS / "e2e" / "crds"
A100, A40 = "NVIDIA-A100-SXM4-80GB", "NVIDIA-A40"
Obj = dict[str, Any]


def load_yaml(path: Path) -> list[Obj]:
    return [d for d in YAML(typ="safe").load_all(path.read_text()) if d]


async def until(pred: Callable[[], bool], timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


@dataclass
class Stack:
    emu: Emulator
    built: Built

    @property
    def snapshot(self) -> Any:
        assert self.built.cache is not None
        return self.built.cache.snapshot

    async def create(self, obj: Obj, *, dry_run: bool = False) -> tuple[int, Obj, list[str]]:
        group, _, version = obj["apiVersion"].rpartition("/")
        prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
        plural = {
            "Deployment": "deployments",
            "HorizontalPodAutoscaler": "horizontalpodautoscalers",
            "ScaledObject": "scaledobjects",
            "PodAutoscaler": "podautoscalers",
        }[obj["kind"]]
        ns = obj["metadata"].get("namespace", "default")
        query = {"dryRun": "All"} if dry_run else {}
        resp = await self.emu.request(
            "POST", f"{prefix}/namespaces/{ns}/{plural}", copy.deepcopy(obj), query=query
        )
        return resp.status, resp.body, resp.warnings

    async def cached(self, obj: Obj) -> None:
        """Wait until the webhook's cache has seen ``obj`` (watch latency)."""
        meta = obj["metadata"]
        ref = ObjectRef(obj["kind"], meta.get("namespace", "default"), meta["name"])
        table = (
            self.snapshot.deployments
            if obj["kind"] == "Deployment"
            else (self.snapshot.autoscalers)
        )
        await until(lambda: ref in table)


@pytest.fixture
def tls_settings() -> TLSSettings:
    return TLSSettings(extra_sans=("127.0.0.1",))


@pytest.fixture
async def stack(tls_settings: TLSSettings) -> AsyncIterator[Stack]:
    emu = Emulator(bookmark_interval_s=0.2)
    emu.create(namespace("gpumix-system"))
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        emu.create(webhook_configuration(kind))
    for path in sorted(CRDS.glob("*.yaml")):
        for doc in load_yaml(path):
            emu.create(doc)
    emu.create(namespace("audit-ns", labels={"gpumix.io/mode": "audit"}))
    emu.create(namespace("warn-ns", labels={"gpumix.io/mode": "warn"}))
    emu.create(namespace("capped", annotations={"gpumix.io/default-max-replicas": "7"}))
    emu.create(namespace("iso"))
    emu.create(node("a100-node", A100, 8))
    emu.create(node("a40-node", A40, 4))
    await emu.start()
    client = await KubeClient.connect(str(emu.kubeconfig()))
    settings = WebhookSettings(
        tls=tls_settings,
        cache=CacheSettings(backoff_initial_s=0.05, backoff_max_s=0.5, discovery_interval_s=1),
    )
    built = await build(settings, client=client)
    try:
        async with built, serve_app(built.server, built.ssl_context) as url:
            port = int(url.rsplit(":", 1)[1])
            emu.service_resolver = lambda ns, name, _port, path: f"https://127.0.0.1:{port}{path}"
            assert built.cache is not None and await built.cache.wait_synced(10)
            assert built.certs.loaded
            yield Stack(emu, built)
    finally:
        await client.close()
        await emu.stop()


def pinned(obj: Obj, product: str) -> Obj:
    obj = copy.deepcopy(obj)
    obj["spec"]["template"]["spec"]["nodeSelector"] = {"nvidia.com/gpu.product": product}
    return obj


def aibrix_pair(name: str, ns: str = "default") -> tuple[Obj, Obj, list[Obj]]:
    docs = load_yaml(FIXTURES / name)
    deps = [d for d in docs if d["kind"] == "Deployment"]
    scalers = [d for d in docs if d["kind"] != "Deployment"]
    for d in docs:
        d["metadata"]["namespace"] = ns
    a100 = pinned(next(d for d in deps if d["metadata"]["name"].endswith("a100")), A100)
    a40 = pinned(next(d for d in deps if d["metadata"]["name"].endswith("a40")), A40)
    return a100, a40, scalers


def calls(stack: Stack, name: str) -> list[Any]:
    return [c for c in stack.emu.admission_log if c.name == name]


# --------------------------------------------------------------------------- Deployments


@pytest.mark.parametrize("first", ["a100", "a40"])
async def test_aibrix_pair_is_admitted_and_isolated_on_the_first_try(
    stack: Stack, first: str
) -> None:
    """Both select by the model label alone: the first is isolated at CREATE, while its
    selector can still change, so the second is fixed too; no recreate, either order."""
    a100, a40, _ = aibrix_pair("heterogeneous-before.yaml")
    pair = [a100, a40] if first == "a100" else [a40, a100]
    for obj in pair:
        status, body, warnings = await stack.create(obj)
        assert status == 201, body
        name = obj["metadata"]["name"]
        assert any(
            f"gpumix fixed selector-overlap on Deployment default/{name}" in w for w in warnings
        )
        await stack.cached(obj)
    for obj, product in ((a100, A100), (a40, A40)):
        name = obj["metadata"]["name"]
        stored = stack.emu.get("deployments", name, "default")
        assert stored is not None
        assert stored["spec"]["selector"]["matchLabels"] == {
            **obj["spec"]["selector"]["matchLabels"],
            "gpumix.io/deployment": name,
        }
        assert stored["spec"]["template"]["metadata"]["labels"]["gpumix.io/gpu-type"] == product


async def test_aibrix_pair_with_a_broad_one_from_before_is_denied_and_told_to_recreate(
    stack: Stack,
) -> None:
    """The A100 Deployment was created before gpumix was installed (straight into the
    store, no admission): its broad selector is immutable, so the A40 one is denied."""
    a100, a40, _ = aibrix_pair("heterogeneous-before.yaml")
    stack.emu.create(a100)
    await stack.cached(a100)
    status, body, _ = await stack.create(a40)
    assert status == 403, body
    message = body["message"]
    assert 'admission webhook "validate.gpumix.io" denied the request' in message
    assert "simulator-llama2-7b-a40" in message and "simulator-llama2-7b-a100" in message
    assert "model.aibrix.ai/name=simulator-llama2-7b" in message
    assert "immutable" in message and "recreate" in message
    assert stack.emu.get("deployments", "simulator-llama2-7b-a40", "default") is None
    # the mutating webhook saw it and did not pretend to fix it
    mutate = [c for c in calls(stack, "simulator-llama2-7b-a40") if c.phase == "mutating"]
    assert mutate and all(c.outcome == "allowed" for c in mutate)


async def test_aibrix_pair_is_fixed_when_the_existing_one_is_isolated(stack: Stack) -> None:
    a100, a40, _ = aibrix_pair("heterogeneous-before.yaml", "iso")
    name = a100["metadata"]["name"]
    a100["spec"]["selector"]["matchLabels"]["gpumix.io/deployment"] = name
    a100["spec"]["template"]["metadata"]["labels"]["gpumix.io/deployment"] = name
    assert (await stack.create(a100))[0] == 201
    await stack.cached(a100)
    status, body, warnings = await stack.create(a40)
    assert status == 201, body
    stored = stack.emu.get("deployments", "simulator-llama2-7b-a40", "iso")
    assert stored is not None
    sel = stored["spec"]["selector"]["matchLabels"]
    assert sel["gpumix.io/deployment"] == "simulator-llama2-7b-a40"
    labels = stored["spec"]["template"]["metadata"]["labels"]
    assert labels["gpumix.io/deployment"] == "simulator-llama2-7b-a40"
    assert labels["gpumix.io/gpu-type"] == A40
    assert any("gpumix fixed selector-overlap" in w for w in warnings)


async def test_disjoint_pair_is_admitted_untouched(stack: Stack) -> None:
    a100, a40, _ = aibrix_pair("heterogeneous-after.yaml")
    for obj in (a100, a40):
        status, body, warnings = await stack.create(obj)
        assert status == 201, body
        assert body["spec"]["selector"] == obj["spec"]["selector"]
        assert (
            body["spec"]["template"]["metadata"]["labels"]
            == (obj["spec"]["template"]["metadata"]["labels"])
        )
        assert not warnings
        await stack.cached(obj)
    for c in stack.emu.admission_log:
        assert c.outcome == "allowed" and not (c.response or {}).get("patch")


async def test_update_changing_the_selector_is_refused(stack: Stack) -> None:
    """The API server validates (selector immutable) before validating webhooks run,
    so the user sees its 422; gpumix's own explanation is covered in the server tests."""
    dep = deployment("web", "iso", model=None, gpus=0, selector={"app": "web"})
    assert (await stack.create(dep))[0] == 201
    current = stack.emu.get("deployments", "web", "iso")
    assert current is not None
    current["spec"]["selector"]["matchLabels"]["tier"] = "x"
    current["spec"]["template"]["metadata"]["labels"]["tier"] = "x"
    resp = await stack.emu.request("PUT", "/apis/apps/v1/namespaces/iso/deployments/web", current)
    assert resp.status == 422 and "immutable" in resp.body["message"]
    mutating = [c for c in calls(stack, "web") if c.operation == "UPDATE"]
    assert mutating and all(c.outcome == "allowed" for c in mutating)


# --------------------------------------------------------------------------- autoscalers


async def test_hpa_v2_without_max_replicas_gets_the_default(stack: Stack) -> None:
    status, body, warnings = await stack.create(hpa("plain", "no-such-deployment"))
    assert status == 201, body
    assert body["spec"]["maxReplicas"] == 10
    assert any("missing-max-replicas" in w for w in warnings)
    status, body, _ = await stack.create(hpa("capped", "x", None, "capped"))
    assert status == 201 and body["spec"]["maxReplicas"] == 7


async def test_default_ceiling_is_capped_by_gpu_capacity(stack: Stack) -> None:
    target = deployment("llm-a40", "iso", gpu_product=A40, gpus=2, model="big")
    assert (await stack.create(target))[0] == 201
    await stack.cached(target)
    status, body, _ = await stack.create(hpa("llm", "llm-a40", None, "iso"))
    assert status == 201 and body["spec"]["maxReplicas"] == 2  # 4 A40 GPUs / 2 per replica


async def test_keda_scaled_object_without_max_replica_count_gets_the_default(
    stack: Stack,
) -> None:
    status, body, _ = await stack.create(scaled_object("so", "target"))
    assert status == 201, body
    assert body["spec"]["maxReplicaCount"] == 10
    stored = stack.emu.get("scaledobjects.keda.sh", "so", "default")
    assert stored is not None and stored["spec"]["maxReplicaCount"] == 10


async def test_over_ceiling_pod_autoscaler_is_denied(stack: Stack) -> None:
    status, body, _ = await stack.create(pod_autoscaler("pa", "target", 500))
    assert status == 403
    assert "max-replicas-above-ceiling" in body["message"] and "100" in body["message"]
    target = deployment("llm-a40", "iso", gpu_product=A40, gpus=1, model="m")
    assert (await stack.create(target))[0] == 201
    await stack.cached(target)
    status, body, _ = await stack.create(pod_autoscaler("pa2", "llm-a40", 6, "iso"))
    assert status == 403 and "the pool of NVIDIA-A40 GPUs holds 4" in body["message"]
    status, _, _ = await stack.create(pod_autoscaler("pa3", "llm-a40", 4, "iso"))
    assert status == 201


# --------------------------------------------------------------------------- modes


async def test_audit_mode_allows_and_records(stack: Stack) -> None:
    a100, a40, _ = aibrix_pair("heterogeneous-before.yaml", "audit-ns")
    assert (await stack.create(a100))[0] == 201
    await stack.cached(a100)
    status, body, warnings = await stack.create(a40)
    assert status == 201 and not warnings
    assert body["spec"]["selector"] == a40["spec"]["selector"]
    # not fixed in audit mode: the API server itself then refuses an HPA without a ceiling,
    status, body, _ = await stack.create(hpa("h", "x", None, "audit-ns"))
    assert status == 422 and "spec.maxReplicas" in body["message"]
    # and a ScaledObject (where the field is optional) is stored as sent
    status, body, warnings = await stack.create(scaled_object("so", "x", None, "audit-ns"))
    assert status == 201 and "maxReplicaCount" not in body["spec"] and not warnings
    text = stack.built.state.metrics.render()[0].decode()
    assert 'gpumix_admission_findings_total{mode="audit",rule="selector-overlap"' in text


async def test_warn_mode_allows_and_warns(stack: Stack) -> None:
    a100, a40, _ = aibrix_pair("heterogeneous-before.yaml", "warn-ns")
    assert (await stack.create(a100))[0] == 201
    await stack.cached(a100)
    status, body, warnings = await stack.create(a40)
    assert status == 201, body
    assert any(w.startswith("selector-overlap:") for w in warnings)
    assert body["spec"]["selector"] == a40["spec"]["selector"]
    status, body, warnings = await stack.create(pod_autoscaler("pa", "t", 500, "warn-ns"))
    assert status == 201 and any("max-replicas-above-ceiling" in w for w in warnings)


async def test_exempt_namespace_is_untouched(stack: Stack) -> None:
    status, body, warnings = await stack.create(scaled_object("so", "t", None, "kube-system"))
    assert status == 201 and "maxReplicaCount" not in body["spec"] and not warnings
    status, body, _ = await stack.create(pod_autoscaler("pa", "t", 500, "kube-system"))
    assert status == 201


async def test_dry_run_gets_the_same_answer_and_stores_nothing(stack: Stack) -> None:
    status, body, _ = await stack.create(hpa("dry", "x"), dry_run=True)
    assert status == 201 and body["spec"]["maxReplicas"] == 10
    assert stack.emu.get("horizontalpodautoscalers", "dry", "default") is None
    a100, a40, _ = aibrix_pair("heterogeneous-before.yaml")
    stack.emu.create(a100)  # a broad one from before gpumix: the A40 one is denied
    await stack.cached(a100)
    dry = await stack.create(a40, dry_run=True)
    wet = await stack.create(a40)
    assert dry[0] == wet[0] == 403
    assert dry[1]["message"] == wet[1]["message"]
    assert stack.emu.get("deployments", "simulator-llama2-7b-a40", "default") is None
    # a fix is shown by the dry run exactly as it is stored
    a40["metadata"]["namespace"] = "iso"
    dry = await stack.create(a40, dry_run=True)
    assert stack.emu.get("deployments", "simulator-llama2-7b-a40", "iso") is None
    wet = await stack.create(a40)
    assert dry[0] == wet[0] == 201
    assert dry[1]["spec"]["selector"] == wet[1]["spec"]["selector"]
    assert "gpumix.io/deployment" in wet[1]["spec"]["selector"]["matchLabels"]


async def test_ca_bundle_and_secret_are_in_place(stack: Stack) -> None:
    secret = stack.emu.get("secrets", "gpumix-webhook-tls", "gpumix-system")
    assert secret is not None and secret["type"] == "kubernetes.io/tls"
    for plural in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
        config = stack.emu.get(plural, "gpumix")
        assert config is not None
        for hook in config["webhooks"]:
            assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]


# --------------------------------------------------------------------------- rotation


# A lifetime of 304 s with a 300 s backdated start makes a rotation due every ~2 s. The
# grace (from writing a new caBundle to presenting the new certificate) is the time a
# call that read the previous caBundle has to connect; it must stay well below the
# rotation interval, or the presented certificate would fall out of the bundle.
FAST_ROTATION = TLSSettings(
    extra_sans=("127.0.0.1",),
    lifetime_s=304,
    rotate_fraction=0.5,
    check_interval_s=3600,
    reload_grace_s=0.6,
)


@pytest.mark.parametrize("tls_settings", [FAST_ROTATION])
async def test_rotation_through_the_admission_chain_loses_no_request(stack: Stack) -> None:
    """The API server side (the emulator) reads caBundle from the configuration on each
    call; the webhook rotates several times while requests keep coming."""
    certs = stack.built.certs
    served: set[bytes] = set()
    statuses: list[int] = []
    done = asyncio.Event()

    async def client(i: int) -> None:
        for n in range(1000):  # bounded; stops when rotation is over
            if done.is_set():
                return
            status, body, _ = await stack.create(hpa(f"h{i}-{n}", "x"), dry_run=True)
            statuses.append(status)
            assert status == 201, body.get("message")
            assert body["spec"]["maxReplicas"] == 10

    clients = [asyncio.create_task(client(i)) for i in range(8)]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30  # bounded: about 7 s on an idle machine
    while loop.time() < deadline:
        await certs.refresh()
        served.add(certs.holder.cert_pem)
        if len(served) >= 4:
            break
        await asyncio.sleep(0.03)
    done.set()
    await asyncio.wait_for(asyncio.gather(*clients), 30)
    assert len(served) >= 3, "the certificate did not rotate"
    assert statuses and all(s == 201 for s in statuses)
