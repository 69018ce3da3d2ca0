"""CPU per request of the webhook's HTTP layer: this checkout against another, paired.

    python benchmarks/bench_webhook_http_cost.py OTHER_CHECKOUT [--pairs 7] [--seconds 5]

Each checkout's ``make_server`` serves a fixed cluster (200 Deployments) on plain HTTP
on loopback, in its own process on uvloop; wrk (``apt-get install wrk``) posts one
small HPA review to ``/validate`` from 16 keep-alive connections, after a 2 s warm-up.
The server process's user + system time over the run, divided by the requests, is its
CPU per request.  Runs alternate between the two checkouts (``--pairs`` times, the
order flipped every pair) so that a busy machine weighs on both alike; the paired
differences and their median are printed.  TLS is left out: it costs the same in both
and would hide a difference of a few microseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SERVER = """
import asyncio, sys
sys.path[:0] = [{tree!r}, {tree!r} + "/tests/webhook"]
import uvloop
from aiohttp import web
from webhook_kit import deployment, snapshot
from gpumix.kube.policy import Policy
from gpumix.webhook.metrics import WebhookMetrics
from gpumix.webhook.server import StaticSource, WebhookState, make_server

async def main():
    snap = snapshot(*[deployment(f"d{{i}}", f"ns{{i % 10}}", model=f"m{{i}}") for i in range(200)])
    state = WebhookState(Policy(), StaticSource(snap), WebhookMetrics())
    runner = web.ServerRunner(make_server(state))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", {port})
    await site.start()
    print("ready", flush=True)
    await asyncio.sleep(3600)

uvloop.run(main())
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(tree: str, port: int, lua: str, seconds: float) -> float:
    """CPU µs per request of ``tree``'s server."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER.format(tree=tree, port=port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        url = f"http://127.0.0.1:{port}/validate"
        wrk = ["wrk", "-t1", "-c16", "-s", lua]
        subprocess.run([*wrk, "-d2s", url], check=True, capture_output=True)
        before = cpu_seconds(proc.pid)
        out = subprocess.run(
            [*wrk, f"-d{seconds:g}s", url], check=True, capture_output=True, text=True
        ).stdout
        used = cpu_seconds(proc.pid) - before
        if "Non-2xx" in out:
            raise SystemExit(f"{tree}: answers other than 200:\n{out}")
        requests = int(next(line for line in out.splitlines() if "requests in" in line).split()[0])
        return used / requests * 1e6
    finally:
        proc.kill()
        proc.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("other", help="another checkout of gpumix (e.g. a git worktree)")
    p.add_argument("--pairs", type=int, default=7)
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    sys.path.insert(0, str(REPO / "tests" / "webhook"))
    from webhook_kit import hpa, review_body

    body = json.dumps(review_body(hpa("h", "d1", 5, "ns1"), uid="u1"))
    with tempfile.TemporaryDirectory() as tmp:
        lua = str(Path(tmp, "post.lua"))
        Path(lua).write_text(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(body)}\n"
        )
        trees = {"this": str(REPO), "other": str(Path(args.other).resolve())}
        diffs = []
        for n in range(args.pairs):
            order = ("this", "other") if n % 2 else ("other", "this")
            got = {
                name: measure(trees[name], 18180 + i, lua, args.seconds)
                for i, name in enumerate(order)
            }
            diffs.append(got["this"] - got["other"])
            print(
                f"pair {n + 1}: this {got['this']:.1f} µs, other {got['other']:.1f} µs, "
                f"difference {diffs[-1]:+.1f} µs",
                flush=True,
            )
            time.sleep(0.5)
        print(
            f"median difference {statistics.median(diffs):+.1f} µs per request, "
            f"mean {statistics.mean(diffs):+.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
