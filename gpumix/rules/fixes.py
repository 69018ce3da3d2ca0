"""Fixes, applied in place to a JSON-like object (a dict or a round-trip YAML map).

Callers that need a patch change a copy and diff it with jsonpatch (admission
copies only the dicts a fix writes to: ``gpumix.admission._copy_for_fix``);
``gpumix check --fix`` applies the same functions to the parsed YAML so comments
and key order survive.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, MutableMapping
from typing import Any

from gpumix.kube.fields import is_label_value
from gpumix.kube.gputype import GpuType
from gpumix.kube.policy import DEPLOYMENT_LABEL, GPU_TYPE_LABEL


def deployment_label_value(name: str) -> str:
    """The ``gpumix.io/deployment`` value for a Deployment: its name, or, when the
    name is too long for a label value (names go up to 253 characters, label
    values to 63), a prefix of it and a hash of the whole name."""
    if is_label_value(name):
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    prefix = re.sub(r"[^A-Za-z0-9]+$", "", re.sub(r"[^-A-Za-z0-9_.]", "-", name[:54]))
    return f"{prefix}-{digest}" if prefix else digest


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
    value = deployment_label_value(str(_child(obj, "metadata").get("name", "")))
    spec = _child(obj, "spec")
    _child(_child(spec, "selector"), "matchLabels")[DEPLOYMENT_LABEL] = value
    labels = _child(_child(_child(spec, "template"), "metadata"), "labels")
    labels[DEPLOYMENT_LABEL] = value
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


def restore_labels(
    obj: MutableMapping[str, Any], *, selector: Mapping[str, str], template: Mapping[str, str]
) -> None:
    """Put labels back into ``spec.selector.matchLabels`` and the pod template."""
    spec = _child(obj, "spec")
    if selector:
        match_labels = _child(_child(spec, "selector"), "matchLabels")
        for key, value in selector.items():
            match_labels[key] = value
    if template:
        labels = _child(_child(_child(spec, "template"), "metadata"), "labels")
        for key, value in template.items():
            labels[key] = value
