"""GPU-mix optimizer: how many replicas of each GPU type serve a load within the SLO at
least cost. Pure: no I/O, no globals; the clock is injected."""

from gpumix.optimizer.model import (
    Bucket,
    GpuOption,
    JointResult,
    Pool,
    Problem,
    Result,
    Status,
)
from gpumix.optimizer.solve import single_type_plans, solve, solve_joint, validate

__all__ = [
    "Bucket",
    "GpuOption",
    "JointResult",
    "Pool",
    "Problem",
    "Result",
    "Status",
    "single_type_plans",
    "solve",
    "solve_joint",
    "validate",
]
