"""``solve`` and ``solve_joint``: validate, reduce, run the exact search, build a ``Result``."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from gpumix.optimizer._engine import (
    Block,
    NumericTrouble,
    Outcome,
    PoolRow,
    branch_and_bound,
    optimal_within,
    with_bound,
)
from gpumix.optimizer._search import search
from gpumix.optimizer.model import Bucket, GpuOption, JointResult, Pool, Problem, Result, Status

Clock = Callable[[], float]
TIME_OUT = "time limit reached before any plan was found"
JOINT_NODES = 300  # node budget of the last joint step (nodes, not seconds: deterministic)
JOINT_GAP = 5e-4  # default relative gap at which a joint plan is good enough (0.05%)
LOAD_TOL = 1e-6  # a replica may carry its capacity times (1 + LOAD_TOL): float noise only

# Input ranges. Beyond them the numbers are unit mistakes (a rate of 1e-9 req/s is one
# request in 30 years) and the solvers' arithmetic loses its meaning, so such a problem
# is INVALID, naming the field, before any solver sees it.
MIN_RATE = 1e-6  # req/s per replica: a positive rate below this is rejected
MAX_RATE = 1e6  # req/s per replica
MIN_LOAD = 1e-6  # req/s per bucket: a positive load below this is rejected
MAX_LOAD = 1e6  # req/s per bucket
MAX_PRICE = 1e6  # per GPU-hour, and the churn weight per replica-hour
MAX_COUNT = 10**9  # GPUs, GPUs per replica, replica minimums, maximums, current counts
MAX_PLAN_REPLICAS = 1e5  # the fewest replicas the load can need (each bucket at its best)


# ---------------------------------------------------------------- validation


def _finite(x: object) -> bool:
    """A number (not a bool) that is a finite float (an int too large for one is not)."""
    if not isinstance(x, int | float) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(float(x))
    except OverflowError:
        return False


def _finite_nonneg(x: object) -> bool:
    return _finite(x) and x >= 0  # type: ignore[operator]


def _in_range(x: object, low: float, high: float) -> bool:
    """A finite number that is 0 or in [low, high]."""
    return _finite_nonneg(x) and (x == 0 or low <= x <= high)  # type: ignore[operator]


def _all_in_range(values: Sequence[object], low: float, high: float) -> bool:
    """``_in_range`` of every value, in one vectorised pass (the common case)."""
    if bool in map(type, values):
        return False
    arr = np.array(values)
    if arr.ndim != 1 or arr.dtype.kind not in "fi":
        return False
    with np.errstate(invalid="ignore", over="ignore"):
        ok = np.isfinite(arr) & ((arr == 0) | ((arr >= low) & (arr <= high)))
    return bool(np.all(ok))


def _range_text(low: float, high: float) -> str:
    return f"0 or between {low:g} and {high:g}" if low > 0 else f"between 0 and {high:g}"


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= MAX_COUNT


def validate(problem: Problem) -> list[str]:
    """Every problem in the input, each naming its field; empty when the problem is valid."""
    errs: list[str] = []
    p = problem
    if not isinstance(p, Problem):
        return ["problem: not a Problem"]
    if len(p.load) != len(p.buckets):
        errs.append(f"load: {len(p.load)} values for {len(p.buckets)} buckets")
    if not _all_in_range(p.load, MIN_LOAD, MAX_LOAD):
        for i, v in enumerate(p.load):
            if not _in_range(v, MIN_LOAD, MAX_LOAD):
                errs.append(
                    f"load[{i}]{_at(p, i)}: must be {_range_text(MIN_LOAD, MAX_LOAD)} req/s, "
                    f"got {v!r}"
                )
    if not _finite_nonneg(p.headroom) or not p.headroom < 1:
        errs.append(f"headroom: must be in [0, 1), got {p.headroom!r}")
    if not _in_range(p.churn_weight, 0.0, MAX_PRICE):
        errs.append(f"churn_weight: must be {_range_text(0.0, MAX_PRICE)}, got {p.churn_weight!r}")
    if not p.gpus:
        errs.append("gpus: no GPU types")
    seen: set[str] = set()
    for g in p.gpus:
        where = f"gpus[{g.name}]"
        if not isinstance(g.name, str) or not g.name:
            errs.append("gpus: a GPU type has no name")
        if g.name in seen:
            errs.append(f"{where}: duplicate GPU type")
        seen.add(g.name)
        if len(g.rates) != len(p.buckets):
            errs.append(f"{where}.rates: {len(g.rates)} values for {len(p.buckets)} buckets")
        if not _all_in_range(g.rates, MIN_RATE, MAX_RATE):
            for i, r in enumerate(g.rates):
                if not _in_range(r, MIN_RATE, MAX_RATE):
                    errs.append(
                        f"{where}.rates[{i}]{_at(p, i)}: must be "
                        f"{_range_text(MIN_RATE, MAX_RATE)} req/s per replica "
                        f"(0: cannot serve), got {r!r}"
                    )
        if not _in_range(g.price_per_hour, 0.0, MAX_PRICE):
            errs.append(
                f"{where}.price_per_hour: must be {_range_text(0.0, MAX_PRICE)}, "
                f"got {g.price_per_hour!r}"
            )
        if not _is_count(g.gpus_per_replica) or g.gpus_per_replica < 1:
            errs.append(
                f"{where}.gpus_per_replica: must be an integer from 1 to {MAX_COUNT}, "
                f"got {g.gpus_per_replica!r}"
            )
        for fname in ("min_replicas", "current_replicas"):
            if not _is_count(getattr(g, fname)):
                errs.append(
                    f"{where}.{fname}: must be an integer from 0 to {MAX_COUNT}, "
                    f"got {getattr(g, fname)!r}"
                )
        for fname in ("max_replicas", "available_gpus"):
            v = getattr(g, fname)
            if v is not None and not _is_count(v):
                errs.append(
                    f"{where}.{fname}: must be an integer from 0 to {MAX_COUNT} or unset, got {v!r}"
                )
    if not errs:
        errs += _size_errors(p)
    return errs


def _at(p: Problem, i: int) -> str:
    """`` (bucket in=..,out=..)`` for bucket ``i`` when it exists."""
    if 0 <= i < len(p.buckets) and isinstance(p.buckets[i], Bucket):
        return f" (bucket {p.buckets[i].label()})"
    return ""


def _size_errors(p: Problem) -> list[str]:
    """The load must fit in at most ``MAX_PLAN_REPLICAS`` replicas with every bucket on the
    type that needs the fewest for it (a valid problem's numbers; otherwise it is a unit
    mistake, and plans would print counts no cluster has)."""
    if not p.buckets or not p.gpus:
        return []
    rates = _rate_matrix(p)
    load = np.array(p.load, dtype=float)
    with np.errstate(divide="ignore"):
        need = np.where(rates > 0, load[:, None] / np.where(rates > 0, rates, 1.0), np.inf)
    best = need.min(axis=1)
    best = np.where(load > 0, best, 0.0) / (1.0 - float(p.headroom))
    servable = np.isfinite(best)  # unservable buckets are reported by diagnose()
    total = float(best[servable].sum())
    if total <= MAX_PLAN_REPLICAS:
        return []
    worst = int(np.argmax(np.where(servable, best, -1.0)))
    return [
        f"load: needs at least {total:.3g} replicas even with every bucket on its best GPU "
        f"type (limit {MAX_PLAN_REPLICAS:.0f}; the largest part, {best[worst]:.3g}, is "
        f"load[{worst}]{_at(p, worst)}); check the units: load in req/s, rates in req/s "
        "per replica"
    ]


# ---------------------------------------------------------------- reduction


def _rate_matrix(problem: Problem) -> np.ndarray:
    """``rates[bucket, type]`` of a validated problem (req/s per replica; 0: cannot)."""
    return np.array([g.rates for g in problem.gpus], dtype=float).T.reshape(
        len(problem.buckets), len(problem.gpus)
    )


def _merge_buckets(problem: Problem) -> tuple[np.ndarray, list[list[int]]]:
    """Loaded buckets, merged when their rate rows are proportional (an exact reduction).

    Returns ``need`` (merged bucket x type: replicas its whole load needs, inf: cannot) and
    the original bucket indexes of each merged row.
    """
    rates = _rate_matrix(problem)
    load = np.array(problem.load, dtype=float)
    loaded = np.nonzero(load > 0)[0]
    if loaded.size == 0:
        return np.zeros((0, len(problem.gpus))), []
    sub = rates[loaded]
    top = sub.max(axis=1) if sub.shape[1] else np.zeros(len(loaded))
    with np.errstate(divide="ignore", invalid="ignore"):
        keys = np.where(
            top[:, None] > 0, np.round(sub / np.where(top > 0, top, 1.0)[:, None], 12), -1.0
        )
    keys = keys + 0.0  # -0.0 and 0.0 are the same key
    # groups of equal keys, numbered in order of their first bucket
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    group = rank[inverse.reshape(-1)]
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(first.size + 1))
    members = [loaded[order[bounds[k] : bounds[k + 1]]].tolist() for k in range(first.size)]
    with np.errstate(divide="ignore"):
        per = np.where(sub > 0, load[loaded][:, None] / np.where(sub > 0, sub, 1.0), np.inf)
    need = np.zeros((len(members), len(problem.gpus)))
    np.add.at(need, group, per)
    return need, members


def _block(problem: Problem, need: np.ndarray, extra_ub: Sequence[float] | None) -> Block:
    ub = []
    for j, g in enumerate(problem.gpus):
        cap = g.replica_cap()
        u = math.inf if cap is None else float(cap)
        if extra_ub is not None:
            u = min(u, extra_ub[j])
        ub.append(u)
    return Block(
        need=need,
        cost=np.array([g.replica_cost for g in problem.gpus], dtype=float),
        lb=np.array([float(g.min_replicas) for g in problem.gpus]),
        ub=np.array(ub),
        cur=np.array([float(g.current_replicas) for g in problem.gpus]),
        churn=float(problem.churn_weight),
        usable=1.0 - float(problem.headroom),
    )


# ---------------------------------------------------------------- diagnostics


def _cap_text(g: GpuOption) -> str:
    parts = []
    if g.max_replicas is not None:
        parts.append(f"max_replicas {g.max_replicas}")
    if g.available_gpus is not None:
        parts.append(f"{g.available_gpus} GPUs available at {g.gpus_per_replica} per replica")
    return f"{g.name} ({', '.join(parts) or 'unlimited'})"


def _cap(g: GpuOption, extra: float | None) -> int | None:
    cap = g.replica_cap()
    if extra is None or not math.isfinite(extra):
        return cap
    return int(extra) if cap is None else min(cap, int(extra))


def diagnose(problem: Problem, ub: Sequence[float] | None = None) -> str:
    """Why no plan exists, before solving: bounds and unservable buckets ('' when none)."""
    reasons: list[str] = []
    for j, g in enumerate(problem.gpus):
        cap = _cap(g, None if ub is None else ub[j])
        if cap is not None and g.min_replicas > cap:
            reasons.append(
                f"{g.name}: min_replicas {g.min_replicas} exceeds what "
                f"{_cap_text(g)} allows ({cap})"
            )
    no_type: list[str] = []
    no_room: list[str] = []
    if problem.buckets and problem.gpus:
        serves = _rate_matrix(problem) > 0
        loaded = np.array(problem.load, dtype=float) > 0
        caps = [_cap(g, None if ub is None else ub[j]) for j, g in enumerate(problem.gpus)]
        room = np.array([c != 0 for c in caps])
        for i in np.nonzero(loaded & ~serves.any(axis=1))[0].tolist():
            no_type.append(problem.buckets[i].label())
        full = loaded & serves.any(axis=1) & ~(serves & room).any(axis=1)
        for i in np.nonzero(full)[0].tolist():
            serving = np.nonzero(serves[i])[0].tolist()
            no_room.append(
                f"{problem.buckets[i].label()} (only "
                + ", ".join(_cap_text(problem.gpus[j]) for j in serving)
                + ")"
            )
    if no_type:
        reasons.append(f"no GPU type can serve bucket(s) {'; '.join(no_type)} within the SLO")
    if no_room:
        reasons.append(f"no capacity for bucket(s) {'; '.join(no_room)}")
    return "; ".join(reasons)


def _capacity_reason(problems: Sequence[Problem], pool: Pool | None) -> str:
    parts = []
    for p in problems:
        caps = ", ".join(_cap_text(g) for g in p.gpus if g.replica_cap() is not None)
        if caps:
            parts.append(f"{p.model + ': ' if p.model else ''}{caps}")
    text = "the load needs more capacity than the replica caps allow"
    if parts:
        text += ": " + "; ".join(parts)
    if pool is not None and pool.gpus:
        text += "; shared pool " + ", ".join(f"{k} {v} GPUs" for k, v in sorted(pool.gpus.items()))
    return text


# ---------------------------------------------------------------- results


def _gap(obj: float, bound: float) -> float:
    if not math.isfinite(obj) or not math.isfinite(bound):
        return math.nan
    return max(0.0, (obj - bound) / max(abs(obj), 1e-9))


def _finish(
    problem: Problem,
    members: list[list[int]],
    reps: tuple[int, ...],
    frac: np.ndarray,
    status: Status,
    bound: float,
    runtime: float,
    nodes: int,
) -> Result:
    nb, ng = len(problem.buckets), len(problem.gpus)
    assign = np.zeros((nb, ng))
    if members:
        rows = np.array([i for idx in members for i in idx], dtype=np.int64)
        grp = np.repeat(np.arange(len(members)), [len(idx) for idx in members])
        assign[rows] = frac[grp]
    replicas = list(reps)
    # never truncate: a count below its load (numerical noise) is rounded up
    usable = 1.0 - problem.headroom
    rates = _rate_matrix(problem)
    loads = np.array(problem.load, dtype=float)[:, None] * assign
    used = (assign > 0) & (rates > 0)
    per_type = np.where(used, loads / np.where(rates > 0, rates, 1.0), 0.0).sum(axis=0)
    for j, g in enumerate(problem.gpus):
        load = float(per_type[j])
        needed = math.ceil(load / (usable * (1 + LOAD_TOL))) if load > 0 else 0
        replicas[j] = max(replicas[j], needed, g.min_replicas)
    cost = sum(g.replica_cost * n for g, n in zip(problem.gpus, replicas, strict=True))
    churn = problem.churn_weight * sum(
        abs(n - g.current_replicas) for g, n in zip(problem.gpus, replicas, strict=True)
    )
    obj = cost + churn
    proven = min(bound, obj)
    if status == Status.OPTIMAL and obj - proven <= optimal_within(obj):
        proven = obj  # the same optimum, summed here in another order than by the search
    return Result(
        status=status,
        replicas={g.name: n for g, n in zip(problem.gpus, replicas, strict=True)},
        cost_per_hour=cost,
        objective=obj,
        bound=proven,
        gap=_gap(obj, proven),
        runtime_s=runtime,
        assignment=tuple(map(tuple, assign.tolist())),
        nodes=nodes,
        model=problem.model,
    )


def _fail(
    problem: Problem | None,
    status: Status,
    runtime: float,
    reason: str = "",
    errors: Sequence[str] = (),
    bound: float = math.nan,
    nodes: int = 0,
) -> Result:
    return Result(
        status=status,
        runtime_s=runtime,
        reason=reason,
        errors=tuple(errors),
        bound=bound,
        nodes=nodes,
        model=problem.model if isinstance(problem, Problem) else "",
    )


def _limit_errors(time_limit_s: float) -> list[str]:
    if not _finite(time_limit_s) or time_limit_s <= 0:
        return [f"time_limit_s: must be a finite number > 0, got {time_limit_s!r}"]
    return []


def solve(
    problem: Problem, *, time_limit_s: float = 10.0, seed: int = 0, clock: Clock = time.perf_counter
) -> Result:
    """Cheapest replicas per GPU type that serve ``problem.load`` within the SLO.

    Never raises for a bad problem (INVALID with ``errors``); stops at ``time_limit_s``
    (FEASIBLE with a gap, or UNKNOWN). Deterministic for a fixed ``seed`` when it finishes
    within the limit. ``clock`` is a monotonic clock in seconds (injected for tests).
    """
    start = clock()
    try:
        errs = _limit_errors(time_limit_s) + validate(problem)
    except Exception as exc:  # a malformed object: report, do not raise
        errs = [f"problem: {exc}"]
    if errs:
        return _fail(problem, Status.INVALID, clock() - start, "invalid problem", errs)
    why = diagnose(problem)
    if why:
        return _fail(problem, Status.INFEASIBLE, clock() - start, why)
    need, members = _merge_buckets(problem)
    blk = _block(problem, need, None)
    cells = len(problem.buckets) * len(problem.gpus)
    rest = time_limit_s - _reserve(time_limit_s, cells) - (clock() - start)
    try:
        out = search([blk], [], time_limit_s=rest, seed=seed, clock=clock)
    except NumericTrouble as exc:
        return _fail(problem, Status.NUMERIC_ERROR, clock() - start, _numeric_reason(exc))
    res = _single(problem, members, out, clock() - start, None)
    return replace(res, runtime_s=clock() - start)  # the result's assembly included


def _reserve(time_limit_s: float, cells: int) -> float:
    """Time kept back from the search for what follows it (building the result: about
    1 us per bucket-type cell, measured at 16 x 2000) and for solvers that check their
    clock only now and then: 2% of the limit plus 5 ms plus 1 us per cell."""
    return 0.02 * time_limit_s + 0.005 + 1e-6 * cells


def _numeric_reason(exc: NumericTrouble) -> str:
    return f"numeric trouble, no plan trusted: {exc}"


def _single(
    problem: Problem, members: list[list[int]], out: Outcome, runtime: float, pool: Pool | None
) -> Result:
    if out.status == "infeasible":
        return _fail(
            problem, Status.INFEASIBLE, runtime, _capacity_reason([problem], pool), nodes=out.nodes
        )
    if out.status == "unknown":
        return _fail(
            problem,
            Status.UNKNOWN,
            runtime,
            TIME_OUT,
            bound=out.bound,
            nodes=out.nodes,
        )
    status = Status.OPTIMAL if out.status == "optimal" else Status.FEASIBLE
    return _finish(
        problem, members, out.replicas[0], out.fractions[0], status, out.bound, runtime, out.nodes
    )


def _combine(outs: Sequence[Outcome]) -> Outcome:
    return Outcome(
        "feasible",
        tuple(o.replicas[0] for o in outs),
        tuple(o.fractions[0] for o in outs),
        sum(o.objective for o in outs),
        -math.inf,
        sum(o.nodes for o in outs),
    )


def _pool_ok(blocks: Sequence[Block], rows: Sequence[PoolRow], plan: Outcome) -> bool:
    return all(
        sum(gpr * plan.replicas[m][g] for m, g, gpr in row.terms) <= row.capacity + 1e-9
        for row in rows
    )


def _sequential(
    blocks: Sequence[Block], rows: Sequence[PoolRow], deadline: float, seed: int, clock: Clock
) -> Outcome | None:
    """Plan model after model within what the pool has left (a heuristic incumbent)."""
    left = [row.capacity for row in rows]
    outs: list[Outcome] = []
    for m, blk in enumerate(blocks):
        ub = blk.ub.copy()
        for k, row in enumerate(rows):
            for mm, g, gpr in row.terms:
                if mm == m:
                    ub[g] = min(ub[g], math.floor(left[k] / gpr + 1e-9))
        if np.any(blk.lb > ub):
            return None
        capped = Block(blk.need, blk.cost, blk.lb, ub, blk.cur, blk.churn, blk.usable)
        rest = deadline - clock()
        if rest <= 0:
            return None
        out = search([capped], [], time_limit_s=rest / (len(blocks) - m), seed=seed, clock=clock)
        if not out.replicas:
            return None
        for k, row in enumerate(rows):
            for mm, g, gpr in row.terms:
                if mm == m:
                    left[k] -= gpr * out.replicas[0][g]
        outs.append(out)
    return _combine(outs)


def _lagrangian(
    blocks: Sequence[Block],
    rows: Sequence[PoolRow],
    incumbent: Outcome | None,
    deadline: float,
    seed: int,
    clock: Clock,
    max_rounds: int = 15,
    gap_limit: float = 0.0,
) -> tuple[float, Outcome | None]:
    """Subgradient ascent on prices of the pooled GPUs.

    For prices mu >= 0 every model is planned alone with its replica cost raised by
    mu_g * gpus_per_replica; the sum of those optima minus mu . pool is a valid lower
    bound on the joint objective (any joint plan pays at most that extra). Returns the
    best bound and the cheapest plan seen that fits the pool; stops early once that plan
    is within ``gap_limit`` (relative) of the bound."""
    mu = np.zeros(len(rows))
    best_bound = -math.inf
    best_plan: Outcome | None = None
    upper = incumbent.objective if incumbent is not None else math.inf
    theta = 1.0
    stall = 0
    caps = np.array([row.capacity for row in rows])
    for _ in range(max_rounds):
        if clock() > deadline:
            break
        outs: list[Outcome] = []
        for m, blk in enumerate(blocks):
            extra = np.zeros(blk.cost.size)
            for k, row in enumerate(rows):
                for mm, g, gpr in row.terms:
                    if mm == m:
                        extra[g] += mu[k] * gpr
            priced = Block(
                blk.need, blk.cost + extra, blk.lb, blk.ub, blk.cur, blk.churn, blk.usable
            )
            rest = deadline - clock()
            if rest <= 0:
                return best_bound, best_plan
            share = rest / (len(blocks) - m)
            out = search([priced], [], time_limit_s=share, seed=seed, clock=clock)
            if not out.replicas or not math.isfinite(out.bound):
                return best_bound, best_plan
            outs.append(out)
        usage = np.array(
            [sum(gpr * outs[m].replicas[0][g] for m, g, gpr in row.terms) for row in rows]
        )
        value = sum(o.bound for o in outs) - float(mu @ caps)
        if value > best_bound + 1e-9 * max(1.0, abs(value)):
            best_bound = value
            stall = 0
        else:
            stall += 1
            if stall >= 2:
                theta /= 2
                stall = 0
        plan = _combine(outs)
        true_obj = _plan_value_of(blocks, plan)
        plan = Outcome("feasible", plan.replicas, plan.fractions, true_obj, -math.inf, 0)
        if _pool_ok(blocks, rows, plan) and true_obj < upper:
            upper = true_obj
            best_plan = plan
        grad = usage - caps
        close = max(gap_limit * abs(upper), optimal_within(upper))
        if math.isfinite(upper) and best_bound >= upper - close:
            break
        norm = float(grad @ grad)
        if norm == 0:
            break
        gap = (upper - value) if math.isfinite(upper) else max(abs(value), 1.0) * 0.1
        mu = np.maximum(0.0, mu + theta * max(gap, 1e-9) / norm * grad)
    return best_bound, best_plan


def _plan_value_of(blocks: Sequence[Block], plan: Outcome) -> float:
    total = 0.0
    for blk, reps in zip(blocks, plan.replicas, strict=True):
        n = np.array(reps, dtype=float)
        total += float(blk.cost @ n) + blk.churn * float(np.abs(n - blk.cur).sum())
    return total


def solve_joint(
    problems: Sequence[Problem],
    pool: Pool,
    *,
    time_limit_s: float = 30.0,
    seed: int = 0,
    clock: Clock = time.perf_counter,
    gap_limit: float = JOINT_GAP,
) -> JointResult:
    """Plan several models at once against one shared pool of GPUs.

    ``pool.gpus[name]`` caps the GPUs of type ``name`` summed over all models (each model's
    own ``available_gpus`` still applies). Types absent from the pool are not shared-capped.
    The objective is the sum of the models' objectives. Once a plan is proven within
    ``gap_limit`` (relative) of the optimum, the search stops there (FEASIBLE with that
    gap unless it is 0); ``gap_limit=0`` searches until the node budget or time limit.
    """
    start = clock()
    errs = _joint_errors(problems, pool, time_limit_s, gap_limit)
    if errs:
        return JointResult(
            Status.INVALID, runtime_s=clock() - start, reason="invalid problem", errors=tuple(errs)
        )
    blocks, merged, reasons = _joint_blocks(problems, pool)
    if reasons:
        return JointResult(Status.INFEASIBLE, runtime_s=clock() - start, reason="; ".join(reasons))
    rows = _pool_rows(problems, pool)
    try:
        cells = sum(len(p.buckets) * len(p.gpus) for p in problems)
        deadline = start + time_limit_s - _reserve(time_limit_s, cells)
        out = _joint_search(problems, pool, blocks, rows, deadline, seed, clock, gap_limit)
    except NumericTrouble as exc:
        return JointResult(
            Status.NUMERIC_ERROR, runtime_s=clock() - start, reason=_numeric_reason(exc)
        )
    if isinstance(out, JointResult):
        return replace(out, runtime_s=clock() - start)
    return _joint_result(problems, pool, merged, out, start, clock)


def _joint_errors(
    problems: Sequence[Problem], pool: Pool, time_limit_s: float, gap_limit: float
) -> list[str]:
    """What makes a joint problem invalid, each naming its field (empty: valid)."""
    errs = list(_limit_errors(time_limit_s))
    if not _finite_nonneg(gap_limit) or not gap_limit < 1:
        errs.append(f"gap_limit: must be in [0, 1), got {gap_limit!r}")
    if not problems:
        errs.append("problems: no models")
    for k, p in enumerate(problems):
        try:
            errs += [
                f"problems[{k}]{'(' + p.model + ')' if p.model else ''}.{e}" for e in validate(p)
            ]
        except Exception as exc:
            errs.append(f"problems[{k}]: {exc}")
    for name, v in pool.gpus.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            errs.append(f"pool[{name}]: must be an integer >= 0, got {v!r}")
    return errs


def _joint_blocks(
    problems: Sequence[Problem], pool: Pool
) -> tuple[list[Block], list[list[list[int]]], list[str]]:
    """Each model's block (the pool's caps also bound each model on its own), its merged
    buckets, and why models cannot be planned even alone (empty: none)."""
    reasons = []
    blocks: list[Block] = []
    merged: list[list[list[int]]] = []
    for p in problems:
        extra = [
            float(pool.gpus[g.name] // g.gpus_per_replica) if g.name in pool.gpus else math.inf
            for g in p.gpus
        ]
        why = diagnose(p, extra)
        if why:
            reasons.append(f"{p.model or 'model'}: {why}")
        need, members = _merge_buckets(p)
        blocks.append(_block(p, need, extra))
        merged.append(members)
    return blocks, merged, reasons


def _pool_rows(problems: Sequence[Problem], pool: Pool) -> list[PoolRow]:
    """One row per pooled GPU type that some model uses: its GPUs summed over the models."""
    rows = []
    for name in sorted(pool.gpus):
        terms = tuple(
            (m, j, float(g.gpus_per_replica))
            for m, p in enumerate(problems)
            for j, g in enumerate(p.gpus)
            if g.name == name
        )
        if terms:
            rows.append(PoolRow(float(pool.gpus[name]), terms))
    return rows


def _joint_result(
    problems: Sequence[Problem],
    pool: Pool,
    merged: Sequence[list[list[int]]],
    out: Outcome,
    start: float,
    clock: Clock,
) -> JointResult:
    """The ``JointResult`` of the joint search's outcome, one ``Result`` per model."""
    runtime = clock() - start
    if out.status in ("infeasible", "unknown"):
        st = Status.INFEASIBLE if out.status == "infeasible" else Status.UNKNOWN
        reason = (
            _capacity_reason(problems, pool)
            if st == Status.INFEASIBLE
            else "time limit reached before any plan was found"
        )
        return JointResult(st, runtime_s=runtime, reason=reason, bound=out.bound, nodes=out.nodes)
    status = Status.OPTIMAL if out.status == "optimal" else Status.FEASIBLE
    results = tuple(
        _finish(
            p, merged[m], out.replicas[m], out.fractions[m], status, math.inf, runtime, out.nodes
        )
        for m, p in enumerate(problems)
    )
    obj = sum(r.objective for r in results)
    bound = min(out.bound, obj)
    return JointResult(
        status,
        results,
        cost_per_hour=sum(r.cost_per_hour for r in results),
        objective=obj,
        bound=bound,
        gap=_gap(obj, bound),
        runtime_s=clock() - start,  # the results' assembly included
        nodes=out.nodes,
    )


