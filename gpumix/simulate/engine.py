"""The discrete-time simulation loop (pure: the load, the planner and the seed are inputs).

Each step (``stepSeconds``, one minute by default), in this order:

1. workloads driven from outside (``workloads.NAME.replicasAt``) get their replica count;
2. the gpumix controller, every ``controller.intervalMinutes``, observes the mean load
   histogram of the last ``controller.windowMinutes`` (per bucket, the highest such
   mean seen at its decisions of the last ``controller.scaleDownStabilizationMinutes``,
   less the buckets none of its GPU types can serve within the SLO), asks the
   optimizer for the cheapest mix that serves it (availability = free GPUs of each
   type plus the GPUs its own pods hold; ceilings = the Deployment's autoscaler
   ceiling when it has one), and scales the per-GPU-type Deployments: up at once,
   down only when the plan scales nothing up and none of the model's pods is starting
   (make before break); when the plan fails it keeps the current replicas (fail static);
3. each autoscaler runs its HPA-like rule on the load measured in the previous step,
   spread over the pods Ready now (see :class:`SimAutoscaler`);
4. the ReplicaSet controller and the scheduler create, delete and place pods;
5. the router sends this step's requests to the Ready pods (see
   :class:`gpumix.simulate.cluster.Router`) and the step is recorded.

Before the first step the scenario's manifests are applied in order (their first
pods are Ready when the run starts), optionally fixed first as ``gpumix check --fix``
fixes them and optionally through gpumix's admission review (the webhook's pure
core) in enforce mode.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import jsonpatch
import numpy as np
import numpy.typing as npt

from gpumix.admission import AdmissionRequest, review
from gpumix.kube.objects import AutoscalerView, DeploymentView, view_of
from gpumix.kube.policy import Policy
from gpumix.kube.snapshot import Snapshot
from gpumix.rules import missing_max_replicas, selector_overlap
from gpumix.rules.engine import evaluate_snapshot
from gpumix.rules.fixes import isolate_deployment, set_ceiling
from gpumix.simulate.cluster import Cluster, Router, SimDeployment
from gpumix.simulate.loadgen import Load, generate
from gpumix.simulate.scenario import ControllerSettings, Scenario, Variant

FloatArray = npt.NDArray[np.float64]

DEFAULT_TARGET_UTILISATION = 0.7
HPA_TOLERANCE = 0.1
HPA_DOWNSCALE_WINDOW_S = 300.0
UNBOUNDED_SAFETY_CAP = 10_000
"""Replicas an autoscaler without a ceiling may ask for in the simulation (never reached)."""


# -- inputs from the optimizer side ---------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Profiles:
    """What the simulation needs from throughput profiles."""

    input_upper: tuple[float, ...]
    output_upper: tuple[float, ...]
    capacity: Mapping[str, FloatArray]
    """Per GPU type: requests/s one replica serves within the SLO, shape (inputs, outputs)."""


@dataclass(frozen=True)
class PlanRequest:
    """One controller decision's inputs."""

    rates: FloatArray
    """Observed mean rate (req/s) per bucket, shape (inputs, outputs)."""
    types: tuple[str, ...]
    price_per_gpu_hour: Mapping[str, float]
    gpus_per_replica: Mapping[str, int]
    available_gpus: Mapping[str, int]
    current: Mapping[str, int]
    min_replicas: Mapping[str, int]
    max_replicas: Mapping[str, int | None]
    settings: ControllerSettings


@dataclass(frozen=True)
class PlanOutcome:
    status: str
    replicas: Mapping[str, int] | None
    cost_per_hour: float
    message: str = ""


class Planner(Protocol):
    def __call__(self, request: PlanRequest, *, seed: int) -> PlanOutcome: ...


# -- autoscaler ------------------------------------------------------------------------------


