"""The webhook configurations' matchConditions, evaluated by the real kube-apiserver.

The shipped configurations (and, for another policy, the generated expression) are
registered pointing at a recording webhook, restricted to the test's namespace and
renamed so that they never meet another module's webhook. Each object of one corpus is
sent through admission (CREATE by a server-side dry run, UPDATE by a dry-run replace of
a stored object), and the writes the API server sent are compared with
``gpumix.kube.scope.judged`` on the same objects: the CEL and the core agree.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from gpumix.kube.policy import Policy, policy_from_mapping
from gpumix.kube.scope import MATCH_CONDITION_NAME, judged, match_condition

from .envtest import Envtest
from .gpumix_env import (
    POLICY_FILE,
    Obj,
    Recorder,
    parse_metrics,
    render_manifests,
    wait_until,
    webhook_configurations,
)

SHIPPED = policy_from_mapping(yaml.safe_load(POLICY_FILE.read_text()))
CUSTOM = Policy(
    model_label_keys=("example.com/llm",),
    gpu_resource_names=("example.com/fpga", "acme.io/npu-*"),
)


def deployment(
    name: str,
    *,
    resources: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
    pod_labels: dict[str, str] | None = None,
    selector: dict[str, str] | None = None,
    init: dict[str, Any] | None = None,
    node_selector: dict[str, str] | None = None,
) -> Obj:
    match = selector or {"app": name}
    spec: dict[str, Any] = {
        "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}],
    }
    if resources is not None:
        spec["containers"][0]["resources"] = resources
    if init is not None:
        spec["initContainers"] = [
            {
                "name": "side",
                "image": "registry.k8s.io/pause:3.10",
                "restartPolicy": "Always",
                "resources": init,
            }
        ]
    if node_selector:
        spec["nodeSelector"] = node_selector
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "selector": {"matchLabels": match},
            "template": {"metadata": {"labels": {**match, **(pod_labels or {})}}, "spec": spec},
        },
    }


def both(name: str, quantity: str = "1") -> dict[str, Any]:
    return {"limits": {name: quantity}, "requests": {name: quantity}}


CREATES: list[Obj] = [
    deployment("cpu"),
    deployment("cpu-requests", resources=both("cpu", "100m")),
    deployment("cpu-on-machine", node_selector={"node.kubernetes.io/instance-type": "m6i.2xlarge"}),
    deployment("cpu-on-gpu-node", node_selector={"nvidia.com/gpu.product": "NVIDIA-A100"}),
    deployment("gpu", resources=both("nvidia.com/gpu")),
    deployment("gpu-zero", resources=both("nvidia.com/gpu", "0")),
    deployment("mig", resources=both("nvidia.com/mig-1g.5gb")),
    deployment("amd-sidecar", init=both("amd.com/gpu")),
    deployment("tpu", resources=both("google.com/tpu", "4")),
    deployment("gpux", resources=both("nvidia.com/gpux")),
    deployment("mig-bare", resources=both("nvidia.com/mig")),
    deployment("fpga", resources=both("example.com/fpga")),
    deployment("npu", resources=both("acme.io/npu-v2")),
    deployment("other-resource", resources=both("example.com/widget")),
    deployment("model", labels={"gpumix.io/model": "llama"}),
    deployment("model-pod", pod_labels={"model.aibrix.ai/name": "llama"}),
    deployment("model-empty", labels={"gpumix.io/model": ""}),
    deployment("model-like", labels={"gpumix.io/model-x": "llama"}),
    deployment("llm", labels={"example.com/llm": "llama"}),
    deployment("typed", pod_labels={"gpumix.io/gpu-type": "NVIDIA-A100"}),
    deployment("typed-empty", pod_labels={"gpumix.io/gpu-type": ""}),
    deployment("typed-on-deployment", labels={"gpumix.io/gpu-type": "NVIDIA-A100"}),
]

# (old, new): the old object is stored first, then the new one replaces it (dry run).
UPDATES: list[tuple[Obj, Obj]] = [
    (deployment("u-gpu-to-cpu", resources=both("nvidia.com/gpu")), deployment("u-gpu-to-cpu")),
    (deployment("u-cpu-to-gpu"), deployment("u-cpu-to-gpu", resources=both("nvidia.com/gpu"))),
    (deployment("u-cpu"), deployment("u-cpu", resources=both("cpu", "1"))),
    (
        deployment("u-model-dropped", labels={"gpumix.io/model": "llama"}),
        deployment("u-model-dropped"),
    ),
    (
        deployment("u-isolated", selector={"app": "x", "gpumix.io/deployment": "u-isolated"}),
        deployment("u-isolated", selector={"app": "x", "gpumix.io/deployment": "u-isolated"}),
    ),
]


def hpa(name: str) -> Obj:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "cpu"},
            "minReplicas": 1,
            "maxReplicas": 3,
        },
    }


def recorded_configurations(
    env: Envtest, recorder: Recorder, namespace: str, policy: Policy | None
) -> list[Obj]:
    """The shipped configurations pointed at the recorder, renamed, limited to
    ``namespace``; with ``policy``, its generated match condition replaces the shipped one."""
    configs = webhook_configurations(render_manifests(), recorder.port)
    for config in configs:
        config["metadata"]["name"] = f"scope-{namespace}"
        for hook in config["webhooks"]:
            hook["name"] = f"{hook['name'].split('.')[0]}.{namespace}.e2e.gpumix.io"
            hook["clientConfig"]["caBundle"] = base64.b64encode(env.ca.cert_pem).decode()
            hook["namespaceSelector"]["matchLabels"] = {"kubernetes.io/metadata.name": namespace}
            if policy is not None:
                hook["matchConditions"] = [match_condition(policy)]
    return configs


@pytest.fixture
def recorder(apiserver: Envtest) -> Iterator[Recorder]:
    with Recorder(apiserver) as rec:
        yield rec


def register(env: Envtest, configs: list[Obj]) -> None:
    env.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": configs})
    )


def unregister(env: Envtest, configs: list[Obj]) -> None:
    for config in configs:
        env.kubectl("delete", config["kind"].lower(), config["metadata"]["name"], "--wait=false")


def sent_names(recorder: Recorder, operation: str) -> set[str]:
    return {str(r.get("name")) for r in recorder.requests() if r.get("operation") == operation}


def wait_registered(env: Envtest, recorder: Recorder, namespace: str) -> None:
    """Until the API server's admission sees the configurations (an HPA reaches them)."""
    probe = hpa("probe")
    probe["metadata"]["namespace"] = namespace

    def reached() -> bool:
        env.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(probe))
        return "probe" in sent_names(recorder, "CREATE")

    wait_until(reached, timeout_s=15, what="the recording configurations to take effect")


