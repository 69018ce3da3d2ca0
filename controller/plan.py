"""The controller's decision for one GPUMix: ``plan(snapshot, load, policy, now) -> Actions``.

Pure: no I/O and no clock (``now`` is passed in, seconds since the epoch).
The optimizer is reached through ``policy.solver``, a callable that the shell
wires to :func:`gpumix.optimizer.solve` (see ``controller/optimize.py``), so this
module stays independent of the solver library and tests can pass a fake.

Safety rules, in the order they are applied (docs/controller.md explains them):

1. The spec, the members and the profiles must be valid; otherwise
   ``Ready=False`` names the problem and nothing is scaled.
2. Missing, stale or partial load: fail static.  Replicas are kept,
   ``LoadAvailable=False`` says why, the last recommendation (or the current
   replicas) is published.  Nothing is ever lowered because data is missing.
3. Every recommendation is clamped to the member's ceiling: the per-type
   ``maxReplicas``, every autoscaler ceiling on the member, and the free GPUs
   of its type plus what the member itself already holds.
4. A member that another autoscaler targets is never scaled; its
   recommendation is published only.
5. Scale-up happens at once; scale-down waits for the stabilization window
   and then goes to the highest recommendation seen during it.  Changes
   smaller than ``minChangeReplicas`` are skipped, unless the member is below
   its minimum or above its ceiling.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, TypedDict

from gpumix.controller.spec import (
    KIND,
    GPUMixSpec,
    LoadBucket,
    PrometheusLoad,
    Slo,
    SpecError,
    StaticLoad,
)
from gpumix.kube.objects import AutoscalerView, DeploymentView, ObjectRef
from gpumix.kube.policy import Policy
from gpumix.kube.selectors import overlaps

# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class GpuPool:
    """GPUs of one type: allocatable on schedulable Nodes, and what is not committed."""

    capacity: int
    free: int


@dataclass(frozen=True, slots=True)
class Member:
    """A member Deployment of a GPUMix, with what the plan needs about it."""

    deployment: DeploymentView
    used_gpus: int = 0
    """GPUs the member holds now (counted as not free in its pool)."""
    autoscalers: tuple[AutoscalerView, ...] = ()
    """Autoscalers that target this Deployment."""
    follows_plan: bool = False
    """Its autoscalers take their replicas from gpumix's recommendation (so plan it freely)."""
    replicas_manager: str | None = None
    """Field manager that last set ``spec.replicas``, when it is not gpumix."""

    @property
    def name(self) -> str:
        return self.deployment.name

    @property
    def replicas(self) -> int:
        return self.deployment.replicas if self.deployment.replicas is not None else 1


@dataclass(frozen=True, slots=True)
class ProfileSet:
    """Profiles resolved by the shell: the GPU types they cover and an opaque payload."""

    gpu_types: frozenset[str]
    payload: object = None


@dataclass(frozen=True, slots=True)
class ProfilesUnavailable:
    reason: str


@dataclass(frozen=True, slots=True)
class MixSnapshot:
    """One GPUMix and the part of the cluster it looks at."""

    namespace: str
    name: str
    generation: int
    spec: GPUMixSpec | SpecError
    members: tuple[Member, ...] = ()
    pools: Mapping[str, GpuPool] = field(default_factory=dict)
    profiles: ProfileSet | ProfilesUnavailable = ProfilesUnavailable("not resolved")
    previous_status: Mapping[str, object] = field(default_factory=dict)
    """The ``status`` of the GPUMix as last written: conditions and per-member memory."""

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(KIND, self.namespace, self.name)


LoadProblem = Literal["missing", "stale", "partial"]


@dataclass(frozen=True, slots=True)
class LoadObservation:
    buckets: tuple[LoadBucket, ...]
    observed_at: float
    """When the freshest sample behind the rates was taken (seconds since the epoch)."""
    source: str
    note: str = ""


@dataclass(frozen=True, slots=True)
class LoadUnavailable:
    problem: LoadProblem
    reason: str
    observed_at: float | None = None


Load = LoadObservation | LoadUnavailable


@dataclass(frozen=True, slots=True)
class TypeOption:
    gpu_type: str
    price_per_hour: float
    gpus_per_replica: int
    min_replicas: int
    max_replicas: int
    current_replicas: int


@dataclass(frozen=True, slots=True)
class MixProblem:
    model: str
    options: tuple[TypeOption, ...]
    load: tuple[LoadBucket, ...]
    slo: Slo
    headroom: float
    churn_weight: float
    profiles: object
    time_limit_s: float


SolverStatus = Literal["OPTIMAL", "FEASIBLE", "INFEASIBLE", "INVALID", "UNKNOWN"]


@dataclass(frozen=True, slots=True)
class MixSolution:
    status: SolverStatus
    replicas: Mapping[str, int] = field(default_factory=dict)
    cost_per_hour: float | None = None
    best_single_type_cost_per_hour: float | None = None
    best_single_type: str | None = None
    solve_seconds: float = 0.0
    message: str = ""

    @property
    def usable(self) -> bool:
        return self.status in ("OPTIMAL", "FEASIBLE")


