"""Tolerant readers for JSON-like Kubernetes objects: wrong types read as empty."""

from __future__ import annotations

from collections.abc import Mapping
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
