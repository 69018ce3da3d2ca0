"""The load generator's statistics match its parameters."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpumix.simulate.loadgen import (
    DAY_S,
    Bursts,
    Diurnal,
    LengthDistribution,
    Load,
    LoadSpec,
    LoadSpecError,
    Ramp,
    bucket_index,
    burst_fraction,
    generate,
)

IN_UPPER = (128.0, 512.0, 2048.0)
OUT_UPPER = (64.0, 256.0, 1024.0)


def _day(spec: LoadSpec, seed: int, days: float = 1, step_s: float = 60.0) -> Load:
    return generate(
        spec,
        IN_UPPER,
        OUT_UPPER,
        rng=np.random.default_rng(seed),
        start_s=0.0,
        steps=int(days * DAY_S / step_s),
        step_s=step_s,
    )


def test_mean_rate_over_a_day_matches_base_rate() -> None:
    spec = LoadSpec(diurnal=Diurnal(mean_rate=20.0, peak_to_trough=4.0, peak_hour=14.0))
    load = _day(spec, seed=1)
    mean = load.totals().sum() / DAY_S
    assert mean == pytest.approx(20.0, rel=0.01)
    # the Poisson means integrate the rate exactly
    assert load.expected.sum() / DAY_S == pytest.approx(20.0, rel=1e-9)


def test_diurnal_peak_to_trough_ratio_and_peak_hour() -> None:
    spec = LoadSpec(diurnal=Diurnal(mean_rate=50.0, peak_to_trough=3.0, peak_hour=15.0))
    load = _day(spec, seed=2, days=3)
    hourly = load.totals().reshape(-1, 60).sum(axis=1).reshape(3, 24).mean(axis=0)
    assert int(np.argmax(hourly)) in (14, 15)
    assert int(np.argmin(hourly)) in (2, 3)
    ratio = hourly.max() / hourly.min()
    assert ratio == pytest.approx(3.0, rel=0.06)


def test_rate_function_extremes_are_exact() -> None:
    d = Diurnal(mean_rate=10.0, peak_to_trough=5.0, peak_hour=6.0)
    peak = d.rate(np.array([6 * 3600.0]))[0]
    trough = d.rate(np.array([18 * 3600.0]))[0]
    assert peak / trough == pytest.approx(5.0)
    grid = np.linspace(0, DAY_S, 100_001)
    assert float(np.mean(d.rate(grid))) == pytest.approx(10.0, rel=1e-4)


def test_bursts_raise_the_mean_as_documented() -> None:
    bursts = Bursts(per_hour=0.5, mean_minutes=12.0, max_minutes=1e9, multiplier=3.0)
    spec = LoadSpec(diurnal=Diurnal(mean_rate=10.0, peak_to_trough=1.0), bursts=bursts)
    load = _day(spec, seed=3, days=20)
    covered = burst_fraction(load.bursts, load.times(), load.times() + load.step_s).mean()
    assert covered == pytest.approx(bursts.expected_fraction(), abs=0.03)
    mean = load.totals().sum() / (20 * DAY_S)
    assert mean == pytest.approx(10.0 * (1 + 2.0 * covered), rel=0.01)
    durations = np.array([e - s for s, e in load.bursts]) / 60.0
    assert durations.mean() == pytest.approx(12.0, rel=0.15)
    assert len(load.bursts) / (20 * 24) == pytest.approx(0.5, rel=0.15)


def test_ramp_grows_linearly_then_holds() -> None:
    spec = LoadSpec(profile="ramp", ramp=Ramp(start_rate=2.0, end_rate=62.0, ramp_minutes=60.0))
    load = _day(spec, seed=4, days=1 / 12)  # two hours
    per_s = load.expected / load.step_s
    assert per_s[0] == pytest.approx(2.5)  # mid-point of the first minute
    assert per_s[29] == pytest.approx(31.5)
    assert np.all(per_s[60:] == pytest.approx(62.0))
    assert np.all(np.diff(per_s[:60]) == pytest.approx(1.0))
    counts = load.totals()
    assert counts[60:].mean() / 60.0 == pytest.approx(62.0, rel=0.02)


@pytest.mark.parametrize(
    "dist",
    [
        LengthDistribution("lognormal", median=300.0, sigma=1.1, maximum=8192),
        LengthDistribution("pareto", alpha=1.6, minimum=20, maximum=20_000),
    ],
)
def test_token_length_median_and_tail(dist: LengthDistribution) -> None:
    x = dist.sample(np.random.default_rng(5), 200_000)
    assert x.min() >= dist.minimum and x.max() <= dist.maximum
    for q, tol in ((0.5, 0.03), (0.9, 0.05), (0.99, 0.1)):
        assert float(np.quantile(x, q)) == pytest.approx(dist.quantile(q), rel=tol)
    if dist.kind == "lognormal":
        assert dist.quantile(0.5) == pytest.approx(dist.median, abs=1.0)
        z99 = 2.3263478740408408
        assert dist.quantile(0.99) == pytest.approx(
            dist.median * math.exp(dist.sigma * z99), rel=1e-3
        )


def test_clipping_puts_the_tail_at_the_maximum() -> None:
    dist = LengthDistribution("lognormal", median=1000.0, sigma=1.5, maximum=2000)
    x = dist.sample(np.random.default_rng(6), 100_000)
    share = float((x == 2000).mean())
    assert share == pytest.approx(1 - dist.cdf(1999.0), abs=0.01)


def test_bucket_probabilities_match_binned_samples() -> None:
    dist = LengthDistribution("lognormal", median=400.0, sigma=1.0, maximum=4096)
    p = dist.bucket_probabilities(IN_UPPER)
    assert p.sum() == pytest.approx(1.0)
    x = dist.sample(np.random.default_rng(7), 200_000)
    freq = np.bincount(bucket_index(x, IN_UPPER), minlength=len(IN_UPPER)) / len(x)
    assert freq == pytest.approx(p, abs=0.005)


def test_generated_buckets_follow_the_length_distributions() -> None:
    spec = LoadSpec(
        input_tokens=LengthDistribution(median=200.0, sigma=1.0, maximum=4096),
        output_tokens=LengthDistribution(median=100.0, sigma=0.8, maximum=2048),
    )
    load = _day(spec, seed=8)
    share = load.counts.sum(axis=0) / load.counts.sum()
    want = np.outer(
        spec.input_tokens.bucket_probabilities(IN_UPPER),
        spec.output_tokens.bucket_probabilities(OUT_UPPER),
    )
    assert share == pytest.approx(want, abs=0.003)
    assert load.counts.shape == (1440, 3, 3)


def test_same_seed_same_load_other_seed_other_load() -> None:
    spec = LoadSpec(bursts=Bursts(per_hour=0.3))
    a, b, c = _day(spec, 11), _day(spec, 11), _day(spec, 12)
    assert np.array_equal(a.counts, b.counts) and a.bursts == b.bursts
    assert not np.array_equal(a.counts, c.counts)


def test_bad_parameters_name_the_field() -> None:
    with pytest.raises(LoadSpecError, match=r"load\.diurnal\.peakToTrough"):
        LoadSpec(diurnal=Diurnal(peak_to_trough=0.5)).validate()
    with pytest.raises(LoadSpecError, match=r"load\.inputTokens\.sigma"):
        LoadSpec(input_tokens=LengthDistribution(sigma=-1)).validate()
    with pytest.raises(LoadSpecError, match=r"load\.bursts\.multiplier"):
        LoadSpec(bursts=Bursts(multiplier=0.5)).validate()


@settings(max_examples=60, deadline=None)
@given(
    median=st.floats(1.0, 5000.0),
    sigma=st.floats(0.05, 3.0),
    maximum=st.integers(1, 100_000),
    edges=st.lists(st.integers(1, 50_000), min_size=1, max_size=8, unique=True),
)
def test_bucket_probabilities_are_a_distribution(
    median: float, sigma: float, maximum: int, edges: list[int]
) -> None:
    dist = LengthDistribution("lognormal", median=median, sigma=sigma, maximum=maximum)
    p = dist.bucket_probabilities(sorted(float(e) for e in edges))
    assert np.all(p >= 0)
    assert p.sum() == pytest.approx(1.0)
    assert dist.minimum <= dist.quantile(0.5) <= dist.maximum
