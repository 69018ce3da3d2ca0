"""The ``GPUMix`` custom resource: a typed, validated view of its ``spec`` (pure).

``parse_spec(obj)`` turns the resource as read from the API (a JSON-like
mapping) into a frozen :class:`GPUMixSpec`, or raises :class:`SpecError`
listing every problem, each naming its field (``spec.prices.H100``).  The CRD
schema in ``manifests/crds/gpumix.io_gpumixes.yaml`` rejects most of these at
the API already; this parser is the second line for clusters without schema
validation and for files read offline.

Cross-object checks (a price for a GPU type that no profile knows, members
that overlap) need the cluster and live in :mod:`controller.plan`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

GROUP = "gpumix.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "GPUMix"
PLURAL = "gpumixes"

Mode = Literal["recommend", "scale"]
MODES: tuple[Mode, ...] = ("recommend", "scale")

DEFAULT_HEADROOM = 0.1
DEFAULT_TOLERANCE = 0.1
DEFAULT_INTERVAL_S = 30
DEFAULT_STABILIZATION_S = 300
DEFAULT_WINDOW_S = 300
DEFAULT_STALENESS_S = 120

PROMPT_BUCKET_METRIC = "vllm:request_prompt_tokens_bucket"
GENERATION_BUCKET_METRIC = "vllm:request_generation_tokens_bucket"
SUCCESS_METRIC = "vllm:request_success_total"


class SpecError(ValueError):
    """A GPUMix spec that cannot be used; ``problems`` are ``(field, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems))


@dataclass(frozen=True, slots=True)
class Slo:
    """Latency targets the profiles were (or must be) measured against; None = not set."""

    ttft_seconds: float | None = None
    tpot_seconds: float | None = None
    e2e_seconds: float | None = None
    percentile: float = 99.0


@dataclass(frozen=True, slots=True)
class ProfileBucket:
    input_tokens: int
    output_tokens: int
    max_rps: float
    """Highest request rate one replica sustains within the SLO for this bucket."""


@dataclass(frozen=True, slots=True)
class InlineProfile:
    gpu_type: str
    buckets: tuple[ProfileBucket, ...]


@dataclass(frozen=True, slots=True)
class ConfigMapRef:
    name: str
    key: str | None = None
    """One key of the ConfigMap; None: every key holds a profile (one per GPU type)."""


@dataclass(frozen=True, slots=True)
class Profiles:
    inline: tuple[InlineProfile, ...] = ()
    config_map: ConfigMapRef | None = None


@dataclass(frozen=True, slots=True)
class GpuTypeLimits:
    min_replicas: int = 0
    max_replicas: int | None = None
    """None: only the free GPUs and autoscaler ceilings bound it."""
    gpus_per_replica: int | None = None
    """None: read from the member Deployment's GPU requests."""


@dataclass(frozen=True, slots=True)
class LoadBucket:
    """Request rate in one (input tokens, output tokens) bucket; bounds are upper bounds."""

    input_tokens: float
    output_tokens: float
    rps: float


@dataclass(frozen=True, slots=True)
class StaticLoad:
    buckets: tuple[LoadBucket, ...]


@dataclass(frozen=True, slots=True)
class PrometheusLoad:
    url: str
    selector: str = ""
    """Label matchers added to every series, e.g. ``model_name="llama2-7b"``."""
    window_seconds: int = DEFAULT_WINDOW_S
    staleness_seconds: int = DEFAULT_STALENESS_S
    prompt_bucket_metric: str = PROMPT_BUCKET_METRIC
    generation_bucket_metric: str = GENERATION_BUCKET_METRIC
    success_metric: str = SUCCESS_METRIC
    query: str | None = None
    """PromQL that already returns per-bucket request rates (both labels below)."""
    input_label: str = "input_bucket"
    output_label: str = "output_bucket"
    timeout_seconds: float = 5.0


LoadSource = StaticLoad | PrometheusLoad


