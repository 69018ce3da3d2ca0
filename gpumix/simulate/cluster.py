"""The simulated cluster: node pools, Deployments, pods, a scheduler and a router.

State changes only through the methods below and only at the times passed in:
there is no clock here.  The Kubernetes vocabulary is the project's own
(``gpumix.kube``): Deployments are read with :func:`deployment_view`, selectors
are matched with the real selector algebra, Nodes are written as Node objects so
the same :class:`~gpumix.kube.snapshot.Snapshot` the webhook uses can see them.

Modelled
    * Node pools: ``nodes`` identical nodes with GPUs of one type (or none) and CPUs;
      price per GPU-hour.
    * Pods of a Deployment request the GPUs its template requests (``nvidia.com/gpu``)
      and ``cpus`` CPUs, and are pinned to nodes of their GPU type.  A pod is
      Pending until some node has room (first fit, oldest pending pod first), then
      starts and is Ready ``startup_s`` seconds later (image pull, weights, warm-up).
    * Scale down removes Pending pods first, then starting ones, then the newest
      Ready ones, as a ReplicaSet does.
    * Cost: GPUs bound to pods (starting or Ready) times the pool's price.
    * Router: a model's traffic goes to the Ready pods of its Deployments whose GPU
      type has a throughput profile, split so that the highest utilisation among
      the GPU types is as low as possible (an ideal least-loaded router).  A
      replica of type ``g`` serves ``capacity[g][i, j]`` requests/s of bucket
      ``(i, j)`` within the SLO; a request is served within the SLO when its
      type's utilisation is at most 1, otherwise only ``1 / utilisation`` of the
      traffic is (the excess queues past the SLO).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from ortools.linear_solver import pywraplp

from gpumix.kube.objects import DeploymentView, deployment_view
from gpumix.kube.policy import Policy
from gpumix.kube.selectors import Selector

GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class NodePool:
    """Identical nodes of one GPU type (``gpu_type`` None: CPU-only nodes)."""

    name: str
    gpu_type: str | None
    nodes: int
    gpus_per_node: int
    cpus_per_node: float
    price_per_gpu_hour: float | None = None
    """None until filled from the scenario's prices file."""

    @property
    def gpu_price(self) -> float:
        """Price per GPU-hour (0 when unknown)."""
        return self.price_per_gpu_hour or 0.0

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def cpus(self) -> float:
        return self.nodes * self.cpus_per_node


@dataclass
class Node:
    name: str
    pool: NodePool
    free_gpus: int
    free_cpus: float


@dataclass
class Pod:
    uid: int
    deployment: str
    labels: Mapping[str, str]
    gpu_type: str | None
    gpus: int
    cpus: float
    created_s: float
    node: Node | None = None
    ready_s: float | None = None

    def is_ready(self, now: float) -> bool:
        return self.ready_s is not None and now >= self.ready_s

    @property
    def pending(self) -> bool:
        return self.node is None


@dataclass
class SimDeployment:
    """A Deployment and its pods."""

    view: DeploymentView
    manifest: dict[str, Any]
    cpus: float
    startup_s: float
    replicas: int
    pods: list[Pod] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.view.name

    @property
    def gpu_type(self) -> str | None:
        return self.view.gpu_type.name

    @property
    def type_name(self) -> str:
        """The GPU type's name, or "" (unpinned accelerator or CPU-only)."""
        return self.view.gpu_type.name or ""

    @property
    def selector(self) -> Selector:
        return self.view.selector


def cpu_request(manifest: Mapping[str, Any]) -> float:
    """CPUs one replica requests (sum over containers; ``"500m"`` is 0.5)."""
    spec = manifest.get("spec", {}).get("template", {}).get("spec", {})
    total = 0.0
    for container in spec.get("containers", []) or []:
        resources = container.get("resources", {}) or {}
        qty = (resources.get("requests") or {}).get(
            "cpu", (resources.get("limits") or {}).get("cpu")
        )
        if qty is None:
            continue
        text = str(qty)
        total += float(text[:-1]) / 1000.0 if text.endswith("m") else float(text)
    return total


