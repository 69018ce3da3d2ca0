"""Writing a scenario's results: PNG plots, a JSON summary and a short text report.

Plots use matplotlib's Agg backend (no display) and fixed metadata, so the same
run writes the same bytes.  Files written into ``out``:

``<scenario>-load.png``      offered load (req/s) per minute and the burst windows
``<scenario>-replicas.png``  one panel per variant: replicas per Deployment (GPU type),
                             ceilings (dashed), Pending pods (dotted)
``<scenario>-cost.png``      cost per hour of every variant
``<scenario>-slo.png``       SLO attainment per variant, over 15-minute windows
``<scenario>-cluster.png``   one panel per variant: free GPUs per node pool, Pending pods
``summary.json``             numbers of every variant and the headline
``report.txt``               the same, short, for people
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from gpumix.simulate.runner import ScenarioResult

SLO_WINDOW_MIN = 15.0
_PNG_METADATA = {"Software": "gpumix simulate"}
_STYLES = ("-", "--", "-.", ":")


def _hours(minutes: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return minutes / 60.0


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100, metadata=_PNG_METADATA)
    plt.close(fig)
    return path


def plot_load(result: ScenarioResult, path: Path) -> Path:
    load = result.load
    minutes = (load.times() - load.start_s) / 60.0
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.plot(
        _hours(minutes),
        load.totals() / load.step_s,
        lw=0.8,
        color="tab:blue",
        label="requests/s (drawn)",
    )
    ax.plot(
        _hours(minutes), load.expected / load.step_s, lw=1.2, color="black", label="rate (expected)"
    )
    for i, (a, b) in enumerate(load.bursts):
        ax.axvspan(
            (a - load.start_s) / 3600.0,
            (b - load.start_s) / 3600.0,
            color="tab:orange",
            alpha=0.2,
            label="burst" if i == 0 else None,
        )
    ax.set_xlabel("hours")
    ax.set_ylabel("requests/s")
    ax.set_title(f"{result.scenario.name}: load ({result.scenario.load.profile})")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_replicas(result: ScenarioResult, path: Path) -> Path:
    n = len(result.traces)
    fig, axes = plt.subplots(n, 1, figsize=(9, 2.6 * n), sharex=True, squeeze=False)
    for ax, trace in zip(axes[:, 0], result.traces, strict=True):
        h = _hours(trace.minutes)
        for i, (name, values) in enumerate(trace.replicas.items()):
            color = f"C{i}"
            ax.step(
                h,
                values,
                where="post",
                color=color,
                lw=2.4 if i == 0 else 1.3,  # a thick first line stays visible under others
                label=f"{name} ({trace.deployment_types[name]})",
            )
            ceiling = trace.ceilings.get(name)
            if ceiling is not None:
                ax.axhline(ceiling, color=color, ls="--", lw=0.9, label=f"{name} ceiling {ceiling}")
            if trace.pending[name].max(initial=0) > 0:
                ax.step(
                    h,
                    trace.pending[name],
                    where="post",
                    color=color,
                    ls=":",
                    label=f"{name} Pending",
                )
        ax.set_title(trace.variant, fontsize=10)
        ax.set_ylabel("replicas")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=7, ncol=2)
    axes[-1, 0].set_xlabel("hours")
    fig.suptitle(f"{result.scenario.name}: replicas per Deployment", fontsize=11)
    return _save(fig, path)


def plot_cost(result: ScenarioResult, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(9, 3.2))
    for i, (trace, summary) in enumerate(zip(result.traces, result.summaries, strict=True)):
        ax.step(
            _hours(trace.minutes),
            trace.cost_per_hour,
            where="post",
            ls=_STYLES[i % len(_STYLES)],
            label=f"{trace.variant} (${summary.cost:,.0f})",
        )
    ax.set_xlabel("hours")
    ax.set_ylabel("$ / hour")
    ax.set_title(f"{result.scenario.name}: cost per hour (total in legend)")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _windowed(
    trace_minutes: np.ndarray[Any, Any],
    served: np.ndarray[Any, Any],
    requests: np.ndarray[Any, Any],
    step_min: float,
) -> tuple[Any, Any]:
    per = max(round(SLO_WINDOW_MIN / step_min), 1)
    n = len(served) // per * per
    if n == 0:
        return trace_minutes[:1], np.ones(1)
    s = served[:n].reshape(-1, per).sum(axis=1)
    r = requests[:n].reshape(-1, per).sum(axis=1)
    frac = np.divide(s, r, out=np.ones_like(s), where=r > 0)
    return trace_minutes[:n:per], frac


def plot_slo(result: ScenarioResult, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(9, 3.2))
    for i, (trace, summary) in enumerate(zip(result.traces, result.summaries, strict=True)):
        m, frac = _windowed(trace.minutes, trace.served, trace.requests, trace.step_s / 60.0)
        ax.step(
            _hours(m),
            100.0 * frac,
            where="post",
            ls=_STYLES[i % len(_STYLES)],
            label=f"{trace.variant} ({summary.slo_attainment:.1%} overall)",
        )
    ax.set_xlabel("hours")
    ax.set_ylabel(f"% served within SLO ({SLO_WINDOW_MIN:g} min)")
    ax.set_ylim(0, 105)
    ax.set_title(f"{result.scenario.name}: SLO attainment")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_cluster(result: ScenarioResult, path: Path) -> Path:
    gpu_pools = [p for p in result.scenario.pools if p.gpus > 0]
    n = len(result.traces)
    fig, axes = plt.subplots(n, 1, figsize=(9, 2.2 * n), sharex=True, squeeze=False)
    for ax, trace in zip(axes[:, 0], result.traces, strict=True):
        h = _hours(trace.minutes)
        for j, pool in enumerate(gpu_pools):
            ax.step(
                h,
                trace.free_gpus[pool.name],
                where="post",
                color=f"C{j}",
                label=f"{pool.name}: free GPUs (of {pool.gpus})",
            )
        pending = sum(trace.pending.values(), np.zeros_like(trace.minutes))
        if pending.max(initial=0) > 0:
            ax.step(h, pending, where="post", color="black", ls=":", label="Pending pods")
        ax.set_title(trace.variant, fontsize=10)
        ax.set_ylabel("GPUs / pods")
        ax.set_ylim(bottom=-0.5)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=7, ncol=2)
    axes[-1, 0].set_xlabel("hours")
    fig.suptitle(f"{result.scenario.name}: free GPUs per node pool, Pending pods", fontsize=11)
    return _save(fig, path)


def summary_dict(result: ScenarioResult) -> dict[str, Any]:
    s = result.scenario
    return {
        "scenario": s.name,
        "description": s.description,
        "seed": result.seed,
        "hours": result.hours,
        "step_seconds": s.step_s,
        "requests": int(result.load.totals().sum()),
        "bursts": len(result.load.bursts),
        "gpu_types_with_profiles": sorted(result.profiles.capacity) if result.profiles else [],
        "headline": result.headline.as_dict(),
        "variants": [v.as_dict() for v in result.summaries],
    }


def text_report(result: ScenarioResult) -> str:
    s = result.scenario
    lines = [
        f"scenario {s.name}: {result.hours:g} h, seed {result.seed}, "
        f"{int(result.load.totals().sum()):,} requests, {len(result.load.bursts)} "
        + ("burst" if len(result.load.bursts) == 1 else "bursts"),
    ]
    if s.description:
        lines.append(s.description.splitlines()[0])
    lines.append("")
    for v in result.summaries:
        peaks = ", ".join(f"{k} {n}" for k, n in v.peak_replicas.items())
        lines.append(
            f"{v.name}: cost ${v.cost:,.2f}, SLO attainment {v.slo_attainment:.2%}, "
            f"peak replicas {peaks}, peak Pending pods {v.peak_pending}"
        )
        for e in v.admission:
            lines.append(f"  admission: {e.kind} {e.name} {e.verdict}: {e.message[:160]}")
    lines.append("")
    lines.extend(result.headline.lines)
    return "\n".join(lines) + "\n"


def write_report(result: ScenarioResult, out: Path, plots: Path | None = None) -> list[Path]:
    """Write ``summary.json`` and ``report.txt`` into ``out`` and the plots into ``plots``
    (default: ``out`` too); return the paths written."""
    plots = out if plots is None else plots
    out.mkdir(parents=True, exist_ok=True)
    plots.mkdir(parents=True, exist_ok=True)
    name = result.scenario.name
    written = [
        plot_load(result, plots / f"{name}-load.png"),
        plot_replicas(result, plots / f"{name}-replicas.png"),
        plot_cost(result, plots / f"{name}-cost.png"),
        plot_slo(result, plots / f"{name}-slo.png"),
        plot_cluster(result, plots / f"{name}-cluster.png"),
    ]
    summary = out / "summary.json"
    summary.write_text(json.dumps(summary_dict(result), indent=2) + "\n", encoding="utf-8")
    report = out / "report.txt"
    report.write_text(text_report(result), encoding="utf-8")
    return [*written, summary, report]
