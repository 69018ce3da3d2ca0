"""Helpers for the optimizer tests: an independent feasibility check and a brute force."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from ortools.linear_solver import pywraplp

from gpumix.optimizer import Bucket, GpuOption, Problem, Result
from gpumix.optimizer._engine import (
    INT_TOL,
    Block,
    FloatArray,
    Outcome,
    PoolRow,
    add_churn,
    clean_split,
    plan_value,
)

TOL = 1e-6


def make_problem(load, rates, prices, **kw) -> Problem:
    """``rates[g][b]``; keyword args per type as lists (gpr, avail, mins, maxs, cur)."""
    nb, ng = len(load), len(prices)
    gpr = kw.pop("gpr", [1] * ng)
    avail = kw.pop("avail", [None] * ng)
    mins = kw.pop("mins", [0] * ng)
    maxs = kw.pop("maxs", [None] * ng)
    cur = kw.pop("cur", [0] * ng)
    gpus = tuple(
        GpuOption(
            f"g{j}",
            tuple(float(x) for x in rates[j]),
            float(prices[j]),
            gpr[j],
            avail[j],
            mins[j],
            maxs[j],
            cur[j],
        )
        for j in range(ng)
    )
    buckets = tuple(Bucket(16 * (i + 1), 8 * (i + 1)) for i in range(nb))
    return Problem(buckets, tuple(float(x) for x in load), gpus, **kw)


def check_plan(problem: Problem, result: Result) -> None:
    """Recheck every constraint of a returned plan from its numbers alone."""
    assert set(result.replicas) == {g.name for g in problem.gpus}
    usable = 1.0 - problem.headroom
    assert len(result.assignment) == len(problem.buckets)
    loads = [0.0] * len(problem.gpus)
    for i, row in enumerate(result.assignment):
        assert all(x >= 0 for x in row)
        if problem.load[i] > 0:
            assert abs(sum(row) - 1.0) <= 1e-6, (i, row)
        for j, x in enumerate(row):
            if x > 0:
                assert problem.gpus[j].rates[i] > 0, "load routed to a type that cannot serve it"
                loads[j] += problem.load[i] * x / problem.gpus[j].rates[i]
    cost = 0.0
    for j, g in enumerate(problem.gpus):
        n = result.replicas[g.name]
        assert isinstance(n, int)
        assert n >= g.min_replicas
        if g.max_replicas is not None:
            assert n <= g.max_replicas
        if g.available_gpus is not None:
            assert n * g.gpus_per_replica <= g.available_gpus
        assert loads[j] <= n * usable * (1 + TOL) + 1e-9, (g.name, loads[j], n)
        cost += n * g.price_per_hour * g.gpus_per_replica
    assert math.isclose(cost, result.cost_per_hour, rel_tol=1e-9, abs_tol=1e-9)


def _need(problem: Problem) -> list[list[float]]:
    out = []
    for i, r in enumerate(problem.load):
        if r > 0:
            out.append([r / g.rates[i] if g.rates[i] > 0 else math.inf for g in problem.gpus])
    return out


def fits(need: list[list[float]], caps: list[float]) -> bool:
    """Exact (up to TOL) feasibility of a fractional split, by Farkas' lemma.

    Infeasible iff some weights w >= 0 (sum 1) give sum_b min_g w_g need[b][g] > w . caps.
    That concave function peaks at a vertex of the arrangement of the lines
    w_g need[b][g] = w_h need[b][h] and w_g = 0 inside the simplex; up to 3 types only.
    """
    ng = len(caps)
    if any(all(math.isinf(x) for x in row) for row in need):
        return False
    if not need:
        return True
    assert ng <= 3
    if ng == 1:
        return sum(row[0] for row in need) <= caps[0] * (1 + TOL) + 1e-9
    # hyperplanes as coefficient vectors c with c . w = 0
    planes: list[list[float]] = []
    for g in range(ng):
        e = [0.0] * ng
        e[g] = 1.0
        planes.append(e)
    for row in need:
        for g, h in itertools.combinations(range(ng), 2):
            if math.isfinite(row[g]) and math.isfinite(row[h]):
                c = [0.0] * ng
                c[g], c[h] = row[g], -row[h]
                planes.append(c)
    points: list[list[float]] = []
    if ng == 2:
        for c in planes:  # c0 w0 + c1 w1 = 0, w0 + w1 = 1
            den = c[0] - c[1]
            if abs(den) > 1e-15:
                w0 = -c[1] / den
                points.append([w0, 1 - w0])
    else:
        for c, d in itertools.combinations(planes, 2):
            m = [c, d, [1.0, 1.0, 1.0]]
            det = _det3(m)
            if abs(det) < 1e-15:
                continue
            points.append(_solve3(m, [0.0, 0.0, 1.0], det))
    scale = sum(min(x for x in row if math.isfinite(x)) for row in need) + sum(caps) + 1.0
    for w in points:
        if any(x < -1e-12 for x in w):
            continue
        w = [max(x, 0.0) for x in w]
        phi = 0.0
        for row in need:
            phi += min(w[g] * row[g] if math.isfinite(row[g]) else math.inf for g in range(ng))
        if phi - sum(w[g] * caps[g] for g in range(ng)) > 1e-7 * scale:
            return False
    return True


def _det3(m: list[list[float]]) -> float:
    return (
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    )


def _solve3(m: list[list[float]], rhs: list[float], det: float) -> list[float]:
    out = []
    for k in range(3):
        mk = [row[:] for row in m]
        for r in range(3):
            mk[r][k] = rhs[r]
        out.append(_det3(mk) / det)
    return out


def brute_force(problem: Problem) -> float | None:
    """Least objective over every replica vector in the box, or None when none fits."""
    need = _need(problem)
    usable = 1.0 - problem.headroom
    ranges = []
    for j, g in enumerate(problem.gpus):
        total = sum(row[j] for row in need if math.isfinite(row[j]))
        hi = max(g.min_replicas, g.current_replicas, math.ceil(total / usable) + 1)
        cap = g.replica_cap()
        if cap is not None:
            hi = min(hi, cap)
        ranges.append(range(g.min_replicas, hi + 1))
    best: float | None = None
    for ns in itertools.product(*ranges):
        obj = sum(
            n * g.replica_cost + problem.churn_weight * abs(n - g.current_replicas)
            for n, g in zip(ns, problem.gpus, strict=True)
        )
        if best is not None and obj >= best - 1e-12:
            continue
        if fits(need, [n * usable for n in ns]):
            best = obj
    return best


def full_mip(
    blocks: Sequence[Block],
    pools: Sequence[PoolRow],
    *,
    time_limit_s: float,
    hint: Outcome | None,
) -> Outcome:
    """The same model as one MIP on HiGHS (all columns at once): an independent reference
    for the search's optimum (HiGHS's time limit is not kept while OR-Tools hands it a
    large model, so the product does not use it)."""
    s = pywraplp.Solver.CreateSolver("HIGHS")
    if s is None:  # pragma: no cover - HiGHS ships with OR-Tools
        return Outcome("unknown", (), (), math.nan, -math.inf, 0)
    s.SuppressOutput()
    # keeps HiGHS from printing its banner on stdout (the call reports False all the same)
    s.SetSolverSpecificParametersAsString("output_flag=false")
    inf = s.infinity()
    obj = s.Objective()
    obj.SetMinimization()
    ns: list[list[pywraplp.Variable]] = []
    cols: list[list[tuple[int, int, pywraplp.Variable]]] = []
    for blk in blocks:
        g_count = blk.cost.size
        n = []
        for g in range(g_count):
            ub = float(blk.ub[g]) if math.isfinite(blk.ub[g]) else inf
            v = s.IntVar(float(blk.lb[g]), ub, "")
            obj.SetCoefficient(v, float(blk.cost[g]))
            n.append(v)
            if blk.churn > 0:
                add_churn(s, obj, v, float(blk.cur[g]), blk.churn)
        caps = []
        for g in range(g_count):
            row = s.Constraint(-inf, 0.0)
            row.SetCoefficient(n[g], -blk.usable)
            caps.append(row)
        block_cols: list[tuple[int, int, pywraplp.Variable]] = []
        for b in range(blk.need.shape[0]):
            row = s.Constraint(1.0, 1.0)
            for gi in np.nonzero(np.isfinite(blk.need[b]))[0].tolist():
                f = s.NumVar(0.0, 1.0, "")
                row.SetCoefficient(f, 1.0)
                caps[gi].SetCoefficient(f, float(blk.need[b, gi]))
                block_cols.append((b, gi, f))
        ns.append(n)
        cols.append(block_cols)
    for pool in pools:
        row = s.Constraint(-inf, pool.capacity)
        for m, g, gpr in pool.terms:
            row.SetCoefficient(ns[m][g], gpr)
    # (no SetHint: it crashes the HiGHS wrapper of this OR-Tools release)
    if hint is not None and hint.replicas and math.isfinite(hint.objective):
        # any better plan must beat the incumbent: a valid objective cut
        cut = s.Constraint(-inf, hint.objective)
        for v, c in ((v, obj.GetCoefficient(v)) for v in s.variables()):
            if c:
                cut.SetCoefficient(v, c)
    params = pywraplp.MPSolverParameters()
    params.SetDoubleParam(params.RELATIVE_MIP_GAP, 1e-9)
    s.SetTimeLimit(max(1, int(min(max(time_limit_s, 0.0), 1e6) * 1000)))
    st = s.Solve(params)
    if st not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        state = "infeasible" if st == pywraplp.Solver.INFEASIBLE else "unknown"
        return Outcome(state, (), (), math.nan, -math.inf, 0)
    reps = tuple(tuple(math.ceil(v.solution_value() - INT_TOL) for v in n) for n in ns)
    fracs: list[FloatArray] = []
    for m, blk in enumerate(blocks):
        f = np.zeros(blk.need.shape)
        for b, g, v in cols[m]:
            f[b, g] = max(v.solution_value(), 0.0)
        fracs.append(clean_split(f))
    value = plan_value(blocks, np.array([x for r in reps for x in r], dtype=float))
    bound = float(obj.BestBound())
    status = "optimal" if st == pywraplp.Solver.OPTIMAL else "feasible"
    if status == "optimal":
        bound = min(bound, value)
    return Outcome(status, reps, tuple(fracs), value, bound, int(s.nodes()))
