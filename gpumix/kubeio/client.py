"""The raw-JSON Kubernetes API client of gpumix, on kubernetes-asyncio's ``ApiClient``.

kubernetes-asyncio does the configuration (kubeconfig, in-cluster service
account, exec plugins, token refresh) and the connection pool; every request is
made with ``_preload_content=False`` so bodies are decoded here into plain
dicts (generated model classes are slow to build for thousands of objects and
would leak library types upward).  No kubernetes-asyncio model type leaves this
module, and every failure is one error type, :class:`ApiError`.

Every call is counted by verb (``calls``), so benchmarks and logs can report the
API calls a pass makes.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

Json = dict[str, Any]

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
MAX_PAGES = 100_000


def resource_path(
    group: str, version: str, plural: str, namespace: str | None = None, name: str | None = None
) -> str:
    """``/api/v1/...`` or ``/apis/<group>/<version>/...``, names quoted."""
    base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    if namespace:
        base += f"/namespaces/{quote(namespace, safe='')}"
    base += f"/{plural}"
    if name:
        base += f"/{quote(name, safe='')}"
    return base


class ApiError(Exception):
    """The API server answered with an error ``Status`` (``code`` 0: it could not be reached)."""

    def __init__(self, code: int, message: str, reason: str = "") -> None:
        super().__init__(f"{code} {reason}: {message}" if code else message)
        self.code = code
        self.reason = reason
        self.message = message

    @property
    def unreachable(self) -> bool:
        return self.code == 0


def _error_of(status: int, raw: bytes) -> ApiError:
    message, reason = raw.decode("utf-8", "replace")[:500], ""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict):
        message = str(body.get("message", message))
        reason = str(body.get("reason", ""))
    return ApiError(status, message, reason)


def _event_of(path: str, line: bytes) -> Json | None:
    if not line.strip():
        return None
    try:
        event = json.loads(line)
    except ValueError:
        raise ApiError(500, f"watch {path}: undecodable event") from None
    if not isinstance(event, dict):
        return None
    if event.get("type") == "ERROR":
        status = event.get("object")
        status = status if isinstance(status, dict) else {}
        raise ApiError(
            int(status.get("code") or 500),
            str(status.get("message", "watch error")),
            str(status.get("reason", "")),
        )
    return event


class KubeClient:
    """GET/POST/PUT/PATCH/DELETE, paged lists and watch streams, all in plain JSON.

    ``user_agent`` names the component: kube-apiserver names the field manager of
    non-apply writes after it.
    """

    def __init__(
        self,
        api: k8s_client.ApiClient,
        request_timeout_s: float = 30.0,
        *,
        user_agent: str = "gpumix/0.1.0",
    ) -> None:
        api.user_agent = user_agent
        self._api = api
        self.request_timeout_s = request_timeout_s
        self.calls: Counter[str] = Counter()
        """Requests sent, by verb (``get``, ``list``, ``watch``, ``put``, ...)."""

    @classmethod
    async def connect(
        cls, kubeconfig: str | None = None, *, user_agent: str = "gpumix/0.1.0"
    ) -> KubeClient:
        """From ``kubeconfig``; with None, the in-cluster service account, else
        the default kubeconfig (``$KUBECONFIG`` / ``~/.kube/config``)."""
        configuration = k8s_client.Configuration()
        try:
            if kubeconfig is None:
                try:
                    k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                        client_configuration=configuration
                    )
                except k8s_config.ConfigException:
                    await k8s_config.load_kube_config(client_configuration=configuration)
            else:
                await k8s_config.load_kube_config(
                    config_file=kubeconfig, client_configuration=configuration
                )
        except (k8s_config.ConfigException, OSError, ValueError) as exc:
            where = kubeconfig or "in-cluster config or the default kubeconfig"
            raise ApiError(0, f"cannot load {where}: {exc}") from None
        return cls(k8s_client.ApiClient(configuration), user_agent=user_agent)

    async def close(self) -> None:
        await self._api.close()

    async def _open(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None,
        body: object,
        content_type: str,
        timeout: aiohttp.ClientTimeout,
        verb: str,
    ) -> aiohttp.ClientResponse:
        self.calls[verb] += 1
        headers = {"Accept": JSON}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            response: aiohttp.ClientResponse = await self._api.call_api(
                path,
                method,
                query_params=list((query or {}).items()),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout,
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ApiError(0, f"{method} {path}: API server unreachable: {exc!r}") from None
        return response

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: object = None,
        content_type: str = JSON,
        verb: str | None = None,
    ) -> Json:
        """One call; the decoded JSON object, ``{}`` for an empty body, else ``ApiError``."""
        timeout = aiohttp.ClientTimeout(total=self.request_timeout_s)
        response = await self._open(
            method, path, query, body, content_type, timeout, verb or method.lower()
        )
        try:
            raw = await response.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ApiError(0, f"{method} {path}: reading the response failed: {exc!r}") from None
        finally:
            response.release()
        if not 200 <= response.status < 300:
            raise _error_of(response.status, raw)
        if not raw.strip():
            return {}
        try:
            data = json.loads(raw)
        except ValueError:
            raise ApiError(response.status, f"{method} {path}: response is not JSON") from None
        if not isinstance(data, dict):
            raise ApiError(response.status, f"{method} {path}: response is not an object")
        return data

    async def get(self, path: str, query: Mapping[str, str] | None = None) -> Json:
        return await self.request("GET", path, query=query)

    async def get_or_none(self, path: str) -> Json | None:
        """The object, or None when it does not exist (404)."""
        try:
            return await self.get(path)
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    async def list(
        self, path: str, *, page_size: int = 500, query: Mapping[str, str] | None = None
    ) -> tuple[list[Json], str]:
        """Every item (pages followed through ``continue``) and the list's resourceVersion."""
        items: list[Json] = []
        token = ""
        version = ""
        for _ in range(MAX_PAGES):
            q = {**(query or {}), "limit": str(page_size)}
            if token:
                q["continue"] = token
            page = await self.request("GET", path, query=q, verb="list")
            items.extend(i for i in page.get("items") or [] if isinstance(i, dict))
            meta = page.get("metadata")
            meta = meta if isinstance(meta, dict) else {}
            version = str(meta.get("resourceVersion") or version)
            token = str(meta.get("continue") or "")
            if not token:
                break
        return items, version

    async def watch(
        self, path: str, query: Mapping[str, str], timeout_s: float
    ) -> AsyncIterator[Json]:
        """Watch events (``{"type", "object"}``) until the server ends the stream.

        The first event is ``{"type": "OPENED"}``, made here once the server has
        accepted the watch (so callers know the connection is good before any change).

        Raises ``ApiError`` for an error status (410 Gone included) or when the
        connection fails; an ``ERROR`` event is turned into ``ApiError`` too.
        """
        q = dict(query)
        q["watch"] = "true"
        # The server ends the watch after timeoutSeconds; the client gives it a margin,
        # and a silent connection (no event, no bookmark) is dropped after that too.
        timeout = aiohttp.ClientTimeout(total=None, sock_read=timeout_s + 15, connect=15)
        response = await self._open("GET", path, q, None, JSON, timeout, "watch")
        try:
            if response.status != 200:
                raise _error_of(response.status, await response.read())
            yield {"type": "OPENED"}
            buffer = b""
            while True:
                # Lines are split here: aiohttp's readline() refuses lines over 128 KiB,
                # and a watch event carries a whole object (up to 1.5 MiB).
                try:
                    chunk = await response.content.readany()
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    raise ApiError(0, f"watch {path} broke: {exc!r}") from None
                if not chunk:
                    return
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    event = _event_of(path, line)
                    if event is not None:
                        yield event
        finally:
            response.release()
