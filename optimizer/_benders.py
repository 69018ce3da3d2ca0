"""Exact search in replica-count space: a small integer master and a routing check.

Only the replica counts ``n`` are integers. A count vector can serve the load exactly when
the capacities ``usable * n`` admit a fractional routing of every bucket, and by LP duality
that holds when, for every price vector ``pi >= 0``,

    usable * sum_g pi_g n_g  >=  phi(pi) = sum_b min_g pi_g need[b, g]

(each bucket's load placed where it is cheapest at those prices). Each ``pi`` gives a
valid cut on ``n`` alone, and ``phi`` costs one vectorised pass over the buckets.

The master is the plan's objective over the integer counts subject to the cuts found so
far, solved to optimality by CP-SAT, or by enumeration when few count vectors remain
(``_Enumeration``): a relaxation, so its optimum is a lower bound. Its solution goes to
the routing check, a column-generation LP whose columns are whole
routings (every bucket to its cheapest type at some prices) and whose rows are the
per-type capacities plus the convexity row:

- if some mix of routings fits the capacities, the master's plan is feasible, hence
  optimal, and that mix is its split;
- otherwise prices whose cut the plan violates: the check keeps the deepest cut it has
  seen (at the LP's capacity duals, or at the point it priced between those and the
  deepest prices so far), stops as soon as that cut is within 5% of the deepest one the
  LP can prove, and the cut joins the master.

CP-SAT's master answers need not be optimal: a master stops after a short slice of work
or within ``MASTER_GAP`` of its bound, and its answer is checked together with its
earlier (costlier) solutions; each that does not fit adds its cut in the same round, each
that fits is a plan. Once a plan is known, the master seeks only cheaper ones (an
objective cutoff), so a master with no solution proves the best plan optimal. A master
gets its whole remaining budget only after a plan was found or its slice found nothing.
The search ends when the bound reaches the best plan.

Plans also come from mixes of routings: with the CP-SAT master, after ``MIX_CALM``
rounds without a cheaper plan, a small MIP (SCIP) seeks the cheapest counts whose
capacities carry a convex mix of the newest routings the check has priced, and its
answer is checked like a master's (``_Search.mix``; its limits count rounds and SCIP's
nodes, so a search that finishes is deterministic).

The search starts from a plan (every bucket on its cheapest type per request) and runs
until the bound reaches the best plan or the deadline; a stopped search returns its best
plan and bound. (Round and effort caps exist for tests only.)

Exactness: cuts are scaled to integers with their coefficients rounded *up* (valid, as
counts are non-negative) and the right-hand side rounded up to the next integer after a
relative margin of 1e-12 against float error (valid, as the left side is an integer).
CP-SAT's objective is scaled to integers, and the bound reported is the master's optimum
minus the largest error that scaling allows, so it stays a proven lower bound; the
enumeration compares plans in their float costs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import numpy.typing as npt
from ortools.linear_solver import pywraplp
from ortools.sat.python import cp_model

from gpumix.optimizer._engine import (
    Block,
    FloatArray,
    NumericTrouble,
    Outcome,
    add_churn,
    clean_split,
    glop,
    optimal_within,
    out_of_time,
    plan_value,
    solve_lp,
    time_limit_ms,
    with_bound,
)

CUT_SCALE = 1e6  # integer scale of cut coefficients (prices normalised to at most 1)
DEEP_ENOUGH = 0.95  # stop the routing check once a cut is this close to the deepest
MAX_CHECK_ROUNDS = 2_000  # pricing rounds of one routing check (a bound, not a tuning)
MAX_COLUMNS = 150  # routing columns kept across checks (see _Routing)
FEAS_TOL = 1e-9  # overflow (replicas) below which a plan fits
SMOOTHING = 0.3  # weight of the deepest prices so far in the next pricing point (_Routing)


@dataclass
class _Check:
    """Result of the routing check of one count vector."""

    fits: bool
    prices: FloatArray  # violated-cut prices when it does not fit
    split: FloatArray | None  # bucket x type fractions when it fits


class _Cells:
    """A model's bucket x type cells, laid out to price every bucket at once."""

    def __init__(self, need: FloatArray) -> None:
        self.fin = np.isfinite(need)
        self.need: FloatArray = np.where(self.fin, need, 0.0)  # finite: 0 where it cannot
        self.barred: FloatArray = np.where(self.fin, 0.0, np.inf)  # added: inf where it cannot
        self.rows = np.arange(need.shape[0])
        self._work: FloatArray = np.empty_like(self.need)

    def cheapest(self, prices: FloatArray) -> tuple[float, npt.NDArray[np.intp], FloatArray]:
        """phi(prices), the routing that attains it (every bucket to its cheapest type at
        those prices; ties to the first type), and that routing's load per type."""
        w = np.multiply(self.need, prices, out=self._work)
        w += self.barred
        route = w.argmin(axis=1)
        val = float(w[self.rows, route].sum())
        load: FloatArray = np.bincount(
            route, weights=self.need[self.rows, route], minlength=self.need.shape[1]
        ).astype(float)
        return val, route, load


