"""Typed, read-only views of the Kubernetes objects the rules look at.

Views keep only what the rules need, so a cache of 10,000 Deployments stays
small, and they are built from plain JSON-like mappings so the same code reads
manifest files, AdmissionReview objects and watch events.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gpumix.kube.fields import Unreadable, as_mapping, short_value, str_map
from gpumix.kube.gputype import (
    GpuType,
    gpu_facts,
    model_group,
    node_gpu_names,
    node_type_labels,
)
from gpumix.kube.policy import (
    DEFAULT_MAX_REPLICAS_ANNOTATION,
    GPU_TYPE_LABEL,
    MIG_RESOURCE_PREFIX,
    MODE_LABEL,
    MODES,
    Mode,
    Policy,
)
from gpumix.kube.quantity import QuantityError, whole_quantity
from gpumix.kube.selectors import Selector, SelectorError, parse_selector

DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True, slots=True, order=True)
class ObjectRef:
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return (
            f"{self.kind} {self.namespace}/{self.name}"
            if self.namespace
            else (f"{self.kind} {self.name}")
        )

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "namespace": self.namespace, "name": self.name}


@dataclass(frozen=True, slots=True)
class DeploymentView:
    namespace: str
    name: str
    selector: Selector
    selector_error: SelectorError | None
    template_labels: Mapping[str, str]
    gpu_type: GpuType
    gpus_per_replica: int
    model: str | None
    replicas: int | None = None
    unreadable: tuple[Unreadable, ...] = ()
    """GPU quantities that cannot be read: ``gpus_per_replica`` then counts only the
    readable ones and is not to be relied on (see ``gpus_known``)."""

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("Deployment", self.namespace, self.name)

    @property
    def gpus_known(self) -> bool:
        """Whether ``gpus_per_replica`` is the whole GPU request (every quantity read)."""
        return not self.unreadable

    @property
    def in_scope(self) -> bool:
        """Requests accelerators, carries a model-group label, or declares its GPU type
        with the ``gpumix.io/gpu-type`` pod label (docs/design.md). Node selectors alone
        never bring a Deployment in scope."""
        return (
            self.gpus_per_replica > 0
            or self.model is not None
            or self.gpu_type.key == GPU_TYPE_LABEL
        )


AutoscalerKind = Literal["HorizontalPodAutoscaler", "ScaledObject", "PodAutoscaler"]


@dataclass(frozen=True, slots=True)
class AutoscalerKindInfo:
    kind: AutoscalerKind
    groups: tuple[str, ...]
    ceiling_field: str
    floor_field: str


AUTOSCALER_KINDS: dict[AutoscalerKind, AutoscalerKindInfo] = {
    "HorizontalPodAutoscaler": AutoscalerKindInfo(
        "HorizontalPodAutoscaler", ("autoscaling",), "maxReplicas", "minReplicas"
    ),
    "ScaledObject": AutoscalerKindInfo(
        "ScaledObject", ("keda.sh",), "maxReplicaCount", "minReplicaCount"
    ),
    "PodAutoscaler": AutoscalerKindInfo(
        "PodAutoscaler", ("autoscaling.aibrix.ai",), "maxReplicas", "minReplicas"
    ),
}


def autoscaler_info(api_version: str, kind: str) -> AutoscalerKindInfo | None:
    group = api_version.split("/")[0] if "/" in api_version else ""
    for info in AUTOSCALER_KINDS.values():
        if info.kind == kind and group in info.groups:
            return info
    return None


@dataclass(frozen=True, slots=True)
class AutoscalerView:
    kind: AutoscalerKind
    api_version: str
    namespace: str
    name: str
    target: ObjectRef | None
    ceiling: int | None
    """The ceiling; None when missing (absent or 0)."""
    floor: int | None
    ceiling_field: str

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(self.kind, self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class NodeView:
    name: str
    gpu_names: frozenset[str]
    allocatable_gpus: int
    unschedulable: bool = False
    type_labels: Mapping[str, str] = field(default_factory=dict)
    """The node's labels that can pin a GPU type (GPU keys and machine-type keys)."""
    unreadable: tuple[Unreadable, ...] = ()
    """Allocatable GPU quantities that cannot be read (capacity of its types is unknown)."""


