"""Fixes, applied in place to a JSON-like object (a dict or a round-trip YAML map).

Callers that need a patch change a deep copy and diff it
(``jsonpatch.make_patch(original, fixed)``); ``gpumix check --fix`` applies the
same functions to the parsed YAML so comments and key order survive.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

from gpumix.kube.gputype import GpuType
from gpumix.kube.policy import DEPLOYMENT_LABEL, GPU_TYPE_LABEL

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def is_label_value(value: str) -> bool:
    return len(value) <= 63 and _LABEL_VALUE.match(value) is not None


def _child(parent: MutableMapping[str, Any], key: str) -> MutableMapping[str, Any]:
    value = parent.get(key)
    if not isinstance(value, MutableMapping):
        value = {}
        parent[key] = value
        value = parent[key]
    return value


def isolate_deployment(obj: MutableMapping[str, Any], gpu_type: GpuType) -> None:
    """Add ``gpumix.io/deployment: <name>`` to the selector and the pod template
    (and ``gpumix.io/gpu-type`` to the template when the type is known)."""
    name = str(_child(obj, "metadata").get("name", ""))
    spec = _child(obj, "spec")
    _child(_child(spec, "selector"), "matchLabels")[DEPLOYMENT_LABEL] = name
    labels = _child(_child(_child(spec, "template"), "metadata"), "labels")
    labels[DEPLOYMENT_LABEL] = name
    if (
        gpu_type.kind == "pinned"
        and gpu_type.name
        and GPU_TYPE_LABEL not in labels
        and is_label_value(gpu_type.name)
    ):
        labels[GPU_TYPE_LABEL] = gpu_type.name


def set_ceiling(obj: MutableMapping[str, Any], ceiling_field: str, value: int) -> None:
    """Set ``spec.<field>`` (``ceiling_field`` is written as ``spec.maxReplicas``)."""
    key = ceiling_field.removeprefix("spec.")
    _child(obj, "spec")[key] = value
