"""The controller's view of the cluster: a watch cache, and the GPU accounting built from it.

Deployments, bound Pods, Nodes and autoscalers (HPA, and KEDA ``ScaledObject`` /
AIBrix ``PodAutoscaler`` once their CRDs are served) come from one
:class:`gpumix.kubeio.informer.Informer` into an :class:`ObjectStore`; a reconcile
pass reads the store, so its API calls do not grow with the cluster.  The
informer watches the two autoscaler CRDs by name, so an autoscaler kind installed
later is watched at once, and until its objects are listed the informer is not
synced: the controller then holds replicas (see ``controller/shell.py``).

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

from gpumix.controller.plan import GpuPool
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
from gpumix.kubeio.client import KubeClient
from gpumix.kubeio.informer import EventHook, Informer, InformerSettings, Key, Resource

Obj = dict[str, Any]

DEPLOYMENTS = Resource("Deployment", "apps/v1", "deployments")
NODES = Resource("Node", "v1", "nodes", namespaced=False)
BOUND_PODS = Resource("Pod", "v1", "pods", field_selector="spec.nodeName!=")
HPAS = Resource("HorizontalPodAutoscaler", "autoscaling/v2", "horizontalpodautoscalers")
WATCHED = (DEPLOYMENTS, NODES, BOUND_PODS, HPAS)
"""Cluster-wide even when the controller watches GPUMixes in one namespace: the free-GPU
ledger counts every Deployment's and every bound Pod's GPUs."""
CRD_KINDS = {"keda.sh": "ScaledObject", "autoscaling.aibrix.ai": "PodAutoscaler"}
CRD_NAMES = ("scaledobjects.keda.sh", "podautoscalers.autoscaling.aibrix.ai")


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


def _trim_pod(pod: Obj) -> Obj:
    """What the GPU accounting reads of a Pod (a watch cache of every bound Pod must not
    hold their whole specs)."""
    meta = as_mapping(pod.get("metadata"))
    spec = as_mapping(pod.get("spec"))

    def containers(key: str) -> list[Obj]:
        out = []
        for c in spec.get(key) or []:
            if isinstance(c, dict):
                kept = {k: c[k] for k in ("name", "resources", "restartPolicy") if k in c}
                out.append(kept)
        return out

    trimmed_spec: Obj = {"nodeName": spec.get("nodeName"), "containers": containers("containers")}
    if spec.get("initContainers"):
        trimmed_spec["initContainers"] = containers("initContainers")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "labels": meta.get("labels") or {},
        },
        "spec": trimmed_spec,
        "status": {"phase": as_mapping(pod.get("status")).get("phase")},
    }


def _trim_node(node: Obj) -> Obj:
    meta = dict(as_mapping(node.get("metadata")))
    meta.pop("managedFields", None)
    status = as_mapping(node.get("status"))
    return {
        **node,
        "metadata": meta,
        "status": {k: status[k] for k in ("allocatable", "capacity") if k in status},
    }


class ObjectStore:
    """The informer's store for the controller: objects by kind and (namespace, name)."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[Key, Obj]] = {}

    def convert(self, resource: Resource, obj: Obj) -> object | None:
        if resource.kind == "Pod":
            return _trim_pod(obj)
        if resource.kind == "Node":
            return _trim_node(obj)
        return obj

    def put(self, resource: Resource, key: Key, item: object | None) -> None:
        if isinstance(item, dict):
            self.objects.setdefault(resource.kind, {})[key] = item

    def remove(self, resource: Resource, key: Key) -> None:
        self.objects.get(resource.kind, {}).pop(key, None)

    def of(self, kind: str) -> list[Obj]:
        return list(self.objects.get(kind, {}).values())

    def autoscalers(self) -> list[Obj]:
        return [o for kind in AUTOSCALER_KINDS for o in self.of(kind)]

    def scaled(self, namespace: str, name: str, replicas: int, resource_version: str) -> None:
        """A ``/scale`` write succeeded: record it now (the watch event follows), so the
        next pass does not plan from the replicas it just changed."""
        deployments = self.objects.get("Deployment", {})
        current = deployments.get((namespace, name))
        if current is None:
            return
        updated = dict(current)
        updated["spec"] = {**as_mapping(current.get("spec")), "replicas": replicas}
        meta = dict(as_mapping(current.get("metadata")))
        if resource_version:
            meta["resourceVersion"] = resource_version
        updated["metadata"] = meta
        deployments[(namespace, name)] = updated


def cluster_informer(
    kube: KubeClient,
    store: ObjectStore,
    settings: InformerSettings,
    on_event: EventHook | None = None,
) -> Informer:
    """Deployments, bound Pods, Nodes and every autoscaler kind, watched into ``store``."""
    return Informer(
        kube,
        store,
        WATCHED,
        crd_kinds=CRD_KINDS,
        crd_names=CRD_NAMES,
        strict_crds=True,
        settings=settings,
        on_event=on_event,
    )


def state_of(store: ObjectStore, gpumixes: list[Obj], policy: Policy) -> ClusterState:
    """The cluster as the store holds it, for one pass (no API call)."""
    return build_state(
        gpumixes,
        store.of("Deployment"),
        store.of("Node"),
        store.of("Pod"),
        store.autoscalers(),
        policy,
    )


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
        if "kind" not in d or "apiVersion" not in d:
            d = {"apiVersion": "apps/v1", "kind": "Deployment", **d}
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
