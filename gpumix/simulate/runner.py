"""Run every variant of a scenario on one generated load (pure: profiles and planner are inputs)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gpumix.simulate.engine import (
    Planner,
    Profiles,
    Trace,
    VariantSummary,
    generate_load,
    run_variant,
    summarise,
)
from gpumix.simulate.headline import HeadlineResult, headline
from gpumix.simulate.loadgen import Load
from gpumix.simulate.scenario import Scenario

MAX_HOURS = 24.0 * 7
"""Longest simulated horizon accepted (a day takes seconds; a week, under a minute)."""


@dataclass(frozen=True, eq=False)
class ScenarioResult:
    scenario: Scenario
    seed: int
    hours: float
    load: Load
    profiles: Profiles | None
    traces: tuple[Trace, ...]
    summaries: tuple[VariantSummary, ...]
    headline: HeadlineResult


def restrict(profiles: Profiles | None, types: tuple[str, ...] | None) -> Profiles | None:
    """Only the profiles of ``types`` (the scenario's ``profileTypes``)."""
    if profiles is None or types is None:
        return profiles
    return Profiles(
        profiles.input_upper,
        profiles.output_upper,
        {g: c for g, c in profiles.capacity.items() if g in types},
    )


def simulate(
    scenario: Scenario,
    profiles: Profiles | None,
    planner: Planner | None,
    *,
    seed: int | None = None,
    hours: float | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> ScenarioResult:
    """Every variant of ``scenario`` on the same load; seeded and deterministic."""
    seed = scenario.seed if seed is None else seed
    hours = scenario.hours if hours is None else hours
    if not 0 < hours <= MAX_HOURS:
        raise ValueError(f"hours must be in (0, {MAX_HOURS:g}], got {hours:g}")
    known = restrict(profiles, scenario.profile_types)
    load = generate_load(scenario, known, seed=seed, hours=hours)
    traces: list[Trace] = []
    for variant in scenario.variants:

        def tick(k: int, n: int, name: str = variant.name) -> None:
            if progress is not None:
                progress(name, k, n)

        traces.append(
            run_variant(scenario, variant, load, known, planner, seed=seed, progress=tick)
        )
    summaries = tuple(summarise(t) for t in traces)
    routed = sorted(known.capacity) if known else []
    return ScenarioResult(
        scenario=scenario,
        seed=seed,
        hours=hours,
        load=load,
        profiles=known,
        traces=tuple(traces),
        summaries=summaries,
        headline=headline(scenario, traces, summaries, routed),
    )