@dataclass(frozen=True, slots=True)
class GPUMixSpec:
    model: str
    model_label_key: str | None
    slo: Slo
    profiles: Profiles
    prices: Mapping[str, float]
    gpu_types: Mapping[str, GpuTypeLimits]
    headroom: float
    churn_weight: float
    load_source: LoadSource
    interval_seconds: int
    mode: Mode
    scale_down_stabilization_seconds: int
    min_change_replicas: int
    solver_time_limit_seconds: float = 2.0
    tolerance: float = 0.1
    """A load within this fraction of the load the current plan was made for keeps the plan."""

    def limits(self, gpu_type: str) -> GpuTypeLimits:
        return self.gpu_types.get(gpu_type, GpuTypeLimits())


class _Reader:
    """Collects problems instead of stopping at the first one."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    def mapping(self, value: object, path: str, *, required: bool = False) -> Mapping[str, object]:
        if value is None:
            if required:
                self.fail(path, "required")
            return {}
        if not isinstance(value, Mapping):
            self.fail(path, f"must be an object, got {_typename(value)}")
            return {}
        return value

    def string(self, value: object, path: str, *, required: bool = False) -> str | None:
        if value is None:
            if required:
                self.fail(path, "required")
            return None
        if not isinstance(value, str) or not value:
            self.fail(path, f"must be a non-empty string, got {value!r}")
            return None
        return value

    def integer(
        self, value: object, path: str, default: int | None, *, minimum: int = 0
    ) -> int | None:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"must be an integer, got {value!r}")
            return default
        if value < minimum:
            self.fail(path, f"must be at least {minimum}, got {value}")
            return default
        return value

    def number(
        self,
        value: object,
        path: str,
        default: float | None,
        *,
        minimum: float = 0.0,
        below: float | None = None,
        positive: bool = False,
    ) -> float | None:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(path, f"must be a number, got {value!r}")
            return default
        number = float(value)
        if not math.isfinite(number):
            self.fail(path, f"must be finite, got {value!r}")
            return default
        if number < minimum or (positive and number <= 0):
            self.fail(path, f"must be {'above' if positive else 'at least'} {minimum}, got {value}")
            return default
        if below is not None and number >= below:
            self.fail(path, f"must be below {below}, got {value}")
            return default
        return number

    def unknown(self, doc: Mapping[str, object], known: set[str], path: str) -> None:
        for key in sorted(set(doc) - known):
            self.fail(f"{path}.{key}", f"unknown field; known: {', '.join(sorted(known))}")


def _typename(value: object) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


_SPEC_KEYS = {
    "model",
    "modelLabelKey",
    "slo",
    "profiles",
    "prices",
    "gpuTypes",
    "headroom",
    "churnWeight",
    "loadSource",
    "intervalSeconds",
    "mode",
    "scaleDownStabilizationSeconds",
    "minChangeReplicas",
    "solverTimeLimitSeconds",
    "tolerance",
}


def parse_spec(obj: Mapping[str, object]) -> GPUMixSpec:
    """The typed spec of a GPUMix object (the whole object, or just its ``spec``)."""
    r = _Reader()
    raw = obj.get("spec") if "spec" in obj or "kind" in obj else obj
    spec = r.mapping(raw, "spec", required=True)
    r.unknown(spec, _SPEC_KEYS, "spec")
    model = r.string(spec.get("model"), "spec.model", required=True)
    label_key = r.string(spec.get("modelLabelKey"), "spec.modelLabelKey")
    slo = _slo(r, spec.get("slo"))
    profiles = _profiles(r, spec.get("profiles"))
    prices = _prices(r, spec.get("prices"))
    gpu_types = _gpu_types(r, spec.get("gpuTypes"))
    headroom = r.number(spec.get("headroom"), "spec.headroom", DEFAULT_HEADROOM, below=1.0)
    churn = r.number(spec.get("churnWeight"), "spec.churnWeight", 0.0)
    load = _load_source(r, spec.get("loadSource"))
    interval = r.integer(
        spec.get("intervalSeconds"), "spec.intervalSeconds", DEFAULT_INTERVAL_S, minimum=1
    )
    mode = spec.get("mode", "recommend")
    if mode not in MODES:
        r.fail("spec.mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
        mode = "recommend"
    stabilization = r.integer(
        spec.get("scaleDownStabilizationSeconds"),
        "spec.scaleDownStabilizationSeconds",
        DEFAULT_STABILIZATION_S,
    )
    min_change = r.integer(spec.get("minChangeReplicas"), "spec.minChangeReplicas", 1, minimum=1)
    time_limit = r.number(
        spec.get("solverTimeLimitSeconds"), "spec.solverTimeLimitSeconds", 2.0, positive=True
    )
    tolerance = r.number(spec.get("tolerance"), "spec.tolerance", DEFAULT_TOLERANCE, below=1.0)
    for gpu, limits in gpu_types.items():
        if limits.max_replicas is not None and limits.min_replicas > limits.max_replicas:
            r.fail(
                f"spec.gpuTypes.{gpu}.minReplicas",
                f"{limits.min_replicas} is above maxReplicas ({limits.max_replicas})",
            )
    if r.problems or model is None or load is None:
        raise SpecError(r.problems or [("spec", "invalid")])
    return GPUMixSpec(
        model=model,
        model_label_key=label_key,
        slo=slo,
        profiles=profiles,
        prices=prices,
        gpu_types=gpu_types,
        headroom=headroom if headroom is not None else DEFAULT_HEADROOM,
        churn_weight=churn or 0.0,
        load_source=load,
        interval_seconds=interval or DEFAULT_INTERVAL_S,
        mode="scale" if mode == "scale" else "recommend",
        scale_down_stabilization_seconds=(
            stabilization if stabilization is not None else DEFAULT_STABILIZATION_S
        ),
        min_change_replicas=min_change or 1,
        solver_time_limit_seconds=time_limit or 2.0,
        tolerance=tolerance if tolerance is not None else DEFAULT_TOLERANCE,
    )


def _slo(r: _Reader, raw: object) -> Slo:
    doc = r.mapping(raw, "spec.slo")
    r.unknown(doc, {"ttftSeconds", "tpotSeconds", "e2eSeconds", "percentile"}, "spec.slo")
    pct = r.number(doc.get("percentile"), "spec.slo.percentile", 99.0, positive=True)
    if pct is not None and pct > 100:
        r.fail("spec.slo.percentile", f"must be at most 100, got {pct}")
    return Slo(
        ttft_seconds=r.number(doc.get("ttftSeconds"), "spec.slo.ttftSeconds", None, positive=True),
        tpot_seconds=r.number(doc.get("tpotSeconds"), "spec.slo.tpotSeconds", None, positive=True),
        e2e_seconds=r.number(doc.get("e2eSeconds"), "spec.slo.e2eSeconds", None, positive=True),
        percentile=pct if pct is not None else 99.0,
    )


def _profiles(r: _Reader, raw: object) -> Profiles:
    doc = r.mapping(raw, "spec.profiles", required=True)
    r.unknown(doc, {"inline", "configMapRef"}, "spec.profiles")
    inline_raw = doc.get("inline")
    ref_raw = doc.get("configMapRef")
    if inline_raw is None and ref_raw is None and "spec.profiles" not in dict(r.problems):
        r.fail("spec.profiles", "set one of inline or configMapRef")
    if inline_raw is not None and ref_raw is not None:
        r.fail("spec.profiles", "set only one of inline and configMapRef")
    inline: list[InlineProfile] = []
    if inline_raw is not None:
        if not isinstance(inline_raw, list) or not inline_raw:
            r.fail("spec.profiles.inline", "must be a non-empty list")
        else:
            seen: set[str] = set()
            for i, item in enumerate(inline_raw):
                prof = _inline_profile(r, item, f"spec.profiles.inline[{i}]")
                if prof is None:
                    continue
                if prof.gpu_type in seen:
                    r.fail(f"spec.profiles.inline[{i}].gpuType", f"duplicate {prof.gpu_type!r}")
                seen.add(prof.gpu_type)
                inline.append(prof)
    ref: ConfigMapRef | None = None
    if ref_raw is not None:
        ref_doc = r.mapping(ref_raw, "spec.profiles.configMapRef")
        r.unknown(ref_doc, {"name", "key"}, "spec.profiles.configMapRef")
        name = r.string(ref_doc.get("name"), "spec.profiles.configMapRef.name", required=True)
        key = r.string(ref_doc.get("key"), "spec.profiles.configMapRef.key")
        if name is not None:
            ref = ConfigMapRef(name, key)
    return Profiles(tuple(inline), ref)


def read_inline_profiles(items: Sequence[object]) -> list[InlineProfile]:
    """Profiles in the inline form (``{gpuType, buckets}``) outside a GPUMix, as a
    profile file lists them, each checked as ``spec.profiles.inline`` is; SpecError
    names every problem by its path (``[i].buckets[j].inputTokens``)."""
    r = _Reader()
    out = [
        p for i, item in enumerate(items) if (p := _inline_profile(r, item, f"[{i}]")) is not None
    ]
    if r.problems:
        raise SpecError(r.problems)
    return out


def _inline_profile(r: _Reader, raw: object, path: str) -> InlineProfile | None:
    doc = r.mapping(raw, path, required=True)
    r.unknown(doc, {"gpuType", "buckets"}, path)
    gpu = r.string(doc.get("gpuType"), f"{path}.gpuType", required=True)
    buckets_raw = doc.get("buckets")
    buckets: list[ProfileBucket] = []
    if not isinstance(buckets_raw, list) or not buckets_raw:
        r.fail(f"{path}.buckets", "must be a non-empty list")
    else:
        for j, b in enumerate(buckets_raw):
            bpath = f"{path}.buckets[{j}]"
            bdoc = r.mapping(b, bpath, required=True)
            r.unknown(bdoc, {"inputTokens", "outputTokens", "maxRequestsPerSecond"}, bpath)
            inp = r.integer(bdoc.get("inputTokens"), f"{bpath}.inputTokens", None, minimum=1)
            out = r.integer(bdoc.get("outputTokens"), f"{bpath}.outputTokens", None, minimum=1)
            rps = r.number(bdoc.get("maxRequestsPerSecond"), f"{bpath}.maxRequestsPerSecond", None)
            for name, value in (
                ("inputTokens", inp),
                ("outputTokens", out),
                ("maxRequestsPerSecond", rps),
            ):
                if value is None and bdoc.get(name) is None:
                    r.fail(f"{bpath}.{name}", "required")
            if inp is not None and out is not None and rps is not None:
                buckets.append(ProfileBucket(inp, out, rps))
    if gpu is None:
        return None
    return InlineProfile(gpu, tuple(buckets))


def _prices(r: _Reader, raw: object) -> dict[str, float]:
    doc = r.mapping(raw, "spec.prices", required=True)
    prices: dict[str, float] = {}
    for gpu, value in doc.items():
        price = r.number(value, f"spec.prices.{gpu}", None)
        if price is not None:
            prices[str(gpu)] = price
    if raw is not None and isinstance(raw, Mapping) and not doc:
        r.fail("spec.prices", "must name at least one GPU type")
    return prices


def _gpu_types(r: _Reader, raw: object) -> dict[str, GpuTypeLimits]:
    doc = r.mapping(raw, "spec.gpuTypes")
    out: dict[str, GpuTypeLimits] = {}
    for gpu, item in doc.items():
        path = f"spec.gpuTypes.{gpu}"
        d = r.mapping(item, path, required=True)
        r.unknown(d, {"minReplicas", "maxReplicas", "gpusPerReplica"}, path)
        out[str(gpu)] = GpuTypeLimits(
            min_replicas=r.integer(d.get("minReplicas"), f"{path}.minReplicas", 0) or 0,
            max_replicas=r.integer(d.get("maxReplicas"), f"{path}.maxReplicas", None),
            gpus_per_replica=r.integer(
                d.get("gpusPerReplica"), f"{path}.gpusPerReplica", None, minimum=1
            ),
        )
    return out


def _load_source(r: _Reader, raw: object) -> LoadSource | None:
    doc = r.mapping(raw, "spec.loadSource", required=True)
    r.unknown(doc, {"static", "prometheus"}, "spec.loadSource")
    has_static, has_prom = "static" in doc, "prometheus" in doc
    if raw is not None and has_static == has_prom:
        r.fail("spec.loadSource", "set exactly one of static or prometheus")
        return None
    if has_static:
        return _static_load(r, doc.get("static"))
    if has_prom:
        return _prometheus_load(r, doc.get("prometheus"))
    return None


def _static_load(r: _Reader, raw: object) -> StaticLoad | None:
    sdoc = r.mapping(raw, "spec.loadSource.static", required=True)
    r.unknown(sdoc, {"buckets"}, "spec.loadSource.static")
    items = sdoc.get("buckets", [])
    if not isinstance(items, list):
        r.fail("spec.loadSource.static.buckets", "must be a list")
        return None
    buckets: list[LoadBucket] = []
    for i, item in enumerate(items):
        path = f"spec.loadSource.static.buckets[{i}]"
        d = r.mapping(item, path, required=True)
        r.unknown(d, {"inputTokens", "outputTokens", "requestsPerSecond"}, path)
        inp = r.integer(d.get("inputTokens"), f"{path}.inputTokens", None, minimum=1)
        out = r.integer(d.get("outputTokens"), f"{path}.outputTokens", None, minimum=1)
        rps = r.number(d.get("requestsPerSecond"), f"{path}.requestsPerSecond", None)
        if inp is None or out is None or rps is None:
            for name in ("inputTokens", "outputTokens", "requestsPerSecond"):
                if d.get(name) is None:
                    r.fail(f"{path}.{name}", "required")
            continue
        buckets.append(LoadBucket(float(inp), float(out), rps))
    return StaticLoad(tuple(buckets))


def _prometheus_load(r: _Reader, raw: object) -> PrometheusLoad:
    path = "spec.loadSource.prometheus"
    p = r.mapping(raw, path, required=True)
    r.unknown(
        p,
        {
            "url",
            "selector",
            "windowSeconds",
            "stalenessSeconds",
            "promptTokensBucketMetric",
            "generationTokensBucketMetric",
            "requestSuccessMetric",
            "query",
            "inputLabel",
            "outputLabel",
            "timeoutSeconds",
        },
        path,
    )
    url = r.string(p.get("url"), f"{path}.url", required=True)
    if url is not None and not url.startswith(("http://", "https://")):
        r.fail(f"{path}.url", f"must start with http:// or https://, got {url!r}")
    selector = p.get("selector", "")
    if not isinstance(selector, str) or any(c in selector for c in "{}"):
        r.fail(f"{path}.selector", 'must be label matchers without braces, e.g. a="b"')
        selector = ""
    window = r.integer(p.get("windowSeconds"), f"{path}.windowSeconds", DEFAULT_WINDOW_S, minimum=1)
    staleness = r.integer(
        p.get("stalenessSeconds"), f"{path}.stalenessSeconds", DEFAULT_STALENESS_S, minimum=1
    )
    base = PrometheusLoad(url=url or "")
    return PrometheusLoad(
        url=url or "",
        selector=selector,
        window_seconds=window or DEFAULT_WINDOW_S,
        staleness_seconds=staleness or DEFAULT_STALENESS_S,
        prompt_bucket_metric=r.string(
            p.get("promptTokensBucketMetric"), f"{path}.promptTokensBucketMetric"
        )
        or base.prompt_bucket_metric,
        generation_bucket_metric=r.string(
            p.get("generationTokensBucketMetric"), f"{path}.generationTokensBucketMetric"
        )
        or base.generation_bucket_metric,
        success_metric=r.string(p.get("requestSuccessMetric"), f"{path}.requestSuccessMetric")
        or base.success_metric,
        query=r.string(p.get("query"), f"{path}.query"),
        input_label=r.string(p.get("inputLabel"), f"{path}.inputLabel") or base.input_label,
        output_label=r.string(p.get("outputLabel"), f"{path}.outputLabel") or base.output_label,
        timeout_seconds=r.number(
            p.get("timeoutSeconds"), f"{path}.timeoutSeconds", 5.0, positive=True
        )
        or 5.0,
    )
