"""Which writes reach the webhook (gpumix.kube.scope); the CEL twin of ``judged`` is
evaluated on a real kube-apiserver in tests/e2e/test_admission_scope.py."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gpumix.kube.objects import DeploymentView, view_of
from gpumix.kube.policy import Policy
from gpumix.kube.scope import cel_expression, could_be_in_scope, judged

POLICY = Policy()

label_keys = st.sampled_from(
    ["app", "gpumix.io/model", "model.aibrix.ai/name", "gpumix.io/gpu-type", "gpumix.io/model-x"]
)
label_values = st.sampled_from(["", "llama", "NVIDIA-A100"])
labels = st.dictionaries(label_keys, label_values, max_size=3)
resource_names = st.sampled_from(
    [
        "cpu",
        "memory",
        "nvidia.com/gpu",
        "nvidia.com/mig-1g.5gb",
        "nvidia.com/mig",
        "amd.com/gpu",
        "google.com/tpu",
        "example.com/widget",
        "nvidia.com/gpux",
    ]
)
quantities = st.sampled_from(["0", "1", "2", "1e400", "0.5", "100m", "-1"])
amounts = st.dictionaries(resource_names, quantities, max_size=3)
containers = st.lists(
    st.fixed_dictionaries(
        {"name": st.just("c")},
        optional={
            "resources": st.fixed_dictionaries(
                {}, optional={"limits": amounts, "requests": amounts}
            ),
            "restartPolicy": st.just("Always"),
        },
    ),
    max_size=2,
)


@st.composite
def deployments(draw: Any) -> dict[str, Any]:
    pod: dict[str, Any] = {"containers": draw(containers)}
    init = draw(containers)
    if init:
        pod["initContainers"] = init
    if draw(st.booleans()):
        pod["nodeSelector"] = {"nvidia.com/gpu.product": "NVIDIA-A100"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d", "namespace": "ns", "labels": draw(labels)},
        "spec": {
            "selector": {"matchLabels": {"app": "d"}},
            "template": {"metadata": {"labels": {"app": "d", **draw(labels)}}, "spec": pod},
        },
    }


@settings(max_examples=400, deadline=None)
@given(deployments())
def test_every_deployment_in_scope_is_judged(obj: dict[str, Any]) -> None:
    """A false skip would let an in-scope write through unjudged."""
    view = view_of(obj, POLICY)
    assert isinstance(view, DeploymentView)
    if view.in_scope or view.unreadable:
        assert could_be_in_scope(obj, POLICY)
        assert judged("apps", obj, None, POLICY)


def cpu(**pod_labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web", **pod_labels}},
                "spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": "1"}}}]},
            },
        },
    }


def gpu() -> dict[str, Any]:
    obj = cpu()
    obj["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "limits": {"nvidia.com/gpu": "1"}
    }
    return obj


def test_cpu_deployments_are_not_judged_and_the_rest_are() -> None:
    assert not judged("apps", cpu(), None, POLICY)
    assert not judged("apps", cpu(), cpu(), POLICY)
    assert judged("apps", gpu(), None, POLICY)
    assert judged("apps", cpu(**{"gpumix.io/gpu-type": "L4"}), None, POLICY)
    # every autoscaler, whatever it looks like
    assert judged("autoscaling", {}, None, POLICY)
    assert judged("keda.sh", {}, None, POLICY)


def test_an_update_out_of_scope_is_judged() -> None:
    assert judged("apps", cpu(), gpu(), POLICY)
    isolated = cpu()
    isolated["spec"]["selector"]["matchLabels"]["gpumix.io/deployment"] = "web"
    assert judged("apps", cpu(), isolated, POLICY)


def test_policy_names_reach_the_expression() -> None:
    policy = Policy(model_label_keys=("team/model",), gpu_resource_names=("x.io/npu", "y.io/t-*"))
    text = cel_expression(policy)
    assert '["team/model"]' in text and '["team/model","gpumix.io/gpu-type"]' in text
    assert 'r in ["x.io/npu"] || ["y.io/t-"].exists' in text
    assert text.count("(") == text.count(")")
    assert judged("apps", _with_resource("y.io/t-7"), None, policy)
    assert not judged("apps", _with_resource("nvidia.com/gpu"), None, policy)


def _with_resource(name: str) -> dict[str, Any]:
    obj = cpu()
    obj["spec"]["template"]["spec"]["containers"][0]["resources"] = {"requests": {name: "1"}}
    return obj
