"""gpumix's admission webhook on the real API server, registered through the shipped
webhook configurations (only ``clientConfig`` changed) and driven with ``kubectl``.

What is checked here is what a user sees: the object stored, kubectl's stderr and exit
code. The design being tested is in docs/design.md (Decisions) and docs/install.md
(failurePolicy).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import yaml

from .envtest import REPO_ROOT, Envtest
from .gpumix_env import (
    Obj,
    Recorder,
    Webhook,
    dry_run_admitted,
    metric_sum,
    wait_admitting,
    wait_until,
)

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "aibrix"
A100 = "simulator-llama2-7b-a100"
A40 = "simulator-llama2-7b-a40"
PRODUCT_KEY = "nvidia.com/gpu.product"
PRODUCTS = {A100: "NVIDIA-A100-SXM4-80GB", A40: "NVIDIA-A40"}
DENIED = 'admission webhook "validate.gpumix.io" denied the request'


# --------------------------------------------------------------------------- helpers


def aibrix(fixture: str, namespace: str, *, pin: str = "nodeSelector") -> dict[str, Obj]:
    """The objects of ``tests/fixtures/aibrix/<fixture>.yaml`` moved to ``namespace``,
    each Deployment pinned to its GPU type (``nodeSelector`` on nvidia.com/gpu.product,
    or the ``gpumix.io/gpu-type`` pod label). Keyed by ``Kind/name``."""
    out: dict[str, Obj] = {}
    for doc in yaml.safe_load_all((FIXTURES / f"{fixture}.yaml").read_text()):
        if not doc:
            continue
        doc["metadata"]["namespace"] = namespace
        if doc["kind"] == "Deployment":
            name = doc["metadata"]["name"]
            template = doc["spec"]["template"]
            if pin == "nodeSelector":
                template["spec"]["nodeSelector"] = {PRODUCT_KEY: PRODUCTS[name]}
            else:
                template["metadata"]["labels"]["gpumix.io/gpu-type"] = PRODUCTS[name]
        out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


def as_list(*objects: Obj) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})


def get(env: Envtest, kind: str, name: str, namespace: str) -> Obj | None:
    proc = env.kubectl(
        "get", kind, name, "-n", namespace, "-o", "json", "--show-managed-fields", check=False
    )
    if proc.returncode != 0:
        assert "NotFound" in proc.stderr, proc.stderr
        return None
    return json.loads(proc.stdout)


def wait_cached(webhook: Webhook, kind: str, at_least: float) -> None:
    """Until the webhook's cluster cache holds ``at_least`` objects of ``kind``."""
    wait_until(
        lambda: webhook.cached(kind) >= at_least,
        timeout_s=15,
        what=f"{at_least:.0f} {kind} objects in the webhook's cache",
    )


def create_and_wait_cached(
    env: Envtest, webhook: Webhook, kind: str, *objects: Obj, args: tuple[str, ...] = ("apply",)
) -> None:
    """Create ``objects`` (all of ``kind``) and wait until the webhook's cache has them."""
    before = webhook.cached(kind)
    env.kubectl(*args, "-f", "-", input=as_list(*objects))
    wait_cached(webhook, kind, before + len(objects))


