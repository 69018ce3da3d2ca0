"""Each named scenario's headline holds, on the example profiles and the real optimizer."""

from __future__ import annotations

import functools
import time

import pytest

from gpumix.simulate.planning import load_inputs, optimizer_planner
from gpumix.simulate.runner import ScenarioResult, simulate
from gpumix.simulate.scenario import builtin_scenarios, read_scenario


def frozen_clock() -> float:
    """Solves are bounded by the optimizer's node limit, not by the machine's speed."""
    return 0.0


@functools.cache
def run(name: str, hours: float | None = None, seed: int | None = None) -> ScenarioResult:
    scenario, profiles = load_inputs(read_scenario(builtin_scenarios()[name]))
    planner = optimizer_planner(profiles, clock=frozen_clock) if profiles is not None else None
    return simulate(scenario, profiles, planner, seed=seed, hours=hours)


def test_unbounded_ramp_ceiling_holds_with_gpumix_and_not_without() -> None:
    result = run("unbounded-ramp")
    assert result.headline.holds, result.headline.lines
    without, with_ = result.summaries
    target = "llama2-7b-a40"
    ceiling = with_.ceilings[target]
    assert without.ceilings[target] is None
    assert ceiling is not None
    # the real ceiling logic: policy default 10, capped by the 16 A40 GPUs
    assert ceiling == 10
    assert with_.peak_replicas[target] <= ceiling
    assert without.peak_replicas[target] > ceiling
    # without a ceiling the pool runs out and pods (the neighbour's too) stay Pending
    assert without.minutes_without_free_gpus["a40"] > 0
    assert without.peak_pending > 0
    assert with_.peak_pending == 0
    assert with_.min_free_gpus["a40"] > 0
    # the ceiling injected; the Deployment, which selects its model group as a whole, is
    # isolated as the first of that group
    assert sorted((e.kind, e.verdict) for e in with_.admission) == [
        ("Deployment", "patched"),
        ("PodAutoscaler", "patched"),
    ]
    trace = result.traces[0]
    assert trace.pending["embedder"].max() > 0
    assert result.traces[1].pending["embedder"].max() == 0


def test_selector_overlap_wrong_type_scales_only_with_overlapping_selectors() -> None:
    result = run("selector-overlap")
    assert result.headline.holds, result.headline.lines
    overlapping, fixed = result.summaries
    assert overlapping.peak_replicas["llama2-7b-a40"] > 1
    assert fixed.peak_replicas["llama2-7b-a40"] == 1
    # the A40 gets no traffic in either run: its replicas are pure waste
    assert result.traces[0].utilisation.get("A40") is None
    assert overlapping.cost > fixed.cost
    # the A100 is scaled the same way in both: same SLO attainment
    assert overlapping.slo_attainment == pytest.approx(fixed.slo_attainment, abs=0.01)
    assert {e.verdict for e in fixed.admission} == {"fixed"}


def test_mix_vs_single_over_a_full_day() -> None:
    start = time.perf_counter()
    result = run("mix-vs-single")
    elapsed = time.perf_counter() - start
    assert result.hours == 24
    assert elapsed < 30, f"a simulated day took {elapsed:.1f} s"
    assert result.headline.holds, result.headline.lines
    by_name = {s.name: s for s in result.summaries}
    mix = by_name["gpumix mix"]
    singles = [s for n, s in by_name.items() if n != "gpumix mix"]
    assert mix.slo_attainment >= 0.99
    for single in singles:
        if single.slo_attainment >= mix.slo_attainment - 1e-4:
            assert mix.cost <= single.cost + 1e-6
    # a single type is only cheaper when it serves less within the SLO
    for single in singles:
        if single.cost < mix.cost:
            assert single.slo_attainment < mix.slo_attainment - 0.005
    # the mix really uses both types at some point of the day
    assert all(v > 0 for v in mix.peak_replicas.values())
    assert set(mix.plans) <= {"OPTIMAL"}


def test_same_seed_same_result_other_seed_other_load() -> None:
    a = run("selector-overlap", hours=3.0, seed=5)
    run.cache_clear()
    b = run("selector-overlap", hours=3.0, seed=5)
    c = run("selector-overlap", hours=3.0, seed=6)
    assert [s.as_dict() for s in a.summaries] == [s.as_dict() for s in b.summaries]
    assert (a.load.counts == b.load.counts).all()
    assert a.summaries[0].requests != c.summaries[0].requests
