"""Certificates: creation, checks, file reload, rotation under load, bootstrap races."""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import uvloop
from cryptography import x509
from webhook_kit import deployment, review_body, serve_app, webhook_configuration

from gpumix.emulator import Emulator
from gpumix.kube.policy import Policy
from gpumix.kubeio.client import KubeClient
from gpumix.webhook.metrics import WebhookMetrics
from gpumix.webhook.server import StaticSource, WebhookState, make_server
from gpumix.webhook.settings import DAY_S, TLSSettings
from gpumix.webhook.tls import (
    BootstrapCerts,
    CertBundle,
    CertError,
    CertHolder,
    EphemeralCerts,
    FileCerts,
    cert_names,
    new_bundle,
    problems,
    rotation_due,
    server_context,
)

NOW = 1_800_000_000.0
NAMES = ("gpumix-webhook.gpumix-system.svc", "127.0.0.1")


class FakeClock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def no_sleep(_: float) -> None:
    await asyncio.sleep(0)


# --------------------------------------------------------------------------- pure parts


def test_new_bundle_covers_names_and_verifies() -> None:
    bundle = new_bundle(NAMES, NOW, DAY_S)
    assert problems(bundle, NAMES, NOW + 60) == []
    assert cert_names(bundle.cert) == set(NAMES)
    assert bundle.cert.not_valid_after_utc.timestamp() == pytest.approx(NOW + DAY_S)


def test_problems_name_what_is_wrong() -> None:
    a, b = new_bundle(NAMES, NOW, DAY_S), new_bundle(NAMES, NOW, DAY_S)
    assert any("does not cover other.svc" in p for p in problems(a, ("other.svc",), NOW))
    assert any("not valid now" in p for p in problems(a, NAMES, NOW + 2 * DAY_S))
    mixed_key = CertBundle(a.cert_pem, b.key_pem, a.ca_pem)
    assert any("key does not belong" in p for p in problems(mixed_key, NAMES, NOW))
    wrong_ca = CertBundle(a.cert_pem, a.key_pem, b.ca_pem)
    assert any("not signed by a CA" in p for p in problems(wrong_ca, NAMES, NOW))
    assert problems(CertBundle(b"x", b"y", b""), NAMES, NOW)[0].startswith("certificate or key")


def test_rotation_due_at_two_thirds() -> None:
    cert = new_bundle(NAMES, NOW, 3 * DAY_S).cert
    assert not rotation_due(cert, NOW + 1.9 * DAY_S, 2 / 3)
    assert rotation_due(cert, NOW + 2.1 * DAY_S, 2 / 3)


def test_rotated_bundle_keeps_previous_valid_ca() -> None:
    first = new_bundle(NAMES, NOW, DAY_S)
    second = new_bundle(NAMES, NOW + 0.7 * DAY_S, DAY_S, first.ca_pem)
    assert second.ca_pem.count(b"BEGIN CERTIFICATE") == 2
    assert second.ca_pem.endswith(first.ca_pem)
    third = new_bundle(NAMES, NOW + 1.5 * DAY_S, DAY_S, second.ca_pem)  # first CA expired
    assert third.ca_pem.count(b"BEGIN CERTIFICATE") == 2 and first.ca_pem not in third.ca_pem


def test_server_context_is_tls12_minimum() -> None:
    holder = CertHolder()
    assert holder.context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert not holder.loaded


