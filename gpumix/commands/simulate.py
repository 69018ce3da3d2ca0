"""``gpumix simulate``: a discrete-time simulation of a heterogeneous cluster.

Exit codes: 0 the run finished (and the scenario's headline, when it has one,
held), 1 it finished but the headline did not hold, 2 unknown scenario, bad
scenario file or unreadable profiles (one line naming the file and the field).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TextIO

EXIT_OK, EXIT_HEADLINE, EXIT_INPUT = 0, 1, 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate a cluster, the optimizer-driven controller and autoscalers",
        description=(
            "Run a named scenario (see --list) or a scenario file: a discrete-time "
            "simulation of node pools, per-GPU-type Deployments, gpumix's controller and "
            "HPA-like autoscalers under a generated load. Writes PNG plots, summary.json "
            "and report.txt into --out. Exit 0: done (headline held); 1: headline did not "
            "hold; 2: bad input."
        ),
    )
    p.add_argument(
        "scenario",
        nargs="?",
        metavar="SCENARIO|FILE",
        help="scenario name (examples/scenarios/NAME.yaml) or a YAML file",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="output directory (default: ./simulate-out/SCENARIO)",
    )
    p.add_argument(
        "--plots",
        metavar="DIR",
        default=None,
        help="write the PNG plots here instead of into --out (e.g. docs/img)",
    )
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the scenario's)")
    p.add_argument(
        "--hours", type=float, default=None, help="simulated hours (default: the scenario's)"
    )
    p.add_argument("--list", action="store_true", help="list the named scenarios and exit")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def _list(out: TextIO) -> int:
    from gpumix.simulate.scenario import ScenarioError, builtin_scenarios, read_scenario

    for name, path in builtin_scenarios().items():
        try:
            description = read_scenario(path).description.replace("\n", " ")
        except ScenarioError as exc:
            description = f"(invalid: {exc})"
        out.write(f"{name:18} {description}\n")
    return EXIT_OK


class _Progress:
    """A one-line progress bar on a terminal; silent otherwise."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled and stream.isatty()

    def __call__(self, variant: str, k: int, n: int) -> None:
        if not self.enabled or (k % 30 and k != n):
            return
        width = 30
        filled = width * k // max(n, 1)
        self.stream.write(f"\r{variant[:28]:28} [{'#' * filled}{'.' * (width - filled)}] {k}/{n}")
        if k == n:
            self.stream.write("\n")
        self.stream.flush()


def run(
    args: argparse.Namespace, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    from gpumix.simulate.planning import ProfileError, load_inputs, optimizer_planner
    from gpumix.simulate.report import text_report, write_report
    from gpumix.simulate.runner import MAX_HOURS, simulate
    from gpumix.simulate.scenario import ScenarioError, read_scenario, resolve

    if args.list:
        return _list(stdout)
    if not args.scenario:
        stderr.write("error: give a scenario name or file (see gpumix simulate --list)\n")
        return EXIT_INPUT
    if args.hours is not None and not 0 < args.hours <= MAX_HOURS:
        stderr.write(f"error: --hours must be in (0, {MAX_HOURS:g}]\n")
        return EXIT_INPUT
    try:
        scenario, profiles = load_inputs(read_scenario(resolve(args.scenario)))
    except (ScenarioError, ProfileError) as exc:
        stderr.write(f"error: {exc}\n")
        return EXIT_INPUT
    out = Path(args.out) if args.out else Path("simulate-out") / scenario.name
    planner = optimizer_planner(profiles, clock=time.perf_counter) if profiles else None
    result = simulate(
        scenario,
        profiles,
        planner,
        seed=args.seed,
        hours=args.hours,
        progress=_Progress(stderr, not args.quiet),
    )
    try:
        written = write_report(result, out, Path(args.plots) if args.plots else None)
    except OSError as exc:
        stderr.write(f"error: cannot write {out}: {exc.strerror or exc}\n")
        return EXIT_INPUT
    stdout.write(text_report(result))
    where = f"{out}/" + (f" and {args.plots}/" if args.plots else "")
    stdout.write(f"\nwrote {len(written)} files to {where}\n")
    return EXIT_HEADLINE if result.headline.holds is False else EXIT_OK
