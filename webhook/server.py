"""The admission webhook's HTTP layer (aiohttp): parse, call ``review``, serialize.

Served by aiohttp's low-level ``web.Server`` (``make_server``): no ``Application``,
router or middleware chain, which cost about 14 µs of CPU per request in the
benchmark (benchmarks/bench_webhook.py measures a bare endpoint on each).  ``WebhookHandler``
routes on ``(method, path)`` with one dict lookup:
``POST /mutate``, ``POST /validate``, ``GET /healthz``, ``GET /readyz``,
``GET /metrics`` on the HTTPS server; the probe server (plain HTTP) serves only the
three ``GET`` routes.  The rest is answered as aiohttp's router would: ``HEAD``
wherever ``GET`` is served, 404 for an unknown path, 405 with an ``Allow`` header
for a known path and another method, ``Expect: 100-continue`` before the body is
read.  Handlers never decide anything themselves: the decision is
``gpumix.admission.review`` and the response is ``gpumix.webhook.wire.to_response``.

Bad input never yields a 500.  A body the API server could not have meant as an
AdmissionReview gets HTTP 400 (413 when over 7 MiB, 415 when compressed) with a
``Status`` body naming the problem; when the request's ``uid`` is known, the answer
is an AdmissionReview error response (HTTP 200, ``allowed: false``, ``status.code``
400) so that the API server shows the message to the user.  What aiohttp itself
refuses (a malformed request line or header) gets a ``Status`` body too.

Memory and time are bounded whatever clients do (``ServerSettings``): bodies
being read are reserved against one budget of bytes over all connections (a
request past it is refused at once with 429), a body must arrive within
``body_timeout_s`` (else 408), headers within ``header_timeout_s`` of the
connection or of a request's first byte, and an idle kept-alive connection is
closed after ``idle_timeout_s``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from http import HTTPStatus
from typing import Any, Protocol

import orjson
from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from gpumix.admission import Phase, Verdict, errored, review
from gpumix.kube.policy import Policy
from gpumix.kube.snapshot import Snapshot
from gpumix.webhook.metrics import WebhookMetrics
from gpumix.webhook.settings import MIB, ServerSettings
from gpumix.webhook.wire import (
    AdmissionReviewResponse,
    ReviewError,
    json_bytes,
    parse_review,
    to_response,
    uid_in_prefix,
)

log = logging.getLogger("gpumix.webhook")

MAX_BODY_BYTES = 7 * MIB
"""Same cap as kube-apiserver's and controller-runtime's for admission bodies."""
SMALL_BODY_BYTES = 1 * MIB
"""Bodies up to this size may use the whole in-flight budget; larger ones three quarters."""
NESTING_MESSAGE = "request body nests too deeply to be a Kubernetes object"
SERVER_NAME = "gpumix-webhook"
"""The ``Server`` header: no software versions (aiohttp would send Python's and its own)."""
RETRY_AFTER_S = 1
LINGER_MAX_BYTES = 256 * 1024
"""Of a body left unread, at most this much is read and dropped after the answer."""
JSON_HEADERS = {hdrs.CONTENT_TYPE: "application/json", hdrs.SERVER: SERVER_NAME}


class SnapshotSource(Protocol):
    """Where the handlers read the cluster state from."""

    @property
    def snapshot(self) -> Snapshot: ...

    @property
    def synced(self) -> bool: ...


class CertStatus(Protocol):
    @property
    def loaded(self) -> bool: ...

    @property
    def problem(self) -> str:
        """Why the certificate makes the replica unready ("": it does not)."""
        ...


@dataclass
class StaticSource:
    """A fixed snapshot (``--state FILE`` and tests); always synced."""

    snapshot: Snapshot = field(default_factory=Snapshot)
    synced: bool = True


@dataclass
class NoTLS:
    """Stands for the certificate when the app is served without TLS (tests)."""

    loaded: bool = True
    problem: str = ""


@dataclass
class WebhookState:
    policy: Policy
    source: SnapshotSource
    metrics: WebhookMetrics
    cert: CertStatus = field(default_factory=NoTLS)


# --------------------------------------------------------------------------- responses


REASONS = {
    400: "BadRequest",
    404: "NotFound",
    405: "MethodNotAllowed",
    408: "Timeout",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    417: "ExpectationFailed",
    429: "TooManyRequests",
    431: "BadRequest",
}
"""``Status.reason`` by HTTP status, as kube-apiserver names them (``metav1.StatusReason``)."""


def status_response(
    code: int, message: str, reason: str = "", details: dict[str, Any] | None = None
) -> web.Response:
    """A Kubernetes-style ``Status`` body for an HTTP-level error."""
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "message": message,
        "reason": reason or REASONS.get(code, "InternalError" if code >= 500 else "BadRequest"),
        "code": code,
    }
    if details:
        body["details"] = details
    return web.Response(status=code, body=json_bytes(body), headers=JSON_HEADERS)


