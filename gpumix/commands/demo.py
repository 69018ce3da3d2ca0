"""``gpumix demo``: the whole system without a cluster."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from rich.console import Console

EXIT_OK, EXIT_FAILED = 0, 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole system on an in-process Kubernetes API emulator",
        description=(
            "Start an in-process Kubernetes API emulator, the gpumix webhook over real HTTPS "
            "and the controller, then walk through the story: overlapping selectors across "
            "GPU types, an autoscaler without a ceiling, and the cheapest GPU mix for a "
            "model under a changing load. Needs no cluster; cleans up after itself."
        ),
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("gpumix-demo-output"),
        help="directory for the plots (default: %(default)s)",
    )
    p.add_argument(
        "--serve",
        action="store_true",
        help="keep the emulator, webhook and controller running afterwards so "
        "kubectl can be pointed at it (Ctrl-C stops)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="show the components' logs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gpumix.demo import DemoError, DemoOptions, run_demo

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.CRITICAL,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    console = Console(highlight=False)
    options = DemoOptions(out_dir=args.out, serve=args.serve, progress=not args.no_progress)
    try:
        asyncio.run(run_demo(options, console))
    except DemoError as exc:
        console.print(f"[bold red]demo failed:[/] {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        console.print("stopped")
    console.print("[bold green]demo finished[/]")
    return EXIT_OK