def new_namespace(
    env: Envtest,
    webhook: Webhook,
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> str:
    """A namespace created with these labels/annotations, once the webhook has seen it."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    metadata = {"name": name, "labels": labels or {}, "annotations": annotations or {}}
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}
    create_and_wait_cached(env, webhook, "Namespace", ns, args=("create",))
    return name


def selector_labels(dep: Obj) -> dict[str, str]:
    return dict(dep["spec"]["selector"].get("matchLabels") or {})


def template_labels(dep: Obj) -> dict[str, str]:
    return dict(dep["spec"]["template"]["metadata"].get("labels") or {})


# --------------------------------------------------------------------------- the AIBrix pair


APPLY_MODES = {
    "apply": ("apply",),
    "server-side": ("apply", "--server-side"),
}


# Both broad (the "before" fixture): test_policy_semantics.py runs the pair through every
# client and order (isolated on the first try) and the denial a broad one from before
# gpumix still causes.


@pytest.mark.parametrize("pin", ["nodeSelector", "label"])
@pytest.mark.parametrize("mode", list(APPLY_MODES))
def test_aibrix_pair_is_fixed_when_the_existing_selector_is_narrow(
    apiserver: Envtest, gpumix_webhook: Webhook, namespace: str, mode: str, pin: str
) -> None:
    """The A100 Deployment already has a distinct selector (the "after" fixture); the
    broad A40 one selects its pods, so gpumix isolates the new one on CREATE."""
    a100 = aibrix("heterogeneous-after", namespace, pin=pin)[f"Deployment/{A100}"]
    a40 = aibrix("heterogeneous-before", namespace, pin=pin)[f"Deployment/{A40}"]
    create_and_wait_cached(apiserver, gpumix_webhook, "Deployment", a100)

    proc = apiserver.kubectl(*APPLY_MODES[mode], "-f", "-", input=as_list(a40))
    assert f"gpumix fixed selector-overlap on Deployment {namespace}/{A40}" in proc.stderr, (
        proc.stderr
    )
    stored = get(apiserver, "deployment", A40, namespace)
    assert stored is not None
    want = {**selector_labels(a40), "gpumix.io/deployment": A40}
    assert selector_labels(stored) == want
    assert template_labels(stored) == {**want, "gpumix.io/gpu-type": PRODUCTS[A40]}
    # The existing Deployment is untouched.
    assert selector_labels(get(apiserver, "deployment", A100, namespace) or {}) == (
        selector_labels(a100)
    )

    # The same manifest again, with a new image (an UPDATE; gpumix fixes only on CREATE).
    again = json.loads(json.dumps(a40))
    again["spec"]["template"]["spec"]["containers"][0]["image"] = "aibrix/vllm-simulator-a40:v2"
    proc = apiserver.kubectl(*APPLY_MODES[mode], "-f", "-", input=as_list(again), check=False)
    assert proc.returncode == 0, proc.stderr
    if mode == "apply":
        # Client-side apply diffs against its last-applied annotation, which never held
        # the fix: the selector is left alone.
        assert "gpumix kept" not in proc.stderr
    else:
        # Server-side apply owns the whole selector (an atomic field) and would set it
        # back to the manifest's, a change kube-apiserver refuses; gpumix puts the label
        # of its earlier fix back (docs/design.md, "A fix stays fixed").
        assert "gpumix kept gpumix.io/deployment set by an earlier fix" in proc.stderr, proc.stderr
    stored = get(apiserver, "deployment", A40, namespace) or {}
    assert selector_labels(stored) == want
    assert stored["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":v2")


def test_dry_run_shows_the_fix_and_has_no_side_effect(
    apiserver: Envtest, gpumix_webhook: Webhook, namespace: str
) -> None:
    """``kubectl create --dry-run=server``: gpumix is called with ``dryRun: true``, the
    printed object carries the fix, and nothing is stored or changed."""

    def secret_version() -> str:  # of the webhook's certificate Secret
        return apiserver.kubectl(
            "get",
            "secret",
            "gpumix-webhook-tls",
            "-n",
            "gpumix-system",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ).stdout

    a100 = aibrix("heterogeneous-after", namespace)[f"Deployment/{A100}"]
    a40 = aibrix("heterogeneous-before", namespace)[f"Deployment/{A40}"]
    create_and_wait_cached(apiserver, gpumix_webhook, "Deployment", a100)
    with Recorder(apiserver) as recorder:
        recorder.register(
            f"e2e-recorder-{namespace}",
            namespace,
            [
                {
                    "apiGroups": ["apps"],
                    "apiVersions": ["v1"],
                    "resources": ["deployments"],
                    "operations": ["CREATE", "UPDATE"],
                }
            ],
        )
        try:
            wait_until(
                lambda: (
                    dry_run_admitted(
                        apiserver, a100 | {"metadata": {"name": "probe", "namespace": namespace}}
                    )
                    and any(recorder.requests("Deployment", "probe"))
                ),
                timeout_s=15,
                what="the recorder to be called",
            )
            patched_before = gpumix_webhook.admissions(path="/mutate", verdict="patched")
            cached_before = gpumix_webhook.cached("Deployment")
            events_before = apiserver.kubectl("get", "events", "-A", "-o", "name").stdout
            secret_before = secret_version()

            proc = apiserver.kubectl(
                "create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(a40)
            )
        finally:
            apiserver.kubectl(
                "delete",
                "mutatingwebhookconfiguration",
                f"e2e-recorder-{namespace}",
                "--ignore-not-found",
            )
    shown = json.loads(proc.stdout)
    assert selector_labels(shown)["gpumix.io/deployment"] == A40
    assert template_labels(shown)["gpumix.io/gpu-type"] == PRODUCTS[A40]
    assert "gpumix fixed selector-overlap" in proc.stderr

    seen = [r for r in recorder.requests("Deployment", A40)]
    assert [r["dryRun"] for r in seen] == [True], seen
    assert seen[0]["operation"] == "CREATE"
    # gpumix answered it (a patch) ...
    assert gpumix_webhook.admissions(path="/mutate", verdict="patched") == patched_before + 1
    # ... and nothing happened: not stored, not cached, no Event, certificate untouched.
    assert get(apiserver, "deployment", A40, namespace) is None
    assert gpumix_webhook.cached("Deployment") == cached_before
    assert apiserver.kubectl("get", "events", "-A", "-o", "name").stdout == events_before
    assert secret_version() == secret_before


# --------------------------------------------------------------------------- ceilings


HPA_RULE = {
    "apiGroups": ["autoscaling"],
    "apiVersions": ["v2"],
    "resources": ["horizontalpodautoscalers"],
    "operations": ["CREATE", "UPDATE"],
}


def hpa(version: str, name: str, namespace: str, max_replicas: int | None = None) -> Obj:
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llama"},
        "minReplicas": 1,
    }
    if max_replicas is not None:
        spec["maxReplicas"] = max_replicas
    return {
        "apiVersion": f"autoscaling/{version}",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def managed_spec_fields(obj: Obj) -> set[str]:
    """The ``f:spec`` keys of every managedFields entry (``f:maxReplicas`` ...)."""
    out: set[str] = set()
    for entry in obj.get("metadata", {}).get("managedFields") or []:
        out |= set((entry.get("fieldsV1") or {}).get("f:spec") or {})
    return out


CLIENTS = {
    "create": ("create",),
    "apply": ("apply",),
    "server-side": ("apply", "--server-side"),
}


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_hpa_without_max_replicas_gets_the_default(
    apiserver: Envtest, gpumix_webhook: Webhook, namespace: str, version: str
) -> None:
    """Without gpumix the API server refuses this HPA with 422 (test_apiserver_basics.py);
    with gpumix the policy's default ceiling (10) is injected. A recorder called just
    before gpumix shows what admission is handed, for each way kubectl sends it."""
    resource = f"horizontalpodautoscalers.{version}.autoscaling"
    config = f"e2e-recorder-{namespace}"
    with Recorder(apiserver) as recorder:
        recorder.register(config, namespace, [HPA_RULE])
        try:
            wait_until(
                lambda: (
                    dry_run_admitted(apiserver, hpa("v2", "probe", namespace, 1))
                    and any(recorder.requests(name="probe"))
                ),
                timeout_s=15,
                what="the recorder to be called",
            )
            stderr = {}
            for client, args in CLIENTS.items():
                for ceiling, tag in ((None, "omitted"), (0, "zero")):
                    obj = hpa(version, f"{tag}-{client}", namespace, ceiling)
                    proc = apiserver.kubectl(*args, "-f", "-", input=json.dumps(obj))
                    stderr[obj["metadata"]["name"]] = proc.stderr
            # Server-side apply of the same manifest again: the injected ceiling is owned
            # by no manager, so the apply does not remove it (nothing to fix this time).
            again = hpa(version, "omitted-server-side", namespace)
            reapplied = apiserver.kubectl(
                *CLIENTS["server-side"], "-f", "-", input=json.dumps(again)
            )
        finally:
            apiserver.kubectl(
                "delete", "mutatingwebhookconfiguration", config, "--ignore-not-found"
            )

    for name, err in stderr.items():
        assert (
            f"gpumix fixed missing-max-replicas on HorizontalPodAutoscaler {namespace}/{name}"
            in err
        ), err
        stored = get(apiserver, resource, name, namespace)
        assert stored is not None and stored["spec"]["maxReplicas"] == 10, name
        if name.startswith("omitted"):
            # The injected value is owned by no field manager.
            assert "f:maxReplicas" not in managed_spec_fields(stored), name

    assert "gpumix fixed" not in reapplied.stderr
    updates = [
        r
        for r in recorder.requests("HorizontalPodAutoscaler", "omitted-server-side")
        if r["operation"] == "UPDATE"
    ]
    assert [r["object"]["spec"]["maxReplicas"] for r in updates] == [10]

    seen = {
        r["name"]: r
        for r in recorder.requests("HorizontalPodAutoscaler")
        if r["name"] != "probe" and r["operation"] == "CREATE"
    }
    assert set(seen) == set(stderr)
    for name, request in seen.items():
        # matchPolicy Equivalent: a v1 request reaches admission converted to v2, and
        # requestKind says what was sent.
        assert request["kind"] == {
            "group": "autoscaling",
            "version": "v2",
            "kind": "HorizontalPodAutoscaler",
        }
        assert request["requestKind"]["version"] == version
        assert request["object"]["apiVersion"] == "autoscaling/v2"
        # An omitted maxReplicas arrives as 0, not absent.
        assert request["object"]["spec"]["maxReplicas"] == 0, name
    owned = {name: "f:maxReplicas" in managed_spec_fields(r["object"]) for name, r in seen.items()}
    # managedFields never claim an omitted field; an explicit 0 is claimed only when it
    # was sent with server-side apply (an Update manager does not own a field it set to
    # the zero value on create), so only then do they tell omitted from an explicit 0.
    assert owned == {
        "omitted-create": False,
        "zero-create": False,
        "omitted-apply": False,
        "zero-apply": False,
        "omitted-server-side": False,
        "zero-server-side": True,
    }


def gpu_node(name: str, product: str, gpus: int) -> Obj:
    """A Node as a kubelet registers it (status set on create): ``gpus`` allocatable GPUs."""
    resources = {"nvidia.com/gpu": str(gpus), "cpu": "64", "memory": "512Gi", "pods": "110"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {PRODUCT_KEY: product}},
        "status": {"capacity": resources, "allocatable": resources},
    }


def gpu_deployment(name: str, namespace: str, product: str, gpus: int = 1) -> Obj:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {PRODUCT_KEY: product},
                    "containers": [
                        {
                            "name": "vllm",
                            "image": "vllm/vllm-openai:v0.6.0",
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                        }
                    ],
                },
            },
        },
    }


def scaled_object(name: str, namespace: str, target: str, ceiling: int | None = None) -> Obj:
    spec: dict[str, Any] = {
        "scaleTargetRef": {"name": target},
        "minReplicaCount": 1,
        "triggers": [{"type": "prometheus", "metadata": {"query": "sum(rate(x[1m]))"}}],
    }
    if ceiling is not None:
        spec["maxReplicaCount"] = ceiling
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def pod_autoscaler(name: str, namespace: str, target: str, ceiling: int | None = None) -> Obj:
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
        "minReplicas": 1,
        "targetMetric": "avg_prompt_throughput_toks_per_s",
        "targetValue": "20",
        "scalingStrategy": "KPA",
    }
    if ceiling is not None:
        spec["maxReplicas"] = ceiling
    return {
        "apiVersion": "autoscaling.aibrix.ai/v1alpha1",
        "kind": "PodAutoscaler",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


@pytest.fixture
def four_gpu_type(apiserver: Envtest, gpumix_webhook: Webhook, namespace: str) -> str:
    """A GPU type of its own (one Node with 4 GPUs) and a Deployment ``llama`` pinned to
    it at 1 GPU per replica, both in the webhook's cache."""
    product = f"E2E-{namespace}"
    nodes = gpumix_webhook.cached("Node")
    apiserver.kubectl("create", "-f", "-", input=json.dumps(gpu_node(namespace, product, 4)))
    wait_cached(gpumix_webhook, "Node", nodes + 1)
    create_and_wait_cached(
        apiserver, gpumix_webhook, "Deployment", gpu_deployment("llama", namespace, product)
    )
    return product


def test_keda_and_aibrix_autoscalers_without_a_ceiling_get_one(
    apiserver: Envtest, gpumix_webhook: Webhook, namespace: str, four_gpu_type: str
) -> None:
    proc = apiserver.kubectl(
        "apply",
        "-f",
        "-",
        input=as_list(
            scaled_object("llama", namespace, "llama"),
            pod_autoscaler("cpu-app", namespace, "cpu-app"),
        ),
    )
    assert f"gpumix fixed missing-max-replicas on ScaledObject {namespace}/llama" in proc.stderr
    assert f"gpumix fixed missing-max-replicas on PodAutoscaler {namespace}/cpu-app" in proc.stderr
    keda = get(apiserver, "scaledobjects.keda.sh", "llama", namespace) or {}
    aibrix_pa = get(apiserver, "podautoscalers.autoscaling.aibrix.ai", "cpu-app", namespace) or {}
    # The policy default is 10; the ScaledObject's target fits only 4 replicas on the 4
    # GPUs of its type, so it gets 4.
    assert keda["spec"]["maxReplicaCount"] == 4
    assert aibrix_pa["spec"]["maxReplicas"] == 10


def test_autoscalers_over_the_ceiling_are_denied_with_the_reason(
    apiserver: Envtest, gpumix_webhook: Webhook, namespace: str, four_gpu_type: str
) -> None:
    proc = apiserver.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(pod_autoscaler("huge", namespace, "x", 500)),
        check=False,
    )
    assert proc.returncode != 0
    assert DENIED in proc.stderr, proc.stderr
    assert (
        f"[max-replicas-above-ceiling] PodAutoscaler {namespace}/huge sets spec.maxReplicas=500, "
        "above the policy's hard limit of 100. Fix: lower it to at most 100"
    ) in proc.stderr

    proc = apiserver.kubectl(
        "create",
        "-f",
        "-",
        input=json.dumps(scaled_object("llama", namespace, "llama", 8)),
        check=False,
    )
    assert proc.returncode != 0
    assert DENIED in proc.stderr, proc.stderr
    assert (
        f"sets spec.maxReplicaCount=8, but the pool of {four_gpu_type} GPUs holds 4 (its "
        "Nodes' allocatable GPUs, cordoned ones included, or the policy's gpuPoolCapacity), "
        f"room for 4 replicas of Deployment {namespace}/llama at 1 GPU(s) each. "
        "Fix: lower it to at most 4"
    ) in proc.stderr
    assert get(apiserver, "podautoscalers.autoscaling.aibrix.ai", "huge", namespace) is None
    assert get(apiserver, "scaledobjects.keda.sh", "llama", namespace) is None

    # At the ceiling is fine.
    apiserver.kubectl(
        "create", "-f", "-", input=json.dumps(scaled_object("llama", namespace, "llama", 4))
    )