Solver = Callable[[MixProblem], MixSolution]


@dataclass(frozen=True)
class PlanPolicy:
    """Settings of the plan: the rules' policy (label keys) and the solver to call."""

    solver: Solver
    kube: Policy = field(default_factory=Policy)


# --------------------------------------------------------------------------- outputs


class Condition(TypedDict):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str
    lastTransitionTime: str
    observedGeneration: int


class MemberStatus(TypedDict, total=False):
    deployment: str
    gpuType: str
    gpusPerReplica: int
    currentReplicas: int
    recommendedReplicas: int
    ceiling: int
    ceilingReason: str
    autoscaledBy: str
    decision: str
    lastScaleTime: str
    scaleDownPendingSince: str
    scaleDownFloor: int


class LoadStatus(TypedDict, total=False):
    source: str
    requestsPerSecond: float
    buckets: int
    observedTime: str
    reason: str


class GPUMixStatus(TypedDict, total=False):
    observedGeneration: int
    mode: str
    plan: list[MemberStatus]
    costPerHour: float
    bestSingleTypeCostPerHour: float
    bestSingleType: str
    solverStatus: str
    solveSeconds: float
    solverMessage: str
    load: LoadStatus
    planBasis: dict[str, object]
    lastPlanTime: str
    conditions: list[Condition]


EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True, slots=True)
class EventAction:
    regarding: ObjectRef
    type: EventType
    reason: str
    message: str
    scaled: str | None = None
    """The member Deployment whose scale this Event reports (ScaledUp, ScaledDown)."""


Direction = Literal["up", "down"]


@dataclass(frozen=True, slots=True)
class ScaleAction:
    namespace: str
    deployment: str
    gpu_type: str
    from_replicas: int
    to_replicas: int
    gpus_per_replica: int
    reason: str

    @property
    def direction(self) -> Direction:
        return "up" if self.to_replicas > self.from_replicas else "down"


@dataclass(frozen=True, slots=True)
class Recommendation:
    namespace: str
    deployment: str
    gpu_type: str
    model: str
    replicas: int


@dataclass(frozen=True)
class Actions:
    scales: tuple[ScaleAction, ...]
    events: tuple[EventAction, ...]
    status: GPUMixStatus
    recommendations: tuple[Recommendation, ...]
    load_available: bool
    cost_per_hour: float | None
    solve_seconds: float | None
    requeue_after: float
    """Seconds until this GPUMix should be looked at again (interval or pending scale-down)."""


# --------------------------------------------------------------------------- time


def format_time(t: float) -> str:
    """RFC 3339 in UTC, second precision, as Kubernetes writes ``metav1.Time``."""
    return dt.datetime.fromtimestamp(math.floor(t), tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


# --------------------------------------------------------------------------- memory


@dataclass(frozen=True, slots=True)
class _Memory:
    recommended: int | None = None
    last_scale_time: float | None = None
    pending_since: float | None = None
    pending_floor: int | None = None
    current: int | None = None
    autoscaled: bool = False


def _memory(status: Mapping[str, object]) -> dict[str, _Memory]:
    out: dict[str, _Memory] = {}
    entries = status.get("plan")
    if not isinstance(entries, list):
        return out
    for entry in entries:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("deployment"), str):
            continue
        rec = entry.get("recommendedReplicas")
        floor = entry.get("scaleDownFloor")
        current = entry.get("currentReplicas")
        out[str(entry["deployment"])] = _Memory(
            recommended=rec if isinstance(rec, int) and not isinstance(rec, bool) else None,
            last_scale_time=parse_time(entry.get("lastScaleTime")),
            pending_since=parse_time(entry.get("scaleDownPendingSince")),
            pending_floor=floor if isinstance(floor, int) and not isinstance(floor, bool) else None,
            current=current if isinstance(current, int) and not isinstance(current, bool) else None,
            autoscaled=bool(entry.get("autoscaledBy")),
        )
    return out


def _previous_conditions(status: Mapping[str, object]) -> dict[str, Mapping[str, object]]:
    raw = status.get("conditions")
    out: dict[str, Mapping[str, object]] = {}
    if isinstance(raw, list):
        for c in raw:
            if isinstance(c, Mapping) and isinstance(c.get("type"), str):
                out[str(c["type"])] = c
    return out


# --------------------------------------------------------------------------- plan


