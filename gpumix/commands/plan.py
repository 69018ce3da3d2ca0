"""``gpumix plan``: run the GPU-mix optimizer offline on profile, load and price files.

Exit codes: 0 a plan was found, 1 no plan (infeasible, or none within the time limit),
2 unreadable or invalid input (one line naming the file and field).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from gpumix.optimizer import Problem, Result, Status, single_type_plans, solve
from gpumix.optimizer.profiles import (
    GpuProfile,
    ProfileError,
    build_problem,
    parse_availability,
    parse_load,
    parse_prices,
    parse_profile,
    parse_slo,
)

EXIT_OK = 0
EXIT_NO_PLAN = 1
EXIT_INPUT = 2
PROFILE_SUFFIXES = (".json", ".yaml", ".yml")


class InputError(Exception):
    """A file could not be read; the message names it."""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "plan",
        help="cheapest GPU mix for a load, from profiles and prices (offline)",
        description="Cheapest replicas per GPU type that serve a load histogram within the "
        "SLO, next to the best single-GPU-type plan.",
    )
    p.add_argument(
        "--profiles",
        required=True,
        nargs="+",
        metavar="FILE|DIR",
        help="GPU profiles (AIBrix JSON or kind: GPUProfile); a directory is "
        "read for *.json, *.yaml, *.yml",
    )
    p.add_argument("--load", required=True, metavar="FILE", help="load histogram (kind: Load)")
    p.add_argument(
        "--prices", required=True, metavar="FILE", help="price per GPU per hour (kind: Prices)"
    )
    p.add_argument(
        "--availability",
        metavar="FILE",
        help="free GPUs and replica limits per type (kind: Availability)",
    )
    p.add_argument(
        "--slo",
        metavar="SPEC",
        help="latency targets, e.g. e2e=5,ttft=0.5,percentile=99 (seconds); "
        "profile rates are recomputed from their latency tables",
    )
    p.add_argument(
        "--headroom",
        type=float,
        default=0.0,
        help="fraction of each replica's profiled rate kept free (default 0)",
    )
    p.add_argument(
        "--churn-weight",
        type=float,
        default=0.0,
        help="cost per hour charged per replica changed from 'current' (default 0)",
    )
    p.add_argument("--output", "-o", choices=("table", "json"), default="table")
    p.add_argument(
        "--time-limit",
        type=float,
        default=10.0,
        metavar="S",
        help="solver time limit in seconds (default 10)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputError(f"{path}: cannot read: {reason}") from None


def _profile_files(items: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                f for f in path.iterdir() if f.is_file() and f.suffix.lower() in PROFILE_SUFFIXES
            )
            if not found:
                raise InputError(f"{path}: no *.json, *.yaml or *.yml profiles in directory")
            files.extend(found)
        else:
            files.append(path)
    return files


def load_problem(args: argparse.Namespace) -> Problem:
    """Read and parse every input file; raises InputError or ProfileError."""
    profiles: list[GpuProfile] = [
        parse_profile(_read(f), str(f)) for f in _profile_files(args.profiles)
    ]
    load = parse_load(_read(Path(args.load)), args.load)
    prices = parse_prices(_read(Path(args.prices)), args.prices)
    avail = None
    if args.availability:
        avail = parse_availability(_read(Path(args.availability)), args.availability)
    slo = parse_slo(args.slo) if args.slo else None
    return build_problem(
        profiles,
        load,
        prices,
        avail,
        slo=slo,
        headroom=args.headroom,
        churn_weight=args.churn_weight,
        prices_source=args.prices,
        availability_source=args.availability or "availability",
    )


def _num(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _best_single(singles: dict[str, Result]) -> tuple[str, Result] | None:
    ok = [(r.cost_per_hour, name, r) for name, r in singles.items() if r.ok]
    if not ok:
        return None
    _, name, res = min(ok, key=lambda t: (t[0], t[1]))
    return name, res


def to_json(problem: Problem, result: Result, singles: dict[str, Result]) -> dict[str, Any]:
    best = _best_single(singles)
    doc: dict[str, Any] = {
        "status": result.status.value,
        "model": problem.model,
        "replicas": dict(result.replicas),
        "costPerHour": _num(result.cost_per_hour),
        "objective": _num(result.objective),
        "bound": _num(result.bound),
        "gap": _num(result.gap),
        "runtimeSeconds": result.runtime_s,
        "reason": result.reason,
        "errors": list(result.errors),
        "gpus": [
            {
                "name": g.name,
                "replicas": result.replicas.get(g.name),
                "gpusPerReplica": g.gpus_per_replica,
                "pricePerHour": g.price_per_hour,
                "costPerHour": (
                    g.replica_cost * result.replicas[g.name] if g.name in result.replicas else None
                ),
            }
            for g in problem.gpus
        ],
        "singleType": {
            name: (
                {"replicas": r.replicas[name], "costPerHour": r.cost_per_hour}
                if r.ok
                else {"replicas": None, "costPerHour": None, "reason": r.reason}
            )
            for name, r in singles.items()
        },
        "bestSingleType": None,
        "saving": None,
        "assignment": [
            {
                "inputTokens": b.input_tokens,
                "outputTokens": b.output_tokens,
                "rate": problem.load[i],
                "fractions": {
                    g.name: result.assignment[i][j]
                    for j, g in enumerate(problem.gpus)
                    if result.assignment[i][j] > 0
                },
            }
            for i, b in enumerate(problem.buckets)
        ]
        if result.assignment
        else [],
    }
    if best is not None:
        name, res = best
        doc["bestSingleType"] = {
            "gpu": name,
            "replicas": res.replicas[name],
            "costPerHour": res.cost_per_hour,
        }
        if result.ok:
            saving = res.cost_per_hour - result.cost_per_hour
            doc["saving"] = {
                "perHour": saving,
                "fraction": saving / res.cost_per_hour if res.cost_per_hour else 0.0,
            }
    return doc


def to_table(problem: Problem, result: Result, singles: dict[str, Result]) -> str:
    lines = [f"model: {problem.model or '-'}   status: {result.status.value}"]
    if not result.ok:
        lines.append(f"no plan: {result.reason}")
        return "\n".join(lines)
    rows = [("GPU TYPE", "REPLICAS", "GPUS", "$/H", "ALONE: REPLICAS", "ALONE: $/H")]
    for g in problem.gpus:
        n = result.replicas[g.name]
        s = singles[g.name]
        rows.append(
            (
                g.name,
                str(n),
                str(n * g.gpus_per_replica),
                f"{g.replica_cost * n:.2f}",
                str(s.replicas[g.name]) if s.ok else "-",
                f"{s.cost_per_hour:.2f}" if s.ok else "cannot",
            )
        )
    rows.append(
        (
            "TOTAL",
            str(sum(result.replicas.values())),
            str(sum(result.replicas[g.name] * g.gpus_per_replica for g in problem.gpus)),
            f"{result.cost_per_hour:.2f}",
            "",
            "",
        )
    )
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    best = _best_single(singles)
    if best is None:
        lines.append("best single GPU type: none can serve this load alone")
    else:
        name, res = best
        saving = res.cost_per_hour - result.cost_per_hour
        pct = 100 * saving / res.cost_per_hour if res.cost_per_hour else 0.0
        lines.append(
            f"best single GPU type: {name} x{res.replicas[name]} at "
            f"{res.cost_per_hour:.2f}/h; the mix saves {saving:.2f}/h ({pct:.1f}%)"
        )
    gap = f", gap {100 * result.gap:.2f}%" if result.status == Status.FEASIBLE else ""
    lines.append(f"solver: {result.status.value.lower()}{gap}, {result.runtime_s:.3f} s")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if not (math.isfinite(args.time_limit) and args.time_limit > 0):
        print(
            f"gpumix plan: --time-limit: must be a number > 0, got {args.time_limit}",
            file=sys.stderr,
        )
        return EXIT_INPUT
    try:
        problem = load_problem(args)
    except (InputError, ProfileError) as exc:
        print(f"gpumix plan: {exc}", file=sys.stderr)
        return EXIT_INPUT
    result = solve(problem, time_limit_s=args.time_limit, seed=args.seed)
    if result.status == Status.INVALID:
        print(f"gpumix plan: invalid input: {'; '.join(result.errors)}", file=sys.stderr)
        return EXIT_INPUT
    singles = single_type_plans(problem)
    if args.output == "json":
        print(json.dumps(to_json(problem, result, singles), indent=2))
    else:
        print(to_table(problem, result, singles))
    return EXIT_OK if result.ok else EXIT_NO_PLAN