def test_namespace_annotation_sets_the_injected_ceiling(
    apiserver: Envtest, gpumix_webhook: Webhook
) -> None:
    ns = new_namespace(
        apiserver, gpumix_webhook, annotations={"gpumix.io/default-max-replicas": "3"}
    )
    apiserver.kubectl("create", "-f", "-", input=json.dumps(hpa("v2", "small", ns)))
    assert (get(apiserver, "hpa", "small", ns) or {})["spec"]["maxReplicas"] == 3


def test_warn_mode_namespace_is_neither_fixed_nor_denied(
    apiserver: Envtest, gpumix_webhook: Webhook
) -> None:
    """``gpumix.io/mode: warn``: findings come back as kubectl warnings; nothing is fixed,
    so the HPA without a ceiling meets the API server's own 422."""
    ns = new_namespace(apiserver, gpumix_webhook, labels={"gpumix.io/mode": "warn"})
    objs = aibrix("heterogeneous-before", ns)
    create_and_wait_cached(apiserver, gpumix_webhook, "Deployment", objs[f"Deployment/{A100}"])
    proc = apiserver.kubectl("apply", "-f", "-", input=as_list(objs[f"Deployment/{A40}"]))
    assert "Warning: selector-overlap: selector of Deployment" in proc.stderr, proc.stderr
    stored = get(apiserver, "deployment", A40, ns) or {}
    assert "gpumix.io/deployment" not in selector_labels(stored)

    proc = apiserver.kubectl(
        "apply", "-f", "-", input=json.dumps(pod_autoscaler("huge", ns, "x", 500))
    )
    assert "Warning: max-replicas-above-ceiling:" in proc.stderr, proc.stderr

    proc = apiserver.kubectl(
        "create", "-f", "-", input=json.dumps(hpa("v2", "no-ceiling", ns)), check=False
    )
    assert proc.returncode != 0
    assert "spec.maxReplicas: Required value: must be set and greater than 0" in proc.stderr
    # Built-in validation refuses it before the validating webhook would add a warning.
    assert "Warning: missing-max-replicas" not in proc.stderr


