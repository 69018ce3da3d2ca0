"""Scenario files: what to simulate, read once and checked at the boundary.

A scenario is a YAML mapping (the fields are documented in ``docs/simulate.md``)::

    name: unbounded-ramp
    description: ...
    headline: ceiling            # ceiling | selector-overlap | mix-vs-single | none
    hours: 8
    stepSeconds: 60
    seed: 7
    model: llama2-7b             # model group whose traffic the load is
    profiles: ../profiles        # throughput profiles (relative to this file)
    profileTypes: [A100]         # optional: only these profiles are known
    prices: ../prices.yaml       # optional: price per GPU-hour of pools that give none
    cluster: {pools: [...]}
    load: {...}                  # see gpumix.simulate.loadgen
    workloads: {NAME: {startupMinutes: 3, replicasAt: [[0, 2], [120, 6]]}}
    manifests: [...]             # Deployments, autoscalers, Namespaces
    controller: {...}            # optional: the gpumix optimizer-driven controller
    variants: [...]              # runs to compare, each on the same load

Every error names the file and the field (``scenario.yaml: load.diurnal.meanRate: ...``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from gpumix.kube.policy import Policy, PolicyError, policy_from_mapping
from gpumix.simulate.cluster import NodePool
from gpumix.simulate.loadgen import (
    Bursts,
    Diurnal,
    LengthDistribution,
    LoadSpec,
    LoadSpecError,
    Ramp,
)

Headline = Literal["ceiling", "selector-overlap", "mix-vs-single", "none"]
HEADLINES: tuple[Headline, ...] = ("ceiling", "selector-overlap", "mix-vs-single", "none")
Admission = Literal["none", "webhook"]

SCENARIO_DIR = Path(__file__).resolve().parents[2] / "examples" / "scenarios"


class ScenarioError(ValueError):
    """A scenario that cannot be used; the message names the file and the field."""

    def __init__(self, source: str, field: str, message: str) -> None:
        super().__init__(f"{source}: {field}: {message}" if field else f"{source}: {message}")
        self.source = source
        self.field = field


class _FieldError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Workload:
    """Simulation settings of one Deployment."""

    startup_minutes: float = 3.0
    """Time from a pod being scheduled to it being Ready."""
    replicas_at: tuple[tuple[float, int], ...] = ()
    """Replica count set from outside at given minutes (e.g. another team's job)."""


@dataclass(frozen=True)
class ControllerSettings:
    """The gpumix controller: every ``interval_minutes``, observe the load and re-plan."""

    interval_minutes: float = 5.0
    window_minutes: float = 5.0
    """The load histogram is the mean rate over this many past minutes."""
    headroom: float = 0.1
    """Keep this share of each replica's capacity free (absorbs bursts between plans)."""
    churn_weight: float = 0.0
    scale_down_stabilization_minutes: float = 0.0
    """Plan for the highest load (per bucket) observed over this many past minutes."""
    time_limit_s: float = 10.0
    min_replicas: int = 0
    max_replicas: int | None = None
    types: tuple[str, ...] = ()
    """GPU types the controller may use (empty: every type with a Deployment and a profile)."""


@dataclass(frozen=True)
class Variant:
    """One run of a scenario; all variants see the same load."""

    name: str
    admission: Admission = "none"
    """``webhook``: every manifest goes through gpumix's admission review (enforce mode)."""
    fix_manifests: bool = False
    """Apply the fixes of ``gpumix check --fix`` to the manifests first."""
    controller_types: tuple[str, ...] | None = None
    """Restrict the controller to these GPU types (None: the controller's own list)."""


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    headline: Headline
    hours: float
    step_s: float
    seed: int
    model: str
    profiles: Path | None
    prices: Path | None
    """Prices file (optimizer format): price per GPU-hour of pools that give none."""
    profile_types: tuple[str, ...] | None
    """GPU types the router and the controller have profiles for (None: all in ``profiles``)."""
    pools: tuple[NodePool, ...]
    load: LoadSpec
    start_hour: float
    manifests: tuple[Mapping[str, Any], ...]
    workloads: Mapping[str, Workload]
    controller: ControllerSettings | None
    variants: tuple[Variant, ...]
    policy: Policy = field(default_factory=Policy)
    source: str = "<scenario>"


# -- field readers -----------------------------------------------------------------------


def _mapping(doc: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = doc.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _FieldError(_join(where, key), "must be a mapping")
    return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _path(doc: Mapping[str, Any], key: str, base_dir: Path | None) -> Path | None:
    """A path field, relative to the scenario file's directory."""
    if doc.get(key) is None:
        return None
    p = Path(_str(doc, key, ""))
    return p if p.is_absolute() or base_dir is None else base_dir / p


def _known(doc: Mapping[str, Any], keys: set[str], where: str) -> None:
    unknown = sorted(str(k) for k in doc if k not in keys)
    if unknown:
        raise _FieldError(
            _join(where, unknown[0]), f"unknown field; known: {', '.join(sorted(keys))}"
        )


def _number(
    doc: Mapping[str, Any], key: str, where: str, default: float, *, minimum: float | None = 0.0
) -> float:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _FieldError(_join(where, key), f"must be a number, got {value!r}")
    if minimum is not None and value < minimum:
        raise _FieldError(_join(where, key), f"must be >= {minimum:g}, got {value!r}")
    return float(value)


def _int(doc: Mapping[str, Any], key: str, where: str, default: int, *, minimum: int = 0) -> int:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _FieldError(_join(where, key), f"must be an integer, got {value!r}")
    if value < minimum:
        raise _FieldError(_join(where, key), f"must be >= {minimum}, got {value!r}")
    return value


def _str(doc: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = doc.get(key, default)
    if not isinstance(value, str) or not value:
        raise _FieldError(_join(where, key), "must be a non-empty string")
    return value


def _str_list(doc: Mapping[str, Any], key: str, where: str) -> tuple[str, ...] | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _FieldError(_join(where, key), "must be a list of non-empty strings")
    return tuple(value)


def _length(doc: Mapping[str, Any], where: str, default: LengthDistribution) -> LengthDistribution:
    _known(doc, {"distribution", "median", "sigma", "alpha", "minimum", "maximum"}, where)
    kind = doc.get("distribution", default.kind)
    if kind not in ("lognormal", "pareto"):
        raise _FieldError(_join(where, "distribution"), "must be lognormal or pareto")
    return LengthDistribution(
        kind=kind,
        median=_number(doc, "median", where, default.median),
        sigma=_number(doc, "sigma", where, default.sigma),
        alpha=_number(doc, "alpha", where, default.alpha),
        minimum=_int(doc, "minimum", where, default.minimum, minimum=1),
        maximum=_int(doc, "maximum", where, default.maximum, minimum=1),
    )


def load_spec_from_mapping(doc: Mapping[str, Any], where: str = "load") -> tuple[LoadSpec, float]:
    """The load spec and the start hour of the run."""
    _known(
        doc,
        {"profile", "diurnal", "ramp", "bursts", "inputTokens", "outputTokens", "startHour"},
        where,
    )
    base = LoadSpec()
    profile = doc.get("profile", base.profile)
    if profile not in ("diurnal", "ramp"):
        raise _FieldError(_join(where, "profile"), f"must be diurnal or ramp, got {profile!r}")
    d = _mapping(doc, "diurnal", where)
    w = _join(where, "diurnal")
    _known(d, {"meanRate", "peakToTrough", "peakHour"}, w)
    r = _mapping(doc, "ramp", where)
    wr = _join(where, "ramp")
    _known(r, {"startRate", "endRate", "rampMinutes"}, wr)
    b = _mapping(doc, "bursts", where)
    wb = _join(where, "bursts")
    _known(b, {"perHour", "meanMinutes", "maxMinutes", "multiplier"}, wb)
    spec = LoadSpec(
        profile=profile,
        diurnal=Diurnal(
            mean_rate=_number(d, "meanRate", w, base.diurnal.mean_rate),
            peak_to_trough=_number(d, "peakToTrough", w, base.diurnal.peak_to_trough, minimum=1),
            peak_hour=_number(d, "peakHour", w, base.diurnal.peak_hour),
        ),
        ramp=Ramp(
            start_rate=_number(r, "startRate", wr, base.ramp.start_rate),
            end_rate=_number(r, "endRate", wr, base.ramp.end_rate),
            ramp_minutes=_number(r, "rampMinutes", wr, base.ramp.ramp_minutes, minimum=1e-9),
        ),
        bursts=Bursts(
            per_hour=_number(b, "perHour", wb, base.bursts.per_hour),
            mean_minutes=_number(b, "meanMinutes", wb, base.bursts.mean_minutes),
            max_minutes=_number(b, "maxMinutes", wb, base.bursts.max_minutes),
            multiplier=_number(b, "multiplier", wb, base.bursts.multiplier, minimum=1),
        ),
        input_tokens=_length(
            _mapping(doc, "inputTokens", where), _join(where, "inputTokens"), base.input_tokens
        ),
        output_tokens=_length(
            _mapping(doc, "outputTokens", where), _join(where, "outputTokens"), base.output_tokens
        ),
    )
    try:
        spec.validate(where)
    except LoadSpecError as exc:
        raise _FieldError(exc.field, str(exc).split(": ", 1)[-1]) from exc
    start_hour = _number(doc, "startHour", where, 0.0)
    return spec, start_hour


def _pools(doc: Mapping[str, Any], has_prices: bool) -> tuple[NodePool, ...]:
    cluster = _mapping(doc, "cluster", "")
    _known(cluster, {"pools"}, "cluster")
    raw = cluster.get("pools")
    if not isinstance(raw, list) or not raw:
        raise _FieldError("cluster.pools", "must be a non-empty list of node pools")
    pools: list[NodePool] = []
    for i, item in enumerate(raw):
        where = f"cluster.pools[{i}]"
        if not isinstance(item, Mapping):
            raise _FieldError(where, "must be a mapping")
        _known(
            item,
            {"name", "gpuType", "nodes", "gpusPerNode", "cpusPerNode", "pricePerGpuHour"},
            where,
        )
        gpu_type = item.get("gpuType")
        if gpu_type is not None and (not isinstance(gpu_type, str) or not gpu_type):
            raise _FieldError(f"{where}.gpuType", "must be a non-empty string or absent")
        price: float | None = None
        if "pricePerGpuHour" in item:
            price = _number(item, "pricePerGpuHour", where, 0.0)
        elif gpu_type is not None and not has_prices:
            raise _FieldError(
                f"{where}.pricePerGpuHour", "required when the scenario has no prices file"
            )
        pools.append(
            NodePool(
                name=_str(item, "name", where, default=str(gpu_type or f"pool{i}").lower()),
                gpu_type=gpu_type,
                nodes=_int(item, "nodes", where, 1, minimum=1),
                gpus_per_node=_int(item, "gpusPerNode", where, 8 if gpu_type else 0),
                cpus_per_node=_number(item, "cpusPerNode", where, 64.0),
                price_per_gpu_hour=price,
            )
        )
    names = [p.name for p in pools]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise _FieldError("cluster.pools", f"duplicate pool name {dup[0]!r}")
    return tuple(pools)


def _workloads(doc: Mapping[str, Any]) -> dict[str, Workload]:
    raw = _mapping(doc, "workloads", "")
    out: dict[str, Workload] = {}
    for name, item in raw.items():
        where = f"workloads.{name}"
        if not isinstance(item, Mapping):
            raise _FieldError(where, "must be a mapping")
        _known(item, {"startupMinutes", "replicasAt"}, where)
        steps = item.get("replicasAt", [])
        if not isinstance(steps, list):
            raise _FieldError(f"{where}.replicasAt", "must be a list of [minute, replicas]")
        at: list[tuple[float, int]] = []
        for j, pair in enumerate(steps):
            if (
                not isinstance(pair, list)
                or len(pair) != 2
                or isinstance(pair[0], bool)
                or not isinstance(pair[0], (int, float))
                or isinstance(pair[1], bool)
                or not isinstance(pair[1], int)
                or pair[0] < 0
                or pair[1] < 0
            ):
                raise _FieldError(
                    f"{where}.replicasAt[{j}]", "must be [minute >= 0, replicas >= 0]"
                )
            at.append((float(pair[0]), int(pair[1])))
        out[str(name)] = Workload(
            startup_minutes=_number(item, "startupMinutes", where, Workload.startup_minutes),
            replicas_at=tuple(sorted(at)),
        )
    return out


def _controller(doc: Mapping[str, Any]) -> ControllerSettings | None:
    if doc.get("controller") is None:
        return None
    raw = _mapping(doc, "controller", "")
    where = "controller"
    _known(
        raw,
        {
            "intervalMinutes",
            "windowMinutes",
            "headroom",
            "churnWeight",
            "scaleDownStabilizationMinutes",
            "timeLimitSeconds",
            "minReplicas",
            "maxReplicas",
            "types",
        },
        where,
    )
    base = ControllerSettings()
    headroom = _number(raw, "headroom", where, base.headroom)
    if headroom >= 1:
        raise _FieldError(f"{where}.headroom", "must be below 1")
    max_replicas = raw.get("maxReplicas")
    if max_replicas is not None:
        max_replicas = _int(raw, "maxReplicas", where, 0, minimum=1)
    return ControllerSettings(
        interval_minutes=_number(raw, "intervalMinutes", where, base.interval_minutes, minimum=1),
        window_minutes=_number(raw, "windowMinutes", where, base.window_minutes, minimum=1),
        headroom=headroom,
        churn_weight=_number(raw, "churnWeight", where, base.churn_weight),
        scale_down_stabilization_minutes=_number(
            raw, "scaleDownStabilizationMinutes", where, base.scale_down_stabilization_minutes
        ),
        time_limit_s=_number(raw, "timeLimitSeconds", where, base.time_limit_s, minimum=0.01),
        min_replicas=_int(raw, "minReplicas", where, base.min_replicas),
        max_replicas=max_replicas,
        types=_str_list(raw, "types", where) or (),
    )


def _variants(doc: Mapping[str, Any]) -> tuple[Variant, ...]:
    raw = doc.get("variants")
    if raw is None:
        return (Variant("default"),)
    if not isinstance(raw, list) or not raw:
        raise _FieldError("variants", "must be a non-empty list")
    out: list[Variant] = []
    for i, item in enumerate(raw):
        where = f"variants[{i}]"
        if not isinstance(item, Mapping):
            raise _FieldError(where, "must be a mapping")
        _known(item, {"name", "admission", "fixManifests", "controllerTypes"}, where)
        admission = item.get("admission", "none")
        if admission not in ("none", "webhook"):
            raise _FieldError(f"{where}.admission", f"must be none or webhook, got {admission!r}")
        fix = item.get("fixManifests", False)
        if not isinstance(fix, bool):
            raise _FieldError(f"{where}.fixManifests", "must be true or false")
        out.append(
            Variant(
                name=_str(item, "name", where),
                admission=cast(Admission, admission),
                fix_manifests=fix,
                controller_types=_str_list(item, "controllerTypes", where),
            )
        )
    names = [v.name for v in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise _FieldError("variants", f"duplicate variant name {dup[0]!r}")
    return tuple(out)


def _manifests(doc: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...]:
    raw = doc.get("manifests", [])
    if not isinstance(raw, list):
        raise _FieldError("manifests", "must be a list of Kubernetes objects")
    for i, obj in enumerate(raw):
        where = f"manifests[{i}]"
        if not isinstance(obj, Mapping):
            raise _FieldError(where, "must be a mapping (a Kubernetes object)")
        for key in ("apiVersion", "kind"):
            if not isinstance(obj.get(key), str):
                raise _FieldError(f"{where}.{key}", "must be a string")
        meta = obj.get("metadata")
        if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str):
            raise _FieldError(f"{where}.metadata.name", "must be a string")
    return tuple(raw)


_TOP = {
    "name",
    "description",
    "headline",
    "hours",
    "stepSeconds",
    "seed",
    "model",
    "profiles",
    "profileTypes",
    "prices",
    "cluster",
    "load",
    "workloads",
    "manifests",
    "controller",
    "variants",
    "policy",
}


def scenario_from_mapping(doc: object, source: str, base_dir: Path | None = None) -> Scenario:
    """Check a parsed scenario document; raise :class:`ScenarioError` naming the field."""
    try:
        return _scenario(doc, source, base_dir)
    except _FieldError as exc:
        raise ScenarioError(source, exc.field, exc.message) from exc


def _scenario(doc: object, source: str, base_dir: Path | None) -> Scenario:
    if not isinstance(doc, Mapping):
        raise _FieldError("", "a scenario must be a YAML mapping")
    _known(doc, _TOP, "")
    headline = doc.get("headline", "none")
    if headline not in HEADLINES:
        raise _FieldError("headline", f"must be one of {', '.join(HEADLINES)}, got {headline!r}")
    step_s = _number(doc, "stepSeconds", "", 60.0, minimum=1.0)
    hours = _number(doc, "hours", "", 24.0, minimum=0.0)
    if hours * 3600 < step_s:
        raise _FieldError("hours", "must cover at least one step")
    load, start_hour = load_spec_from_mapping(_mapping(doc, "load", ""))
    try:
        policy = policy_from_mapping(doc.get("policy"))
    except PolicyError as exc:
        raise _FieldError(f"policy.{exc.field}", str(exc).split(": ", 1)[-1]) from exc
    return Scenario(
        name=_str(doc, "name", ""),
        description=str(doc.get("description", "")).strip(),
        headline=cast(Headline, headline),
        hours=hours,
        step_s=step_s,
        seed=_int(doc, "seed", "", 0),
        model=_str(doc, "model", "", default="model"),
        profiles=_path(doc, "profiles", base_dir),
        profile_types=_str_list(doc, "profileTypes", ""),
        prices=_path(doc, "prices", base_dir),
        pools=_pools(doc, doc.get("prices") is not None),
        load=load,
        start_hour=start_hour,
        manifests=_manifests(doc),
        workloads=_workloads(doc),
        controller=_controller(doc),
        variants=_variants(doc),
        policy=policy,
        source=source,
    )


def read_scenario(path: Path) -> Scenario:
    """Read and check a scenario file."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(source, "", f"cannot read: {exc.strerror or exc}") from exc
    try:
        doc = YAML(typ="safe", pure=True).load(text)
    except YAMLError as exc:
        raise ScenarioError(source, "", f"invalid YAML: {str(exc).splitlines()[0]}") from exc
    return scenario_from_mapping(doc, source, path.parent)


def builtin_scenarios(directory: Path = SCENARIO_DIR) -> dict[str, Path]:
    """Named scenarios: ``examples/scenarios/<name>.yaml``."""
    if not directory.is_dir():
        return {}
    return {p.stem: p for p in sorted(directory.glob("*.yaml"))}


def resolve(name_or_path: str, directory: Path = SCENARIO_DIR) -> Path:
    """A scenario name (``unbounded-ramp``) or a file path."""
    named = builtin_scenarios(directory)
    if name_or_path in named:
        return named[name_or_path]
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml", ".json") or path.exists():
        return path
    known = ", ".join(named) or "none"
    raise ScenarioError(name_or_path, "", f"unknown scenario (known: {known}; or give a file)")