def review_response(review_body: AdmissionReviewResponse) -> web.Response:
    return web.Response(body=json_bytes(review_body), headers=JSON_HEADERS)


class BadBody(Exception):
    """A body that is not an AdmissionReview; ``uid`` when the request's uid is known."""

    def __init__(self, code: int, message: str, uid: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.uid = uid


class Refused(Exception):
    """The request is not read to its end: answer ``response`` and close the connection.
    ``reason`` labels ``gpumix_webhook_requests_refused_total``."""

    def __init__(self, reason: str, response: web.Response) -> None:
        super().__init__(reason)
        self.reason = reason
        self.response = response


class BodyBudget:
    """Bytes of request bodies in flight over all connections: O(1) to reserve and release.

    A body is reserved at its declared size (``Content-Length``; the 7 MiB cap when the
    body is chunked) before it is read, and released once its answer is built.  Bodies
    over ``SMALL_BODY_BYTES`` may fill only three quarters of the budget, so clients that
    declare large bodies and stall cannot lock out the small reviews the API server sends.
    """

    __slots__ = ("in_flight", "large_limit", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.large_limit = limit - limit // 4
        self.in_flight = 0

    def reserve(self, size: int) -> bool:
        after = self.in_flight + size
        if after > (self.limit if size <= SMALL_BODY_BYTES else self.large_limit):
            return False
        self.in_flight = after
        return True

    def release(self, size: int) -> None:
        self.in_flight -= size


def check_headers(request: web.BaseRequest) -> None:
    """``BadBody`` for a request whose headers already say it is not an AdmissionReview."""
    # kube-apiserver sends exactly "application/json": that needs no header parsing
    if (
        request.headers.get(hdrs.CONTENT_TYPE) != "application/json"
        and request.content_type != "application/json"
    ):
        raise BadBody(
            400,
            f"Content-Type must be application/json, got {request.content_type or 'none'!r}",
        )
    encoding = request.headers.get(hdrs.CONTENT_ENCODING)
    if encoding is not None and encoding.strip().lower() != "identity":
        # kube-apiserver never compresses an AdmissionReview; decompressing would let a
        # small body grow past every limit before it is counted.
        raise BadBody(
            415,
            f"Content-Encoding {_clip(encoding, 100)!r} is not supported; "
            "send the AdmissionReview uncompressed",
        )
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise BadBody(
            413, f"request body of {request.content_length} bytes is over the 7 MiB limit"
        )


async def read_body(content: StreamReader) -> bytes | bytearray:
    """The whole body; one chunk (no copy) when it is all there, as it nearly always is."""
    first = await content.readany()
    if content.at_eof():
        return first
    body = bytearray(first)
    while chunk := await content.readany():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise BadBody(413, "request body is over the 7 MiB limit")
    return body


def parse_json(raw: bytes | bytearray) -> object:
    """The body as JSON, or ``BadBody`` saying what is wrong with it."""
    if len(raw) > MAX_BODY_BYTES:  # a chunked body read in one piece
        raise BadBody(413, "request body is over the 7 MiB limit")
    if not raw:
        raise BadBody(400, "request body is empty; expected an AdmissionReview")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass  # the standard library names the problem (and reads NaN, as before)
    try:
        body = json.loads(raw)
    except RecursionError:
        raise BadBody(400, NESTING_MESSAGE, uid_in_prefix(raw)) from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise BadBody(400, f"request body is not valid JSON: {exc}") from None
    return body


def refused_busy(budget: BodyBudget) -> Refused:
    response = status_response(
        429,
        f"the webhook is reading {budget.in_flight} bytes of request bodies, its limit; "
        f"retry in {RETRY_AFTER_S} s",
        details={"retryAfterSeconds": RETRY_AFTER_S},
    )
    response.headers[hdrs.RETRY_AFTER] = str(RETRY_AFTER_S)
    return Refused("busy", response)


def refused_slow(timeout_s: float) -> Refused:
    return Refused(
        "body-timeout",
        status_response(408, f"request body not received within {timeout_s:g} s"),
    )


# --------------------------------------------------------------------------- handlers

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class WebhookHandler:
    """The request handler of the low-level server: one dict lookup on
    ``(method, path)`` picks the handler.  The routes are bound once, here."""

    __slots__ = ("_allowed", "_routes", "body_timeout_s", "budget", "state")

    def __init__(
        self,
        state: WebhookState,
        *,
        admission: bool = True,
        limits: ServerSettings | None = None,
    ) -> None:
        self.state = state
        limits = limits or ServerSettings()
        self.budget = BodyBudget(limits.max_body_bytes_in_flight)
        self.body_timeout_s = limits.body_timeout_s
        routes: dict[tuple[str, str], Handler] = {}
        for path, handler in (
            ("/healthz", self.healthz),
            ("/readyz", self.readyz),
            ("/metrics", self.metrics),
        ):
            routes["GET", path] = routes["HEAD", path] = handler  # as aiohttp's ``web.get``
        if admission:
            routes["POST", "/mutate"] = partial(self._admit, "mutate", "/mutate")
            routes["POST", "/validate"] = partial(self._admit, "validate", "/validate")
        self._routes = routes
        allowed: dict[str, set[str]] = {}
        for method, path in routes:
            allowed.setdefault(path, set()).add(method)
        self._allowed = allowed

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        handler = self._routes.get((request.method, request.path))
        if request.headers.get(hdrs.EXPECT):
            failed = await _expect(request)
            if failed is not None:
                return failed
        if handler is None:
            allowed = self._allowed.get(request.path)
            if allowed is None:
                raise web.HTTPNotFound(headers=_SERVER_HEADER)
            raise web.HTTPMethodNotAllowed(request.method, allowed, headers=_SERVER_HEADER)
        return await handler(request)

    async def _admit(self, phase: Phase, path: str, request: web.BaseRequest) -> web.Response:
        state = self.state
        started = time.perf_counter()
        budget = self.budget
        reserved = 0
        try:
            try:
                check_headers(request)
                size = request.content_length
                size = MAX_BODY_BYTES if size is None else size
                if not budget.reserve(size):
                    raise refused_busy(budget)
                reserved = size
                content = request.content
                if content.is_eof():  # the whole body is here: nothing to wait for
                    raw = await read_body(content)
                else:
                    try:
                        async with asyncio.timeout(self.body_timeout_s):
                            raw = await read_body(content)
                    except TimeoutError:
                        raise refused_slow(self.body_timeout_s) from None
                body = parse_json(raw)
                del raw
                try:
                    admission = parse_review(body)
                except ReviewError as exc:
                    raise BadBody(400, str(exc), exc.uid) from None
            except BadBody as bad:
                state.metrics.observe(path, "", "", "errored", time.perf_counter() - started)
                message = _clip(bad.message)
                log.info("bad admission request on %s: %s", path, message)
                if bad.uid:
                    return review_response(to_response(bad.uid, errored(message, bad.code)))
                response = status_response(bad.code, message)
                if not request.content.at_eof():
                    # the unread rest of the body must not be taken as a request
                    response.force_close()
                    _abandon_body(request)
                return response
            except Refused as refused:
                state.metrics.refused(refused.reason)
                log.debug("%s refused: %s", path, refused.reason)
                refused.response.force_close()
                _abandon_body(request)
                return refused.response
            except (ConnectionError, RequestPayloadError) as exc:
                # The client hung up, or its body broke off (a bad chunk, fewer bytes than
                # its Content-Length): nothing to review.  If it is still there it reads
                # why; usually the answer goes nowhere, which aiohttp ignores.
                state.metrics.refused("body-incomplete")
                log.debug("%s: request body incomplete: %s", path, exc)
                response = status_response(400, f"request body incomplete: {_clip(str(exc), 200)}")
                response.force_close()
                return response

            kind = admission["kind"]["kind"]
            operation = admission.get("operation", "")
            uid = admission["uid"]
            try:
                verdict = review(
                    admission,
                    state.source.snapshot,
                    state.policy,
                    phase,
                    current=state.source.synced,
                )
            except RecursionError:
                # JSON nested hundreds of levels deep parses, but copying it cannot recurse
                # that far: bad input, not a bug. (Checked here, not up front, to keep the
                # common path free of a walk over every body.)
                verdict = errored(NESTING_MESSAGE, 400)
            except Exception:  # a bug in the rules must not take the API server's request down
                log.exception("review failed for %s %s uid=%s", path, kind, uid)
                verdict = errored("gpumix could not review this request (internal error)", 500)
            payload = to_response(uid, verdict)
            state.metrics.observe(
                path, kind, operation, verdict.shape, time.perf_counter() - started
            )
            _count_findings(state.metrics, phase, verdict)
            return review_response(payload)
        finally:
            if reserved:
                budget.release(reserved)

    async def healthz(self, request: web.BaseRequest) -> web.Response:
        return web.Response(text="ok\n", headers=_SERVER_HEADER)

    async def readyz(self, request: web.BaseRequest) -> web.Response:
        state = self.state
        missing = []
        if not state.source.synced:
            missing.append("cluster cache not synced")
        problem = state.cert.problem
        if problem:
            missing.append(problem)
        if missing:
            return web.Response(
                status=503, text="not ready: " + "; ".join(missing) + "\n", headers=_SERVER_HEADER
            )
        return web.Response(text="ok\n", headers=_SERVER_HEADER)

    async def metrics(self, request: web.BaseRequest) -> web.Response:
        body, content_type = self.state.metrics.render()
        return web.Response(
            body=body, headers={hdrs.CONTENT_TYPE: content_type, hdrs.SERVER: SERVER_NAME}
        )


_SERVER_HEADER = {hdrs.SERVER: SERVER_NAME}


def _abandon_body(request: web.BaseRequest) -> None:
    protocol = request.protocol
    if isinstance(protocol, Connection):
        length = request.content_length
        received = request.content.total_bytes if length is not None else 0
        protocol.abandon_body(None if length is None else length - received)


async def _expect(request: web.BaseRequest) -> web.Response | None:
    """``Expect`` as aiohttp's router answers it: ``100 Continue``, or 417 (with a
    ``Status`` body, the connection closed) when unknown."""
    if request.version == HttpVersion11:
        expect = request.headers[hdrs.EXPECT]
        if expect.lower() != "100-continue":
            response = status_response(417, f"Unknown Expect: {_clip(expect, 100)}")
            response.force_close()
            return response
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the response proper has not started
    await request.writer.drain()
    return None


def _clip(message: str, limit: int = 1000) -> str:
    """Error messages quote parts of the request: keep them (and the log) short."""
    return message if len(message) <= limit else message[: limit - 3] + "..."


def _count_findings(metrics: WebhookMetrics, phase: Phase, verdict: Verdict) -> None:
    # Validation reports every finding; mutation only the ones it fixed (the
    # validating call then sees the fixed object), so nothing is counted twice.
    if phase == "mutate" and verdict.shape != "patched":
        return
    mode = verdict.mode or "none"
    for f in verdict.findings:
        metrics.finding(f.rule, f.severity, mode)


# --------------------------------------------------------------------------- connections


class Connection(RequestHandler):
    """aiohttp's connection handler with a header timeout and ``Status`` error bodies.

    The header deadline runs from the connection's start (as Go's ``ReadHeaderTimeout``
    does) and, on a kept-alive connection, from the first byte of each further request,
    to the end of that request's headers; a connection that passes it is closed.  One
    timer per connection, moved forward instead of replaced, so a request costs a clock
    read.  Waiting between requests is aiohttp's keep-alive timeout (the idle timeout).
    """

    __slots__ = (
        "_abandoned",
        "_answered_payload",
        "_between_requests",
        "_header_deadline",
        "_header_handle",
        "_header_timeout",
    )

    def __init__(self, manager: WebhookServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = manager.header_timeout_s
        self._header_deadline = 0.0
        self._header_handle: asyncio.TimerHandle | None = None
        self._between_requests = False
        self._answered_payload: StreamReader | None = None
        self._abandoned = False

    def abandon_body(self, remaining: int | None) -> None:
        """The rest of the current request's body will not be read.  When more than
        256 KiB (or an unknown amount) is still to come, the connection is dropped once
        the answer is written, as Go's server does, instead of reading and discarding
        the rest for ``lingering_time`` and waiting for TLS's closing handshake: neither
        costs anything then.  (A client still sending may see a reset rather than the
        answer; the API server retries on either.)"""
        if remaining is None or remaining > LINGER_MAX_BYTES:
            self._lingering_time = 0.0
            self._abandoned = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        manager = self._manager
        if isinstance(manager, WebhookServer) and manager.over_capacity():
            manager.on_refused("too-many-connections")
            log.debug("closing a connection: %d are open", manager.max_connections)
            self.force_close()
            return
        self._await_headers()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_handle is not None:
            self._header_handle.cancel()
            self._header_handle = None
        self._header_deadline = 0.0
        payload = self._answered_payload
        if payload is not None and not payload.is_eof():
            # aiohttp may still be reading the rest of an answered request's body
            # ("lingering"); without this it would wait on a closed connection and log
            # a RuntimeError as an unhandled exception.
            payload.feed_eof()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._between_requests:  # the first bytes of the next request
            self._between_requests = False
            self._await_headers()
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:  # a request's headers are complete
            self._header_deadline = 0.0

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        answered = await super().finish_response(request, resp, start_time)
        self._between_requests = True
        self._answered_payload = request.content
        if self._abandoned and self.transport is not None:
            self.transport.abort()
        return answered

    def _await_headers(self) -> None:
        if self._header_timeout <= 0:
            return
        loop = self._loop
        self._header_deadline = deadline = loop.time() + self._header_timeout
        if self._header_handle is None:
            self._header_handle = loop.call_at(deadline, self._check_headers)

    def _check_headers(self) -> None:
        self._header_handle = None
        deadline = self._header_deadline
        if not deadline or self.transport is None:
            return
        if self._loop.time() < deadline:
            self._header_handle = self._loop.call_at(deadline, self._check_headers)
            return
        manager = self._manager
        if isinstance(manager, WebhookServer):
            manager.on_refused("header-timeout")
        log.debug("closing a connection whose request headers took over %gs", self._header_timeout)
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """What aiohttp answers itself (a request it cannot parse: 400; a handler that
        raised: 500), as a ``Status`` body; only a 500 is logged with its traceback."""
        if status >= 500:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
            text = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
        else:
            text = message or (str(exc) if exc is not None else "") or "bad request"
            log.info("bad HTTP request from %s: %s", request.remote, _clip(text, 200))
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send the error")
        response = status_response(status, _clip(text or "error"))
        response.force_close()
        return response


# --------------------------------------------------------------------------- servers


class WebhookServer(web.Server):
    """aiohttp's low-level server, with ``Connection`` as the connection handler."""

    def __init__(
        self,
        handler: WebhookHandler,
        *,
        header_timeout_s: float,
        max_connections: int,
        on_refused: Callable[[str], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.max_connections = max_connections
        self.on_refused = on_refused

    def over_capacity(self) -> bool:
        """More connections than allowed (the one just made included)."""
        return len(self._connections) > self.max_connections

    def __call__(self) -> RequestHandler:
        return Connection(self, loop=self._loop, **self._kwargs)


def make_server(
    state: WebhookState,
    *,
    admission: bool = True,
    limits: ServerSettings | None = None,
    **kwargs: Any,
) -> WebhookServer:
    """The HTTPS server (``admission=True``) or the plain-HTTP probe server; serve it
    with ``web.ServerRunner``.  Needs a running event loop.  ``limits``: timeouts and the
    in-flight body budget.  ``kwargs`` go to aiohttp's connection handler
    (``lingering_time``, ...); the access log is off unless ``access_log`` is given."""
    loop = asyncio.get_running_loop()
    limits = limits or ServerSettings()
    kwargs.setdefault("access_log", None)
    kwargs.setdefault("keepalive_timeout", limits.idle_timeout_s)
    handler = WebhookHandler(state, admission=admission, limits=limits)
    if admission:
        budget = handler.budget
        state.metrics.body_bytes_in_flight.set_function(lambda: budget.in_flight)
    return WebhookServer(
        handler,
        header_timeout_s=limits.header_timeout_s,
        max_connections=limits.max_connections,
        on_refused=state.metrics.refused,
        # Bodies are read and capped in ``read_body``, never by aiohttp (nor decompressed).
        request_factory=partial(web.BaseRequest, loop=loop, client_max_size=MAX_BODY_BYTES + 1),
        auto_decompress=False,
        loop=loop,
        **kwargs,
    )