def _base_prices(blk: Block) -> FloatArray:
    """The replica prices, free types priced at 1 (a zero price would route nothing)."""
    out: FloatArray = np.where(blk.cost > 0, blk.cost, 1.0)
    return out


class _Routing:
    """The routing LP over whole-routing columns; kept across checks (columns are valid
    for every count vector, only the capacity right-hand sides change).

    A solve through ``pywraplp`` costs time in proportion to the LP's columns, whatever
    changed (measured: 3.6 ms for 3,000 columns and 13 rows, even with nothing changed),
    and near-tied prices make thousands of them. So before a check, an LP that has grown
    to ``MAX_COLUMNS`` is rebuilt with the columns its last solution uses and the newest
    half; within a check columns are only added, so each check converges as before, and
    a dropped routing that is needed again is priced back in. GLOP's presolve is off:
    on an LP of one row per type it cost more than it saved. Without it GLOP can fail on
    routings of very unequal loads (16 x 2000 `capacity` seed 3 of the benchmark's
    generator: ABNORMAL after 0.5 s); the LP is then rebuilt with presolve and the dual
    simplex, which it keeps for the rest of the search, and the check goes on (rebuilt
    with presolve alone it failed again on that instance). GLOP also failed on warm
    starts of LPs it solved at once when built afresh with the same columns (16 x 2000
    `capacity` seed 4): any failure of a warm LP rebuilds it; only a fresh LP that fails
    with presolve and the dual simplex is numeric trouble.

    Each check maximises ``phi(p) - p . cap`` over prices in ``[0, 1]`` by adding
    routings (Kelley's cutting planes on that concave function), which zig-zags: 55 LP
    solves per check on 16 x 2000 `tied` seed 4. So each round also prices the point
    ``SMOOTHING`` of the way from the LP's duals to the deepest prices so far (dual
    smoothing) and adds its routing when it improves the LP (otherwise the duals' own):
    34 LP solves per check there (docs/optimizer.md has the timings). The check returns
    the deepest prices it saw."""

    def __init__(self, cells: _Cells, usable: float, start_prices: FloatArray, seed: int):
        self.cells = cells
        self.usable = usable
        b_count, g_count = cells.need.shape
        self.rows_b = np.arange(b_count)
        self.seed = seed
        self.fallback = False  # rebuilt with presolve and the dual simplex (``check``)
        self.cap = np.zeros(g_count)
        self.routes: list[npt.NDArray[np.intp]] = []
        self.loads: list[FloatArray] = []
        self.archive: dict[bytes, FloatArray] = {}  # every routing's load, oldest first (mixes)
        self._build()
        _, route, load = self.cells.cheapest(start_prices)
        self._add(route, load)

    def _build(self) -> None:
        """A fresh LP with the current capacities and the columns in ``routes``."""
        s = glop(self.seed, presolve=self.fallback, dual=self.fallback)
        self.s = s
        self.fresh = True  # not solved yet: a failure now is not the warm start's
        inf = s.infinity()
        self.inf = inf
        obj = s.Objective()
        obj.SetMinimization()
        self.obj = obj
        self.caps: list[pywraplp.Constraint] = []
        for g in range(self.cells.need.shape[1]):
            over = s.NumVar(0.0, inf, "")
            obj.SetCoefficient(over, 1.0)
            row = s.Constraint(-inf, float(self.cap[g]))
            row.SetCoefficient(over, -1.0)
            self.caps.append(row)
        self.conv = s.Constraint(1.0, 1.0)
        self.lams: list[pywraplp.Variable] = []
        self.seen: set[bytes] = set()
        routes, loads = self.routes, self.loads
        self.routes, self.loads = [], []
        for route, load in zip(routes, loads, strict=True):
            self._add(route, load)

    def _add(self, route: npt.NDArray[np.intp], load: FloatArray) -> None:
        self.seen.add(route.tobytes())
        self.archive.setdefault(load.tobytes(), load)
        lam = self.s.NumVar(0.0, self.inf, "")
        self.conv.SetCoefficient(lam, 1.0)
        for g in np.nonzero(load)[0].tolist():
            self.caps[g].SetCoefficient(lam, float(load[g]))
        self.routes.append(route)
        self.loads.append(load)
        self.lams.append(lam)

    def _prune(self) -> None:
        """Rebuild an LP grown to ``MAX_COLUMNS`` with the columns its last solution
        uses and the newest half."""
        if len(self.routes) < MAX_COLUMNS:
            return
        used = {i for i, lam in enumerate(self.lams) if lam.solution_value() > 0}
        newest = range(len(self.routes) - MAX_COLUMNS // 2, len(self.routes))
        keep = sorted(used.union(newest))
        self.routes = [self.routes[i] for i in keep]
        self.loads = [self.loads[i] for i in keep]
        self._build()

    def check(self, n: FloatArray, deadline: float, clock: Callable[[], float]) -> _Check | None:
        """None when the deadline came first; ``NumericTrouble`` when the LP failed."""
        self._prune()
        cap = self.usable * n
        self.cap = cap
        for g, row in enumerate(self.caps):
            row.SetBounds(-self.inf, float(cap[g]))
        best_prices, best_violation = None, -math.inf  # the deepest cut seen in this check
        for _ in range(MAX_CHECK_ROUNDS):
            if clock() >= deadline:
                return None
            st = solve_lp(self.s, deadline, clock)
            if st != pywraplp.Solver.OPTIMAL:
                if out_of_time(deadline, clock):
                    return None
                if not (self.fresh and self.fallback):  # a fresh LP, presolved, dual
                    self.fallback = True
                    self._build()
                    continue
                raise NumericTrouble(
                    f"the routing check LP failed (GLOP status {st}) before the time limit"
                )
            self.fresh = False
            over = float(self.obj.Value())
            prices = np.clip(np.array([-r.dual_value() for r in self.caps]), 0.0, 1.0)
            if over <= FEAS_TOL:
                return _Check(True, prices, self._split())
            # a routing improves the LP when it costs less than this at the duals
            improving = float(self.conv.dual_value())
            improving -= 1e-9 * max(1.0, abs(improving))
            val, route, load = self.cells.cheapest(prices)
            violation = val - float(prices @ cap)
            if violation > best_violation:
                best_prices, best_violation = prices, violation
            if best_violation > 1e-9 * max(1.0, val) and best_violation >= DEEP_ENOUGH * over:
                assert best_prices is not None
                return _Check(False, best_prices, None)
            if val >= improving or route.tobytes() in self.seen:
                # converged (or no new routing): the overflow is real, these prices cut n
                if violation > 1e-9 * max(1.0, val):
                    return _Check(False, prices, None)
                raise NumericTrouble(  # pragma: no cover
                    "the routing check LP reports an overflow that no price confirms"
                )
            if best_prices is not prices:
                assert best_prices is not None
                mid = SMOOTHING * best_prices + (1 - SMOOTHING) * prices
                val_m, route_m, load_m = self.cells.cheapest(mid)
                violation_m = val_m - float(mid @ cap)
                if violation_m > best_violation:
                    best_prices, best_violation = mid, violation_m
                if float(prices @ load_m) < improving and route_m.tobytes() not in self.seen:
                    route, load = route_m, load_m
            self._add(route, load)
        raise NumericTrouble(  # pragma: no cover
            f"the routing check did not converge in {MAX_CHECK_ROUNDS} rounds"
        )

    def _split(self) -> FloatArray:
        f = np.zeros(self.cells.need.shape)
        for route, lam in zip(self.routes, self.lams, strict=True):
            w = lam.solution_value()
            if w > 0:
                f[self.rows_b, route] += w
        return clean_split(f)


def _useful_caps(blk: Block, cells: _Cells) -> FloatArray:
    """Counts no optimal plan exceeds.

    Above all the load a type can serve, its minimum and its current count (for churn),
    a type only adds cost. And when routing every bucket to its cheapest type gives a
    plan within the caps, no better plan spends more on one type than that plan's
    objective minus every other type's minimum cost (costs and churn are >= 0).
    ``cells`` are ``blk``'s."""
    served = cells.need.sum(axis=0) / blk.usable
    useful = np.maximum(np.maximum(np.ceil(served - 1e-9), blk.lb), blk.cur)
    out: FloatArray = np.minimum(useful, blk.ub)
    if blk.need.shape[0] == 0 or not np.all(cells.fin.any(axis=1)):
        return out
    _, _, load = cells.cheapest(blk.cost)
    plan = np.maximum(blk.lb, np.ceil(load / blk.usable - 1e-9))
    if np.any(plan > out):
        return out
    upper = plan_value([blk], plan)
    spare = upper - float(blk.cost @ blk.lb)
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(blk.cost > 0, np.floor(spare / blk.cost + 1e-9), np.inf)
    tight: FloatArray = np.minimum(out, blk.lb + np.maximum(room, 0.0))
    return tight


def _cheapest_plan(blk: Block, cells: _Cells) -> tuple[FloatArray, FloatArray] | None:
    """Every bucket on its cheapest type per request and the counts that carry it, when
    they are within the caps: a plan before any search (None when it breaks a cap).
    ``cells`` are ``blk``'s."""
    if blk.need.shape[0] == 0 or not np.all(cells.fin.any(axis=1)):
        return None
    _, route, load = cells.cheapest(blk.cost)
    n: FloatArray = np.maximum(blk.lb, np.ceil(load / blk.usable - 1e-9))
    if np.any(n > blk.ub):
        return None
    split: FloatArray = np.zeros(blk.need.shape)
    split[np.arange(blk.need.shape[0]), route] = 1.0
    return n, split


def _start_prices(blk: Block) -> list[FloatArray]:
    """Cheap first cuts: the replica prices, each type alone, and each price halved and
    doubled (they describe the feasible region around the cost-optimal routing)."""
    g_count = blk.cost.size
    base = _base_prices(blk)
    out = [base.copy()]
    out += [np.eye(g_count)[g] for g in range(g_count)]
    for g in range(g_count):
        for factor in (0.5, 2.0):
            p = base.copy()
            p[g] *= factor
            out.append(p)
    return out


def _objective_scale(blk: Block, caps: FloatArray) -> tuple[float, float]:
    """A scale that makes the objective integer for CP-SAT, and the most its rounding can
    misstate a plan's objective: prices with up to nine decimals scale with (almost) no
    error; otherwise the largest plan is scaled to 1e12 and the error is bounded."""
    values = np.array([float(c) for c in blk.cost] + [float(blk.churn)])
    top_plan = float(blk.cost @ caps) + blk.churn * float(np.maximum(caps, blk.cur).sum())
    units = float(caps.sum()) + (float(np.maximum(caps, blk.cur).sum()) if blk.churn else 0.0)
    for k in range(10):
        s = 10.0**k
        if top_plan * s >= 2.0**52:
            break
        dev = float(np.abs(values * s - np.round(values * s)).max())
        if dev <= 1e-6:
            return s, dev / s * units
    s = 1e12 / max(top_plan, 1.0)
    return s, 0.5 / s * units


# Most master answers do not fit, and for a cut any answer close to the optimum serves
# as well as the optimum itself. So a master stops after a short slice of work
# (deterministic time), or once its answer is within a relative gap of its bound.
# Measured on 8 x 300 instances (8 seeds): the slice takes about 2.5x less master work
# than stopping at the gap alone and 15-20% less time; 16 x 2000 is no slower.
MASTER_SLICE = 2e-4
MASTER_GAP = 1e-3
# The master's earlier (costlier) solutions checked after its answer, newest first: each
# that does not fit gives a cut in the same round, each that fits is a plan.
POOL_CHECKS = 8
ENUM_MAX = 100_000  # count vectors (all but the last type) the exact master may scan


def _grid_size(lb: FloatArray, caps: FloatArray) -> float:
    """How many count vectors the enumerating master scans: every count of every type
    but the one with the widest range, which is computed."""
    if not lb.size:
        return 0.0
    widths = caps - lb + 1
    return float(np.prod(widths) / widths.max()) if widths.max() > 0 else 0.0


class _Enumeration:
    """The master by enumeration, for few types with small counts: every vector of the
    counts of all types but the one with the widest range, whose count is the least the
    cuts allow, or the current count when churn makes that cheaper (its cost is convex).
    Exact, in float costs, no scaling; ties go to the first vector in lexicographic
    order. The grid is built once; each cut updates it in one vectorised step."""

    def __init__(self, blk: Block, caps: FloatArray) -> None:
        g_count = blk.cost.size
        last_type = int(np.argmax(caps - blk.lb))
        self.perm = np.array([g for g in range(g_count) if g != last_type] + [last_type])
        lb = blk.lb[self.perm].astype(np.int64)
        self.top = int(caps[self.perm][-1])
        axes = [
            np.arange(lb[g], int(caps[self.perm][g]) + 1, dtype=np.int64)
            for g in range(g_count - 1)
        ]
        self.grid = (
            np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, g_count - 1)
            if axes
            else np.zeros((1, 0), dtype=np.int64)
        )
        self.ok = np.ones(self.grid.shape[0], dtype=bool)
        self.last = np.full(self.grid.shape[0], lb[-1], dtype=np.int64)
        cost, cur = blk.cost[self.perm], blk.cur[self.perm]
        self.cost_last, self.cur_last, self.churn = float(cost[-1]), float(cur[-1]), blk.churn
        self.head = self.grid @ cost[:-1] + blk.churn * np.abs(self.grid - cur[:-1]).sum(axis=1)
        self.seen = 0

    def best(self, cuts: list[tuple[list[int], int]]) -> tuple[FloatArray, float] | None:
        """The optimum under ``cuts`` (a list that only grows); None when none fits."""
        for coef, rhs in cuts[self.seen :]:
            c = np.array(coef, dtype=np.int64)[self.perm]
            rest = rhs - self.grid @ c[:-1]
            if c[-1] > 0:
                self.last = np.maximum(self.last, -((-rest) // c[-1]))
            else:
                self.ok &= rest <= 0
        self.seen = len(cuts)
        ok = self.ok & (self.last <= self.top)
        if not np.any(ok):
            return None
        low = self.last.astype(float)
        alt = np.clip(np.maximum(low, self.cur_last), low, float(self.top))

        def tail(x: FloatArray) -> FloatArray:
            out: FloatArray = self.cost_last * x + self.churn * np.abs(x - self.cur_last)
            return out

        best_last = np.where(tail(alt) < tail(low), alt, low)
        value = np.where(ok, self.head + tail(best_last), np.inf)
        i = int(np.argmin(value))
        n = np.empty(self.perm.size)
        n[self.perm] = np.append(self.grid[i].astype(float), best_last[i])
        return n, float(value[i])


@dataclass
class _MasterAnswer:
    """One CP-SAT master solve."""

    state: str  # "solved" (within the gap), "infeasible" or "stopped"
    counts: FloatArray | None  # the best count vector found
    bound: float  # proven lower bound on every plan (-inf when none)
    effort: float  # deterministic time spent
    pool: list[FloatArray]  # every improving solution found, in order (the last is counts)


class _CpsatMaster:
    """The master on CP-SAT, kept across rounds: each new cut, and each cheaper plan
    found (as an objective cutoff), adds one row; nothing is rebuilt."""

    def __init__(self, blk: Block, caps: FloatArray, scale: float, rounding: float, seed: int):
        self.scale, self.rounding, self.seed = scale, rounding, seed
        lb = blk.lb
        m = cp_model.CpModel()
        self.m = m
        self.ns = [m.new_int_var(int(lb[g]), int(caps[g]), f"n{g}") for g in range(blk.cost.size)]
        icost = [round(float(c) * scale) for c in blk.cost]
        ichurn = round(blk.churn * scale)
        variables: list[cp_model.IntVar] = list(self.ns)
        weights = icost[:]
        if blk.churn > 0 and ichurn:
            for g, v in enumerate(self.ns):
                cur = int(blk.cur[g])
                d = m.new_int_var(0, max(int(caps[g]) - cur, cur - int(lb[g]), 0), f"d{g}")
                m.add(d >= v - cur)
                m.add(d >= cur - v)
                variables.append(d)
                weights.append(ichurn)
        self.objective = cp_model.LinearExpr.weighted_sum(variables, weights)
        m.minimize(self.objective)
        self.rows = 0

    def add_cuts(self, cuts: list[tuple[list[int], int]]) -> None:
        """The cuts not yet in the model (``cuts`` only grows)."""
        for coef, rhs in cuts[self.rows :]:
            self.m.add(cp_model.LinearExpr.weighted_sum(self.ns, coef) >= rhs)
        self.rows = len(cuts)

    def below(self, value: float) -> None:
        """Seek only plans cheaper than ``value`` by more than the optimality tolerance
        (``optimal_within``): each of those has a scaled objective at most this limit (the
        scaling misstates a plan by at most ``rounding``). When the scaling is finer than
        the tolerance, plans that cost ``value`` are excluded too."""
        limit = (value - optimal_within(value) + self.rounding) * self.scale
        self.m.add(self.objective <= math.ceil(limit) - 1)

    def solve(self, hint: list[int] | None, seconds: float, effort: float) -> _MasterAnswer:
        """Solve until the relative gap is at most ``MASTER_GAP`` or ``effort`` is spent."""
        self.m.clear_hints()  # type: ignore[no-untyped-call]  # (untyped in OR-Tools)
        if hint is not None:
            for v, h in zip(self.ns, hint, strict=True):
                self.m.add_hint(v, h)
        pool: list[FloatArray] = []
        ns = self.ns

        class _Pool(cp_model.CpSolverSolutionCallback):
            def on_solution_callback(self) -> None:
                pool.append(np.array([float(self.value(v)) for v in ns]))

        solver = cp_model.CpSolver()
        solver.parameters.num_workers = 1
        solver.parameters.random_seed = int(self.seed) % (2**31)
        solver.parameters.max_time_in_seconds = max(seconds, 0.001)
        solver.parameters.max_deterministic_time = max(effort, 1e-6)
        solver.parameters.relative_gap_limit = MASTER_GAP
        # one row per cut over a handful of counts: presolving cost more than the search
        solver.parameters.cp_model_presolve = False
        status = solver.solve(self.m, _Pool())
        used = float(solver.response_proto.deterministic_time)
        if status == cp_model.MODEL_INVALID:
            raise NumericTrouble(
                "CP-SAT rejected the count-space master: "
                + (self.m.validate() or "integer coefficients out of range")
            )
        if status == cp_model.INFEASIBLE:
            return _MasterAnswer("infeasible", None, -math.inf, used, [])
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return _MasterAnswer("stopped", None, -math.inf, used, [])
        low = solver.best_objective_bound / self.scale - self.rounding
        state = "solved" if status == cp_model.OPTIMAL else "stopped"
        return _MasterAnswer(state, pool[-1] if pool else None, low, used, pool)


def benders(
    blk: Block,
    *,
    time_limit_s: float,
    seed: int,
    clock: Callable[[], float],
    max_rounds: int | None = None,
    master_effort: float = math.inf,
) -> Outcome:
    """Solve one model exactly in count space (see the module docstring).

    Returns "optimal" or "infeasible" when finished; when the time limit (or a round or
    effort limit, for tests) stops it, "feasible" with the best plan and the best proven
    bound, or "unknown" with that bound when no plan was found. Raises
    ``NumericTrouble`` when a solver fails on the numbers."""
    start = clock()
    deadline = start + max(time_limit_s, 0.0)
    cells = _Cells(blk.need)
    caps = _useful_caps(blk, cells)
    if np.any(blk.lb > caps):
        return Outcome("infeasible", (), (), math.nan, math.nan, 0)
    enumerate_counts = _grid_size(blk.lb, caps) <= ENUM_MAX
    routing = _Routing(cells, blk.usable, _base_prices(blk), seed)
    search = _Search(blk, routing, deadline, clock, caps=caps, seed=seed)
    for prices in _start_prices(blk):
        search.add_cut(prices)
    if enumerate_counts:
        search.enumeration = _Enumeration(blk, caps)
    else:
        search.master = _CpsatMaster(blk, caps, *_objective_scale(blk, caps), seed)
    start_plan = _cheapest_plan(blk, cells)
    if start_plan is not None:  # a plan from the start: a limit never leaves none
        search.found(*start_plan)
    while max_rounds is None or search.rounds < max_rounds:
        if search.settled():
            break
        remaining = deadline - clock()
        if remaining <= 0 or search.effort >= master_effort:
            break
        search.rounds += 1
        step = search.ask_master(remaining, master_effort)
        if step == "infeasible":
            return Outcome("infeasible", (), (), math.nan, math.nan, search.rounds)
        if step == "stop":
            break
        if step == "again":
            continue
        n, others = step
        if not search.examine(n, others):
            break
        search.mix()
    best, bound, rounds = search.best, search.bound, search.rounds
    if best is not None:
        return with_bound(replace(best, bound=bound, nodes=rounds), bound)
    return Outcome("unknown", (), (), math.nan, bound, rounds)


# The search's plans come from the master's answers that fit, and when one replica is a
# tiny part of the cost (`capacity` at 12 x 800 and up), a master that stops within its
# gap proposes count vectors anywhere in a band of near-equal costs and the cheapest plan
# may not come for thousands of rounds: 12 x 800 `capacity` seed 3002 of the benchmark's
# generator found 2155.989 and stopped at 20 s, while with that search given the optimum
# 2154.83 at the start it proves it in 0.4 s. The routings the routing check has priced
# span the splits of the plans near the optimum, so a small MIP over mixes of them finds
# such plans (there in 0.2 s, from the routings of the first 50 rounds).
MIX_CALM = 16  # rounds without a cheaper plan before the first mix
MIX_NODES = 100  # SCIP's node limit for the first mix (doubled after one it did not finish)
MIX_MIN_S = 0.01  # less time left than this: no mix
MIX_MARGIN = 0.01  # seconds left to the deadline after a mix (SCIP may run over a little)
# the newest routings a mix may use: SCIP's copy of the model does not watch the time
# limit, and with 10,000 routings (16 x 2000 `tied` seed 4) it ran 47 ms over it
MIX_COLUMNS = 2_000


_Candidates = tuple[FloatArray, list[FloatArray]]
"""A master's answer and its earlier solutions to check after it, newest first."""


@dataclass
class _Search:
    """The state of one count-space search: the cuts so far, the master that meets them,
    the best plan found and the bound proven."""

    blk: Block
    routing: _Routing
    deadline: float
    clock: Callable[[], float]
    caps: FloatArray  # the counts' upper limits (``_useful_caps``)
    seed: int
    enumeration: _Enumeration | None = None
    master: _CpsatMaster | None = None
    cuts: list[tuple[list[int], int]] = field(default_factory=list)
    bound: float = -math.inf
    rounds: int = 0
    effort: float = 0.0  # the CP-SAT master's deterministic time so far
    hint: list[int] | None = None
    best: Outcome | None = None  # the cheapest plan found to fit
    cutoff: float = math.inf  # the master seeks only plans cheaper than this
    patient: bool = False  # the next master gets the whole budget (after a plan, or an empty slice)
    calm_since: int = 0  # the round of the last cheaper plan, or of the last mix
    # rounds without a cheaper plan before the next mix, and SCIP's node limit for it
    mix_wait: int = field(default_factory=lambda: MIX_CALM)
    mix_nodes: int = field(default_factory=lambda: MIX_NODES)
    mix_columns: int = 0  # routings known at the last mix that SCIP finished

    def add_cut(self, prices: FloatArray) -> None:
        """The cut of ``prices`` on the counts, scaled to integers (module docstring)."""
        top = float(prices.max()) if prices.size else 0.0
        if top <= 0:
            return
        p = prices / top
        phi = self.routing.cells.cheapest(p)[0]
        if not math.isfinite(phi) or phi <= 0:
            return
        coef = [math.ceil(CUT_SCALE * self.blk.usable * float(x)) for x in p]
        rhs = math.ceil(CUT_SCALE * phi * (1 - 1e-12) - 1e-6)
        if rhs > 0:
            self.cuts.append((coef, rhs))

    def found(self, n: FloatArray, split: FloatArray) -> bool:
        """Keep a plan that fits if it is the best so far; whether it was."""
        value = plan_value([self.blk], n)
        best = self.best
        if best is not None and value >= best.objective - optimal_within(best.objective):
            return False
        reps = tuple(round(x) for x in n)
        self.best = Outcome("feasible", (reps,), (split,), value, self.bound, self.rounds)
        self.calm_since = self.rounds
        return True

    def mix(self) -> None:
        """With the CP-SAT master, after ``mix_wait`` rounds without a cheaper plan, look
        for one among the mixes of the newest ``MIX_COLUMNS`` routings seen so far
        (``_mix_plan``) and check what it finds. Every limit but the deadline counts
        rounds and SCIP's nodes, not seconds, so a search that finishes is deterministic:
        a mix that finds no cheaper plan doubles the wait, one that SCIP did not finish
        doubles its node limit, and a finished one is not repeated before new routings
        come. (The enumerating master is exact: its answers are never a band's.)"""
        best, archive = self.best, self.routing.archive
        if best is None or self.master is None or self.rounds - self.calm_since < self.mix_wait:
            return
        if len(archive) <= self.mix_columns or self.settled():
            return
        if self.deadline - self.clock() < MIX_MIN_S + MIX_MARGIN:
            return
        self.calm_since, columns = self.rounds, len(archive)
        state, n = _mix_plan(
            self.blk,
            self.caps,
            list(archive.values())[-MIX_COLUMNS:],
            best.objective,
            self.mix_nodes,
            self.deadline - MIX_MARGIN,
            self.clock,
            self.seed,
        )
        if state == "stopped":
            self.mix_nodes *= 2
        else:
            self.mix_columns = columns
        # (a mix that SCIP accepts may fit only within its tolerance: then a cut)
        cheaper = n is not None and self.candidate(n) is True
        self.mix_wait = MIX_CALM if cheaper else 2 * self.mix_wait

    def settled(self) -> bool:
        """Whether the bound has reached the best plan (proven optimal)."""
        best = self.best
        return best is not None and self.bound >= best.objective - optimal_within(best.objective)

    def ask_master(
        self, remaining: float, master_effort: float
    ) -> _Candidates | Literal["infeasible", "stop", "again"]:
        """The master's next count vectors to check, or what to do instead: "infeasible"
        (no plan exists), "stop" (the search is over) or "again" (ask once more)."""
        if self.master is None:
            assert self.enumeration is not None
            answer = self.enumeration.best(self.cuts)
            if answer is None:  # (the best plan found meets every cut, so none yet)
                return "infeasible"
            n, low = answer
            self.bound = max(self.bound, low)
            return n, []
        master = self.master
        master.add_cuts(self.cuts)
        if self.best is not None and self.best.objective < self.cutoff:
            self.cutoff = self.best.objective
            master.below(self.cutoff)
        # a short slice of work finds good candidates; proofs only when needed
        work = master_effort - self.effort
        reply = master.solve(
            self.hint, remaining, work if self.patient else min(work, MASTER_SLICE)
        )
        self.effort += reply.effort
        self.bound = max(self.bound, reply.bound)
        if reply.state == "infeasible":  # nothing fits, or nothing beats the best
            if self.best is None:
                return "infeasible"
            self.bound = self.best.objective
            return "stop"
        if reply.counts is None:  # the slice found nothing: give it all
            if self.patient:
                return "stop"
            self.patient = True
            return "again"
        self.hint = [int(x) for x in reply.counts]
        return reply.counts, reply.pool[-1 - POOL_CHECKS : -1][::-1]

    def examine(self, n: FloatArray, others: list[FloatArray]) -> bool:
        """Check the master's answer ``n``, then (when it does not fit) its earlier
        solutions ``others``: each that fits is a plan, each that does not adds its cut.
        False when the search must stop (the deadline, or a plan the cutoff cannot tell
        from the best one)."""
        result = self.routing.check(n, self.deadline, self.clock)
        if result is None:
            return False
        self.patient = False
        if result.fits:
            assert result.split is not None
            if not self.found(n, result.split):
                return False  # the cutoff cannot tell it from the best plan (coarse scaling)
            self.patient = True  # the cutoff now asks the master for cheaper plans
            return True
        self.add_cut(result.prices)
        for cand in others:  # the master's earlier solutions, newest first
            if self.candidate(cand) is None:
                break
        return True

    def candidate(self, n: FloatArray) -> bool | None:
        """Check count vector ``n`` unless a cut already rules it out: a plan when it
        fits, a cut when it does not. Whether it was a cheaper plan; None at the
        deadline."""
        if _violates(self.cuts, n):
            return False
        result = self.routing.check(n, self.deadline, self.clock)
        if result is None:
            return None
        if result.fits:
            assert result.split is not None
            return self.found(n, result.split)
        self.add_cut(result.prices)
        return False


def _mix_plan(
    blk: Block,
    caps: FloatArray,
    loads: list[FloatArray],
    below: float,
    nodes: int,
    until: float,
    clock: Callable[[], float],
    seed: int,
) -> tuple[Literal["finished", "stopped"], FloatArray | None]:
    """The cheapest counts within ``caps`` whose capacities carry some convex mix of the
    routings ``loads`` (per-type replicas of whole routings), costing less than ``below``,
    as far as SCIP finds within ``nodes`` branch-and-bound nodes and by the time ``until``:
    "finished" when SCIP proved its answer (or that there is none), "stopped" by a limit,
    with the best it found or None. A heuristic: the mixes of known routings are only
    some of the splits."""
    s = pywraplp.Solver.CreateSolver("SCIP")
    if s is None:  # pragma: no cover - SCIP ships with OR-Tools
        return "finished", None
    s.SetSolverSpecificParametersAsString(
        f"randomization/randomseedshift = {int(seed) % 2**31}\nlimits/nodes = {int(nodes)}"
    )
    g_count = blk.cost.size
    ns = [s.IntVar(float(blk.lb[g]), float(caps[g]), "") for g in range(g_count)]
    obj = s.Objective()
    limit = below - optimal_within(below) if math.isfinite(below) else s.infinity()
    cost = s.Constraint(-s.infinity(), limit)
    for g, v in enumerate(ns):
        obj.SetCoefficient(v, float(blk.cost[g]))
        cost.SetCoefficient(v, float(blk.cost[g]))
    if blk.churn > 0:
        for g, v in enumerate(ns):
            cost.SetCoefficient(add_churn(s, obj, v, float(blk.cur[g]), blk.churn), blk.churn)
    obj.SetMinimization()
    rows = [s.Constraint(-s.infinity(), 0.0) for _ in range(g_count)]
    for g, row in enumerate(rows):
        row.SetCoefficient(ns[g], -blk.usable)
    conv = s.Constraint(1.0, 1.0)
    for load in loads:
        lam = s.NumVar(0.0, 1.0, "")
        conv.SetCoefficient(lam, 1.0)
        for g in np.nonzero(load)[0].tolist():
            rows[g].SetCoefficient(lam, float(load[g]))
    if until - clock() < MIX_MIN_S:
        return "stopped", None
    s.SetTimeLimit(time_limit_ms(until, clock))
    st = s.Solve()
    state: Literal["finished", "stopped"] = (
        "finished" if st in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.INFEASIBLE) else "stopped"
    )
    if st not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        return state, None
    n = np.array([float(round(v.solution_value())) for v in ns])
    # (SCIP meets the cost row only within its tolerance)
    return state, n if plan_value([blk], n) < limit else None


def _violates(cuts: list[tuple[list[int], int]], n: FloatArray) -> bool:
    """Whether count vector ``n`` breaks one of the cuts."""
    if not cuts:
        return False
    coef = np.array([c for c, _ in cuts], dtype=float)
    rhs = np.array([r for _, r in cuts], dtype=float)
    return bool(np.any(coef @ n < rhs))