@dataclass
class SimAutoscaler:
    """An HPA-like autoscaler.

    It lists the pods its target's selector matches (any Deployment's pods: with
    overlapping selectors it counts the other Deployments' pods too, as HPA and
    AIBrix's PodAutoscaler do), averages their utilisation (pods not yet Ready count
    as idle, as the HPA does when scaling up) and asks for
    ``desired = ceil(matched * average / target)``; within a 10 % tolerance it keeps
    the current count, it scales down only to the highest recommendation of the
    last five minutes, and it clamps to ``[minReplicas, maxReplicas]`` (no ceiling:
    no upper bound).
    """

    view: AutoscalerView
    target: float
    history: deque[tuple[float, int]] = field(default_factory=deque)

    @property
    def ceiling(self) -> int | None:
        return self.view.ceiling

    def desired(self, cluster: Cluster, utilisation: Mapping[str, float], now: float) -> int | None:
        """``utilisation``: per GPU type, the utilisation of each of its Ready pods."""
        if self.view.target is None or self.view.target.name not in cluster.deployments:
            return None
        dep = cluster.deployments[self.view.target.name]
        pods = cluster.matching_pods(dep.view.namespace, dep.selector)
        current = dep.replicas
        if not pods:
            return None
        usage = sum(utilisation.get(pod.gpu_type or "", 0.0) for pod in pods if pod.is_ready(now))
        ratio = usage / (len(pods) * self.target)
        want = current if abs(ratio - 1.0) <= HPA_TOLERANCE else math.ceil(len(pods) * ratio)
        self.history.append((now, want))
        while self.history and self.history[0][0] < now - HPA_DOWNSCALE_WINDOW_S:
            self.history.popleft()
        if want < current:
            want = min(current, max(w for _, w in self.history))
        floor = self.view.floor if self.view.floor is not None else 1
        ceiling = self.ceiling if self.ceiling is not None else UNBOUNDED_SAFETY_CAP
        return max(floor, min(want, ceiling))


def target_utilisation(obj: Mapping[str, Any]) -> float:
    """The target, in percent of serving utilisation, as a fraction: a metric's
    ``averageUtilization`` / ``averageValue`` (HPA v2) or ``targetValue`` (AIBrix)."""
    spec = obj.get("spec") or {}
    for metric in spec.get("metrics") or []:
        for section in ("resource", "pods", "external", "object"):
            target = ((metric or {}).get(section) or {}).get("target") or {}
            for key in ("averageUtilization", "averageValue"):
                percent = _percent(target.get(key))
                if percent is not None:
                    return percent
    percent = _percent(spec.get("targetValue"))
    return percent if percent is not None else DEFAULT_TARGET_UTILISATION


