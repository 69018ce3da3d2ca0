"""Exact branch-and-bound over replica counts, with column generation on GLOP.

Only the replica counts are integers; the split of each bucket's load across GPU types is
continuous. The node LP starts from a few columns per bucket (its cheapest types) and prices
in the others from the duals, so each node solves a small LP; rounding up the replicas of
any node LP gives a feasible plan (the same split fits), which is the incumbent heuristic.
OR-Tools objects stay inside this module.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from ortools.linear_solver import pywraplp

FloatArray = npt.NDArray[np.float64]

INT_TOL = 1e-6  # a replica count within this of an integer counts as that integer
FRAC_TOL = 1e-9  # a routed fraction below this is solver noise: dropped, the row renormalised
PRICE_TOL = 1e-9  # columns with reduced cost below -PRICE_TOL enter the LP
MAX_PRICING_ROUNDS = 10_000
# A solver call that stops without an answer counts as stopped by the time limit when the
# deadline is this close (s); earlier, it is numeric trouble (GLOP's limit is whole ms).
DEADLINE_SLACK = 0.002


class NumericTrouble(Exception):
    """A solver failed on the problem's numbers (not a time-out); the message says where."""


def time_limit_ms(deadline: float, clock: Callable[[], float]) -> int:
    """The time left until ``deadline`` in whole milliseconds, at least 1 (rounded up,
    so a solver that stops at its own limit stops at or after the deadline)."""
    return max(1, math.ceil(min(max(deadline - clock(), 0.0), 1e6) * 1000))


def solve_lp(s: pywraplp.Solver, deadline: float, clock: Callable[[], float]) -> int:
    """``s.Solve()`` within the deadline; a failure that is neither a time-out nor
    infeasibility is retried once from scratch (GLOP's warm start can stall on badly
    scaled bases). Returns the solver status."""
    s.SetTimeLimit(time_limit_ms(deadline, clock))
    st = int(s.Solve())
    if st in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.INFEASIBLE) or out_of_time(deadline, clock):
        return st
    fresh = pywraplp.MPSolverParameters()
    fresh.SetIntegerParam(fresh.INCREMENTALITY, fresh.INCREMENTALITY_OFF)
    s.SetTimeLimit(time_limit_ms(deadline, clock))
    return int(s.Solve(fresh))


def out_of_time(deadline: float, clock: Callable[[], float]) -> bool:
    """Whether a solver call that stopped without an answer was stopped by the deadline."""
    return clock() >= deadline - DEADLINE_SLACK


@dataclass(frozen=True)
class Block:
    """One model, already validated and reduced to loaded, merged buckets.

    ``need[b, g]`` is the replicas of type g that bucket b's whole load needs (inf: cannot).
    """

    need: FloatArray
    cost: FloatArray  # per replica of each type
    lb: FloatArray
    ub: FloatArray  # may be inf
    cur: FloatArray
    churn: float
    usable: float  # 1 - headroom


@dataclass(frozen=True)
class PoolRow:
    capacity: float
    terms: tuple[tuple[int, int, float], ...]  # (block, type, gpus per replica)


@dataclass(frozen=True)
class Outcome:
    status: str  # "optimal" | "feasible" | "infeasible" | "unknown"
    replicas: tuple[tuple[int, ...], ...]
    fractions: tuple[FloatArray, ...]
    objective: float
    bound: float
    nodes: int


def clean_split(f: FloatArray) -> FloatArray:
    """A solver's bucket x type routing with its noise removed: fractions below
    ``FRAC_TOL`` dropped (a sliver on an unused type would cost a whole replica) and
    each bucket's row renormalised to 1."""
    f = np.where(f < FRAC_TOL, 0.0, f)
    sums = f.sum(axis=1, keepdims=True)
    out: FloatArray = np.divide(f, sums, out=np.zeros_like(f), where=sums > 0)
    return out


def optimal_within(value: float) -> float:
    """How close to a plan's objective a proven bound must come to call it optimal."""
    return 1e-9 * max(1.0, abs(value))


