"""Typed views of Deployments, autoscalers, Nodes and Namespaces."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpumix.kube.objects import (
    AutoscalerView,
    DeploymentView,
    NamespaceView,
    NodeView,
    ObjectRef,
    autoscaler_info,
    read_view,
    view_of,
)
from gpumix.kube.policy import Policy

POLICY = Policy()


def scaler(api_version: str, kind: str, spec: dict[str, Any], ns: str | None = "ml") -> Any:
    metadata: dict[str, Any] = {"name": "s"}
    if ns is not None:
        metadata["namespace"] = ns
    view = view_of(
        {"apiVersion": api_version, "kind": kind, "metadata": metadata, "spec": spec}, POLICY
    )
    assert isinstance(view, AutoscalerView)
    return view


TARGET = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "engine"}


@pytest.mark.parametrize(
    ("api_version", "kind", "field"),
    [
        ("autoscaling/v2", "HorizontalPodAutoscaler", "maxReplicas"),
        ("autoscaling/v1", "HorizontalPodAutoscaler", "maxReplicas"),
        ("keda.sh/v1alpha1", "ScaledObject", "maxReplicaCount"),
        ("autoscaling.aibrix.ai/v1alpha1", "PodAutoscaler", "maxReplicas"),
    ],
)
def test_autoscaler_views(api_version: str, kind: str, field: str) -> None:
    floor = field.replace("max", "min")
    v = scaler(api_version, kind, {"scaleTargetRef": TARGET, field: 7, floor: 2})
    assert v.kind == kind
    assert v.ref == ObjectRef(kind, "ml", "s")
    assert v.target == ObjectRef("Deployment", "ml", "engine")
    assert (v.ceiling, v.floor, v.ceiling_field) == (7, 2, f"spec.{field}")
    assert v.api_version == api_version


@pytest.mark.parametrize(
    ("api_version", "kind", "field"),
    [
        ("autoscaling/v2", "HorizontalPodAutoscaler", "maxReplicas"),
        ("autoscaling/v1", "HorizontalPodAutoscaler", "maxReplicas"),
        ("keda.sh/v1alpha1", "ScaledObject", "maxReplicaCount"),
        ("autoscaling.aibrix.ai/v1alpha1", "PodAutoscaler", "maxReplicas"),
    ],
)
@pytest.mark.parametrize("value", [None, 0, "10", True, 2.5])
def test_ceiling_absent_zero_or_not_a_number_is_missing(
    api_version: str, kind: str, field: str, value: object
) -> None:
    spec: dict[str, Any] = {"scaleTargetRef": TARGET}
    if value is not None:
        spec[field] = value
    assert scaler(api_version, kind, spec).ceiling is None


def test_keda_target_kind_defaults_to_deployment() -> None:
    v = scaler("keda.sh/v1alpha1", "ScaledObject", {"scaleTargetRef": {"name": "engine"}})
    assert v.target == ObjectRef("Deployment", "ml", "engine")


def test_target_of_another_kind_is_kept() -> None:
    ref = {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "engine"}
    v = scaler("autoscaling/v2", "HorizontalPodAutoscaler", {"scaleTargetRef": ref})
    assert v.target == ObjectRef("StatefulSet", "ml", "engine")


def test_no_target_and_default_namespace() -> None:
    v = scaler("autoscaling/v2", "HorizontalPodAutoscaler", {"maxReplicas": 3}, ns=None)
    assert v.target is None
    assert v.namespace == "default"


@pytest.mark.parametrize(
    ("api_version", "kind"),
    [
        ("autoscaling/v2", "ScaledObject"),
        ("keda.sh/v1alpha1", "HorizontalPodAutoscaler"),
        ("v1", "HorizontalPodAutoscaler"),
        ("example.com/v1", "PodAutoscaler"),
    ],
)
def test_unknown_autoscaler_kinds(api_version: str, kind: str) -> None:
    assert autoscaler_info(api_version, kind) is None
    obj = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "s"}}
    assert view_of(obj, POLICY) is None


def deployment(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "engine", "labels": {"model.aibrix.ai/name": "llama"}},
        "spec": spec,
    }


def test_deployment_view() -> None:
    obj = deployment(
        replicas=2,
        selector={"matchLabels": {"app": "engine"}},
        template={
            "metadata": {"labels": {"app": "engine", "bad": 1}},
            "spec": {
                "nodeSelector": {"nvidia.com/gpu.product": "A100"},
                "containers": [{"resources": {"limits": {"nvidia.com/gpu": 2}}}],
            },
        },
    )
    v = view_of(obj, POLICY)
    assert isinstance(v, DeploymentView)
    assert v.ref == ObjectRef("Deployment", "default", "engine")
    assert v.selector.matches({"app": "engine"})
    assert v.selector_error is None
    assert dict(v.template_labels) == {"app": "engine"}
    assert (v.gpu_type.name, v.gpus_per_replica, v.model, v.replicas) == ("A100", 2, "llama", 2)
    assert v.in_scope


def test_model_label_on_the_template_counts() -> None:
    obj = deployment(
        selector={"matchLabels": {"app": "x"}},
        template={"metadata": {"labels": {"app": "x", "gpumix.io/model": "m"}}},
    )
    obj["metadata"]["labels"] = {}
    v = view_of(obj, POLICY)
    assert isinstance(v, DeploymentView)
    assert v.model == "m" and v.in_scope


def test_cpu_app_is_out_of_scope() -> None:
    obj = deployment(
        selector={"matchLabels": {"app": "web"}}, template={"metadata": {"labels": {"app": "web"}}}
    )
    obj["metadata"]["labels"] = {"app": "web"}
    v = view_of(obj, POLICY)
    assert isinstance(v, DeploymentView)
    assert not v.in_scope


def test_invalid_selector_is_kept_as_an_error() -> None:
    obj = deployment(
        selector={"matchExpressions": [{"key": "a", "operator": "Has"}]},
        template={"metadata": {"labels": {"a": "b"}}},
    )
    v = view_of(obj, POLICY)
    assert isinstance(v, DeploymentView)
    assert v.selector_error is not None
    assert v.selector_error.field == "spec.selector.matchExpressions[0].operator"


@pytest.mark.parametrize("selector", [None, {}, {"matchLabels": {}, "matchExpressions": []}])
def test_missing_or_empty_deployment_selector_is_an_error(selector: Any) -> None:
    # apps/v1 refuses a Deployment without a selector, or with an empty one
    spec: dict[str, Any] = {"template": {"metadata": {"labels": {"a": "b"}}}}
    if selector is not None:
        spec["selector"] = selector
    v = view_of(deployment(**spec), POLICY)
    assert isinstance(v, DeploymentView)
    assert v.selector_error is not None
    assert v.selector_error.field == "spec.selector"


@pytest.mark.parametrize("replicas", ["2", True, None])
def test_replicas_not_an_int(replicas: object) -> None:
    v = view_of(deployment(replicas=replicas, selector={"matchLabels": {"a": "b"}}), POLICY)
    assert isinstance(v, DeploymentView)
    assert v.replicas is None


def test_old_deployment_api_is_ignored() -> None:
    obj = deployment(selector={"matchLabels": {"a": "b"}})
    obj["apiVersion"] = "extensions/v1beta1"
    assert view_of(obj, POLICY) is None


def test_node_view() -> None:
    obj = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "n1", "labels": {"nvidia.com/gpu.product": "A100"}},
        "spec": {"unschedulable": True},
        "status": {"allocatable": {"nvidia.com/gpu": "8", "amd.com/gpu": 2, "cpu": "64"}},
    }
    v = view_of(obj, POLICY)
    assert v == NodeView("n1", frozenset({"A100"}), 10, True, {"nvidia.com/gpu.product": "A100"})
    obj["status"] = {"allocatable": {"nvidia.com/gpu": "8.5"}}
    v = view_of(obj, POLICY)
    assert isinstance(v, NodeView) and v.allocatable_gpus == 0


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        ("12", 12),
        (" 4 ", 4),
        ("0", None),
        ("-3", None),
        ("ten", None),
        ("²", None),
        ("", None),
        ("9" * 5000, None),  # int() refuses texts this long: read, never raised
    ],
)
def test_namespace_default_max_replicas(annotation: str, expected: int | None) -> None:
    obj = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": "ml",
            "labels": {"gpumix.io/mode": "warn"},
            "annotations": {"gpumix.io/default-max-replicas": annotation},
        },
    }
    v = view_of(obj, POLICY)
    assert isinstance(v, NamespaceView)
    assert v.default_max_replicas == expected
    assert v.mode == "warn"
    assert bool(v.unreadable) == (expected is None)
    if v.unreadable:
        assert v.unreadable[0].field == "metadata.annotations[gpumix.io/default-max-replicas]"


def test_namespace_unknown_mode() -> None:
    v = view_of(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "ml", "labels": {"gpumix.io/mode": "loud"}},
        },
        POLICY,
    )
    assert isinstance(v, NamespaceView) and v.mode is None
    assert v.invalid_mode == "loud"  # kept, so admission can say it is ignored
    ok = view_of(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "ml", "labels": {"gpumix.io/mode": "warn"}},
        },
        POLICY,
    )
    assert isinstance(ok, NamespaceView) and ok.invalid_mode is None


def test_object_ref() -> None:
    ref = ObjectRef("Deployment", "ml", "a")
    assert str(ref) == "Deployment ml/a"
    assert str(ObjectRef("Node", "", "n1")) == "Node n1"
    assert ref.as_dict() == {"kind": "Deployment", "namespace": "ml", "name": "a"}
    assert sorted([ObjectRef("Deployment", "x", "a"), ref]) == [
        ref,
        ObjectRef("Deployment", "x", "a"),
    ]


def test_other_kinds_have_no_view() -> None:
    assert (
        view_of({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}, POLICY) is None
    )
    assert view_of({"kind": 3}, POLICY) is None


def test_gpu_node_answers_to_its_machine_type_and_a_cpu_node_does_not() -> None:
    def node_obj(gpus: int) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": "n",
                "labels": {
                    "node.kubernetes.io/instance-type": "p4d.24xlarge",
                    "nvidia.com/gpu.product": "A100",
                },
            },
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus), "google.com/tpu": "0"}},
        }

    gpu = view_of(node_obj(8), POLICY)
    assert isinstance(gpu, NodeView) and gpu.gpu_names == {"A100", "p4d.24xlarge"}
    cpu = view_of(node_obj(0), POLICY)
    assert isinstance(cpu, NodeView) and cpu.gpu_names == {"A100"}
    assert cpu.type_labels["node.kubernetes.io/instance-type"] == "p4d.24xlarge"
# Any JSON value the API server or a file could hand over, and the odd ones a decoder
# lets in (NaN, Infinity, integers past 64 bits).
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["1e400", "10e399", "inf", "NaN", "-1", "0.5", "1Ki", "", "9" * 200])
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
PATHS = (
    ("spec",),
    ("spec", "selector"),
    ("spec", "replicas"),
    ("spec", "template"),
    ("spec", "template", "metadata", "labels"),
    ("spec", "template", "spec", "containers"),
    ("spec", "template", "spec", "initContainers"),
    ("spec", "template", "spec", "containers", 0, "resources"),
    ("spec", "template", "spec", "containers", 0, "resources", "limits", "nvidia.com/gpu"),
    ("spec", "template", "spec", "containers", 0, "resources", "requests", "amd.com/gpu"),
    ("spec", "template", "spec", "nodeSelector"),
    ("spec", "template", "spec", "affinity"),
    ("spec", "scaleTargetRef"),
    ("spec", "maxReplicas"),
    ("metadata",),
    ("metadata", "name"),
    ("metadata", "namespace"),
    ("metadata", "labels"),
    ("metadata", "annotations"),
    ("status", "allocatable"),
    ("status", "allocatable", "nvidia.com/gpu"),
    ("apiVersion",),
)
SKELETONS = (
    ("apps/v1", "Deployment"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("v1", "Node"),
    ("v1", "Namespace"),
)


def _put(obj: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    node: Any = obj
    for key in path[:-1]:
        if isinstance(key, int):
            if not isinstance(node, list) or not node:
                return
            if not isinstance(node[key], dict):
                node[key] = {}
            node = node[key]
        else:
            if not isinstance(node.get(key), (dict, list)):
                node[key] = [{}] if key in ("containers", "initContainers") else {}
            node = node[key]
            if isinstance(node, list) and not isinstance(path[path.index(key) + 1], int):
                return
    if isinstance(node, dict):
        node[path[-1]] = value


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(SKELETONS),
    st.lists(st.tuples(st.sampled_from(PATHS), json_values), min_size=1, max_size=4),
)
def test_no_value_anywhere_makes_reading_an_object_raise(
    skeleton: tuple[str, str], edits: list[tuple[tuple[Any, ...], Any]]
) -> None:
    api_version, kind = skeleton
    obj: dict[str, Any] = {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": "x", "namespace": "ml"},
        "spec": {"selector": {"matchLabels": {"app": "x"}}},
    }
    for path, value in edits:
        _put(obj, path, value)
    view = view_of(obj, POLICY)  # never raises: no isolation needed for values
    assert (read_view(obj, POLICY) is None) == (view is None)
    for fact in getattr(view, "unreadable", ()):
        assert fact.field and fact.reason and len(fact.value) <= 50
