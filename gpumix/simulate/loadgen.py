"""A seeded load generator: request arrivals and token lengths, binned per time step.

Everything here is pure: the random source (:class:`numpy.random.Generator`) and the
time window are arguments, and the same generator state gives the same load.

Arrival rate
    ``diurnal``: a non-homogeneous Poisson process whose rate follows one cosine period
    a day, ``rate(t) = mean_rate * (1 + a * cos(2*pi*(hour(t) - peak_hour) / 24))`` with
    ``a = (r - 1) / (r + 1)`` for a peak/trough ratio ``r``; so the rate averaged over a
    day is exactly ``mean_rate``, its maximum (at ``peak_hour``) is ``r`` times its
    minimum (twelve hours later).

    ``ramp``: the benchmark-style ramp, ``start_rate`` growing linearly to ``end_rate``
    over ``ramp_minutes`` and held there afterwards.  It is deliberately unrealistic:
    it reproduces the load that drove an autoscaler without a ceiling to exhaust a
    cluster.

Bursts (on top of either profile)
    Burst starts form a Poisson process of ``per_hour`` bursts an hour; each lasts an
    exponentially distributed time with mean ``mean_minutes`` (cut at
    ``max_minutes``) and multiplies the rate by ``multiplier`` while it lasts
    (overlapping bursts do not compound).  The expected fraction of time inside a
    burst is about ``1 - exp(-per_hour * mean_minutes / 60)``.

Token lengths
    Input and output lengths are drawn independently from heavy-tailed
    distributions: ``lognormal`` (``median``, ``sigma`` of the log) or ``pareto``
    (``minimum`` = scale, ``alpha`` = tail index).  A draw ``X`` becomes the token
    count ``clip(ceil(X), minimum, maximum)``, so ``P(length <= k) = F(k)`` for
    ``minimum <= k < maximum``, which lets the bucket probabilities be computed
    exactly from the distribution function.

Counts per step
    The number of arrivals in step ``[t, t + step)`` is Poisson with mean
    ``integral of rate``; they are spread over the (input, output) buckets with a
    multinomial draw on the exact bucket probabilities, which is the same
    distribution as drawing and binning every request, without the per-request
    cost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

DAY_S = 86_400.0
HOUR_S = 3_600.0

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class LoadSpecError(ValueError):
    """A load parameter out of range; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


# -- token lengths ---------------------------------------------------------------------


def _norm_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _norm_ppf(q: float) -> float:
    """Inverse of the standard normal distribution function (bisection; exact enough)."""
    lo, hi = -12.0, 12.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if _norm_cdf(mid) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass(frozen=True)