@dataclass
class _Builder:
    snap: MixSnapshot
    now: float
    previous: dict[str, Mapping[str, object]]
    events: list[EventAction] = field(default_factory=list)
    conditions: dict[str, Condition] = field(default_factory=dict)

    def condition(
        self, ctype: str, status: Literal["True", "False", "Unknown"], reason: str, message: str
    ) -> None:
        old = self.previous.get(ctype, {})
        same = old.get("status") == status
        since = old.get("lastTransitionTime") if same else None
        self.conditions[ctype] = {
            "type": ctype,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": since if isinstance(since, str) else format_time(self.now),
            "observedGeneration": self.snap.generation,
        }

    def changed(self, ctype: str) -> bool:
        """Did this condition's status, reason or message change since the last write?"""
        old = self.previous.get(ctype, {})
        new = self.conditions[ctype]
        return (old.get("status"), old.get("reason"), old.get("message")) != (
            new["status"],
            new["reason"],
            new["message"],
        )

    def transitioned(self, ctype: str) -> bool:
        """Did this condition's status or reason change (Events fire only on these)?"""
        old = self.previous.get(ctype, {})
        new = self.conditions[ctype]
        return (old.get("status"), old.get("reason")) != (new["status"], new["reason"])

    def event(
        self, etype: EventType, reason: str, message: str, *, scaled: str | None = None
    ) -> None:
        self.events.append(EventAction(self.snap.ref, etype, reason, message, scaled))

    def status(self, **extra: object) -> GPUMixStatus:
        status: GPUMixStatus = {"observedGeneration": self.snap.generation}
        status.update(extra)  # type: ignore[typeddict-item]
        status["conditions"] = [
            self.conditions[c]
            for c in ("Ready", "LoadAvailable", "Scaling")
            if c in self.conditions
        ]
        return status


def plan(snapshot: MixSnapshot, load: Load, policy: PlanPolicy, now: float) -> Actions:
    """Decide what to do for one GPUMix (see the module docstring for the rules).

    In order: the spec and the members must be valid (``_not_ready``), the load usable
    (``_load_unavailable``), the solver give a usable plan (``_solution``,
    ``_no_plan``); then each member is judged (``_judge_member``) and the Scaling
    condition and the status summarise the pass (``_planned``)."""
    b = _Builder(snapshot, now, _previous_conditions(snapshot.previous_status))
    spec = snapshot.spec
    memory = _memory(snapshot.previous_status)
    if isinstance(spec, SpecError):
        message = f"invalid spec: {spec}"
        b.condition("Ready", "False", "InvalidSpec", message)
        b.condition("LoadAvailable", "Unknown", "NotReady", "the spec is invalid")
        b.condition("Scaling", "False", "NotReady", "nothing is scaled while the spec is invalid")
        if b.changed("Ready"):
            b.event("Warning", "InvalidSpec", message)
        return _hold(b, snapshot, memory, None, load, spec_interval=None)
    held = _not_ready(b, snapshot, spec, memory, load)
    if held is None:
        held = _load_unavailable(b, snapshot, spec, memory, load, now)
    if held is not None:
        return held
    assert isinstance(load, LoadObservation)
    ceilings = {m.name: _ceiling(m, spec, snapshot.pools) for m in snapshot.members}
    bounds = {m.name: _bounds(m, spec, ceilings[m.name][0]) for m in snapshot.members}
    solution, basis, kept = _solution(snapshot, spec, memory, load, policy, bounds)
    if not solution.usable:
        return _no_plan(b, snapshot, spec, memory, load, solution)
    judged = _Judged(requeue=float(spec.interval_seconds))
    for m in snapshot.members:
        _judge_member(b, judged, m, snapshot, spec, solution, ceilings, bounds, memory, now)
    return _planned(b, judged, snapshot, spec, memory, load, solution, basis, kept, now)


def _not_ready(
    b: _Builder, snapshot: MixSnapshot, spec: GPUMixSpec, memory: dict[str, _Memory], load: Load
) -> Actions | None:
    """Held replicas when the members are not valid; else sets Ready to True."""
    reason, problems = _validate(snapshot, spec)
    if problems:
        message = "; ".join(problems)
        b.condition("Ready", "False", reason, message)
        b.condition("LoadAvailable", "Unknown", "NotReady", "load is not read while not ready")
        b.condition("Scaling", "False", "NotReady", "nothing is scaled while not ready")
        if b.changed("Ready"):
            b.event("Warning", reason, message)
        return _hold(b, snapshot, memory, spec, load, spec_interval=spec.interval_seconds)
    names = ", ".join(f"{m.name} ({_gpu_name(m)})" for m in snapshot.members)
    b.condition("Ready", "True", "MembersValid", f"members: {names}")
    if b.changed("Ready") and "Ready" in b.previous:
        b.event("Normal", "MembersValid", f"members are valid: {names}")
    return None


def _load_unavailable(
    b: _Builder,
    snapshot: MixSnapshot,
    spec: GPUMixSpec,
    memory: dict[str, _Memory],
    load: Load,
    now: float,
) -> Actions | None:
    """Held replicas when the load is not usable (fail static); else sets LoadAvailable."""
    load_problem = _load_problem(load, spec, now)
    if load_problem is not None:
        problem, why = load_problem
        reason = {"missing": "LoadMissing", "stale": "LoadStale", "partial": "LoadPartial"}[problem]
        b.condition("LoadAvailable", "False", reason, why)
        b.condition(
            "Scaling",
            "False",
            "LoadUnavailable",
            "replicas are kept as they are until load data is available again (fail static)",
        )
        if b.transitioned("LoadAvailable"):
            b.event("Warning", reason, f"{why}; keeping current replicas")
        return _hold(b, snapshot, memory, spec, load, spec_interval=spec.interval_seconds)
    assert isinstance(load, LoadObservation)
    total = sum(x.rps for x in load.buckets)
    b.condition(
        "LoadAvailable",
        "True",
        "LoadRead",
        f"{total:.3g} req/s in {len(load.buckets)} buckets from {load.source}"
        + (f" ({load.note})" if load.note else ""),
    )
    if (
        b.transitioned("LoadAvailable")
        and b.previous.get("LoadAvailable", {}).get("status") == "False"
    ):
        b.event("Normal", "LoadAvailable", "load data is available again")
    return None


