"""What the HTTPS server allows a client: the in-flight body budget (429), the body,
header and idle timeouts, and the memory of a real webhook process under abusive
clients (all over real TLS on loopback)."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from abusive_clients import closed_within, request_head
from webhook_kit import (
    client_context,
    deployment,
    hpa,
    read_response,
    review_body,
    serve_app,
    snapshot,
)

from gpumix.kube.policy import Policy
from gpumix.webhook.metrics import WebhookMetrics
from gpumix.webhook.server import (
    MAX_BODY_BYTES,
    SMALL_BODY_BYTES,
    BodyBudget,
    StaticSource,
    WebhookState,
    make_server,
)
from gpumix.webhook.settings import DAY_S, MIB, ServerSettings
from gpumix.webhook.tls import CertHolder, new_bundle

REPO = Path(__file__).resolve().parents[2]


def test_budget_keeps_a_quarter_for_small_bodies() -> None:
    budget = BodyBudget(16 * MIB)
    assert budget.reserve(7 * MIB)
    assert not budget.reserve(7 * MIB)  # two large bodies would pass 12 MiB
    assert budget.reserve(5 * MIB)  # large, and fits in three quarters
    assert not budget.reserve(SMALL_BODY_BYTES + 1)
    for _ in range(4):
        assert budget.reserve(SMALL_BODY_BYTES)  # small ones may use the last quarter
    assert not budget.reserve(1)
    budget.release(7 * MIB)
    assert budget.in_flight == 9 * MIB and budget.reserve(1)


# --------------------------------------------------------------------------- in-process server


@dataclass
class Served:
    url: str
    host: str
    port: int
    tls: ssl.SSLContext
    state: WebhookState

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port, ssl=self.tls)

    def metric(self, prefix: str) -> float:
        text = self.state.metrics.render()[0].decode()
        return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(prefix))


LIMITS = ServerSettings(
    header_timeout_s=0.4, body_timeout_s=0.6, idle_timeout_s=1.2, max_body_bytes_in_flight=16 * MIB
)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    bundle = new_bundle(("127.0.0.1",), time.time(), DAY_S)
    holder = CertHolder()
    holder.load(bundle.cert_pem, bundle.key_pem)
    state = WebhookState(
        Policy(), StaticSource(snapshot(deployment("a"))), WebhookMetrics(), holder
    )
    server = make_server(state, limits=LIMITS, lingering_time=0.5)
    async with serve_app(server, holder.context) as url:
        host, port = url.split("://")[1].rsplit(":", 1)
        yield Served(url, host, int(port), client_context(bundle.ca_pem), state)


def _small_review(uid: str) -> bytes:
    data = json.dumps(review_body(deployment("d", "solo", model="solo"), uid=uid)).encode()
    return request_head(len(data)) + data


async def test_past_the_budget_a_large_body_gets_429_and_small_ones_are_served(
    served: Served,
) -> None:
    stalled = await served.connect()
    stalled[1].write(request_head(7 * MIB) + b"{")  # reserves 7 MiB, then stalls
    await stalled[1].drain()
    await asyncio.sleep(0.1)
    assert served.metric("gpumix_webhook_body_bytes_in_flight") == 7 * MIB
    started = time.monotonic()
    reader, writer = await served.connect()
    writer.write(request_head(6 * MIB) + b"{")
    await writer.drain()
    status, headers, body = await asyncio.wait_for(read_response(reader), 2)
    assert time.monotonic() - started < 0.3  # at once, not after the body timeout
    assert status == 429 and headers["retry-after"] == "1"
    assert headers["connection"] == "close" and await closed_within(reader, 1)
    out = json.loads(body)
    assert out["kind"] == "Status" and out["reason"] == "TooManyRequests"
    assert out["details"] == {"retryAfterSeconds": 1}
    writer.close()
    # an ordinary review still fits, on the last quarter of the budget
    reader, writer = await served.connect()
    writer.write(_small_review("small-1"))
    status, _, body = await asyncio.wait_for(read_response(reader), 2)
    assert status == 200 and json.loads(body)["response"]["uid"] == "small-1"
    writer.close()
    # the stalled body runs out of time: 408, and its reservation is returned
    status, headers, body = await asyncio.wait_for(read_response(stalled[0]), 2)
    assert status == 408 and json.loads(body)["reason"] == "Timeout"
    assert "not received within 0.6 s" in json.loads(body)["message"]
    stalled[1].close()
    assert served.metric("gpumix_webhook_body_bytes_in_flight") == 0
    assert served.metric('gpumix_webhook_requests_refused_total{reason="busy"}') == 1
    assert served.metric('gpumix_webhook_requests_refused_total{reason="body-timeout"}') == 1


async def test_chunked_body_reserves_the_whole_cap(served: Served) -> None:
    head = (
        b"POST /validate HTTP/1.1\r\nHost: w\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n"
    )
    _, stalled = await served.connect()
    stalled.write(head)
    await asyncio.sleep(0.1)
    assert served.metric("gpumix_webhook_body_bytes_in_flight") == MAX_BODY_BYTES
    stalled.close()


async def test_silent_and_slow_headers_are_cut_off_at_the_header_timeout(served: Served) -> None:
    silent = await served.connect()
    partial = await served.connect()
    partial[1].write(b"POST /validate HTTP/1.1\r\nHost: w\r\n")
    trickle = await served.connect()
    trickle[1].write(b"POST /validate HTTP/1.1\r\nHost: w\r\nX-Slow: ")
    started = time.monotonic()

    async def drip() -> None:  # a byte every 50 ms keeps the headers from ever ending
        for _ in range(40):
            trickle[1].write(b"a")
            await asyncio.sleep(0.05)

    dripping = asyncio.create_task(drip())
    try:
        closed = await asyncio.gather(
            *(closed_within(r, 1.5) for r, _ in (silent, partial, trickle))
        )
    finally:
        dripping.cancel()
    assert closed == [True, True, True]
    assert time.monotonic() - started < 1.2  # well before the 1.2 s idle timeout
    assert served.metric('gpumix_webhook_requests_refused_total{reason="header-timeout"}') == 3
    for _, writer in (silent, partial, trickle):
        writer.close()


async def test_kept_alive_connection_waits_the_idle_timeout_then_is_closed(
    served: Served,
) -> None:
    reader, writer = await served.connect()
    writer.write(_small_review("keep-1"))
    status, headers, _ = await asyncio.wait_for(read_response(reader), 2)
    assert status == 200 and headers.get("connection", "").lower() != "close"
    answered = time.monotonic()
    # longer than the header timeout: between requests only the idle timeout applies
    await asyncio.sleep(0.6)
    writer.write(_small_review("keep-2"))
    status, _, body = await asyncio.wait_for(read_response(reader), 2)
    assert status == 200 and json.loads(body)["response"]["uid"] == "keep-2"
    answered = time.monotonic()
    assert await closed_within(reader, 3)
    assert 1.0 < time.monotonic() - answered < 2.5
    writer.close()


async def test_header_deadline_starts_at_the_first_byte_of_a_further_request(
    served: Served,
) -> None:
    reader, writer = await served.connect()
    writer.write(_small_review("first"))
    await asyncio.wait_for(read_response(reader), 2)
    await asyncio.sleep(0.3)
    writer.write(b"POST /validate HTTP/1.1\r\n")  # then nothing more
    started = time.monotonic()
    assert await closed_within(reader, 2)
    assert 0.3 < time.monotonic() - started < 0.9  # the header timeout, not the idle one
    writer.close()


async def test_connections_past_the_limit_are_closed_at_once() -> None:
    bundle = new_bundle(("127.0.0.1",), time.time(), DAY_S)
    holder = CertHolder()
    holder.load(bundle.cert_pem, bundle.key_pem)
    state = WebhookState(Policy(), StaticSource(), WebhookMetrics(), holder)
    limits = ServerSettings(max_connections=3)
    async with serve_app(make_server(state, limits=limits), holder.context) as url:
        host, port = url.split("://")[1].rsplit(":", 1)
        tls = client_context(bundle.ca_pem)
        held = [await asyncio.open_connection(host, int(port), ssl=tls) for _ in range(3)]
        extra = await asyncio.open_connection(host, int(port), ssl=tls)
        assert await closed_within(extra[0], 1)
        for reader, _ in held:
            assert not await closed_within(reader, 0.05)
        held[0][1].close()
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection(host, int(port), ssl=tls)
        writer.write(_small_review("room"))
        status, _, body = await asyncio.wait_for(read_response(reader), 2)
        assert status == 200 and json.loads(body)["response"]["uid"] == "room"
        for _, w in [*held[1:], (reader, writer), extra]:
            w.close()
    text = state.metrics.render()[0].decode()
    assert 'gpumix_webhook_requests_refused_total{reason="too-many-connections"} 1.0' in text


# --------------------------------------------------------------------------- a real process


def _memory_limit_bytes() -> int:
    """The webhook container's memory limit in the shipped manifests."""
    text = (REPO / "manifests/base/webhook.yaml").read_text()
    limit = re.search(r"limits:\s*\n\s*cpu: \S+\s*\n\s*memory: (\d+)Mi", text)
    assert limit, "no memory limit in manifests/base/webhook.yaml"
    return int(limit.group(1)) * MIB


