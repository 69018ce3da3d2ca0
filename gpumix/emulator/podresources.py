"""Container resources as kube-apiserver treats them: quantities stored in canonical
form, a Pod's requests defaulted from its limits, extended resources (such as
``nvidia.com/gpu``) held to whole numbers, and for them and huge pages a limit equal to
the request."""

from __future__ import annotations

import re
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

from gpumix.kube.quantity import QuantityError, parse_quantity

from .errors import StatusCause, field_invalid, field_required

Obj = dict[str, Any]

_BINARY_SUFFIX = re.compile(r"(Ki|Mi|Gi|Ti|Pi|Ei)$")
_EXPONENT = re.compile(r"[eE][+-]?[0-9]+$")
_BINARY = (("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10))
_DECIMAL = {18: "E", 15: "P", 12: "T", 9: "G", 6: "M", 3: "k", 0: "", -3: "m", -6: "u", -9: "n"}


def canonical_quantity(value: Any) -> Any:
    """The canonical text of a quantity, as the API server stores it (``1000m`` -> ``1``,
    ``1.5Gi`` -> ``1536Mi``, ``0.5`` -> ``500m``); a value that is not a quantity is
    returned unchanged (validation reports it)."""
    try:
        amount = parse_quantity(value)
    except QuantityError:
        return value
    text = str(value)
    if _BINARY_SUFFIX.search(text) and amount.denominator == 1 and abs(amount) >= 1024:
        whole = int(amount)
        for suffix, shift in _BINARY:
            if whole % (1 << shift) == 0:
                return f"{whole >> shift}{suffix}"
        return str(whole)
    exponent_form = _EXPONENT.search(text) is not None
    if amount == 0:
        return "0"
    for exp in range(18, -12, -3):
        mantissa = amount / Fraction(10) ** exp
        if mantissa.denominator == 1:
            suffix = (f"e{exp}" if exp else "") if exponent_form else _DECIMAL[exp]
            return f"{int(mantissa)}{suffix}"
    return text  # unreachable: parse_quantity rounds to nanos


def is_extended(name: str) -> bool:
    """An extended resource: a domain-prefixed name outside kubernetes.io
    (``nvidia.com/gpu``), not a quota ``requests.`` name."""
    if "/" not in name or name.startswith("requests."):
        return False
    domain = name.split("/", 1)[0]
    return not (domain == "kubernetes.io" or domain.endswith(".kubernetes.io"))


def overcommit_forbidden(name: str) -> bool:
    """Resources whose request must equal their limit: extended ones and huge pages."""
    return is_extended(name) or name.startswith("hugepages-")


def containers(pod_spec: Any, prefix: str) -> Iterator[tuple[str, Obj]]:
    """(field path, container) of a pod spec's containers and init containers."""
    if not isinstance(pod_spec, dict):
        return
    for key in ("initContainers", "containers"):
        for i, c in enumerate(pod_spec.get(key) or []):
            if isinstance(c, dict):
                yield f"{prefix}.{key}[{i}]", c


def canonicalize(pod_spec: Any) -> None:
    """Rewrite every request and limit in canonical form, in place."""
    for _, c in containers(pod_spec, ""):
        resources = c.get("resources")
        if not isinstance(resources, dict):
            continue
        for kind in ("requests", "limits"):
            values = resources.get(kind)
            if isinstance(values, dict):
                resources[kind] = {k: canonical_quantity(v) for k, v in values.items()}


def default_requests_from_limits(pod_spec: Any) -> None:
    """A Pod's container without a request for a resource it limits requests the limit."""
    for _, c in containers(pod_spec, ""):
        resources = c.get("resources")
        if not isinstance(resources, dict) or not isinstance(resources.get("limits"), dict):
            continue
        requests = resources.get("requests")
        if not isinstance(requests, dict):
            requests = {}
        for name, limit in resources["limits"].items():
            requests.setdefault(name, limit)
        if requests:
            resources["requests"] = requests


def validate(pod_spec: Any, prefix: str) -> list[StatusCause]:
    """Field errors of the extended resources of a pod spec at `prefix`
    (``spec`` or ``spec.template.spec``)."""
    causes: list[StatusCause] = []
    for path, c in containers(pod_spec, prefix):
        resources = c.get("resources")
        if not isinstance(resources, dict):
            continue
        limits: Obj = resources.get("limits") or {}
        requests: Obj = resources.get("requests") or {}
        if not isinstance(limits, dict) or not isinstance(requests, dict):
            continue
        for kind, values in (("limits", limits), ("requests", requests)):
            for name, value in values.items():
                if not is_extended(str(name)):
                    continue
                try:
                    amount = parse_quantity(value)
                except QuantityError:
                    continue
                if amount.denominator != 1:
                    causes.append(
                        field_invalid(
                            f"{path}.resources.{kind}[{name}]",
                            canonical_quantity(value),
                            "must be an integer",
                        )
                    )
        for name, value in requests.items():
            if not overcommit_forbidden(str(name)):
                continue
            if name not in limits:
                causes.append(
                    field_required(
                        f"{path}.resources.limits",
                        "Limit must be set for non overcommitable resources",
                    )
                )
                continue
            try:
                differs = parse_quantity(value) != parse_quantity(limits[name])
            except QuantityError:
                continue
            if differs:
                causes.append(
                    field_invalid(
                        f"{path}.resources.requests",
                        canonical_quantity(value),
                        f"must be equal to {name} limit of {canonical_quantity(limits[name])}",
                    )
                )
    return causes
