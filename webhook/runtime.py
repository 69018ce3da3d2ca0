"""Process wiring: the cluster cache, the certificate and the two servers, started together.

``build`` makes the parts without starting them (``Built.start`` and ``Built.stop``,
or ``async with built``, start and stop them); ``serve`` starts them, runs the HTTPS
server and the plain-HTTP probe server until asked to stop, and stops them after
both servers have closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import signal
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gpumix.kube.snapshot import Snapshot
from gpumix.kubeio.client import KubeClient
from gpumix.lifecycle import Service
from gpumix.webhook.cache import ClusterCache
from gpumix.webhook.metrics import WebhookMetrics
from gpumix.webhook.server import SnapshotSource, StaticSource, WebhookState, make_server
from gpumix.webhook.settings import EVENT_LOOPS, WebhookSettings
from gpumix.webhook.tls import BootstrapCerts, CertHolder, CertSource, EphemeralCerts, FileCerts

log = logging.getLogger("gpumix.webhook")


@dataclass
class Built(Service):
    """The parts of one webhook process.  ``start`` and ``stop`` (or ``async with``)
    run the cluster cache and the certificate source; a ``web.ServerRunner`` serves
    each of the two servers."""

    server: web.Server
    probe_server: web.Server
    ssl_context: ssl.SSLContext
    state: WebhookState
    certs: CertSource
    cache: ClusterCache | None
    owned_client: KubeClient | None = None
    """The API client ``build`` connected itself; ``stop`` closes it."""

    async def start(self) -> None:
        """Start the cluster cache, then load the certificate (before serving)."""
        if self.cache is not None:
            await self.cache.start()
        await self.certs.start()

    async def stop(self) -> None:
        """Stop the certificate refresh and the cache, close an owned client (after serving)."""
        await self.certs.stop()
        if self.cache is not None:
            await self.cache.stop()
        if self.owned_client is not None:
            await self.owned_client.close()


async def build(
    settings: WebhookSettings,
    *,
    state_objects: Iterable[Mapping[str, Any]] | None = None,
    client: KubeClient | None = None,
    clock: Callable[[], float] = time.time,
) -> Built:
    """The parts of one webhook process, not started.  With ``state_objects`` no
    cluster is used."""
    metrics = WebhookMetrics()
    holder = CertHolder(metrics)
    cache: ClusterCache | None = None
    source: SnapshotSource
    owned_client: KubeClient | None = None
    if state_objects is not None:
        snapshot = Snapshot.from_objects(state_objects, settings.policy)
        source = StaticSource(snapshot)
        for kind, count in (
            ("Deployment", len(snapshot.deployments)),
            ("Autoscaler", len(snapshot.autoscalers)),
            ("Node", len(snapshot.nodes)),
            ("Namespace", len(snapshot.namespaces)),
        ):
            metrics.cache_objects.labels(kind=kind).set(count)
        metrics.cache_synced.set(1)
    else:
        if client is None:
            client = owned_client = await KubeClient.connect(
                settings.kubeconfig, user_agent="gpumix-webhook/0.1.0"
            )
        cache = ClusterCache(client, settings.policy, metrics, settings.cache)
        source = cache
    certs: CertSource
    if settings.tls.from_files:
        certs = FileCerts(settings.tls, holder, clock)
    elif client is None:
        certs = EphemeralCerts(settings.tls, holder, clock)
    else:
        certs = BootstrapCerts(client, settings.tls, holder, clock)
    state = WebhookState(settings.policy, source, metrics, certs)
    server = make_server(state, limits=settings.server, lingering_time=2.0)
    probe_server = make_server(state, admission=False, limits=settings.server)
    return Built(server, probe_server, holder.context, state, certs, cache, owned_client)


async def serve(
    settings: WebhookSettings,
    *,
    state_objects: Iterable[Mapping[str, Any]] | None = None,
    clock: Callable[[], float] = time.time,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[int, int], None] | None = None,
) -> None:
    """Run the webhook until ``stop`` is set or SIGINT/SIGTERM arrives."""
    built = await build(settings, state_objects=state_objects, clock=clock)
    # The cache and the certificate start before either server accepts a connection,
    # and stop after both have closed.
    async with built:
        https = web.ServerRunner(built.server, handle_signals=False)
        probes = web.ServerRunner(built.probe_server, handle_signals=False)
        await https.setup()
        try:
            await probes.setup()
            site = HTTPSSite(
                https,
                settings.host,
                settings.port,
                ssl_context=built.ssl_context,
                handshake_timeout_s=settings.server.header_timeout_s,
            )
            await site.start()
            ports = [_bound_port(site), 0]
            if settings.metrics_port is not None:
                probe_site = web.TCPSite(probes, settings.host, settings.metrics_port)
                await probe_site.start()
                ports[1] = _bound_port(probe_site)
            log.info("serving HTTPS on %s:%d, probes on port %d", settings.host, *ports)
            if on_ready is not None:
                on_ready(ports[0], ports[1])
            stop = stop or asyncio.Event()
            loop = asyncio.get_running_loop()
            handled = []
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, stop.set)
                    handled.append(sig)
            try:
                await stop.wait()
            finally:
                for sig in handled:
                    loop.remove_signal_handler(sig)
        finally:
            await probes.cleanup()
            await https.cleanup()


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop to serve on: ``uvloop`` (libuv; less CPU per request than the
    standard loop, docs/benchmarks.md) or ``asyncio`` (the standard library's).  Where
    uvloop cannot be imported (it is not built for every platform) the standard loop
    is used."""
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("uvloop is not available here; serving on the asyncio event loop")
            return None
        return uvloop.new_event_loop
    if name == "asyncio":
        return None
    raise ValueError(f"unknown event loop {name!r}; choose one of {', '.join(EVENT_LOOPS)}")