def _joint_search(
    problems: Sequence[Problem],
    pool: Pool,
    blocks: Sequence[Block],
    rows: Sequence[PoolRow],
    deadline: float,
    seed: int,
    clock: Clock,
    gap_limit: float,
) -> Outcome | JointResult:
    """Steps 1-4 of the joint search (see ``solve_joint``) within ``deadline``: the final
    outcome, or a ``JointResult`` when a step settles it (runtime filled in by the caller)."""
    alone = _each_alone(problems, pool, blocks, deadline, seed, clock)
    if isinstance(alone, JointResult):
        return alone
    lower = sum(o.bound for o in alone) if all(math.isfinite(o.bound) for o in alone) else -math.inf
    incumbent = _combine(alone) if all(o.replicas for o in alone) else None
    if incumbent is not None and not _pool_ok(blocks, rows, incumbent):
        incumbent, lower = _repair(blocks, rows, lower, deadline, seed, clock, gap_limit)
    nodes = sum(o.nodes for o in alone)
    exact = settled = False
    if incumbent is not None and _pool_ok(blocks, rows, incumbent):
        exact = incumbent.objective <= lower + optimal_within(lower)
        settled = exact or incumbent.objective - lower <= gap_limit * abs(incumbent.objective)
    if settled and incumbent is not None:
        # proven optimal, or within the gap limit: the joint search would not pay
        return Outcome(
            "optimal" if exact else "feasible",
            incumbent.replicas,
            incumbent.fractions,
            incumbent.objective,
            incumbent.objective if exact else lower,
            nodes,
        )
    return _last_step(blocks, rows, incumbent, lower, nodes, deadline, seed, clock)