def _percent(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number / 100.0 if 0 < number < math.inf else None


# -- applying manifests --------------------------------------------------------------------


@dataclass(frozen=True)
class AdmissionEvent:
    kind: str
    name: str
    verdict: str
    message: str


def fix_manifests(
    objects: Sequence[dict[str, Any]], nodes: Sequence[dict[str, Any]], policy: Policy
) -> list[AdmissionEvent]:
    """Apply, in place, the fixes ``gpumix check --fix`` applies (labels and ceilings)."""
    snapshot = Snapshot.from_objects([*nodes, *objects], policy)
    findings = evaluate_snapshot(snapshot, policy)
    wanted = {(f.rule, f.subject) for f in findings if f.fixable}
    events: list[AdmissionEvent] = []
    for obj in objects:
        view = view_of(obj, policy)
        if isinstance(view, DeploymentView) and (selector_overlap.RULE, view.ref) in wanted:
            isolate_deployment(obj, view.gpu_type)
            events.append(AdmissionEvent("Deployment", view.name, "fixed", "selector isolated"))
        elif isinstance(view, AutoscalerView) and (missing_max_replicas.RULE, view.ref) in wanted:
            value = missing_max_replicas.default_ceiling(view, snapshot, policy)
            set_ceiling(obj, view.ceiling_field, value)
            events.append(
                AdmissionEvent(view.kind, view.name, "fixed", f"{view.ceiling_field}={value}")
            )
    return events


def _request(obj: dict[str, Any], uid: int) -> AdmissionRequest:
    api_version = str(obj.get("apiVersion", ""))
    group, _, version = api_version.rpartition("/")
    meta = obj.get("metadata") or {}
    return AdmissionRequest(
        uid=f"sim-{uid}",
        kind={"group": group, "version": version, "kind": str(obj.get("kind", ""))},
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace") or "default"),
        operation="CREATE",
        object=obj,
        oldObject=None,
    )


def admit(
    objects: Sequence[dict[str, Any]],
    nodes: Sequence[dict[str, Any]],
    policy: Policy,
    *,
    webhook: bool,
) -> tuple[list[dict[str, Any]], list[AdmissionEvent]]:
    """Apply the objects in order; with ``webhook``, each passes gpumix's mutate and
    validate review first (patched objects are created patched, denied ones not at all)."""
    snapshot = Snapshot.from_objects(nodes, policy)
    admitted: list[dict[str, Any]] = []
    events: list[AdmissionEvent] = []
    for i, original in enumerate(objects):
        obj = copy.deepcopy(original)
        kind = str(obj.get("kind", ""))
        name = str((obj.get("metadata") or {}).get("name", ""))
        if webhook:
            verdict = review(_request(obj, i), snapshot, policy, "mutate")
            if verdict.shape == "patched":
                obj = jsonpatch.apply_patch(obj, list(verdict.patch))
                events.append(AdmissionEvent(kind, name, "patched", "; ".join(verdict.warnings)))
            checked = review(_request(obj, i), snapshot, policy, "validate")
            if not checked.allowed:
                events.append(AdmissionEvent(kind, name, "denied", checked.message))
                continue
        view = view_of(obj, policy)
        if view is not None:
            snapshot.put(view)
        admitted.append(obj)
    return admitted, events


# -- the run ----------------------------------------------------------------------------------


@dataclass(eq=False)
class Trace:
    """Everything recorded, one entry per step (arrays) or per event."""

    variant: str
    step_s: float
    minutes: FloatArray
    requests: FloatArray
    served: FloatArray
    cost_per_hour: FloatArray
    replicas: dict[str, FloatArray]
    """Per Deployment: spec.replicas."""
    ready: dict[str, FloatArray]
    pending: dict[str, FloatArray]
    utilisation: dict[str, FloatArray]
    """Per GPU type: load / Ready capacity."""
    free_gpus: dict[str, FloatArray]
    """Per node pool with GPUs."""
    free_cpus: dict[str, FloatArray]
    """Per node pool."""
    ceilings: dict[str, int | None]
    """Per autoscaler (by target Deployment): the ceiling it ran with."""
    deployment_types: dict[str, str]
    admission: list[AdmissionEvent]
    plans: list[tuple[float, str, float, str]] = field(default_factory=list)
    """Controller decisions: (minute, status, plan cost per hour, message)."""


def generate_load(
    scenario: Scenario, profiles: Profiles | None, *, seed: int, hours: float
) -> Load:
    """The scenario's load; the same for every variant with the same seed."""
    input_upper = profiles.input_upper if profiles else (float(scenario.load.input_tokens.maximum),)
    output_upper = (
        profiles.output_upper if profiles else (float(scenario.load.output_tokens.maximum),)
    )
    steps = max(round(hours * 3600.0 / scenario.step_s), 1)
    return generate(
        scenario.load,
        input_upper,
        output_upper,
        rng=np.random.default_rng(seed),
        start_s=scenario.start_hour * 3600.0,
        steps=steps,
        step_s=scenario.step_s,
    )


def _replicas_at(scenario: Scenario, name: str, minute: float, step_min: float) -> int | None:
    workload = scenario.workloads.get(name)
    if workload is None:
        return None
    for at, replicas in workload.replicas_at:
        if minute <= at < minute + step_min:
            return replicas
    return None


def run_variant(
    scenario: Scenario,
    variant: Variant,
    load: Load,
    profiles: Profiles | None,
    planner: Planner | None,
    *,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> Trace:
    """Simulate one variant over ``load`` (pure: no clock, no I/O)."""
    policy = scenario.policy
    cluster = Cluster(scenario.pools, policy)
    nodes = cluster.node_objects()
    objects = [copy.deepcopy(dict(m)) for m in scenario.manifests]
    events = fix_manifests(objects, nodes, policy) if variant.fix_manifests else []
    admitted, more = admit(objects, nodes, policy, webhook=variant.admission == "webhook")
    events += more

    scalers: list[SimAutoscaler] = []
    for obj in admitted:
        view = view_of(obj, policy)
        if isinstance(view, DeploymentView):
            workload = scenario.workloads.get(view.name)
            startup = (workload.startup_minutes if workload else 3.0) * 60.0
            cluster.add_deployment(obj, startup)
        elif isinstance(view, AutoscalerView):
            scalers.append(SimAutoscaler(view, target_utilisation(obj)))

    capacity = profiles.capacity if profiles else {}
    router = Router(capacity) if capacity else None
    model_deps = [d for d in cluster.deployments.values() if d.view.model == scenario.model]
    routed_types = sorted({d.type_name for d in model_deps if d.type_name in capacity})

    steps = load.steps
    step_min = scenario.step_s / 60.0
    minutes = np.arange(steps, dtype=float) * step_min
    names = list(cluster.deployments)
    trace = Trace(
        variant=variant.name,
        step_s=scenario.step_s,
        minutes=minutes,
        requests=np.zeros(steps),
        served=np.zeros(steps),
        cost_per_hour=np.zeros(steps),
        replicas={n: np.zeros(steps) for n in names},
        ready={n: np.zeros(steps) for n in names},
        pending={n: np.zeros(steps) for n in names},
        utilisation={g: np.zeros(steps) for g in routed_types},
        free_gpus={p.name: np.zeros(steps) for p in scenario.pools if p.gpus > 0},
        free_cpus={p.name: np.zeros(steps) for p in scenario.pools},
        ceilings={
            (s.view.target.name if s.view.target else s.view.name): s.ceiling for s in scalers
        },
        deployment_types={n: d.gpu_type or "cpu" for n, d in cluster.deployments.items()},
        admission=events,
    )
    # the manifests were applied before the run: their first pods are already Ready
    cluster.reconcile(-max((d.startup_s for d in cluster.deployments.values()), default=0.0))
    controller = scenario.controller
    interval = round(controller.interval_minutes / step_min) if controller else 0
    utilisation: dict[str, float] = dict.fromkeys(routed_types, 0.0)
    work: dict[str, float] = dict.fromkeys(routed_types, 0.0)

    for k in range(steps):
        now = float(minutes[k] * 60.0)
        for name in names:
            replicas = _replicas_at(scenario, name, minutes[k], step_min)
            if replicas is not None:
                cluster.scale(name, replicas)
        if controller is not None and planner is not None and k % max(interval, 1) == 0:
            _control(
                scenario,
                variant,
                controller,
                cluster,
                model_deps,
                scalers,
                load,
                k,
                planner,
                seed,
                trace,
                capacity,
            )
        # Metrics lag one step: the busy replica-equivalents measured last step, spread
        # over the pods Ready now (a pod that just became Ready dilutes, not repeats, it).
        ready_now = _ready_by_type(model_deps, capacity, now)
        per_pod = {g: work[g] / ready_now[g] for g in work if ready_now.get(g, 0) > 0}
        for scaler in scalers:
            want = scaler.desired(cluster, per_pod, now)
            if want is not None and scaler.view.target is not None:
                cluster.scale(scaler.view.target.name, want)
        cluster.reconcile(now)

        ready_by_type = _ready_by_type(model_deps, capacity, now)
        rates = load.counts[k].astype(float) / scenario.step_s
        if router is not None:
            routing = router.route(rates, ready_by_type, scenario.step_s)
            utilisation = {g: routing.utilisation.get(g, 0.0) for g in routed_types}
            work = {g: utilisation[g] * ready_by_type.get(g, 0) for g in routed_types}
            trace.requests[k] = routing.requests
            trace.served[k] = routing.served
        else:
            trace.requests[k] = float(load.counts[k].sum())
        for g in routed_types:
            trace.utilisation[g][k] = utilisation[g]
        for name, dep in cluster.deployments.items():
            trace.replicas[name][k] = dep.replicas
            trace.ready[name][k] = sum(1 for p in dep.pods if p.is_ready(now))
            trace.pending[name][k] = sum(1 for p in dep.pods if p.pending)
        for pool in scenario.pools:
            gpus, cpus = cluster.pool_usage(pool)
            if pool.name in trace.free_gpus:
                trace.free_gpus[pool.name][k] = gpus
            trace.free_cpus[pool.name][k] = cpus
        trace.cost_per_hour[k] = cluster.cost_per_hour()
        if progress is not None:
            progress(k + 1, steps)
    return trace


def _ready_by_type(
    deps: Sequence[SimDeployment], capacity: Mapping[str, FloatArray], now: float
) -> dict[str, int]:
    """Ready pods per profiled GPU type, over the model's Deployments."""
    out: dict[str, int] = {}
    for dep in deps:
        if dep.type_name in capacity:
            n = sum(1 for p in dep.pods if p.is_ready(now))
            out[dep.type_name] = out.get(dep.type_name, 0) + n
    return out


def _control(
    scenario: Scenario,
    variant: Variant,
    settings: ControllerSettings,
    cluster: Cluster,
    model_deps: Sequence[SimDeployment],
    scalers: Sequence[SimAutoscaler],
    load: Load,
    k: int,
    planner: Planner,
    seed: int,
    trace: Trace,
    capacity: Mapping[str, FloatArray],
) -> None:
    allowed = variant.controller_types or settings.types
    by_type: dict[str, SimDeployment] = {}
    for dep in model_deps:
        if dep.type_name in capacity and dep.type_name not in by_type:
            by_type[dep.type_name] = dep
    types = tuple(sorted(g for g in by_type if not allowed or g in allowed))
    step_min = scenario.step_s / 60.0
    window = max(round(settings.window_minutes / step_min), 1)
    minute = float(trace.minutes[k])
    if k == 0:
        # no history before the first step: the first plan sees the first step's load
        rates = load.rate(0, 1)
    else:
        # the highest load (per bucket) observed at the decisions of the stabilization
        # period: the plan shrinks only once the load has stayed lower that long
        every = max(round(settings.interval_minutes / step_min), 1)
        hold = round(settings.scale_down_stabilization_minutes / step_min)
        ends = [k - j for j in range(0, hold + 1, every) if k - j > 0]
        rates = np.max([load.rate(end - window, end) for end in ends], axis=0)
    # Load that none of the allowed types can serve within the SLO is left out of the
    # plan (it cannot be served whatever the plan) and said so in the plan's record.
    servable = np.zeros(np.shape(rates), dtype=bool)
    for g in types:
        servable |= np.asarray(capacity[g]).reshape(np.shape(rates)) > 0
    dropped = float(np.where(servable, 0.0, rates).sum())
    rates = np.where(servable, rates, 0.0)
    ceilings = {
        s.view.target.name: s.ceiling for s in scalers if s.view.target and s.ceiling is not None
    }
    price: dict[str, float] = {}
    available: dict[str, int] = {}
    for g in types:
        pools = [p for p in cluster.pools if p.gpu_type == g]
        price[g] = min((p.gpu_price for p in pools), default=0.0)
        free = sum(cluster.pool_usage(p)[0] for p in pools)
        own = sum(p.gpus for p in by_type[g].pods if p.node is not None)
        available[g] = free + own
    max_replicas: dict[str, int | None] = {}
    for g in types:
        limits = [
            v for v in (settings.max_replicas, ceilings.get(by_type[g].name)) if v is not None
        ]
        max_replicas[g] = min(limits) if limits else None
    request = PlanRequest(
        rates=rates,
        types=types,
        price_per_gpu_hour=price,
        gpus_per_replica={g: max(by_type[g].view.gpus_per_replica, 1) for g in types},
        available_gpus=available,
        current={g: by_type[g].replicas for g in types},
        min_replicas=dict.fromkeys(types, settings.min_replicas),
        max_replicas=max_replicas,
        settings=settings,
    )
    outcome = planner(request, seed=seed) if types else PlanOutcome("NO_TYPES", None, 0.0)
    message = outcome.message
    if dropped > 0:
        message = f"{dropped:.3g} req/s no allowed GPU type can serve left out; " + message
    trace.plans.append((minute, outcome.status, outcome.cost_per_hour, message.strip("; ")))
    if outcome.replicas is None:
        return  # fail static: keep the current replicas
    # Make before break: scale-ups apply at once; scale-downs wait while the plan also
    # scales up or any pod of the model is starting (scheduled, not Ready), so capacity
    # is not removed while its replacement warms up.  Pending pods (no room) do not hold
    # them back.
    now = minute * 60.0
    starting = any(
        p.node is not None and not p.is_ready(now) for dep in by_type.values() for p in dep.pods
    )
    planned = {g: int(outcome.replicas.get(g, 0)) if g in types else 0 for g in by_type}
    growing = any(planned[g] > dep.replicas for g, dep in by_type.items())
    for g, dep in by_type.items():
        if planned[g] < dep.replicas and (starting or growing):
            continue
        cluster.scale(dep.name, planned[g])


# -- summaries ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VariantSummary:
    name: str
    requests: int
    served: int
    slo_attainment: float
    cost: float
    peak_replicas: Mapping[str, int]
    peak_pending: int
    ceilings: Mapping[str, int | None]
    min_free_gpus: Mapping[str, int]
    minutes_without_free_gpus: Mapping[str, float]
    min_free_cpus: Mapping[str, float]
    replica_minutes: Mapping[str, float]
    """Per Deployment: Ready replicas integrated over time."""
    peak_pending_by_deployment: Mapping[str, int]
    plans: Mapping[str, int]
    admission: tuple[AdmissionEvent, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "requests": self.requests,
            "served_within_slo": self.served,
            "slo_attainment": round(self.slo_attainment, 6),
            "cost": round(self.cost, 4),
            "peak_replicas": dict(self.peak_replicas),
            "peak_pending_pods": self.peak_pending,
            "ceilings": dict(self.ceilings),
            "min_free_gpus": dict(self.min_free_gpus),
            "minutes_without_free_gpus": dict(self.minutes_without_free_gpus),
            "min_free_cpus": {k: round(v, 3) for k, v in self.min_free_cpus.items()},
            "replica_minutes": {k: round(v, 3) for k, v in self.replica_minutes.items()},
            "peak_pending_by_deployment": dict(self.peak_pending_by_deployment),
            "plan_statuses": dict(self.plans),
            "admission": [
                {"kind": e.kind, "name": e.name, "verdict": e.verdict, "message": e.message}
                for e in self.admission
            ],
        }


def summarise(trace: Trace) -> VariantSummary:
    step_min = trace.step_s / 60.0
    requests = float(trace.requests.sum())
    served = float(trace.served.sum())
    pending_total = sum(trace.pending.values(), np.zeros_like(trace.minutes))
    statuses: dict[str, int] = {}
    for _, status, _, _ in trace.plans:
        statuses[status] = statuses.get(status, 0) + 1
    return VariantSummary(
        name=trace.variant,
        requests=round(requests),
        served=round(served),
        slo_attainment=served / requests if requests > 0 else 1.0,
        cost=float(trace.cost_per_hour.sum() * trace.step_s / 3600.0),
        peak_replicas={n: int(v.max(initial=0)) for n, v in trace.replicas.items()},
        peak_pending=int(pending_total.max(initial=0)),
        ceilings=dict(trace.ceilings),
        min_free_gpus={n: int(v.min(initial=1 << 30)) for n, v in trace.free_gpus.items()},
        minutes_without_free_gpus={
            n: float((v <= 0).sum() * step_min) for n, v in trace.free_gpus.items()
        },
        min_free_cpus={n: float(v.min(initial=math.inf)) for n, v in trace.free_cpus.items()},
        replica_minutes={n: float(v.sum() * step_min) for n, v in trace.ready.items()},
        peak_pending_by_deployment={n: int(v.max(initial=0)) for n, v in trace.pending.items()},
        plans=statuses,
        admission=tuple(trace.admission),
    )
