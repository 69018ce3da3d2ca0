"""Which exact method solves a problem, and how their results combine.

- A single model with two GPU types: the direct enumeration (``two_types``).
- A single model with more types: the count-space search (``benders``). Measured on the
  benchmark's generator (6 x 200, 5 x 150): 2-7x faster than the branch-and-bound below,
  and never much slower on smaller models.
- Joint problems: the column-generation branch-and-bound, which also takes over a single
  model when the count-space search fails on the numbers.

Every method gets only the time left until one deadline, taken once at the start, so
``time_limit_s`` bounds the whole search.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from gpumix.optimizer._benders import benders
from gpumix.optimizer._engine import (
    Block,
    NumericTrouble,
    Outcome,
    PoolRow,
    branch_and_bound,
    forced_minimums,
    two_types,
)


def search(
    blocks: Sequence[Block],
    pools: Sequence[PoolRow],
    *,
    time_limit_s: float,
    seed: int,
    clock: Callable[[], float],
    incumbent: Outcome | None = None,
) -> Outcome:
    """The exact search for ``blocks`` (with ``pools`` joining them) within
    ``time_limit_s`` in all. Raises ``NumericTrouble`` when a solver fails on the numbers."""
    deadline = clock() + max(time_limit_s, 0.0)

    def left() -> float:
        return deadline - clock()

    single = len(blocks) == 1 and not pools
    if left() <= 0:  # (checked like before any LP, though the enumeration takes no time)
        return Outcome("unknown", (), (), math.nan, -math.inf, 0)
    if single and blocks[0].cost.size == 2:
        exact = two_types(blocks[0])
        if exact is not None:
            return exact
    # an exact tightening; it helps the search (measured)
    blocks = [forced_minimums(b) for b in blocks]
    if any(np.any(b.lb > b.ub) for b in blocks):
        return Outcome("infeasible", (), (), math.nan, math.nan, 0)
    if single and blocks[0].cost.size >= 3:
        try:
            return benders(blocks[0], time_limit_s=left(), seed=seed, clock=clock)
        except NumericTrouble:  # the branch-and-bound's LP is another one: let it try
            pass
    return branch_and_bound(
        blocks, pools, time_limit_s=left(), seed=seed, clock=clock, incumbent=incumbent
    )
