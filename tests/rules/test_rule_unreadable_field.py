"""Rule unreadable-field: a GPU request gpumix cannot read is named, with its field."""

from __future__ import annotations

from typing import Any

from gpumix.kube.objects import DeploymentView, view_of
from gpumix.kube.policy import Policy
from gpumix.kube.snapshot import Snapshot
from gpumix.rules import unreadable_field
from gpumix.rules.engine import evaluate_snapshot

POLICY = Policy()


def dep(name: str, *amounts: object) -> dict[str, Any]:
    containers = [
        {"name": f"c{i}", "resources": {"limits": {"nvidia.com/gpu": amount}}}
        for i, amount in enumerate(amounts)
    ]
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "ml"},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": containers}},
        },
    }


def view(obj: dict[str, Any]) -> DeploymentView:
    v = view_of(obj, POLICY)
    assert isinstance(v, DeploymentView)
    return v


def test_readable_requests_give_nothing() -> None:
    assert unreadable_field.check(view(dep("ok", "1", 2))) == []


def test_each_unreadable_field_is_named_up_to_three_then_counted() -> None:
    [finding] = unreadable_field.check(view(dep("bad", "1", "10e399", "inf", "0.5", "-1", "2")))
    assert finding.severity == "error" and finding.rule == "unreadable-field"
    for i in (1, 2, 3):
        assert f"containers[{i}].resources.limits[nvidia.com/gpu]" in finding.message
    assert "containers[4]" not in finding.message and "and 1 more" in finding.message
    assert "out of range" in finding.message and "whole number" in finding.message


def test_the_audit_reports_it_too() -> None:
    snap = Snapshot.from_objects([dep("bad", "1e400"), dep("ok", "1")], POLICY)
    findings = [f for f in evaluate_snapshot(snap, POLICY) if f.rule == unreadable_field.RULE]
    assert [f.subject.name for f in findings] == ["bad"]
