"""Each scenario's headline: the claim it exists to show, computed from the runs.

``ceiling``
    The first variant runs without gpumix, the second with it.  Holds when, with
    gpumix, every autoscaled Deployment stayed at or below its ceiling, and without
    it some Deployment went above the ceiling gpumix would have injected.
``selector-overlap``
    *Wrong type*: a Deployment of the model whose GPU type the router sends no
    traffic to (it has no profile).  Holds when it scaled above its minimum in the
    first variant (overlapping selectors) and not in the second (fixed).
``mix-vs-single``
    The variant without ``controllerTypes`` is the mix; the others are single GPU
    types.  Holds when no single type reaches the mix's SLO attainment at a lower
    cost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpumix.simulate.engine import Trace, VariantSummary
from gpumix.simulate.scenario import Scenario

SLO_EPSILON = 1e-4
"""SLO attainments closer than this count as equal."""


@dataclass(frozen=True)
class HeadlineResult:
    kind: str
    holds: bool | None
    lines: tuple[str, ...]
    numbers: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "holds": self.holds,
            "lines": list(self.lines),
            "numbers": dict(self.numbers),
        }


def headline(
    scenario: Scenario,
    traces: Sequence[Trace],
    summaries: Sequence[VariantSummary],
    routed_types: Sequence[str],
) -> HeadlineResult:
    if scenario.headline == "ceiling" and len(summaries) >= 2:
        return _ceiling(summaries[0], summaries[1])
    if scenario.headline == "selector-overlap" and len(summaries) >= 2:
        return _overlap(scenario, traces, summaries, routed_types)
    if scenario.headline == "mix-vs-single":
        return _mix(scenario, summaries)
    return HeadlineResult(scenario.headline, None, ())


def _ceiling(without: VariantSummary, with_: VariantSummary) -> HeadlineResult:
    lines: list[str] = []
    holds_with = True
    exceeded_without = False
    numbers: dict[str, Any] = {}
    for target, ceiling in with_.ceilings.items():
        peak_with = with_.peak_replicas.get(target, 0)
        peak_without = without.peak_replicas.get(target, 0)
        if ceiling is None or peak_with > ceiling:
            holds_with = False
        if ceiling is not None and peak_without > ceiling:
            exceeded_without = True
        numbers[target] = {
            "ceiling_injected": ceiling,
            "ceiling_without": without.ceilings.get(target),
            "peak_replicas_without": peak_without,
            "peak_replicas_with": peak_with,
        }
        lines.append(
            f"{target}: without gpumix (ceiling {without.ceilings.get(target) or 'none'}) it "
            f"asked for up to {peak_without} replicas; with gpumix the webhook injected "
            f"maxReplicas={ceiling} and it peaked at {peak_with}"
        )
    bystanders = [n for n in without.peak_pending_by_deployment if n not in with_.ceilings]
    for name, s in (("without gpumix", without), ("with gpumix", with_)):
        starved = [
            f"{n} {s.peak_pending_by_deployment[n]}"
            for n in bystanders
            if s.peak_pending_by_deployment.get(n, 0) > 0
        ]
        if starved:
            lines.append(f"{name}: other workloads left Pending (peak pods): {', '.join(starved)}")
        gpu_pools = {k: v for k, v in s.minutes_without_free_gpus.items() if k in s.min_free_gpus}
        exhausted = ", ".join(f"{k} {v:g} min" for k, v in gpu_pools.items() if v > 0) or "never"
        lines.append(
            f"{name}: peak {s.peak_pending} pods Pending; pools without a free GPU: {exhausted}; "
            f"lowest free CPUs: "
            + ", ".join(f"{k} {v:g}" for k, v in s.min_free_cpus.items())
            + f"; SLO attainment {s.slo_attainment:.1%}; cost ${s.cost:,.2f}"
        )
        numbers[name] = {
            "peak_pending_pods": s.peak_pending,
            "minutes_without_free_gpus": dict(s.minutes_without_free_gpus),
            "min_free_cpus": dict(s.min_free_cpus),
            "slo_attainment": s.slo_attainment,
            "cost": s.cost,
            "other_workloads_peak_pending": {
                n: s.peak_pending_by_deployment.get(n, 0) for n in bystanders
            },
        }
    holds = holds_with and exceeded_without
    lines.insert(
        0,
        "HOLDS: the injected ceiling held with gpumix and was exceeded without it"
        if holds
        else "DOES NOT HOLD: "
        + (
            "ceiling exceeded with gpumix"
            if not holds_with
            else "the run without gpumix stayed under the ceiling"
        ),
    )
    return HeadlineResult("ceiling", holds, tuple(lines), numbers)


def _overlap(
    scenario: Scenario,
    traces: Sequence[Trace],
    summaries: Sequence[VariantSummary],
    routed_types: Sequence[str],
) -> HeadlineResult:
    overlapping, fixed = summaries[0], summaries[1]
    types = traces[0].deployment_types
    price = {p.gpu_type: p.gpu_price for p in scenario.pools if p.gpu_type}
    wrong = [n for n, g in types.items() if g not in routed_types and g in price]
    lines: list[str] = []
    numbers: dict[str, Any] = {}
    scaled_overlapping = False
    scaled_fixed = False
    for name in wrong:
        floor = int(traces[1].replicas[name][0]) if name in traces[1].replicas else 1
        p_over = overlapping.peak_replicas.get(name, 0)
        p_fix = fixed.peak_replicas.get(name, 0)
        scaled_overlapping |= p_over > floor
        scaled_fixed |= p_fix > floor
        gpu = types[name]
        waste = {
            s.name: s.replica_minutes.get(name, 0.0) / 60.0 * price.get(gpu, 0.0)
            for s in (overlapping, fixed)
        }
        numbers[name] = {
            "gpu_type": gpu,
            "peak_replicas_overlapping": p_over,
            "peak_replicas_fixed": p_fix,
            "cost_overlapping": waste[overlapping.name],
            "cost_fixed": waste[fixed.name],
        }
        lines.append(
            f"{name} ({gpu}, receives no traffic): {overlapping.name}: scaled to {p_over} "
            f"replicas (${waste[overlapping.name]:,.2f} of idle {gpu}); {fixed.name}: "
            f"peak {p_fix} (${waste[fixed.name]:,.2f})"
        )
    for s in (overlapping, fixed):
        lines.append(f"{s.name}: SLO attainment {s.slo_attainment:.1%}, cost ${s.cost:,.2f}")
    holds = bool(wrong) and scaled_overlapping and not scaled_fixed
    lines.insert(
        0,
        "HOLDS: with overlapping selectors the wrong GPU type scaled; with fixed ones it did not"
        if holds
        else "DOES NOT HOLD: the wrong type "
        + ("also scaled with fixed selectors" if scaled_fixed else "did not scale"),
    )
    return HeadlineResult("selector-overlap", holds, tuple(lines), numbers)


def _mix(scenario: Scenario, summaries: Sequence[VariantSummary]) -> HeadlineResult:
    variants = {v.name: v for v in scenario.variants}
    mixes = [s for s in summaries if variants[s.name].controller_types is None]
    singles = [s for s in summaries if variants[s.name].controller_types is not None]
    if not mixes:
        return HeadlineResult("mix-vs-single", None, ("no mix variant",))
    mix = mixes[0]
    comparable = [s for s in singles if s.slo_attainment >= mix.slo_attainment - SLO_EPSILON]
    cheaper = [s for s in comparable if s.cost < mix.cost - 1e-6]
    best = min(comparable, key=lambda s: s.cost) if comparable else None
    lines = [
        f"{s.name}: cost ${s.cost:,.2f}, SLO attainment {s.slo_attainment:.2%}"
        for s in (mix, *singles)
    ]
    numbers: dict[str, Any] = {
        s.name: {"cost": s.cost, "slo_attainment": s.slo_attainment} for s in (mix, *singles)
    }
    if best is not None:
        saving = 1.0 - mix.cost / best.cost if best.cost > 0 else 0.0
        numbers["best_single"] = best.name
        numbers["saving"] = saving
        lines.append(
            f"best single type at equal or better SLO attainment: {best.name} "
            f"(${best.cost:,.2f}); the mix saves {saving:.1%}"
        )
    else:
        best_slo = max(singles, key=lambda s: s.slo_attainment) if singles else None
        numbers["best_single"] = None
        if best_slo is not None:
            lines.append(
                f"no single type reaches the mix's SLO attainment (best: {best_slo.name} at "
                f"{best_slo.slo_attainment:.2%})"
            )
    for s in singles:
        if s.cost < mix.cost and s not in cheaper:
            lines.append(
                f"{s.name} costs ${mix.cost - s.cost:,.2f} less but serves "
                f"{100 * (mix.slo_attainment - s.slo_attainment):.2f} percentage points fewer "
                "requests within the SLO"
            )
    holds = not cheaper
    lines.insert(
        0,
        "HOLDS: no single GPU type serves the load at the mix's SLO attainment for less"
        if holds
        else f"DOES NOT HOLD: {cheaper[0].name} is cheaper at equal or better SLO attainment",
    )
    return HeadlineResult("mix-vs-single", holds, tuple(lines), numbers)