# --------------------------------------------------------------------------- updates


def test_selector_change_on_update_is_denied_with_a_helpful_message(
    apiserver: Envtest, gpumix_webhook: Webhook, namespace: str
) -> None:
    a100 = aibrix("heterogeneous-after", namespace)[f"Deployment/{A100}"]
    apiserver.kubectl("apply", "-f", "-", input=json.dumps(a100))
    changed = json.loads(json.dumps(a100))
    changed["spec"]["selector"]["matchLabels"]["tier"] = "gold"
    changed["spec"]["template"]["metadata"]["labels"]["tier"] = "gold"

    proc = apiserver.kubectl("apply", "-f", "-", input=json.dumps(changed), check=False)
    assert proc.returncode != 0
    err = proc.stderr
    # kube-apiserver's own validation refuses it (before validating webhooks run) ...
    assert "spec.selector: Invalid value" in err and "field is immutable" in err, err
    # ... and gpumix's explanation comes with it, from the mutating step.
    assert f"Warning: selector-immutable: Deployment {namespace}/{A100}: spec.selector" in err
    assert "recreate the Deployment" in err
    assert f"kubectl delete deployment {A100} -n {namespace}" in err
    stored = get(apiserver, "deployment", A100, namespace) or {}
    assert "tier" not in selector_labels(stored)


