"""Conformance of the emulator to the real kube-apiserver.

Every case is a short sequence of raw REST calls that reduces the answers to a dict of
observations (status codes and selected fields). Each case runs against both backends:
the real kube-apiserver of tests/e2e/envtest.py and the emulator, both over HTTP(S). The
expected dict is what the real server answers, so the real run checks the expectation
itself. Where the emulator is known to differ, its run is an ``xfail(strict=True)``
with the reason; docs/emulator.md lists the same differences.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from gpumix.emulator import Emulator

from .envtest import Envtest

Obs = dict[str, Any]

GROUP = "conformance.gpumix.io"
CR_BASE = f"/apis/{GROUP}/v1"
CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"widgets.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {
            "plural": "widgets",
            "singular": "widget",
            "kind": "Widget",
            "listKind": "WidgetList",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "size": {"type": "integer", "minimum": 0},
                                    "mode": {"type": "string", "default": "auto"},
                                },
                            },
                            "status": {
                                "type": "object",
                                "properties": {"ready": {"type": "boolean"}},
                            },
                        },
                    }
                },
            }
        ],
    },
}


# --------------------------------------------------------------------------- HTTP client


@dataclass
class Reply:
    status: int
    body: Any
    warnings: list[str]


class Client:
    """Raw REST calls to one backend; JSON in, JSON out."""

    def __init__(
        self, base_url: str, ssl_context: ssl.SSLContext | None, compact: Callable[[], None]
    ) -> None:
        # Forget the history of changes: etcd compaction, or the emulator's compact().
        self.compact = compact
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 443
        self.tls = parts.scheme == "https"
        self.ssl_context = ssl_context

    def _conn(self, timeout_s: float) -> http.client.HTTPConnection:
        if self.tls:
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout_s, context=self.ssl_context
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout_s)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Reply:
        conn = self._conn(10.0)
        try:
            headers = {"Accept": "application/json"}
            data = None
            if body is not None:
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                headers["Content-Type"] = content_type
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            warnings = resp.headers.get_all("Warning") or []
        finally:
            conn.close()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        return Reply(resp.status, parsed, warnings)

    def watch(self, path: str, stop: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """Watch events until `stop(event)` holds, the stream ends or 10 s pass."""
        conn = self._conn(10.0)
        events: list[dict[str, Any]] = []
        try:
            conn.request("GET", path, headers={"Accept": "application/json"})
            resp = conn.getresponse()
            if resp.status != 200:
                return [{"type": "HTTP", "object": {"code": resp.status}}]
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                line = resp.readline()
                if not line:
                    break
                if not line.strip():
                    continue
                event = json.loads(line)
                events.append(event)
                if stop(event):
                    break
        finally:
            conn.close()
        return events

    # helpers shared by the cases

    def create(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        reply = self.call("POST", path, obj)
        assert reply.status == 201, (path, reply)
        return dict(reply.body)

    def get(self, path: str) -> dict[str, Any]:
        reply = self.call("GET", path)
        assert reply.status == 200, (path, reply)
        return dict(reply.body)

    def patch(self, path: str, patch: Any, kind: str = "merge") -> Reply:
        return self.call("PATCH", path, patch, f"application/{kind}-patch+json")


def causes(reply: Reply) -> list[tuple[str, str]]:
    details = reply.body.get("details") or {} if isinstance(reply.body, dict) else {}
    return sorted((c.get("field", ""), c.get("message", "")) for c in details.get("causes") or [])


def configmap(name: str, data: dict[str, str] | None = None, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels},
        "data": data or {},
    }


def deployment(name: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "image": "nginx:1.27",
                            "env": [{"name": "A", "value": "1"}],
                        }
                    ]
                },
            },
        },
    }


def pod(name: str, resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": "nginx:1.27", "resources": resources}]},
    }


def hpa(name: str, min_replicas: int, max_replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
        },
    }


def widget(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}


# --------------------------------------------------------------------------- the cases


def version(c: Client, ns: str) -> Obs:
    reply = c.call("GET", "/version")
    git = str(reply.body["gitVersion"])
    return {
        "status": reply.status,
        "major": reply.body["major"],
        "minor": reply.body["minor"],
        "gitVersion": git.split("-")[0].rsplit(".", 1)[0],
    }


def create_get_errors(c: Client, ns: str) -> Obs:
    base = f"/api/v1/namespaces/{ns}/configmaps"
    first = c.call("POST", base, configmap("cm", {"k": "v"}))
    again = c.call("POST", base, configmap("cm"))
    got = c.call("GET", f"{base}/cm")
    missing = c.call("GET", f"{base}/missing")
    bad_name = c.call("POST", base, configmap("Bad_Name"))
    deleted = c.call("DELETE", f"{base}/cm")
    return {
        "create": (
            first.status,
            first.body["metadata"]["name"],
            bool(first.body["metadata"]["uid"]),
        ),
        "again": (again.status, again.body["reason"], again.body["message"]),
        "get": (got.status, got.body["data"]),
        "missing": (missing.status, missing.body["reason"], missing.body["message"]),
        "bad_name": (bad_name.status, bad_name.body["reason"], causes(bad_name)),
        "delete": (deleted.status, deleted.body["kind"], deleted.body.get("status")),
        "after_delete": c.call("GET", f"{base}/cm").status,
    }


def list_selectors(c: Client, ns: str) -> Obs:
    base = f"/api/v1/namespaces/{ns}/configmaps"
    c.create(base, configmap("a", tier="web"))
    c.create(base, configmap("b", tier="db"))
    c.create(base, configmap("c", tier="web", skip="yes"))

    def names(query: str) -> list[str]:
        body = c.get(f"{base}?{query}")
        return sorted(i["metadata"]["name"] for i in body["items"])

    listing = c.get(base)
    return {
        "list": (
            listing["kind"],
            listing["apiVersion"],
            bool(listing["metadata"]["resourceVersion"]),
        ),
        "set": names("labelSelector=" + quote("tier in (web,db),!skip")),
        "not_equal": names("labelSelector=" + quote("tier!=web")),
        "exists": names("labelSelector=skip"),
        "field": names("fieldSelector=metadata.name%3Dc"),
        "both": names("labelSelector=tier%3Dweb&fieldSelector=metadata.name!%3Dc"),
    }


def json_merge_patch(c: Client, ns: str) -> Obs:
    base = f"/api/v1/namespaces/{ns}/configmaps"
    c.create(base, configmap("cm", {"a": "1", "b": "2"}, keep="yes", drop="yes"))
    reply = c.patch(
        f"{base}/cm", {"data": {"a": None, "c": "3"}, "metadata": {"labels": {"drop": None}}}
    )
    missing = c.patch(f"{base}/nope", {"data": {"a": "1"}})
    return {
        "status": reply.status,
        "data": reply.body["data"],
        "labels": reply.body["metadata"]["labels"],
        "missing": missing.status,
    }


def strategic_merge_patch(c: Client, ns: str) -> Obs:
    base = f"/apis/apps/v1/namespaces/{ns}/deployments"
    c.create(base, deployment("web"))
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "main", "env": [{"name": "B", "value": "2"}]},
                        {"name": "side", "image": "busybox:1.36"},
                    ]
                }
            }
        }
    }
    reply = c.patch(f"{base}/web", patch, "strategic-merge")
    containers = reply.body["spec"]["template"]["spec"]["containers"]
    delete = c.patch(
        f"{base}/web",
        {"spec": {"template": {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}}},
        "strategic-merge",
    )
    return {
        "status": reply.status,
        "containers": [(x["name"], x["image"]) for x in containers],
        "env": [(e["name"], e["value"]) for e in containers[0]["env"]],
        "generation": reply.body["metadata"]["generation"],
        "after_delete": [x["name"] for x in delete.body["spec"]["template"]["spec"]["containers"]],
    }


def deployment_generation(c: Client, ns: str) -> Obs:
    path = f"/apis/apps/v1/namespaces/{ns}/deployments/web"
    created = c.create(f"/apis/apps/v1/namespaces/{ns}/deployments", deployment("web"))
    steps = {"create": created["metadata"]["generation"]}
    for step, patch in (
        ("label", {"metadata": {"labels": {"x": "1"}}}),
        ("annotation", {"metadata": {"annotations": {"note": "1"}}}),
        ("annotation_again", {"metadata": {"annotations": {"note": "1"}}}),
        ("spec", {"spec": {"replicas": 2}}),
        ("status_in_main", {"status": {"replicas": 7}}),
    ):
        reply = c.patch(path, patch)
        assert reply.status == 200, (step, reply)
        steps[step] = reply.body["metadata"]["generation"]
    return steps


def custom_resource_generation(c: Client, ns: str) -> Obs:
    base = f"{CR_BASE}/namespaces/{ns}/widgets"
    created = c.create(base, widget("w", {"size": 1}))
    steps = {"create": created["metadata"]["generation"]}
    for step, sub, patch in (
        ("label", "", {"metadata": {"labels": {"x": "1"}}}),
        ("annotation", "", {"metadata": {"annotations": {"note": "1"}}}),
        ("status", "/status", {"status": {"ready": True}}),
        ("spec", "", {"spec": {"size": 2}}),
    ):
        reply = c.patch(f"{base}/w{sub}", patch)
        assert reply.status == 200, (step, reply)
        steps[step] = reply.body["metadata"]["generation"]
    return steps


def status_subresource(c: Client, ns: str) -> Obs:
    path = f"/apis/apps/v1/namespaces/{ns}/deployments/web"
    created = c.create(f"/apis/apps/v1/namespaces/{ns}/deployments", deployment("web"))
    main = dict(created)
    main["status"] = {"replicas": 5}
    main["spec"] = dict(main["spec"], replicas=2)
    via_main = c.call("PUT", path, main)
    status = dict(via_main.body)
    status["spec"] = dict(status["spec"], replicas=9)
    status["status"] = {"replicas": 2, "observedGeneration": 2}
    via_status = c.call("PUT", f"{path}/status", status)
    return {
        "main": (
            via_main.status,
            via_main.body["spec"]["replicas"],
            via_main.body.get("status", {}).get("replicas"),
            via_main.body["metadata"]["generation"],
        ),
        "status": (
            via_status.status,
            via_status.body["spec"]["replicas"],
            via_status.body["status"],
            via_status.body["metadata"]["generation"],
        ),
    }


def scale_subresource(c: Client, ns: str) -> Obs:
    base = f"/apis/apps/v1/namespaces/{ns}/deployments"
    c.create(base, deployment("web"))
    scale = c.get(f"{base}/web/scale")
    scale["spec"] = {"replicas": 3}
    put = c.call("PUT", f"{base}/web/scale", scale)
    patched = c.patch(f"{base}/web/scale", {"spec": {"replicas": 4}})
    negative = c.patch(f"{base}/web/scale", {"spec": {"replicas": -1}})
    after = c.get(f"{base}/web")
    return {
        "scale": (scale["apiVersion"], scale["kind"], scale["status"].get("selector")),
        "put": (put.status, put.body["spec"]["replicas"]),
        "patch": (patched.status, patched.body["spec"]["replicas"]),
        "negative": (negative.status, causes(negative)),
        "deployment": (after["spec"]["replicas"], after["metadata"]["generation"]),
    }


def dry_run(c: Client, ns: str) -> Obs:
    base = f"/api/v1/namespaces/{ns}/configmaps"
    created = c.call("POST", f"{base}?dryRun=All", configmap("cm", {"k": "v"}))
    missing = c.call("GET", f"{base}/cm").status
    c.create(base, configmap("cm", {"k": "v"}))
    patched = c.patch(f"{base}/cm?dryRun=All", {"data": {"k": "w"}})
    deleted = c.call("DELETE", f"{base}/cm?dryRun=All")
    after = c.get(f"{base}/cm")
    return {
        "create": (created.status, created.body["data"]),
        "missing_after_create": missing,
        "patch": (patched.status, patched.body["data"]),
        "delete": deleted.status,
        "stored": after["data"],
    }


def put_without_resource_version(c: Client, ns: str) -> Obs:
    cms = f"/api/v1/namespaces/{ns}/configmaps"
    created = c.create(cms, configmap("cm", {"k": "v"}))
    plain = c.call("PUT", f"{cms}/cm", configmap("cm", {"k": "w"}))
    stale = configmap("cm", {"k": "x"})
    stale["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
    conflict = c.call("PUT", f"{cms}/cm", stale)
    crs = f"{CR_BASE}/namespaces/{ns}/widgets"
    c.create(crs, widget("w", {"size": 1}))
    custom = c.call("PUT", f"{crs}/w", widget("w", {"size": 2}))
    return {
        "configmap": (plain.status, plain.body["data"]),
        "stale": (conflict.status, conflict.body["reason"]),
        "custom": (custom.status, custom.body.get("reason"), causes(custom)),
    }


def server_side_apply(c: Client, ns: str) -> Obs:
    path = f"/api/v1/namespaces/{ns}/configmaps/cm"
    ctype = "application/apply-patch+yaml"
    body = json.dumps(configmap("cm", {"k": "v"}))
    without = c.call("PATCH", path, body, ctype)
    created = c.call("PATCH", f"{path}?fieldManager=conformance", body, ctype)
    return {
        "without_field_manager": (
            without.status,
            without.body.get("reason"),
            without.body.get("message"),
        ),
        "with_field_manager": (created.status, created.body.get("data")),
    }


def server_side_apply_managed_fields(c: Client, ns: str) -> Obs:
    path = f"/api/v1/namespaces/{ns}/configmaps/cm?fieldManager=conformance"
    body = json.dumps(configmap("cm", {"k": "v"}))
    created = c.call("PATCH", path, body, "application/apply-patch+yaml")
    managed = created.body["metadata"].get("managedFields") or []
    return {"managers": [(m["manager"], m["operation"]) for m in managed]}


def pruning_and_warning(c: Client, ns: str) -> Obs:
    base = f"{CR_BASE}/namespaces/{ns}/widgets"
    warn = c.call("POST", base, widget("w", {"size": 1, "colour": "red"}))
    stored = c.get(f"{base}/w")
    strict = c.call(
        "POST", f"{base}?fieldValidation=Strict", widget("v", {"size": 1, "colour": "red"})
    )
    ignore = c.call(
        "POST", f"{base}?fieldValidation=Ignore", widget("u", {"size": 1, "colour": "red"})
    )
    return {
        "warn": (warn.status, warn.warnings),
        "pruned": "colour" not in stored["spec"],
        "strict": (strict.status, strict.body.get("reason"), strict.body.get("message")),
        "ignore": (ignore.status, ignore.warnings),
    }


def crd_validation(c: Client, ns: str) -> Obs:
    base = f"{CR_BASE}/namespaces/{ns}/widgets"
    bad = c.call("POST", base, widget("w", {"size": -1}))
    wrong_type = c.call("POST", base, widget("v", {"size": "big"}))
    return {
        "minimum": (bad.status, bad.body["reason"], causes(bad)),
        "type": (wrong_type.status, wrong_type.body["reason"], causes(wrong_type)),
    }


def crd_defaulting(c: Client, ns: str) -> Obs:
    base = f"{CR_BASE}/namespaces/{ns}/widgets"
    created = c.create(base, widget("w", {"size": 1}))
    explicit = c.create(base, widget("v", {"size": 1, "mode": "manual"}))
    null = c.create(base, widget("u", {"size": 1, "mode": None}))
    removed = c.patch(f"{base}/v", {"spec": {"mode": None}})
    return {
        "absent": created["spec"],
        "explicit": explicit["spec"],
        "null": null["spec"],
        "removed_by_patch": (removed.status, removed.body["spec"]),
    }


def gpu_fraction(c: Client, ns: str) -> Obs:
    gpu = {"nvidia.com/gpu": "0.5"}
    reply = c.call(
        "POST", f"/api/v1/namespaces/{ns}/pods", pod("p", {"limits": gpu, "requests": gpu})
    )
    return {"status": reply.status, "reason": reply.body.get("reason"), "causes": causes(reply)}


def gpu_request_without_limit(c: Client, ns: str) -> Obs:
    reply = c.call(
        "POST", f"/api/v1/namespaces/{ns}/pods", pod("p", {"requests": {"nvidia.com/gpu": "1"}})
    )
    mismatch = c.call(
        "POST",
        f"/api/v1/namespaces/{ns}/pods",
        pod("q", {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "2"}}),
    )
    return {
        "without_limit": (reply.status, causes(reply)),
        "request_differs": (mismatch.status, causes(mismatch)),
    }


def gpu_limit_only(c: Client, ns: str) -> Obs:
    created = c.create(
        f"/api/v1/namespaces/{ns}/pods", pod("p", {"limits": {"nvidia.com/gpu": "1"}})
    )
    return {"resources": created["spec"]["containers"][0]["resources"]}


def quantity_canonical(c: Client, ns: str) -> Obs:
    resources = {
        "requests": {"cpu": "1000m", "memory": "1024Mi"},
        "limits": {"cpu": "1.5", "memory": "1.5Gi"},
    }
    created = c.create(f"/api/v1/namespaces/{ns}/pods", pod("p", resources))
    return {"resources": created["spec"]["containers"][0]["resources"]}


def deployment_template_resources(c: Client, ns: str) -> Obs:
    base = f"/apis/apps/v1/namespaces/{ns}/deployments"
    requests = {
        "cpu": "0.1",
        "memory": "1e3",
        "ephemeral-storage": "0.5Ki",
        "hugepages-2Mi": "2048Ki",
        "example.com/widget": "3",
    }
    good = deployment("web")
    good["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "requests": requests,
        "limits": {
            "memory": "1025Mi",
            "cpu": "2e3",
            "example.com/widget": "3",
            "hugepages-2Mi": "2Mi",
        },
    }
    created = c.create(base, good)
    bad = deployment("bad")
    bad["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "requests": {"nvidia.com/gpu": "0.5"}
    }
    hugepages = deployment("huge")
    hugepages["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "requests": {"hugepages-2Mi": "2Mi", "memory": "64Mi"},
        "limits": {"memory": "64Mi"},
    }
    huge = c.call("POST", base, hugepages)
    refused = c.call("POST", base, bad)
    return {
        "resources": created["spec"]["template"]["spec"]["containers"][0]["resources"],
        "fraction": (refused.status, causes(refused)),
        "hugepages_without_limit": (huge.status, causes(huge)),
    }


def namespace_deletion(c: Client, ns: str) -> Obs:
    name = f"gone-{uuid.uuid4().hex[:6]}"
    c.create(
        "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    c.create(f"/api/v1/namespaces/{name}/configmaps", configmap("cm"))
    deleted = c.call("DELETE", f"/api/v1/namespaces/{name}")
    after = c.call("GET", f"/api/v1/namespaces/{name}")
    create_in = c.call("POST", f"/api/v1/namespaces/{name}/configmaps", configmap("new"))
    return {
        "delete": (deleted.status, deleted.body.get("status", {}).get("phase")),
        "get": (after.status, after.body["status"]["phase"] if after.status == 200 else None),
        "create_inside": (create_in.status, create_in.body.get("reason")),
    }


def hpa_validation(c: Client, ns: str) -> Obs:
    base = f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers"
    zero_max = c.call("POST", base, hpa("a", 1, 0))
    zero_min = c.call("POST", base, hpa("b", 0, 3))
    inverted = c.call("POST", base, hpa("c", 5, 3))
    ok = c.call("POST", base, hpa("d", 1, 3))
    return {
        "max_zero": (zero_max.status, causes(zero_max)),
        "min_zero": (zero_min.status, causes(zero_min)),
        "min_above_max": (inverted.status, causes(inverted)),
        "valid": (ok.status, ok.body["spec"]["metrics"]),
    }


def watch_initial_events(c: Client, ns: str) -> Obs:
    base = f"/api/v1/namespaces/{ns}/configmaps"
    c.create(base, configmap("a"))
    c.create(base, configmap("b"))
    events = c.watch(
        f"{base}?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"
        "&allowWatchBookmarks=true&timeoutSeconds=10",
        lambda e: e["type"] == "BOOKMARK",
    )
    added = sorted(e["object"]["metadata"]["name"] for e in events if e["type"] == "ADDED")
    last = events[-1]
    return {
        "added": added,
        "last": (last["type"], last["object"]["metadata"].get("annotations")),
        "bookmark_has_rv": bool(last["object"]["metadata"].get("resourceVersion")),
    }


def watch_resume(c: Client, ns: str) -> Obs:
    base = f"/api/v1/namespaces/{ns}/configmaps"
    c.create(base, configmap("before"))
    rv = c.get(base)["metadata"]["resourceVersion"]
    c.create(base, configmap("after", tier="x"))
    c.patch(f"{base}/after", {"data": {"k": "v"}})
    c.call("DELETE", f"{base}/after")
    events = c.watch(
        f"{base}?watch=1&resourceVersion={rv}&timeoutSeconds=10", lambda e: e["type"] == "DELETED"
    )
    return {"events": [(e["type"], e["object"]["metadata"]["name"]) for e in events]}


def watch_from_old_version(c: Client, ns: str) -> Obs:
    base = f"/api/v1/namespaces/{ns}/configmaps"
    # The version just before this case, not "1": on an API server that has served a
    # whole test session, version 1 is long out of its watch cache's window.
    start = c.get(base)["metadata"]["resourceVersion"]
    c.create(base, configmap("a"))
    old = c.get(base)["metadata"]["resourceVersion"]
    uncompacted = c.watch(
        f"{base}?watch=1&resourceVersion={start}&timeoutSeconds=5",
        lambda e: e["type"] == "ADDED",
    )
    c.create(base, configmap("b"))
    c.compact()
    c.create(base, configmap("c"))
    recent = c.watch(
        f"{base}?watch=1&resourceVersion={old}&timeoutSeconds=5", lambda e: e["type"] == "ADDED"
    )
    events = c.watch(
        f"{base}?watch=1&resourceVersion={start}&timeoutSeconds=5",
        lambda e: e["type"] == "ERROR",
    )
    last = events[-1] if events else {"type": "none", "object": {}}
    return {
        "uncompacted": [(e["type"], e["object"]["metadata"]["name"]) for e in uncompacted],
        "recent_after_compaction": [
            (e["type"], e["object"].get("metadata", {}).get("name")) for e in recent
        ],
        "type": last["type"],
        "code": last["object"].get("code"),
        "reason": last["object"].get("reason"),
    }


@dataclass(frozen=True)
class Case:
    run: Callable[[Client, str], Obs]
    expected: Obs
    emulator_differs: str = ""


RFC1123 = (
    'Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain must consist of lower case '
    "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
    "character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
GPU_LIMITS = "spec.containers[0].resources.limits"
GPU_REQUESTS = "spec.containers[0].resources.requests"
NOT_INTEGER = 'Invalid value: "500m": must be an integer'
NO_MANAGED_FIELDS = "no field ownership: managedFields is never written"

CASES: dict[str, Case] = {
    "version": Case(version, {"status": 200, "major": "1", "minor": "36", "gitVersion": "v1.36"}),
    "create-get-delete-errors": Case(
        create_get_errors,
        {
            "create": (201, "cm", True),
            "again": (409, "AlreadyExists", 'configmaps "cm" already exists'),
            "get": (200, {"k": "v"}),
            "missing": (404, "NotFound", 'configmaps "missing" not found'),
            "bad_name": (422, "Invalid", [("metadata.name", RFC1123)]),
            "delete": (200, "Status", "Success"),
            "after_delete": 404,
        },
    ),
    "list-label-and-field-selectors": Case(
        list_selectors,
        {
            "list": ("ConfigMapList", "v1", True),
            "set": ["a", "b"],
            "not_equal": ["b"],
            "exists": ["c"],
            "field": ["c"],
            "both": ["a"],
        },
    ),
    "json-merge-patch": Case(
        json_merge_patch,
        {"status": 200, "data": {"b": "2", "c": "3"}, "labels": {"keep": "yes"}, "missing": 404},
    ),
    "strategic-merge-patch-deployment": Case(
        strategic_merge_patch,
        {
            "status": 200,
            "containers": [("main", "nginx:1.27"), ("side", "busybox:1.36")],
            "env": [("B", "2"), ("A", "1")],
            "generation": 2,
            "after_delete": ["main"],
        },
        "strategic merge puts new list elements after the existing ones; kube-apiserver "
        "puts the patch's elements first (env [B, A], not [A, B])",
    ),
    "deployment-generation": Case(
        deployment_generation,
        {
            "create": 1,
            "label": 1,
            "annotation": 2,
            "annotation_again": 2,
            "spec": 3,
            "status_in_main": 3,
        },
    ),
    "custom-resource-generation": Case(
        custom_resource_generation,
        {"create": 1, "label": 1, "annotation": 1, "status": 1, "spec": 2},
    ),
    "status-subresource": Case(
        status_subresource,
        {
            "main": (200, 2, None, 2),
            "status": (200, 2, {"observedGeneration": 2, "replicas": 2}, 2),
        },
    ),
    "scale-subresource": Case(
        scale_subresource,
        {
            "scale": ("autoscaling/v1", "Scale", "app=web"),
            "put": (200, 3),
            "patch": (200, 4),
            "negative": (
                422,
                [("spec.replicas", "Invalid value: -1: must be greater than or equal to 0")],
            ),
            "deployment": (4, 3),
        },
    ),
    "dry-run": Case(
        dry_run,
        {
            "create": (201, {"k": "v"}),
            "missing_after_create": 404,
            "patch": (200, {"k": "w"}),
            "delete": 200,
            "stored": {"k": "v"},
        },
    ),
    "put-without-resource-version": Case(
        put_without_resource_version,
        {
            "configmap": (200, {"k": "w"}),
            "stale": (409, "Conflict"),
            "custom": (
                422,
                "Invalid",
                [("metadata.resourceVersion", "Invalid value: 0: must be specified for an update")],
            ),
        },
    ),
    "server-side-apply-field-manager": Case(
        server_side_apply,
        {
            "without_field_manager": (
                422,
                "Invalid",
                'PatchOptions.meta.k8s.io "" is invalid: '
                "fieldManager: Required value: is required for apply patch",
            ),
            "with_field_manager": (201, {"k": "v"}),
        },
    ),
    "server-side-apply-managed-fields": Case(
        server_side_apply_managed_fields,
        {"managers": [("conformance", "Apply")]},
        NO_MANAGED_FIELDS,
    ),
    "pruning-and-field-validation": Case(
        pruning_and_warning,
        {
            "warn": (201, ['299 - "unknown field \\"spec.colour\\""']),
            "pruned": True,
            "strict": (
                400,
                "BadRequest",
                'Widget in version "v1" cannot be handled as a Widget: '
                'strict decoding error: unknown field "spec.colour"',
            ),
            "ignore": (201, []),
        },
    ),
    "crd-schema-validation": Case(
        crd_validation,
        {
            "minimum": (
                422,
                "Invalid",
                [
                    (
                        "spec.size",
                        "Invalid value: -1: spec.size in body should be greater than or equal to 0",
                    )
                ],
            ),
            "type": (
                422,
                "Invalid",
                [
                    (
                        "spec.size",
                        'Invalid value: "string": spec.size in body must be of type integer: '
                        '"string"',
                    )
                ],
            ),
        },
    ),
    "crd-defaulting": Case(
        crd_defaulting,
        {
            "absent": {"mode": "auto", "size": 1},
            "explicit": {"mode": "manual", "size": 1},
            "null": {"mode": "auto", "size": 1},
            "removed_by_patch": (200, {"mode": "auto", "size": 1}),
        },
    ),
    "gpu-fraction": Case(
        gpu_fraction,
        {
            "status": 422,
            "reason": "Invalid",
            "causes": [
                (f"{GPU_LIMITS}[nvidia.com/gpu]", NOT_INTEGER),
                (f"{GPU_REQUESTS}[nvidia.com/gpu]", NOT_INTEGER),
            ],
        },
    ),
    "gpu-request-without-limit": Case(
        gpu_request_without_limit,
        {
            "without_limit": (
                422,
                [
                    (
                        GPU_LIMITS,
                        "Required value: Limit must be set for non overcommitable resources",
                    )
                ],
            ),
            "request_differs": (
                422,
                [(GPU_REQUESTS, 'Invalid value: "1": must be equal to nvidia.com/gpu limit of 2')],
            ),
        },
    ),
    "pod-requests-default-to-limits": Case(
        gpu_limit_only,
        {"resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}},
    ),
    "quantity-canonical-form": Case(
        quantity_canonical,
        {
            "resources": {
                "limits": {"cpu": "1500m", "memory": "1536Mi"},
                "requests": {"cpu": "1", "memory": "1Gi"},
            }
        },
    ),
    "deployment-template-resources": Case(
        deployment_template_resources,
        {
            "resources": {
                "limits": {
                    "cpu": "2e3",
                    "example.com/widget": "3",
                    "hugepages-2Mi": "2Mi",
                    "memory": "1025Mi",
                },
                "requests": {
                    "cpu": "100m",
                    "ephemeral-storage": "512",
                    "example.com/widget": "3",
                    "hugepages-2Mi": "2Mi",
                    "memory": "1e3",
                },
            },
            "fraction": (
                422,
                [
                    (
                        "spec.template.spec.containers[0].resources.limits",
                        "Required value: Limit must be set for non overcommitable resources",
                    ),
                    (
                        "spec.template.spec.containers[0].resources.requests[nvidia.com/gpu]",
                        NOT_INTEGER,
                    ),
                ],
            ),
            "hugepages_without_limit": (
                422,
                [
                    (
                        "spec.template.spec.containers[0].resources.limits",
                        "Required value: Limit must be set for non overcommitable resources",
                    )
                ],
            ),
        },
    ),
    "namespace-deletion": Case(
        namespace_deletion,
        {
            "delete": (200, "Terminating"),
            "get": (200, "Terminating"),
            "create_inside": (403, "Forbidden"),
        },
        "namespace deletion is immediate (no namespace controller to finish it); "
        "kube-apiserver keeps the Namespace Terminating until its content is gone",
    ),
    "hpa-validation-messages": Case(
        hpa_validation,
        {
            "max_zero": (
                422,
                [
                    (
                        "spec.maxReplicas",
                        "Invalid value: 0: must be greater than or equal to `minReplicas`",
                    ),
                    ("spec.maxReplicas", "Required value: must be set and greater than 0"),
                ],
            ),
            "min_zero": (
                422,
                [
                    (
                        "spec.metrics",
                        "Forbidden: must specify at least one Object or External metric to "
                        "support scaling to zero replicas",
                    ),
                    ("spec.minReplicas", "Invalid value: 0: must be greater than or equal to 1"),
                ],
            ),
            "min_above_max": (
                422,
                [
                    (
                        "spec.maxReplicas",
                        "Invalid value: 3: must be greater than or equal to `minReplicas`",
                    )
                ],
            ),
            "valid": (
                201,
                [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": 80},
                        },
                    }
                ],
            ),
        },
    ),
    "watch-initial-events-bookmark": Case(
        watch_initial_events,
        {
            "added": ["a", "b"],
            "last": ("BOOKMARK", {"k8s.io/initial-events-end": "true"}),
            "bookmark_has_rv": True,
        },
    ),
    "watch-resume-from-list": Case(
        watch_resume,
        {"events": [("ADDED", "after"), ("MODIFIED", "after"), ("DELETED", "after")]},
    ),
    "watch-from-compacted-version": Case(
        watch_from_old_version,
        {
            "uncompacted": [("ADDED", "a")],
            "recent_after_compaction": [("ADDED", "b")],
            "type": "ADDED",
            "code": None,
            "reason": None,
        },
        "compact() drops the watch history at once, so a watch from any older "
        "resourceVersion gets 410 Expired; kube-apiserver keeps serving such watches from "
        "its watch cache after etcd compacts, and answers 410 only once the cache window "
        "has moved past the version",
    ),
}


# --------------------------------------------------------------------------- the backends


@contextmanager
def running_emulator() -> Iterator[Client]:
    """The emulator on its own event loop in a thread, reached over plain HTTP."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="emulator", daemon=True)
    thread.start()
    emulator = Emulator()
    try:
        url = asyncio.run_coroutine_threadsafe(emulator.start(), loop).result(10)

        async def compact() -> None:
            emulator.compact()

        yield Client(
            url, None, lambda: asyncio.run_coroutine_threadsafe(compact(), loop).result(10)
        )
    finally:
        asyncio.run_coroutine_threadsafe(emulator.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def real_client(env: Envtest) -> Client:
    def compact() -> None:
        """Compact etcd at its current revision through its JSON gateway."""
        etcd = http.client.HTTPConnection("127.0.0.1", env.etcd_port, timeout=10)
        try:
            etcd.request("POST", "/v3/kv/range", body=json.dumps({"key": "AA=="}))
            revision = json.loads(etcd.getresponse().read())["header"]["revision"]
            etcd.request(
                "POST",
                "/v3/kv/compaction",
                body=json.dumps({"revision": revision, "physical": True}),
            )
            reply = etcd.getresponse()
            assert reply.status == 200, reply.read()
            reply.read()
        finally:
            etcd.close()

    return Client(env.server, env._ssl_context(), compact)


def install_crd(client: Client) -> None:
    reply = client.call("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", CRD)
    assert reply.status in (201, 409), reply
    deadline = time.monotonic() + 15
    while client.call("GET", f"{CR_BASE}/widgets").status != 200:
        assert time.monotonic() < deadline, "the Widget CRD was not served within 15 s"
        time.sleep(0.1)


def run_case(client: Client, case: Case) -> Obs:
    ns = f"conf-{uuid.uuid4().hex[:8]}"
    client.create(
        "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
    )
    return case.run(client, ns)


@pytest.fixture(scope="module")
def real(apiserver: Envtest) -> Client:
    client = real_client(apiserver)
    install_crd(client)
    return client


@pytest.fixture(scope="module")
def emulator() -> Iterator[Client]:
    with running_emulator() as client:
        install_crd(client)
        yield client


def _params() -> list[Any]:
    params = []
    for name, case in CASES.items():
        params.append(pytest.param(name, "real", id=f"{name}-real"))
        marks = (
            [pytest.mark.xfail(strict=True, reason=case.emulator_differs)]
            if case.emulator_differs
            else []
        )
        params.append(pytest.param(name, "emulator", id=f"{name}-emulator", marks=marks))
    return params


@pytest.mark.parametrize(("case", "backend"), _params())
def test_conformance(case: str, backend: str, request: pytest.FixtureRequest) -> None:
    client: Client = request.getfixturevalue("real" if backend == "real" else "emulator")
    assert run_case(client, CASES[case]) == CASES[case].expected
