"""The policy as a cluster admin and a GitOps pipeline meet it, on the real API server
with the shipped enforce overlay: the one-model-two-GPU-types pair through every way of
applying it, ceilings across drains and scale-in, scope, GPU types, warnings and modes.
The decisions are in docs/design.md; the GitOps settings in docs/gitops.md.
"""

from __future__ import annotations

import copy
import json
import subprocess
import uuid

import pytest

from .envtest import Envtest
from .gpumix_env import Obj, Webhook, metric_sum, wait_until
from .test_webhook_admission import (
    A40,
    A100,
    DENIED,
    PRODUCTS,
    aibrix,
    as_list,
    create_and_wait_cached,
    get,
    gpu_deployment,
    gpu_node,
    hpa,
    new_namespace,
    selector_labels,
    template_labels,
    wait_cached,
)

ARGOCD = ("apply", "--server-side", "--field-manager=argocd-controller")
PATHS = {
    "apply": ("apply",),
    "create": ("create",),
    "server-side": ("apply", "--server-side"),
    "argocd-controller": ARGOCD,
}


def resource_version(env: Envtest, name: str, namespace: str) -> str:
    return (get(env, "deployment", name, namespace) or {})["metadata"]["resourceVersion"]


def generation(env: Envtest, name: str, namespace: str) -> int:
    return int((get(env, "deployment", name, namespace) or {})["metadata"]["generation"])


def headline_pair(namespace: str) -> dict[str, Obj]:
    """The two Deployments of one model, each selecting by the model label alone."""
    objs = aibrix("heterogeneous-before", namespace)
    return {name: objs[f"Deployment/{name}"] for name in (A100, A40)}


def assert_isolated(env: Envtest, namespace: str, pair: dict[str, Obj]) -> None:
    for name, manifest in pair.items():
        stored = get(env, "deployment", name, namespace)
        assert stored is not None, name
        want = {**selector_labels(manifest), "gpumix.io/deployment": name}
        assert selector_labels(stored) == want
        assert template_labels(stored) == {**want, "gpumix.io/gpu-type": PRODUCTS[name]}


# --------------------------------------------------------------------------- the headline


@pytest.mark.parametrize("first", [A100, A40])
@pytest.mark.parametrize("path", list(PATHS))
def test_headline_pair_is_admitted_and_isolated_on_the_first_try(
    apiserver: Envtest, gpumix_webhook: Webhook, namespace: str, path: str, first: str
) -> None:
    """Either order, any client: the first is isolated at CREATE, the second fixed
    against it, and a re-sync of the unchanged manifests changes nothing."""
    pair = headline_pair(namespace)
    order = [first, *(n for n in pair if n != first)]
    for name in order:
        before = gpumix_webhook.cached("Deployment")
        proc = apiserver.kubectl(*PATHS[path], "-f", "-", input=as_list(pair[name]))
        assert f"gpumix fixed selector-overlap on Deployment {namespace}/{name}" in proc.stderr, (
            proc.stderr
        )
        wait_cached(gpumix_webhook, "Deployment", before + 1)
    assert_isolated(apiserver, namespace, pair)

    if path == "create":
        return  # a re-sync of created objects: test_create_then_server_side_apply
    versions = {name: resource_version(apiserver, name, namespace) for name in pair}
    proc = apiserver.kubectl(*PATHS[path], "-f", "-", input=as_list(*pair.values()))
    assert "Warning: selector-overlap" not in proc.stderr, proc.stderr
    assert {name: resource_version(apiserver, name, namespace) for name in pair} == versions
    assert_isolated(apiserver, namespace, pair)


