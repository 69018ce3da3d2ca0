"""The policy: the one typed settings object the rules read.

A policy file is YAML (or JSON)::

    apiVersion: gpumix.io/v1alpha1
    kind: Policy
    mode: enforce                 # enforce | warn | audit
    defaultMaxReplicas: 10        # injected into autoscalers that lack a ceiling
    hardMaxReplicas: 100          # no autoscaler may go above this
    gpuNodeLabelKeys: [nvidia.com/gpu.product, ...]
    modelLabelKeys: [gpumix.io/model, model.aibrix.ai/name]
    gpuResourceNames: [nvidia.com/gpu, amd.com/gpu]
    exemptNamespaces: [kube-system, gpumix-system]

Every field is optional; the defaults below are used for what is left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, cast

Mode = Literal["enforce", "warn", "audit"]
MODES: tuple[Mode, ...] = ("enforce", "warn", "audit")

GPU_TYPE_LABEL = "gpumix.io/gpu-type"
DEPLOYMENT_LABEL = "gpumix.io/deployment"
MODE_LABEL = "gpumix.io/mode"
DEFAULT_MAX_REPLICAS_ANNOTATION = "gpumix.io/default-max-replicas"

DEFAULT_GPU_NODE_LABEL_KEYS: tuple[str, ...] = (
    "nvidia.com/gpu.product",
    "cloud.google.com/gke-accelerator",
    "karpenter.k8s.aws/instance-gpu-name",
    "node.kubernetes.io/instance-type",
    "machine.cluster.vke.volcengine.com/gpu-name",
)
DEFAULT_MODEL_LABEL_KEYS: tuple[str, ...] = ("gpumix.io/model", "model.aibrix.ai/name")
DEFAULT_GPU_RESOURCE_NAMES: tuple[str, ...] = ("nvidia.com/gpu", "amd.com/gpu")
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"


class PolicyError(ValueError):
    """An invalid policy document; ``field`` names the offending key."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Policy:
    """Settings of the rules, the webhook and the audit."""

    mode: Mode = "enforce"
    """What admission does with error findings: deny/fix, warn, or only record."""
    default_max_replicas: int = 10
    """Ceiling injected into autoscalers that have none."""
    hard_max_replicas: int = 100
    """No autoscaler ceiling may exceed this."""
    gpu_node_label_keys: tuple[str, ...] = DEFAULT_GPU_NODE_LABEL_KEYS
    """Node label keys whose value names the GPU type of a node."""
    model_label_keys: tuple[str, ...] = DEFAULT_MODEL_LABEL_KEYS
    """Deployment label keys whose value names the model group, first match wins."""
    gpu_resource_names: tuple[str, ...] = DEFAULT_GPU_RESOURCE_NAMES
    """Extended resources that count as whole GPUs."""
    exempt_namespaces: frozenset[str] = field(
        default_factory=lambda: frozenset({"kube-system", "gpumix-system"})
    )
    """Namespaces the webhook never touches."""

    def with_mode(self, mode: Mode) -> Policy:
        return replace(self, mode=mode)


_KEYS = {
    "mode",
    "defaultMaxReplicas",
    "hardMaxReplicas",
    "gpuNodeLabelKeys",
    "modelLabelKeys",
    "gpuResourceNames",
    "exemptNamespaces",
}


def policy_from_mapping(doc: object) -> Policy:
    """Build a :class:`Policy` from a parsed policy document (pure)."""
    if doc is None:
        return Policy()
    if not isinstance(doc, Mapping):
        raise PolicyError("<document>", "a policy must be a mapping")
    unknown = sorted(str(k) for k in set(doc) - _KEYS - {"apiVersion", "kind", "metadata"})
    if unknown:
        raise PolicyError(unknown[0], f"unknown field; known fields: {', '.join(sorted(_KEYS))}")
    if "kind" in doc and doc["kind"] != "Policy":
        raise PolicyError("kind", f"must be Policy, got {doc['kind']!r}")
    base = Policy()
    mode = doc.get("mode", base.mode)
    if mode not in MODES:
        raise PolicyError("mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
    default_max = _positive_int(doc, "defaultMaxReplicas", base.default_max_replicas)
    hard_max = _positive_int(doc, "hardMaxReplicas", base.hard_max_replicas)
    if default_max > hard_max:
        raise PolicyError(
            "defaultMaxReplicas",
            f"{default_max} is above hardMaxReplicas ({hard_max})",
        )
    return Policy(
        mode=cast(Mode, mode),
        default_max_replicas=default_max,
        hard_max_replicas=hard_max,
        gpu_node_label_keys=_str_list(doc, "gpuNodeLabelKeys", base.gpu_node_label_keys),
        model_label_keys=_str_list(doc, "modelLabelKeys", base.model_label_keys),
        gpu_resource_names=_str_list(doc, "gpuResourceNames", base.gpu_resource_names),
        exempt_namespaces=frozenset(
            _str_list(doc, "exemptNamespaces", tuple(sorted(base.exempt_namespaces)))
        ),
    )


def _positive_int(doc: Mapping[str, object], key: str, default: int) -> int:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PolicyError(key, f"must be a positive integer, got {value!r}")
    return value


def _str_list(doc: Mapping[str, object], key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = doc.get(key)
    if value is None:
        return default
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(key, "must be a list of non-empty strings")
    return tuple(value)
