"""What ``gc.freeze`` after the cache sync does to the admission path.

    python benchmarks/bench_gc_freeze.py [--deployments 10000] [--namespaces 100]
        [--admissions 20000] [--rounds 3] [--duration 10] [--concurrency 64]

The process holds what a webhook process holds once its cache has synced: gpumix's
webhook modules (aiohttp, kubernetes-asyncio, prometheus-client, ...) and the views of
``--deployments`` Deployments in ``--namespaces`` namespaces, one HPA per ten
Deployments and 50 GPU Nodes (``Snapshot.from_objects``, the store the cache fills;
the same cluster as benchmarks/bench_webhook.py).  Then ``--admissions``
AdmissionReviews of bench_webhook.py's mix (new isolated and broad Deployments, HPAs
with and without a ceiling) each go through the webhook's admission path in process,
``/mutate`` then ``/validate``: the body parsed (``parse_json``, ``parse_review``),
decided (``review``), the answer built and encoded (``to_response``, ``json_bytes``).
Each admission is timed (``perf_counter_ns``), and every collection of the garbage
collector is recorded through ``gc.callbacks`` (generation and pause).

Each round runs the same admissions twice: with the process as it is after the sync
(``gc.unfreeze()``: everything back in the oldest generation) and after
``gc.collect()`` then ``gc.freeze()`` (what the webhook did once its cache had synced);
the order alternates from round to round.  Reported: p50, p99,
p99.9 and maximum admission latency, collections of generation 2 (count, total and
longest pause), and the ratio frozen / not frozen of each, per round and over all
rounds.  No HTTP: the server's own allocations (aiohttp requests and responses) are
left out, so collections here come from the admission path alone.

Then the same over HTTP: the webhook's server (``make_server``, the handler and the
connection class gpumix serves with) runs in this process on uvloop, on loopback
without TLS, and wrk (``apt-get install wrk``; bench_webhook.py's script, which checks
every answer) keeps ``--concurrency`` connections busy with ``/mutate`` reviews of the
same mix for ``--duration`` seconds per run; each round runs not frozen and frozen, the
order alternating.  Reported: requests/s, p50, p99 and maximum latency as wrk sees it
(queueing included: a pause of the event loop delays every request in flight), this
process's CPU time per request, the collections of each generation during the run and
how much generation 2 grew (``--http-only`` skips the in-process part).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from aiohttp import web  # noqa: E402
from bench_webhook import (  # noqa: E402
    WRK_ERRORS,
    WRK_SCRIPT,
    cluster,
    deployment,
    request_mix,
    require_wrk,
    wrk_summary,
)

from gpumix.admission import Phase, review  # noqa: E402
from gpumix.kube.objects import read_view  # noqa: E402
from gpumix.kube.policy import Policy  # noqa: E402
from gpumix.kube.snapshot import Snapshot  # noqa: E402
from gpumix.webhook.metrics import WebhookMetrics  # noqa: E402
from gpumix.webhook.server import StaticSource, WebhookState, make_server, parse_json  # noqa: E402
from gpumix.webhook.wire import json_bytes, parse_review, to_response  # noqa: E402

Obj = dict[str, Any]


@dataclass
class Collections:
    """Every collection while recording: (generation, pause in seconds)."""

    pauses: list[tuple[int, float]] = field(default_factory=list)
    recording: bool = False
    _started: float = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if not self.recording:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._started))

    def of(self, generation: int) -> list[float]:
        return [p for g, p in self.pauses if g == generation]


@dataclass
class Run:
    latencies_s: list[float]
    gen2: list[float]
    young: int  # collections of generations 0 and 1

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> dict[str, float]:
        return {
            "p50_us": self.quantile(0.50) * 1e6,
            "p99_us": self.quantile(0.99) * 1e6,
            "p999_us": self.quantile(0.999) * 1e6,
            "max_us": max(self.latencies_s) * 1e6,
            "gen2_count": float(len(self.gen2)),
            "gen2_total_ms": sum(self.gen2) * 1e3,
            "gen2_max_ms": max(self.gen2, default=0.0) * 1e3,
        }


def admit_all(
    bodies: list[bytes],
    snapshot: Snapshot,
    policy: Policy,
    collections: Collections,
    rollout: list[tuple[str, str, str, str]] | None = None,
) -> Run:
    """Every body through /mutate then /validate, as the server's handler does it.  With
    ``rollout``: after each review, the next of those Deployments changes (a new
    ``generation``) and its view replaces the cached one, as the cache does on a watch
    event (``read_view``, ``Snapshot.put``); ``rollout`` holds each Deployment's
    namespace, name, model and GPU type."""
    latencies: list[float] = []
    clock: Callable[[], int] = time.perf_counter_ns
    phases: tuple[Phase, Phase] = ("mutate", "validate")
    collections.pauses.clear()
    collections.recording = True
    for k, raw in enumerate(bodies):
        for phase in phases:
            started = clock()
            admission = parse_review(parse_json(raw))
            verdict = review(admission, snapshot, policy, phase, current=True)
            json_bytes(to_response(admission["uid"], verdict))
            latencies.append((clock() - started) / 1e9)
        if rollout:
            ns, name, model, gpu = rollout[k % len(rollout)]
            obj = deployment(ns, name, model, gpu, isolated=True)
            obj["metadata"]["generation"] = 2 + k // len(rollout)
            view = read_view(obj, policy)
            assert view is not None
            snapshot.put(view)
    collections.recording = False
    young = sum(1 for g, _ in collections.pauses if g < 2)
    return Run(latencies, collections.of(2), young)


def ratio(frozen: float, thawed: float) -> str:
    return f"{frozen / thawed:.2f}" if thawed else ("1.00" if not frozen else "inf")


def line(label: str, s: dict[str, float]) -> str:
    return (
        f"{label:11} p50 {s['p50_us']:7.1f} µs  p99 {s['p99_us']:7.1f} µs  "
        f"p99.9 {s['p999_us']:8.1f} µs  max {s['max_us'] / 1e3:7.2f} ms  "
        f"gen-2 collections {s['gen2_count']:3.0f} ({s['gen2_total_ms']:7.1f} ms in all, "
        f"longest {s['gen2_max_ms']:6.2f} ms)"
    )


def ratios(frozen: dict[str, float], thawed: dict[str, float]) -> str:
    keys = ("p50_us", "p99_us", "p999_us", "max_us", "gen2_count", "gen2_total_ms")
    names = ("p50", "p99", "p99.9", "max", "gen-2 count", "gen-2 time")
    return "frozen / not frozen: " + ", ".join(
        f"{n} {ratio(frozen[k], thawed[k])}" for n, k in zip(names, keys, strict=True)
    )


# bench_webhook.py's wrk script (checks each answer's status and uid), reporting p99.9 too.
WRK_SCRIPT_P999 = WRK_SCRIPT.replace(
    "p99_us=%.0f max_us", "p99_us=%.0f p999_us=%.0f max_us"
).replace("latency:percentile(99),", "latency:percentile(99), latency:percentile(99.9),")
assert WRK_SCRIPT_P999.count("p999_us") == 1 and "percentile(99.9)" in WRK_SCRIPT_P999


@dataclass
class WrkRun:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    gen2: list[float]
    cpu_us: float = 0.0  # this process's CPU time per request
    young: int = 0  # collections of generations 0 and 1
    young_ms: float = 0.0
    grown: int = 0  # net growth of generation 2 during the run


async def wrk_run(wrk: str, work: Path, url: str, connections: int, duration_s: float) -> WrkRun:
    f = await wrk_summary(wrk, work, url, "uid", connections, duration_s)
    errors = sum(f[k] for k in WRK_ERRORS)
    if errors:
        raise RuntimeError(f"wrk on {url}: {errors} bad answers or errors: {f}")
    return WrkRun(
        f["requests"],
        f["requests"] / (f["duration_us"] / 1e6),
        f["p50_us"] / 1e3,
        f["p99_us"] / 1e3,
        f["p999_us"] / 1e3,
        f["max_us"] / 1e3,
        [],
    )


async def over_http(
    args: argparse.Namespace,
    snapshot: Snapshot,
    policy: Policy,
    collections: Collections,
) -> None:
    wrk = require_wrk()
    source = StaticSource(snapshot)
    state = WebhookState(policy, source, WebhookMetrics())
    runner = web.ServerRunner(make_server(state), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}/mutate"
    runs: dict[str, list[WrkRun]] = {"not frozen": [], "frozen": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            (work / "mix.lua").write_text(WRK_SCRIPT_P999)
            with (work / "bodies.txt").open("wb") as f:
                for i, body in enumerate(request_mix(args.namespaces, 2000)):
                    f.write(f"uid-{i}\t".encode() + body + b"\n")
            await wrk_run(wrk, work, url, args.concurrency, 2)  # warm-up
            for rnd in range(args.rounds):
                order = ("not frozen", "frozen") if rnd % 2 == 0 else ("frozen", "not frozen")
                for label in order:
                    gc.unfreeze()
                    gc.collect()
                    if label == "frozen":
                        freeze()
                    old = len(gc.get_objects(generation=2))
                    collections.pauses.clear()
                    collections.recording = True
                    cpu = time.process_time()
                    r = await wrk_run(wrk, work, url, args.concurrency, args.duration)
                    r.cpu_us = (time.process_time() - cpu) / r.requests * 1e6
                    collections.recording = False
                    r.gen2 = gen2 = collections.of(2)
                    young = [p for g, p in collections.pauses if g < 2]
                    r.young, r.young_ms = len(young), sum(young) * 1e3
                    if not gen2:  # else the count restarted at the collection
                        r.grown = len(gc.get_objects(generation=2)) - old
                    runs[label].append(r)
                    print(
                        f"  round {rnd + 1} {label:10} {r.rps:6.0f} req/s "
                        f"({r.cpu_us:3.0f} µs CPU)  "
                        f"p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:6.2f} ms  "
                        f"p99.9 {r.p999_ms:6.2f} ms  max {r.max_ms:7.2f} ms  "
                        f"gen-2 collections {len(gen2):3d} "
                        f"({sum(gen2) * 1e3:6.1f} ms in all, longest "
                        f"{max(gen2, default=0) * 1e3:5.2f} ms); generations 0-1: "
                        f"{r.young} ({r.young_ms:.1f} ms); generation 2 grew by {r.grown}",
                        flush=True,
                    )
    finally:
        gc.unfreeze()
        await runner.cleanup()

    def med(label: str, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in runs[label])

    def gen2(label: str) -> tuple[int, float]:
        pauses = [p for r in runs[label] for p in r.gen2]
        return len(pauses), sum(pauses)

    (nf_n, nf_t), (f_n, f_t) = gen2("not frozen"), gen2("frozen")
    print(
        f"  medians over {args.rounds} rounds, frozen / not frozen: "
        + ", ".join(
            f"{name} {ratio(med('frozen', attr), med('not frozen', attr))}"
            for name, attr in (
                ("req/s", "rps"),
                ("CPU per request", "cpu_us"),
                ("p50", "p50_ms"),
                ("p99", "p99_ms"),
                ("p99.9", "p999_ms"),
                ("max", "max_ms"),
            )
        )
        + "; gen-2 collections in all "
        f"rounds: not frozen {nf_n} ({nf_t * 1e3:.1f} ms), frozen {f_n} ({f_t * 1e3:.1f} ms)"
    )


def freeze() -> None:
    """Everything alive into the collector's permanent generation, after a full
    collection (what the webhook did once its cache had synced)."""
    gc.collect()
    gc.freeze()


def full_collection(repeat: int = 5) -> None:
    """The pause of one full collection (``gc.collect()``), not frozen and frozen."""
    pauses: dict[str, list[float]] = {}
    for label in ("not frozen", "frozen"):
        gc.unfreeze()
        gc.collect()
        if label == "frozen":
            freeze()
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            gc.collect()
            times.append(time.perf_counter() - started)
        pauses[label] = times
    gc.unfreeze()
    nf, f = (statistics.median(pauses[k]) * 1e3 for k in ("not frozen", "frozen"))
    print(f"one full collection (median of {repeat}): not frozen {nf:.1f} ms, frozen {f:.2f} ms")


def in_process(
    args: argparse.Namespace,
    snapshot: Snapshot,
    policy: Policy,
    bodies: list[bytes],
    collections: Collections,
    rollout: list[tuple[str, str, str, str]] | None,
) -> None:
    summaries: dict[str, list[Run]] = {"frozen": [], "not frozen": []}
    frozen_count = 0
    for rnd in range(args.rounds):
        order = ("not frozen", "frozen") if rnd % 2 == 0 else ("frozen", "not frozen")
        current: dict[str, dict[str, float]] = {}
        for label in order:
            gc.unfreeze()
            gc.collect()
            if label == "frozen":
                freeze()
                frozen_count = gc.get_freeze_count()
            run = admit_all(bodies, snapshot, policy, collections, rollout)
            summaries[label].append(run)
            current[label] = run.summary()
        print(f"  round {rnd + 1} ({frozen_count} objects frozen)")
        for label in ("not frozen", "frozen"):
            print("    " + line(label, current[label]))
        print("    " + ratios(current["frozen"], current["not frozen"]))
    gc.unfreeze()
    all_runs = {
        label: Run(
            [x for r in runs for x in r.latencies_s],
            [x for r in runs for x in r.gen2],
            sum(r.young for r in runs),
        ).summary()
        for label, runs in summaries.items()
    }
    print(f"  all {args.rounds} rounds")
    for label in ("not frozen", "frozen"):
        print("    " + line(label, all_runs[label]))
    print("    " + ratios(all_runs["frozen"], all_runs["not frozen"]))
    young = {label: statistics.mean(r.young for r in runs) for label, runs in summaries.items()}
    print(
        f"    collections of generations 0-1 per run: not frozen {young['not frozen']:.0f}, "
        f"frozen {young['frozen']:.0f}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deployments", type=int, default=10_000)
    ap.add_argument("--namespaces", type=int, default=100)
    ap.add_argument("--admissions", type=int, default=20_000, help="reviews per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    ap.add_argument("--concurrency", type=int, default=64, help="wrk connections")
    ap.add_argument("--http-only", action="store_true", help="skip the in-process part")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    policy = Policy()
    started = time.perf_counter()
    objects = cluster(args.deployments, args.namespaces)
    snapshot = Snapshot.from_objects(objects, policy)
    # What a rollout changes; the objects themselves go, as the cache keeps only views.
    deployments = [
        (
            o["metadata"]["namespace"],
            o["metadata"]["name"],
            o["metadata"]["labels"]["model.aibrix.ai/name"],
            o["spec"]["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"],
        )
        for o in objects
        if o["kind"] == "Deployment"
    ]
    del objects
    bodies = request_mix(args.namespaces, args.admissions)
    gc.collect()
    print(
        f"# Python {platform.python_version()} on {platform.machine()}, "
        f"{len(snapshot.deployments)} Deployments and {len(snapshot.autoscalers)} autoscalers "
        f"cached ({time.perf_counter() - started:.1f} s), {len(gc.get_objects())} objects "
        f"tracked by the collector; {args.admissions} reviews x /mutate + /validate per run; "
        f"thresholds {gc.get_threshold()}"
    )
    collections = Collections()
    gc.callbacks.append(collections)
    full_collection()
    for title, rollout in (
        ()
        if args.http_only
        else (
            ("admissions", None),
            ("admissions while every cached Deployment changes in turn", deployments),
        )
    ):
        print(f"in process: {title}")
        in_process(args, snapshot, policy, bodies, collections, rollout)
    print(f"over HTTP: wrk, {args.concurrency} connections, {args.duration:g} s per run, /mutate")
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(over_http(args, snapshot, policy, collections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
