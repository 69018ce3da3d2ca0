"""The cache's compact forms (one-value requirements, one-member postings) behave
exactly like the general ones."""

from __future__ import annotations

import pickle

import pytest

from gpumix.kube.objects import deployment_view
from gpumix.kube.policy import Policy
from gpumix.kube.selectors import Requirement, overlap_witness, parse_selector
from gpumix.kube.snapshot import Snapshot


def _dep(name: str, app: str) -> dict[str, object]:
    labels = {"app": app, "gpumix.io/deployment": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
            },
        },
    }


def test_one_value_requirement_equals_the_general_form() -> None:
    one = Requirement.equals("app", "a")
    general = Requirement("app", "In", frozenset({"a"}))
    assert one == general and hash(one) == hash(general)
    assert one.values == frozenset({"a"})
    assert one != Requirement("app", "In", frozenset({"a", "b"}))
    assert one != Requirement("app", "NotIn", frozenset({"a"}))
    assert pickle.loads(pickle.dumps(one)) == one
    with pytest.raises(AttributeError, match="read-only"):
        one.key = "other"  # type: ignore[misc]


def test_match_labels_and_one_value_expression_are_one_requirement() -> None:
    labels = parse_selector({"matchLabels": {"app": "a"}})
    expr = parse_selector({"matchExpressions": [{"key": "app", "operator": "In", "values": ["a"]}]})
    assert labels == expr
    assert labels.describe() == expr.describe() == "app=a"
    not_in = parse_selector(
        {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["a"]}]}
    )
    assert not not_in.matches({"app": "a"}) and not_in.matches({"app": "b"}) and not_in.matches({})
    assert overlap_witness(labels, parse_selector({"matchLabels": {"app": "b"}})) is None
    wide = parse_selector(
        {"matchExpressions": [{"key": "app", "operator": "In", "values": ["b", "a"]}]}
    )
    assert overlap_witness(labels, wide) == {"app": "a"}
    assert overlap_witness(wide, labels) == {"app": "a"}


def test_postings_shrink_back_to_one_name() -> None:
    policy = Policy()
    snap, fresh = Snapshot(), Snapshot()
    for name in ("a", "b"):
        snap.put(deployment_view(_dep(name, "shared"), policy))
    fresh.put(deployment_view(_dep("a", "shared"), policy))
    shared = parse_selector({"matchLabels": {"app": "shared"}})
    assert sorted(v.name for v in snap.overlap_candidates(shared, "ns")) == ["a", "b"]
    snap.remove("Deployment", "ns", "b")
    assert snap._index == fresh._index
    group = next(iter(snap._index["ns"].groups.values()))
    assert group.postings[("app", "shared")] == "a"  # the name alone, no one-element set
    assert [v.name for v in snap.overlap_candidates(shared, "ns")] == ["a"]
