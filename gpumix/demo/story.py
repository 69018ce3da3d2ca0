"""The demo's story: what a new user sees, step by step."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gpumix.demo.cluster import DEMO_DIR, DemoCluster, DemoError, load_yaml_documents

NS = "llm"
DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NS}/deployments"
HPAS = f"/apis/autoscaling/v2/namespaces/{NS}/horizontalpodautoscalers"
GPUMIXES = f"/apis/gpumix.io/v1alpha1/namespaces/{NS}/gpumixes"
MERGE = "application/merge-patch+json"


@dataclass(frozen=True)
class Phase:
    name: str
    short_rps: float  # 512 in / 128 out tokens
    long_rps: float  # 2048 in / 512 out tokens


PHASES = (
    Phase("night", 6.0, 0.5),
    Phase("morning", 20.0, 2.0),
    Phase("peak", 45.0, 6.0),
    Phase("evening", 15.0, 1.5),
)


@dataclass
class PhaseResult:
    phase: Phase
    replicas: dict[str, int]
    cost: float
    best_single: str
    best_single_cost: float


@dataclass
class Outcome:
    """What the demo showed, for the summary and the tests."""

    overlap_fixed: bool = False
    resync_unchanged: bool = False
    injected_ceiling: int | None = None
    over_ceiling_denied: bool = False
    phases: list[PhaseResult] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)


def status_message(body: dict[str, Any]) -> str:
    return str(body.get("message") or body.get("reason") or body)


def _short(text: str, limit: int = 600) -> str:
    """Shortened, with rich markup escaped (messages contain `[rule]` tags)."""
    return escape(text if len(text) <= limit else text[: limit - 3] + "...")


async def step_overlap(cluster: DemoCluster, console: Console, outcome: Outcome) -> None:
    console.rule("[bold]1. Two Deployments of one model whose selectors would overlap")
    console.print(
        "llama2-7b runs on A100 and on A40, one Deployment per GPU type. Both select pods "
        "by [cyan]model.aibrix.ai/name=llama2-7b[/] alone, so each would select the other's "
        "pods and an autoscaler of one would count the other's (the AIBrix failure). A "
        "selector is immutable once created, so gpumix isolates each at CREATE."
    )
    a100 = load_yaml_documents(DEMO_DIR / "01-llama-a100.yaml")[0]
    a40 = load_yaml_documents(DEMO_DIR / "02-llama-a40.yaml")[0]
    stored: dict[str, dict[str, Any]] = {}
    for manifest, doc in (("01-llama-a100.yaml", a100), ("02-llama-a40.yaml", a40)):
        name = doc["metadata"]["name"]
        code, body, warnings = await cluster.call("POST", DEPLOYMENTS, doc)
        _expect(code == 201, f"creating {name} returned {code}: {status_message(body)}")
        selector = body.get("spec", {}).get("selector", {}).get("matchLabels", {})
        _expect(
            selector.get("gpumix.io/deployment") == name,
            f"the webhook did not isolate {name}: selector {selector}",
        )
        stored[name] = body
        console.print(
            f"[green]✓[/] kubectl apply -f {manifest}  →  created, "
            "[bold]isolated by the webhook[/]:"
        )
        console.print(f"    spec.selector.matchLabels = {escape(str(dict(selector)))}")
        for w in warnings:
            console.print(f"    [yellow]Warning:[/] {_short(w, 300)}")
    outcome.overlap_fixed = True

    # A GitOps re-sync sends the manifests as they are in Git, without the labels: the
    # webhook keeps the ones it added, so the sync changes nothing.
    unchanged = True
    for doc in (a100, a40):
        name = doc["metadata"]["name"]
        code, body, _ = await cluster.call("PUT", f"{DEPLOYMENTS}/{name}", doc)
        _expect(code == 200, f"re-applying {name} returned {code}: {status_message(body)}")
        unchanged &= body.get("spec", {}).get("selector") == stored[name]["spec"]["selector"]
    _expect(unchanged, "a re-apply of the unchanged manifests changed a selector")
    outcome.resync_unchanged = True
    console.print(
        "[green]✓[/] re-applying both manifests unchanged (a GitOps sync)  →  "
        "admitted, selectors as stored: no recreate, no drift to fight"
    )


async def step_ceiling(cluster: DemoCluster, console: Console, outcome: Outcome) -> None:
    console.rule("[bold]2. An autoscaler without a ceiling")
    console.print(
        "An HPA for the gateway without [cyan]maxReplicas[/]: under a ramping load such an "
        "autoscaler creates pods until the cluster runs out. Without gpumix the API server "
        "refuses it (maxReplicas must be greater than 0); gpumix injects the default."
    )
    gateway, hpa = load_yaml_documents(DEMO_DIR / "03-gateway-hpa.yaml")
    code, body, _ = await cluster.call("POST", DEPLOYMENTS, gateway)
    _expect(code == 201, f"creating llm-gateway returned {code}: {status_message(body)}")
    code, body, warnings = await cluster.call("POST", HPAS, hpa)
    _expect(code == 201, f"the HPA should be admitted, got {code}: {status_message(body)}")
    ceiling = body.get("spec", {}).get("maxReplicas")
    _expect(isinstance(ceiling, int) and ceiling > 0, f"no ceiling injected: {ceiling!r}")
    outcome.injected_ceiling = int(ceiling)
    console.print(
        f"[green]✓[/] kubectl apply -f 03-gateway-hpa.yaml  →  created with "
        f"[bold]spec.maxReplicas: {ceiling}[/] injected"
    )
    for w in warnings:
        console.print(f"    [yellow]Warning:[/] {_short(w, 200)}")

    greedy = copy.deepcopy(hpa)
    greedy["metadata"]["name"] = "llm-gateway-greedy"
    greedy["spec"]["maxReplicas"] = 1000
    code, body, _ = await cluster.call("POST", HPAS, greedy)
    _expect(code in (400, 403), f"maxReplicas 1000 should be denied, got {code}")
    outcome.over_ceiling_denied = True
    console.print(
        "[red]✗[/] an HPA with maxReplicas: 1000  →  [bold red]denied[/]: "
        f"{_short(status_message(body), 300)}"
    )


def _load_patch(phase: Phase) -> dict[str, Any]:
    return {
        "spec": {
            "loadSource": {
                "static": {
                    "buckets": [
                        {
                            "inputTokens": 512,
                            "outputTokens": 128,
                            "requestsPerSecond": phase.short_rps,
                        },
                        {
                            "inputTokens": 2048,
                            "outputTokens": 512,
                            "requestsPerSecond": phase.long_rps,
                        },
                    ]
                }
            }
        }
    }


async def _wait_for_plan(
    cluster: DemoCluster, generation: int, timeout_s: float
) -> tuple[dict[str, Any], dict[str, int]]:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        failed = cluster.controller_failed()
        if failed:
            raise DemoError(f"the controller stopped: {failed}")
        code, mix, _ = await cluster.call("GET", f"{GPUMIXES}/llama2-7b")
        status = mix.get("status", {}) if code == 200 else {}
        plan = status.get("plan") or []
        if status.get("observedGeneration", 0) >= generation and plan:
            replicas: dict[str, int] = {}
            done = True
            for entry in plan:
                code, dep, _ = await cluster.call("GET", f"{DEPLOYMENTS}/{entry['deployment']}")
                current = int(dep.get("spec", {}).get("replicas", 0)) if code == 200 else -1
                replicas[str(entry.get("gpuType"))] = current
                if current != entry.get("recommendedReplicas"):
                    done = False
            if done:
                return status, replicas
        last = str(status.get("conditions", ""))
        await asyncio.sleep(0.05)
    raise DemoError(f"the controller did not apply a plan within {timeout_s:.0f} s ({last})")


async def step_mix(
    cluster: DemoCluster,
    console: Console,
    outcome: Outcome,
    phases: Sequence[Phase],
    show_progress: bool,
) -> None:
    console.rule("[bold]3. The controller scales the model to the cheapest GPU mix")
    console.print(
        "A GPUMix for llama2-7b with measured per-replica throughputs and prices "
        "(A100 $2.20/h, A40 $0.80/h); the load changes over a compressed day."
    )
    mix = load_yaml_documents(DEMO_DIR / "04-gpumix.yaml")[0]
    mix["spec"].update(_load_patch(phases[0])["spec"])
    code, body, _ = await cluster.call("POST", GPUMIXES, mix)
    _expect(code == 201, f"creating the GPUMix returned {code}: {status_message(body)}")
    generation = int(body.get("metadata", {}).get("generation", 1))

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not show_progress,
    )
    with progress:
        task = progress.add_task("planning the day", total=len(phases))
        for i, phase in enumerate(phases):
            if i:
                code, body, _ = await cluster.call(
                    "PATCH", f"{GPUMIXES}/llama2-7b", _load_patch(phase), content_type=MERGE
                )
                _expect(code == 200, f"updating the load returned {code}: {status_message(body)}")
                generation = int(body.get("metadata", {}).get("generation", generation))
            progress.update(task, description=f"load: {phase.name}")
            status, replicas = await _wait_for_plan(cluster, generation, timeout_s=20)
            outcome.phases.append(
                PhaseResult(
                    phase,
                    replicas,
                    float(status.get("costPerHour", 0.0)),
                    str(status.get("bestSingleType", "")),
                    float(status.get("bestSingleTypeCostPerHour", 0.0)),
                )
            )
            progress.advance(task)

    table = Table(title="llama2-7b over the day (replicas set through /scale by the controller)")
    for col in (
        "load",
        "req/s (short+long)",
        "A100",
        "A40",
        "mix $/h",
        "best single type $/h",
        "saving",
    ):
        table.add_column(col, justify="right" if col != "load" else "left")
    for r in outcome.phases:
        saving = 1 - r.cost / r.best_single_cost if r.best_single_cost else 0.0
        table.add_row(
            r.phase.name,
            f"{r.phase.short_rps:g}+{r.phase.long_rps:g}",
            str(r.replicas.get("A100", 0)),
            str(r.replicas.get("A40", 0)),
            f"{r.cost:.2f}",
            f"{r.best_single_cost:.2f} ({r.best_single})",
            f"{saving:.0%}",
        )
    console.print(table)


def write_plots(outcome: Outcome, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    names = [r.phase.name for r in outcome.phases]
    xs = range(len(names))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for gpu, color in (("A100", "tab:blue"), ("A40", "tab:orange")):
        ax1.step(
            xs,
            [r.replicas.get(gpu, 0) for r in outcome.phases],
            where="mid",
            label=gpu,
            color=color,
            marker="o",
        )
    ax1.set_xticks(list(xs), names)
    ax1.set_ylabel("replicas")
    ax1.set_title("replicas per GPU type")
    ax1.legend()
    ax2.plot(xs, [r.cost for r in outcome.phases], marker="o", label="gpumix mix")
    ax2.plot(
        xs,
        [r.best_single_cost for r in outcome.phases],
        marker="s",
        linestyle="--",
        label="best single GPU type",
    )
    ax2.set_xticks(list(xs), names)
    ax2.set_ylabel("$ per hour")
    ax2.set_title("cost")
    ax2.legend()
    fig.tight_layout()
    path = out_dir / "demo-mix.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


def summary(outcome: Outcome, console: Console) -> None:
    console.rule("[bold]4. Summary")
    mix_total = sum(r.cost for r in outcome.phases)
    single_total = sum(r.best_single_cost for r in outcome.phases)
    saving = 1 - mix_total / single_total if single_total else 0.0
    console.print(
        f"• one model on two GPU types: both admitted and isolated on the first try, "
        f"a re-sync changes nothing "
        f"({'yes' if outcome.overlap_fixed and outcome.resync_unchanged else 'no'})"
    )
    console.print(
        f"• HPA without maxReplicas: admitted with maxReplicas {outcome.injected_ceiling}"
        f"; maxReplicas 1000 denied ({'yes' if outcome.over_ceiling_denied else 'no'})"
    )
    console.print(
        f"• GPU mix over {len(outcome.phases)} load phases: ${mix_total:.2f} vs "
        f"${single_total:.2f} for the best single GPU type in each phase "
        f"(saving {saving:.0%})"
    )
    for p in outcome.plots:
        console.print(f"• plot written to {p}")


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise DemoError(message)