def test_create_then_server_side_apply(
    apiserver: Envtest, gpumix_webhook: Webhook, namespace: str
) -> None:
    """``kubectl create`` and then a server-side apply under another field manager: the
    selector is one atomic field owned by kubectl-create with a value the manifest does
    not have, so kube-apiserver reports a conflict before admission runs. Forcing it
    (what Argo CD's and Flux's server-side apply do) takes ownership; gpumix puts its
    label back, so the stored object does not change and later syncs are plain no-ops."""
    pair = headline_pair(namespace)
    for name in (A100, A40):
        create_and_wait_cached(
            apiserver, gpumix_webhook, "Deployment", pair[name], args=("create",)
        )
    proc = apiserver.kubectl(*ARGOCD, "-f", "-", input=as_list(pair[A100]), check=False)
    assert proc.returncode != 0
    assert "conflict" in proc.stderr and ".spec.selector" in proc.stderr, proc.stderr

    forced = apiserver.kubectl(
        *ARGOCD, "--force-conflicts", "-f", "-", input=as_list(*pair.values())
    )
    assert "gpumix kept gpumix.io/deployment set by an earlier fix" in forced.stderr
    assert_isolated(apiserver, namespace, pair)
    # only the ownership moved (managedFields): the spec, so the generation, is the same
    assert {name: generation(apiserver, name, namespace) for name in pair} == {
        name: 1 for name in pair
    }
    versions = {name: resource_version(apiserver, name, namespace) for name in pair}
    # from now on the sync owns the selector: no conflict, no change
    again = apiserver.kubectl(*ARGOCD, "-f", "-", input=as_list(*pair.values()))
    assert "Warning: selector-overlap" not in again.stderr
    assert {name: resource_version(apiserver, name, namespace) for name in pair} == versions


def test_a_broad_deployment_from_before_still_denies_the_next(
    apiserver: Envtest, gpumix_webhook: Webhook
) -> None:
    """One created while the namespace was in warn mode is not isolated; once the
    namespace is enforced, the next of its model group cannot be fixed against it."""
    ns = new_namespace(apiserver, gpumix_webhook, labels={"gpumix.io/mode": "warn"})
    pair = headline_pair(ns)
    create_and_wait_cached(apiserver, gpumix_webhook, "Deployment", pair[A100])
    assert "gpumix.io/deployment" not in selector_labels(get(apiserver, "deploy", A100, ns) or {})
    apiserver.kubectl("label", "namespace", ns, "gpumix.io/mode=enforce", "--overwrite")

    def denied() -> subprocess.CompletedProcess[str] | None:
        proc = apiserver.kubectl("apply", "-f", "-", input=as_list(pair[A40]), check=False)
        return proc if proc.returncode != 0 else None

    proc = wait_until(denied, timeout_s=15, what="the webhook to see the enforced namespace")
    assert DENIED in proc.stderr and "already exist(s) with a broad selector" in proc.stderr


# --------------------------------------------------------------------------- ceilings


def pool_deployment(name: str, namespace: str, product: str) -> Obj:
    return gpu_deployment(name, namespace, product)


def test_ceilings_survive_cordons_drains_and_scale_in(
    apiserver: Envtest, gpumix_webhook: Webhook, namespace: str
) -> None:
    """Two nodes with 2 GPUs each; an HPA at 4 is admitted. Cordoning a node, deleting
    it (scale-in), annotating the HPA and re-applying it unchanged with Argo CD's field
    manager are all allowed; raising the ceiling is judged against the pool."""
    product = f"E2E-POOL-{namespace}"
    nodes = [f"{namespace}-a", f"{namespace}-b"]
    before = gpumix_webhook.cached("Node")
    for n in nodes:
        apiserver.kubectl("create", "-f", "-", input=json.dumps(gpu_node(n, product, 2)))
    wait_cached(gpumix_webhook, "Node", before + 2)
    dep = gpu_deployment("llama", namespace, product)
    create_and_wait_cached(apiserver, gpumix_webhook, "Deployment", dep)
    scaler = hpa("v2", "llama", namespace, 4)
    apiserver.kubectl(*ARGOCD, "-f", "-", input=json.dumps(scaler))

    apiserver.kubectl("cordon", nodes[1])
    # a cordoned node still counts: a new HPA at 4 is admitted too
    apiserver.kubectl("create", "-f", "-", input=json.dumps(hpa("v2", "twin", namespace, 4)))
    apiserver.kubectl("delete", "node", nodes[1])
    wait_until(
        lambda: gpumix_webhook.cached("Node") == before + 1,
        timeout_s=15,
        what="the deleted node out of the webhook's cache",
    )
    apiserver.kubectl("annotate", "hpa", "llama", "-n", namespace, "team=ml")
    proc = apiserver.kubectl(*ARGOCD, "-f", "-", input=json.dumps(scaler))
    assert "max-replicas-above-ceiling" not in proc.stderr

    raised = copy.deepcopy(scaler)
    raised["spec"]["maxReplicas"] = 5
    proc = apiserver.kubectl(*ARGOCD, "-f", "-", input=json.dumps(raised), check=False)
    assert proc.returncode != 0 and DENIED in proc.stderr
    assert f"the pool of {product} GPUs holds 2" in proc.stderr
    assert "lower it to at most 2" in proc.stderr and "gpuPoolCapacity" in proc.stderr


