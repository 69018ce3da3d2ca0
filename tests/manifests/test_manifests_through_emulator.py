"""The rendered install manifests applied to the API emulator, then workloads.

The objects of an overlay are created through the emulator's API (defaulting,
validation and admission as kube-apiserver does them; kinds it does not serve, such as
RBAC and PodDisruptionBudgets, are left out), in kustomize's order. Then the real
webhook (``webhook.runtime.build``) runs against the emulator with the overlay's policy:
it bootstraps its certificate and writes the ``caBundle`` into the configurations that
came from the manifests. So every call below takes the path a cluster's would: the
rendered rules, namespaceSelector, matchPolicy, failurePolicy and timeout decide what is
sent, and the webhook decides the answer.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from aiohttp import web
from manifest_objects import NAMESPACE, REPO_ROOT, Obj, Rendered

from gpumix.emulator import Emulator
from gpumix.kube.objects import ObjectRef
from gpumix.kube.policy import Policy, policy_from_mapping
from gpumix.kubeio.client import KubeClient
from gpumix.webhook.runtime import Built, build
from gpumix.webhook.settings import CacheSettings, TLSSettings, WebhookSettings

AUTOSCALER_CRDS = REPO_ROOT / "tests" / "e2e" / "crds"
A100, L20 = "NVIDIA-A100-SXM4-80GB", "NVIDIA-L20"
TEAM = "team"


def api_path(obj: Obj, emu: Emulator, *, subresource: str = "", named: bool = False) -> str:
    rt = emu.registry.for_kind(obj["apiVersion"], obj["kind"])
    assert rt is not None, obj["kind"]
    prefix = f"/apis/{obj['apiVersion']}" if rt.group else f"/api/{obj['apiVersion']}"
    ns = obj["metadata"].get("namespace", "default")
    path = f"{prefix}/namespaces/{ns}/{rt.plural}" if rt.namespaced else f"{prefix}/{rt.plural}"
    if named or subresource:
        path += f"/{obj['metadata']['name']}"
    return f"{path}/{subresource}" if subresource else path


async def apply_rendered(emu: Emulator, objects: list[Obj]) -> list[str]:
    """POST every object the emulator serves; return the kinds left out."""
    skipped = []
    for obj in objects:
        if emu.registry.for_kind(obj["apiVersion"], obj["kind"]) is None:
            skipped.append(obj["kind"])
            continue
        resp = await emu.request("POST", api_path(obj, emu), copy.deepcopy(obj))
        assert resp.status == 201, (obj["kind"], obj["metadata"]["name"], resp.body)
    return skipped


def policy_of(objects: list[Obj]) -> Policy:
    cm = next(o for o in objects if o["metadata"]["name"].startswith("gpumix-policy-"))
    return policy_from_mapping(yaml.safe_load(cm["data"]["policy.yaml"]))


def namespace(name: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def gpu_node(name: str, product: str, gpus: int) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product}},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}},
    }


def model_deployment(name: str, ns: str, product: str, model: str = "llama") -> Obj:
    """One per-GPU-type Deployment of a model whose selector names only the model."""
    labels = {"model.aibrix.ai/name": model}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": dict(labels)},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "nodeSelector": {"nvidia.com/gpu.product": product},
                    "containers": [
                        {
                            "name": "engine",
                            "image": "engine:1",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }
                    ],
                },
            },
        },
    }


def hpa(name: str, ns: str, target: str, version: str = "v2", ceiling: int | None = None) -> Obj:
    spec: Obj = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
        "minReplicas": 1,
    }
    if ceiling is not None:
        spec["maxReplicas"] = ceiling
    return {
        "apiVersion": f"autoscaling/{version}",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


async def until(pred: Callable[[], bool], timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


@dataclass
class Cluster:
    emu: Emulator
    policy: Policy
    built: Built | None = None

    async def cached(self, obj: Obj) -> None:
        """Wait until the webhook's watch cache has seen ``obj``."""
        assert self.built is not None and self.built.cache is not None
        cache = self.built.cache
        meta = obj["metadata"]
        ref = ObjectRef(obj["kind"], meta["namespace"], meta["name"])
        await until(lambda: ref in cache.snapshot.deployments)

    async def post(self, obj: Obj, **query: str) -> Any:
        return await self.emu.request(
            "POST", api_path(obj, self.emu), copy.deepcopy(obj), query=query
        )

    def calls(self, name: str) -> list[Any]:
        return [c for c in self.emu.admission_log if c.name == name]


