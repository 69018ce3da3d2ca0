"""Load sources: the request rate per (input tokens, output tokens) bucket of a model.

``static``: the buckets written in the GPUMix, observed "now".

``prometheus``: read from the Prometheus HTTP API (``/api/v1/query``).  vLLM
exports the two token-length distributions separately, as histograms over
finished requests (``vllm:request_prompt_tokens_bucket``,
``vllm:request_generation_tokens_bucket``), plus the finished-request counter
``vllm:request_success_total``.  The joint (input, output) histogram is not
exported, so it is estimated as the outer product of the two marginals scaled
by the request rate, i.e. assuming input and output lengths independent::

    R          = sum over the counter's series of increase / sampled span (raw samples in w)
    p_in(i)    = (rate of prompt bucket le_i - rate of le_{i-1}) / rate of le=+Inf
    p_out(j)   = the same over the generation histogram
    rate(i, j) = R * p_in(i) * p_out(j)

Bucket bounds are the histograms' ``le`` values (upper bounds, ``+Inf`` kept as
infinity).  When the deployment exports a metric that already carries both
bucket labels, ``spec.loadSource.prometheus.query`` gives the PromQL that
returns the rates directly, labelled ``inputLabel``/``outputLabel``, and no
estimate is made.

Fail static: an unreachable server, an error answer, no series (``missing``),
one of the three series absent or inconsistent (``partial``), or a newest
sample older than ``stalenessSeconds`` (``stale``) all return
:class:`~controller.plan.LoadUnavailable`; the plan then keeps replicas.

Freshness and coverage are judged per series of the request counter from its
raw samples in the rate window (``counter{sel}[w]``, one instant query) and
the series Prometheus still considers live (``timestamp(counter{sel})``, which
honours Prometheus' staleness markers), by :func:`window_problem`: a series
that had samples in the window but is no longer live has *disappeared* and
its requests would silently drop out of ``rate()``, so the load is missing
(not lower) until the series has left the window; a series whose samples do
not cover the window (scrapes lost, Prometheus restarted without its data)
makes ``rate()`` underestimate, so the load is partial; every series older than
``stalenessSeconds`` makes it stale.  Reasons carry no ages or counts that
change from pass to pass, so a held condition is not rewritten every pass.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Mapping
from typing import Any

import aiohttp

from gpumix.controller.plan import Load, LoadObservation, LoadUnavailable
from gpumix.controller.spec import GPUMixSpec, LoadBucket, PrometheusLoad, StaticLoad

MAX_BUCKETS = 10_000


class PrometheusError(Exception):
    pass


Labels = tuple[tuple[str, str], ...]
Samples = list[tuple[float, float]]
MIN_SAMPLES = 2
"""``rate()`` needs two samples of a series; with fewer its requests are not counted."""
GAP_INTERVALS = 3.0
"""A series whose newest sample is this many scrape intervals old has stopped being scraped."""


def _labels_key(labels: Mapping[str, str]) -> Labels:
    return tuple(sorted((k, v) for k, v in labels.items() if k != "__name__"))


def _describe(key: Labels) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in key) + "}"


def scrape_interval(series: Mapping[Labels, Samples]) -> float | None:
    """The median spacing of consecutive samples over all series (None: fewer than 2)."""
    gaps = sorted(
        b[0] - a[0]
        for samples in series.values()
        for a, b in itertools.pairwise(samples)
        if b[0] > a[0]
    )
    if not gaps:
        return None
    return gaps[len(gaps) // 2]


def window_problem(
    series: Mapping[Labels, Samples],
    live: Mapping[Labels, float],
    now: float,
    at: float,
    window_s: float,
    staleness_s: float,
    metric: str,
) -> LoadUnavailable | None:
    """Why the counter's samples cannot be trusted for ``rate()`` over the window ending at
    ``at`` (None: they can).

    ``series``: raw samples ``(time, value)`` per series in ``(at - window_s, at]``;
    ``live``: newest sample time of every series Prometheus still returns at ``now``.
    The rates are evaluated at ``at``, the newest live sample, not at ``now``: a rate
    evaluated a scrape interval or more after a series' last sample is extrapolated only
    half an interval and comes out low.  Pure (both times are passed in).
    """
    newest_by_series = {k: max(t for t, _ in v) for k, v in series.items() if v}
    newest_by_series.update({k: max(t, newest_by_series.get(k, t)) for k, t in live.items()})
    if not newest_by_series:
        return LoadUnavailable("missing", f"no series of {metric} in Prometheus")
    newest = max(newest_by_series.values())
    if now - newest > staleness_s:
        return LoadUnavailable(
            "stale",
            f"every {metric} series' newest sample is older than the staleness limit "
            f"{staleness_s:g}s",
            newest,
        )
    interval = scrape_interval(series)
    gone_after = staleness_s if interval is None else min(staleness_s, GAP_INTERVALS * interval)
    vanished = sorted(
        k
        for k, t in newest_by_series.items()
        if k not in live or now - live[k] > gone_after or now - t > gone_after
    )
    if vanished:
        return LoadUnavailable(
            "missing",
            f"{len(vanished)} of {len(newest_by_series)} {metric} series stopped reporting "
            f"within the {window_s:g}s window (first: {_describe(vanished[0])}); their requests "
            "would drop out of the rate, so the load is read again once they have left the "
            "window or are back",
            newest,
        )
    thin = sorted(k for k in live if len(series.get(k, ())) < MIN_SAMPLES)
    if thin:
        return LoadUnavailable(
            "partial",
            f"{len(thin)} {metric} series have fewer than {MIN_SAMPLES} samples in the "
            f"{window_s:g}s window (first: {_describe(thin[0])})",
            newest,
        )
    if interval is not None:
        uncovered = sorted(k for k, v in series.items() if not _covers(v, at - window_s))
        if uncovered:
            return LoadUnavailable(
                "partial",
                f"the samples of {len(uncovered)} {metric} series do not cover the "
                f"{window_s:g}s window (first: {_describe(uncovered[0])}): scrapes were lost "
                "or Prometheus lost data, and rate() would underestimate",
                newest,
            )
    return None


def _covers(samples: Samples, start: float) -> bool:
    """Do this counter's samples cover the window from ``start``?

    The rule of Prometheus' own extrapolation: the first sample lies within 1.1 average
    sample intervals of the window start, or the counter's zero does (a counter born in
    the window, as a new Pod's).  Gaps inside the window do not matter for a counter;
    lost data at its start (Prometheus lost its storage, or scraping started late) does.
    """
    if len(samples) < MIN_SAMPLES:
        return False
    first_t, first_v = samples[0]
    last_t = samples[-1][0]
    sampled = last_t - first_t
    if sampled <= 0:
        return False
    average = sampled / (len(samples) - 1)
    to_start = first_t - start
    increase = _increase(samples)
    if first_v >= 0 and increase > 0:
        to_start = min(to_start, sampled * first_v / increase)
    return to_start < 1.1 * average


def _increase(samples: Samples) -> float:
    """A counter's increase over its samples (a drop is a restart from zero, as in rate())."""
    increase = 0.0
    for (_, a), (_, b) in itertools.pairwise(samples):
        increase += b - a if b >= a else b
    return increase


