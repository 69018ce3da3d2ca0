"""Load sources: the request rate per (input tokens, output tokens) bucket of a model.

``static``: the buckets written in the GPUMix, observed "now".

``prometheus``: read from the Prometheus HTTP API (``/api/v1/query``).  vLLM
exports the two token-length distributions separately, as histograms over
finished requests (``vllm:request_prompt_tokens_bucket``,
``vllm:request_generation_tokens_bucket``), plus the finished-request counter
``vllm:request_success_total``.  The joint (input, output) histogram is not
exported, so it is estimated as the outer product of the two marginals scaled
by the request rate, i.e. assuming input and output lengths independent::

    R          = sum(rate(vllm:request_success_total[w]))
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
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any

import aiohttp

from controller.plan import Load, LoadObservation, LoadUnavailable
from controller.spec import GPUMixSpec, LoadBucket, PrometheusLoad, StaticLoad

MAX_BUCKETS = 10_000


class PrometheusError(Exception):
    pass


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

    async def query(self, promql: str, at: float) -> list[tuple[dict[str, str], float]]:
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
    fresh_q = f"max(timestamp({_selector(source.success_metric, sel)}))"
    try:
        fresh = await client.query(fresh_q, now)
        if source.query is not None:
            return await _direct(client, source, now, fresh)
        prompt_q = f"sum by (le) (rate({_selector(source.prompt_bucket_metric, sel)}[{w}]))"
        gen_q = f"sum by (le) (rate({_selector(source.generation_bucket_metric, sel)}[{w}]))"
        rate_q = f"sum(rate({_selector(source.success_metric, sel)}[{w}]))"
        prompt_raw, gen_raw, rate_raw = await asyncio.gather(
            client.query(prompt_q, now), client.query(gen_q, now), client.query(rate_q, now)
        )
    except PrometheusError as exc:
        return LoadUnavailable("missing", str(exc))
    if not fresh and not prompt_raw and not gen_raw:
        return LoadUnavailable(
            "missing", f"no series for {source.success_metric} {sel or ''} in Prometheus".strip()
        )
    observed = fresh[0][1] if fresh else None
    if observed is not None and now - observed > source.staleness_seconds:
        return LoadUnavailable(
            "stale",
            f"newest {source.success_metric} sample is {now - observed:.0f}s old "
            f"(staleness limit {source.staleness_seconds}s)",
            observed,
        )
    missing = [
        name
        for name, raw in (
            (source.prompt_bucket_metric, prompt_raw),
            (source.generation_bucket_metric, gen_raw),
            (source.success_metric, rate_raw),
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
    rate = sum(v for _, v in rate_raw)
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
        buckets,
        observed if observed is not None else now,
        "prometheus",
        note="input/output estimated as independent",
    )


async def _direct(
    client: PrometheusClient,
    source: PrometheusLoad,
    now: float,
    fresh: list[tuple[dict[str, str], float]],
) -> Load:
    assert source.query is not None
    observed = fresh[0][1] if fresh else None
    if observed is not None and now - observed > source.staleness_seconds:
        return LoadUnavailable("stale", f"newest sample is {now - observed:.0f}s old", observed)
    rows = await client.query(source.query, now)
    if not rows:
        return LoadUnavailable("missing", f"query {source.query!r} returned no series")
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
    return LoadObservation(tuple(buckets), observed or now, "prometheus")


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