def with_bound(out: Outcome, bound: float) -> Outcome:
    """``out`` with a (larger) proven bound; optimal once the bound reaches its plan."""
    status = "optimal" if bound >= out.objective - optimal_within(out.objective) else out.status
    bound = out.objective if status == "optimal" else bound
    return Outcome(status, out.replicas, out.fractions, out.objective, bound, out.nodes)


@dataclass
class _Node:
    lb: FloatArray
    ub: FloatArray


def glop(seed: int, *, presolve: bool = True, dual: bool = False) -> pywraplp.Solver:
    """A seeded GLOP LP solver (deterministic for a fixed seed); ``presolve=False``
    turns GLOP's preprocessing off, ``dual=True`` makes it solve by the dual simplex."""
    s = pywraplp.Solver.CreateSolver("GLOP")
    if s is None:  # pragma: no cover - GLOP ships with OR-Tools
        raise RuntimeError("GLOP is not available")
    params = f"random_seed: {int(seed) % (2**31)}"
    if not presolve:
        params += " use_preprocessing: false"
    if dual:
        params += " use_dual_simplex: true"
    s.SetSolverSpecificParametersAsString(params)
    return s


class _Lp:
    """The node LP of all blocks, kept across nodes so GLOP can start warm."""

    def __init__(self, blocks: Sequence[Block], pools: Sequence[PoolRow], seed: int) -> None:
        self.blocks = blocks
        s = glop(seed)
        self.s = s
        inf = s.infinity()
        self.big_m = 1.0
        self.infeasible = False
        obj = s.Objective()
        obj.SetMinimization()
        self.obj = obj
        self.n: list[list[pywraplp.Variable]] = []
        self.slack: list[list[pywraplp.Variable]] = []
        self.cap_rows: list[list[pywraplp.Constraint]] = []
        self.bucket_rows: list[list[pywraplp.Constraint]] = []
        self.cols: list[dict[tuple[int, int], pywraplp.Variable]] = []
        self.in_lp: list[npt.NDArray[np.bool_]] = []
        max_cost = 1.0
        for blk in blocks:
            if blk.cost.size:
                max_cost = max(max_cost, float(blk.cost.max()) + blk.churn)
        self.big_m = 1e4 * max_cost
        for blk in blocks:
            g_count = blk.cost.size
            ns, sl, caps = [], [], []
            for g in range(g_count):
                ub = float(blk.ub[g]) if math.isfinite(blk.ub[g]) else inf
                v = s.NumVar(float(blk.lb[g]), ub, "")
                obj.SetCoefficient(v, float(blk.cost[g]))
                slack = s.NumVar(0.0, inf, "")
                obj.SetCoefficient(slack, self.big_m)
                row = s.Constraint(-inf, 0.0)
                row.SetCoefficient(v, -blk.usable)
                row.SetCoefficient(slack, -1.0)
                if blk.churn > 0:
                    add_churn(s, obj, v, float(blk.cur[g]), blk.churn)
                ns.append(v)
                sl.append(slack)
                caps.append(row)
            self.n.append(ns)
            self.slack.append(sl)
            self.cap_rows.append(caps)
            self.bucket_rows.append([s.Constraint(1.0, 1.0) for _ in range(blk.need.shape[0])])
            self.cols.append({})
            self.in_lp.append(np.zeros(blk.need.shape, dtype=bool))
        for pool in pools:
            row = s.Constraint(-inf, pool.capacity)
            for m, g, gpr in pool.terms:
                row.SetCoefficient(self.n[m][g], gpr)
        # start columns: the two cheapest usable types of every bucket
        for m, blk in enumerate(blocks):
            if blk.need.size == 0:
                continue
            with np.errstate(invalid="ignore"):  # inf need x free type: never a start column
                unit = np.where(np.isfinite(blk.need), blk.need * blk.cost[None, :], np.inf)
            unit = np.where(blk.ub[None, :] > 0, unit, unit * 1e6)
            order = np.argsort(unit, axis=1, kind="stable")
            for b in range(blk.need.shape[0]):
                for g in order[b, :1]:
                    if math.isfinite(blk.need[b, g]):
                        self._add(m, b, int(g))

    def _add(self, m: int, b: int, g: int) -> None:
        blk = self.blocks[m]
        v = self.s.NumVar(0.0, 1.0, "")
        self.bucket_rows[m][b].SetCoefficient(v, 1.0)
        self.cap_rows[m][g].SetCoefficient(v, float(blk.need[b, g]))
        self.cols[m][(b, g)] = v
        self.in_lp[m][b, g] = True

    def set_bounds(self, node: _Node) -> None:
        inf = self.s.infinity()
        k = 0
        for ns in self.n:
            for v in ns:
                ub = float(node.ub[k])
                v.SetBounds(float(node.lb[k]), ub if math.isfinite(ub) else inf)
                k += 1

    def _solve_once(self, deadline: float, clock: Callable[[], float]) -> bool:
        """Solve the LP as it stands: True when optimal, False when infeasible or out of
        time; any other failure raises ``NumericTrouble``."""
        st = solve_lp(self.s, deadline, clock)
        # With slack on every capacity row and a column in every bucket row, only the
        # replica bounds and the pool rows can conflict: no column can repair that.
        self.infeasible = bool(st == pywraplp.Solver.INFEASIBLE)
        if st == pywraplp.Solver.OPTIMAL:
            return True
        if self.infeasible or out_of_time(deadline, clock):
            return False
        raise NumericTrouble(f"the node LP failed (GLOP status {st}) before the time limit")

    def _price(self) -> int:
        """Add, per bucket, its most negative reduced-cost column; return how many.

        The same rule serves both phases: columns cost 0 in either objective. All duals
        are read before any column is added (adding one invalidates the solution)."""
        entering: list[tuple[int, int, int]] = []
        for m, blk in enumerate(self.blocks):
            if blk.need.size == 0:
                continue
            u = np.array([r.dual_value() for r in self.bucket_rows[m]])
            y = np.array([r.dual_value() for r in self.cap_rows[m]])
            with np.errstate(invalid="ignore"):
                rc = -u[:, None] - y[None, :] * blk.need
            rc = np.where(np.isfinite(blk.need) & ~self.in_lp[m], rc, np.inf)
            best = np.argmin(rc, axis=1)
            vals = rc[np.arange(rc.shape[0]), best]
            scale = 1.0 + np.abs(u)
            entering.extend(
                (m, int(b), int(best[b])) for b in np.nonzero(vals < -PRICE_TOL * scale)[0]
            )
        for m, b, g in entering:
            self._add(m, b, g)
        return len(entering)

    def slack_sum(self) -> float:
        return float(sum(v.solution_value() for sl in self.slack for v in sl))

    def solve(self, deadline: float, clock: Callable[[], float]) -> tuple[str, float]:
        """Solve the node LP exactly (with pricing). Returns (state, value): "ok",
        "infeasible" or "timeout"; a solver failure raises ``NumericTrouble``."""
        for _ in range(MAX_PRICING_ROUNDS):
            if clock() > deadline:
                return "timeout", math.nan
            if not self._solve_once(deadline, clock):
                return ("infeasible" if self.infeasible else "timeout"), math.nan
            if self._price() == 0:
                break
        else:  # pragma: no cover - bounded loop guard
            raise NumericTrouble("the node LP did not converge in its pricing rounds")
        if self.slack_sum() <= 1e-9:
            return "ok", float(self.obj.Value())
        # Slack in use: prove infeasibility with a pure phase 1 (minimise the slack only).
        saved = [(v, self.obj.GetCoefficient(v)) for v in self.s.variables()]
        for v, _ in saved:
            self.obj.SetCoefficient(v, 0.0)
        for sl in self.slack:
            for v in sl:
                self.obj.SetCoefficient(v, 1.0)
        state = "infeasible"
        for _ in range(MAX_PRICING_ROUNDS):
            if clock() > deadline or not self._solve_once(deadline, clock):
                state = "timeout"
                break
            if self._price() == 0:
                break
        phase1 = self.slack_sum() if state != "timeout" else math.inf
        for v, c in saved:
            self.obj.SetCoefficient(v, c)
        for sl in self.slack:
            for v in sl:
                self.obj.SetCoefficient(v, self.big_m)
        if state == "timeout":
            return "timeout", math.nan
        if phase1 > 1e-7:
            return "infeasible", math.nan
        # Feasible but the penalty was too small: raise it and solve again (bounded).
        for _ in range(6):
            self.big_m *= 100.0
            for sl in self.slack:
                for v in sl:
                    self.obj.SetCoefficient(v, self.big_m)
            for _ in range(MAX_PRICING_ROUNDS):
                if clock() > deadline or not self._solve_once(deadline, clock):
                    return "timeout", math.nan
                if self._price() == 0:
                    break
            if self.slack_sum() <= 1e-9:
                return "ok", float(self.obj.Value())
        raise NumericTrouble(  # pragma: no cover
            "the node LP needs a penalty beyond 1e12 times the costs to settle"
        )

    def replicas(self) -> FloatArray:
        return np.array([v.solution_value() for ns in self.n for v in ns])

    def fractions(self) -> list[FloatArray]:
        out: list[FloatArray] = []
        for m, blk in enumerate(self.blocks):
            f = np.zeros(blk.need.shape)
            for (b, g), v in self.cols[m].items():
                f[b, g] = v.solution_value()
            out.append(clean_split(f))
        return out


