"""The simulation's two links to the optimizer: throughput profiles and the planner.

Profiles are read with the optimizer's own readers and turned into the grid the
load generator bins into.  A profile gives, per GPU type, the request rate one
replica sustains within the SLO at bucket points ``(input tokens, output
tokens)``.  The simulation takes the distinct input values and the distinct
output values as bucket *upper bounds*: a request is counted in the first bucket
whose input bound is at least its input length and whose output bound is at
least its output length (longer ones in the last), so each request is served at
the rate measured for a request at least as long: a conservative reading.

The planner calls :func:`optimizer.solve` with the controller's observations.
The clock is passed in (it only bounds the solve's running time).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from gpumix.simulate.engine import Planner, PlanOutcome, PlanRequest, Profiles
from gpumix.simulate.scenario import Scenario
from optimizer import Bucket, GpuOption, Problem, solve

Clock = Callable[[], float]


class ProfileError(ValueError):
    """Profiles that cannot be used; the message names the file."""


def profiles_from_points(points: Mapping[str, Mapping[tuple[int, int], float]]) -> Profiles:
    """A grid of per-replica rates from per-type ``{(input, output): rate}`` points.

    Grid cells a type has no point for get rate 0 (cannot serve within the SLO).
    """
    ins = sorted({i for table in points.values() for i, _ in table})
    outs = sorted({o for table in points.values() for _, o in table})
    if not ins or not outs:
        raise ProfileError("profiles have no buckets")
    capacity: dict[str, np.ndarray] = {}
    for gpu, table in points.items():
        grid = np.zeros((len(ins), len(outs)))
        for (i, o), rate in table.items():
            grid[ins.index(i), outs.index(o)] = max(float(rate), 0.0)
        capacity[gpu] = grid
    return Profiles(tuple(float(x) for x in ins), tuple(float(x) for x in outs), capacity)


def buckets_of(profiles: Profiles) -> tuple[Bucket, ...]:
    """The optimizer's buckets, in the flattened (input-major) order of the grid."""
    return tuple(
        Bucket(int(i), int(o)) for i in profiles.input_upper for o in profiles.output_upper
    )


def load_profiles(scenario: Scenario) -> Profiles | None:
    """Read the scenario's profiles with the optimizer's readers."""
    if scenario.profiles is None:
        return None
    return read_profile_dir(scenario.profiles)


def read_profile_dir(path: Path) -> Profiles:
    from optimizer import profiles as readers  # the optimizer's profile readers

    try:
        table = readers.read_profiles(path)
    except (OSError, ValueError) as exc:
        raise ProfileError(f"{path}: {exc}") from exc
    return profiles_from_points(table)


def optimizer_planner(profiles: Profiles, *, clock: Clock = time.perf_counter) -> Planner:
    """A planner that builds an optimizer :class:`~optimizer.Problem` and solves it."""
    buckets = buckets_of(profiles)

    def plan(request: PlanRequest, *, seed: int) -> PlanOutcome:
        settings = request.settings
        gpus = tuple(
            GpuOption(
                name=g,
                rates=tuple(float(r) for r in np.asarray(profiles.capacity[g]).ravel()),
                price_per_hour=float(request.price_per_gpu_hour[g]),
                gpus_per_replica=int(request.gpus_per_replica[g]),
                available_gpus=int(request.available_gpus[g]),
                min_replicas=int(request.min_replicas[g]),
                max_replicas=request.max_replicas[g],
                current_replicas=int(request.current[g]),
            )
            for g in request.types
        )
        problem = Problem(
            buckets=buckets,
            load=tuple(float(x) for x in np.asarray(request.rates).ravel()),
            gpus=gpus,
            headroom=settings.headroom,
            churn_weight=settings.churn_weight,
        )
        result = solve(problem, time_limit_s=settings.time_limit_s, seed=seed, clock=clock)
        if not result.ok:
            message = result.reason or "; ".join(result.errors)
            return PlanOutcome(str(result.status), None, 0.0, message)
        return PlanOutcome(str(result.status), dict(result.replicas), result.cost_per_hour)

    return plan
