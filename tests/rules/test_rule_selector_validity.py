"""Rules invalid-selector and selector-immutable, and the fixes module."""

from __future__ import annotations

from typing import Any

import pytest

from gpumix.kube.fields import is_label_value
from gpumix.kube.gputype import CPU_ONLY, GpuType
from gpumix.kube.objects import DeploymentView, view_of
from gpumix.kube.policy import Policy
from gpumix.kube.selectors import overlaps
from gpumix.kube.snapshot import Snapshot
from gpumix.rules import invalid_selector, selector_immutable
from gpumix.rules.base import Finding, sort_findings
from gpumix.rules.engine import evaluate_snapshot
from gpumix.rules.fixes import deployment_label_value, isolate_deployment, set_ceiling

POLICY = Policy()


def dep_obj(
    selector: Any, name: str = "engine", labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "ml"},
        "spec": {
            "selector": selector,
            "template": {
                "metadata": {"labels": labels if labels is not None else {"app": "engine"}}
            },
        },
    }


def dep(selector: Any, name: str = "engine") -> DeploymentView:
    v = view_of(dep_obj(selector, name), POLICY)
    assert isinstance(v, DeploymentView)
    return v


@pytest.mark.parametrize(
    ("selector", "field"),
    [
        ({"matchExpressions": [{"key": "app", "operator": "Equals", "values": ["x"]}]}, "operator"),
        ({"matchExpressions": [{"key": "app", "operator": "In", "values": []}]}, "values"),
        ({"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]}, "values"),
        ({"matchLabels": {"app": 3}}, "matchLabels.app"),
        (None, "spec.selector"),
        ({}, "spec.selector"),
    ],
)
def test_invalid_selector_is_an_error_finding(selector: Any, field: str) -> None:
    got = invalid_selector.check(dep(selector))
    assert [(f.rule, f.severity, f.fixable) for f in got] == [("invalid-selector", "error", False)]
    assert field in got[0].message
    assert "Deployment ml/engine" in got[0].message


def test_valid_selector_has_no_finding() -> None:
    assert invalid_selector.check(dep({"matchLabels": {"app": "engine"}})) == []


def test_engine_reports_invalid_selector_and_no_overlap() -> None:
    snap = Snapshot.from_objects(
        [
            dep_obj({"matchExpressions": [{"key": "app", "operator": "Equals"}]}, "bad"),
            dep_obj({"matchLabels": {"app": "engine"}}, "good"),
        ],
        POLICY,
    )
    assert [(f.rule, f.subject.name) for f in evaluate_snapshot(snap, POLICY)] == [
        ("invalid-selector", "bad")
    ]


def test_selector_that_does_not_select_its_own_template_is_invalid() -> None:
    # the API server refuses: "selector does not match template labels"
    v = view_of(dep_obj({"matchLabels": {"app": "other"}}), POLICY)
    assert isinstance(v, DeploymentView)
    got = invalid_selector.check(v)
    assert [f.rule for f in got] == ["invalid-selector"]
    assert "does not match" in got[0].message


def immutable(old_sel: dict[str, Any], new_sel: dict[str, Any]) -> list[Any]:
    return selector_immutable.check(
        dep(old_sel), dep(new_sel), old_selector=old_sel, new_selector=new_sel
    )


def test_selector_immutable_compares_as_the_api_server_does() -> None:
    base = {"matchLabels": {"app": "engine", "tier": "gpu"}}
    assert immutable(base, {"matchLabels": {"tier": "gpu", "app": "engine"}}) == []
    # an equivalent In expression is still a change of the field
    as_expr = {"matchExpressions": [{"key": "app", "operator": "In", "values": ["engine"]}]}
    assert immutable({"matchLabels": {"app": "engine"}}, as_expr) != []
    two = [
        {"key": "a", "operator": "Exists"},
        {"key": "b", "operator": "In", "values": ["x", "y"]},
    ]
    assert immutable({"matchExpressions": two}, {"matchExpressions": two[::-1]}) != []


def test_selector_immutable() -> None:
    old_sel = {"matchLabels": {"app": "engine"}}
    assert immutable(old_sel, {"matchLabels": {"app": "engine"}}) == []
    got = immutable(old_sel, {"matchLabels": {"app": "engine", "gpumix.io/deployment": "engine"}})
    assert [(f.rule, f.severity) for f in got] == [("selector-immutable", "error")]
    msg = got[0].message
    assert "immutable" in msg and "recreate" in msg
    assert "app=engine" in msg and "gpumix.io/deployment=engine" in msg
    assert "kubectl delete deployment engine -n ml" in msg


def test_isolate_deployment() -> None:
    obj = dep_obj({"matchExpressions": [{"key": "app", "operator": "Exists"}]})
    isolate_deployment(obj, GpuType("pinned", "A100"))
    assert obj["spec"]["selector"]["matchLabels"] == {"gpumix.io/deployment": "engine"}
    assert obj["spec"]["template"]["metadata"]["labels"] == {
        "app": "engine",
        "gpumix.io/deployment": "engine",
        "gpumix.io/gpu-type": "A100",
    }
    a = view_of(obj, POLICY)
    b = view_of(dep_obj({"matchExpressions": [{"key": "app", "operator": "Exists"}]}, "b"), POLICY)
    assert isinstance(a, DeploymentView) and isinstance(b, DeploymentView)
    isolated_b = dep_obj({"matchLabels": {"app": "engine"}}, "b")
    isolate_deployment(isolated_b, CPU_ONLY)
    vb = view_of(isolated_b, POLICY)
    assert isinstance(vb, DeploymentView)
    assert not overlaps(a.selector, vb.selector)
    assert "gpumix.io/gpu-type" not in isolated_b["spec"]["template"]["metadata"]["labels"]


def test_isolate_deployment_keeps_an_existing_gpu_type_and_skips_bad_values() -> None:
    obj = dep_obj({"matchLabels": {"app": "engine"}}, labels={"gpumix.io/gpu-type": "a100"})
    isolate_deployment(obj, GpuType("pinned", "NVIDIA A100"))
    assert obj["spec"]["template"]["metadata"]["labels"]["gpumix.io/gpu-type"] == "a100"
    obj = dep_obj({"matchLabels": {"app": "engine"}})
    isolate_deployment(obj, GpuType("pinned", "NVIDIA A100 (80GB)"))
    assert "gpumix.io/gpu-type" not in obj["spec"]["template"]["metadata"]["labels"]


def test_isolate_creates_missing_maps() -> None:
    obj: dict[str, Any] = {"metadata": {"name": "x"}}
    isolate_deployment(obj, CPU_ONLY)
    assert obj["spec"]["selector"]["matchLabels"] == {"gpumix.io/deployment": "x"}
    assert obj["spec"]["template"]["metadata"]["labels"] == {"gpumix.io/deployment": "x"}


def test_set_ceiling() -> None:
    obj: dict[str, Any] = {"spec": {"minReplicaCount": 1}}
    set_ceiling(obj, "spec.maxReplicaCount", 7)
    assert obj == {"spec": {"minReplicaCount": 1, "maxReplicaCount": 7}}


@pytest.mark.parametrize(
    ("value", "ok"),
    [("", True), ("a", True), ("a.b-c_d", True), ("-a", False), ("a b", False), ("x" * 64, False)],
)
def test_label_values(value: str, ok: bool) -> None:
    assert is_label_value(value) == ok


def test_sort_findings_errors_first() -> None:
    a, b = (
        dep({"matchLabels": {"app": "engine"}}, "a").ref,
        dep({"matchLabels": {"app": "x"}}, "b").ref,
    )
    fs = [
        Finding("r", "warning", a, "m"),
        Finding("r", "error", b, "m"),
        Finding("q", "error", b, "m"),
    ]
    assert [(f.severity, f.rule) for f in sort_findings(fs)] == [
        ("error", "q"),
        ("error", "r"),
        ("warning", "r"),
    ]
    assert fs[0].as_dict() == {
        "rule": "r",
        "severity": "warning",
        "kind": "Deployment",
        "namespace": "ml",
        "name": "a",
        "message": "m",
        "related": [],
        "fixable": False,
    }


def test_long_deployment_names_give_a_valid_label_value() -> None:
    short = "llama-70b-a100"
    assert deployment_label_value(short) == short
    long_a = "serving." + "x" * 60 + "-a100"
    long_b = "serving." + "x" * 60 + "-a40"
    va, vb = deployment_label_value(long_a), deployment_label_value(long_b)
    assert is_label_value(va) and is_label_value(vb)
    assert va != vb
    assert va.startswith("serving.xxx")
    obj = dep_obj({"matchLabels": {"app": "engine"}}, long_a)
    isolate_deployment(obj, CPU_ONLY)
    assert obj["spec"]["selector"]["matchLabels"]["gpumix.io/deployment"] == va
    assert obj["spec"]["template"]["metadata"]["labels"]["gpumix.io/deployment"] == va