def _solution(
    snapshot: MixSnapshot,
    spec: GPUMixSpec,
    memory: dict[str, _Memory],
    load: LoadObservation,
    policy: PlanPolicy,
    bounds: Mapping[str, tuple[int, int]],
) -> tuple[MixSolution, dict[str, object], bool]:
    """(solution, plan basis, kept): the previous plan while it still holds, else a solve."""
    basis = plan_basis(load, spec_fingerprint(spec))
    kept = _kept_solution(snapshot, spec, memory, bounds, basis)
    if kept is not None:
        previous_basis = snapshot.previous_status.get("planBasis")
        if isinstance(previous_basis, Mapping):
            basis = dict(previous_basis)
        return kept, basis, True
    options = tuple(
        TypeOption(
            gpu_type=_gpu_name(m),
            price_per_hour=spec.prices[_gpu_name(m)],
            gpus_per_replica=_gpus(m, spec),
            min_replicas=bounds[m.name][0],
            max_replicas=bounds[m.name][1],
            current_replicas=m.replicas,
        )
        for m in snapshot.members
    )
    assert isinstance(snapshot.profiles, ProfileSet)
    solution = policy.solver(
        MixProblem(
            model=spec.model,
            options=options,
            load=load.buckets,
            slo=spec.slo,
            headroom=spec.headroom,
            churn_weight=spec.churn_weight,
            profiles=snapshot.profiles.payload,
            time_limit_s=spec.solver_time_limit_seconds,
        )
    )
    return solution, basis, False


def _no_plan(
    b: _Builder,
    snapshot: MixSnapshot,
    spec: GPUMixSpec,
    memory: dict[str, _Memory],
    load: Load,
    solution: MixSolution,
) -> Actions:
    """Held replicas when the solver gave no usable plan, with the solver's status."""
    why = f"solver status {solution.status}: {solution.message or 'no plan'}"
    b.condition("Scaling", "False", "NoPlan", f"{why}; replicas are kept")
    if b.changed("Scaling"):
        b.event("Warning", "NoPlan", f"{why}; keeping current replicas")
    held = _hold(b, snapshot, memory, spec, load, spec_interval=spec.interval_seconds)
    held.status["solverStatus"] = solution.status
    held.status["solveSeconds"] = round(solution.solve_seconds, 4)
    if solution.message:
        held.status["solverMessage"] = solution.message
    return Actions(
        held.scales,
        held.events,
        held.status,
        held.recommendations,
        True,
        None,
        solution.solve_seconds,
        held.requeue_after,
    )


@dataclass
class _Judged:
    """What the members of one pass came to, in member order."""

    requeue: float
    scales: list[ScaleAction] = field(default_factory=list)
    entries: list[MemberStatus] = field(default_factory=list)
    recs: list[Recommendation] = field(default_factory=list)
    autoscaled: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)


def _judge_member(
    b: _Builder,
    judged: _Judged,
    m: Member,
    snapshot: MixSnapshot,
    spec: GPUMixSpec,
    solution: MixSolution,
    ceilings: Mapping[str, tuple[int, str]],
    bounds: Mapping[str, tuple[int, int]],
    memory: dict[str, _Memory],
    now: float,
) -> None:
    """One member's recommendation, status entry, scale and Events."""
    gpu = _gpu_name(m)
    ceiling, ceiling_reason = ceilings[m.name]
    low, high = bounds[m.name]
    rec = max(low, min(int(solution.replicas.get(gpu, m.replicas)), high))
    mem = memory.get(m.name, _Memory())
    entry: MemberStatus = {
        "deployment": m.name,
        "gpuType": gpu,
        "gpusPerReplica": _gpus(m, spec),
        "currentReplicas": m.replicas,
        "recommendedReplicas": rec,
        "ceiling": ceiling,
        "ceilingReason": ceiling_reason,
    }
    if mem.last_scale_time is not None:
        entry["lastScaleTime"] = format_time(mem.last_scale_time)
    judged.recs.append(Recommendation(snapshot.namespace, m.name, gpu, spec.model, rec))
    judged.entries.append(entry)
    if (
        m.replicas_manager is not None
        and mem.current is not None
        and mem.current != m.replicas
        and spec.mode == "scale"
        and not m.autoscalers
    ):
        b.event(
            "Warning",
            "ScaleOverridden",
            f"{m.name} ({gpu}) was scaled from {mem.current} to {m.replicas} by "
            f"{m.replicas_manager}; in mode scale gpumix owns its replicas and applies "
            f"the plan ({rec})",
        )
    if m.autoscalers:
        by = ", ".join(str(a.ref) for a in m.autoscalers)
        entry["autoscaledBy"] = by
        entry["decision"] = f"recommendation only: scaled by {by}"
        judged.autoscaled.append(m.name)
        if mem.recommended != rec:
            b.event(
                "Normal",
                "Recommended",
                f"recommend {rec} replicas for {m.name} ({gpu}); not scaled because "
                f"{by} targets it",
            )
        return
    if spec.mode == "recommend":
        entry["decision"] = "recommendation only: mode is recommend"
        if mem.recommended != rec:
            b.event(
                "Normal",
                "Recommended",
                f"recommend {rec} replicas for {m.name} ({gpu}), now {m.replicas}",
            )
        return
    _scale_member(b, judged, m, entry, snapshot.namespace, spec, rec, ceiling, mem, now)


