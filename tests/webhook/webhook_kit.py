"""Shared helpers of the webhook tests: objects, AdmissionReview bodies, TLS servers."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from gpumix.kube.objects import view_of
from gpumix.kube.policy import Policy
from gpumix.kube.snapshot import Snapshot

Obj = dict[str, Any]


def deployment(
    name: str,
    ns: str = "default",
    *,
    selector: dict[str, str] | None = None,
    template: dict[str, str] | None = None,
    gpu_product: str | None = None,
    gpus: int = 1,
    model: str | None = "llama2-7b",
) -> Obj:
    sel = dict(selector) if selector is not None else {"model.aibrix.ai/name": model or name}
    labels = dict(template) if template is not None else dict(sel)
    pod_spec: Obj = {
        "containers": [
            {
                "name": "engine",
                "image": "vllm:latest",
                "resources": {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {},
            }
        ]
    }
    if gpu_product:
        pod_spec["nodeSelector"] = {"nvidia.com/gpu.product": gpu_product}
    meta: Obj = {"name": name, "namespace": ns}
    if model:
        meta["labels"] = {"model.aibrix.ai/name": model}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": sel},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def hpa(name: str, target: str, max_replicas: int | None = None, ns: str = "default") -> Obj:
    spec: Obj = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
        "minReplicas": 1,
    }
    if max_replicas is not None:
        spec["maxReplicas"] = max_replicas
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def scaled_object(name: str, target: str, max_count: int | None = None, ns: str = "default") -> Obj:
    spec: Obj = {
        "scaleTargetRef": {"name": target},
        "triggers": [{"type": "cpu", "metricType": "Utilization", "metadata": {"value": "60"}}],
    }
    if max_count is not None:
        spec["maxReplicaCount"] = max_count
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def pod_autoscaler(name: str, target: str, max_replicas: int | None, ns: str = "default") -> Obj:
    spec: Obj = {
        "scalingStrategy": "KPA",
        "minReplicas": 1,
        "targetMetric": "vllm:deployment_replicas",
        "targetValue": "1",
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
    }
    if max_replicas is not None:
        spec["maxReplicas"] = max_replicas
    return {
        "apiVersion": "autoscaling.aibrix.ai/v1alpha1",
        "kind": "PodAutoscaler",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def node(name: str, product: str, gpus: int) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product}},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}},
    }


def namespace(
    name: str, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None
) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}},
    }


def snapshot(*objs: Obj, policy: Policy | None = None) -> Snapshot:
    snap = Snapshot()
    for obj in objs:
        view = view_of(obj, policy or Policy())
        assert view is not None
        snap.put(view)
    return snap


def review_body(
    obj: Obj,
    operation: str = "CREATE",
    *,
    uid: str | None = None,
    old: Obj | None = None,
    dry_run: bool = False,
) -> Obj:
    group, _, version = obj["apiVersion"].rpartition("/")
    meta = obj.get("metadata", {})
    plural = obj["kind"].lower() + "s"
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid or str(uuid.uuid4()),
            "kind": {"group": group, "version": version, "kind": obj["kind"]},
            "resource": {"group": group, "version": version, "resource": plural},
            "requestKind": {"group": group, "version": version, "kind": obj["kind"]},
            "name": meta.get("name", ""),
            "namespace": meta.get("namespace", "default"),
            "operation": operation,
            "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters"]},
            "object": obj,
            "oldObject": old,
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def decoded_patch(response: Obj) -> list[Obj]:
    raw = response["response"].get("patch")
    return json.loads(base64.b64decode(raw)) if raw else []


@asynccontextmanager
async def serve_app(
    server: web.Server, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[str]:
    """Serve ``server`` (``webhook.server.make_server``) on 127.0.0.1 (a free port);
    yield its base URL."""
    runner = web.ServerRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    sockets = getattr(site._server, "sockets", None) or []
    port = sockets[0].getsockname()[1]
    scheme = "https" if ssl_context else "http"
    try:
        yield f"{scheme}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def client_context(ca_pem: bytes) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    return ctx


def webhook_configuration(kind: str) -> Obj:
    """The gpumix Mutating/ValidatingWebhookConfiguration as the manifests define it."""
    short = "mutate" if kind.startswith("Mutating") else "validate"
    hook = {
        "name": f"{short}.gpumix.io",
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": "Fail",
        "timeoutSeconds": 5,
        "clientConfig": {
            "service": {
                "namespace": "gpumix-system",
                "name": "gpumix-webhook",
                "path": f"/{short}",
                "port": 443,
            },
        },
        "rules": [
            {
                "apiGroups": ["apps"],
                "apiVersions": ["v1"],
                "resources": ["deployments"],
                "operations": ["CREATE", "UPDATE"],
            },
            {
                "apiGroups": ["autoscaling"],
                "apiVersions": ["v1", "v2"],
                "resources": ["horizontalpodautoscalers"],
                "operations": ["CREATE", "UPDATE"],
            },
            {
                "apiGroups": ["keda.sh"],
                "apiVersions": ["v1alpha1"],
                "resources": ["scaledobjects"],
                "operations": ["CREATE", "UPDATE"],
            },
            {
                "apiGroups": ["autoscaling.aibrix.ai"],
                "apiVersions": ["v1alpha1"],
                "resources": ["podautoscalers"],
                "operations": ["CREATE", "UPDATE"],
            },
        ],
    }
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": "gpumix"},
        "webhooks": [hook, {**hook, "name": f"{short}-extra.gpumix.io"}],
    }


async def http_exchange(
    url: str,
    data: bytes,
    ssl_context: ssl.SSLContext | None = None,
    *,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes to the server at ``url`` on a new connection and read one HTTP/1.1
    response (status, headers with lower-case names, body); then hang up."""
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port), ssl=ssl_context)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(read_response(reader), timeout)
    finally:
        writer.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a ``Content-Length`` (1xx responses skipped)."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if 100 <= status < 200:
            continue
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, body