def plan_value(blocks: Sequence[Block], n: FloatArray) -> float:
    """The objective of replica counts ``n`` (all blocks' counts in one vector): each
    replica's cost plus the churn weight per replica of change."""
    total = 0.0
    k = 0
    for blk in blocks:
        g_count = blk.cost.size
        part = n[k : k + g_count]
        total += float(blk.cost @ part) + blk.churn * float(np.abs(part - blk.cur).sum())
        k += g_count
    return total


def _fits(
    blocks: Sequence[Block], pools: Sequence[PoolRow], n: FloatArray, fr: Sequence[FloatArray]
) -> bool:
    """Independent check of a plan: bounds, pools, and per-type load within capacity."""
    k = 0
    offsets: list[int] = []
    for m, blk in enumerate(blocks):
        offsets.append(k)
        g_count = blk.cost.size
        part = n[k : k + g_count]
        if np.any(part < blk.lb - 1e-9) or np.any(part > blk.ub + 1e-9):
            return False
        if blk.need.size:
            with np.errstate(invalid="ignore"):
                load = np.where(fr[m] > 0, fr[m] * blk.need, 0.0).sum(axis=0)
            if np.any(load > part * blk.usable * (1 + 1e-6) + 1e-9):
                return False
        k += g_count
    for pool in pools:
        used = sum(gpr * n[offsets[m] + g] for m, g, gpr in pool.terms)
        if used > pool.capacity + 1e-9:
            return False
    return True