def series_rate(samples: Samples) -> float:
    """A counter's per-second rate over the span of its own samples (0 with fewer than two).

    Unlike ``rate()`` this does not extrapolate to the window's ends, so a window whose
    newest samples are a little older than the evaluation time does not read low.
    """
    if len(samples) < MIN_SAMPLES or samples[-1][0] <= samples[0][0]:
        return 0.0
    return _increase(samples) / (samples[-1][0] - samples[0][0])


def static_load(source: StaticLoad, now: float) -> LoadObservation:
    return LoadObservation(source.buckets, now, "static")


def _selector(metric: str, matchers: str) -> str:
    return f"{metric}{{{matchers}}}" if matchers else metric


def _le(value: str) -> float:
    if value in ("+Inf", "Inf", "inf", "+inf"):
        return math.inf
    return float(value)


def marginal(cumulative: Mapping[float, float]) -> dict[float, float]:
    """Per-bucket shares from cumulative histogram rates keyed by ``le`` (sums to 1)."""
    bounds = sorted(cumulative)
    if not bounds:
        return {}
    total = cumulative[bounds[-1]]
    if total <= 0 or not math.isfinite(total):
        return {}
    shares: dict[float, float] = {}
    below = 0.0
    for le in bounds:
        value = max(cumulative[le], below)  # counters of a bucket never go below the lower one
        share = (value - below) / total
        if share > 0:
            shares[le] = share
        below = value
    return shares