def test_shipped_match_condition_is_generated_from_the_shipped_policy() -> None:
    for config in webhook_configurations(render_manifests(), 1):
        for hook in config["webhooks"]:
            assert hook["matchConditions"] == [match_condition(SHIPPED)], hook["name"]
            assert hook["matchConditions"][0]["name"] == MATCH_CONDITION_NAME


@pytest.mark.parametrize("policy", [None, CUSTOM], ids=["shipped", "custom-policy"])
def test_api_server_sends_exactly_what_the_core_judges(
    apiserver: Envtest, recorder: Recorder, namespace: str, policy: Policy | None
) -> None:
    configs = recorded_configurations(apiserver, recorder, namespace, policy)
    register(apiserver, configs)
    try:
        wait_registered(apiserver, recorder, namespace)
        for old, _ in UPDATES:
            apiserver.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(old))
        for obj in CREATES:
            apiserver.kubectl(
                "create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(obj)
            )
        for _, new in UPDATES:
            apiserver.kubectl(
                "replace", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(new)
            )
        apiserver.kubectl(
            "create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(hpa("h"))
        )
    finally:
        unregister(apiserver, configs)
    core = policy or SHIPPED
    want_created = {o["metadata"]["name"] for o in CREATES if judged("apps", o, None, core)} | {
        old["metadata"]["name"] for old, _ in UPDATES if judged("apps", old, None, core)
    }
    want_updated = {
        new["metadata"]["name"] for old, new in UPDATES if judged("apps", new, old, core)
    }
    assert sent_names(recorder, "CREATE") - {"probe", "h"} == want_created
    assert sent_names(recorder, "UPDATE") == want_updated
    assert "h" in sent_names(recorder, "CREATE")  # every autoscaler is sent
    # the corpus holds both answers for the cases that matter
    judged_here = {"fpga", "npu", "llm"} if policy else {"gpu", "mig", "amd-sidecar", "gpu-zero"}
    assert judged_here <= want_created
    assert {"cpu", "gpux", "mig-bare", "model-empty", "typed-on-deployment"}.isdisjoint(
        want_created
    )
    updated_here = {"u-isolated"} | (
        set() if policy else {"u-gpu-to-cpu", "u-cpu-to-gpu", "u-model-dropped"}
    )
    assert updated_here <= want_updated
    assert "u-cpu" not in want_updated


def webhook_calls(env: Envtest, hook_prefix: str) -> float:
    """Webhook calls the API server made, by its own metric, to webhooks whose name
    starts with ``hook_prefix`` (both configurations)."""
    status, text = env.request("GET", "/metrics")
    assert status == 200 and isinstance(text, str), text
    metrics = parse_metrics(text)
    total = 0.0
    for series, value in metrics.items():
        if series.startswith("apiserver_admission_webhook_admission_duration_seconds_count{") and (
            f'name="mutate.{hook_prefix}' in series or f'name="validate.{hook_prefix}' in series
        ):
            total += value
    return total


def test_cpu_deployments_are_decided_without_a_webhook_call(
    apiserver: Envtest, recorder: Recorder, namespace: str
) -> None:
    configs = recorded_configurations(apiserver, recorder, namespace, None)
    register(apiserver, configs)
    try:
        wait_registered(apiserver, recorder, namespace)
        start = webhook_calls(apiserver, namespace)
        gpu = deployment("gpu", resources=both("nvidia.com/gpu"))
        apiserver.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(gpu))
        after_gpu = webhook_calls(apiserver, namespace)
        assert after_gpu - start == 2  # the metric counts: mutate and validate
        cpu = [deployment(f"cpu-{i}") for i in range(20)]
        apiserver.kubectl(
            "create",
            "-n",
            namespace,
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": cpu}),
        )
        assert webhook_calls(apiserver, namespace) - after_gpu == 0
    finally:
        unregister(apiserver, configs)