def _scale_member(
    b: _Builder,
    judged: _Judged,
    m: Member,
    entry: MemberStatus,
    namespace: str,
    spec: GPUMixSpec,
    rec: int,
    ceiling: int,
    mem: _Memory,
    now: float,
) -> None:
    """A member gpumix scales: the decision, a pending scale-down, the scale and its Event."""
    gpu = _gpu_name(m)
    action, decision, new_mem = _decide(m, rec, ceiling, spec, mem, now)
    entry["decision"] = decision
    if new_mem.pending_since is not None and new_mem.pending_floor is not None:
        entry["scaleDownPendingSince"] = format_time(new_mem.pending_since)
        entry["scaleDownFloor"] = new_mem.pending_floor
        judged.pending.append(m.name)
        due = new_mem.pending_since + spec.scale_down_stabilization_seconds - now
        judged.requeue = min(judged.requeue, max(1.0, due))
    if action is not None:
        judged.scales.append(
            ScaleAction(
                namespace,
                m.name,
                gpu,
                m.replicas,
                action,
                _gpus(m, spec),
                decision,
            )
        )
        entry["lastScaleTime"] = format_time(now)
        verb = "ScaledUp" if action > m.replicas else "ScaledDown"
        b.event(
            "Normal",
            verb,
            f"scaled {m.name} ({gpu}) from {m.replicas} to {action}: {decision}",
            scaled=m.name,
        )


def _scaling_condition(
    b: _Builder, judged: _Judged, snapshot: MixSnapshot, spec: GPUMixSpec
) -> None:
    scales, pending, autoscaled = judged.scales, judged.pending, judged.autoscaled
    scaled_members = [m.name for m in snapshot.members if m.name not in autoscaled]
    if spec.mode == "recommend":
        b.condition("Scaling", "False", "RecommendOnly", "mode is recommend: nothing is scaled")
    elif not scaled_members:
        b.condition(
            "Scaling",
            "False",
            "MembersAutoscaled",
            f"every member is targeted by another autoscaler ({', '.join(autoscaled)}): "
            "recommendations only",
        )
    else:
        parts = []
        if scales:
            parts.append(
                "scaled " + ", ".join(f"{s.deployment} to {s.to_replicas}" for s in scales)
            )
        if pending:
            parts.append("scale-down stabilizing for " + ", ".join(pending))
        if autoscaled:
            parts.append(
                "recommendation only for " + ", ".join(autoscaled) + " (targeted by an autoscaler)"
            )
        reason = "MembersAutoscaled" if autoscaled else ("Scaled" if scales else "Stable")
        if not scales and pending and not autoscaled:
            reason = "StabilizingScaleDown"
        b.condition("Scaling", "True", reason, "; ".join(parts) or "replicas match the plan")


def _planned(
    b: _Builder,
    judged: _Judged,
    snapshot: MixSnapshot,
    spec: GPUMixSpec,
    memory: dict[str, _Memory],
    load: LoadObservation,
    solution: MixSolution,
    basis: dict[str, object],
    kept: bool,
    now: float,
) -> Actions:
    """The pass's Scaling condition, status and actions."""
    _scaling_condition(b, judged, snapshot, spec)
    autoscaled = judged.autoscaled
    was_autoscaled = sorted(n for n, x in memory.items() if x.autoscaled)
    if autoscaled and sorted(autoscaled) != was_autoscaled:
        b.event(
            "Normal",
            "MembersAutoscaled",
            f"{', '.join(autoscaled)} targeted by another autoscaler: recommendations only",
        )
    status = b.status(
        mode=spec.mode,
        plan=judged.entries,
        solverStatus=solution.status,
        solveSeconds=round(solution.solve_seconds, 4),
        load=_load_status(load),
        planBasis=basis,
        lastPlanTime=format_time(now),
    )
    if solution.cost_per_hour is not None:
        status["costPerHour"] = round(solution.cost_per_hour, 4)
    if solution.best_single_type_cost_per_hour is not None:
        status["bestSingleTypeCostPerHour"] = round(solution.best_single_type_cost_per_hour, 4)
    if solution.best_single_type is not None:
        status["bestSingleType"] = solution.best_single_type
    if solution.message:
        status["solverMessage"] = solution.message
    return Actions(
        tuple(judged.scales),
        tuple(b.events),
        status,
        tuple(judged.recs),
        True,
        solution.cost_per_hour,
        None if kept else solution.solve_seconds,
        judged.requeue,
    )


