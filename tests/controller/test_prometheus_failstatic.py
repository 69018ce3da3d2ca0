"""Fail static against a REAL Prometheus: data that vanishes or has gaps never lowers replicas.

Two in-test "pods" (two scrape targets on loopback) finish requests at a steady
rate and export vLLM's metric names; a real ``prometheus`` scrapes them every
0.5 s and the controller (mode scale, no scale-down stabilization) reads a 3 s
window.  Each scenario breaks the data in one way while the true load stays the
same, then repairs it, and asserts that no replica count was ever lowered, that
``LoadAvailable`` went False with the expected reason, and that it came back.
The counters keep counting while a target is not scraped (as vLLM's do while
only the scrape fails), so the load after repair is the load before.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from controller_helpers import (
    Completed,
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
from test_prometheus_real import free_port, prometheus_binary, query

RATE_PER_POD = 10.0
SCRAPE_S = 0.5
WINDOW_S = 3
STALENESS_S = 2


class Pod:
    """One vLLM pod's metrics; ``serving`` False: the series are not exported (counting goes on)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.registry = CollectorRegistry()
        self.prompt = Histogram(
            "vllm:request_prompt_tokens",
            "Prompt tokens of finished requests.",
            ["model_name"],
            buckets=(128, 512, 2048),
            registry=self.registry,
        )
        self.gen = Histogram(
            "vllm:request_generation_tokens",
            "Generated tokens of finished requests.",
            ["model_name"],
            buckets=(64, 128, 512),
            registry=self.registry,
        )
        self.success = Counter(
            "vllm:request_success",
            "Finished requests.",
            ["model_name", "finished_reason"],
            registry=self.registry,
        )
        self.finished = 0
        self.exporting = True
        self.failing = False
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    def finish(self, n: int) -> None:
        for i in range(n):
            k = self.finished + i
            self.prompt.labels("llama").observe(100 if k % 4 else 1000)
            self.gen.labels("llama").observe(50 if k % 2 else 300)
            self.success.labels("llama", "stop").inc()
        self.finished += n

    async def metrics(self, _: web.Request) -> web.Response:
        if self.failing:
            return web.Response(status=503, text="unavailable\n")
        body = generate_latest(self.registry) if self.exporting else b""
        return web.Response(body=body, content_type="text/plain")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
async def pods() -> AsyncIterator[list[Pod]]:
    fleet = [Pod("a"), Pod("b")]
    for p in fleet:
        await p.start()
    stop = asyncio.Event()

    async def run() -> None:
        started = time.monotonic()
        while not stop.is_set():
            due = int((time.monotonic() - started) * RATE_PER_POD)
            for p in fleet:
                if due > p.finished:
                    p.finish(due - p.finished)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.02)

    task = asyncio.create_task(run())
    yield fleet
    stop.set()
    await task
    for p in fleet:
        await p.stop()


class PrometheusProcess:
    """A real Prometheus on a fixed loopback port that can be restarted (with or without its
    data, with or without its targets)."""

    def __init__(self, tmp: Path) -> None:
        self.binary = prometheus_binary()
        self.tmp = tmp
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.data = tmp / "data"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, targets: list[str]) -> None:
        cfg = self.tmp / "prometheus.yml"
        static = f"    static_configs:\n      - targets: {targets!r}\n" if targets else ""
        cfg.write_text(
            f"global:\n  scrape_interval: {int(SCRAPE_S * 1000)}ms\n"
            f"  scrape_timeout: {int(SCRAPE_S * 1000)}ms\n"
            f"scrape_configs:\n  - job_name: vllm\n{static}"
        )
        log = (self.tmp / "prometheus.log").open("a")
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={self.data}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    async def ready(self) -> None:
        async def up() -> bool:
            return bool(await query(self.url, "up"))

        await wait_for(up, timeout=20, what="Prometheus to answer")


@contextlib.contextmanager
def prometheus(targets: list[str]) -> Iterator[PrometheusProcess]:
    with tempfile.TemporaryDirectory(prefix="gpumix-prom-") as tmp:
        prom = PrometheusProcess(Path(tmp))
        prom.start(targets)
        try:
            yield prom
        finally:
            prom.stop()


class ReplicaWatch:
    """Samples the members' replicas every 20 ms and remembers every decrease."""

    def __init__(self, emu: Any, names: list[str]) -> None:
        self.emu = emu
        self.names = names
        self.lowered: list[tuple[str, int, int]] = []
        self.reasons: set[str] = set()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = {n: replicas(self.emu, n) for n in self.names}
        while not self._stop.is_set():
            for n in self.names:
                now = replicas(self.emu, n)
                if now < last[n]:
                    self.lowered.append((n, last[n], now))
                last[n] = now
            reason = condition(gmx_status(self.emu), "LoadAvailable").get("reason")
            if reason:
                self.reasons.add(str(reason))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.02)

    def __enter__(self) -> ReplicaWatch:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task


def load_state(emu: Any) -> tuple[str | None, str | None]:
    c = condition(gmx_status(emu), "LoadAvailable")
    return c.get("status"), c.get("reason")


