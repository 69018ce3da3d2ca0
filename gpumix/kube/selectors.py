"""Label-selector algebra: parse, match, exact overlap and capture.

A selector is a conjunction of per-key requirements (``matchLabels`` entries are
``In`` requirements with one value).  Keys are independent of each other, so two
selectors overlap exactly when, for every key either of them constrains, the
combined constraints on that key can be met by one label value (or by the key
being absent).  That makes the overlap test exact and linear in the number of
requirements.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Operator = Literal["In", "NotIn", "Exists", "DoesNotExist"]
OPERATORS: tuple[Operator, ...] = ("In", "NotIn", "Exists", "DoesNotExist")


class SelectorError(ValueError):
    """A selector that the API server would refuse; ``field`` is its JSON path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Requirement:
    """One requirement of a selector: ``key``, ``operator`` and ``values`` (read-only).

    A requirement with one value (every ``matchLabels`` entry) keeps the value alone
    and makes ``values`` on demand: a one-element ``frozenset`` costs 216 bytes, two per
    cached Deployment, 4 MB of the webhook's cache at 10,000 Deployments."""

    __slots__ = ("_values", "key", "operator")

    key: str
    operator: Operator
    _values: str | frozenset[str]

    def __init__(self, key: str, operator: Operator, values: frozenset[str] = frozenset()) -> None:
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "operator", operator)
        one = next(iter(values)) if len(values) == 1 else None
        object.__setattr__(self, "_values", one if type(one) is str else values)

    @classmethod
    def equals(cls, key: str, value: str) -> Requirement:
        """``key`` ``In`` ``(value)``: a ``matchLabels`` entry."""
        req = cls.__new__(cls)
        object.__setattr__(req, "key", key)
        object.__setattr__(req, "operator", "In")
        object.__setattr__(req, "_values", value)
        return req

    @property
    def values(self) -> frozenset[str]:
        v = self._values
        return frozenset((v,)) if type(v) is str else v  # type: ignore[return-value]

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Requirement is read-only: cannot set {name}")

    def __eq__(self, other: object) -> bool:
        if type(other) is not Requirement:
            return NotImplemented
        return (
            self.key == other.key
            and self.operator == other.operator
            and (self._values == other._values or self.values == other.values)
        )

    def __hash__(self) -> int:
        return hash((self.key, self.operator, self.values))

    def __repr__(self) -> str:
        return f"Requirement({self.key!r}, {self.operator!r}, {self.values!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Requirement, (self.key, self.operator, self.values))

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        v = self._values
        if self.operator == "In":
            if type(v) is str:
                return present and labels[self.key] == v
            return present and labels[self.key] in v
        if self.operator == "NotIn":
            if type(v) is str:
                return not present or labels[self.key] != v
            return not present or labels[self.key] not in v
        if self.operator == "Exists":
            return present
        return not present


@dataclass(frozen=True, slots=True)
class KeyConstraint:
    """Everything one selector (or two combined) demands of one key."""

    must_exist: bool = False
    must_be_absent: bool = False
    allowed: frozenset[str] | None = None  # None: any value
    forbidden: frozenset[str] = frozenset()

    def add(self, req: Requirement) -> KeyConstraint:
        if req.operator == "In":
            allowed = req.values if self.allowed is None else self.allowed & req.values
            return KeyConstraint(True, self.must_be_absent, allowed, self.forbidden)
        if req.operator == "NotIn":
            return KeyConstraint(
                self.must_exist, self.must_be_absent, self.allowed, self.forbidden | req.values
            )
        if req.operator == "Exists":
            return KeyConstraint(True, self.must_be_absent, self.allowed, self.forbidden)
        return KeyConstraint(self.must_exist, True, self.allowed, self.forbidden)

    def merge(self, other: KeyConstraint) -> KeyConstraint:
        if self.allowed is None:
            allowed = other.allowed
        elif other.allowed is None:
            allowed = self.allowed
        else:
            allowed = self.allowed & other.allowed
        return KeyConstraint(
            self.must_exist or other.must_exist,
            self.must_be_absent or other.must_be_absent,
            allowed,
            self.forbidden | other.forbidden,
        )

    def witness(self) -> tuple[bool, str | None]:
        """``(satisfiable, value)``; value None means 'leave the key absent'."""
        if self.must_exist and self.must_be_absent:
            return False, None
        if not self.must_exist:
            return True, None  # absence satisfies NotIn, DoesNotExist and no constraint
        if self.allowed is None:
            return True, _fresh_value(self.forbidden)
        candidates = sorted(self.allowed - self.forbidden)
        if not candidates:
            return False, None
        return True, candidates[0]


