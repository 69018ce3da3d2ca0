"""Tolerant readers for JSON-like Kubernetes objects: wrong types read as empty;
values that cannot be read are named as :class:`Unreadable` facts."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard


def is_mapping(value: object) -> TypeGuard[Mapping[str, Any]]:
    # ``type(...) is dict`` first: decoded JSON is plain dicts, and the ABC check costs more
    return type(value) is dict or isinstance(value, Mapping)


def as_mapping(value: object) -> Mapping[str, Any]:
    return value if is_mapping(value) else {}


def as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def str_map(value: object) -> dict[str, str]:
    """A label/annotation map; entries whose value is not a string are dropped."""
    if type(value) is dict:  # the common case, decoded JSON: a plain copy when all is well
        for k, v in value.items():
            if type(k) is not str or type(v) is not str:
                break
        else:
            return value.copy()
    return {str(k): v for k, v in as_mapping(value).items() if isinstance(v, str)}


LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
"""A Kubernetes label value (at most 63 characters; RE2 syntax, for CEL too)."""
_LABEL_VALUE = re.compile(LABEL_VALUE_PATTERN)


def is_label_value(value: str) -> bool:
    return len(value) <= 63 and _LABEL_VALUE.match(value) is not None


def shared(text: str) -> str:
    """One string object for a text that repeats across many cached views (a namespace,
    a GPU type name); a ``str`` subclass (a YAML reader's quoted scalar) is kept as is."""
    return sys.intern(text) if type(text) is str else text


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A field whose value gpumix cannot read (the object itself is still read).

    ``field`` is the path as the API server writes it in its errors
    (``spec.template.spec.containers[0].resources.limits[nvidia.com/gpu]``), ``value``
    a short rendering of what was found, ``reason`` why it cannot be read."""

    field: str
    value: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.value} cannot be read: {self.reason}"


def short_value(value: object, limit: int = 40) -> str:
    """A bounded rendering of a value for messages (never recurses into containers)."""
    if isinstance(value, str):
        text = value if len(value) <= limit else value[: limit - 3] + "..."
        return '"' + text + '"'
    if isinstance(value, bool) or value is None:
        return "true" if value is True else "false" if value is False else "null"
    if isinstance(value, (int, float)):
        if isinstance(value, int) and value.bit_length() > 64:
            return f"an integer of {value.bit_length()} bits"
        return repr(value)
    return f"a {type(value).__name__}"