def branch_and_bound(
    blocks: Sequence[Block],
    pools: Sequence[PoolRow],
    *,
    time_limit_s: float,
    seed: int,
    clock: Callable[[], float],
    max_nodes: int = 200_000,
    incumbent: Outcome | None = None,
) -> Outcome:
    start = clock()
    deadline = start + max(time_limit_s, 0.0)
    lp = _Lp(blocks, pools, seed)
    lb0 = np.concatenate([b.lb for b in blocks]) if blocks else np.zeros(0)
    ub0 = np.concatenate([b.ub for b in blocks]) if blocks else np.zeros(0)
    best = _Incumbent.of(incumbent)
    queue = _NodeQueue(_Node(lb0, ub0))
    nodes = 0
    timed_out = False
    root_infeasible = False
    while queue.heap:
        bound, neg_depth, _, node = queue.heap[0]
        if bound >= best.value - _tol(best.value):
            heapq.heappop(queue.heap)
            continue
        if nodes >= max_nodes or clock() > deadline:
            timed_out = True
            break
        heapq.heappop(queue.heap)
        nodes += 1
        lp.set_bounds(node)
        state, value = lp.solve(deadline, clock)
        if state == "timeout":
            queue.push(bound, neg_depth, node)
            timed_out = True
            break
        if state == "infeasible":
            root_infeasible = root_infeasible or nodes == 1
            continue
        if value >= best.value - _tol(best.value):
            continue
        n = lp.replicas()
        best.try_rounded(blocks, pools, node, n, lp)
        for child in _children(node, n):
            queue.push(value, neg_depth - 1, child)
    return best.outcome(blocks, queue, nodes, timed_out, root_infeasible)