def _fresh_value(forbidden: frozenset[str]) -> str:
    i = 0
    while f"v{i}" in forbidden:
        i += 1
    return f"v{i}"


@dataclass(frozen=True, slots=True)
class Selector:
    """A parsed label selector.  No requirements means 'matches everything'."""

    requirements: tuple[Requirement, ...] = ()

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(r.key for r in self.requirements)

    @property
    def is_empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def constraints(self) -> dict[str, KeyConstraint]:
        out: dict[str, KeyConstraint] = {}
        for req in self.requirements:
            out[req.key] = out.get(req.key, KeyConstraint()).add(req)
        return out

    def pinned(self) -> dict[str, frozenset[str]]:
        """Keys whose value is limited to a finite set (In / matchLabels)."""
        simple = self.simple()
        if simple is not None:
            return simple
        return {k: c.allowed for k, c in self.constraints().items() if c.allowed is not None}

    def simple(self) -> dict[str, frozenset[str]] | None:
        """``{key: values}`` when every requirement is an ``In`` on a key of its own
        (``matchLabels`` alone, by far the most common selector), else None."""
        out: dict[str, frozenset[str]] = {}
        for r in self.requirements:
            if r.operator != "In" or r.key in out:
                return None
            out[r.key] = r.values
        return out

    def _simple_values(self) -> dict[str, str | frozenset[str]] | None:
        """``simple`` with a one-value requirement's value alone (no set made)."""
        out: dict[str, str | frozenset[str]] = {}
        for r in self.requirements:
            if r.operator != "In" or r.key in out:
                return None
            out[r.key] = r._values
        return out

    def describe(self) -> str:
        parts: list[str] = []
        for r in self.requirements:
            if r.operator == "In" and type(r._values) is str:
                parts.append(f"{r.key}={r._values}")
            elif r.operator in ("In", "NotIn"):
                vals = ",".join(sorted(r.values))
                parts.append(f"{r.key} {'in' if r.operator == 'In' else 'notin'} ({vals})")
            elif r.operator == "Exists":
                parts.append(r.key)
            else:
                parts.append(f"!{r.key}")
        return ",".join(parts) if parts else "<everything>"


def _least(values: str | frozenset[str]) -> str:
    """The smallest of a requirement's ``In`` values (one value is kept alone)."""
    return values if type(values) is str else min(values)


def _least_common(a: str | frozenset[str], b: str | frozenset[str]) -> str | None:
    """The smallest value in both (each one value alone or a set), or None."""
    if type(a) is str:
        return a if (a == b if type(b) is str else a in b) else None
    if type(b) is str:
        return b if b in a else None
    common = a & b  # type: ignore[operator]
    return min(common) if common else None


def overlap_witness(a: Selector, b: Selector) -> dict[str, str] | None:
    """A label set that both selectors match, or None when they are disjoint."""
    sa, sb = a._simple_values(), b._simple_values()
    if sa is not None and sb is not None:
        # Only ``In`` on distinct keys: a key both pin needs a value in both sets.
        out: dict[str, str] = {}
        for key, values in sa.items():
            other = sb.get(key)
            value = _least(values) if other is None else _least_common(values, other)
            if value is None:
                return None
            out[key] = value
        for key, values in sb.items():
            if key not in sa:
                out[key] = _least(values)
        return out
    ca, cb = a.constraints(), b.constraints()
    witness: dict[str, str] = {}
    for key in ca.keys() | cb.keys():
        combined = ca.get(key, KeyConstraint()).merge(cb.get(key, KeyConstraint()))
        ok, value = combined.witness()
        if not ok:
            return None
        if value is not None:
            witness[key] = value
    return witness


