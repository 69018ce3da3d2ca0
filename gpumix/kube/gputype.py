"""GPU type of a pod template, GPUs per replica, and the model group."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gpumix.kube.fields import Unreadable, as_list, as_mapping, short_value, str_map
from gpumix.kube.policy import GPU_TYPE_LABEL, MIG_RESOURCE_PREFIX, Policy
from gpumix.kube.quantity import QuantityError, whole_quantity

GpuKind = Literal["pinned", "mig", "unpinned", "cpu"]


@dataclass(frozen=True, slots=True)
class GpuType:
    """What a Deployment runs on.

    ``kind`` is ``pinned`` (a named GPU type), ``mig`` (a MIG slice resource),
    ``unpinned`` (requests accelerators but may land on any type) or ``cpu``.
    ``source`` says where the answer came from, for messages. ``key`` is the node
    label key of a pin (``gpumix.io/gpu-type`` for the pod label), so the Nodes can
    tell which names are one type. ``unread`` lists the node-label keys an unpinned
    accelerator Deployment pins nodes by that gpumix does not read as a GPU type.
    """

    kind: GpuKind
    name: str | None = None
    source: str = ""
    key: str = ""
    unread: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        if self.kind in ("pinned", "mig") and self.name:
            return self.name
        return "unpinned accelerator" if self.kind == "unpinned" else "CPU-only"

    def same_as(self, other: GpuType) -> bool:
        """Same type by the object alone; ``Snapshot.same_gpu_type`` also asks the Nodes."""
        return (self.kind, self.name) == (other.kind, other.name)


CPU_ONLY = GpuType("cpu", None, "no GPU resources requested")


def gpu_resources(
    pod_spec: Mapping[str, Any],
    policy: Policy,
    unreadable: list[tuple[str, Unreadable]] | None = None,
    path: str = "spec",
) -> dict[str, int]:
    """GPU-like extended resources one replica requests (limits win over requests).

    A quantity that cannot be read (not a quantity, fractional, negative, beyond
    Kubernetes' range) counts as 0 here and is appended to ``unreadable`` as
    ``(resource name, fact)``, with its field path under ``path``.

    As the scheduler counts them: the app containers and the sidecars (init
    containers with ``restartPolicy: Always``) add up; an ordinary init
    container runs alone before them, so it only counts when it asks for more
    (plus the sidecars started before it).
    """
    totals: dict[str, int] = {}
    init_containers = pod_spec.get("initContainers")
    if not init_containers:  # the common case: only the app containers count
        for i, container in enumerate(as_list(pod_spec.get("containers"))):
            _add(totals, _container_gpus(container, policy, unreadable, f"{path}.containers[{i}]"))
        return {k: v for k, v in totals.items() if v > 0}
    sidecars: dict[str, int] = {}
    init_peak: dict[str, int] = {}
    for i, container in enumerate(as_list(init_containers)):
        own = _container_gpus(container, policy, unreadable, f"{path}.initContainers[{i}]")
        if as_mapping(container).get("restartPolicy") == "Always":
            _add(sidecars, own)
        else:
            for name, qty in own.items():
                init_peak[name] = max(init_peak.get(name, 0), qty + sidecars.get(name, 0))
    for i, container in enumerate(as_list(pod_spec.get("containers"))):
        _add(totals, _container_gpus(container, policy, unreadable, f"{path}.containers[{i}]"))
    _add(totals, sidecars)
    for name, qty in init_peak.items():
        totals[name] = max(totals.get(name, 0), qty)
    return {k: v for k, v in totals.items() if v > 0}


def _container_gpus(
    container: object,
    policy: Policy,
    unreadable: list[tuple[str, Unreadable]] | None,
    path: str,
) -> dict[str, int]:
    resources = as_mapping(as_mapping(container).get("resources"))
    seen: dict[str, int] = {}
    for section in ("requests", "limits"):  # limits overwrite requests
        amounts = resources.get(section)
        if not amounts:
            continue
        for name, qty in as_mapping(amounts).items():
            if not isinstance(name, str) or not policy.is_accelerator(name):
                continue
            try:
                seen[name] = whole_quantity(qty)
            except QuantityError as exc:
                seen[name] = 0
                if unreadable is not None:
                    fact = Unreadable(
                        f"{path}.resources.{section}[{name}]", short_value(qty), str(exc)
                    )
                    unreadable.append((name, fact))
    return seen


def _add(into: dict[str, int], more: Mapping[str, int]) -> None:
    for name, qty in more.items():
        into[name] = into.get(name, 0) + qty


def _required_affinity_pins(pod_spec: Mapping[str, Any]) -> dict[str, str]:
    """``key: value`` of each one-value ``In`` of a single required node-affinity term
    (several terms are OR-ed: then no key pins one type)."""
    affinity = as_mapping(as_mapping(pod_spec.get("affinity")).get("nodeAffinity"))
    if not affinity:
        return {}
    required = as_mapping(affinity.get("requiredDuringSchedulingIgnoredDuringExecution"))
    terms = as_list(required.get("nodeSelectorTerms"))
    if len(terms) != 1:
        return {}
    pins: dict[str, str] = {}
    for expr in as_list(as_mapping(terms[0]).get("matchExpressions")):
        e = as_mapping(expr)
        values = as_list(e.get("values"))
        key = e.get("key")
        if isinstance(key, str) and e.get("operator") == "In" and len(values) == 1:
            pins.setdefault(key, str(values[0]))
    return pins


def _is_kubernetes_key(key: str) -> bool:
    """Well-known labels of Kubernetes itself (zone, arch, os, hostname): never a type."""
    prefix = key.partition("/")[0] if "/" in key else ""
    return prefix in ("kubernetes.io", "k8s.io") or prefix.endswith((".kubernetes.io", ".k8s.io"))


def gpu_type_of(template: Mapping[str, Any], policy: Policy) -> GpuType:
    """GPU type of a pod template, the first rule that applies (see DESIGN.md)."""
    return gpu_facts(template, policy)[0]


def gpus_per_replica(template: Mapping[str, Any], policy: Policy) -> int:
    return gpu_facts(template, policy)[1]


def gpu_facts(
    template: Mapping[str, Any],
    policy: Policy,
    labels: Mapping[str, str] | None = None,
    unreadable: list[Unreadable] | None = None,
) -> tuple[GpuType, int]:
    """``(gpu_type_of, gpus_per_replica)`` of a pod template, reading it once.
    ``labels``: the template's labels when the caller has read them already.
    GPU quantities that cannot be read are appended to ``unreadable`` (paths under
    ``spec.template``); they count as 0 GPUs, but their resource still decides the
    type (a MIG slice, or an unpinned GPU)."""
    if labels is None:
        labels = str_map(as_mapping(template.get("metadata")).get("labels"))
    spec = as_mapping(template.get("spec"))
    bad: list[tuple[str, Unreadable]] = []
    resources = gpu_resources(spec, policy, bad, "spec.template.spec")
    gpus = sum(resources.values())
    if bad:
        if unreadable is not None:
            unreadable.extend(fact for _, fact in bad)
        resources = {**{name: 0 for name, _ in bad}, **resources}
    if labels.get(GPU_TYPE_LABEL):
        name = labels[GPU_TYPE_LABEL]
        return GpuType("pinned", name, f"label {GPU_TYPE_LABEL}", GPU_TYPE_LABEL), gpus
    node_selector = str_map(spec.get("nodeSelector"))
    pins = _required_affinity_pins(spec)
    # A machine type names a GPU type only for a Deployment that requests accelerators.
    keys = policy.gpu_node_label_keys + (policy.instance_type_label_keys if resources else ())
    if node_selector:
        for key in keys:
            value = node_selector.get(key)
            if value:
                return GpuType("pinned", value, f"nodeSelector {key}", key), gpus
    if pins:
        for key in keys:
            value = pins.get(key)
            if value:
                return GpuType("pinned", value, f"required node affinity {key}", key), gpus
    migs = sorted(r for r in resources if r.startswith(MIG_RESOURCE_PREFIX))
    if migs:
        return GpuType("mig", migs[0], f"resource {migs[0]}"), gpus
    if resources:
        unread = tuple(
            sorted(
                k for k in {*node_selector, *pins} if k not in keys and not _is_kubernetes_key(k)
            )
        )
        return GpuType(
            "unpinned", None, f"requests {', '.join(sorted(resources))}", "", unread
        ), gpus
    return CPU_ONLY, gpus


def model_group(labels: Mapping[str, str], policy: Policy) -> str | None:
    for key in policy.model_label_keys:
        value = labels.get(key)
        if value:
            return value
    return None


def node_gpu_names(labels: Mapping[str, str], policy: Policy) -> frozenset[str]:
    """Every GPU type name a node answers to (one per GPU label it carries)."""
    names = {labels[k] for k in (GPU_TYPE_LABEL, *policy.gpu_node_label_keys) if labels.get(k)}
    return frozenset(names)


def node_type_labels(labels: Mapping[str, str], policy: Policy) -> dict[str, str]:
    """The labels of a node that can pin a type: GPU keys and machine-type keys."""
    keys = (GPU_TYPE_LABEL, *policy.gpu_node_label_keys, *policy.instance_type_label_keys)
    return {k: labels[k] for k in keys if labels.get(k)}