@dataclass(frozen=True, slots=True)
class NamespaceView:
    name: str
    mode: Mode | None = None
    default_max_replicas: int | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    invalid_mode: str | None = None
    """The ``gpumix.io/mode`` label's value when it is not a mode (the policy's applies)."""
    unreadable: tuple[Unreadable, ...] = ()
    """A ``gpumix.io/default-max-replicas`` annotation that is not a positive integer."""


View = DeploymentView | AutoscalerView | NodeView | NamespaceView


def meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return as_mapping(obj.get("metadata"))


def name_of(obj: Mapping[str, Any]) -> str:
    return _name_in(meta(obj))


def namespace_of(obj: Mapping[str, Any]) -> str:
    return _namespace_in(meta(obj))


def _name_in(metadata: Mapping[str, Any]) -> str:
    name = metadata.get("name")
    return name if isinstance(name, str) else ""


def _namespace_in(metadata: Mapping[str, Any]) -> str:
    ns = metadata.get("namespace")
    return ns if isinstance(ns, str) and ns else DEFAULT_NAMESPACE


def deployment_view(obj: Mapping[str, Any], policy: Policy) -> DeploymentView:
    metadata = meta(obj)
    spec = as_mapping(obj.get("spec"))
    template = as_mapping(spec.get("template"))
    template_labels = str_map(meta(template).get("labels"))
    error: SelectorError | None = None
    try:
        selector = parse_selector(spec.get("selector"), "spec.selector")
        if selector.is_empty:
            # apps/v1 refuses it: a Deployment's selector is required and non-empty
            raise SelectorError("spec.selector", "is required and must not be empty")
    except SelectorError as exc:
        selector, error = Selector(), exc
    labels = str_map(metadata.get("labels"))
    unreadable: list[Unreadable] = []
    gpu_type, gpus = gpu_facts(template, policy, template_labels, unreadable)
    replicas = spec.get("replicas")
    return DeploymentView(
        namespace=_namespace_in(metadata),
        name=_name_in(metadata),
        selector=selector,
        selector_error=error,
        template_labels=template_labels,
        gpu_type=gpu_type,
        gpus_per_replica=gpus,
        model=model_group(labels, policy) or model_group(template_labels, policy),
        replicas=replicas if isinstance(replicas, int) and not isinstance(replicas, bool) else None,
        unreadable=tuple(unreadable),
    )


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def autoscaler_view(obj: Mapping[str, Any], info: AutoscalerKindInfo) -> AutoscalerView:
    spec = as_mapping(obj.get("spec"))
    ns = namespace_of(obj)
    ref = as_mapping(spec.get("scaleTargetRef"))
    target: ObjectRef | None = None
    ref_name, ref_kind = ref.get("name"), ref.get("kind")
    if isinstance(ref_name, str) and ref_name:
        kind = ref_kind if isinstance(ref_kind, str) and ref_kind else "Deployment"
        target = ObjectRef(kind, ns, ref_name)
    ceiling = _int_or_none(spec.get(info.ceiling_field))
    api_version = obj.get("apiVersion")
    return AutoscalerView(
        kind=info.kind,
        api_version=api_version if isinstance(api_version, str) else "",
        namespace=ns,
        name=name_of(obj),
        target=target,
        ceiling=ceiling if ceiling else None,
        floor=_int_or_none(spec.get(info.floor_field)),
        ceiling_field=f"spec.{info.ceiling_field}",
    )


def node_view(obj: Mapping[str, Any], policy: Policy) -> NodeView:
    labels = str_map(meta(obj).get("labels"))
    status = as_mapping(obj.get("status"))
    alloc = as_mapping(status.get("allocatable"))
    gpus = 0
    unreadable: list[Unreadable] = []
    for name, value in alloc.items():
        # whole accelerators; MIG slices are a type of their own, not GPUs of the node's
        if not isinstance(name, str) or name.startswith(MIG_RESOURCE_PREFIX):
            continue
        if not policy.is_accelerator(name):
            continue
        try:
            gpus += whole_quantity(value)
        except QuantityError as exc:
            path = f"status.allocatable[{name}]"
            unreadable.append(Unreadable(path, short_value(value), str(exc)))
    names = node_gpu_names(labels, policy)
    if gpus:  # a GPU node also answers to its machine type (a pin of accelerator requesters)
        machine = {labels[k] for k in policy.instance_type_label_keys if labels.get(k)}
        names = names | machine if machine else names
    return NodeView(
        name=name_of(obj),
        gpu_names=names,
        allocatable_gpus=gpus,
        unschedulable=as_mapping(obj.get("spec")).get("unschedulable") is True,
        type_labels=node_type_labels(labels, policy),
        unreadable=tuple(unreadable),
    )


