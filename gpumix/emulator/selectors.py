"""Label and field selectors as the API server reads them.

Two forms: the query-string form (`app=x,tier in (a,b),!canary`) used by list and
watch, and the structured `LabelSelector` (`matchLabels` / `matchExpressions`) used by
webhook `namespaceSelector` / `objectSelector`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gpumix.kube.selectors import SelectorError, parse_selector

from .errors import bad_request

Labels = Mapping[str, str]


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: Labels) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "=":
            return present and value == self.values[0]
        if self.op == "!=":
            return not present or value != self.values[0]
        if self.op == "in":
            return present and value in self.values
        if self.op == "notin":
            return not present or value not in self.values
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("gt", "lt"):
            try:
                have, want = int(value or ""), int(self.values[0])
            except ValueError:
                return False
            return have > want if self.op == "gt" else have < want
        return False


_SET_RE = re.compile(r"^\s*([^\s!=<>,()]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_OP_RE = re.compile(r"^\s*([^\s!=<>,()]+)\s*(==|!=|=|>|<)\s*([^\s,()]*)\s*$")
_KEY_RE = re.compile(r"^\s*(!?)\s*([^\s!=<>,()]+)\s*$")


def _split_top(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def parse_label_selector(text: str | None) -> tuple[Requirement, ...]:
    """Parse the string form; raises a 400 `ApiError` on bad syntax."""
    if not text:
        return ()
    reqs: list[Requirement] = []
    for part in _split_top(text):
        m = _SET_RE.match(part)
        if m:
            values = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            reqs.append(Requirement(m.group(1), m.group(2), values))
            continue
        m = _OP_RE.match(part)
        if m:
            op = {"==": "=", "=": "=", "!=": "!=", ">": "gt", "<": "lt"}[m.group(2)]
            reqs.append(Requirement(m.group(1), op, (m.group(3),)))
            continue
        m = _KEY_RE.match(part)
        if m:
            reqs.append(Requirement(m.group(2), "!" if m.group(1) else "exists"))
            continue
        raise bad_request(f"unable to parse requirement: {part!r}")
    return tuple(reqs)


def matches_all(reqs: tuple[Requirement, ...], labels: Labels) -> bool:
    return all(r.matches(labels) for r in reqs)


def label_selector_matches(selector: Mapping[str, Any] | None, labels: Labels) -> bool:
    """Structured `LabelSelector` (the project's selector algebra); `None` or `{}` matches
    everything, an invalid one nothing."""
    if not selector:
        return True
    try:
        return parse_selector(selector).matches(labels)
    except SelectorError:
        return False


def label_selector_string(selector: Mapping[str, Any] | None) -> str:
    """Render a structured selector in the string form (as `/scale` status.selector does)."""
    if not selector:
        return ""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        op, key = expr.get("operator"), expr.get("key")
        values = ",".join(sorted(expr.get("values") or []))
        if op == "In":
            parts.append(f"{key} in ({values})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({values})")
        elif op == "Exists":
            parts.append(str(key))
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


@dataclass(frozen=True)
class FieldRequirement:
    path: str
    negate: bool
    value: str


def parse_field_selector(text: str | None) -> tuple[FieldRequirement, ...]:
    if not text:
        return ()
    out: list[FieldRequirement] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(==|!=|=)\s*(.*)$", part)
        if not m:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        out.append(FieldRequirement(m.group(1), m.group(2) == "!=", m.group(3)))
    return tuple(out)


def field_value(obj: Mapping[str, Any], path: str) -> str:
    cur: Any = obj
    for seg in path.split("."):
        if not isinstance(cur, Mapping):
            return ""
        cur = cur.get(seg)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def field_matcher(reqs: tuple[FieldRequirement, ...]) -> Callable[[Mapping[str, Any]], bool]:
    def match(obj: Mapping[str, Any]) -> bool:
        for r in reqs:
            equal = field_value(obj, r.path) == r.value
            if equal == r.negate:
                return False
        return True

    return match