def test_scale_from_zero_pool(apiserver: Envtest, gpumix_webhook: Webhook, namespace: str) -> None:
    """No node of the type yet: the ceiling cannot be judged and is admitted. Once the
    first 1-GPU node appears the HPA can still be annotated and re-applied; a new HPA
    above what is there is denied and told about gpuPoolCapacity."""
    product = f"E2E-ZERO-{namespace}"
    create_and_wait_cached(
        apiserver, gpumix_webhook, "Deployment", gpu_deployment("llama", namespace, product)
    )
    scaler = hpa("v2", "llama", namespace, 8)
    apiserver.kubectl("create", "-f", "-", input=json.dumps(scaler))
    before = gpumix_webhook.cached("Node")
    apiserver.kubectl("create", "-f", "-", input=json.dumps(gpu_node(f"{namespace}-z", product, 1)))
    wait_cached(gpumix_webhook, "Node", before + 1)
    apiserver.kubectl("annotate", "hpa", "llama", "-n", namespace, "team=ml")
    apiserver.kubectl("apply", "-f", "-", input=json.dumps(scaler))
    proc = apiserver.kubectl(
        "create", "-f", "-", input=json.dumps(hpa("v2", "new", namespace, 8)), check=False
    )
    assert proc.returncode != 0 and "gpuPoolCapacity" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- scope, types


def test_cpu_apps_pinned_to_machine_types_are_left_alone(
    apiserver: Envtest, gpumix_webhook: Webhook, namespace: str
) -> None:
    for name, machine in (("store-a", "m6i.2xlarge"), ("store-b", "m7g.2xlarge")):
        labels = {"app": "storefront"}
        dep = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "nodeSelector": {"node.kubernetes.io/instance-type": machine},
                        "containers": [{"name": "nginx", "image": "nginx:1.27"}],
                    },
                },
            },
        }
        proc = apiserver.kubectl("apply", "-f", "-", input=json.dumps(dep))
        assert "Warning" not in proc.stderr, proc.stderr
        wait_until(
            lambda n=name: get(apiserver, "deployment", n, namespace), timeout_s=5, what=name
        )


def model_deployment(name: str, namespace: str, node_selector: dict[str, str]) -> Obj:
    """A GPU Deployment of model ``llama`` selecting by ``app: llama`` (not by the model
    label, so it is not isolated as the first of its group)."""
    dep = gpu_deployment(name, namespace, "unused")
    dep["metadata"]["labels"] = {"gpumix.io/model": "llama"}
    dep["spec"]["selector"] = {"matchLabels": {"app": "llama"}}
    dep["spec"]["template"]["metadata"]["labels"] = {"app": "llama"}
    dep["spec"]["template"]["spec"]["nodeSelector"] = node_selector
    return dep


def test_gpu_types_by_well_known_and_unknown_keys(
    apiserver: Envtest, gpumix_webhook: Webhook, namespace: str
) -> None:
    """``accelerator`` (the Kubernetes docs' example) is read by default: A100 against L4
    is an error (denied). A key gpumix does not read makes it a warning that names it
    and the setting to add it to."""
    a100 = model_deployment("a100", namespace, {"accelerator": "nvidia-tesla-a100"})
    create_and_wait_cached(apiserver, gpumix_webhook, "Deployment", a100)
    l4 = model_deployment("l4", namespace, {"accelerator": "nvidia-l4"})
    proc = apiserver.kubectl("apply", "-f", "-", input=json.dumps(l4), check=False)
    assert proc.returncode != 0 and DENIED in proc.stderr
    assert "GPU types differ (nvidia-l4 vs nvidia-tesla-a100)" in proc.stderr, proc.stderr

    other = new_namespace(apiserver, gpumix_webhook)
    create_and_wait_cached(
        apiserver,
        gpumix_webhook,
        "Deployment",
        model_deployment("a100", other, {"example.com/gpu": "a100"}),
    )
    proc = apiserver.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(model_deployment("l4", other, {"example.com/gpu": "l4"})),
    )
    assert "Warning: selector-overlap" in proc.stderr
    assert "pins nodes by example.com/gpu, which gpumix does not read as a GPU type" in proc.stderr
    assert "gpuNodeLabelKeys" in proc.stderr