class Cluster:
    """Node pools, Deployments and pods; changed only by the engine."""

    def __init__(self, pools: Sequence[NodePool], policy: Policy) -> None:
        self.pools = tuple(pools)
        self.policy = policy
        self.nodes: list[Node] = [
            Node(f"{p.name}-{i}", p, p.gpus_per_node, p.cpus_per_node)
            for p in self.pools
            for i in range(p.nodes)
        ]
        self.deployments: dict[str, SimDeployment] = {}
        self._next_uid = 0
        self._pending: list[Pod] = []

    # -- Kubernetes objects ------------------------------------------------------------
    def node_objects(self) -> list[dict[str, Any]]:
        """The nodes as Node objects (for a Snapshot: GPU capacity per type)."""
        out: list[dict[str, Any]] = []
        for node in self.nodes:
            labels = {"gpumix.io/pool": node.pool.name}
            allocatable: dict[str, str] = {"cpu": str(node.pool.cpus_per_node)}
            if node.pool.gpu_type:
                labels[GPU_PRODUCT_LABEL] = node.pool.gpu_type
                allocatable["nvidia.com/gpu"] = str(node.pool.gpus_per_node)
            out.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": node.name, "labels": labels},
                    "status": {"allocatable": allocatable},
                }
            )
        return out

    def add_deployment(self, manifest: dict[str, Any], startup_s: float) -> SimDeployment:
        view = deployment_view(manifest, self.policy)
        replicas = view.replicas if view.replicas is not None else 1
        dep = SimDeployment(view, manifest, cpu_request(manifest), startup_s, replicas)
        self.deployments[view.name] = dep
        return dep

    # -- control -----------------------------------------------------------------------
    def scale(self, name: str, replicas: int) -> None:
        self.deployments[name].replicas = max(int(replicas), 0)

    def reconcile(self, now: float) -> None:
        """ReplicaSet controller and scheduler, one pass."""
        for dep in self.deployments.values():
            live = len(dep.pods)
            if live < dep.replicas:
                for _ in range(dep.replicas - live):
                    pod = Pod(
                        uid=self._next_uid,
                        deployment=dep.name,
                        labels=dict(dep.view.template_labels),
                        gpu_type=dep.gpu_type,
                        gpus=dep.view.gpus_per_replica,
                        cpus=dep.cpus,
                        created_s=now,
                    )
                    self._next_uid += 1
                    dep.pods.append(pod)
                    self._pending.append(pod)
            elif live > dep.replicas:
                self._remove(dep, live - dep.replicas, now)
        self._schedule(now)

    def _remove(self, dep: SimDeployment, count: int, now: float) -> None:
        def rank(pod: Pod) -> tuple[int, float]:
            if pod.pending:
                return (0, -pod.created_s)
            if not pod.is_ready(now):
                return (1, -pod.created_s)
            return (2, -(pod.ready_s or 0.0))

        victims = sorted(dep.pods, key=lambda p: (rank(p), -p.uid))[:count]
        gone = {p.uid for p in victims}
        for pod in victims:
            if pod.node is not None:
                pod.node.free_gpus += pod.gpus
                pod.node.free_cpus += pod.cpus
        dep.pods = [p for p in dep.pods if p.uid not in gone]
        self._pending = [p for p in self._pending if p.uid not in gone]

    def _fits(self, node: Node, pod: Pod) -> bool:
        if pod.gpu_type is not None and node.pool.gpu_type != pod.gpu_type:
            return False
        if pod.gpus > 0 and node.pool.gpu_type is None:
            return False
        return node.free_gpus >= pod.gpus and node.free_cpus + 1e-9 >= pod.cpus

    def _schedule(self, now: float) -> None:
        still: list[Pod] = []
        for pod in self._pending:
            node = next((n for n in self.nodes if self._fits(n, pod)), None)
            if node is None:
                still.append(pod)
                continue
            node.free_gpus -= pod.gpus
            node.free_cpus -= pod.cpus
            pod.node = node
            pod.ready_s = now + self.deployments[pod.deployment].startup_s
        self._pending = still

    # -- queries -----------------------------------------------------------------------
    def matching_pods(self, namespace: str, selector: Selector) -> list[Pod]:
        """Pods in ``namespace`` whose labels the selector matches (any Deployment)."""
        return [
            pod
            for dep in self.deployments.values()
            if dep.view.namespace == namespace
            for pod in dep.pods
            if selector.matches(pod.labels)
        ]

    def pending_pods(self) -> int:
        return len(self._pending)

    def pool_usage(self, pool: NodePool) -> tuple[int, float]:
        """``(free GPUs, free CPUs)`` of a pool."""
        nodes = [n for n in self.nodes if n.pool is pool]
        return sum(n.free_gpus for n in nodes), sum(n.free_cpus for n in nodes)

    def cost_per_hour(self) -> float:
        return sum(
            pod.gpus * pod.node.pool.gpu_price
            for dep in self.deployments.values()
            for pod in dep.pods
            if pod.node is not None
        )


