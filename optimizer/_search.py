"""Which exact method solves a problem, and how their results combine.

- A single model with two GPU types: the direct enumeration (``two_types``).
- Small problems: the column-generation branch-and-bound.
- Large single models: the count-space search (``benders``) within a round budget; if it
  has not finished, one branch-and-bound node (its rounded-up plan) and then HiGHS on the
  full model. The better plan and the largest proven bound are kept.
- Large joint problems: a short branch-and-bound, then HiGHS.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from gpumix.optimizer._benders import benders
from gpumix.optimizer._engine import (
    LARGE_NODES,
    Block,
    Outcome,
    PoolRow,
    _forced_minimums,
    branch_and_bound,
    full_mip,
    two_types,
    with_bound,
)


def search(
    blocks: Sequence[Block],
    pools: Sequence[PoolRow],
    *,
    time_limit_s: float,
    seed: int,
    clock: Callable[[], float],
    columns_for_full_mip: int = 2000,
    incumbent: Outcome | None = None,
) -> Outcome:
    """Column-generation branch-and-bound; on large instances it gets a short node budget
    and, if unfinished, HiGHS solves the full MIP in the remaining time (with the
    incumbent's objective as a cut). The better plan and the larger proven bound are kept.
    A single model with two GPU types is solved exactly without an LP (``two_types``)."""
    clock_start = clock()
    if len(blocks) == 1 and not pools and blocks[0].cost.size == 2:
        if clock() > clock_start + max(time_limit_s, 0.0):  # checked as before any LP
            return Outcome("unknown", (), (), math.nan, -math.inf, 0)
        exact = two_types(blocks[0])
        if exact is not None:
            return exact
    columns = sum(int(np.isfinite(b.need).sum()) for b in blocks)
    ints = sum(b.cost.size for b in blocks)
    large = columns > columns_for_full_mip or ints > 64
    if not large:  # (measured: it helps the search, while HiGHS presolves this itself)
        blocks = [_forced_minimums(b) for b in blocks]
        if any(np.any(b.lb > b.ub) for b in blocks):
            return Outcome("infeasible", (), (), math.nan, math.nan, 0)
    start = clock_start
    floor = -math.inf  # a bound proven by an earlier method, kept to the end
    spent = 0  # nodes (master rounds) of that method
    if len(blocks) == 1 and not pools and blocks[0].cost.size >= 3:
        # small models only when the master can be enumerated (CP-SAT does not pay there)
        first = benders(
            blocks[0], time_limit_s=time_limit_s, seed=seed, clock=clock, only_enumerable=not large
        )
        if first.status in ("optimal", "infeasible"):
            return first
        floor = first.bound if math.isfinite(first.bound) else floor
        spent = first.nodes
        if first.replicas and incumbent is None:
            incumbent = first
    # the first search's budget is counted in nodes, not seconds, so the hand-over point
    # (and the result) does not depend on the machine's speed; on large instances one
    # node (the root LP and its rounded-up plan, the incumbent cut for HiGHS) pays best
    nodes = 200_000 if not large else LARGE_NODES
    if ints > 64:
        nodes = 5
    out = branch_and_bound(
        blocks,
        pools,
        time_limit_s=time_limit_s,
        seed=seed,
        clock=clock,
        max_nodes=nodes,
        incumbent=incumbent,
    )
    if spent:
        out = replace(out, nodes=out.nodes + spent)
    if math.isfinite(floor) and out.replicas:
        out = with_bound(out, max(out.bound, floor))
    if not large or out.status in ("optimal", "infeasible"):
        return out
    rest = time_limit_s - (clock() - start)
    if rest <= 0.01:
        return out
    mip = full_mip(blocks, pools, time_limit_s=rest, hint=out)
    if mip.status == "unknown" or (mip.status == "infeasible" and out.replicas):
        return out
    if mip.status == "infeasible":
        return mip
    bound = max(mip.bound, out.bound if math.isfinite(out.bound) else -math.inf)
    best = mip if (not out.replicas or mip.objective <= out.objective) else out
    return with_bound(replace(best, status="feasible", nodes=out.nodes + mip.nodes), bound)