def _each_alone(
    problems: Sequence[Problem],
    pool: Pool,
    blocks: Sequence[Block],
    deadline: float,
    seed: int,
    clock: Clock,
) -> list[Outcome] | JointResult:
    """Step 1: each model alone (the pool only as a per-model cap), or the ``JointResult``
    when time runs out first or some model cannot be planned even alone.

    A relaxation, so the sum of their bounds is a valid bound, and if their plans fit the
    pool they are optimal. Each model gets an equal share of the time left, so a hard one
    cannot starve the others: a time-limited search still returns a plan and a bound."""
    alone = []
    for m, blk in enumerate(blocks):
        rest = deadline - clock()
        if rest <= 0:
            return JointResult(Status.UNKNOWN, reason=TIME_OUT)
        share = rest / (len(blocks) - m)
        alone.append(search([blk], [], time_limit_s=share, seed=seed, clock=clock))
    if any(o.status == "infeasible" for o in alone):
        bad = [
            problems[m].model or f"problems[{m}]"
            for m, o in enumerate(alone)
            if o.status == "infeasible"
        ]
        return JointResult(
            Status.INFEASIBLE,
            reason=f"{', '.join(bad)}: "
            + _capacity_reason(
                [problems[m] for m, o in enumerate(alone) if o.status == "infeasible"], pool
            ),
        )
    return alone