# -- routing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Routing:
    """Outcome of routing one step's traffic."""

    utilisation: Mapping[str, float]
    """Per GPU type: load / capacity of its Ready replicas (may exceed 1)."""
    requests: float
    served: float
    """Requests served within the SLO."""


class Router:
    """Least-loaded routing of a bucket histogram over GPU types (a small LP).

    ``capacity[g]`` is the per-replica rate (req/s) of GPU type ``g`` per bucket
    within the SLO (0 where it cannot meet it).  The LP is built once and only
    its bounds and coefficients change between steps.
    """

    def __init__(self, capacity: Mapping[str, FloatArray]) -> None:
        self.types = tuple(sorted(capacity))
        self.capacity = {g: np.asarray(capacity[g], dtype=float).ravel() for g in self.types}
        n = len(next(iter(self.capacity.values()))) if self.types else 0
        self.n_buckets = n
        self._solver: pywraplp.Solver | None = None
        self._demand: list[Any] = []
        self._cap_rows: dict[str, Any] = {}
        self._x: dict[tuple[str, int], Any] = {}
        self._u: Any = None

    def _build(self) -> pywraplp.Solver:
        solver = pywraplp.Solver.CreateSolver("GLOP")
        inf = solver.infinity()
        self._u = solver.NumVar(0.0, inf, "u")
        self._demand = [solver.Constraint(0.0, 0.0) for _ in range(self.n_buckets)]
        for g in self.types:
            row = solver.Constraint(-inf, 0.0)
            for b in range(self.n_buckets):
                rate = self.capacity[g][b]
                if rate > 0:
                    x = solver.NumVar(0.0, inf, "")
                    self._x[(g, b)] = x
                    self._demand[b].SetCoefficient(x, 1.0)
                    row.SetCoefficient(x, 1.0 / rate)
            self._cap_rows[g] = row
        solver.Minimize(self._u)
        self._solver = solver
        return solver

    def route(self, rates: FloatArray, replicas: Mapping[str, int], step_s: float) -> Routing:
        """Route ``rates`` (req/s per bucket, flattened order) over Ready ``replicas``."""
        lam = np.asarray(rates, dtype=float).ravel()
        requests = float(lam.sum() * step_s)
        active = [g for g in self.types if replicas.get(g, 0) > 0]
        zero = dict.fromkeys(self.types, 0.0)
        if requests <= 0:
            return Routing(zero, 0.0, 0.0)
        can = np.zeros(self.n_buckets, dtype=bool)
        for g in active:
            can |= self.capacity[g] > 0
        routable = np.where(can, lam, 0.0)
        if not active or routable.sum() <= 0:
            return Routing(zero, requests, 0.0)
        util: dict[str, float]
        if len(active) == 1:
            g = active[0]
            with np.errstate(divide="ignore", invalid="ignore"):
                work = np.where(self.capacity[g] > 0, routable / self.capacity[g], 0.0)
            peak = float(work.sum()) / replicas[g]
            util = {**zero, g: peak}
        else:
            solver = self._solver or self._build()
            for b in range(self.n_buckets):
                self._demand[b].SetBounds(float(routable[b]), float(routable[b]))
            for g in self.types:
                r = float(replicas.get(g, 0))
                self._cap_rows[g].SetCoefficient(self._u, -r)
                for b in range(self.n_buckets):
                    x = self._x.get((g, b))
                    if x is not None:
                        x.SetBounds(0.0, solver.infinity() if r > 0 else 0.0)
            status = solver.Solve()
            if status != pywraplp.Solver.OPTIMAL:
                return Routing(zero, requests, 0.0)
            peak = float(self._u.solution_value())
            util = dict(zero)
            for g in active:
                work = sum(
                    x.solution_value() / self.capacity[g][b]
                    for (h, b), x in self._x.items()
                    if h == g
                )
                util[g] = work / replicas[g]
        served = float(routable.sum() * step_s) * (1.0 if peak <= 1.0 else 1.0 / peak)
        return Routing(util, requests, min(served, requests))
