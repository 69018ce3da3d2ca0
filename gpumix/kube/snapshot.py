"""A snapshot of the objects the rules look at, indexed for overlap queries.

Overlap detection does not compare every pair.  Within a namespace,
Deployments are grouped by the set of keys their selector pins to finite
values (``matchLabels`` / ``In``), and each group keeps a posting list per
``key=value``.  For a query selector Q, a group whose pinned keys share a key
``k`` with Q can only hold overlapping selectors in the postings of ``k``'s
values in Q; a group sharing no pinned key with Q is taken whole.  Candidates
are then checked exactly.  Real clusters have few distinct key sets (``app``,
``app.kubernetes.io/name``, model labels), so a query touches a handful of
postings instead of every Deployment.

The snapshot is changed only by its owner (the webhook's cache, the CLI while
loading files); the rules only read it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from gpumix.kube.gputype import GpuType
from gpumix.kube.objects import (
    AutoscalerView,
    DeploymentView,
    NamespaceView,
    NodeView,
    ObjectRef,
    View,
    view_of,
)
from gpumix.kube.policy import GPU_TYPE_LABEL, Policy
from gpumix.kube.selectors import Selector


@dataclass
class _KeyGroup:
    members: set[str] = field(default_factory=set)
    postings: dict[tuple[str, str], set[str]] = field(default_factory=dict)


@dataclass
class _NamespaceIndex:
    groups: dict[frozenset[str], _KeyGroup] = field(default_factory=dict)

    def add(self, name: str, selector: Selector) -> None:
        pinned = selector.pinned()
        group = self.groups.setdefault(frozenset(pinned), _KeyGroup())
        group.members.add(name)
        for key, values in pinned.items():
            for value in values:
                group.postings.setdefault((key, value), set()).add(name)

    def remove(self, name: str, selector: Selector) -> None:
        pinned = selector.pinned()
        sig = frozenset(pinned)
        group = self.groups.get(sig)
        if group is None:
            return
        group.members.discard(name)
        for key, values in pinned.items():
            for value in values:
                posting = group.postings.get((key, value))
                if posting is not None:
                    posting.discard(name)
                    if not posting:
                        del group.postings[(key, value)]
        if not group.members:
            del self.groups[sig]

    def candidates(self, selector: Selector) -> set[str]:
        pinned = selector.pinned()
        out: set[str] = set()
        for sig, group in self.groups.items():
            common = sig.intersection(pinned)
            if not common:
                out |= group.members
                continue
            best: set[str] | None = None
            for key in common:
                hits: set[str] = set()
                for value in pinned[key]:
                    hits |= group.postings.get((key, value), set())
                if best is None or len(hits) < len(best):
                    best = hits
                if not best:
                    break
            if best:
                out |= best
        return out


class Snapshot:
    """Deployments, autoscalers, Nodes and Namespaces, with the indexes the rules use."""

    def __init__(self) -> None:
        self.deployments: dict[ObjectRef, DeploymentView] = {}
        self.autoscalers: dict[ObjectRef, AutoscalerView] = {}
        self.nodes: dict[str, NodeView] = {}
        self.namespaces: dict[str, NamespaceView] = {}
        self._index: dict[str, _NamespaceIndex] = {}
        self._targets: dict[ObjectRef, set[ObjectRef]] = {}
        # GPU capacity per type and the Nodes' name of a pinned type, computed on first
        # use and forgotten when a Node changes (admission asks on every autoscaler and
        # overlap; Nodes change far less often)
        self._capacity: dict[str, int | None] = {}
        self._pin_capacity: dict[tuple[str, str], int | None] = {}
        self._canonical: dict[tuple[str, str], str] = {}

    # -- building ---------------------------------------------------------------
    @classmethod
    def from_objects(cls, objects: Iterable[Mapping[str, Any]], policy: Policy) -> Snapshot:
        snap = cls()
        for obj in objects:
            view = view_of(obj, policy)
            if view is not None:
                snap.put(view)
        return snap

    def put(self, view: View) -> None:
        if isinstance(view, DeploymentView):
            self.remove_deployment(view.ref)
            self.deployments[view.ref] = view
            self._index.setdefault(view.namespace, _NamespaceIndex()).add(view.name, view.selector)
        elif isinstance(view, AutoscalerView):
            self.remove_autoscaler(view.ref)
            self.autoscalers[view.ref] = view
            if view.target is not None and view.target.kind == "Deployment":
                self._targets.setdefault(view.target, set()).add(view.ref)
        elif isinstance(view, NodeView):
            self.nodes[view.name] = view
            self._nodes_changed()
        else:
            self.namespaces[view.name] = view

    def _nodes_changed(self) -> None:
        self._capacity.clear()
        self._pin_capacity.clear()
        self._canonical.clear()

    def remove_deployment(self, ref: ObjectRef) -> None:
        old = self.deployments.pop(ref, None)
        if old is not None:
            index = self._index.get(old.namespace)
            if index is not None:
                index.remove(old.name, old.selector)
                if not index.groups:
                    del self._index[old.namespace]

    def remove_autoscaler(self, ref: ObjectRef) -> None:
        old = self.autoscalers.pop(ref, None)
        if old is not None and old.target is not None:
            refs = self._targets.get(old.target)
            if refs is not None:
                refs.discard(ref)
                if not refs:
                    del self._targets[old.target]

    def remove(self, kind: str, namespace: str, name: str) -> None:
        if kind == "Deployment":
            self.remove_deployment(ObjectRef(kind, namespace, name))
        elif kind == "Node":
            self.nodes.pop(name, None)
            self._nodes_changed()
        elif kind == "Namespace":
            self.namespaces.pop(name, None)
        else:
            self.remove_autoscaler(ObjectRef(kind, namespace, name))

    # -- queries ----------------------------------------------------------------
    def overlap_candidates(self, selector: Selector, namespace: str) -> Iterator[DeploymentView]:
        """Deployments in ``namespace`` whose selector may overlap ``selector`` (a superset)."""
        index = self._index.get(namespace)
        if index is None:
            return
        for name in sorted(index.candidates(selector)):
            yield self.deployments[ObjectRef("Deployment", namespace, name)]

    def autoscalers_targeting(self, deployment: ObjectRef) -> list[AutoscalerView]:
        """Autoscalers whose ``scaleTargetRef`` names this Deployment (kind Deployment only)."""
        refs = self._targets.get(_deployment_ref(deployment), set())
        return [self.autoscalers[r] for r in sorted(refs)]

    def is_autoscaled(self, deployment: ObjectRef) -> bool:
        """Whether an autoscaler's ``scaleTargetRef`` names this Deployment."""
        return bool(self._targets.get(_deployment_ref(deployment)))

    def deployment(self, ref: ObjectRef) -> DeploymentView | None:
        """The Deployment ``ref`` names; None when missing or ``ref`` is of another kind
        (an autoscaler may target a StatefulSet or a custom resource of the same name)."""
        return self.deployments.get(ref) if ref.kind == "Deployment" else None

    def gpu_capacity(self, gpu_name: str) -> int | None:
        """Allocatable GPUs on the Nodes of this GPU type; None if no Node has it.

        Cordoned Nodes count: a drain is temporary, and a ceiling is about what the pool
        holds, not what is schedulable this minute (docs/design.md, "Ceilings")."""
        if gpu_name in self._capacity:
            return self._capacity[gpu_name]
        total: int | None = None
        for node in self.nodes.values():
            if gpu_name in node.gpu_names:
                total = (total or 0) + node.allocatable_gpus
        self._capacity[gpu_name] = total
        return total

    def type_capacity(self, gpu_type: GpuType) -> int | None:
        """Allocatable GPUs on the Nodes a pinned type lands on (the Nodes whose label
        ``gpu_type.key`` has its name, cordoned ones too); by name when it has no key."""
        if gpu_type.name is None:
            return None
        if not gpu_type.key:
            return self.gpu_capacity(gpu_type.name)
        pin = (gpu_type.key, gpu_type.name)
        if pin in self._pin_capacity:
            return self._pin_capacity[pin]
        total: int | None = None
        for node in self._pinned_nodes(pin):
            total = (total or 0) + node.allocatable_gpus
        self._pin_capacity[pin] = total
        return total

    def _pinned_nodes(self, pin: tuple[str, str]) -> list[NodeView]:
        key, value = pin
        if key == GPU_TYPE_LABEL:  # the pod label names a type, by any GPU label of a Node
            return [n for n in self.nodes.values() if value in n.gpu_names]
        return [n for n in self.nodes.values() if n.type_labels.get(key) == value]

    def gpu_type_name(self, gpu_type: GpuType) -> str | None:
        """The name the Nodes give a pinned type: among the labels every Node of the pin
        carries with one value, the first by the policy's key order (``gpumix.io/gpu-type``,
        then ``gpuNodeLabelKeys``, then machine-type keys). So ``p4d.24xlarge`` (machine
        type) and ``NVIDIA-A100-SXM4-80GB`` (GPU product) on the same Nodes are one type.
        Without Nodes (or a key) the pin's own value."""
        if gpu_type.kind != "pinned" or gpu_type.name is None or not gpu_type.key:
            return gpu_type.name
        pin = (gpu_type.key, gpu_type.name)
        cached = self._canonical.get(pin)
        if cached is not None:
            return cached
        nodes = self._pinned_nodes(pin)
        name = gpu_type.name
        if nodes:
            for key, value in nodes[0].type_labels.items():
                if all(n.type_labels.get(key) == value for n in nodes[1:]):
                    name = value
                    break
        self._canonical[pin] = name
        return name

    def same_gpu_type(self, a: GpuType, b: GpuType) -> bool:
        """Whether two Deployments run on one GPU type, by their pins and the Nodes."""
        if a.kind != "pinned" or b.kind != "pinned":
            return a.same_as(b)
        return a.name == b.name or self.gpu_type_name(a) == self.gpu_type_name(b)

    def namespace(self, name: str) -> NamespaceView | None:
        return self.namespaces.get(name)


def _deployment_ref(ref: ObjectRef) -> ObjectRef:
    return ObjectRef("Deployment", ref.namespace, ref.name)