# --------------------------------------------------------------------------- helpers


def _gpu_name(m: Member) -> str:
    return m.deployment.gpu_type.name or m.deployment.gpu_type.label


def _gpus(m: Member, spec: GPUMixSpec) -> int:
    configured = spec.limits(_gpu_name(m)).gpus_per_replica
    if configured is not None:
        return configured
    return max(1, m.deployment.gpus_per_replica)


def _validate(snap: MixSnapshot, spec: GPUMixSpec) -> tuple[str, list[str]]:
    """The first reason and every problem that makes the GPUMix not ready."""
    problems, by_type = _member_problems(snap, spec)
    problems += _gpu_type_problems(snap, spec, by_type)
    if not problems:
        return "", []
    return problems[0][0], [p for _, p in problems]


def _member_problems(
    snap: MixSnapshot, spec: GPUMixSpec
) -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
    """(reason, problem) of the members themselves, and the members by GPU type."""
    problems: list[tuple[str, str]] = []
    members = snap.members
    if not members:
        problems.append(
            (
                "NoMembers",
                f"no Deployment in namespace {snap.namespace} carries the model label "
                f"{spec.model_label_key or 'gpumix.io/model'}={spec.model}",
            )
        )
    by_type: dict[str, list[str]] = {}
    for m in members:
        d = m.deployment
        if d.selector_error is not None:
            problems.append(("InvalidMemberSelector", f"member {m.name}: {d.selector_error}"))
        if d.gpu_type.kind not in ("pinned", "mig") or not d.gpu_type.name:
            problems.append(
                (
                    "MemberWithoutGpuType",
                    f"member {m.name} is not pinned to one GPU type ({d.gpu_type.label}); "
                    "set the pod-template label gpumix.io/gpu-type or a GPU nodeSelector",
                )
            )
            continue
        by_type.setdefault(d.gpu_type.name, []).append(m.name)
    for gpu, names in sorted(by_type.items()):
        if len(names) > 1:
            problems.append(
                (
                    "DuplicateGpuType",
                    f"members {' and '.join(sorted(names))} both run on {gpu}: "
                    "each member needs its own GPU type",
                )
            )
    for i, a in enumerate(members):
        for other in members[i + 1 :]:
            if a.deployment.selector_error or other.deployment.selector_error:
                continue
            if overlaps(a.deployment.selector, other.deployment.selector):
                problems.append(
                    (
                        "OverlappingMembers",
                        f"selectors of members {a.name} and {other.name} overlap "
                        f"({a.deployment.selector.describe()} vs "
                        f"{other.deployment.selector.describe()}): add a distinct label such "
                        "as gpumix.io/deployment to each selector and pod template",
                    )
                )
    return problems, by_type


def _gpu_type_problems(
    snap: MixSnapshot, spec: GPUMixSpec, by_type: Mapping[str, list[str]]
) -> list[tuple[str, str]]:
    """(reason, problem) of the GPU types: profiles, prices and limits for each."""
    problems: list[tuple[str, str]] = []
    profiles = snap.profiles
    if isinstance(profiles, ProfilesUnavailable):
        problems.append(("ProfilesUnavailable", f"profiles: {profiles.reason}"))
        known: frozenset[str] = frozenset()
    else:
        known = profiles.gpu_types
    for gpu in sorted(spec.prices):
        if isinstance(profiles, ProfileSet) and gpu not in known and gpu not in by_type:
            problems.append(
                (
                    "UnknownGpuType",
                    f"spec.prices names GPU type {gpu}, which no profile and no member "
                    f"Deployment has (profiles: {', '.join(sorted(known)) or 'none'})",
                )
            )
    if by_type:
        for gpu in sorted(spec.gpu_types):
            if gpu not in by_type:
                problems.append(
                    (
                        "UnknownGpuType",
                        f"spec.gpuTypes names GPU type {gpu}, which no member Deployment runs "
                        f"on (members run on: {', '.join(sorted(by_type))}); its limits would "
                        "apply to nothing",
                    )
                )
    for gpu, names in sorted(by_type.items()):
        if gpu not in spec.prices:
            problems.append(
                ("MissingPrice", f"member {', '.join(names)} runs on {gpu}, which has no price")
            )
        if isinstance(profiles, ProfileSet) and gpu not in known:
            problems.append(
                (
                    "MissingProfiles",
                    f"member {', '.join(names)} runs on {gpu}, which has no profile "
                    f"(profiles: {', '.join(sorted(known)) or 'none'})",
                )
            )
    return problems