def _tol(v: float) -> float:
    """``optimal_within`` of a value that may be infinite (no plan yet: no tolerance)."""
    return optimal_within(v) if math.isfinite(v) else 0.0


class _NodeQueue:
    """Open nodes, best bound first, then deepest, then oldest."""

    def __init__(self, root: _Node) -> None:
        self.heap: list[tuple[float, int, int, _Node]] = [(-math.inf, 0, 0, root)]
        self.counter = 0

    def push(self, bound: float, neg_depth: int, node: _Node) -> None:
        self.counter += 1
        heapq.heappush(self.heap, (bound, neg_depth, self.counter, node))

    def open_bound(self) -> float:
        return min((b for b, _, _, _ in self.heap), default=math.inf)


def _children(node: _Node, n: FloatArray) -> list[_Node]:
    """The two nodes that split ``node`` on its most fractional replica count in the LP
    solution ``n`` (none when every count is integer: the rounded plan is its optimum)."""
    frac = np.abs(n - np.round(n))
    if np.all(frac <= INT_TOL):
        return []
    score = np.minimum(n - np.floor(n), np.ceil(n) - n)
    k = int(np.argmax(np.where(frac > INT_TOL, score + 1e-3, -1.0)))
    lo_ub = node.ub.copy()
    lo_ub[k] = math.floor(n[k])
    hi_lb = node.lb.copy()
    hi_lb[k] = math.ceil(n[k])
    return [_Node(node.lb, lo_ub), _Node(hi_lb, node.ub)]


@dataclass
class _Incumbent:
    """The branch-and-bound's best plan so far (none: ``value`` is inf)."""

    value: float
    n: FloatArray | None
    fractions: list[FloatArray]

    @staticmethod
    def of(start: Outcome | None) -> _Incumbent:
        if start is not None and start.replicas:
            n = np.array([x for r in start.replicas for x in r], dtype=float)
            return _Incumbent(start.objective, n, list(start.fractions))
        return _Incumbent(math.inf, None, [])

    def try_rounded(
        self,
        blocks: Sequence[Block],
        pools: Sequence[PoolRow],
        node: _Node,
        n: FloatArray,
        lp: _Lp,
    ) -> None:
        """The incumbent heuristic: every replica count of the node LP's solution ``n``
        rounded up (the same split still fits), kept when it is cheaper."""
        up = np.minimum(np.ceil(n - INT_TOL), node.ub)
        up = np.maximum(up, node.lb)
        val = plan_value(blocks, up)
        if val < self.value - _tol(self.value):
            fr = lp.fractions()
            if _fits(blocks, pools, up, fr):
                self.value, self.n, self.fractions = val, up, fr

    def outcome(
        self,
        blocks: Sequence[Block],
        queue: _NodeQueue,
        nodes: int,
        timed_out: bool,
        root_infeasible: bool,
    ) -> Outcome:
        """The search's result: its best plan with the bound the open nodes prove."""
        open_bound = queue.open_bound() if timed_out else math.inf
        if self.n is None:
            if root_infeasible or (not timed_out):
                return Outcome("infeasible", (), (), math.nan, math.nan, nodes)
            return Outcome("unknown", (), (), math.nan, open_bound, nodes)
        best_val = self.value
        bound = best_val if not timed_out else min(open_bound, best_val)
        status = "feasible" if timed_out and bound < best_val - _tol(best_val) else "optimal"
        if timed_out and status == "optimal":
            bound = best_val
        reps: list[tuple[int, ...]] = []
        k = 0
        for blk in blocks:
            g_count = blk.cost.size
            reps.append(tuple(round(x) for x in self.n[k : k + g_count]))
            k += g_count
        return Outcome(status, tuple(reps), tuple(self.fractions), best_val, bound, nodes)


