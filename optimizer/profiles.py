"""Readers for GPU profiles, load histograms, prices and availability (pure: text in).

Formats are documented in docs/optimizer.md. Every function raises ``ProfileError`` naming
the source and the field; the caller reads files and passes their text.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from gpumix.optimizer.model import Bucket, GpuOption, Problem

API_VERSION = "gpumix.io/v1alpha1"
LATENCY_METRICS = ("e2e", "ttft", "tpot")
Grid = tuple[tuple[float, ...], ...]


class ProfileError(ValueError):
    """Unreadable or invalid input; the message names the source and the field."""

    def __init__(self, source: str, where: str, message: str) -> None:
        self.source = source
        self.where = where
        super().__init__(f"{source}: {where}: {message}" if where else f"{source}: {message}")


@dataclass(frozen=True)
class Slo:
    """Latency targets in seconds at a percentile (None: no target)."""

    percentile: int | None = None
    e2e: float | None = None
    ttft: float | None = None
    tpot: float | None = None

    def target(self, metric: str) -> float | None:
        value: float | None = getattr(self, metric)
        return value


@dataclass(frozen=True)
class GpuProfile:
    """Measured rates of one GPU type for one model on an (input, output) token grid.

    ``rates[i][j]``: req/s one replica sustains within ``slo`` for requests of up to
    ``input_tokens[i]`` input and ``output_tokens[j]`` output tokens. ``latency[m]`` has
    the same shape (seconds, metric m in e2e/ttft/tpot), when measured.
    """

    gpu: str
    input_tokens: tuple[int, ...]
    output_tokens: tuple[int, ...]
    rates: Grid
    slo: Slo = Slo()
    latency: Mapping[str, Grid] = field(default_factory=dict)
    model: str = ""
    gpus_per_replica: int = 1
    price_per_hour: float | None = None
    source: str = ""

    def rate_for(self, bucket: Bucket) -> float:
        """Rate of the smallest profiled cell that covers the bucket; 0 beyond the grid."""
        i = next((k for k, v in enumerate(self.input_tokens) if v >= bucket.input_tokens), None)
        j = next((k for k, v in enumerate(self.output_tokens) if v >= bucket.output_tokens), None)
        if i is None or j is None:
            return 0.0
        return self.rates[i][j]


@dataclass(frozen=True)
class LoadHistogram:
    model: str
    buckets: tuple[Bucket, ...]
    rates: tuple[float, ...]


@dataclass(frozen=True)
class GpuLimits:
    available_gpus: int | None = None
    min_replicas: int = 0
    max_replicas: int | None = None
    current_replicas: int = 0


# ---------------------------------------------------------------- low-level helpers


def load_document(text: str | bytes | Mapping[str, Any], source: str) -> Any:
    """Parse JSON or YAML text (one document), or pass a mapping through."""
    if isinstance(text, Mapping):
        return text
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProfileError(source, "", f"not UTF-8 text ({exc.reason})") from None
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProfileError(source, f"line {exc.lineno}", f"invalid JSON: {exc.msg}") from None
    try:
        return YAML(typ="safe", pure=True).load(text)
    except YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid YAML"
        raise ProfileError(source, "", f"invalid YAML: {first}") from None


def _num(v: Any, source: str, where: str, *, allow_zero: bool = True) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ProfileError(source, where, f"must be a number, got {v!r}")
    x = float(v)
    if not math.isfinite(x):
        raise ProfileError(source, where, f"must be finite, got {v!r}")
    if x < 0 or (x == 0 and not allow_zero):
        raise ProfileError(source, where, f"must be {'>= 0' if allow_zero else '> 0'}, got {v!r}")
    return x


def _int(v: Any, source: str, where: str, *, minimum: int = 0) -> int:
    if (
        isinstance(v, bool)
        or not isinstance(v, int | float)
        or (isinstance(v, float) and not v.is_integer())
    ):
        raise ProfileError(source, where, f"must be an integer, got {v!r}")
    if int(v) < minimum:
        raise ProfileError(source, where, f"must be >= {minimum}, got {v!r}")
    return int(v)


def _mapping(v: Any, source: str, where: str) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise ProfileError(source, where, f"must be a mapping, got {type(v).__name__}")
    return v


def _ticks(v: Any, source: str, where: str) -> tuple[int, ...]:
    if not isinstance(v, Sequence) or isinstance(v, str) or not v:
        raise ProfileError(source, where, "must be a non-empty list of token counts")
    out = tuple(_int(x, source, f"{where}[{k}]", minimum=1) for k, x in enumerate(v))
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise ProfileError(source, where, "must be strictly increasing")
    return out


def _grid(v: Any, rows: int, cols: int, source: str, where: str) -> Grid:
    if not isinstance(v, Sequence) or isinstance(v, str) or len(v) != rows:
        n = len(v) if isinstance(v, Sequence) and not isinstance(v, str) else "no"
        raise ProfileError(source, where, f"must have {rows} rows, got {n}")
    out = []
    for i, row in enumerate(v):
        if not isinstance(row, Sequence) or isinstance(row, str) or len(row) != cols:
            raise ProfileError(source, f"{where}[{i}]", f"must have {cols} values")
        out.append(tuple(_num(x, source, f"{where}[{i}][{j}]") for j, x in enumerate(row)))
    return tuple(out)


def _transpose(g: Grid) -> Grid:
    return tuple(zip(*g, strict=True)) if g else ()


def _slo(v: Any, source: str, where: str) -> Slo:
    if v is None:
        return Slo()
    m = _mapping(v, source, where)
    pct = m.get("percentile")
    return Slo(
        percentile=None
        if pct in (None, 0)
        else _int(pct, source, f"{where}.percentile", minimum=1),
        **{
            k: (None if m.get(k) is None else _num(m[k], source, f"{where}.{k}", allow_zero=False))
            for k in LATENCY_METRICS
        },
    )


# ---------------------------------------------------------------- profiles


def parse_aibrix_profile(data: Mapping[str, Any], source: str) -> GpuProfile:
    """AIBrix GPU profile JSON: ``gpu``, ``cost``, ``tputs``, ``indexes``, ``e2e``, ``slos``.

    AIBrix stores tables with rows over output lengths (``indexes[0]``) and columns over
    input lengths (``indexes[1]``); they are transposed to our (input, output) grid.
    """
    gpu = data.get("gpu")
    if not isinstance(gpu, str) or not gpu:
        raise ProfileError(source, "gpu", "missing or not a string")
    idx = data.get("indexes")
    if not isinstance(idx, Sequence) or isinstance(idx, str) or len(idx) != 2:
        raise ProfileError(source, "indexes", "must be [output token buckets, input token buckets]")
    outs = _ticks(idx[0], source, "indexes[0]")
    ins = _ticks(idx[1], source, "indexes[1]")
    tputs = _grid(data.get("tputs"), len(outs), len(ins), source, "tputs")
    latency: dict[str, Grid] = {}
    for metric in LATENCY_METRICS:
        if data.get(metric) is not None:
            latency[metric] = _transpose(_grid(data[metric], len(outs), len(ins), source, metric))
    cost = data.get("cost")
    rates = _transpose(tputs)
    if not any(x > 0 for row in rates for x in row):
        raise ProfileError(source, "tputs", "empty profile: no cell has a rate above 0")
    return GpuProfile(
        gpu=gpu,
        input_tokens=ins,
        output_tokens=outs,
        rates=rates,
        slo=_slo(data.get("slos"), source, "slos"),
        latency=latency,
        price_per_hour=None if cost is None else _num(cost, source, "cost"),
        source=source,
    )


def parse_gpumix_profile(data: Mapping[str, Any], source: str) -> GpuProfile:
    """Our own ``kind: GPUProfile`` document (see docs/optimizer.md)."""
    if data.get("apiVersion") != API_VERSION:
        raise ProfileError(
            source, "apiVersion", f"must be {API_VERSION}, got {data.get('apiVersion')!r}"
        )
    spec = _mapping(data.get("spec"), source, "spec")
    gpu = spec.get("gpu")
    if not isinstance(gpu, str) or not gpu:
        raise ProfileError(source, "spec.gpu", "missing or not a string")
    ins = _ticks(spec.get("inputTokens"), source, "spec.inputTokens")
    outs = _ticks(spec.get("outputTokens"), source, "spec.outputTokens")
    rates = _grid(spec.get("rates"), len(ins), len(outs), source, "spec.rates")
    if not any(x > 0 for row in rates for x in row):
        raise ProfileError(source, "spec.rates", "empty profile: no cell has a rate above 0")
    latency: dict[str, Grid] = {}
    lat = spec.get("latency")
    if lat is not None:
        for k, v in _mapping(lat, source, "spec.latency").items():
            if k not in LATENCY_METRICS:
                raise ProfileError(
                    source,
                    f"spec.latency.{k}",
                    f"unknown metric (known: {', '.join(LATENCY_METRICS)})",
                )
            latency[k] = _grid(v, len(ins), len(outs), source, f"spec.latency.{k}")
    model = spec.get("model", "")
    meta = data.get("metadata")
    if not model and isinstance(meta, Mapping):
        model = meta.get("name", "")
    price = spec.get("pricePerHour")
    return GpuProfile(
        gpu=gpu,
        input_tokens=ins,
        output_tokens=outs,
        rates=rates,
        slo=_slo(spec.get("slo"), source, "spec.slo"),
        latency=latency,
        model=str(model),
        gpus_per_replica=_int(
            spec.get("gpusPerReplica", 1), source, "spec.gpusPerReplica", minimum=1
        ),
        price_per_hour=None if price is None else _num(price, source, "spec.pricePerHour"),
        source=source,
    )


def parse_profile(text: str | bytes | Mapping[str, Any], source: str = "<profile>") -> GpuProfile:
    """Either format, detected by its keys (``tputs``: AIBrix; ``kind: GPUProfile``: ours)."""
    data = load_document(text, source)
    if not isinstance(data, Mapping):
        raise ProfileError(source, "", "must be a JSON/YAML mapping")
    if not data:
        raise ProfileError(source, "", "empty profile")
    if "tputs" in data:
        return parse_aibrix_profile(data, source)
    if data.get("kind") == "GPUProfile":
        return parse_gpumix_profile(data, source)
    raise ProfileError(
        source,
        "kind",
        "not a GPU profile (expected kind: GPUProfile or an AIBrix profile with 'tputs')",
    )


def apply_slo(profile: GpuProfile, slo: Slo) -> GpuProfile:
    """The profile's rates under another SLO.

    Rule: for each latency target in ``slo``, a cell whose measured latency exceeds the
    target gets rate 0; other cells keep their rate (a looser target cannot raise a rate,
    since rates above the measured one were not observed). A target on a metric without a
    latency table is accepted only if the profile was measured under the same or a stricter
    target for that metric; a higher percentile than the profile's is refused.
    """
    src = profile.source or profile.gpu
    if (
        slo.percentile is not None
        and profile.slo.percentile is not None
        and slo.percentile > profile.slo.percentile
    ):
        raise ProfileError(
            src,
            "slo.percentile",
            f"profile was measured at "
            f"p{profile.slo.percentile}, cannot vouch for p{slo.percentile}",
        )
    rates = [list(r) for r in profile.rates]
    for metric in LATENCY_METRICS:
        target = slo.target(metric)
        if target is None:
            continue
        table = profile.latency.get(metric)
        if table is None:
            measured = profile.slo.target(metric)
            if measured is None or measured > target:
                raise ProfileError(
                    src,
                    f"slo.{metric}",
                    f"target {target}s needs {metric} latencies, which the profile does not have",
                )
            continue
        for i, row in enumerate(table):
            for j, lat in enumerate(row):
                if lat > target:
                    rates[i][j] = 0.0
    merged = Slo(
        percentile=slo.percentile or profile.slo.percentile,
        **{
            m: (slo.target(m) if slo.target(m) is not None else profile.slo.target(m))
            for m in LATENCY_METRICS
        },
    )
    return replace(profile, rates=tuple(tuple(r) for r in rates), slo=merged)


def parse_slo(text: str, source: str = "--slo") -> Slo:
    """``e2e=5,ttft=0.5,percentile=99`` (seconds)."""
    values: dict[str, Any] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, sep, val = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in (*LATENCY_METRICS, "percentile"):
            raise ProfileError(
                source,
                part,
                f"expected KEY=VALUE with KEY one of {', '.join((*LATENCY_METRICS, 'percentile'))}",
            )
        try:
            values[key] = int(val) if key == "percentile" else float(val)
        except ValueError:
            raise ProfileError(source, key, f"not a number: {val!r}") from None
    return _slo(values, source, "")


# ---------------------------------------------------------------- load, prices, availability


def _spec_of(data: Any, kind: str, source: str) -> Any:
    if isinstance(data, Mapping) and "kind" in data:
        if data.get("kind") != kind:
            raise ProfileError(source, "kind", f"expected {kind}, got {data.get('kind')!r}")
        if data.get("apiVersion") != API_VERSION:
            raise ProfileError(source, "apiVersion", f"must be {API_VERSION}")
        return data.get("spec")
    return data


def parse_load(text: str | bytes | Mapping[str, Any], source: str = "<load>") -> LoadHistogram:
    """``kind: Load``: ``spec.buckets: [{inputTokens, outputTokens, rate}]`` (req/s)."""
    spec = _mapping(_spec_of(load_document(text, source), "Load", source), source, "spec")
    items = spec.get("buckets")
    if not isinstance(items, Sequence) or isinstance(items, str):
        raise ProfileError(source, "spec.buckets", "must be a list")
    rates: dict[Bucket, float] = {}
    for k, it in enumerate(items):
        where = f"spec.buckets[{k}]"
        m = _mapping(it, source, where)
        b = Bucket(
            _int(m.get("inputTokens"), source, f"{where}.inputTokens", minimum=1),
            _int(m.get("outputTokens"), source, f"{where}.outputTokens", minimum=1),
        )
        rates[b] = rates.get(b, 0.0) + _num(m.get("rate"), source, f"{where}.rate")
    return LoadHistogram(str(spec.get("model", "")), tuple(rates), tuple(rates.values()))


def parse_prices(
    text: str | bytes | Mapping[str, Any], source: str = "<prices>"
) -> dict[str, float]:
    """``kind: Prices``: ``spec.gpus: {TYPE: price per GPU per hour}`` (or a bare mapping)."""
    spec = _spec_of(load_document(text, source), "Prices", source)
    gpus = _mapping(
        spec.get("gpus", spec) if isinstance(spec, Mapping) else spec, source, "spec.gpus"
    )
    return {str(k): _num(v, source, f"spec.gpus.{k}") for k, v in gpus.items()}


def parse_availability(
    text: str | bytes | Mapping[str, Any], source: str = "<availability>"
) -> dict[str, GpuLimits]:
    """``kind: Availability``: ``spec.gpus: {TYPE: N | {available, min, max, current}}``."""
    spec = _spec_of(load_document(text, source), "Availability", source)
    gpus = _mapping(
        spec.get("gpus", spec) if isinstance(spec, Mapping) else spec, source, "spec.gpus"
    )
    out: dict[str, GpuLimits] = {}
    for k, v in gpus.items():
        where = f"spec.gpus.{k}"
        if isinstance(v, Mapping):
            unknown = set(v) - {"available", "min", "max", "current"}
            if unknown:
                raise ProfileError(source, f"{where}.{sorted(unknown)[0]}", "unknown field")
            out[str(k)] = GpuLimits(
                available_gpus=None
                if v.get("available") is None
                else _int(v["available"], source, f"{where}.available"),
                min_replicas=_int(v.get("min", 0), source, f"{where}.min"),
                max_replicas=None
                if v.get("max") is None
                else _int(v["max"], source, f"{where}.max"),
                current_replicas=_int(v.get("current", 0), source, f"{where}.current"),
            )
        else:
            out[str(k)] = GpuLimits(available_gpus=_int(v, source, where))
    return out


def build_problem(
    profiles: Sequence[GpuProfile],
    load: LoadHistogram,
    prices: Mapping[str, float],
    availability: Mapping[str, GpuLimits] | None = None,
    *,
    slo: Slo | None = None,
    headroom: float = 0.0,
    churn_weight: float = 0.0,
    prices_source: str = "prices",
    availability_source: str = "availability",
) -> Problem:
    """One ``Problem`` from profiles, a load histogram, prices and limits.

    A price in ``prices`` wins over a profile's own price. Raises ``ProfileError`` when a
    GPU type has no price, appears twice, or availability names an unknown type.
    """
    if not profiles:
        raise ProfileError("profiles", "", "no GPU profiles")
    seen: dict[str, str] = {}
    gpus: list[GpuOption] = []
    avail = dict(availability or {})
    for prof in profiles:
        if prof.gpu in seen:
            raise ProfileError(
                prof.source or prof.gpu,
                "gpu",
                f"GPU type {prof.gpu!r} also profiled in {seen[prof.gpu]}",
            )
        seen[prof.gpu] = prof.source or prof.gpu
        p = apply_slo(prof, slo) if slo is not None else prof
        price = prices.get(prof.gpu, p.price_per_hour if not prices else None)
        if price is None:
            raise ProfileError(
                prices_source, f"spec.gpus.{prof.gpu}", f"no price for GPU type {prof.gpu!r}"
            )
        lim = avail.pop(prof.gpu, GpuLimits())
        gpus.append(
            GpuOption(
                name=prof.gpu,
                rates=tuple(p.rate_for(b) for b in load.buckets),
                price_per_hour=price,
                gpus_per_replica=prof.gpus_per_replica,
                available_gpus=lim.available_gpus,
                min_replicas=lim.min_replicas,
                max_replicas=lim.max_replicas,
                current_replicas=lim.current_replicas,
            )
        )
    if avail:
        name = sorted(avail)[0]
        raise ProfileError(
            availability_source, f"spec.gpus.{name}", f"GPU type {name!r} has no profile"
        )
    return Problem(
        buckets=load.buckets,
        load=load.rates,
        gpus=tuple(gpus),
        headroom=headroom,
        churn_weight=churn_weight,
        model=load.model,
    )