class LengthDistribution:
    """Token length of a request: heavy-tailed, integer, clipped to ``[minimum, maximum]``.

    ``lognormal``: ``log X ~ Normal(log(median), sigma)``.
    ``pareto``: ``P(X > x) = (minimum / x) ** alpha`` for ``x >= minimum``.
    """

    kind: Literal["lognormal", "pareto"] = "lognormal"
    median: float = 256.0
    """lognormal: median of X (the median token count, before clipping)."""
    sigma: float = 1.0
    """lognormal: standard deviation of log X; larger is a heavier tail."""
    alpha: float = 1.5
    """pareto: tail index; smaller is a heavier tail."""
    minimum: int = 1
    """Shortest length; for ``pareto`` also the scale of X."""
    maximum: int = 4096
    """Longest length: longer draws are cut to it (a model's context limit)."""

    def validate(self, where: str) -> None:
        if self.kind not in ("lognormal", "pareto"):
            raise LoadSpecError(f"{where}.distribution", "must be lognormal or pareto")
        if self.minimum < 1:
            raise LoadSpecError(f"{where}.minimum", "must be at least 1")
        if self.maximum < self.minimum:
            raise LoadSpecError(f"{where}.maximum", "must be at least minimum")
        if self.kind == "lognormal":
            if not self.median > 0 or not math.isfinite(self.median):
                raise LoadSpecError(f"{where}.median", "must be a positive number")
            if not self.sigma > 0 or not math.isfinite(self.sigma):
                raise LoadSpecError(f"{where}.sigma", "must be a positive number")
        elif not self.alpha > 0 or not math.isfinite(self.alpha):
            raise LoadSpecError(f"{where}.alpha", "must be a positive number")

    def cdf(self, x: float) -> float:
        """``P(X <= x)`` of the unclipped continuous draw."""
        if x <= 0:
            return 0.0
        if self.kind == "lognormal":
            return _norm_cdf((math.log(x) - math.log(self.median)) / self.sigma)
        if x < self.minimum:
            return 0.0
        return 1.0 - float((self.minimum / x) ** self.alpha)

    def length_cdf(self, k: float) -> float:
        """``P(length <= k)`` of the clipped integer length."""
        if k < self.minimum:
            return 0.0
        if k >= self.maximum:
            return 1.0
        return float(self.cdf(math.floor(k)))

    def quantile(self, q: float) -> float:
        """The ``q``-quantile of the clipped integer length."""
        if self.kind == "lognormal":
            x = self.median * math.exp(self.sigma * _norm_ppf(q))
        else:
            x = self.minimum * (1.0 - q) ** (-1.0 / self.alpha)
        return float(min(max(math.ceil(x), self.minimum), self.maximum))

    def sample(self, rng: np.random.Generator, n: int) -> IntArray:
        """``n`` request lengths."""
        if self.kind == "lognormal":
            x = rng.lognormal(mean=math.log(self.median), sigma=self.sigma, size=n)
        else:
            x = self.minimum * (1.0 + rng.pareto(self.alpha, size=n))
        return np.clip(np.ceil(x), self.minimum, self.maximum).astype(np.int64)

    def bucket_probabilities(self, upper: Sequence[float]) -> FloatArray:
        """Probability of each bucket; bucket ``i`` holds lengths in
        ``(upper[i-1], upper[i]]`` (the first from 0, the last to infinity)."""
        cdf = [self.length_cdf(u) for u in upper[:-1]] + [1.0]
        p = np.diff(np.asarray([0.0, *cdf]))
        return np.clip(p, 0.0, 1.0)


def bucket_index(lengths: npt.NDArray[np.int64], upper: Sequence[float]) -> IntArray:
    """Bucket of each length, with the same convention as ``bucket_probabilities``."""
    idx = np.searchsorted(np.asarray(upper, dtype=float), lengths, side="left")
    return np.minimum(idx, len(upper) - 1).astype(np.int64)


# -- arrival rate -----------------------------------------------------------------------


@dataclass(frozen=True)
class Bursts:
    """Short surges on top of the base rate (see the module docstring)."""

    per_hour: float = 0.0
    """Expected number of burst starts per hour (0: no bursts)."""
    mean_minutes: float = 15.0
    """Mean burst duration (exponential distribution)."""
    max_minutes: float = 60.0
    """Longest burst: longer draws are cut to it."""
    multiplier: float = 2.0
    """Rate multiplier while a burst lasts."""

    def validate(self, where: str) -> None:
        for name, value in (
            ("perHour", self.per_hour),
            ("meanMinutes", self.mean_minutes),
            ("maxMinutes", self.max_minutes),
        ):
            if not math.isfinite(value) or value < 0:
                raise LoadSpecError(f"{where}.{name}", "must be a non-negative number")
        if not math.isfinite(self.multiplier) or self.multiplier < 1:
            raise LoadSpecError(f"{where}.multiplier", "must be a number >= 1")
        if self.per_hour > 0 and self.mean_minutes <= 0:
            raise LoadSpecError(f"{where}.meanMinutes", "must be positive when perHour > 0")

    def expected_fraction(self) -> float:
        """Expected share of time inside a burst (ignoring the cut at ``max_minutes``)."""
        return 1.0 - math.exp(-self.per_hour * self.mean_minutes / 60.0)

    def draw(
        self, rng: np.random.Generator, start_s: float, end_s: float
    ) -> list[tuple[float, float]]:
        """Burst intervals ``(begin_s, end_s)`` starting inside ``[start_s, end_s)``."""
        if self.per_hour <= 0 or end_s <= start_s:
            return []
        expected = self.per_hour * (end_s - start_s) / HOUR_S
        n = int(rng.poisson(expected))
        starts = np.sort(rng.uniform(start_s, end_s, size=n))
        lengths = np.minimum(
            rng.exponential(self.mean_minutes * 60.0, size=n), self.max_minutes * 60
        )
        return [(float(s), float(s + d)) for s, d in zip(starts, lengths, strict=True)]