SSL_READ_BYTES = 256 * 1024
"""What uvloop's (and asyncio's) TLS transport asks OpenSSL for on every read: a new
``bytes`` of this size, shrunk to what was read."""
MMAP_THRESHOLD_BYTES = 512 * 1024
"""Allocations from this size on get their own ``mmap``, given back when freed."""
TRIM_THRESHOLD_BYTES = 512 * 1024
"""Free memory at the top of the heap past this size is given back (``brk``)."""
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def fix_malloc_thresholds() -> bool:
    """Keep glibc's malloc from holding on to the memory of large request bodies,
    without a system call per request.

    glibc serves an allocation of 128 KiB or more with its own ``mmap`` and returns it
    when freed, but then raises that threshold to the freed size (up to 32 MiB): after
    one 7 MiB body, bodies and the buffers of many concurrent connections come from the
    heap, which fragments and is not given back, so a burst of large bodies raised the
    resident size for good.  Both thresholds are fixed (which turns the adjustment
    off), at 512 KiB: above the 256 KiB buffer the event loop's TLS transport allocates
    for every read.  At glibc's initial 128 KiB that buffer cost an ``mmap``, an
    ``mremap`` and a ``munmap`` per request, and its page faults: about 0.1 ms of CPU
    per call behind kube-apiserver, a sixth of the webhook's (docs/benchmarks.md).
    False where there is no glibc.
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )


def run(
    settings: WebhookSettings,
    *,
    state_objects: Iterable[Mapping[str, Any]] | None = None,
    event_loop: str = "uvloop",
) -> None:
    """``serve`` on the chosen event loop until SIGINT/SIGTERM."""
    factory = loop_factory(event_loop)
    log.info("event loop: %s", event_loop if factory is not None else "asyncio")
    if not fix_malloc_thresholds():
        log.info("not glibc: malloc thresholds left as they are")
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(settings, state_objects=state_objects))


class HTTPSSite(web.TCPSite):
    """aiohttp's TCP site with a TLS handshake timeout: a connection that has not
    finished its handshake this long after it was accepted is closed (the event loop's
    default is 60 s; connections are counted against ``max_connections`` only once
    their handshake is done)."""

    def __init__(self, *args: Any, handshake_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handshake_timeout_s = handshake_timeout_s

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            server,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
            ssl_handshake_timeout=self.handshake_timeout_s if self._ssl_context else None,
        )


def _bound_port(site: web.TCPSite) -> int:
    server = site._server  # aiohttp has no public accessor for the bound port (port 0)
    sockets = getattr(server, "sockets", None) or []
    return int(sockets[0].getsockname()[1]) if sockets else 0