def _repair(
    blocks: Sequence[Block],
    rows: Sequence[PoolRow],
    lower: float,
    deadline: float,
    seed: int,
    clock: Clock,
    gap_limit: float,
) -> tuple[Outcome | None, float]:
    """Steps 2 and 3, when the models' own plans do not fit the pool together: the best
    plan that does (None when none was found) and the best bound (at least ``lower``)."""
    # 2. plan the models one after another within what the pool has left
    incumbent = _sequential(blocks, rows, deadline, seed, clock)
    # 3. price the pooled GPUs (Lagrangian relaxation of the pool rows): a better bound,
    #    and plans that may fit the pool more cheaply
    budget = clock() + 0.5 * (deadline - clock())
    lag_bound, lag_plan = _lagrangian(
        blocks, rows, incumbent, budget, seed, clock, gap_limit=gap_limit
    )
    lower = max(lower, lag_bound)
    if lag_plan is not None and (incumbent is None or lag_plan.objective < incumbent.objective):
        incumbent = lag_plan
    return incumbent, lower


def _last_step(
    blocks: Sequence[Block],
    rows: Sequence[PoolRow],
    incumbent: Outcome | None,
    lower: float,
    nodes: int,
    deadline: float,
    seed: int,
    clock: Clock,
) -> Outcome:
    """Step 4: the joint search from the best plan so far (``nodes`` spent before it): a
    bounded column-generation search when there is one (a full MIP rarely finds a better
    pooled plan), the full search otherwise. Its bound is at least ``lower``."""
    rest = deadline - clock()
    if rest <= 0 and incumbent is not None and _pool_ok(blocks, rows, incumbent):
        out = Outcome(
            "feasible",
            incumbent.replicas,
            incumbent.fractions,
            incumbent.objective,
            lower,
            nodes,
        )
    elif incumbent is not None:
        out = branch_and_bound(
            blocks,
            rows,
            time_limit_s=rest,
            seed=seed,
            clock=clock,
            max_nodes=JOINT_NODES,
            incumbent=incumbent,
        )
    else:
        out = search(blocks, rows, time_limit_s=rest, seed=seed, clock=clock)
    if out.replicas and math.isfinite(lower) and out.status == "feasible":
        out = with_bound(out, max(out.bound, lower))
    elif not out.replicas and out.status == "unknown":
        out = Outcome("unknown", (), (), math.nan, max(out.bound, lower), out.nodes)
    return out


