"""Controller reconcile benchmark: 500 GPUMix (4 GPU types each, 2,000 Deployments).

Runs the in-process API emulator on loopback, the controller's watch cache and
its reconcile pass through kubernetes-asyncio (passes are driven directly once
the cache has synced), and reports the time and API calls of

- the first full pass (every member scaled, every status written, Events),
- the second (statuses record the new current replicas), and
- steady passes (nothing changed: reads only),

with the real optimizer and with a fixed-answer solver (controller overhead
alone).  ``--write-docs`` writes the result into the "Controller reconcile"
section of docs/benchmarks.md (other sections are left as they are).

``--scaling`` instead runs the fixed-answer solver on a small and a large cluster
(3 and 250 GPUMix: 12 and 1,000 Deployments) and compares the API calls of a
steady pass: with the watch cache they do not grow with the cluster.

    python benchmarks/bench_controller.py [--gpumixes 500] [--steady 3]
                                          [--solver both|optimizer|fixed] [--write-docs]
    python benchmarks/bench_controller.py --scaling [--write-docs]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpumix.controller.optimize import solve_mix  # noqa: E402
from gpumix.controller.plan import MixProblem, MixSolution  # noqa: E402
from gpumix.controller.settings import ControllerSettings  # noqa: E402
from gpumix.controller.shell import ALL, Controller  # noqa: E402
from gpumix.emulator.server import Emulator  # noqa: E402
from gpumix.kube.policy import Policy  # noqa: E402
from gpumix.kubeio.client import KubeClient  # noqa: E402

GPU_TYPES = (("A100", 2.2, 10.0), ("H100", 3.5, 18.0), ("A40", 0.8, 4.5), ("L40S", 1.1, 6.0))
NAMESPACES = 50
SECTION = "## Controller reconcile"


def objects(n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(NAMESPACES):
        out.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"team-{i}"}})
    for gpu, _, _ in GPU_TYPES:
        for k in range(max(1, n // 2)):  # 4 GPUs per GPUMix and type: not scarce
            out.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": f"{gpu.lower()}-{k}",
                        "labels": {"nvidia.com/gpu.product": gpu},
                    },
                    "status": {"allocatable": {"nvidia.com/gpu": "8"}},
                }
            )
    profiles = [
        {
            "gpuType": gpu,
            "buckets": [
                {"inputTokens": 512, "outputTokens": 128, "maxRequestsPerSecond": rate},
                {"inputTokens": 2048, "outputTokens": 512, "maxRequestsPerSecond": rate / 5},
            ],
        }
        for gpu, _, rate in GPU_TYPES
    ]
    for m in range(n):
        ns = f"team-{m % NAMESPACES}"
        model = f"model-{m}"
        for gpu, _, _ in GPU_TYPES:
            name = f"{model}-{gpu.lower()}"
            labels = {"gpumix.io/model": model, "app": name}
            out.append(
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {
                        "name": name,
                        "namespace": ns,
                        "labels": {"gpumix.io/model": model},
                    },
                    "spec": {
                        "replicas": 1,
                        "selector": {"matchLabels": labels},
                        "template": {
                            "metadata": {"labels": {**labels, "gpumix.io/gpu-type": gpu}},
                            "spec": {
                                "containers": [
                                    {
                                        "name": "vllm",
                                        "image": "vllm/vllm-openai:v0.6.0",
                                        "resources": {"limits": {"nvidia.com/gpu": "1"}},
                                    }
                                ]
                            },
                        },
                    },
                }
            )
        out.append(
            {
                "apiVersion": "gpumix.io/v1alpha1",
                "kind": "GPUMix",
                "metadata": {"name": model, "namespace": ns},
                "spec": {
                    "model": model,
                    "profiles": {"inline": profiles},
                    "prices": {gpu: price for gpu, price, _ in GPU_TYPES},
                    "gpuTypes": {gpu: {"maxReplicas": 16} for gpu, _, _ in GPU_TYPES},
                    "loadSource": {
                        "static": {
                            "buckets": [
                                {
                                    "inputTokens": 512,
                                    "outputTokens": 128,
                                    "requestsPerSecond": 8 + m % 13,
                                },
                                {
                                    "inputTokens": 2048,
                                    "outputTokens": 512,
                                    "requestsPerSecond": 1 + m % 3,
                                },
                            ]
                        }
                    },
                    "mode": "scale",
                    "scaleDownStabilizationSeconds": 0,
                },
            }
        )
    return out


def fake_solver(problem: MixProblem) -> MixSolution:
    replicas = {
        o.gpu_type: min(o.max_replicas, 2 if i == 0 else 1) for i, o in enumerate(problem.options)
    }
    return MixSolution("OPTIMAL", replicas, cost_per_hour=1.0, solve_seconds=0.0)


async def bench(n: int, steady: int, fake: bool) -> dict[str, Any]:
    async with Emulator() as emu:
        emu.create(yaml.safe_load((ROOT / "manifests/crds/gpumix.io_gpumixes.yaml").read_text()))
        started = time.perf_counter()
        for obj in objects(n):
            emu.create(obj)
        setup_s = time.perf_counter() - started
        settings = ControllerSettings(
            policy=Policy(), leader_election=False, metrics_port=None, audit_interval_s=0
        )
        async with emu.api_client() as api, aiohttp.ClientSession() as session:
            kube = KubeClient(api)
            controller = Controller(
                settings,
                kube,
                clock=time.time,
                session=session,
                solver=fake_solver if fake else solve_mix,
            )
            synced_at = time.perf_counter()
            await controller.start_cache()
            try:
                if not await controller.informer.wait_synced(120):
                    raise RuntimeError("the controller's cache did not sync in 120 s")
                sync_s = time.perf_counter() - synced_at
                cache_calls = dict(kube.calls)
                first = await controller.reconcile_pass({ALL})
                settle = await controller.reconcile_pass({ALL})  # statuses catch up
                await asyncio.sleep(0.5)  # the scales' watch events reach the cache
                steadies = [await controller.reconcile_pass({ALL}) for _ in range(steady)]
            finally:
                await controller.stop_cache()
            solved = [
                e
                for obj in emu.list("gpumixes.gpumix.io")
                for e in [obj.get("status", {}).get("solverStatus")]
            ]
    return {
        "gpumixes": n,
        "deployments": 4 * n,
        "setup_s": setup_s,
        "first": first,
        "settle": settle,
        "steady": steadies,
        "solver": "fixed answer" if fake else "optimizer.solve",
        "solver_status": {s: solved.count(s) for s in set(solved)},
        "cache_sync_s": sync_s,
        "cache_calls": cache_calls,
    }


def report(result: dict[str, Any], command: str) -> str:
    first = result["first"]
    steady = result["steady"]
    st_s = statistics.median(p.seconds for p in steady) if steady else float("nan")
    st_calls = statistics.median(sum(p.api_calls.values()) for p in steady) if steady else 0
    lines = [
        f"{result['gpumixes']} GPUMix, {result['deployments']} Deployments, "
        f"4 GPU types, {NAMESPACES} namespaces; solver: {result['solver']} "
        f"(statuses {result['solver_status']}); "
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs "
        f"(load average {os.getloadavg()[0]:.1f} at the end: shared with other jobs), "
        "emulator over loopback HTTP.",
        "",
        "| pass | time (s) | API calls | by verb | scales | status writes | Events |",
        "|---|---|---|---|---|---|---|",
        f"| first (cold) | {first.seconds:.2f} | {sum(first.api_calls.values())} | "
        f"{_verbs(first.api_calls)} | {first.scales} | {first.status_writes} | {first.events} |",
    ]
    settle = result["settle"]
    lines.append(
        f"| second (statuses catch up) | {settle.seconds:.2f} | {sum(settle.api_calls.values())} | "
        f"{_verbs(settle.api_calls)} | {settle.scales} | {settle.status_writes} | "
        f"{settle.events} |"
    )
    if steady:
        p = steady[-1]
        lines.append(
            f"| steady (median of {len(steady)}) | {st_s:.2f} | {st_calls:.0f} | "
            f"{_verbs(p.api_calls)} | {p.scales} | {p.status_writes} | {p.events} |"
        )
    lines += ["", f"Command: `{command}`"]
    return "\n".join(lines)


def scaling(steady: int) -> str:
    """Steady-pass API calls on a small and a large cluster (fixed-answer solver)."""
    rows = []
    results = [asyncio.run(bench(n, steady, True)) for n in (3, 250)]
    base = statistics.median(sum(p.api_calls.values()) for p in results[0]["steady"])
    for r in results:
        calls = statistics.median(sum(p.api_calls.values()) for p in r["steady"])
        secs = statistics.median(p.seconds for p in r["steady"])
        rows.append(
            f"| {r['gpumixes']} | {r['deployments']} | {_verbs(r['cache_calls'])} | "
            f"{r['cache_sync_s']:.2f} | {calls:.0f} ({_verbs(r['steady'][-1].api_calls)}) | "
            f"{calls / base:.2f} | {secs:.3f} |"
        )
    return "\n".join(
        [
            f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs "
            f"(load average {os.getloadavg()[0]:.1f} at the end: shared with other jobs), "
            "emulator over loopback HTTP, fixed-answer solver.",
            "",
            "| GPUMix | Deployments | cache start-up calls | cache synced (s) "
            "| steady pass API calls | ratio to the small cluster | steady pass (s) |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Command: `python benchmarks/bench_controller.py --scaling`",
        ]
    )


SCALING_SECTION = "## Controller API calls by cluster size"


def write_scaling_docs(text: str) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    doc = path.read_text()
    body = (
        f"{SCALING_SECTION}\n\n"
        "Deployments, bound Pods, Nodes and autoscalers come from the controller's watch "
        "cache (list once, then watch), so a reconcile pass reads only the GPUMixes (one "
        "list call per 500) and the ConfigMaps GPUMixes name. A steady pass therefore "
        "makes the same number of API calls on 12 Deployments as on 1,000; only the "
        "cache's start-up (one paged list and one watch per resource) and its memory "
        "grow with the cluster.\n\n"
        f"{text}\n"
    )
    if SCALING_SECTION in doc:
        start = doc.index(SCALING_SECTION)
        nxt = doc.find("\n## ", start + len(SCALING_SECTION))
        doc = doc[:start] + body + ("\n" + doc[nxt + 1 :] if nxt != -1 else "")
    else:
        doc = doc.rstrip("\n") + "\n\n" + body
    path.write_text(doc)


def _verbs(calls: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(calls.items()))


def write_docs(text: str) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    body = (
        f"{SECTION}\n\n"
        "One reconcile pass lists the GPUMixes (one call per 500) and reads Deployments, "
        "Nodes, bound Pods and autoscalers from the controller's watch cache (synced "
        "before the first pass; its start-up calls are not counted here), then writes "
        "only what changed: `/scale` for members whose replicas "
        "change, the status subresource when the status changed, one Event per decision. "
        "A steady pass (nothing changed) is reads only.\n\n"
        "Setup: 250 Nodes of 8 GPUs per type (2,000 GPUs per type for 500 models, so the "
        "cheapest type runs short), two load buckets per model, static load, "
        "`scaleDownStabilizationSeconds: 0`. With the optimizer, every GPUMix is solved "
        "five times per pass (the mix, and each type alone for `bestSingleTypeCostPerHour`); "
        "the fixed-answer run shows the controller's own cost (reads, planning, writes). "
        "The second pass re-reads the GPU commitments after the first pass's scale-ups and "
        "scale-downs (the first pass hands free GPUs out in order, conservatively), so a few "
        "members move once more; every member's status also records its new replicas.\n\n"
        f"{text}\n"
    )
    if SECTION in doc:
        start = doc.index(SECTION)
        nxt = doc.find("\n## ", start + len(SECTION))
        doc = doc[:start] + body + ("\n" + doc[nxt + 1 :] if nxt != -1 else "")
    else:
        doc = doc.rstrip("\n") + "\n\n" + body
    path.write_text(doc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpumixes", type=int, default=500)
    ap.add_argument("--steady", type=int, default=3)
    ap.add_argument(
        "--solver",
        choices=("both", "optimizer", "fixed"),
        default="both",
        help="optimizer.solve, a fixed-answer solver (controller overhead alone), or both",
    )
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument(
        "--scaling", action="store_true", help="steady-pass API calls, 12 vs 1,000 Deployments"
    )
    args = ap.parse_args()
    if args.scaling:
        text = scaling(args.steady)
        print(text, flush=True)
        if args.write_docs:
            write_scaling_docs(text)
        return 0
    command = "python benchmarks/bench_controller.py" + (
        f" --gpumixes {args.gpumixes}" if args.gpumixes != 500 else ""
    )
    texts = []
    for fake in {"both": (False, True), "optimizer": (False,), "fixed": (True,)}[args.solver]:
        result = asyncio.run(bench(args.gpumixes, args.steady, fake))
        texts.append(
            report(result, command + (" --solver fixed" if fake else " --solver optimizer"))
        )
        print(texts[-1] + "\n", flush=True)
    if args.write_docs:
        write_docs("\n\n".join(texts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