def _rss_peak(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert found
    return int(found.group(1)) * 1024


async def _normal_client(url: str, tls: ssl.SSLContext, deadline: float) -> list[tuple[int, float]]:
    """One review every 50 ms on a kept-alive connection: (status, seconds) each."""
    results: list[tuple[int, float]] = []
    body = review_body(hpa("h", "d"), uid="normal")
    connector = aiohttp.TCPConnector(ssl=tls, limit=1)
    async with aiohttp.ClientSession(connector=connector) as http:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            body["request"]["uid"] = f"normal-{n}"
            started = time.monotonic()
            try:
                async with http.post(url + "/mutate", json=body) as resp:
                    out = await resp.json()
                    ok = resp.status == 200 and out["response"]["uid"] == f"normal-{n}"
                    results.append((resp.status if ok else -1, time.monotonic() - started))
            except aiohttp.ClientError:
                results.append((0, time.monotonic() - started))
            await asyncio.sleep(0.05)
    return results


BIG_CLIENTS = 80  # 80 x 6.75 MiB held at once would be 540 MiB of bodies
SLOWLORIS = 200
IDLE = 200
NO_HANDSHAKE = 100
ABUSE_S = 8.0


async def run_abuse(tmp_path: Path, *flags: str) -> dict[str, Any]:
    """Start ``gpumix webhook --state`` with ``flags``; run the abusive clients (their own
    process, ``abusive_clients.py``) and an ordinary one against it for ``ABUSE_S``
    seconds.  What each saw, the server's log and its peak resident size."""
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [deployment("d")]}))
    ca = tmp_path / "ca.pem"
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "gpumix", "webhook", "--state", str(state)),
        *("--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"),
        *("--extra-san", "127.0.0.1", "--write-ca", str(ca)),
        *("--header-timeout", "2", "--body-timeout", "3", "--idle-timeout", "3"),
        *flags,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    abusers = None
    try:
        lines: list[str] = []
        ports = None
        while ports is None:
            line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
            assert line, "".join(lines)
            lines.append(line)
            ports = re.search(r"serving HTTPS on [\d.]+:(\d+), probes on port (\d+)", line)
        port = int(ports.group(1))
        drain = asyncio.create_task(proc.stderr.read())  # keep the pipe from filling up
        abusers = await asyncio.create_subprocess_exec(
            *(sys.executable, str(Path(__file__).with_name("abusive_clients.py"))),
            *("127.0.0.1", str(port), str(ca), str(ABUSE_S)),
            *(str(BIG_CLIENTS), str(SLOWLORIS), str(IDLE), str(NO_HANDSHAKE)),
            stdout=asyncio.subprocess.PIPE,
        )
        await asyncio.sleep(0.5)  # the abusers are connecting
        tls = client_context(ca.read_bytes())
        deadline = time.monotonic() + ABUSE_S - 0.5
        normal = await _normal_client(f"https://127.0.0.1:{port}", tls, deadline)
        out, _ = await asyncio.wait_for(abusers.communicate(), 60)
        assert abusers.returncode == 0
        peak = _rss_peak(proc.pid)
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{ports.group(2)}/metrics") as resp,
        ):
            metrics = await resp.text()
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
        return {
            **json.loads(out),
            "normal": normal,
            "peak": peak,
            "metrics": metrics,
            "log": (await drain).decode() + "".join(lines),
        }
    finally:
        for child in (abusers, proc):
            if child is not None and child.returncode is None:
                child.kill()
                await child.wait()


