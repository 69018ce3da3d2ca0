"""The webhook configurations' matchConditions, evaluated by the real kube-apiserver.

The shipped configurations (and, for another policy, the generated expression) are
registered pointing at a recording webhook, restricted to the test's namespace and
renamed so that they never meet another module's webhook. Each object of one corpus is
sent through admission (CREATE by a server-side dry run, UPDATE by a dry-run replace of
a stored object), and the writes the API server sent are compared with
``gpumix.kube.scope.judged`` on the same objects: the CEL and the core agree. The
mutating webhook's second condition is checked the same way against
``gpumix.kube.scope.may_mutate``, while the validating webhook still gets every write
in scope.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from gpumix.kube.policy import Policy, policy_from_mapping
from gpumix.kube.scope import (
    MATCH_CONDITION_NAME,
    judged,
    match_condition,
    may_mutate,
    mutation_condition,
)

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
            more = [mutation_condition()] if hook["name"].startswith("mutate.") else []
            assert hook["matchConditions"] == [match_condition(SHIPPED), *more], hook["name"]
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


# -- the mutating webhook's second condition ------------------------------------------

GPU = both("nvidia.com/gpu")
A100 = {"gpumix.io/gpu-type": "NVIDIA-A100"}


def isolated(name: str, pod_labels: dict[str, str] | None = None, **kw: Any) -> Obj:
    pin = {"app": name, "gpumix.io/deployment": name}
    return deployment(
        name, selector=pin, pod_labels=A100 if pod_labels is None else pod_labels, **kw
    )


def with_template_label(obj: Obj, key: str, value: str) -> Obj:
    obj["spec"]["template"]["metadata"]["labels"][key] = value
    return obj


def with_expressions(obj: Obj, expressions: list[Obj]) -> Obj:
    obj["spec"]["selector"]["matchExpressions"] = expressions
    return obj


def only_expressions(name: str) -> Obj:
    obj = isolated(name, resources=GPU)
    obj["spec"]["selector"] = {
        "matchExpressions": [
            {"key": "gpumix.io/deployment", "operator": "In", "values": [name]},
        ]
    }
    return obj


LONG = "m" * 70  # a valid Deployment name, too long for a label value

MUTATE_CREATES: list[Obj] = [
    isolated("m-isolated", resources=GPU),
    isolated("m-no-type", pod_labels={}, resources=GPU),
    with_template_label(isolated("m-tpl-other", resources=GPU), "gpumix.io/deployment", "x"),
    deployment(
        "m-pin-other",
        selector={"app": "m", "gpumix.io/deployment": "other"},
        pod_labels=A100,
        resources=GPU,
    ),
    with_template_label(
        with_expressions(
            isolated("m-expressions", resources=GPU), [{"key": "tier", "operator": "Exists"}]
        ),
        "tier",
        "serve",
    ),
    only_expressions("m-only-expressions"),
    deployment("m-broad", resources=GPU),
    deployment("m-model", labels={"gpumix.io/model": "llama"}),
    isolated(LONG, resources=GPU),
]

MUTATE_UPDATES: list[tuple[Obj, Obj]] = [
    (
        isolated("mu-keep", resources=GPU),
        isolated("mu-keep", resources=both("nvidia.com/gpu", "2")),
    ),
    (isolated("mu-drop", resources=GPU), deployment("mu-drop", resources=GPU)),
    (
        isolated("mu-drop-type", resources=GPU),
        isolated("mu-drop-type", pod_labels={}, resources=GPU),
    ),
    # what a re-apply of a fixed manifest does when an earlier fix had been dropped
    (deployment("mu-restore", resources=GPU), isolated("mu-restore", resources=GPU)),
    (
        with_expressions(
            isolated("mu-reorder", {**A100, "a": "1"}, resources=GPU),
            [{"key": "a", "operator": "Exists"}, {"key": "b", "operator": "DoesNotExist"}],
        ),
        with_expressions(
            isolated("mu-reorder", {**A100, "a": "1"}, resources=GPU),
            [{"key": "b", "operator": "DoesNotExist"}, {"key": "a", "operator": "Exists"}],
        ),
    ),
    (
        deployment("mu-broad", resources=GPU),
        deployment("mu-broad", resources=both("nvidia.com/gpu", "2")),
    ),
]


def scaler(api_version: str, kind: str, name: str, ceiling: tuple[str, object] | None) -> Obj:
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "m-broad"}
    }
    if kind == "HorizontalPodAutoscaler":
        spec["minReplicas"] = 1
    if ceiling is not None:
        spec[ceiling[0]] = ceiling[1]
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": name}, "spec": spec}


HPA, KEDA, AIBRIX = (
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("autoscaling.aibrix.ai/v1alpha1", "PodAutoscaler"),
)
SCALERS: list[Obj] = [
    scaler(*HPA, "s-hpa-ceiling", ("maxReplicas", 3)),
    scaler(*HPA, "s-hpa-absent", None),  # the API server sends it as maxReplicas: 0
    scaler(*HPA, "s-hpa-zero", ("maxReplicas", 0)),
    scaler(*KEDA, "s-keda-ceiling", ("maxReplicaCount", 5)),
    scaler(*KEDA, "s-keda-absent", None),
    scaler(*AIBRIX, "s-aibrix-ceiling", ("maxReplicas", 5)),
    scaler(*AIBRIX, "s-aibrix-absent", None),
    scaler(*AIBRIX, "s-aibrix-zero", ("maxReplicas", 0)),
]
PLURALS = {
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "HorizontalPodAutoscaler": "/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers",
    "ScaledObject": "/apis/keda.sh/v1alpha1/namespaces/{ns}/scaledobjects",
    "PodAutoscaler": "/apis/autoscaling.aibrix.ai/v1alpha1/namespaces/{ns}/podautoscalers",
}


def group_of(obj: Obj) -> str:
    api_version = str(obj["apiVersion"])
    return api_version.split("/")[0] if "/" in api_version else ""


def test_mutating_webhook_is_sent_only_what_its_step_could_change(
    apiserver: Envtest, recorder: Recorder, namespace: str
) -> None:
    """The shipped mutating configuration, pointed at the recorder: a write in scope
    reaches it exactly when ``may_mutate`` says so. (Dry runs; the API server's own
    validation refuses some after mutating admission, such as an HPA without
    maxReplicas, a selector change or a label value longer than 63 characters. The
    validating configuration keeps the scope condition alone: see
    ``test_shipped_match_condition_is_generated_from_the_shipped_policy``.)"""
    apiserver.install_crds()
    configs = [
        c
        for c in recorded_configurations(apiserver, recorder, namespace, None)
        if c["kind"] == "MutatingWebhookConfiguration"
    ]
    register(apiserver, configs)

    def send(method: str, obj: Obj) -> None:
        path = PLURALS[obj["kind"]].format(ns=namespace)
        if method == "PUT":
            path += "/" + obj["metadata"]["name"]
        status, body = apiserver.request(method, path + "?dryRun=All", obj)
        assert status in (200, 201, 422), (obj["metadata"]["name"], status, body)

    try:
        probe = scaler(*HPA, "probe", None)

        def reached() -> bool:
            send("POST", probe)
            return "probe" in sent_names(recorder, "CREATE")

        wait_until(reached, timeout_s=15, what="the mutating configuration to take effect")
        for old, _ in MUTATE_UPDATES:
            status, body = apiserver.request(
                "POST", PLURALS["Deployment"].format(ns=namespace), old
            )
            assert status == 201, (old["metadata"]["name"], body)
        for obj in [*MUTATE_CREATES, *SCALERS]:
            send("POST", obj)
        for _, new in MUTATE_UPDATES:
            send("PUT", new)
    finally:
        unregister(apiserver, configs)
    # the stored olds were created before counting started (and "probe"): not compared
    stored = {old["metadata"]["name"] for old, _ in MUTATE_UPDATES} | {"probe"}
    sent_created = sent_names(recorder, "CREATE") - stored
    sent_updated = sent_names(recorder, "UPDATE")
    writes = [*MUTATE_CREATES, *SCALERS]
    in_scope = [o for o in writes if judged(group_of(o), o, None, SHIPPED)]
    assert len(in_scope) == len(writes)
    want_created = {
        o["metadata"]["name"] for o in in_scope if may_mutate(group_of(o), "CREATE", o, None)
    }
    want_updated = {
        new["metadata"]["name"]
        for old, new in MUTATE_UPDATES
        if judged("apps", new, old, SHIPPED) and may_mutate("apps", "UPDATE", new, old)
    }
    assert sent_created == want_created
    assert sent_updated == want_updated
    # the corpus holds both answers where it matters
    assert {
        "m-isolated",
        "m-expressions",
        "s-hpa-ceiling",
        "s-keda-ceiling",
        "s-aibrix-ceiling",
    }.isdisjoint(want_created)
    assert {
        "m-no-type",
        "m-tpl-other",
        "m-pin-other",
        "m-only-expressions",
        "m-broad",
        "m-model",
        LONG,
        "s-hpa-absent",
        "s-hpa-zero",
        "s-keda-absent",
        "s-aibrix-absent",
        "s-aibrix-zero",
    } <= want_created
    assert want_updated == {"mu-drop", "mu-drop-type", "mu-restore", "mu-reorder"}
