"""Load sources: the 2-D estimate, and fail-static classification against a fake Prometheus API."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
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

from gpumix.controller.load import (
    PrometheusClient,
    joint_estimate,
    marginal,
    prometheus_load,
    window_problem,
)
from gpumix.controller.plan import LoadObservation, LoadUnavailable
from gpumix.controller.spec import PrometheusLoad


def test_marginal_and_joint_estimate() -> None:
    prompt = {128.0: 2.0, 512.0: 6.0, math.inf: 8.0}  # cumulative rates
    gen = {64.0: 4.0, math.inf: 8.0}
    assert marginal(prompt) == {128.0: 0.25, 512.0: 0.5, math.inf: 0.25}
    buckets = joint_estimate(10.0, prompt, gen)
    assert len(buckets) == 6
    assert math.isclose(sum(b.rps for b in buckets), 10.0)
    cell = {(b.input_tokens, b.output_tokens): b.rps for b in buckets}
    assert math.isclose(cell[(512.0, 64.0)], 10.0 * 0.5 * 0.5)
    assert joint_estimate(0.0, prompt, gen) == ()
    assert marginal({math.inf: 0.0}) == {}


class FakePrometheus:
    """Answers the controller's instant queries from settable values."""

    def __init__(self) -> None:
        self.newest: float | None = None  # None: a sample every second up to the query time
        self.scrape = 1.0
        self.rate = 10.0
        self.prompt: dict[str, float] | None = {"512": 10.0, "+Inf": 10.0}
        self.gen: dict[str, float] | None = {"128": 10.0, "+Inf": 10.0}
        self.queries: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        q = request.query["query"]
        self.queries.append(q)
        t = float(request.query["time"])
        newest = t if self.newest is None else self.newest
        result: list[dict[str, Any]] = []
        if q.startswith("timestamp("):
            result = [{"metric": {"pod": "a"}, "value": [t, str(newest)]}]
        elif q.endswith("s]"):  # the counter's raw samples in the window
            w = float(q.rsplit("[", 1)[1][:-2])
            points = []
            k = math.floor(newest)
            while k > t - w and k <= t:
                points.append([k, str(self.rate * k)])
                k -= self.scrape
            values = sorted(points)
            result = [{"metric": {"pod": "a"}, "values": values}] if values else []
            body = {"status": "success", "data": {"resultType": "matrix", "result": result}}
            return web.json_response(body)
        elif "prompt_tokens_bucket" in q and self.prompt is not None:
            result = [{"metric": {"le": k}, "value": [t, str(v)]} for k, v in self.prompt.items()]
        elif "generation_tokens_bucket" in q and self.gen is not None:
            result = [{"metric": {"le": k}, "value": [t, str(v)]} for k, v in self.gen.items()]
        elif "request_success_total" in q:
            result = [{"metric": {}, "value": [t, str(self.rate)]}]
        body = {"status": "success", "data": {"resultType": "vector", "result": result}}
        return web.json_response(body)