def _load_problem(load: Load, spec: GPUMixSpec, now: float) -> tuple[LoadProblem, str] | None:
    if isinstance(load, LoadUnavailable):
        return load.problem, load.reason
    if isinstance(spec.load_source, PrometheusLoad):
        age = now - load.observed_at
        limit = spec.load_source.staleness_seconds
        if age > limit:
            return "stale", f"the newest load sample is older than the staleness limit {limit}s"
    bad = [x for x in load.buckets if not math.isfinite(x.rps) or x.rps < 0]
    if bad:
        return "partial", f"{len(bad)} load buckets have no valid rate"
    return None


def _load_status(load: Load) -> LoadStatus:
    if isinstance(load, LoadUnavailable):
        out: LoadStatus = {"reason": load.reason}
        if load.observed_at is not None:
            out["observedTime"] = format_time(load.observed_at)
        return out
    return {
        "source": load.source,
        "requestsPerSecond": float(f"{sum(x.rps for x in load.buckets):.3g}"),
        "buckets": len(load.buckets),
        "observedTime": format_time(load.observed_at),
    }


def _bounds(m: Member, spec: GPUMixSpec, ceiling: int) -> tuple[int, int]:
    """The replicas the solver may give a member: a member whose own autoscaler does not
    follow gpumix's recommendation runs what that autoscaler chose, so it is planned with
    its actual replicas (the others may not count on capacity it could take up)."""
    if m.autoscalers and not m.follows_plan:
        fixed = min(m.replicas, ceiling)
        return fixed, fixed
    return min(spec.limits(_gpu_name(m)).min_replicas, ceiling), ceiling


def _bound_key(le: float) -> str:
    return "+Inf" if math.isinf(le) else f"{le:g}"


def spec_fingerprint(spec: GPUMixSpec) -> str:
    """A digest of everything in the spec but the load: a change re-plans at once (a
    static load is in the spec too, and its changes go through the tolerance instead)."""
    rest = replace(spec, load_source=StaticLoad(()))
    return hashlib.sha256(repr(rest).encode()).hexdigest()[:16]


def plan_basis(load: LoadObservation, spec_digest: str) -> dict[str, object]:
    """The load a plan is made for, as kept in ``status.planBasis``: the request rate
    per input-token bound and per output-token bound (the two marginals)."""
    inputs: dict[str, float] = {}
    outputs: dict[str, float] = {}
    for x in load.buckets:
        inputs[_bound_key(x.input_tokens)] = inputs.get(_bound_key(x.input_tokens), 0.0) + x.rps
        key = _bound_key(x.output_tokens)
        outputs[key] = outputs.get(key, 0.0) + x.rps
    return {
        "spec": spec_digest,
        "requestsPerSecond": round(sum(x.rps for x in load.buckets), 4),
        "inputTokens": {k: round(v, 4) for k, v in sorted(inputs.items())},
        "outputTokens": {k: round(v, 4) for k, v in sorted(outputs.items())},
    }


def load_distance(old: Mapping[str, object], new: Mapping[str, object]) -> float:
    """How far a load moved from a plan basis: the larger of the two marginals' L1
    distances, as a fraction of the basis' request rate (0: same, inf: from zero)."""

    def rates(basis: Mapping[str, object], key: str) -> dict[str, float]:
        raw = basis.get(key)
        if not isinstance(raw, Mapping):
            return {}
        return {
            str(k): float(v)
            for k, v in raw.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }

    total = old.get("requestsPerSecond")
    base = float(total) if isinstance(total, int | float) and not isinstance(total, bool) else 0.0
    moved = 0.0
    for key in ("inputTokens", "outputTokens"):
        a, b = rates(old, key), rates(new, key)
        moved = max(moved, sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in {*a, *b}))
    if base <= 0:
        return 0.0 if moved <= 0 else math.inf
    return moved / base


def _kept_solution(
    snap: MixSnapshot,
    spec: GPUMixSpec,
    memory: Mapping[str, _Memory],
    bounds: Mapping[str, tuple[int, int]],
    basis: Mapping[str, object],
) -> MixSolution | None:
    """The previous plan, when the load stayed within ``spec.tolerance`` of the load it was
    made for and it is still valid (the same spec but for the load, the same members, the
    recommendations within the members' current bounds); None: solve again."""
    previous = snap.previous_status
    old = previous.get("planBasis")
    if spec.tolerance <= 0 or not isinstance(old, Mapping):
        return None
    if old.get("spec") != basis.get("spec") or previous.get("solverStatus") not in (
        "OPTIMAL",
        "FEASIBLE",
    ):
        return None
    if set(memory) != {m.name for m in snap.members}:
        return None
    replicas: dict[str, int] = {}
    for m in snap.members:
        rec = memory[m.name].recommended
        low, high = bounds[m.name]
        if rec is None or not low <= rec <= high:
            return None
        replicas[_gpu_name(m)] = rec
    if load_distance(old, basis) > spec.tolerance:
        return None
    cost = previous.get("costPerHour")
    best_cost = previous.get("bestSingleTypeCostPerHour")
    best = previous.get("bestSingleType")
    message = previous.get("solverMessage")
    status = previous.get("solverStatus")
    return MixSolution(
        "FEASIBLE" if status == "FEASIBLE" else "OPTIMAL",
        replicas,
        cost_per_hour=float(cost) if isinstance(cost, int | float) else None,
        best_single_type_cost_per_hour=float(best_cost)
        if isinstance(best_cost, int | float)
        else None,
        best_single_type=best if isinstance(best, str) else None,
        solve_seconds=0.0,
        message=message if isinstance(message, str) else "",
    )