def joint_estimate(
    rate: float, prompt: Mapping[float, float], generation: Mapping[float, float]
) -> tuple[LoadBucket, ...]:
    """Outer product of the two marginals scaled by the request rate (independence)."""
    p_in = marginal(prompt)
    p_out = marginal(generation)
    if rate <= 0 or not p_in or not p_out:
        return ()
    return tuple(
        LoadBucket(i, o, rate * pi * po)
        for i, pi in sorted(p_in.items())
        for o, po in sorted(p_out.items())
    )


class PrometheusClient:
    """Instant queries against one Prometheus HTTP API."""

    def __init__(self, session: aiohttp.ClientSession, url: str, timeout_s: float) -> None:
        self._session = session
        self._url = url.rstrip("/") + "/api/v1/query"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.queries = 0

    async def samples(self, promql: str, at: float) -> dict[Labels, Samples]:
        """Raw samples of a range-vector selector (``metric{sel}[w]``) per series."""
        data = await self._get(promql, at)
        if data.get("resultType") != "matrix":
            raise PrometheusError(f"query {promql!r} returned {data.get('resultType')}")
        out: dict[Labels, Samples] = {}
        for series in (data.get("result") or [])[:MAX_BUCKETS]:
            if not isinstance(series, dict):
                continue
            points: Samples = []
            for point in series.get("values") or []:
                try:
                    points.append((float(point[0]), float(point[1])))
                except (IndexError, TypeError, ValueError):
                    continue
            metric = series.get("metric") or {}
            out[_labels_key({str(k): str(v) for k, v in metric.items()})] = sorted(points)
        return out

    async def _get(self, promql: str, at: float) -> dict[str, Any]:
        self.queries += 1
        try:
            async with self._session.get(
                self._url, params={"query": promql, "time": f"{at:.3f}"}, timeout=self._timeout
            ) as resp:
                body: Any = await resp.json(content_type=None)
                status = resp.status
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise PrometheusError(f"cannot query {self._url}: {type(exc).__name__}: {exc}") from exc
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else None
            raise PrometheusError(f"query {promql!r} failed (HTTP {status}): {error or body}")
        data = body.get("data") or {}
        if not isinstance(data, dict):
            raise PrometheusError(f"query {promql!r} answered without data")
        return data

    async def query(self, promql: str, at: float) -> list[tuple[dict[str, str], float]]:
        data = await self._get(promql, at)
        if data.get("resultType") not in ("vector", "scalar"):
            raise PrometheusError(f"query {promql!r} returned {data.get('resultType')}")
        out: list[tuple[dict[str, str], float]] = []
        result = data.get("result") or []
        if data.get("resultType") == "scalar":
            result = [{"metric": {}, "value": result}]
        for sample in result[:MAX_BUCKETS]:
            try:
                value = float(sample["value"][1])
            except (KeyError, IndexError, TypeError, ValueError):
                continue
            labels = {str(k): str(v) for k, v in (sample.get("metric") or {}).items()}
            out.append((labels, value))
        return out