def namespace_view(obj: Mapping[str, Any]) -> NamespaceView:
    m = meta(obj)
    labels = str_map(m.get("labels"))
    annotations = str_map(m.get("annotations"))
    mode_value = labels.get(MODE_LABEL)
    mode: Mode | None = None
    for candidate in MODES:
        if candidate == mode_value:
            mode = candidate
    default_max: int | None = None
    unreadable: tuple[Unreadable, ...] = ()
    raw = annotations.get(DEFAULT_MAX_REPLICAS_ANNOTATION)
    if raw is not None:
        text = raw.strip()
        # at most 18 digits: an int64, and int() of a long text is refused (or slow)
        if 0 < len(text) <= 18 and text.isascii() and text.isdigit() and int(text) > 0:
            default_max = int(text)
        else:
            path = f"metadata.annotations[{DEFAULT_MAX_REPLICAS_ANNOTATION}]"
            unreadable = (Unreadable(path, short_value(raw), "must be a positive integer"),)
    return NamespaceView(
        name=name_of(obj),
        mode=mode,
        default_max_replicas=default_max,
        labels=labels,
        invalid_mode=mode_value if mode is None and mode_value is not None else None,
        unreadable=unreadable,
    )


class UnreadableObject(ValueError):
    """An object that could not be turned into a view at all; ``ref`` names it as far
    as it could be read, ``reason`` says why."""

    def __init__(self, ref: ObjectRef, reason: str) -> None:
        super().__init__(f"{ref}: cannot be read: {reason}")
        self.ref = ref
        self.reason = reason


def view_of(obj: Mapping[str, Any], policy: Policy) -> View | None:
    """The view of any object the rules care about, or None.

    Never raises for any JSON-like value: every field is read through tolerant
    readers, and a value that cannot be read becomes an :class:`Unreadable` fact of
    the view.  Callers that hold many objects use :func:`read_view`, which isolates
    each object's conversion all the same."""
    kind = obj.get("kind")
    raw_version = obj.get("apiVersion")
    api_version = raw_version if isinstance(raw_version, str) else ""
    if kind == "Deployment" and api_version.startswith("apps/"):
        return deployment_view(obj, policy)
    if kind == "Node" and api_version == "v1":
        return node_view(obj, policy)
    if kind == "Namespace" and api_version == "v1":
        return namespace_view(obj)
    if isinstance(kind, str):
        info = autoscaler_info(api_version, kind)
        if info is not None:
            return autoscaler_view(obj, info)
    return None


def read_view(obj: Mapping[str, Any], policy: Policy) -> View | None:
    """:func:`view_of`, with this one object's conversion isolated: whatever goes wrong
    in it (a value nested past the interpreter's recursion limit, a defect in a
    reader) raises :class:`UnreadableObject` naming the object, so a caller holding
    many objects keeps every other one."""
    try:
        return view_of(obj, policy)
    except RecursionError:
        raise UnreadableObject(ref_of(obj), "nested too deeply to read") from None
    except Exception as exc:
        raise UnreadableObject(ref_of(obj), f"{type(exc).__name__}: {exc}"[:200]) from exc


def ref_of(obj: Mapping[str, Any]) -> ObjectRef:
    """Kind, namespace and name of an object, as far as they can be read."""
    try:
        raw_kind = obj.get("kind")
        kind = raw_kind if isinstance(raw_kind, str) and raw_kind else "object"
        metadata = meta(obj)
        ns = "" if kind in ("Node", "Namespace") else _namespace_in(metadata)
        return ObjectRef(kind, ns, _name_in(metadata) or "<unnamed>")
    except Exception:  # even reading these failed: name it as well as possible
        return ObjectRef("object", "", "<unreadable>")
