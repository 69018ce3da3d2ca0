"""``gpumix demo``: the whole system on an in-process API emulator, no cluster needed."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from gpumix.demo.cluster import DemoCluster, DemoError
from gpumix.demo.story import (
    PHASES,
    Outcome,
    step_ceiling,
    step_mix,
    step_overlap,
    summary,
    write_plots,
)

__all__ = ["DemoError", "DemoOptions", "run_demo"]


@dataclass(frozen=True)
class DemoOptions:
    out_dir: Path = Path("gpumix-demo-output")
    serve: bool = False
    progress: bool = True


async def run_demo(options: DemoOptions, console: Console) -> Outcome:
    """Run the story; with ``serve`` keep everything running until interrupted."""
    outcome = Outcome()
    async with DemoCluster() as cluster:
        console.print(
            f"[dim]API emulator on {cluster.url}, webhook on https://127.0.0.1:"
            f"{cluster.webhook_port} (TLS bootstrapped into Secret gpumix-system/"
            "gpumix-webhook-tls), controller running[/]"
        )
        await step_overlap(cluster, console, outcome)
        await step_ceiling(cluster, console, outcome)
        await step_mix(cluster, console, outcome, PHASES, options.progress)
        outcome.plots = write_plots(outcome, options.out_dir)
        summary(outcome, console)
        if options.serve:
            console.rule("[bold]serving")
            console.print(
                f"The emulator keeps running. Try it:\n"
                f"  export KUBECONFIG={cluster.kubeconfig}\n"
                "  kubectl get deploy,hpa,gpumix -n llm\n"
                "  kubectl apply -f your-manifests.yaml\n"
                "Press Ctrl-C to stop."
            )
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()
    return outcome
