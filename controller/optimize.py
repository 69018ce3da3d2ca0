"""The bridge from the plan's solver interface to :mod:`optimizer` (OR-Tools).

``controller.plan`` describes a GPU-mix problem with its own small types
(:class:`~controller.plan.MixProblem`) and expects a
:class:`~controller.plan.MixSolution`; this module translates both ways, so
the optimizer's types never reach the plan and the plan never imports the
optimizer (the layer contract in pyproject.toml keeps them independent).

Profiles are resolved here too: inline profiles from the GPUMix, or a
ConfigMap whose keys hold profile documents in a format the optimizer reads.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import yaml

from gpumix import optimizer
from gpumix.controller.plan import (
    MixProblem,
    MixSolution,
    ProfileSet,
    ProfilesUnavailable,
    SolverStatus,
)
from gpumix.controller.spec import (
    GPUMixSpec,
    InlineProfile,
    ProfileBucket,
    Slo,
    SpecError,
    read_inline_profiles,
)
from gpumix.optimizer.profiles import ProfileError, apply_slo, parse_profile
from gpumix.optimizer.profiles import Slo as OptSlo

ProfileResult = ProfileSet | ProfilesUnavailable


def inline_profile_set(profiles: tuple[InlineProfile, ...]) -> ProfileSet:
    return ProfileSet(frozenset(p.gpu_type for p in profiles), profiles)


def profiles_from_config_map(
    config_map: Mapping[str, Any] | None, name: str, key: str | None, slo: Slo | None = None
) -> ProfileResult:
    """Profiles from a ConfigMap: every key (or ``key``) holds profile documents."""
    if config_map is None:
        return ProfilesUnavailable(f"ConfigMap {name} not found")
    data = config_map.get("data") or {}
    if not isinstance(data, Mapping):
        return ProfilesUnavailable(f"ConfigMap {name} has no data")
    keys = [key] if key is not None else sorted(data)
    if key is not None and key not in data:
        return ProfilesUnavailable(f"ConfigMap {name} has no key {key!r}")
    found: list[InlineProfile] = []
    for k in keys:
        try:
            found.extend(parse_profile_document(str(data[k]), f"ConfigMap {name} key {k}", slo))
        except ValueError as exc:
            return ProfilesUnavailable(str(exc))
    if not found:
        return ProfilesUnavailable(f"ConfigMap {name} holds no profile")
    seen: set[str] = set()
    for prof in found:
        if prof.gpu_type in seen:
            return ProfilesUnavailable(f"ConfigMap {name}: GPU type {prof.gpu_type} profiled twice")
        seen.add(prof.gpu_type)
    return inline_profile_set(tuple(found))


def parse_profile_document(text: str, where: str, slo: Slo | None = None) -> list[InlineProfile]:
    """Profiles in one document.

    Read with the optimizer's readers (an AIBrix profile JSON, or a gpumix
    ``kind: GPUProfile`` document; latency tables are re-evaluated for the
    GPUMix's SLO), or in the shape of ``spec.profiles.inline``: a list of
    ``{gpuType, buckets: [{inputTokens, outputTokens, maxRequestsPerSecond}]}``
    (or a mapping with that list under ``profiles``).
    """
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{where}: invalid YAML/JSON: {str(exc).splitlines()[0]}") from exc
    if isinstance(doc, Mapping) and ("tputs" in doc or doc.get("kind") == "GPUProfile"):
        try:
            prof = parse_profile(text, where)
            targets = (slo.ttft_seconds, slo.tpot_seconds, slo.e2e_seconds) if slo else ()
            if slo is not None and any(v is not None for v in targets):
                prof = apply_slo(
                    prof,
                    OptSlo(
                        percentile=round(slo.percentile),
                        e2e=slo.e2e_seconds,
                        ttft=slo.ttft_seconds,
                        tpot=slo.tpot_seconds,
                    ),
                )
        except ProfileError as exc:
            raise ValueError(str(exc)) from exc
        return [
            InlineProfile(
                prof.gpu,
                tuple(
                    ProfileBucket(i, o, float(prof.rates[a][b]))
                    for a, i in enumerate(prof.input_tokens)
                    for b, o in enumerate(prof.output_tokens)
                ),
            )
        ]
    if isinstance(doc, Mapping) and "profiles" in doc:
        doc = doc["profiles"]
    if isinstance(doc, Mapping) and "gpuType" in doc:
        doc = [doc]
    if not isinstance(doc, list):
        raise ValueError(
            f"{where}: not a profile (AIBrix JSON, kind: GPUProfile, or a list of "
            "{gpuType, buckets})"
        )
    try:
        return read_inline_profiles(doc)
    except SpecError as exc:
        raise ValueError(f"{where}: {exc}") from None


def resolve_inline(spec: GPUMixSpec) -> ProfileResult | None:
    if spec.profiles.inline:
        return inline_profile_set(spec.profiles.inline)
    return None


def solve_mix(problem: MixProblem) -> MixSolution:
    """Solve with :func:`gpumix.optimizer.solve`, and the best single-GPU-type plan to compare."""
    started = time.perf_counter()
    try:
        built = build_problem(problem)
    except ValueError as exc:
        return MixSolution("INVALID", solve_seconds=time.perf_counter() - started, message=str(exc))
    result = optimizer.solve(built, time_limit_s=problem.time_limit_s, seed=0)
    status = str(result.status)
    message = result.reason or "; ".join(result.errors)
    if mapped_note := _note(problem):
        message = f"{message}; {mapped_note}" if message else mapped_note
    if not result.ok:
        return MixSolution(
            _status(status), solve_seconds=time.perf_counter() - started, message=message
        )
    best_cost: float | None = None
    best_type: str | None = None
    if len(built.gpus) > 1:
        for option in built.gpus:
            single = replace(built, gpus=(option,), churn_weight=0.0)
            alone = optimizer.solve(single, time_limit_s=problem.time_limit_s, seed=0)
            cost = alone.cost_per_hour
            if alone.ok and math.isfinite(cost) and (best_cost is None or cost < best_cost):
                best_cost, best_type = cost, option.name
    else:
        best_cost, best_type = result.cost_per_hour, built.gpus[0].name
    return MixSolution(
        _status(status),
        {k: int(v) for k, v in result.replicas.items()},
        cost_per_hour=result.cost_per_hour if math.isfinite(result.cost_per_hour) else None,
        best_single_type_cost_per_hour=best_cost,
        best_single_type=best_type,
        solve_seconds=time.perf_counter() - started,
        message=message,
    )


def _status(value: str) -> SolverStatus:
    for known in ("OPTIMAL", "FEASIBLE", "INFEASIBLE", "INVALID", "UNKNOWN"):
        if value == known:
            return known
    return "UNKNOWN"


def _grid(problem: MixProblem) -> list[tuple[int, int]]:
    profiles = profile_buckets(problem.profiles)
    points = {
        (b.input_tokens, b.output_tokens)
        for o in problem.options
        for b in profiles.get(o.gpu_type, ())
    }
    return sorted(points)


def _cover(grid: list[tuple[int, int]], inp: float, out: float) -> tuple[int, int]:
    """The smallest grid bucket that holds a request of ``inp``/``out`` tokens (upper bounds).

    Beyond the largest bounds the largest bucket is used (documented approximation).
    """
    fits = [g for g in grid if g[0] >= inp and g[1] >= out]
    if fits:
        return min(fits, key=lambda g: (g[0] * g[1], g))
    max_in = max(g[0] for g in grid)
    max_out = max(g[1] for g in grid)
    fits = [g for g in grid if g[0] >= min(inp, max_in) and g[1] >= min(out, max_out)]
    return min(fits, key=lambda g: (g[0] * g[1], g)) if fits else max(grid)


def _note(problem: MixProblem) -> str:
    grid = _grid(problem)
    if not grid:
        return ""
    max_in = max(g[0] for g in grid)
    max_out = max(g[1] for g in grid)
    beyond = sum(
        b.rps for b in problem.load if b.input_tokens > max_in or b.output_tokens > max_out
    )
    if beyond <= 0:
        return ""
    return f"{beyond:.3g} req/s beyond the largest profiled bucket counted in it"


def build_problem(problem: MixProblem) -> optimizer.Problem:
    """The optimizer's problem: buckets are the profiles' grid, load mapped onto it."""
    profiles = profile_buckets(problem.profiles)
    grid = _grid(problem)
    if not grid:
        raise ValueError("no profile buckets for the member GPU types")
    index = {g: i for i, g in enumerate(grid)}
    load = [0.0] * len(grid)
    for b in problem.load:
        load[index[_cover(grid, b.input_tokens, b.output_tokens)]] += b.rps
    gpus = []
    for o in problem.options:
        rows = profiles.get(o.gpu_type, ())
        rates = []
        for gin, gout in grid:
            covering = [r for r in rows if r.input_tokens >= gin and r.output_tokens >= gout]
            best = (
                min(covering, key=lambda r: r.input_tokens * r.output_tokens) if covering else None
            )
            rates.append(best.max_rps if best is not None else 0.0)
        gpus.append(
            optimizer.GpuOption(
                name=o.gpu_type,
                rates=tuple(rates),
                price_per_hour=o.price_per_hour,
                gpus_per_replica=o.gpus_per_replica,
                available_gpus=o.max_replicas * o.gpus_per_replica,
                min_replicas=min(o.min_replicas, o.max_replicas),
                max_replicas=o.max_replicas,
                current_replicas=o.current_replicas,
            )
        )
    return optimizer.Problem(
        buckets=tuple(optimizer.Bucket(i, o) for i, o in grid),
        load=tuple(load),
        gpus=tuple(gpus),
        headroom=problem.headroom,
        churn_weight=problem.churn_weight,
        model=problem.model,
    )


def profile_buckets(payload: object) -> dict[str, tuple[ProfileBucket, ...]]:
    if not isinstance(payload, tuple):
        return {}
    return {p.gpu_type: p.buckets for p in payload if isinstance(p, InlineProfile)}