def single_type_plans(problem: Problem) -> dict[str, Result]:
    """For each GPU type, the plan that serves all load on that type alone.

    The other types stay at their minimum replicas. INFEASIBLE when the type cannot serve
    some loaded bucket or its caps are too low. Assumes a valid problem.
    """
    out: dict[str, Result] = {}
    usable = 1.0 - problem.headroom
    for j, g in enumerate(problem.gpus):
        loaded = [i for i, r in enumerate(problem.load) if r > 0]
        bad = [problem.buckets[i].label() for i in loaded if g.rates[i] <= 0]
        if bad:
            out[g.name] = _fail(
                problem, Status.INFEASIBLE, 0.0, f"{g.name} cannot serve bucket(s) {'; '.join(bad)}"
            )
            continue
        need = sum(problem.load[i] / g.rates[i] for i in loaded)
        n = max(g.min_replicas, math.ceil(need / (usable * (1 + LOAD_TOL))) if need else 0)
        cap = g.replica_cap()
        if cap is not None and n > cap:
            out[g.name] = _fail(
                problem,
                Status.INFEASIBLE,
                0.0,
                f"{g.name} alone needs {n} replicas, {_cap_text(g)} allows {cap}",
            )
            continue
        reps = [n if k == j else o.min_replicas for k, o in enumerate(problem.gpus)]
        if any(
            o.replica_cap() is not None and reps[k] > (o.replica_cap() or 0)
            for k, o in enumerate(problem.gpus)
        ):
            out[g.name] = _fail(problem, Status.INFEASIBLE, 0.0, "minimums exceed caps")
            continue
        frac = np.zeros((len(problem.buckets), len(problem.gpus)))
        for i in loaded:
            frac[i, j] = 1.0
        members = [[i] for i in range(len(problem.buckets))]
        out[g.name] = _finish(problem, members, tuple(reps), frac, Status.OPTIMAL, math.inf, 0.0, 0)
    return out