def overlaps(a: Selector, b: Selector) -> bool:
    """Exact test: does some label set satisfy both selectors?"""
    return overlap_witness(a, b) is not None


def captures(selector: Selector, labels: Mapping[str, str]) -> bool:
    """Capture: the selector matches these concrete (pod-template) labels."""
    return selector.matches(labels)


def parse_selector(raw: object, field: str = "spec.selector") -> Selector:
    """Parse a ``LabelSelector``; raise :class:`SelectorError` naming the field."""
    if raw is None:
        return Selector()
    if not isinstance(raw, Mapping):
        raise SelectorError(field, f"must be an object, got {type(raw).__name__}")
    reqs: list[Requirement] = []
    match_labels = raw.get("matchLabels")
    if match_labels is not None:
        if not isinstance(match_labels, Mapping):
            raise SelectorError(f"{field}.matchLabels", "must be a map of label key to value")
        for key, value in match_labels.items():
            if not isinstance(key, str) or not key:
                raise SelectorError(f"{field}.matchLabels", f"invalid label key {key!r}")
            if not isinstance(value, str):
                raise SelectorError(
                    f"{field}.matchLabels.{key}", f"value must be a string, got {value!r}"
                )
            reqs.append(Requirement.equals(key, value))
    exprs = raw.get("matchExpressions")
    if exprs is not None:
        if not isinstance(exprs, list):
            raise SelectorError(f"{field}.matchExpressions", "must be a list")
        for i, expr in enumerate(exprs):
            reqs.append(_parse_expression(expr, f"{field}.matchExpressions[{i}]"))
    return Selector(tuple(reqs))


def _parse_expression(expr: object, field: str) -> Requirement:
    if not isinstance(expr, Mapping):
        raise SelectorError(field, "must be an object with key, operator and values")
    key = expr.get("key")
    if not isinstance(key, str) or not key:
        raise SelectorError(f"{field}.key", "is required and must be a non-empty string")
    op = expr.get("operator")
    if op not in OPERATORS:
        raise SelectorError(
            f"{field}.operator",
            f"unknown operator {op!r}; expected one of {', '.join(OPERATORS)}",
        )
    values = expr.get("values")
    if values is None:
        values = []
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise SelectorError(f"{field}.values", "must be a list of strings")
    operator: Operator = op
    if operator in ("In", "NotIn") and not values:
        raise SelectorError(f"{field}.values", f"must be non-empty when operator is {operator}")
    if operator in ("Exists", "DoesNotExist") and values:
        raise SelectorError(f"{field}.values", f"must be empty when operator is {operator}")
    return Requirement(key, operator, frozenset(values))


def selector_from_labels(labels: Mapping[str, str]) -> Selector:
    return Selector(tuple(Requirement.equals(k, v) for k, v in labels.items()))


def shared_requirements(a: Selector, b: Selector) -> list[str]:
    """Human description of the requirements the two selectors have in common."""
    common = set(a.requirements) & set(b.requirements)
    return sorted(Selector((r,)).describe() for r in common)


def canonical_selector(raw: object) -> str:
    """The selector as the API server compares it on UPDATE: ``matchLabels`` as a
    map (order does not matter), ``matchExpressions`` and their values as lists
    (order matters)."""
    if not isinstance(raw, Mapping):
        return json.dumps(raw, sort_keys=True, default=str)
    labels = raw.get("matchLabels")
    exprs = raw.get("matchExpressions")
    return json.dumps(
        {"matchLabels": labels or {}, "matchExpressions": exprs or []},
        sort_keys=True,
        default=str,
    )
