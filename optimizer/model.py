"""Typed problem and result of the GPU-mix optimizer (frozen dataclasses, no library types)."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field


class Status(enum.StrEnum):
    """How a solve ended. FEASIBLE only when the time limit stopped the search with a plan;
    NUMERIC_ERROR when a solver failed on the numbers (``reason`` says where; no plan)."""

    OPTIMAL = "OPTIMAL"
    FEASIBLE = "FEASIBLE"
    INFEASIBLE = "INFEASIBLE"
    INVALID = "INVALID"
    UNKNOWN = "UNKNOWN"
    NUMERIC_ERROR = "NUMERIC_ERROR"


@dataclass(frozen=True)
class Bucket:
    """One cell of the load histogram: requests of about this many input/output tokens."""

    input_tokens: int
    output_tokens: int

    def label(self) -> str:
        return f"in={self.input_tokens},out={self.output_tokens}"


@dataclass(frozen=True)
class GpuOption:
    """One GPU type a model can run on.

    ``rates[i]`` is the highest request rate (req/s) one replica sustains within the SLO on
    bucket ``i`` of the problem; 0 means the type cannot serve that bucket within the SLO.
    ``price_per_hour`` is per GPU; a replica costs ``price_per_hour * gpus_per_replica``.
    ``available_gpus`` (None: unlimited) and ``max_replicas`` (None: unlimited) cap the
    replicas; ``current_replicas`` is what runs now (used by the churn term).
    """

    name: str
    rates: tuple[float, ...]
    price_per_hour: float
    gpus_per_replica: int = 1
    available_gpus: int | None = None
    min_replicas: int = 0
    max_replicas: int | None = None
    current_replicas: int = 0

    @property
    def replica_cost(self) -> float:
        return self.price_per_hour * self.gpus_per_replica

    def replica_cap(self) -> int | None:
        """Largest replica count allowed by ``max_replicas`` and ``available_gpus``."""
        caps: list[int] = []
        if self.max_replicas is not None:
            caps.append(self.max_replicas)
        if self.available_gpus is not None and self.gpus_per_replica > 0:
            caps.append(self.available_gpus // self.gpus_per_replica)
        return min(caps) if caps else None


@dataclass(frozen=True)
class Problem:
    """One model: load histogram, GPU options, headroom and churn weight.

    ``load[i]`` is the request rate (req/s) in ``buckets[i]``. A replica of a type may be
    loaded to at most ``1 - headroom`` of its profiled rate. ``churn_weight`` is the
    penalty (cost units per hour) per replica added or removed relative to
    ``current_replicas``; 0 gives the pure cost optimum.
    """

    buckets: tuple[Bucket, ...]
    load: tuple[float, ...]
    gpus: tuple[GpuOption, ...]
    headroom: float = 0.0
    churn_weight: float = 0.0
    model: str = ""


@dataclass(frozen=True)
class Pool:
    """GPUs shared by several models in a joint solve: GPU type name -> free GPUs."""

    gpus: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Result:
    """Outcome of ``solve``.

    ``replicas`` maps GPU type name to replicas (every type of the problem appears).
    ``assignment[i][j]`` is the fraction of bucket ``i``'s load routed to ``problem.gpus[j]``
    (rows sum to 1 for loaded buckets, all 0 for empty ones). ``objective`` is cost plus
    churn penalty; ``bound`` a proven lower bound on it; ``gap`` their relative difference.
    """

    status: Status
    replicas: Mapping[str, int] = field(default_factory=dict)
    cost_per_hour: float = math.nan
    objective: float = math.nan
    bound: float = math.nan
    gap: float = math.nan
    runtime_s: float = 0.0
    reason: str = ""
    errors: tuple[str, ...] = ()
    assignment: tuple[tuple[float, ...], ...] = ()
    nodes: int = 0
    model: str = ""

    @property
    def ok(self) -> bool:
        return self.status in (Status.OPTIMAL, Status.FEASIBLE)


@dataclass(frozen=True)
class JointResult:
    """Outcome of ``solve_joint``: one overall status and one ``Result`` per model."""

    status: Status
    results: tuple[Result, ...] = ()
    cost_per_hour: float = math.nan
    objective: float = math.nan
    bound: float = math.nan
    gap: float = math.nan
    runtime_s: float = 0.0
    reason: str = ""
    errors: tuple[str, ...] = ()
    nodes: int = 0
