"""The policy: the one typed settings object the rules read.

A policy file is YAML (or JSON)::

    apiVersion: gpumix.io/v1alpha1
    kind: Policy
    mode: enforce                 # enforce | warn | audit
    defaultMaxReplicas: 10        # injected into autoscalers that lack a ceiling
    hardMaxReplicas: 100          # no autoscaler may go above this
    gpuNodeLabelKeys: [nvidia.com/gpu.product, ...]   # node labels naming the GPU type
    instanceTypeLabelKeys: [node.kubernetes.io/instance-type, ...]
    modelLabelKeys: [gpumix.io/model, model.aibrix.ai/name]
    gpuResourceNames: [nvidia.com/gpu, nvidia.com/mig-*, amd.com/gpu, google.com/tpu]
    gpuPoolCapacity: {NVIDIA-A40: 16}   # GPUs a scalable pool of a type can hold
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

# Node labels whose value names the accelerator model, in the order a name is preferred
# when several of them are on the same Nodes (docs/design.md, "GPU type").
DEFAULT_GPU_NODE_LABEL_KEYS: tuple[str, ...] = (
    "nvidia.com/gpu.product",  # NVIDIA GPU feature discovery
    "amd.com/gpu.product-name",  # AMD node labeller
    "cloud.google.com/gke-accelerator",
    "cloud.google.com/gke-tpu-accelerator",
    "karpenter.k8s.aws/instance-gpu-name",
    "k8s.amazonaws.com/accelerator",
    "accelerator",  # the Kubernetes documentation's example
    "aliyun.accelerator/nvidia_name",
    "eks.tke.cloud.tencent.com/gpu-type",
    "machine.cluster.vke.volcengine.com/gpu-name",
)
# Node labels naming a machine type: a GPU type only for a Deployment that requests
# accelerators (a CPU app pinned to m6i.2xlarge is not a GPU workload).
DEFAULT_INSTANCE_TYPE_LABEL_KEYS: tuple[str, ...] = (
    "node.kubernetes.io/instance-type",
    "beta.kubernetes.io/instance-type",
)
DEFAULT_MODEL_LABEL_KEYS: tuple[str, ...] = ("gpumix.io/model", "model.aibrix.ai/name")
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"
# Extended resources that count as accelerators; a trailing ``*`` matches a prefix.
DEFAULT_GPU_RESOURCE_NAMES: tuple[str, ...] = (
    "nvidia.com/gpu",
    f"{MIG_RESOURCE_PREFIX}*",
    "amd.com/gpu",
    "google.com/tpu",
)


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
    """Node label keys whose value names the GPU type of a node (earlier keys name a
    type in preference to later ones when both are on the same Nodes)."""
    instance_type_label_keys: tuple[str, ...] = DEFAULT_INSTANCE_TYPE_LABEL_KEYS
    """Node label keys naming a machine type: a GPU type only for accelerator requesters."""
    model_label_keys: tuple[str, ...] = DEFAULT_MODEL_LABEL_KEYS
    """Deployment label keys whose value names the model group, first match wins."""
    gpu_resource_names: tuple[str, ...] = DEFAULT_GPU_RESOURCE_NAMES
    """Extended resources that count as accelerators (``name*`` matches a prefix)."""
    gpu_pool_capacity: Mapping[str, int] = field(default_factory=dict, hash=False)
    """GPUs the pool of a GPU type can scale to (Nodes that do not exist yet count)."""
    exempt_namespaces: frozenset[str] = field(
        default_factory=lambda: frozenset({"kube-system", "gpumix-system"})
    )
    """Namespaces the webhook never touches."""
    _resource_exact: frozenset[str] = field(init=False, repr=False, compare=False)
    _resource_prefixes: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = self.gpu_resource_names
        object.__setattr__(self, "_resource_exact", frozenset(n for n in names if "*" not in n))
        prefixes = tuple(n[:-1] for n in names if n.endswith("*"))
        object.__setattr__(self, "_resource_prefixes", prefixes)

    def is_accelerator(self, resource: str) -> bool:
        """Whether an extended resource counts as an accelerator (``gpuResourceNames``)."""
        return resource in self._resource_exact or (
            bool(self._resource_prefixes) and resource.startswith(self._resource_prefixes)
        )

    def with_mode(self, mode: Mode) -> Policy:
        return replace(self, mode=mode)


_KEYS = {
    "mode",
    "defaultMaxReplicas",
    "hardMaxReplicas",
    "gpuNodeLabelKeys",
    "instanceTypeLabelKeys",
    "modelLabelKeys",
    "gpuResourceNames",
    "gpuPoolCapacity",
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
        instance_type_label_keys=_str_list(
            doc, "instanceTypeLabelKeys", base.instance_type_label_keys
        ),
        model_label_keys=_str_list(doc, "modelLabelKeys", base.model_label_keys),
        gpu_resource_names=_resource_names(doc),
        gpu_pool_capacity=_pool_capacity(doc),
        exempt_namespaces=frozenset(
            _str_list(doc, "exemptNamespaces", tuple(sorted(base.exempt_namespaces)))
        ),
    )


def _positive_int(doc: Mapping[str, object], key: str, default: int) -> int:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PolicyError(key, f"must be a positive integer, got {value!r}")
    return value


def _resource_names(doc: Mapping[str, object]) -> tuple[str, ...]:
    names = _str_list(doc, "gpuResourceNames", DEFAULT_GPU_RESOURCE_NAMES)
    for i, name in enumerate(names):
        if "*" in name[:-1] or name == "*":
            raise PolicyError(
                f"gpuResourceNames[{i}]",
                f"{name!r}: only a trailing * is allowed, after a prefix (nvidia.com/mig-*)",
            )
    return names


def _pool_capacity(doc: Mapping[str, object]) -> dict[str, int]:
    value = doc.get("gpuPoolCapacity")
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PolicyError("gpuPoolCapacity", "must be a mapping of GPU type to a number of GPUs")
    out: dict[str, int] = {}
    for name, gpus in value.items():
        if not isinstance(name, str) or not name:
            raise PolicyError("gpuPoolCapacity", f"GPU type {name!r} must be a non-empty string")
        if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
            raise PolicyError(
                f"gpuPoolCapacity.{name}", f"must be a non-negative integer, got {gpus!r}"
            )
        out[name] = gpus
    return out


def _str_list(doc: Mapping[str, object], key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = doc.get(key)
    if value is None:
        return default
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(key, "must be a list of non-empty strings")
    return tuple(value)
