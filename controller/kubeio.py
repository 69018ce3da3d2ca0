"""Raw JSON access to the Kubernetes API through a kubernetes-asyncio ``ApiClient``.

The controller reads plain JSON (no generated model classes: they are slow to
build for thousands of objects and would leak library types upward).  Every
call is counted by verb, so the benchmark can report API calls per cycle.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

Obj = dict[str, Any]

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"


class KubeError(Exception):
    """A non-2xx answer from the API server (``status`` 0: no answer at all)."""

    def __init__(self, status: int, reason: str, message: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message


USER_AGENT = "gpumix-controller/0.1.0"


@dataclass(frozen=True, slots=True)
class ListResult:
    items: list[Obj]
    resource_version: str


def resource_path(
    group: str, version: str, plural: str, namespace: str | None = None, name: str | None = None
) -> str:
    base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    if namespace:
        base += f"/namespaces/{quote(namespace, safe='')}"
    base += f"/{plural}"
    if name:
        base += f"/{quote(name, safe='')}"
    return base


class KubeIO:
    """Thin async JSON client; one per controller."""

    def __init__(self, api_client: Any, *, timeout_s: float = 30.0) -> None:
        self._api = api_client
        # kube-apiserver names the field manager of non-apply writes after the user agent
        api_client.user_agent = USER_AGENT
        self._timeout = timeout_s
        self.calls: Counter[str] = Counter()

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = JSON,
        timeout_s: float | None = None,
    ) -> Any:
        """One call; returns the decoded JSON body or raises :class:`KubeError`."""
        verb = "watch" if query and ("watch", "true") in query else method.lower()
        self.calls[verb] += 1
        headers = {"Accept": JSON}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            resp = await self._api.call_api(
                path,
                method,
                query_params=query or [],
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
                _request_timeout=timeout_s or self._timeout,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # connection refused, timeouts, TLS: no answer
            raise KubeError(0, "Unreachable", f"{type(exc).__name__}: {exc}") from exc
        async with resp:
            raw = await resp.read()
            status = int(resp.status)
        data: Any = None
        if raw:
            try:
                data = json.loads(raw)
            except ValueError:
                data = None
        if 200 <= status < 300:
            return data
        reason = data.get("reason", "") if isinstance(data, dict) else ""
        message = (
            data.get("message", "")
            if isinstance(data, dict)
            else raw[:200].decode("utf-8", "replace")
        )
        raise KubeError(status, str(reason or resp.reason or ""), str(message))

    async def list(
        self, path: str, *, label_selector: str = "", field_selector: str = ""
    ) -> ListResult:
        """Every item (pages of 500 followed through ``continue``; at most 1,000 pages)."""
        items: list[Obj] = []
        token = ""
        rv = ""
        for _ in range(1000):
            query = [("limit", "500")]
            if label_selector:
                query.append(("labelSelector", label_selector))
            if field_selector:
                query.append(("fieldSelector", field_selector))
            if token:
                query.append(("continue", token))
            data = await self.request("GET", path, query=query)
            if not isinstance(data, dict):
                break
            items.extend(i for i in data.get("items") or [] if isinstance(i, dict))
            meta = data.get("metadata") or {}
            rv = str(meta.get("resourceVersion", rv))
            token = str(meta.get("continue") or "")
            if not token:
                break
        return ListResult(items, rv)

    async def get(self, path: str) -> Obj | None:
        try:
            data = await self.request("GET", path)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return data if isinstance(data, dict) else None

    async def watch(
        self, path: str, resource_version: str, *, timeout_s: int = 60
    ) -> AsyncIterator[Obj]:
        """Watch events (dicts with ``type`` and ``object``) until the server ends the stream."""
        self.calls["watch"] += 1
        query = [
            ("watch", "true"),
            ("resourceVersion", resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout_s)),
        ]
        try:
            resp = await self._api.call_api(
                path,
                "GET",
                query_params=query,
                header_params={"Accept": JSON},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
                _request_timeout=timeout_s + 10,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise KubeError(0, "Unreachable", f"{type(exc).__name__}: {exc}") from exc
        async with resp:
            if resp.status != 200:
                raise KubeError(int(resp.status), str(resp.reason or ""), "watch refused")
            async for line in resp.content:
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    yield event
