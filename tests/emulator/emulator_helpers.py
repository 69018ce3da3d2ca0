"""Shared helpers of the emulator tests: object builders and a tiny HTTPS webhook."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gpumix.emulator import certs


def deployment(
    name: str,
    labels: dict[str, str] | None = None,
    replicas: int | None = None,
    namespace: str | None = None,
) -> dict[str, Any]:
    labels = labels or {"app": name}
    obj: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {"containers": [{"name": "main", "image": "nginx:1.27"}]},
            },
        },
    }
    if replicas is not None:
        obj["spec"]["replicas"] = replicas
    if namespace is not None:
        obj["metadata"]["namespace"] = namespace
    return obj


Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]] | dict[str, Any]]


def allow(request: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """An AdmissionReview response for `request` (the review's `request` part)."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": request["uid"], "allowed": True, **extra},
    }


def patch_response(
    request: dict[str, Any], ops: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    return allow(
        request,
        patchType="JSONPatch",
        patch=base64.b64encode(json.dumps(ops).encode()).decode(),
        **extra,
    )


def deny(request: dict[str, Any], message: str, code: int = 403) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {
            "uid": request["uid"],
            "allowed": False,
            "status": {"code": code, "message": message},
        },
    }


@dataclass
class HttpsWebhook:
    """An HTTPS webhook on 127.0.0.1 with a self-signed CA; one handler per path."""

    handlers: dict[str, Handler] = field(default_factory=dict)
    received: list[dict[str, Any]] = field(default_factory=list)
    ca: certs.KeyPair = field(default_factory=certs.make_ca)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def ca_bundle(self) -> str:
        return base64.b64encode(self.ca.cert_pem).decode()

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{path:.*}", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        ctx = certs.server_context(certs.issue(self.ca, ["127.0.0.1"]))
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        self.port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _serve(self, request: web.Request) -> web.Response:
        review = await request.json()
        self.received.append({"path": request.path, "query": dict(request.query), "review": review})
        handler = self.handlers.get(request.path)
        if handler is None:
            return web.json_response(allow(review["request"]))
        result = handler(review["request"])
        if asyncio.iscoroutine(result):
            result = await result
        return web.json_response(result)

    def configuration(self, kind: str, name: str, hooks: list[dict[str, Any]]) -> dict[str, Any]:
        """A Mutating/ValidatingWebhookConfiguration whose hooks call this server.

        Each hook gives `name`, `path`, `rules` and optionally any other webhook field."""
        webhooks = []
        for h in hooks:
            spec = {k: v for k, v in h.items() if k != "path"}
            spec.setdefault("sideEffects", "None")
            spec.setdefault("admissionReviewVersions", ["v1"])
            spec["clientConfig"] = {"url": self.url(h["path"]), "caBundle": self.ca_bundle}
            webhooks.append(spec)
        return {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": kind,
            "metadata": {"name": name},
            "webhooks": webhooks,
        }


def rule(
    groups: list[str],
    versions: list[str],
    resources: list[str],
    operations: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "apiGroups": groups,
        "apiVersions": versions,
        "resources": resources,
        "operations": operations or ["CREATE", "UPDATE"],
    }
