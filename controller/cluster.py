"""One read of the cluster for a reconcile pass, and the GPU accounting built from it.

GPU accounting (per GPU type name, as Nodes and Deployments name it):

- ``capacity``: allocatable GPUs on schedulable Nodes that carry the type.
- ``committed``: GPUs requested by running/pending pods bound to those Nodes,
  plus, for every Deployment pinned to the type, the GPUs of replicas that
  have no bound pod yet (``spec.replicas`` minus its bound pods).  Counting
  the not-yet-scheduled replicas keeps two plans from promising the same free
  GPUs before the scheduler has placed anything.
- ``free`` = ``capacity - committed``; a member may use ``free`` plus what it
  itself has committed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gpumix.controller.kubeio import KubeError, KubeIO, resource_path
from gpumix.controller.plan import GpuPool
from gpumix.controller.spec import GROUP, PLURAL, VERSION
from gpumix.kube.fields import as_mapping, str_map
from gpumix.kube.gputype import gpu_resources
from gpumix.kube.objects import (
    AUTOSCALER_KINDS,
    DeploymentView,
    ObjectRef,
    autoscaler_view,
    deployment_view,
    namespace_view,
    node_view,
)
from gpumix.kube.policy import Policy
from gpumix.kube.snapshot import Snapshot

Obj = dict[str, Any]

AUTOSCALER_SOURCES: tuple[tuple[str, str, str, str], ...] = (
    # group, version, plural, kind (as in gpumix.kube.objects.AUTOSCALER_KINDS)
    ("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler"),
    ("keda.sh", "v1alpha1", "scaledobjects", "ScaledObject"),
    ("autoscaling.aibrix.ai", "v1alpha1", "podautoscalers", "PodAutoscaler"),
)


@dataclass
class ClusterState:
    gpumixes: list[Obj]
    deployments: dict[ObjectRef, Obj]
    snapshot: Snapshot
    capacity: dict[str, int]
    free: dict[str, int]
    committed: dict[ObjectRef, int]
    """GPUs each Deployment holds: its bound pods plus its unscheduled replicas."""
    follows_plan: frozenset[ObjectRef] = frozenset()
    """Autoscalers whose metric is gpumix's recommendation for their target."""
    read_at: float = field(default_factory=time.monotonic)

    def pools(self) -> dict[str, GpuPool]:
        return {t: GpuPool(self.capacity[t], self.free.get(t, 0)) for t in self.capacity}


class ServedCache:
    """Whether an optional API (KEDA, AIBrix, PolicyReport) is served; rechecked every minute."""

    def __init__(self, kube: KubeIO, ttl_s: float = 60.0) -> None:
        self._kube = kube
        self._ttl = ttl_s
        self._seen: dict[str, tuple[bool, float]] = {}

    async def served(self, group: str, version: str, plural: str) -> bool:
        key = f"{group}/{version}/{plural}"
        hit = self._seen.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[1] < self._ttl:
            return hit[0]
        try:
            doc = await self._kube.get(f"/apis/{group}/{version}")
        except KubeError:
            doc = None
        found = bool(doc) and any(
            isinstance(r, dict) and r.get("name") == plural
            for r in (doc or {}).get("resources", [])
        )
        self._seen[key] = (found, now)
        return found


async def read_autoscalers(kube: KubeIO, served: ServedCache, namespace: str | None) -> list[Obj]:
    out: list[Obj] = []
    for group, version, plural, kind in AUTOSCALER_SOURCES:
        if group != "autoscaling" and not await served.served(group, version, plural):
            continue
        try:
            items = (await kube.list(resource_path(group, version, plural, namespace))).items
        except KubeError as exc:
            if exc.status in (404, 403):
                continue
            raise
        for item in items:
            item.setdefault("apiVersion", f"{group}/{version}")
            item.setdefault("kind", kind)
        out.extend(items)
    return out


async def read_cluster(
    kube: KubeIO,
    policy: Policy,
    served: ServedCache,
    namespace: str | None,
    *,
    with_gpumixes: bool = True,
) -> ClusterState:
    """Everything a reconcile pass needs, in a handful of list calls."""
    gpumixes: list[Obj] = []
    if with_gpumixes:
        gpumixes = (await kube.list(resource_path(GROUP, VERSION, PLURAL, namespace))).items
    deployments = (await kube.list(resource_path("apps", "v1", "deployments", None))).items
    nodes = (await kube.list(resource_path("", "v1", "nodes"))).items
    pods = (
        await kube.list(resource_path("", "v1", "pods"), field_selector="spec.nodeName!=")
    ).items
    autoscalers = await read_autoscalers(kube, served, None)
    return build_state(gpumixes, deployments, nodes, pods, autoscalers, policy)