def test_tls12_suites_are_ecdhe_with_aead_only() -> None:
    suites = server_context().get_ciphers()
    tls12 = [c["name"] for c in suites if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(c["aead"] for c in suites)
    assert all(n.startswith("ECDHE-") and ("GCM" in n or "CHACHA20" in n) for n in tls12)


async def _handshake(port: int, client: ssl.SSLContext) -> tuple[str, str, int]:
    """(TLS version, suite, serial of the certificate presented) of one handshake."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
    try:
        sslobj = writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True)
        serial = x509.load_der_x509_certificate(der).serial_number
        return sslobj.version(), sslobj.cipher()[0], serial
    finally:
        writer.close()


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
def test_modern_tls_profile_on_the_wire(event_loop: str) -> None:
    """TLS 1.3 and TLS 1.2 with AEAD suites are served; a TLS 1.2 client offering only
    CBC suites is refused (on both event loops the server runs on)."""

    async def main() -> None:
        bundle = new_bundle(("127.0.0.1",), time.time(), DAY_S)
        holder = CertHolder()
        holder.load(bundle.cert_pem, bundle.key_pem)
        state = WebhookState(Policy(), StaticSource(), WebhookMetrics(), holder)
        async with serve_app(make_server(state, lingering_time=0.5), holder.context) as url:
            port = int(url.rsplit(":", 1)[1])

            def client(maximum: ssl.TLSVersion, ciphers: str | None = None) -> ssl.SSLContext:
                ctx = ssl.create_default_context(cadata=bundle.ca_pem.decode())
                ctx.maximum_version = maximum
                if ciphers:
                    ctx.set_ciphers(ciphers)
                return ctx

            version, suite, serial = await _handshake(port, client(ssl.TLSVersion.TLSv1_3))
            assert version == "TLSv1.3" and serial == bundle.cert.serial_number
            version, suite, _ = await _handshake(port, client(ssl.TLSVersion.TLSv1_2))
            assert version == "TLSv1.2" and suite == "ECDHE-ECDSA-AES256-GCM-SHA384"
            cbc = "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA"
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await _handshake(port, client(ssl.TLSVersion.TLSv1_2, cbc))

    factory = uvloop.new_event_loop if event_loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


async def test_a_pair_that_does_not_match_leaves_the_served_certificate_alone() -> None:
    first = new_bundle(("127.0.0.1",), time.time(), DAY_S)
    second = new_bundle(("127.0.0.1",), time.time(), DAY_S)
    holder = CertHolder()
    holder.load(first.cert_pem, first.key_pem)
    state = WebhookState(Policy(), StaticSource(), WebhookMetrics(), holder)
    client = ssl.create_default_context(cadata=(first.ca_pem + second.ca_pem).decode())
    async with serve_app(make_server(state, lingering_time=0.5), holder.context) as url:
        port = int(url.rsplit(":", 1)[1])
        for cert, key in ((second.cert_pem, first.key_pem), (first.cert_pem, second.key_pem)):
            with pytest.raises(CertError, match="do not load"):
                holder.load(cert, key)
            assert (await _handshake(port, client))[2] == first.cert.serial_number
            assert holder.cert_pem == first.cert_pem
        assert holder.load(second.cert_pem, second.key_pem)
        assert (await _handshake(port, client))[2] == second.cert.serial_number


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_tls11_client_is_refused() -> None:
    bundle = new_bundle(("127.0.0.1",), time.time(), DAY_S)
    holder = CertHolder()
    holder.load(bundle.cert_pem, bundle.key_pem)
    state = WebhookState(Policy(), StaticSource(), WebhookMetrics(), holder)
    async with serve_app(make_server(state, lingering_time=0.5), holder.context) as url:
        port = int(url.rsplit(":", 1)[1])
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(cadata=bundle.ca_pem.decode())
        # OpenSSL's default security level refuses to offer TLS 1.1 at all; level 0 lets
        # this client offer it, so the refusal tested is the server's.
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
        old.minimum_version = ssl.TLSVersion.TLSv1_1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=old)
            writer.close()


# --------------------------------------------------------------------------- files


def _write(tmp: Path, bundle: CertBundle) -> TLSSettings:
    (tmp / "tls.crt").write_bytes(bundle.cert_pem)
    (tmp / "tls.key").write_bytes(bundle.key_pem)
    return TLSSettings(cert_file=str(tmp / "tls.crt"), key_file=str(tmp / "tls.key"))


async def test_file_certs_reload_when_files_change(tmp_path: Path) -> None:
    metrics = WebhookMetrics()
    holder = CertHolder(metrics)
    settings = _write(tmp_path, new_bundle(NAMES, NOW, DAY_S))
    certs = FileCerts(settings, holder, FakeClock(NOW + 10), no_sleep)
    assert await certs.refresh_safely()
    first = holder.cert_pem
    assert metrics.cert_expiry._value.get() == pytest.approx(NOW + DAY_S)
    assert await certs.refresh_safely() and holder.cert_pem is first  # unchanged: no reload
    _write(tmp_path, new_bundle(NAMES, NOW + 100, 2 * DAY_S))
    assert await certs.refresh_safely()
    assert holder.cert_pem != first
    assert metrics.cert_expiry._value.get() == pytest.approx(NOW + 100 + 2 * DAY_S)


async def test_file_certs_bad_files_keep_the_old_certificate(tmp_path: Path) -> None:
    holder = CertHolder()
    settings = _write(tmp_path, new_bundle(NAMES, NOW, DAY_S))
    certs = FileCerts(settings, holder, FakeClock(NOW), no_sleep)
    assert await certs.refresh_safely()
    loaded = holder.cert_pem
    other = new_bundle(NAMES, NOW, DAY_S)
    (tmp_path / "tls.key").write_bytes(other.key_pem)
    (tmp_path / "tls.crt").write_bytes(b"garbage")
    assert not await certs.refresh_safely()
    assert "not a PEM certificate" in certs.last_error and holder.cert_pem == loaded
    (tmp_path / "tls.crt").write_bytes(new_bundle(NAMES, NOW, DAY_S).cert_pem)  # key mismatch
    assert not await certs.refresh_safely()
    assert "do not load" in certs.last_error and holder.cert_pem == loaded
    missing = FileCerts(
        TLSSettings(cert_file=str(tmp_path / "nope"), key_file=str(tmp_path / "nope")),
        CertHolder(),
        FakeClock(NOW),
        no_sleep,
    )
    with pytest.raises(CertError, match="cannot read"):
        await missing.refresh()


async def test_ephemeral_certs_rotate_on_the_injected_clock() -> None:
    clock = FakeClock()
    holder = CertHolder()
    certs = EphemeralCerts(TLSSettings(lifetime_s=3 * DAY_S), holder, clock, no_sleep)
    await certs.refresh()
    first = holder.cert_pem
    clock.t += DAY_S
    await certs.refresh()
    assert holder.cert_pem == first
    clock.t += 1.1 * DAY_S
    await certs.refresh()
    assert holder.cert_pem != first
    assert certs.bundle is not None and certs.bundle.ca_pem.count(b"BEGIN CERTIFICATE") == 2


# --------------------------------------------------------------------------- rotation under load


async def test_rotation_under_concurrent_requests_loses_nothing() -> None:
    now = time.time()
    bundle = new_bundle(("127.0.0.1",), now, DAY_S)
    holder = CertHolder()
    holder.load(bundle.cert_pem, bundle.key_pem)
    client_ctx = ssl.create_default_context(cadata=bundle.ca_pem.decode())
    state = WebhookState(Policy(), StaticSource(), WebhookMetrics(), holder)
    results: list[tuple[int, str, str]] = []
    stop = asyncio.Event()

    async def worker(i: int, keep_alive: bool) -> None:
        connector = aiohttp.TCPConnector(ssl=client_ctx, force_close=not keep_alive, limit=1)
        async with aiohttp.ClientSession(connector=connector) as http:
            for n in range(400):  # bounded; ends early once rotation is over
                if stop.is_set() and n >= 5:
                    return
                uid = f"w{i}-{n}"
                async with http.post(
                    url + "/validate", json=review_body(deployment(f"d{i}"), uid=uid)
                ) as resp:
                    body = await resp.json()
                    results.append((resp.status, uid, body["response"]["uid"]))

    async with serve_app(make_server(state, lingering_time=0.5), holder.context) as url:
        workers = [asyncio.create_task(worker(i, i % 2 == 0)) for i in range(16)]
        serials = {bundle.cert.serial_number}
        for _ in range(5):
            await asyncio.sleep(0.05)
            nxt = new_bundle(("127.0.0.1",), time.time(), DAY_S)
            client_ctx.load_verify_locations(cadata=nxt.ca_pem.decode())  # caBundle first
            assert holder.load(nxt.cert_pem, nxt.key_pem)
            serials.add(nxt.cert.serial_number)
        await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*workers), 60)
        # a new connection trusting only the last CA gets the last certificate
        only_last = ssl.create_default_context(cadata=nxt.ca_pem.decode())
        port = int(url.rsplit(":", 1)[1])
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=only_last)
        writer.close()
    assert len(serials) == 6
    assert len(results) >= 16 * 5
    assert all(status == 200 and sent == got for status, sent, got in results)


async def test_cert_replaced_long_before_its_key_under_load_fails_no_handshake(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The certificate file is replaced, its key only 2.5 s later: 25 reload attempts at
    the 0.1 s check interval, and past the 1 s failure grace.  (In a cluster the interval
    is 60 s and the grace 300 s; what happens on each attempt is the same, only the
    count of attempts in the gap differs, and here it is larger.)  Meanwhile clients
    open a new connection for every request: none fails, the old certificate is served
    until the pair matches, then the new one; the failing reload shows in the metrics,
    the log and, after the grace, in /readyz."""
    first = new_bundle(("127.0.0.1",), time.time(), DAY_S)
    second = new_bundle(("127.0.0.1",), time.time(), DAY_S)
    files = _write(tmp_path, first)
    settings = TLSSettings(
        cert_file=files.cert_file,
        key_file=files.key_file,
        check_interval_s=0.1,
        reload_failure_grace_s=1.0,
    )
    metrics = WebhookMetrics()
    holder = CertHolder(metrics)
    certs = FileCerts(settings, holder, time.time)
    await certs.start()
    state = WebhookState(Policy(), StaticSource(), metrics, certs)
    client = ssl.create_default_context(cadata=(first.ca_pem + second.ca_pem).decode())
    failures: list[str] = []
    serials: list[int] = []
    answered = 0
    stop = asyncio.Event()

    async def requests(i: int) -> None:
        nonlocal answered
        connector = aiohttp.TCPConnector(ssl=client, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:
            for n in range(2000):  # bounded; ends when told
                if stop.is_set():
                    return
                body = review_body(deployment(f"d{i}"), uid=f"r{i}-{n}")
                try:
                    async with http.post(url + "/validate", json=body) as resp:
                        out = await resp.json()
                        assert resp.status == 200 and out["response"]["uid"] == f"r{i}-{n}"
                        answered += 1
                except (aiohttp.ClientError, ssl.SSLError, AssertionError) as exc:
                    failures.append(repr(exc))

    async def handshakes() -> None:
        for _ in range(5000):
            if stop.is_set():
                return
            try:
                serials.append((await _handshake(port, client))[2])
            except (ssl.SSLError, ConnectionError) as exc:
                failures.append(repr(exc))
            await asyncio.sleep(0.01)

    async def readyz() -> tuple[int, str]:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client)) as http,
            http.get(url + "/readyz") as resp,
        ):
            return resp.status, await resp.text()

    def gauge(name: str) -> float:
        text = metrics.render()[0].decode()
        line = next(x for x in text.splitlines() if x.startswith(name + " "))
        return float(line.split()[1])

    try:
        async with serve_app(make_server(state, lingering_time=0.5), holder.context) as url:
            port = int(url.rsplit(":", 1)[1])
            load = [asyncio.create_task(requests(i)) for i in range(4)]
            load.append(asyncio.create_task(handshakes()))
            await asyncio.sleep(0.3)
            (tmp_path / "tls.crt").write_bytes(second.cert_pem)  # the key follows later
            await asyncio.sleep(0.5)
            assert await readyz() == (200, "ok\n")  # within the grace
            await asyncio.sleep(2.0)
            status, text = await readyz()
            assert status == 503 and "has not loaded" in text and "do not load" in text
            assert gauge("gpumix_webhook_cert_reload_failures_total") >= 15
            assert gauge("gpumix_webhook_cert_reload_failing") == 1
            assert serials and set(serials) == {first.cert.serial_number}
            (tmp_path / "tls.key").write_bytes(second.key_pem)
            for _ in range(100):
                if serials[-1] == second.cert.serial_number:
                    break
                await asyncio.sleep(0.05)
            assert await readyz() == (200, "ok\n")
            assert gauge("gpumix_webhook_cert_reload_failing") == 0
            await asyncio.sleep(0.2)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*load), 30)
    finally:
        await certs.stop()
    assert failures == []
    assert answered >= 40
    switched = serials.index(second.cert.serial_number)
    assert set(serials[:switched]) == {first.cert.serial_number}
    assert set(serials[switched:]) == {second.cert.serial_number}
    assert any("not reloaded (the previous one in use)" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- bootstrap (emulator)


WEBHOOK_CONFIGS = ("mutatingwebhookconfigurations", "validatingwebhookconfigurations")


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    emulator = Emulator(bookmark_interval_s=0.2)
    emulator.create(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gpumix-system"}}
    )
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        emulator.create(webhook_configuration(kind))
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.stop()


def secret_bundle(emu: Emulator) -> CertBundle:
    secret = emu.get("secrets", "gpumix-webhook-tls", "gpumix-system")
    assert secret is not None
    data = secret["data"]
    return CertBundle(*(base64.b64decode(data[k]) for k in ("tls.crt", "tls.key", "ca.crt")))


def ca_bundles(emu: Emulator) -> set[bytes]:
    out = set()
    for plural in WEBHOOK_CONFIGS:
        config = emu.get(plural, "gpumix")
        assert config is not None
        for hook in config["webhooks"]:
            out.add(base64.b64decode(hook["clientConfig"]["caBundle"]))
    return out


async def test_two_bootstraps_racing_agree_on_one_secret(emu: Emulator) -> None:
    clock = FakeClock(time.time())
    settings = TLSSettings(extra_sans=("127.0.0.1",), lifetime_s=3 * DAY_S)
    clients = [await KubeClient.connect(str(emu.kubeconfig())) for _ in range(2)]
    holders = [CertHolder(), CertHolder()]
    replicas = [
        BootstrapCerts(c, settings, h, clock, no_sleep)
        for c, h in zip(clients, holders, strict=True)
    ]
    try:
        await asyncio.gather(*(r.refresh() for r in replicas))
        stored = secret_bundle(emu)
        assert holders[0].cert_pem == holders[1].cert_pem == stored.cert_pem
        assert ca_bundles(emu) == {stored.ca_pem}
        assert problems(stored, settings.dns_names(), clock()) == []
        assert len(emu.list("secrets", "gpumix-system")) == 1

        # rotation at 2/3 of the lifetime: both race again, one wins, both adopt it
        clock.t += 2.1 * DAY_S
        emu.conflict_next("secrets", "gpumix-webhook-tls", "gpumix-system")
        await asyncio.gather(*(r.refresh() for r in replicas))
        rotated = secret_bundle(emu)
        assert rotated.cert_pem != stored.cert_pem
        assert ca_bundles(emu) == {rotated.ca_pem}
        assert rotated.ca_pem.endswith(stored.ca_pem)  # the old CA is still trusted
        # the new certificate is presented only after the grace (caBundle first)
        assert holders[0].cert_pem == holders[1].cert_pem == stored.cert_pem
        # a stale writer puts the old caBundle back: the grace starts again
        await replicas[0].sync_ca_bundle(stored.ca_pem)
        clock.t += settings.reload_grace_s + 1
        await replicas[1].refresh()
        assert ca_bundles(emu) == {rotated.ca_pem}
        assert holders[1].cert_pem == stored.cert_pem
        clock.t += settings.reload_grace_s + 1
        await asyncio.gather(*(r.refresh() for r in replicas))
        assert holders[0].cert_pem == holders[1].cert_pem == rotated.cert_pem

        # a replica started later adopts the Secret instead of making its own
        late = BootstrapCerts(clients[0], settings, CertHolder(), clock, no_sleep)
        await late.refresh()
        assert late.holder.cert_pem == rotated.cert_pem
    finally:
        for c in clients:
            await c.close()


async def test_bootstrap_replaces_a_secret_that_is_broken(emu: Emulator) -> None:
    emu.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": "gpumix-webhook-tls", "namespace": "gpumix-system"},
            "data": {"tls.crt": base64.b64encode(b"junk").decode()},
        }
    )
    client = await KubeClient.connect(str(emu.kubeconfig()))
    try:
        certs = BootstrapCerts(client, TLSSettings(), CertHolder(), time.time, no_sleep)
        await certs.start()
        assert certs.loaded
        assert problems(secret_bundle(emu), TLSSettings().dns_names(), time.time()) == []
        await certs.stop()
    finally:
        await client.close()


async def test_bootstrap_waits_out_an_api_outage(emu: Emulator) -> None:
    client = await KubeClient.connect(str(emu.kubeconfig()))
    try:
        certs = BootstrapCerts(client, TLSSettings(check_interval_s=0.05), CertHolder(), time.time)
        emu.start_outage("503")
        await certs.start()  # gives up for now, keeps trying in the background
        assert not certs.loaded and "503" in certs.last_error
        emu.end_outage()
        for _ in range(100):
            if certs.loaded:
                break
            await asyncio.sleep(0.05)
        assert certs.loaded
        await certs.stop()
    finally:
        await client.close()