@pytest.fixture
async def fake_prom() -> AsyncIterator[tuple[FakePrometheus, str]]:
    fake = FakePrometheus()
    app = web.Application()
    app.router.add_get("/api/v1/query", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield fake, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def _series(start: float, end: float, step: float, rate: float, base: float = 1e4) -> Any:
    out = []
    t = start
    while t <= end:
        out.append((t, base + rate * (t - start)))
        t += step
    return out


def test_window_problem_fresh_covered_series_pass() -> None:
    now = 1000.0
    a = (("pod", "a"),)
    b = (("pod", "b"),)
    series = {a: _series(941.0, 999.0, 2.0, 5.0), b: _series(941.5, 999.5, 2.0, 3.0)}
    live = {a: 999.0, b: 999.5}
    assert window_problem(series, live, now, 999.5, 60, 20, "m") is None


def test_window_problem_vanished_series_is_missing_not_zero() -> None:
    now = 1000.0
    a = (("pod", "a"),)
    b = (("pod", "b"),)
    # b stopped 10 s ago (Prometheus wrote its staleness marker: not live any more)
    series = {a: _series(941.0, 999.0, 2.0, 5.0), b: _series(941.0, 990.0, 2.0, 5.0)}
    gone = window_problem(series, {a: 999.0}, now, 999.0, 60, 20, "m")
    assert isinstance(gone, LoadUnavailable) and gone.problem == "missing"
    assert 'pod="b"' in gone.reason
    # no staleness marker (Prometheus restarted without the target): the age tells
    gone = window_problem(series, {a: 999.0, b: 990.0}, now, 999.0, 60, 20, "m")
    assert isinstance(gone, LoadUnavailable) and gone.problem == "missing"
    # every series old: stale
    old = {a: _series(900.0, 970.0, 2.0, 5.0)}
    stale = window_problem(old, {a: 970.0}, now, 970.0, 120, 20, "m")
    assert isinstance(stale, LoadUnavailable) and stale.problem == "stale"
    assert window_problem({}, {}, now, 999.0, 60, 20, "m") == LoadUnavailable(
        "missing", "no series of m in Prometheus"
    )


def test_window_problem_uncovered_window_is_partial() -> None:
    now = 1000.0
    a = (("pod", "a"),)
    # Prometheus lost the first half of the window: the counter was already high
    lost = {a: _series(971.0, 999.0, 2.0, 5.0, base=1e4)}
    partial = window_problem(lost, {a: 999.0}, now, 999.0, 60, 20, "m")
    assert isinstance(partial, LoadUnavailable) and partial.problem == "partial"
    # a new Pod: its counter started at zero inside the window, rate() sees all of it
    born = {a: _series(971.0, 999.0, 2.0, 5.0, base=3.0)}
    assert window_problem(born, {a: 999.0}, now, 999.0, 60, 20, "m") is None
    # a gap in the middle of the window does not change a counter's increase
    gap = {a: _series(941.0, 960.0, 2.0, 5.0) + _series(985.0, 999.0, 2.0, 5.0, base=1e4 + 220)}
    assert window_problem(gap, {a: 999.0}, now, 999.0, 60, 20, "m") is None
    # one sample only: rate() would not count the series
    one = {a: [(999.0, 5.0)], (("pod", "b"),): _series(941.0, 999.0, 2.0, 5.0)}
    thin = window_problem(one, {a: 999.0, (("pod", "b"),): 999.0}, now, 999.0, 60, 20, "m")
    assert isinstance(thin, LoadUnavailable) and thin.problem == "partial"


async def test_prometheus_classification(fake_prom: tuple[FakePrometheus, str]) -> None:
    fake, url = fake_prom
    source = PrometheusLoad(url=url, selector='model_name="llama"', staleness_seconds=60)
    async with aiohttp.ClientSession() as session:
        client = PrometheusClient(session, url, 5.0)
        now = time.time()
        ok = await prometheus_load(client, source, now)
        assert isinstance(ok, LoadObservation)
        assert [(b.input_tokens, b.output_tokens, b.rps) for b in ok.buckets] == [
            (512.0, 128.0, 10.0)
        ]
        assert any('model_name="llama"' in q for q in fake.queries)
        fake.newest = now - 600
        stale = await prometheus_load(client, source, now)
        assert isinstance(stale, LoadUnavailable) and stale.problem == "stale"
        fake.newest = now
        fake.gen = None
        partial = await prometheus_load(client, source, now)
        assert isinstance(partial, LoadUnavailable) and partial.problem == "partial"
        down = PrometheusClient(session, "http://127.0.0.1:9", 1.0)
        missing = await prometheus_load(down, source, now)
        assert isinstance(missing, LoadUnavailable) and missing.problem == "missing"


async def test_stale_load_keeps_replicas(
    emu: Any, api: Any, fake_prom: tuple[FakePrometheus, str]
) -> None:
    fake, url = fake_prom
    for i in range(2):
        emu.create(node(f"a100-{i}", "A100", 8))
        emu.create(node(f"a40-{i}", "A40", 8))
    emu.create(deployment("llama-a100", "A100", replicas=3))
    emu.create(deployment("llama-a40", "A40", replicas=4))
    prom = {"prometheus": {"url": url, "stalenessSeconds": 60, "windowSeconds": 60}}
    emu.create(gpumix(extra={"loadSource": prom, "intervalSeconds": 1}))
    fake.newest = time.time() - 3600
    async with running(api, settings(), solver=GreedySolver()) as run:
        registry = run.controller.metrics.registry

        def held(reason: str) -> float | None:
            labels = {"namespace": "default", "gpumix": "llama", "reason": reason}
            return registry.get_sample_value("gpumix_fail_static", labels)

        await wait_for(
            lambda: condition(gmx_status(emu), "LoadAvailable").get("reason") == "LoadStale",
            what="LoadStale",
        )
        assert (replicas(emu, "llama-a100"), replicas(emu, "llama-a40")) == (3, 4)
        await wait_for(lambda: held("LoadStale") == 1.0, what="gpumix_fail_static LoadStale 1")
        assert condition(gmx_status(emu), "Scaling")["reason"] == "LoadUnavailable"
        await wait_for(
            lambda: any(e["reason"] == "LoadStale" for e in emu.list("events", "default")),
            what="a LoadStale Event",
        )
        # fresh data again: the plan applies (10 req/s of small requests: 2 A40, 0 A100)
        fake.newest = None
        await wait_for(
            lambda: replicas(emu, "llama-a40") == 2, timeout=10, what="plan on fresh load"
        )
        await wait_for(lambda: held("LoadStale") == 0.0, what="gpumix_fail_static back to 0")
        # the status of the plan is written after its scale writes
        await wait_for(lambda: "solverStatus" in gmx_status(emu), what="the plan's status")
        solver = {"namespace": "default", "gpumix": "llama"}
        # (the test's greedy solver reports no single-type cost: no series then)
        assert registry.get_sample_value("gpumix_best_single_type_cost_per_hour", solver) == (
            gmx_status(emu).get("bestSingleTypeCostPerHour")
        )
        status = gmx_status(emu)["solverStatus"]
        assert registry.get_sample_value("gpumix_solver_status", {**solver, "status": status}) == 1
        # the scrape target disappears: missing data, replicas stay where they are
        fake.prompt = fake.gen = None
        fake.newest = time.time() - 3600
        await wait_for(
            lambda: condition(gmx_status(emu), "LoadAvailable").get("status") == "False",
            what="LoadAvailable=False",
        )
        assert replicas(emu, "llama-a40") == 2


async def test_status_after_an_outage_has_no_stale_fields_and_is_not_rewritten(
    emu: Any, api: Any, fake_prom: tuple[FakePrometheus, str]
) -> None:
    fake, url = fake_prom
    emu.create(node("a40-0", "A40", 8))
    emu.create(node("a100-0", "A100", 8))
    emu.create(deployment("llama-a100", "A100", replicas=1))
    emu.create(deployment("llama-a40", "A40", replicas=1))
    prom = {"prometheus": {"url": url, "stalenessSeconds": 60, "windowSeconds": 60}}
    emu.create(gpumix(extra={"loadSource": prom, "intervalSeconds": 1}))
    async with running(api, settings(), solver=GreedySolver()) as run:
        await wait_for(lambda: replicas(emu, "llama-a40") == 2, what="the first plan")
        fake.newest = time.time() - 3600  # outage: stale
        await wait_for(
            lambda: "reason" in gmx_status(emu).get("load", {}), what="the load's reason"
        )
        fake.newest = None  # recovery
        await wait_for(
            lambda: condition(gmx_status(emu), "LoadAvailable").get("status") == "True",
            what="load back",
        )
        load = gmx_status(emu)["load"]
        assert "reason" not in load and load["requestsPerSecond"] == 10.0
        await wait_for(
            lambda: "LoadAvailable" in {e["reason"] for e in emu.list("events", "default")},
            what="the LoadAvailable Event",
        )
        # passes that find nothing new write no status
        patches = run.controller.kube.calls["patch"]
        passes = run.controller.passes
        await wait_for(lambda: run.controller.passes >= passes + 3, what="three more passes")
        assert run.controller.kube.calls["patch"] == patches
        events = [e["reason"] for e in emu.list("events", "default")]
        assert events.count("LoadStale") == 1 and events.count("LoadAvailable") == 1