async def prometheus_load(client: PrometheusClient, source: PrometheusLoad, now: float) -> Load:
    """Read and estimate the bucketed load; never raises for data problems."""
    w = f"{source.window_seconds}s"
    sel = source.selector
    counter = _selector(source.success_metric, sel)
    try:
        live = {
            _labels_key(labels): t for labels, t in await client.query(f"timestamp({counter})", now)
        }
        at = max(live.values()) if live else now
        window = await client.samples(f"{counter}[{w}]", at)
    except PrometheusError as exc:
        return LoadUnavailable("missing", str(exc))
    problem = window_problem(
        window,
        live,
        now,
        at,
        source.window_seconds,
        source.staleness_seconds,
        source.success_metric,
    )
    if problem is not None:
        return problem
    observed = at
    now = at  # every rate is evaluated at the newest sample (see window_problem)
    try:
        if source.query is not None:
            return await _direct(client, source, now, observed)
        prompt_q = f"sum by (le) (rate({_selector(source.prompt_bucket_metric, sel)}[{w}]))"
        gen_q = f"sum by (le) (rate({_selector(source.generation_bucket_metric, sel)}[{w}]))"
        prompt_raw, gen_raw = await asyncio.gather(
            client.query(prompt_q, now), client.query(gen_q, now)
        )
    except PrometheusError as exc:
        return LoadUnavailable("missing", str(exc))
    missing = [
        name
        for name, raw in (
            (source.prompt_bucket_metric, prompt_raw),
            (source.generation_bucket_metric, gen_raw),
        )
        if not raw
    ]
    if missing:
        return LoadUnavailable(
            "partial",
            f"no recent samples for {', '.join(missing)} (needs two samples in {w})",
            observed,
        )
    try:
        prompt = {_le(labels["le"]): v for labels, v in prompt_raw if "le" in labels}
        gen = {_le(labels["le"]): v for labels, v in gen_raw if "le" in labels}
    except ValueError as exc:
        return LoadUnavailable("partial", f"unreadable le label: {exc}", observed)
    # the request rate from the counter's raw samples (already read): no extrapolation
    rate = sum(series_rate(v) for v in window.values())
    if any(not math.isfinite(v) or v < 0 for v in (rate, *prompt.values(), *gen.values())):
        return LoadUnavailable("partial", "a rate is negative or not a number", observed)
    if math.inf not in prompt or math.inf not in gen:
        return LoadUnavailable("partial", "a token histogram lacks its le=+Inf bucket", observed)
    if rate > 0 and (prompt[math.inf] <= 0 or gen[math.inf] <= 0):
        return LoadUnavailable(
            "partial", "requests finish but the token histograms saw none", observed
        )
    buckets = joint_estimate(rate, prompt, gen)
    return LoadObservation(
        buckets, observed, "prometheus", note="input/output estimated as independent"
    )


async def _direct(
    client: PrometheusClient, source: PrometheusLoad, now: float, observed: float
) -> Load:
    assert source.query is not None
    rows = await client.query(source.query, now)
    if not rows:
        return LoadUnavailable("missing", f"query {source.query!r} returned no series", observed)
    buckets: list[LoadBucket] = []
    for labels, value in rows:
        if source.input_label not in labels or source.output_label not in labels:
            return LoadUnavailable(
                "partial",
                f"a series lacks the labels {source.input_label}/{source.output_label}",
                observed,
            )
        try:
            buckets.append(
                LoadBucket(_le(labels[source.input_label]), _le(labels[source.output_label]), value)
            )
        except ValueError:
            return LoadUnavailable("partial", "a bucket label is not a number", observed)
    if any(not math.isfinite(b.rps) or b.rps < 0 for b in buckets):
        return LoadUnavailable("partial", "a rate is negative or not a number", observed)
    return LoadObservation(tuple(buckets), observed, "prometheus")


class LoadReader:
    """Reads the load of GPUMixes; one HTTP session, Prometheus answers reused within a cycle."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        self._cycle: dict[tuple[object, ...], Load] = {}
        self.queries = 0

    def new_cycle(self) -> None:
        self._cycle.clear()

    async def read(self, spec: GPUMixSpec, now: float) -> Load:
        source = spec.load_source
        if isinstance(source, StaticLoad):
            return static_load(source, now)
        key = (
            source.url,
            source.selector,
            source.window_seconds,
            source.staleness_seconds,
            source.query,
            source.prompt_bucket_metric,
            source.generation_bucket_metric,
            source.success_metric,
        )
        cached = self._cycle.get(key)
        if cached is not None:
            return cached
        client = PrometheusClient(self._session, source.url, source.timeout_seconds)
        try:
            load = await prometheus_load(client, source, now)
        except PrometheusError as exc:
            load = LoadUnavailable("missing", str(exc))
        self.queries += client.queries
        self._cycle[key] = load
        return load
