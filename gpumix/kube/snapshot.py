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

The ``selector-overlap`` rule reports a pair only when the selectors share a key
or one selects the other's pod template, so it asks :meth:`Snapshot.related_candidates`,
which also indexes selector keys that are not pinned and the pod-template labels:
a selector that pins a value is then answered from postings alone, however many
Deployments share the namespace (a whole group is no longer taken because it
pins other keys).

An object that cannot be read at all (:class:`~gpumix.kube.objects.UnreadableObject`)
is kept out of the views and recorded in ``unreadable``, so its owner can count
it; objects are read one at a time and one never affects another.

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
    UnreadableObject,
    View,
    read_view,
)
from gpumix.kube.policy import GPU_TYPE_LABEL, Policy
from gpumix.kube.selectors import Selector


@dataclass
class _KeyGroup:
    members: set[str] = field(default_factory=set)
    postings: dict[tuple[str, str], Posting] = field(default_factory=dict)


_NONE: frozenset[str] = frozenset()


def _may_overlap(
    group: _KeyGroup, sig: frozenset[str], pinned: Mapping[str, frozenset[str]]
) -> set[str]:
    """The members of ``group`` whose selector may overlap one pinning ``pinned``: the
    smallest posting of a key both pin, or the whole group when they pin none in common."""
    best: set[str] | None = None
    for key in sig.intersection(pinned):
        hits: set[str] = set()
        for value in pinned[key]:
            hits |= _members(group.postings, (key, value))
        if best is None or len(hits) < len(best):
            best = hits
        if not best:
            break
    return group.members if best is None else best


Posting = str | set[str]
"""The members of one index entry: the name alone while it is the only one (most
entries are a Deployment's own ``app=NAME``; a one-element set costs 216 bytes, which
at 10,000 Deployments is 5 MB of the webhook's cache), else a set."""


def _members(index: Mapping[Any, Posting], key: Any) -> set[str] | frozenset[str]:
    """The members of ``index[key]`` as a set (empty when absent)."""
    posting = index.get(key)
    if posting is None:
        return _NONE
    return frozenset((posting,)) if type(posting) is str else posting  # type: ignore[return-value]


def _add_to(index: dict[Any, Posting], key: Any, name: str) -> None:
    posting = index.get(key)
    if posting is None:
        index[key] = name
    elif type(posting) is str:
        if posting != name:
            index[key] = {posting, name}
    else:
        posting.add(name)  # type: ignore[union-attr]


def _drop_from(index: dict[Any, Posting], key: Any, name: str) -> None:
    posting = index.get(key)
    if posting is None:
        return
    if type(posting) is str:
        if posting == name:
            del index[key]
        return
    posting.discard(name)  # type: ignore[union-attr]
    if len(posting) == 1:
        index[key] = next(iter(posting))
    elif not posting:
        del index[key]