def build_state(
    gpumixes: list[Obj],
    deployments: Iterable[Obj],
    nodes: Iterable[Obj],
    pods: Iterable[Obj],
    autoscalers: Iterable[Obj],
    policy: Policy,
    namespaces: Iterable[Obj] = (),
) -> ClusterState:
    snap = Snapshot()
    raw: dict[ObjectRef, Obj] = {}
    for d in deployments:
        d.setdefault("apiVersion", "apps/v1")
        d.setdefault("kind", "Deployment")
        view = deployment_view(d, policy)
        snap.put(view)
        raw[view.ref] = d
    followers: set[ObjectRef] = set()
    for a in autoscalers:
        info = AUTOSCALER_KINDS.get(a.get("kind"))  # type: ignore[arg-type]
        if info is not None:
            scaler = autoscaler_view(a, info)
            snap.put(scaler)
            if follows_recommendation(a):
                followers.add(scaler.ref)
    node_types: dict[str, frozenset[str]] = {}
    capacity: dict[str, int] = {}
    for n in nodes:
        nv = node_view(n, policy)
        snap.put(nv)
        if nv.unschedulable:
            continue
        node_types[nv.name] = nv.gpu_names
        for gpu in nv.gpu_names:
            capacity[gpu] = capacity.get(gpu, 0) + nv.allocatable_gpus
    for ns_obj in namespaces:
        snap.put(namespace_view(ns_obj))
    committed_by_type: dict[str, int] = {}
    bound_pods: dict[ObjectRef, int] = {}
    bound_gpus: dict[ObjectRef, int] = {}
    by_namespace: dict[str, list[DeploymentView]] = {}
    for view in snap.deployments.values():
        by_namespace.setdefault(view.namespace, []).append(view)
    for pod in pods:
        spec = as_mapping(pod.get("spec"))
        node = spec.get("nodeName")
        phase = as_mapping(pod.get("status")).get("phase")
        if not isinstance(node, str) or not node or phase in ("Succeeded", "Failed"):
            continue
        gpus = sum(gpu_resources(spec, policy).values())
        if gpus <= 0:
            continue
        for gpu in node_types.get(node, frozenset()):
            committed_by_type[gpu] = committed_by_type.get(gpu, 0) + gpus
        meta = as_mapping(pod.get("metadata"))
        labels = str_map(meta.get("labels"))
        pod_ns = str(meta.get("namespace") or "default")
        for view in by_namespace.get(pod_ns, []):
            if view.selector_error is None and view.selector.matches(labels):
                bound_pods[view.ref] = bound_pods.get(view.ref, 0) + 1
                bound_gpus[view.ref] = bound_gpus.get(view.ref, 0) + gpus
                break
    committed: dict[ObjectRef, int] = {}
    for view in snap.deployments.values():
        if view.gpu_type.name is None:
            continue
        per = max(1, view.gpus_per_replica)
        unscheduled = max(0, (view.replicas or 0) - bound_pods.get(view.ref, 0)) * per
        committed[view.ref] = bound_gpus.get(view.ref, 0) + unscheduled
        committed_by_type[view.gpu_type.name] = (
            committed_by_type.get(view.gpu_type.name, 0) + unscheduled
        )
    free = {gpu: cap - committed_by_type.get(gpu, 0) for gpu, cap in capacity.items()}
    return ClusterState(
        gpumixes, raw, snap, capacity, free, committed, follows_plan=frozenset(followers)
    )


def follows_recommendation(autoscaler: Mapping[str, Any]) -> bool:
    """Is this an AIBrix PodAutoscaler whose only metric is gpumix's recommendation for its
    target (``path: /metrics/<namespace>/<deployment>``, docs/controller.md)?"""
    if autoscaler.get("kind") != "PodAutoscaler":
        return False
    meta = as_mapping(autoscaler.get("metadata"))
    spec = as_mapping(autoscaler.get("spec"))
    target = as_mapping(spec.get("scaleTargetRef"))
    sources = spec.get("metricsSources")
    if not isinstance(sources, list) or not sources:
        return False
    want = f"/metrics/{meta.get('namespace') or 'default'}/{target.get('name')}"
    return all(
        isinstance(x, Mapping) and str(x.get("path") or "").rstrip("/") == want for x in sources
    )


def labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    return str_map(as_mapping(obj.get("metadata")).get("labels"))