@dataclass(frozen=True)
class Diurnal:
    """One cosine period per day around a mean rate."""

    mean_rate: float = 10.0
    """Requests per second, averaged over a day (the base rate)."""
    peak_to_trough: float = 3.0
    """Rate at the daily peak divided by the rate at the daily trough (>= 1)."""
    peak_hour: float = 14.0
    """Hour of the day (0-24) of the peak; the trough is twelve hours away."""

    def validate(self, where: str) -> None:
        if not math.isfinite(self.mean_rate) or self.mean_rate < 0:
            raise LoadSpecError(f"{where}.meanRate", "must be a non-negative number")
        if not math.isfinite(self.peak_to_trough) or self.peak_to_trough < 1:
            raise LoadSpecError(f"{where}.peakToTrough", "must be a number >= 1")
        if not math.isfinite(self.peak_hour) or not 0 <= self.peak_hour <= 24:
            raise LoadSpecError(f"{where}.peakHour", "must be between 0 and 24")

    @property
    def amplitude(self) -> float:
        r = self.peak_to_trough
        return (r - 1.0) / (r + 1.0)

    def rate(self, t_s: FloatArray) -> FloatArray:
        phase = 2.0 * np.pi * (t_s / HOUR_S - self.peak_hour) / 24.0
        return self.mean_rate * (1.0 + self.amplitude * np.cos(phase))

    def integral(self, a_s: FloatArray, b_s: FloatArray) -> FloatArray:
        """Expected arrivals in ``[a, b)`` (closed form)."""
        w = 2.0 * np.pi / DAY_S
        shift = self.peak_hour * HOUR_S
        sin_part = (np.sin(w * (b_s - shift)) - np.sin(w * (a_s - shift))) / w
        return self.mean_rate * ((b_s - a_s) + self.amplitude * sin_part)


@dataclass(frozen=True)
class Ramp:
    """Linear growth from ``start_rate`` to ``end_rate``, then flat."""

    start_rate: float = 1.0
    """Requests per second at the start of the run."""
    end_rate: float = 50.0
    """Requests per second at the end of the ramp."""
    ramp_minutes: float = 360.0
    """How long the ramp takes, from the start of the run."""

    def validate(self, where: str) -> None:
        for name, value in (("startRate", self.start_rate), ("endRate", self.end_rate)):
            if not math.isfinite(value) or value < 0:
                raise LoadSpecError(f"{where}.{name}", "must be a non-negative number")
        if not math.isfinite(self.ramp_minutes) or self.ramp_minutes <= 0:
            raise LoadSpecError(f"{where}.rampMinutes", "must be a positive number")

    def rate(self, t_s: FloatArray) -> FloatArray:
        frac = np.clip(t_s / (self.ramp_minutes * 60.0), 0.0, 1.0)
        return self.start_rate + (self.end_rate - self.start_rate) * frac


@dataclass(frozen=True)
class LoadSpec:
    """What to generate: a rate profile, bursts and token-length distributions."""

    profile: Literal["diurnal", "ramp"] = "diurnal"
    diurnal: Diurnal = field(default_factory=Diurnal)
    ramp: Ramp = field(default_factory=Ramp)
    bursts: Bursts = field(default_factory=Bursts)
    input_tokens: LengthDistribution = field(
        default_factory=lambda: LengthDistribution(median=512.0, sigma=1.0, maximum=4096)
    )
    output_tokens: LengthDistribution = field(
        default_factory=lambda: LengthDistribution(median=128.0, sigma=1.0, maximum=2048)
    )

    def validate(self, where: str = "load") -> None:
        if self.profile not in ("diurnal", "ramp"):
            raise LoadSpecError(f"{where}.profile", "must be diurnal or ramp")
        self.diurnal.validate(f"{where}.diurnal")
        self.ramp.validate(f"{where}.ramp")
        self.bursts.validate(f"{where}.bursts")
        self.input_tokens.validate(f"{where}.inputTokens")
        self.output_tokens.validate(f"{where}.outputTokens")

    def base_arrivals(self, a_s: FloatArray, b_s: FloatArray) -> FloatArray:
        """Expected arrivals in each ``[a, b)`` without bursts."""
        if self.profile == "diurnal":
            return self.diurnal.integral(a_s, b_s)
        # the ramp is piecewise linear: the midpoint rule is exact inside a piece
        mid = (a_s + b_s) / 2.0
        return self.ramp.rate(mid) * (b_s - a_s)