def test_cache_resumes_after_an_apiserver_restart(
    apiserver: Envtest, gpumix_webhook: Webhook, namespace: str
) -> None:
    """kube-apiserver is killed and started again (etcd keeps the data): the webhook keeps
    running, its cache reconnects, and a Deployment created afterwards is known to the
    rules (the broad one created next is fixed against it)."""
    apiserver.restart_apiserver(downtime_s=2.0, kill=True)
    assert gpumix_webhook.process.running(), gpumix_webhook.process.log()[-2000:]
    wait_until(
        lambda: gpumix_webhook.process.get("/readyz")[0] == 200,
        timeout_s=30,
        what="the webhook ready again",
    )
    wait_admitting(apiserver)
    a100 = aibrix("heterogeneous-after", namespace)[f"Deployment/{A100}"]
    a40 = aibrix("heterogeneous-before", namespace)[f"Deployment/{A40}"]
    create_and_wait_cached(apiserver, gpumix_webhook, "Deployment", a100)
    apiserver.kubectl("apply", "-f", "-", input=json.dumps(a40))
    stored = get(apiserver, "deployment", A40, namespace) or {}
    assert selector_labels(stored).get("gpumix.io/deployment") == A40


# --------------------------------------------------------------------------- unreadable values


def test_a_gpu_quantity_gpumix_cannot_read_never_makes_the_webhook_unready(
    apiserver: Envtest, gpumix_webhook: Webhook, namespace: str
) -> None:
    """kube-apiserver accepts ``nvidia.com/gpu: 1e400`` and stores it as ``10e399``.
    In kube-system (never sent to the webhook, but cached) it is kept as a view that
    names the field: the cache stays synced and the webhook ready. In a namespace in
    scope, enforce mode denies it, naming the field."""
    huge = gpu_deployment("e2e-huge-gpus", "kube-system", "NVIDIA-L4")
    huge["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "limits": {"nvidia.com/gpu": "1e400"}
    }
    kept = metric_sum(
        gpumix_webhook.metrics(), "gpumix_cache_unreadable_objects", kind="Deployment"
    )
    apiserver.kubectl("create", "-f", "-", input=json.dumps(huge))
    try:
        stored = get(apiserver, "deployment", "e2e-huge-gpus", "kube-system") or {}
        container = stored["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "10e399"
        wait_until(
            lambda: (
                metric_sum(
                    gpumix_webhook.metrics(),
                    "gpumix_cache_unreadable_objects",
                    kind="Deployment",
                    handling="kept",
                )
                > kept
            ),
            timeout_s=15,
            what="the unreadable Deployment counted in the webhook's cache",
        )
        assert gpumix_webhook.process.get("/readyz")[0] == 200
        assert metric_sum(gpumix_webhook.metrics(), "gpumix_cache_synced") == 1
        huge["metadata"]["namespace"] = namespace
        proc = apiserver.kubectl("apply", "-f", "-", input=json.dumps(huge), check=False)
        assert proc.returncode != 0 and DENIED in proc.stderr, proc.stderr
        assert "[unreadable-field]" in proc.stderr
        assert "spec.template.spec.containers[0].resources.limits[nvidia.com/gpu]" in proc.stderr
        assert "10e399" in proc.stderr and "Traceback" not in gpumix_webhook.process.log()
        # the webhook still judges everything else
        dep = gpu_deployment("e2e-after-huge", namespace, "NVIDIA-L4")
        apiserver.kubectl("apply", "-f", "-", input=json.dumps(dep))
    finally:
        apiserver.kubectl("delete", "deployment", "e2e-huge-gpus", "-n", "kube-system")


# --------------------------------------------------------------------------- outage


def test_webhook_down_with_the_shipped_failure_policy(
    apiserver: Envtest, gpumix_webhook: Webhook, namespace: str
) -> None:
    """docs/install.md (enforce: failurePolicy Fail): while no webhook answers, creates and
    updates of the matched kinds are refused; gpumix-system and kube-system are not
    sent; /scale is never matched, so scaling goes on. Runs last in this module: it
    stops the webhook and starts it again."""
    assert {h["failurePolicy"] for c in gpumix_webhook.configs for h in c["webhooks"]} == {"Fail"}
    dep = gpu_deployment("web", namespace, "NVIDIA-L4")
    create_and_wait_cached(apiserver, gpumix_webhook, "Deployment", dep)
    system_dep = gpu_deployment("e2e-system-probe", "gpumix-system", "NVIDIA-L4")

    gpumix_webhook.process.stop()
    try:
        refused = apiserver.kubectl(
            "create",
            "-f",
            "-",
            input=json.dumps(gpu_deployment("new", namespace, "NVIDIA-L4")),
            check=False,
        )
        assert refused.returncode != 0
        assert 'failed calling webhook "mutate.gpumix.io"' in refused.stderr, refused.stderr
        assert "connection refused" in refused.stderr
        assert get(apiserver, "deployment", "new", namespace) is None

        changed = json.loads(json.dumps(dep))
        changed["spec"]["template"]["spec"]["containers"][0]["image"] = "vllm/vllm-openai:v0.7.0"
        update = apiserver.kubectl("apply", "-f", "-", input=json.dumps(changed), check=False)
        assert update.returncode != 0
        # an image bump is nothing the mutating step changes (gpumix-may-mutate): only
        # validation is called, and refuses while it is down
        assert 'failed calling webhook "validate.gpumix.io"' in update.stderr, update.stderr

        hpa_refused = apiserver.kubectl(
            "create", "-f", "-", input=json.dumps(hpa("v2", "web", namespace, 3)), check=False
        )
        assert hpa_refused.returncode != 0
        assert "failed calling webhook" in hpa_refused.stderr

        # Never sent: the /scale subresource, other kinds, the exempt namespaces.
        apiserver.kubectl("scale", "deployment", "web", "-n", namespace, "--replicas=3")
        assert (get(apiserver, "deployment", "web", namespace) or {})["spec"]["replicas"] == 3
        apiserver.kubectl("create", "configmap", "still-fine", "-n", namespace)
        apiserver.kubectl("apply", "-f", "-", input=json.dumps(system_dep))
    finally:
        gpumix_webhook.restart()
        apiserver.kubectl(
            "delete", "deployment", "e2e-system-probe", "-n", "gpumix-system", "--ignore-not-found"
        )

    # Back up: the same create goes through.
    apiserver.kubectl(
        "create", "-f", "-", input=json.dumps(gpu_deployment("new", namespace, "NVIDIA-L4"))
    )