@dataclass
class _NamespaceIndex:
    groups: dict[frozenset[str], _KeyGroup] = field(default_factory=dict)
    loose: dict[str, Posting] = field(default_factory=dict)
    """Selector key -> members whose selector names it without pinning it."""
    labels: dict[tuple[str, str], Posting] = field(default_factory=dict)
    """Pod-template label -> members whose template carries it, when their own selector
    does not pin it (those are in their group's postings already: most template labels
    are the selector's, and indexing them twice would double the index)."""
    label_keys: dict[str, Posting] = field(default_factory=dict)
    """Pod-template label key -> members whose template carries it and whose selector
    does not name it (those are found through their selector)."""
    members: set[str] = field(default_factory=set)

    def add(self, name: str, selector: Selector, template_labels: Mapping[str, str]) -> None:
        pinned = selector.pinned()
        group = self.groups.setdefault(frozenset(pinned), _KeyGroup())
        group.members.add(name)
        for key, values in pinned.items():
            for value in values:
                _add_to(group.postings, (key, value), name)
        for key in selector.keys.difference(pinned):
            _add_to(self.loose, key, name)
        selector_keys = selector.keys
        for item in template_labels.items():
            if item[1] not in pinned.get(item[0], _NONE):
                _add_to(self.labels, item, name)
            if item[0] not in selector_keys:
                _add_to(self.label_keys, item[0], name)
        self.members.add(name)

    def remove(self, name: str, selector: Selector, template_labels: Mapping[str, str]) -> None:
        pinned = selector.pinned()
        sig = frozenset(pinned)
        for key in selector.keys.difference(pinned):
            _drop_from(self.loose, key, name)
        selector_keys = selector.keys
        for item in template_labels.items():
            if item[1] not in pinned.get(item[0], _NONE):
                _drop_from(self.labels, item, name)
            if item[0] not in selector_keys:
                _drop_from(self.label_keys, item[0], name)
        self.members.discard(name)
        group = self.groups.get(sig)
        if group is None:
            return
        group.members.discard(name)
        for key, values in pinned.items():
            for value in values:
                _drop_from(group.postings, (key, value), name)
        if not group.members:
            del self.groups[sig]

    def _carrying_a_key(self, selector: Selector) -> set[str] | frozenset[str]:
        """A superset of the members whose template a selector that pins nothing may
        select: those whose template carries a key it requires (``Exists``), the
        smallest such set; every member when it requires none."""
        best: set[str] | None = None
        for req in selector.requirements:
            if req.operator != "Exists":
                continue
            hits = set(_members(self.label_keys, req.key)) | _members(self.loose, req.key)
            for sig, group in self.groups.items():
                if req.key in sig:
                    hits |= group.members
            if best is None or len(hits) < len(best):
                best = hits
        return self.members if best is None else best

    def related(self, selector: Selector, template_labels: Mapping[str, str]) -> set[str]:
        """A superset of the members that share a selector key with ``selector`` and may
        overlap it, or whose template it selects, or whose selector selects
        ``template_labels``: every pair the overlap rule can report."""
        pinned = selector.pinned()
        keys = selector.keys
        out: set[str] = set()
        # 1. a selector key in common, among the members that may overlap (``candidates``:
        # where a group pins a key ``selector`` pins too, only that key's postings)
        loose: set[str] | frozenset[str] = _NONE
        for key in keys:
            more = _members(self.loose, key)
            if more:
                loose = more if not loose else loose | more
        for sig, group in self.groups.items():
            shares_key = not sig.isdisjoint(keys)
            if not shares_key and not loose:
                continue
            may_overlap = _may_overlap(group, sig, pinned)
            if shares_key:
                out |= may_overlap
            elif len(loose) < len(may_overlap):
                out.update(name for name in loose if name in may_overlap)
            else:
                out.update(name for name in may_overlap if name in loose)
        # 2. ``selector`` selects the member's template: it carries a pinned value of each key
        if pinned:
            best: set[str] | None = None
            for key, values in pinned.items():
                hits: set[str] = set()
                for value in values:
                    hits |= _members(self.labels, (key, value))
                    for sig, group in self.groups.items():
                        if key in sig:
                            hits |= _members(group.postings, (key, value))
                if best is None or len(hits) < len(best):
                    best = hits
                if not best:
                    break
            out |= best or _NONE
        else:
            out |= self._carrying_a_key(selector)
        # 3. the member's selector selects ``template_labels``: its pinned keys are all there
        for sig, group in self.groups.items():
            if not sig:
                out |= group.members
                continue
            if not sig.issubset(template_labels.keys()):
                continue
            smallest: set[str] | frozenset[str] | None = None
            for key in sig:
                posting = _members(group.postings, (key, template_labels[key]))
                if smallest is None or len(posting) < len(smallest):
                    smallest = posting
                if not smallest:
                    break
            out |= smallest or _NONE
        return out

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
                    hits |= _members(group.postings, (key, value))
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
        self.unreadable: dict[ObjectRef, str] = {}
        """Objects that could not be read at all (not in the views), and why."""
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
        """The views of ``objects``; an object that cannot be read is recorded in
        ``unreadable`` and the others are read all the same."""
        snap = cls()
        for obj in objects:
            try:
                view = read_view(obj, policy)
            except UnreadableObject as exc:
                snap.mark_unreadable(exc.ref, exc.reason)
                continue
            if view is not None:
                snap.put(view)
        return snap

    def mark_unreadable(self, ref: ObjectRef, reason: str) -> None:
        """``ref`` could not be read: drop any earlier view of it and record why."""
        self.remove(ref.kind, ref.namespace, ref.name)
        self.unreadable[ref] = reason

    def put(self, view: View) -> None:
        if self.unreadable:
            self.unreadable.pop(_ref_of(view), None)
        if isinstance(view, DeploymentView):
            self.remove_deployment(view.ref)
            self.deployments[view.ref] = view
            if view.selector_error is None:  # the rules skip those: keep them out of the index
                index = self._index.setdefault(view.namespace, _NamespaceIndex())
                index.add(view.name, view.selector, view.template_labels)
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
            if index is not None and old.selector_error is None:
                index.remove(old.name, old.selector, old.template_labels)
                if not index.members:
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
        if self.unreadable:
            self.unreadable.pop(ObjectRef(kind, namespace, name), None)
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

    def related_candidates(self, dep: DeploymentView) -> Iterator[DeploymentView]:
        """Deployments in ``dep``'s namespace, by name, that share a selector key with
        ``dep`` (and may overlap it), or whose pod template its selector matches, or whose
        selector matches its pod template: a superset of the pairs ``selector-overlap``
        reports.  Answered from postings when ``dep``'s selector pins a value."""
        index = self._index.get(dep.namespace)
        if index is None:
            return
        for name in sorted(index.related(dep.selector, dep.template_labels)):
            yield self.deployments[ObjectRef("Deployment", dep.namespace, name)]

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
                if node.unreadable:  # its allocatable GPUs cannot be read: unknown
                    total = None
                    break
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


def _ref_of(view: View) -> ObjectRef:
    if isinstance(view, NodeView):
        return ObjectRef("Node", "", view.name)
    if isinstance(view, NamespaceView):
        return ObjectRef("Namespace", "", view.name)
    return view.ref


def _deployment_ref(ref: ObjectRef) -> ObjectRef:
    return ObjectRef("Deployment", ref.namespace, ref.name)