async def start_mix(emu: Any, prom: PrometheusProcess) -> None:
    async def window_full() -> bool:
        promql = (
            f'min(count_over_time(vllm:request_success_total{{model_name="llama"}}[{WINDOW_S}s]))'
        )
        rows = await query(prom.url, promql)
        return bool(rows) and float(rows[0]["value"][1]) >= WINDOW_S / SCRAPE_S - 1

    await prom.ready()
    await wait_for(window_full, timeout=30, what="Prometheus to fill the rate window")
    for i in range(2):
        emu.create(node(f"a100-{i}", "A100", 8))
        emu.create(node(f"a40-{i}", "A40", 8))
    emu.create(deployment("llama-a100", "A100"))
    emu.create(deployment("llama-a40", "A40"))
    source = {
        "prometheus": {
            "url": prom.url,
            "selector": 'model_name="llama"',
            "windowSeconds": WINDOW_S,
            "stalenessSeconds": STALENESS_S,
        }
    }
    emu.create(gpumix(extra={"loadSource": source, "intervalSeconds": 1}))


async def planned(emu: Any) -> None:
    """LoadAvailable=True and the plan applied and stable for two passes."""
    await wait_for(lambda: load_state(emu) == ("True", "LoadRead"), timeout=20, what="load read")
    await wait_for(
        lambda: all(
            e.get("currentReplicas") == e.get("recommendedReplicas")
            for e in gmx_status(emu).get("plan") or [{}]
        ),
        timeout=20,
        what="replicas of the plan",
    )
    await asyncio.sleep(1.0)


MEMBERS = ["llama-a100", "llama-a40"]


async def broken_then_repaired(
    emu: Any, watch: ReplicaWatch, expect: set[str], hold_s: float
) -> None:
    await wait_for(lambda: load_state(emu)[0] == "False", timeout=10, what="LoadAvailable=False")
    await asyncio.sleep(hold_s)
    assert watch.reasons & expect, watch.reasons


async def recovered(emu: Any, watch: ReplicaWatch, passes: Completed) -> None:
    await wait_for(lambda: load_state(emu) == ("True", "LoadRead"), timeout=20, what="load back")
    await passes.more(2, timeout=20, what="two passes on the repaired data")
    await watch.close()
    assert watch.lowered == [], f"replicas were lowered: {watch.lowered}"
    ups = [e for e in emu.list("events", "default") if e["reason"] == "ScaledDown"]
    assert ups == []


async def test_exporter_side_faults_never_lower_replicas(
    emu: Any, api: Any, pods: list[Pod]
) -> None:
    with prometheus([p.target for p in pods]) as prom:
        await start_mix(emu, prom)
        async with running(api, settings(), solver=GreedySolver()) as run:
            passes = Completed(run.controller, "reconcile_pass")
            await planned(emu)
            for how in ("series-vanish", "exporters-stop", "one-target-gap"):
                with ReplicaWatch(emu, MEMBERS) as watch:
                    if how == "series-vanish":  # exporters answer, without the vLLM series
                        for p in pods:
                            p.exporting = False
                    elif how == "exporters-stop":
                        for p in pods:
                            await p.stop()
                    else:  # one of two targets fails its scrapes for a while
                        pods[1].failing = True
                    await broken_then_repaired(emu, watch, {"LoadMissing"}, 1.5)
                    for p in pods:
                        p.exporting, p.failing = True, False
                        if p.runner is None:
                            await p.start()
                    await recovered(emu, watch, passes)


async def test_prometheus_restarts_never_lower_replicas(
    emu: Any, api: Any, pods: list[Pod]
) -> None:
    targets = [p.target for p in pods]
    with prometheus(targets) as prom:
        await start_mix(emu, prom)
        async with running(api, settings(), solver=GreedySolver()) as run:
            passes = Completed(run.controller, "reconcile_pass")
            await planned(emu)
            with ReplicaWatch(emu, MEMBERS) as watch:
                # down for a while, then back with its data and its targets: the window
                # has a gap, the counters kept counting
                prom.stop()
                await broken_then_repaired(emu, watch, {"LoadMissing"}, 1.0)
                prom.start(targets)
                await prom.ready()
                await recovered(emu, watch, passes)
            with ReplicaWatch(emu, MEMBERS) as watch:
                # restarted with its data but a configuration that lost the targets: the
                # old samples are there, no new ones come
                prom.stop()
                prom.start([])
                await prom.ready()
                await broken_then_repaired(emu, watch, {"LoadMissing", "LoadStale"}, 0.5)
                await wait_for(
                    lambda: load_state(emu) == ("False", "LoadStale"),
                    timeout=10,
                    what="LoadStale once every sample is older than the limit",
                )
                prom.stop()
                prom.start(targets)
                await recovered(emu, watch, passes)
            with ReplicaWatch(emu, MEMBERS) as watch:
                # restarted on a fresh volume: the window holds only the newest samples of
                # counters that are long past zero, so rate() would underestimate
                prom.stop()
                shutil.rmtree(prom.data, ignore_errors=True)
                prom.start(targets)
                await prom.ready()
                await wait_for(
                    lambda: load_state(emu) == ("False", "LoadPartial"),
                    timeout=10,
                    what="LoadPartial while the window is not covered",
                )
                await recovered(emu, watch, passes)