async def new_emulator(objects: list[Obj]) -> Emulator:
    emu = Emulator(bookmark_interval_s=0.2)
    assert emu.get("namespaces", "kube-system") is not None
    for path in sorted(AUTOSCALER_CRDS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                emu.create(doc)
    emu.create(namespace(TEAM))
    emu.create(gpu_node("a100-node", A100, 8))
    emu.create(gpu_node("l20-node", L20, 8))
    await emu.start()
    skipped = await apply_rendered(emu, objects)
    assert set(skipped) <= {
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "PodDisruptionBudget",
    }
    return emu


@pytest.fixture
async def enforce(rendered: Rendered) -> AsyncIterator[Cluster]:
    """The enforce overlay applied, and the webhook serving with its policy."""
    objects = rendered["enforce"]
    emu = await new_emulator(objects)
    policy = policy_of(objects)
    client = await KubeClient.connect(str(emu.kubeconfig()))
    settings = WebhookSettings(
        policy=policy,
        tls=TLSSettings(namespace=NAMESPACE, extra_sans=("127.0.0.1",)),
        cache=CacheSettings(backoff_initial_s=0.05, backoff_max_s=0.5, discovery_interval_s=1),
    )
    built: Built | None = None
    runner: web.ServerRunner | None = None
    try:
        built = await build(settings, client=client)
        await built.start()
        runner = web.ServerRunner(built.server)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=built.ssl_context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        emu.service_resolver = lambda _ns, _name, _port, path: f"https://127.0.0.1:{port}{path}"
        assert built.cache is not None and await built.cache.wait_synced(10)
        for kind in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
            config = emu.get(kind, "gpumix")
            assert config is not None and config["webhooks"][0]["clientConfig"].get("caBundle")
        yield Cluster(emu, policy, built)
    finally:
        if runner is not None:
            await runner.cleanup()
        if built is not None:
            await built.stop()
        await client.close()
        await emu.stop()


async def test_overlapping_gpu_deployments_are_isolated_or_refused(enforce: Cluster) -> None:
    """Through the shipped configurations: one model on two GPU types is isolated on the
    first try; a broad one stored before gpumix (no admission) makes the next refused."""
    first = model_deployment("llama-a100", TEAM, A100)
    resp = await enforce.post(first)
    assert resp.status == 201, resp.body
    await enforce.cached(first)
    second = model_deployment("llama-l20", TEAM, L20)
    resp = await enforce.post(second)
    assert resp.status == 201, resp.body
    for name in ("llama-a100", "llama-l20"):
        stored = enforce.emu.get("deployments", name, TEAM)
        assert stored is not None
        assert stored["spec"]["selector"]["matchLabels"]["gpumix.io/deployment"] == name

    broad = model_deployment("mistral-a100", TEAM, A100, model="mistral")
    enforce.emu.create(broad)
    await enforce.cached(broad)
    resp = await enforce.post(model_deployment("mistral-l20", TEAM, L20, model="mistral"))
    assert resp.status == 403, resp.body
    assert 'admission webhook "validate.gpumix.io" denied the request' in resp.body["message"]
    assert enforce.emu.get("deployments", "mistral-l20", TEAM) is None


async def test_missing_ceiling_gets_the_policy_default(enforce: Cluster) -> None:
    resp = await enforce.post(hpa("web", TEAM, "web"))
    assert resp.status == 201, resp.body
    assert resp.body["spec"]["maxReplicas"] == enforce.policy.default_max_replicas
    [mutate] = [c for c in enforce.calls("web") if c.phase == "mutating"]
    assert mutate.configuration == "gpumix" and mutate.webhook == "mutate.gpumix.io"
    assert mutate.outcome == "patched"


async def test_other_api_versions_are_sent_too(enforce: Cluster) -> None:
    """matchPolicy Equivalent: an autoscaling/v1 HPA reaches the webhook registered for v2."""
    resp = await enforce.post(hpa("huge", TEAM, "web", version="v1", ceiling=100_000))
    assert resp.status == 403, resp.body
    [call] = [c for c in enforce.calls("huge") if c.phase == "validating"]
    assert call.request["request"]["kind"]["version"] == "v2"
    assert call.request["request"]["requestKind"]["version"] == "v1"


async def test_scale_status_and_system_namespaces_never_call_the_webhook(enforce: Cluster) -> None:
    emu = enforce.emu
    dep = model_deployment("solo", TEAM, A100)
    assert (await enforce.post(dep)).status == 201
    before = len(emu.admission_log)
    scale = {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {"name": "solo", "namespace": TEAM},
        "spec": {"replicas": 3},
    }
    resp = await emu.request("PUT", api_path(dep, emu, subresource="scale"), scale)
    assert resp.status == 200, resp.body
    current = emu.get("deployments", "solo", TEAM)
    assert current is not None
    current["status"] = {"replicas": 3}
    resp = await emu.request("PUT", api_path(dep, emu, subresource="status"), current)
    assert resp.status == 200, resp.body
    # The very pair that is refused in a workload namespace, in the exempt ones.
    for ns in ("kube-system", NAMESPACE):
        for name, product in (("llama-a100", A100), ("llama-l20", L20)):
            resp = await enforce.post(model_deployment(name, ns, product))
            assert resp.status == 201, resp.body
    assert len(emu.admission_log) == before


async def test_server_side_dry_run_goes_through_the_webhook(enforce: Cluster) -> None:
    resp = await enforce.post(hpa("dry", TEAM, "web"), dryRun="All")
    assert resp.status == 201, resp.body
    assert resp.body["spec"]["maxReplicas"] == enforce.policy.default_max_replicas
    assert enforce.emu.get("horizontalpodautoscalers", "dry", TEAM) is None
    assert {c.dry_run for c in enforce.calls("dry")} == {True}


@pytest.mark.parametrize(("overlay", "expected"), [("enforce", 500), ("audit", 201)])
async def test_failure_policy_when_no_webhook_answers(
    rendered: Rendered, overlay: str, expected: int
) -> None:
    """Before any webhook pod serves (no caBundle, nothing listening): enforce refuses
    workloads, audit lets them through; gpumix's own namespace is never blocked."""
    emu = await new_emulator(rendered[overlay])
    try:
        emu.service_resolver = lambda _ns, _name, _port, path: f"https://127.0.0.1:9{path}"
        cluster = Cluster(emu, policy_of(rendered[overlay]))
        resp = await cluster.post(model_deployment("app", TEAM, A100))
        assert resp.status == expected, resp.body
        if expected == 500:
            assert 'failed calling webhook "mutate.gpumix.io"' in resp.body["message"]
        resp = await cluster.post(model_deployment("rescue", NAMESPACE, A100))
        assert resp.status == 201, resp.body
    finally:
        await emu.stop()