def _ceiling(m: Member, spec: GPUMixSpec, pools: Mapping[str, GpuPool]) -> tuple[int, str]:
    """The highest replica count allowed for a member, and what sets it."""
    gpu = _gpu_name(m)
    g = _gpus(m, spec)
    candidates: list[tuple[int, str]] = []
    limit = spec.limits(gpu).max_replicas
    if limit is not None:
        candidates.append((limit, f"spec.gpuTypes.{gpu}.maxReplicas"))
    for a in m.autoscalers:
        if a.ceiling is not None:
            candidates.append((a.ceiling, f"{a.ceiling_field} of {a.ref}"))
    pool = pools.get(gpu)
    if pool is None:
        candidates.append((m.replicas, f"no schedulable Node with GPU type {gpu}: no growth"))
    else:
        fits = max(0, pool.free + m.used_gpus) // g
        candidates.append((fits, f"free {gpu} GPUs plus those it holds, {g} per replica"))
    return min(candidates, key=lambda c: c[0])


def _decide(
    m: Member, rec: int, ceiling: int, spec: GPUMixSpec, mem: _Memory, now: float
) -> tuple[int | None, str, _Memory]:
    """Target replicas (None: leave as is), the reason, and the memory to keep."""
    current = m.replicas
    minimum = min(spec.limits(_gpu_name(m)).min_replicas, ceiling)
    threshold = spec.min_change_replicas
    window = spec.scale_down_stabilization_seconds
    if current > ceiling:
        return ceiling, f"{current} is above the ceiling {ceiling}", _Memory(rec, now)
    if rec > current:
        if rec - current >= threshold or current < minimum:
            return rec, f"plan asks {rec} (was {current})", _Memory(rec, now)
        return None, f"plan asks {rec}: change below minChangeReplicas {threshold}", _Memory(rec)
    if rec == current:
        return None, "replicas match the plan", _Memory(rec, mem.last_scale_time)
    since = mem.pending_since if mem.pending_since is not None else now
    floor = (
        max(rec, mem.pending_floor)
        if mem.pending_since is not None and mem.pending_floor is not None
        else rec
    )
    floor = min(floor, current)
    quiet = mem.last_scale_time is None or now - mem.last_scale_time >= window
    if now - since >= window and quiet:
        if current - floor >= threshold:
            return (
                floor,
                f"plan asks {rec}; highest in the {window}s stabilization window is {floor}",
                _Memory(rec, now),
            )
        return (
            None,
            f"plan asks {floor}: change below minChangeReplicas {threshold}",
            _Memory(rec, mem.last_scale_time),
        )
    return (
        None,
        f"plan asks {rec}; scale-down to {floor} waits for the {window}s stabilization window",
        _Memory(rec, mem.last_scale_time, since, floor),
    )


def _hold(
    b: _Builder,
    snap: MixSnapshot,
    memory: Mapping[str, _Memory],
    spec: GPUMixSpec | None,
    load: Load,
    *,
    spec_interval: int | None,
) -> Actions:
    """Fail static: keep replicas, publish the last recommendation (or the current replicas)."""
    entries: list[MemberStatus] = []
    recs: list[Recommendation] = []
    for m in snap.members:
        mem = memory.get(m.name, _Memory())
        rec = mem.recommended if mem.recommended is not None else m.replicas
        gpu = _gpu_name(m)
        entry: MemberStatus = {
            "deployment": m.name,
            "gpuType": gpu,
            "currentReplicas": m.replicas,
            "recommendedReplicas": rec,
            "decision": "kept: " + b.conditions.get("Scaling", {"message": ""})["message"],
        }
        if mem.last_scale_time is not None:
            entry["lastScaleTime"] = format_time(mem.last_scale_time)
        if m.autoscalers:
            entry["autoscaledBy"] = ", ".join(str(a.ref) for a in m.autoscalers)
        entries.append(entry)
        if spec is not None:
            recs.append(Recommendation(snap.namespace, m.name, gpu, spec.model, rec))
    extra: dict[str, object] = {"plan": entries}
    if spec is not None:
        extra["mode"] = spec.mode
    previous = snap.previous_status
    load_cond = b.conditions.get("LoadAvailable")
    load_known = load_cond is not None and load_cond["status"] in ("True", "False")
    if load_known:
        extra["load"] = _load_status(load)
    for key in (
        "costPerHour",
        "bestSingleTypeCostPerHour",
        "bestSingleType",
        "solverStatus",
        "solverMessage",
        "planBasis",
        "lastPlanTime",
    ):
        if key in previous:
            extra[key] = previous[key]
    status = b.status(**extra)
    return Actions(
        (),
        tuple(b.events),
        status,
        tuple(recs),
        load_cond is not None and load_cond["status"] == "True",
        None,
        None,
        float(spec_interval or 30),
    )