def forced_minimums(blk: Block) -> Block:
    """Raise each type's minimum to the replicas the buckets only it can serve need (an
    exact tightening: every plan carries that load on that type)."""
    if blk.need.size == 0:
        return blk
    fin = np.isfinite(blk.need)
    only = fin.sum(axis=1) == 1
    if not np.any(only):
        return blk
    forced = np.where(fin & only[:, None], blk.need, 0.0).sum(axis=0)
    counts = np.where(forced > 0, np.ceil(forced / blk.usable - INT_TOL), 0.0)
    lb = np.maximum(blk.lb, counts)
    if np.array_equal(lb, blk.lb):
        return blk
    return Block(blk.need, blk.cost, lb, blk.ub, blk.cur, blk.churn, blk.usable)


TWO_TYPE_MAX_COUNTS = 100_000  # beyond this many type-0 counts to try, use the search


def two_types(blk: Block) -> Outcome | None:
    """Exact optimum of a single model with two GPU types, without an LP.

    For a fixed count n0 of type 0, the load type 1 must carry is smallest when type 0's
    capacity takes the shared buckets with the lowest ``need0 / need1`` first (a
    fractional knapsack); every count n0 from the smallest that fits the buckets only
    type 0 serves up to the one that fits everything type 0 serves (or its current count,
    for churn) is tried, and past that point nothing changes but type 0's own cost.
    Returns None when that range is too long to enumerate (huge replica counts)."""
    need, u = blk.need, blk.usable
    lb, ub = blk.lb, blk.ub
    fin0, fin1 = np.isfinite(need[:, 0]), np.isfinite(need[:, 1])
    only0, only1, both = fin0 & ~fin1, fin1 & ~fin0, fin0 & fin1
    if np.any(~fin0 & ~fin1):
        return Outcome("infeasible", (), (), math.nan, math.nan, 0)
    a0 = float(need[only0, 0].sum())
    b1 = float(need[only1, 1].sum())
    idx = np.nonzero(both)[0]
    order = idx[np.argsort(need[idx, 0] / need[idx, 1], kind="stable")]
    w0, w1 = need[order, 0], need[order, 1]
    p0 = np.concatenate([[0.0], np.cumsum(w0)])
    p1 = np.concatenate([[0.0], np.cumsum(w1)])
    total0, total1 = float(p0[-1]), float(p1[-1])

    def count(load: float) -> float:
        return float(math.ceil(load / u - INT_TOL)) if load > 0 else 0.0

    low0 = max(float(lb[0]), count(a0))
    full0 = min(float(ub[0]), max(low0, count(a0 + total0)))
    if low0 > full0:
        return Outcome("infeasible", (), (), math.nan, math.nan, 0)
    if full0 - low0 > TWO_TYPE_MAX_COUNTS:
        return None
    n0 = np.arange(low0, full0 + 0.5)
    # past full0 only type 0's own (convex) term changes: its current count, if above
    tail = min(float(ub[0]), float(blk.cur[0]))
    if tail > full0:
        n0 = np.append(n0, tail)
    room = np.clip(n0 * u - a0, 0.0, total0)  # type-0 capacity left for shared buckets
    k = np.clip(np.searchsorted(p0, room, side="right") - 1, 0, max(len(w0) - 1, 0))
    if len(w0):
        with np.errstate(divide="ignore", invalid="ignore"):
            part = np.where(k < len(w0), (room - p0[k]) / w0[np.minimum(k, len(w0) - 1)], 0.0)
        part = np.nan_to_num(part, nan=1.0, posinf=1.0, neginf=0.0)
        moved = p1[k] + np.clip(part, 0.0, 1.0) * w1[np.minimum(k, len(w0) - 1)]
        moved = np.where(room >= total0, total1, moved)
    else:
        moved = np.zeros_like(room)
    rest1 = np.maximum(b1 + total1 - moved, 0.0)
    c0, c1, ch = float(blk.cost[0]), float(blk.cost[1]), blk.churn
    cur0, cur1, ub1 = float(blk.cur[0]), float(blk.cur[1]), float(ub[1])
    low1 = np.maximum(float(lb[1]), np.where(rest1 > 0, np.ceil(rest1 / u - INT_TOL), 0.0))
    ok = low1 <= ub1
    if not np.any(ok):
        return Outcome("infeasible", (), (), math.nan, math.nan, 0)
    n0, low1 = n0[ok], low1[ok]
    # type 1's cost is convex in its count: the best count is the lowest allowed one or
    # the current count clamped into the allowed range
    alt1 = np.minimum(np.maximum(cur1, low1), ub1)

    def h1(n: FloatArray) -> FloatArray:
        return c1 * n + ch * np.abs(n - cur1)

    m1 = np.where(h1(alt1) < h1(low1) - 1e-12 * np.maximum(1.0, np.abs(h1(low1))), alt1, low1)
    vals = c0 * n0 + ch * np.abs(n0 - cur0) + h1(m1)
    i = int(np.argmin(vals))  # the first minimum: the fewest type-0 replicas on ties
    best = (float(n0[i]), float(m1[i]))
    room0 = min(max(best[0] * u - a0, 0.0), total0)  # type-0 capacity for shared buckets
    f = _two_type_split(need, order, only0, only1, room0)
    reps = (round(best[0]), round(best[1]))
    value = plan_value([blk], np.array(best))  # summed as everywhere else
    return Outcome("optimal", (reps,), (f,), value, value, 1)


