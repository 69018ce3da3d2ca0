"""The selector algebra against brute force over a small alphabet of labels."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpumix.kube.selectors import (
    Selector,
    SelectorError,
    captures,
    overlap_witness,
    overlaps,
    parse_selector,
    selector_from_labels,
    shared_requirements,
)

KEYS = ("a", "b", "c")
VALUES = ("x", "y")
OTHER = "z"  # a value no selector names: stands for every other value


def all_label_sets() -> list[dict[str, str]]:
    choices: list[tuple[str | None, ...]] = [(None, *VALUES, OTHER)] * len(KEYS)
    out = []
    for combo in itertools.product(*choices):
        out.append({k: v for k, v in zip(KEYS, combo, strict=True) if v is not None})
    return out


LABEL_SETS = all_label_sets()
assert len(LABEL_SETS) == 4 ** len(KEYS)

value_sets = st.lists(st.sampled_from(VALUES), min_size=1, max_size=2, unique=True)


@st.composite
def expressions(draw: st.DrawFn) -> dict[str, Any]:
    key = draw(st.sampled_from(KEYS))
    op = draw(st.sampled_from(("In", "NotIn", "Exists", "DoesNotExist")))
    if op in ("In", "NotIn"):
        return {"key": key, "operator": op, "values": draw(value_sets)}
    if draw(st.booleans()):
        return {"key": key, "operator": op}
    return {"key": key, "operator": op, "values": []}


@st.composite
def raw_selectors(draw: st.DrawFn) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    labels = draw(st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=2))
    keep_empty: bool = draw(st.booleans())
    if labels or keep_empty:
        raw["matchLabels"] = labels
    exprs = draw(st.lists(expressions(), max_size=3))
    keep_empty = draw(st.booleans())
    if exprs or keep_empty:
        raw["matchExpressions"] = exprs
    return raw


selectors = raw_selectors().map(parse_selector)
FAST = settings(max_examples=300, deadline=None)


@FAST
@given(selectors, selectors)
def test_overlaps_exactly_when_some_label_set_matches_both(a: Selector, b: Selector) -> None:
    brute = any(a.matches(ls) and b.matches(ls) for ls in LABEL_SETS)
    assert overlaps(a, b) == brute
    assert overlaps(b, a) == brute


@FAST
@given(selectors, selectors)
def test_witness_is_matched_by_both(a: Selector, b: Selector) -> None:
    witness = overlap_witness(a, b)
    if witness is None:
        assert not overlaps(a, b)
    else:
        assert a.matches(witness)
        assert b.matches(witness)


@FAST
@given(selectors)
def test_self_overlap_is_satisfiability(a: Selector) -> None:
    assert overlaps(a, a) == any(a.matches(ls) for ls in LABEL_SETS)


@FAST
@given(selectors, st.sampled_from(LABEL_SETS))
def test_capture_is_matching_and_implies_overlap(a: Selector, labels: dict[str, str]) -> None:
    assert captures(a, labels) == a.matches(labels)
    if captures(a, labels):
        assert overlaps(a, selector_from_labels(labels))


@FAST
@given(raw_selectors())
def test_matches_follows_kubernetes_semantics(raw: dict[str, Any]) -> None:
    sel = parse_selector(raw)
    for ls in LABEL_SETS:
        expected = all(ls.get(k) == v for k, v in raw.get("matchLabels", {}).items())
        for e in raw.get("matchExpressions", []):
            present, value = e["key"] in ls, ls.get(e["key"])
            if e["operator"] == "In":
                expected &= present and value in e["values"]
            elif e["operator"] == "NotIn":
                expected &= not present or value not in e["values"]
            elif e["operator"] == "Exists":
                expected &= present
            else:
                expected &= not present
        assert sel.matches(ls) == expected


def test_empty_selector_matches_everything() -> None:
    empties: list[dict[str, Any] | None] = [None, {}, {"matchLabels": {}}, {"matchExpressions": []}]
    for raw in empties:
        sel = parse_selector(raw)
        assert sel.is_empty
        assert sel.describe() == "<everything>"
        assert all(sel.matches(ls) for ls in LABEL_SETS)
        assert overlaps(sel, parse_selector({"matchLabels": {"a": "x"}}))


def test_examples() -> None:
    model = parse_selector({"matchLabels": {"model": "llama"}})
    a100 = parse_selector({"matchLabels": {"model": "llama", "app": "a100"}})
    a40 = parse_selector({"matchLabels": {"model": "llama", "app": "a40"}})
    assert overlaps(model, a100) and overlaps(model, a40)
    assert not overlaps(a100, a40)
    not_a100 = parse_selector(
        {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["a100"]}]}
    )
    assert not overlaps(not_a100, a100)
    assert overlaps(not_a100, a40)
    no_app = parse_selector({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]})
    assert not overlaps(no_app, a40)
    assert overlap_witness(no_app, model) == {"model": "llama"}
    exists = parse_selector(
        {
            "matchExpressions": [
                {"key": "app", "operator": "Exists"},
                {"key": "app", "operator": "NotIn", "values": ["v0", "v1"]},
            ]
        }
    )
    witness = overlap_witness(exists, model)
    assert witness is not None and witness["app"] not in ("v0", "v1")
    assert exists.matches(witness) and model.matches(witness)
    assert shared_requirements(model, a100) == ["model=llama"]


def test_describe() -> None:
    sel = parse_selector(
        {
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["b", "a"]},
                {"key": "env", "operator": "NotIn", "values": ["dev"]},
                {"key": "gpu", "operator": "Exists"},
                {"key": "old", "operator": "DoesNotExist"},
            ],
        }
    )
    assert sel.describe() == "app=web,tier in (a,b),env notin (dev),gpu,!old"
    assert sel.keys == {"app", "tier", "env", "gpu", "old"}


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        ("app=web", "spec.selector", "must be an object"),
        ({"matchLabels": ["app"]}, "spec.selector.matchLabels", "map"),
        ({"matchLabels": {"app": 1}}, "spec.selector.matchLabels.app", "string"),
        ({"matchLabels": {"app": None}}, "spec.selector.matchLabels.app", "string"),
        ({"matchExpressions": {"key": "a"}}, "spec.selector.matchExpressions", "list"),
        ({"matchExpressions": ["a"]}, "spec.selector.matchExpressions[0]", "object"),
        (
            {"matchExpressions": [{"operator": "Exists"}]},
            "spec.selector.matchExpressions[0].key",
            "required",
        ),
        (
            {
                "matchExpressions": [
                    {"key": "a", "operator": "Exists"},
                    {"key": "a", "operator": "Equals", "values": ["x"]},
                ]
            },
            "spec.selector.matchExpressions[1].operator",
            "unknown operator 'Equals'",
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "in", "values": ["x"]}]},
            "spec.selector.matchExpressions[0].operator",
            "unknown operator",
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "In", "values": []}]},
            "spec.selector.matchExpressions[0].values",
            "non-empty",
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "NotIn"}]},
            "spec.selector.matchExpressions[0].values",
            "non-empty",
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
            "spec.selector.matchExpressions[0].values",
            "must be empty",
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "DoesNotExist", "values": ["x"]}]},
            "spec.selector.matchExpressions[0].values",
            "must be empty",
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "In", "values": ["x", 2]}]},
            "spec.selector.matchExpressions[0].values",
            "strings",
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "In", "values": "x"}]},
            "spec.selector.matchExpressions[0].values",
            "strings",
        ),
    ],
)
def test_parse_errors_name_the_field(raw: object, field: str, words: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse_selector(raw)
    assert info.value.field == field
    assert words in info.value.message
    assert str(info.value).startswith(f"{field}: ")


def test_parse_error_uses_the_given_field_path() -> None:
    with pytest.raises(SelectorError) as info:
        parse_selector({"matchExpressions": [{"key": "a", "operator": "Nope"}]}, "sel")
    assert info.value.field == "sel.matchExpressions[0].operator"