@dataclass(frozen=True, eq=False)
class Load:
    """Generated load: request counts per time step and (input, output) bucket."""

    start_s: float
    step_s: float
    input_upper: tuple[float, ...]
    output_upper: tuple[float, ...]
    counts: IntArray
    """Shape ``(steps, len(input_upper), len(output_upper))``."""
    expected: FloatArray
    """Expected arrivals per step (the Poisson means), shape ``(steps,)``."""
    bursts: tuple[tuple[float, float], ...]

    @property
    def steps(self) -> int:
        return int(self.counts.shape[0])

    def times(self) -> FloatArray:
        return self.start_s + self.step_s * np.arange(self.steps, dtype=float)

    def totals(self) -> IntArray:
        """Requests per step."""
        out: IntArray = self.counts.sum(axis=(1, 2)).astype(np.int64)
        return out

    def rate(self, first: int, last: int) -> FloatArray:
        """Mean request rate (req/s) per bucket over steps ``[first, last)``."""
        first, last = max(first, 0), min(last, self.steps)
        if last <= first:
            return np.zeros(self.counts.shape[1:], dtype=float)
        window: FloatArray = self.counts[first:last].sum(axis=0).astype(float)
        return window / ((last - first) * self.step_s)


def burst_fraction(
    bursts: Sequence[tuple[float, float]], a_s: FloatArray, b_s: FloatArray
) -> FloatArray:
    """Share of each ``[a, b)`` covered by the union of the burst intervals."""
    merged: list[tuple[float, float]] = []
    for s, e in sorted(bursts):
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    covered = np.zeros_like(a_s)
    for s, e in merged:
        covered += np.clip(np.minimum(b_s, e) - np.maximum(a_s, s), 0.0, None)
    return covered / (b_s - a_s)


def generate(
    spec: LoadSpec,
    input_upper: Sequence[float],
    output_upper: Sequence[float],
    *,
    rng: np.random.Generator,
    start_s: float,
    steps: int,
    step_s: float = 60.0,
) -> Load:
    """Draw ``steps`` steps of load starting at ``start_s`` (seconds since midnight).

    Bucket ``(i, j)`` holds requests whose input length is in input bucket ``i`` and
    output length in output bucket ``j`` (upper bounds, see ``bucket_probabilities``).
    """
    spec.validate()
    if steps < 0:
        raise LoadSpecError("steps", "must be non-negative")
    if not step_s > 0:
        raise LoadSpecError("stepSeconds", "must be positive")
    a = start_s + step_s * np.arange(steps, dtype=float)
    b = a + step_s
    bursts = spec.bursts.draw(rng, start_s, start_s + steps * step_s)
    frac = burst_fraction(bursts, a, b) if bursts else np.zeros(steps)
    expected = spec.base_arrivals(a, b) * (1.0 + (spec.bursts.multiplier - 1.0) * frac)
    expected = np.clip(expected, 0.0, None)
    n = rng.poisson(expected).astype(np.int64)
    p_in = spec.input_tokens.bucket_probabilities(input_upper)
    p_out = spec.output_tokens.bucket_probabilities(output_upper)
    p = np.outer(p_in, p_out).ravel()
    p = p / p.sum()
    counts = rng.multinomial(n, p).reshape(steps, len(input_upper), len(output_upper))
    return Load(
        start_s=start_s,
        step_s=step_s,
        input_upper=tuple(float(x) for x in input_upper),
        output_upper=tuple(float(x) for x in output_upper),
        counts=counts.astype(np.int64),
        expected=expected,
        bursts=tuple(bursts),
    )