def test_machine_type_and_product_on_the_same_nodes_are_one_type(
    apiserver: Envtest, gpumix_webhook: Webhook, namespace: str
) -> None:
    product, machine = f"A100-{namespace}", f"p4d-{namespace}"
    node = gpu_node(f"{namespace}-p4d", product, 8)
    node["metadata"]["labels"]["node.kubernetes.io/instance-type"] = machine
    before = gpumix_webhook.cached("Node")
    apiserver.kubectl("create", "-f", "-", input=json.dumps(node))
    wait_cached(gpumix_webhook, "Node", before + 1)
    by_product = model_deployment("by-product", namespace, {"nvidia.com/gpu.product": product})
    create_and_wait_cached(apiserver, gpumix_webhook, "Deployment", by_product)
    by_machine = model_deployment(
        "by-machine", namespace, {"node.kubernetes.io/instance-type": machine}
    )
    # one GPU type, no autoscaler: two owners of the same pods is a warning, not a denial
    proc = apiserver.kubectl("apply", "-f", "-", input=json.dumps(by_machine))
    assert "Warning: selector-overlap" in proc.stderr and "GPU types differ" not in proc.stderr


# --------------------------------------------------------------------------- warnings, modes


def test_no_warning_for_pairs_that_capture_nothing(
    apiserver: Envtest, gpumix_webhook: Webhook, namespace: str
) -> None:
    """One isolated by app.kubernetes.io/instance, one by gpumix.io/deployment, both
    autoscaled: neither selects the other's pods, so updates print nothing."""
    model = {"model.aibrix.ai/name": "llama"}
    a = model_deployment("by-instance", namespace, {"nvidia.com/gpu.product": "NVIDIA-L4"})
    a["spec"]["selector"]["matchLabels"] = {**model, "app.kubernetes.io/instance": "a"}
    a["spec"]["template"]["metadata"]["labels"] = {**model, "app.kubernetes.io/instance": "a"}
    b = model_deployment("by-gpumix", namespace, {"nvidia.com/gpu.product": "NVIDIA-A10G"})
    b["spec"]["selector"]["matchLabels"] = {**model, "gpumix.io/deployment": "by-gpumix"}
    b["spec"]["template"]["metadata"]["labels"] = {**model, "gpumix.io/deployment": "by-gpumix"}
    create_and_wait_cached(apiserver, gpumix_webhook, "Deployment", a, b)
    scalers = []
    for dep in (a, b):
        s = hpa("v2", dep["metadata"]["name"], namespace, 3)
        s["spec"]["scaleTargetRef"]["name"] = dep["metadata"]["name"]
        scalers.append(s)
    apiserver.kubectl("apply", "-f", "-", input=as_list(*scalers))
    for dep in (a, b):
        dep["spec"]["template"]["spec"]["containers"][0]["image"] = "vllm/vllm-openai:v0.7.0"
    proc = apiserver.kubectl("apply", "-f", "-", input=as_list(a, b, *scalers))
    assert "Warning" not in proc.stderr, proc.stderr


def test_invalid_mode_label_is_reported_and_the_policy_mode_applies(
    apiserver: Envtest, gpumix_webhook: Webhook
) -> None:
    ns = new_namespace(apiserver, gpumix_webhook, labels={"gpumix.io/mode": "off"})
    counted = metric_sum(
        gpumix_webhook.metrics(), "gpumix_admission_findings_total", rule="invalid-mode-label"
    )
    # enforce applies: the HPA without a ceiling gets the default instead of the 422
    proc = apiserver.kubectl("create", "-f", "-", input=json.dumps(hpa("v2", "h", ns)))
    expected = (
        f"Warning: invalid-mode-label: namespace {ns} has the label gpumix.io/mode='off', "
        "which is not one of enforce, warn, audit; it is ignored and the policy's mode "
        "(enforce) applies"
    )
    assert expected in proc.stderr, proc.stderr
    assert proc.stderr.count("invalid-mode-label") == 1  # once per admission
    assert (get(apiserver, "hpa", "h", ns) or {})["spec"]["maxReplicas"] == 10
    name = f"d-{uuid.uuid4().hex[:6]}"
    proc = apiserver.kubectl(
        "create", "-f", "-", input=json.dumps(gpu_deployment(name, ns, "NVIDIA-L4"))
    )
    assert "invalid-mode-label" in proc.stderr
    assert (
        metric_sum(
            gpumix_webhook.metrics(),
            "gpumix_admission_findings_total",
            rule="invalid-mode-label",
            severity="warning",
        )
        == counted + 2
    )
