"""The simulation's two links to the optimizer: throughput profiles and the planner.

Profiles are parsed with the optimizer's own readers (this module reads the
files) and turned into the grid the load generator bins into.  A profile gives,
per GPU type, the request rate one replica sustains within the SLO for requests
of *up to* ``input_tokens[i]`` input and ``output_tokens[j]`` output tokens.  The
grid is the union of the profiles' ticks, used as bucket upper bounds; each cell
gets :meth:`GpuProfile.rate_for` of its corner (the smallest profiled cell that
covers it).  A request longer than the last tick is counted in the last bucket.

The planner calls :func:`gpumix.optimizer.solve` with the controller's observations.
The clock is passed in (it only bounds the solve's running time).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from gpumix.optimizer import Bucket, GpuOption, Problem, solve
from gpumix.optimizer.profiles import GpuProfile, ProfileError, parse_prices, parse_profile
from gpumix.simulate.engine import FloatArray, Planner, PlanOutcome, PlanRequest, Profiles
from gpumix.simulate.scenario import Scenario

__all__ = ["ProfileError", "load_inputs", "optimizer_planner", "read_profile_dir"]

PROFILE_SUFFIXES = (".yaml", ".yml", ".json")

Clock = Callable[[], float]


def profiles_from(readings: Sequence[GpuProfile]) -> Profiles:
    """The grid of per-replica rates: the union of the profiles' token ticks, each cell
    at the rate of the smallest profiled cell that covers it (the optimizer's rule)."""
    if not readings:
        raise ProfileError("profiles", "", "no GPU profiles")
    ins = sorted({i for p in readings for i in p.input_tokens})
    outs = sorted({o for p in readings for o in p.output_tokens})
    capacity: dict[str, FloatArray] = {}
    for prof in readings:
        if prof.gpu in capacity:
            raise ProfileError(prof.source or prof.gpu, "gpu", f"GPU type {prof.gpu!r} twice")
        capacity[prof.gpu] = np.array(
            [[prof.rate_for(Bucket(i, o)) for o in outs] for i in ins], dtype=float
        )
    return Profiles(tuple(float(x) for x in ins), tuple(float(x) for x in outs), capacity)


def buckets_of(profiles: Profiles) -> tuple[Bucket, ...]:
    """The optimizer's buckets, in the flattened (input-major) order of the grid."""
    return tuple(
        Bucket(int(i), int(o)) for i in profiles.input_upper for o in profiles.output_upper
    )


def read_profile_dir(path: Path) -> Profiles:
    """Every ``*.yaml``/``*.yml``/``*.json`` profile in ``path`` (or the one file ``path``)."""
    if not path.exists():
        raise ProfileError(str(path), "", "not found")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in PROFILE_SUFFIXES)
    else:
        files = [path]
    if not files:
        raise ProfileError(str(path), "", "no profile files (*.yaml, *.yml, *.json)")
    readings: list[GpuProfile] = []
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ProfileError(str(file), "", f"cannot read: {exc}") from exc
        readings.append(parse_profile(text, str(file)))
    return profiles_from(readings)


def read_prices(path: Path) -> dict[str, float]:
    if not path.exists():
        raise ProfileError(str(path), "", "not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(str(path), "", f"cannot read: {exc}") from exc
    return parse_prices(text, str(path))


def load_inputs(scenario: Scenario) -> tuple[Scenario, Profiles | None]:
    """Read the scenario's profiles and prices; pools without ``pricePerGpuHour`` get the
    price of their GPU type from the prices file."""
    profiles = read_profile_dir(scenario.profiles) if scenario.profiles is not None else None
    if scenario.prices is None:
        return scenario, profiles
    prices = read_prices(scenario.prices)
    pools = []
    for i, pool in enumerate(scenario.pools):
        if pool.price_per_gpu_hour is None and pool.gpu_type is not None:
            if pool.gpu_type not in prices:
                raise ProfileError(
                    str(scenario.prices),
                    f"spec.gpus.{pool.gpu_type}",
                    f"no price for GPU type {pool.gpu_type!r} (cluster.pools[{i}])",
                )
            pool = replace(pool, price_per_gpu_hour=prices[pool.gpu_type])
        pools.append(pool)
    return replace(scenario, pools=tuple(pools)), profiles


def optimizer_planner(profiles: Profiles, *, clock: Clock) -> Planner:
    """A planner that builds an optimizer :class:`~optimizer.Problem` and solves it.

    ``clock`` only bounds each solve's running time (``controller.timeLimitSeconds``);
    tests pass a frozen clock so that results never depend on the machine's load."""
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