@pytest.mark.timeout(120)
async def test_memory_stays_under_the_limit_while_abusive_clients_run(tmp_path: Path) -> None:
    """80 clients declaring 7 MiB bodies, sending 6.75 MiB and stalling (again and again),
    200 slowloris, 200 idle connections and 100 that never start TLS, for 8 s against
    ``gpumix webhook`` with the shipped limits (timeouts shortened so that the test takes
    seconds); an ordinary client meanwhile sends a review every 50 ms.  The process
    stays under the shipped memory limit, the ordinary client is served throughout, and
    every idle, slow and handshake-less connection is closed by the server."""
    seen = await run_abuse(tmp_path)
    peak = seen["peak"]
    assert peak < _memory_limit_bytes(), f"peak RSS {peak / MIB:.0f} MiB"
    normal = seen["normal"]
    assert len(normal) >= 40
    assert all(status == 200 for status, _ in normal), normal
    latencies = sorted(s for _, s in normal)
    # half the 5 s timeoutSeconds of the shipped webhook configurations, the threshold of
    # the GPUMixWebhookSlow alert
    assert latencies[len(latencies) // 2] < 0.1 and latencies[-1] < 2.5, latencies
    # closed by the server (-1: never), after the 2 s header timeout (the clients' own
    # clocks run late: their event loop is busy with the large bodies' encryption)
    assert all(2.0 <= s < ABUSE_S for s in seen["idle"]), seen["idle"]
    assert all(2.0 <= s < ABUSE_S for s in seen["slowloris"]), seen["slowloris"]
    # connections that never start TLS: closed at the handshake timeout (the header one)
    assert all(2.0 <= s < ABUSE_S for s in seen["no_handshake"]), seen["no_handshake"]
    refused = {
        reason: float(count)
        for reason, count in re.findall(
            r'gpumix_webhook_requests_refused_total\{reason="([a-z-]+)"\} (\S+)', seen["metrics"]
        )
    }
    assert refused["busy"] > 0 and refused["body-timeout"] > 0, refused
    assert refused["header-timeout"] >= IDLE + SLOWLORIS, refused
    assert "Traceback" not in seen["log"] and " ERROR " not in seen["log"]