def _two_type_split(
    need: FloatArray,
    order: npt.NDArray[np.intp],
    only0: npt.NDArray[np.bool_],
    only1: npt.NDArray[np.bool_],
    room: float,
) -> FloatArray:
    """The routing of ``two_types``' plan: the buckets only one type serves on it, and
    the shared buckets, in ``order``, on type 0 while its ``room`` (the capacity its
    own buckets leave, at most their load) lasts, the rest on type 1."""
    f = np.zeros(need.shape)
    f[only0, 0] = 1.0
    f[only1, 1] = 1.0
    left = room
    for b in order.tolist():
        w = float(need[b, 0])
        take = (min(1.0, left / w) if w > 0 else 1.0) if left > 0 else 0.0
        # float residue must not route a sliver to the other type (it would need a replica)
        take = 1.0 if take > 1.0 - 1e-12 else (0.0 if take < 1e-12 else take)
        f[b, 0] = take
        f[b, 1] = 1.0 - take
        left = max(left - take * w, 0.0)
    return f


def add_churn(s: Any, obj: Any, v: Any, current: float, weight: float) -> Any:
    """Charge ``weight`` per replica of change: d >= |v - current| in the objective.
    Returns ``d``."""
    inf = s.infinity()
    d = s.NumVar(0.0, inf, "")
    obj.SetCoefficient(d, weight)
    up = s.Constraint(-current, inf)
    up.SetCoefficient(d, 1.0)
    up.SetCoefficient(v, -1.0)
    down = s.Constraint(current, inf)
    down.SetCoefficient(d, 1.0)
    down.SetCoefficient(v, 1.0)
    return d
