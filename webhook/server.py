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
``webhook.review.review`` and the response is ``webhook.review.to_response``.

Bad input never yields a 500.  A body the API server could not have meant as an
AdmissionReview gets HTTP 400 (413 when over 7 MiB) with a ``Status`` body
naming the problem; when the request's ``uid`` is known, the answer is an
AdmissionReview error response (HTTP 200, ``allowed: false``, ``status.code``
400) so that the API server shows the message to the user.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import orjson
from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11

from gpumix.kube.policy import Policy
from gpumix.kube.snapshot import Snapshot
from webhook.metrics import WebhookMetrics
from webhook.review import (
    AdmissionReviewResponse,
    Phase,
    ReviewError,
    Verdict,
    errored,
    json_bytes,
    parse_review,
    review,
    to_response,
)

log = logging.getLogger("gpumix.webhook")

MAX_BODY_BYTES = 7 * 1024 * 1024
"""Same cap as kube-apiserver's and controller-runtime's for admission bodies."""
NESTING_MESSAGE = "request body nests too deeply to be a Kubernetes object"


class SnapshotSource(Protocol):
    """Where the handlers read the cluster state from."""

    @property
    def snapshot(self) -> Snapshot: ...

    @property
    def synced(self) -> bool: ...


class CertStatus(Protocol):
    @property
    def loaded(self) -> bool: ...


@dataclass
class StaticSource:
    """A fixed snapshot (``--state FILE`` and tests); always synced."""

    snapshot: Snapshot = field(default_factory=Snapshot)
    synced: bool = True


@dataclass
class NoTLS:
    """Stands for the certificate when the app is served without TLS (tests)."""

    loaded: bool = True


@dataclass
class WebhookState:
    policy: Policy
    source: SnapshotSource
    metrics: WebhookMetrics
    cert: CertStatus = field(default_factory=NoTLS)


# --------------------------------------------------------------------------- responses


def status_response(code: int, message: str, reason: str) -> web.Response:
    """A Kubernetes-style ``Status`` body for an HTTP-level error."""
    body = {
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.Response(status=code, body=json_bytes(body), content_type="application/json")


def review_response(review_body: AdmissionReviewResponse) -> web.Response:
    return web.Response(body=json_bytes(review_body), content_type="application/json")


class BadBody(Exception):
    """A body that is not an AdmissionReview; ``uid`` when the request's uid is known."""

    def __init__(self, code: int, message: str, uid: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.uid = uid


async def read_json(request: web.BaseRequest) -> object:
    """The request body as JSON, or ``BadBody`` saying what is wrong with it."""
    # kube-apiserver sends exactly "application/json": that needs no header parsing
    if (
        request.headers.get(hdrs.CONTENT_TYPE) != "application/json"
        and request.content_type != "application/json"
    ):
        raise BadBody(
            400,
            f"Content-Type must be application/json, got {request.content_type or 'none'!r}",
        )
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise BadBody(
            413, f"request body of {request.content_length} bytes is over the 7 MiB limit"
        )
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BadBody(413, "request body is over the 7 MiB limit") from None
    if not raw:
        raise BadBody(400, "request body is empty; expected an AdmissionReview")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass  # the standard library names the problem (and reads NaN, as before)
    try:
        body = json.loads(raw)
    except RecursionError:
        raise BadBody(400, NESTING_MESSAGE) from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise BadBody(400, f"request body is not valid JSON: {exc}") from None
    return body


# --------------------------------------------------------------------------- handlers

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class WebhookHandler:
    """The request handler of the low-level server: one dict lookup on
    ``(method, path)`` picks the handler.  The routes are bound once, here."""

    __slots__ = ("_allowed", "_routes", "state")

    def __init__(self, state: WebhookState, *, admission: bool = True) -> None:
        self.state = state
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
            await _expect(request)
        if handler is None:
            allowed = self._allowed.get(request.path)
            if allowed is None:
                raise web.HTTPNotFound()
            raise web.HTTPMethodNotAllowed(request.method, allowed)
        return await handler(request)

    async def _admit(self, phase: Phase, path: str, request: web.BaseRequest) -> web.Response:
        state = self.state
        started = time.perf_counter()
        try:
            body = await read_json(request)
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
            reason = "RequestEntityTooLarge" if bad.code == 413 else "BadRequest"
            response = status_response(bad.code, message, reason)
            if not request.content.at_eof():
                response.force_close()  # the unread rest of the body must not be taken as a request
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
        state.metrics.observe(path, kind, operation, verdict.shape, time.perf_counter() - started)
        _count_findings(state.metrics, phase, verdict)
        return review_response(payload)

    async def healthz(self, request: web.BaseRequest) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.BaseRequest) -> web.Response:
        state = self.state
        missing = []
        if not state.source.synced:
            missing.append("cluster cache not synced")
        if not state.cert.loaded:
            missing.append("no serving certificate loaded")
        if missing:
            return web.Response(status=503, text="not ready: " + "; ".join(missing) + "\n")
        return web.Response(text="ok\n")

    async def metrics(self, request: web.BaseRequest) -> web.Response:
        body, content_type = self.state.metrics.render()
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response


async def _expect(request: web.BaseRequest) -> None:
    """``Expect`` as aiohttp's router answers it: ``100 Continue``, or 417 when unknown."""
    if request.version == HttpVersion11:
        expect = request.headers[hdrs.EXPECT]
        if expect.lower() != "100-continue":
            raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect}")
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the response proper has not started
    await request.writer.drain()


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


# --------------------------------------------------------------------------- servers


def make_server(state: WebhookState, *, admission: bool = True, **kwargs: Any) -> web.Server:
    """The HTTPS server (``admission=True``) or the plain-HTTP probe server; serve it
    with ``web.ServerRunner``.  Needs a running event loop.  ``kwargs`` go to aiohttp's
    connection handler (``lingering_time``, ``keepalive_timeout``, ...); the access log
    is off unless ``access_log`` is given."""
    loop = asyncio.get_running_loop()
    kwargs.setdefault("access_log", None)
    return web.Server(
        WebhookHandler(state, admission=admission),
        # Bodies are capped in ``read_json``; aiohttp's own cap is set just above it.
        request_factory=partial(web.BaseRequest, loop=loop, client_max_size=MAX_BODY_BYTES + 1),
        loop=loop,
        **kwargs,
    )
