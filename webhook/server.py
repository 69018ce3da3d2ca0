"""The admission webhook's HTTP layer (aiohttp): parse, call ``review``, serialize.

Routes (HTTPS app): ``POST /mutate``, ``POST /validate``, ``GET /healthz``,
``GET /readyz``, ``GET /metrics``.  The probe app (plain HTTP) serves only the
three ``GET`` routes.  Handlers never decide anything themselves: the decision
is ``webhook.review.review`` and the response is ``webhook.review.to_response``.

Bad input never yields a 500.  A body the API server could not have meant as an
AdmissionReview gets HTTP 400 (413 when over 7 MiB) with a ``Status`` body
naming the problem; when the request's ``uid`` is known, the answer is an
AdmissionReview error response (HTTP 200, ``allowed: false``, ``status.code``
400) so that the API server shows the message to the user.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

import orjson
from aiohttp import web

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


STATE = web.AppKey("gpumix_webhook_state", WebhookState)

CleanupCtx = Callable[[web.Application], AsyncIterator[None]]


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


async def read_json(request: web.Request) -> object:
    """The request body as JSON, or ``BadBody`` saying what is wrong with it."""
    if request.content_type != "application/json":
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


async def _admit(request: web.Request, phase: Phase) -> web.Response:
    state = request.app[STATE]
    path = f"/{phase}"
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
        verdict = review(admission, state.source.snapshot, state.policy, phase)
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


async def mutate(request: web.Request) -> web.Response:
    return await _admit(request, "mutate")


async def validate(request: web.Request) -> web.Response:
    return await _admit(request, "validate")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    missing = []
    if not state.source.synced:
        missing.append("cluster cache not synced")
    if not state.cert.loaded:
        missing.append("no serving certificate loaded")
    if missing:
        return web.Response(status=503, text="not ready: " + "; ".join(missing) + "\n")
    return web.Response(text="ok\n")


async def metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[STATE].metrics.render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


# --------------------------------------------------------------------------- apps


def make_app(
    state: WebhookState, *, admission: bool = True, contexts: tuple[CleanupCtx, ...] = ()
) -> web.Application:
    """The HTTPS app (``admission=True``) or the plain-HTTP probe app."""
    # Bodies are capped in ``read_json``; aiohttp's own cap is set just above it.
    app = web.Application(client_max_size=MAX_BODY_BYTES + 1)
    app[STATE] = state
    routes = [
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/metrics", metrics),
    ]
    if admission:
        routes += [web.post("/mutate", mutate), web.post("/validate", validate)]
    app.add_routes(routes)
    app.cleanup_ctx.extend(contexts)
    return app
