"""The controller reads load from a REAL Prometheus server (Debian package ``prometheus``).

The test starts ``prometheus`` on a loopback port with a temporary config that
scrapes a small in-test load generator exposing vLLM-style metrics, waits for
samples, and lets the controller plan from them.  A missing ``prometheus``
binary FAILS the test (the CI script installs it: ``apt-get install -y prometheus``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from controller_helpers import (
    GreedySolver,
    condition,
    deployment,
    gmx_status,
    gpumix,
    node,
    replicas,
    running,
    settings,
    wait_for,
)
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

RATE = 20.0  # requests per second the generator finishes
PROMPT_BUCKETS = (128, 512, 2048)
GEN_BUCKETS = (64, 128, 512)


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None
    )
    if found is None:
        pytest.fail(
            "the prometheus binary is missing: install the Debian package "
            "(apt-get install -y prometheus)"
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LoadGenerator:
    """Finishes RATE requests/s: 3/4 short prompts, 1/4 long; half short, half long outputs."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.prompt = Histogram(
            "vllm:request_prompt_tokens",
            "Prompt tokens of finished requests.",
            ["model_name"],
            buckets=PROMPT_BUCKETS,
            registry=self.registry,
        )
        self.gen = Histogram(
            "vllm:request_generation_tokens",
            "Generated tokens of finished requests.",
            ["model_name"],
            buckets=GEN_BUCKETS,
            registry=self.registry,
        )
        self.success = Counter(
            "vllm:request_success",
            "Finished requests.",
            ["model_name", "finished_reason"],
            registry=self.registry,
        )
        self._rng = random.Random(7)
        self.finished = 0

    def finish(self, n: int) -> None:
        for i in range(n):
            k = self.finished + i
            self.prompt.labels("llama").observe(100 if k % 4 else 1000)
            self.gen.labels("llama").observe(50 if k % 2 else 300)
            self.success.labels("llama", "stop").inc()
        self.finished += n

    async def run(self, stop: asyncio.Event) -> None:
        started = time.monotonic()
        while not stop.is_set():
            due = int((time.monotonic() - started) * RATE)
            if due > self.finished:
                self.finish(due - self.finished)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)

    async def metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), content_type="text/plain")


@pytest.fixture
async def generator() -> AsyncIterator[str]:
    gen = LoadGenerator()
    app = web.Application()
    app.router.add_get("/metrics", gen.metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    stop = asyncio.Event()
    task = asyncio.create_task(gen.run(stop))
    yield f"127.0.0.1:{port}"
    stop.set()
    await task
    await runner.cleanup()


@contextlib.contextmanager
def prometheus_server(target: str) -> Iterator[str]:
    binary = prometheus_binary()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="gpumix-prom-") as tmp:
        cfg = Path(tmp) / "prometheus.yml"
        cfg.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: vllm\n    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        log = (Path(tmp) / "prometheus.log").open("w")
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={tmp}/data",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            log.close()
            if proc.returncode not in (0, -15):
                print((Path(tmp) / "prometheus.log").read_text()[-2000:])


async def query(url: str, promql: str) -> list[Any]:
    async with aiohttp.ClientSession() as http:
        try:
            async with http.get(f"{url}/api/v1/query", params={"query": promql}) as resp:
                body = await resp.json()
        except aiohttp.ClientError:
            return []
    return list(body.get("data", {}).get("result", []))


async def test_controller_plans_from_real_prometheus(emu: Any, api: Any, generator: str) -> None:
    with prometheus_server(generator) as prom:
        # rate() over a window that is not yet full of samples underestimates: wait until
        # the window holds a sample every scrape interval
        promql = 'min(count_over_time(vllm:request_success_total{model_name="llama"}[6s]))'

        async def window_full() -> bool:
            rows = await query(prom, promql)
            return bool(rows) and float(rows[0]["value"][1]) >= 6

        await wait_for(window_full, timeout=40, what="Prometheus to fill the rate window")
        for i in range(2):
            emu.create(node(f"a100-{i}", "A100", 8))
            emu.create(node(f"a40-{i}", "A40", 8))
        emu.create(deployment("llama-a100", "A100"))
        emu.create(deployment("llama-a40", "A40"))
        source = {
            "prometheus": {
                "url": prom,
                "selector": 'model_name="llama"',
                "windowSeconds": 6,
                "stalenessSeconds": 30,
            }
        }
        emu.create(gpumix(extra={"loadSource": source}))
        solver = GreedySolver()
        async with running(api, settings(), solver=solver):
            await wait_for(
                lambda: (
                    condition(gmx_status(emu), "LoadAvailable").get("status") == "True"
                    and gmx_status(emu).get("solverStatus") == "OPTIMAL"
                ),
                timeout=20,
                what="a plan from Prometheus load",
            )
            load = gmx_status(emu)["load"]
            assert load["source"] == "prometheus"
            assert 0.6 * RATE <= load["requestsPerSecond"] <= 1.4 * RATE
            # 4 prompt x 4 generation buckets observed: <=128/<=2048 by <=64/<=512
            assert load["buckets"] == 4
            problem, solution = solver.calls[-1]
            shares = {(b.input_tokens, b.output_tokens): b.rps for b in problem.load}
            total = sum(shares.values())
            assert abs(shares[(128.0, 64.0)] / total - 0.75 * 0.5) < 0.1
            assert abs(shares[(2048.0, 512.0)] / total - 0.25 * 0.5) < 0.1
            await wait_for(
                lambda: (
                    replicas(emu, "llama-a100") == solver.calls[-1][1].replicas["A100"]
                    and replicas(emu, "llama-a40") == solver.calls[-1][1].replicas["A40"]
                ),
                what="replicas of the plan",
            )
            assert solution.replicas["A40"] >= 1
