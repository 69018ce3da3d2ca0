"""`Emulator`: the aiohttp server around `Api`, and direct in-process access for tests."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import ssl
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from gpumix.lifecycle import Service

from . import certs
from .admission import AdmissionCall, AdmissionChain, ServiceResolver, default_service_resolver
from .api import DEFAULT_USER, SYSTEM_NAMESPACES, Api, Request, Response, Settings, Target
from .errors import ApiError
from .faults import Faults
from .resources import Registry, ResourceType
from .store import Store, timestamp

Obj = dict[str, Any]
MAX_BODY = 3 * 1024 * 1024 + 1024  # kube-apiserver's request size limit is about 3 MiB


class Emulator(Service):
    """An in-process Kubernetes API server.

    ```
    async with Emulator() as emu:
        async with emu.api_client() as api:
            ...
    ```
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        history_size: int = 50_000,
        require_namespace: bool = True,
        simulate_deployments: bool = False,
        bookmark_interval_s: float = 1.0,
        service_resolver: ServiceResolver = default_service_resolver,
        namespaces: tuple[str, ...] = SYSTEM_NAMESPACES,
    ) -> None:
        self.store = Store(clock=clock, history_size=history_size)
        self.registry = Registry()
        self.faults = Faults()
        self.chain = AdmissionChain(self.store, service_resolver)
        self.settings = Settings(
            require_namespace=require_namespace,
            simulate_deployments=simulate_deployments,
            bookmark_interval_s=bookmark_interval_s,
        )
        self.api = Api(self.store, self.registry, self.chain, self.faults, self.settings)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._host = "127.0.0.1"
        self._port = 0
        self._tls: certs.KeyPair | None = None
        self._ca: certs.KeyPair | None = None
        self._ssl_server: ssl.SSLContext | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._streams: set[web.StreamResponse] = set()
        self._outage_task: asyncio.Task[None] | None = None
        for ns in namespaces:
            self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0, tls: bool = False) -> str:
        """Listen on `host:port` (0 picks a free port); returns `url`."""
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the emulator listens on loopback only")
        self._host = host
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        if tls:
            self._ca = certs.make_ca()
            self._tls = certs.issue(self._ca, ["127.0.0.1", "localhost"])
            self._ssl_server = certs.server_context(self._tls)
        await self._listen(port)
        return self.url

    async def _listen(self, port: int) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(
            self._runner, self._host, port, ssl_context=self._ssl_server, reuse_address=True
        )
        await self._site.start()
        server = self._site._server
        if port == 0 and server is not None:
            sockets = getattr(server, "sockets", None) or []
            port = sockets[0].getsockname()[1]
        self._port = port
        self.settings.server_address = f"{self._host}:{port}"

    async def stop(self) -> None:
        if self._outage_task is not None:
            self._outage_task.cancel()
            self._outage_task = None
        self.store.drop_watchers()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None
        await self.chain.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @property
    def url(self) -> str:
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{self._host}:{self._port}"

    @property
    def ca_pem(self) -> bytes | None:
        """The CA of the serving certificate when started with `tls=True`."""
        return self._ca.cert_pem if self._ca else None

    @property
    def admission_log(self) -> list[AdmissionCall]:
        return self.chain.log

    @property
    def service_resolver(self) -> ServiceResolver:
        return self.chain.resolver

    @service_resolver.setter
    def service_resolver(self, resolver: ServiceResolver) -> None:
        self.chain.resolver = resolver

    # -- client configuration -----------------------------------------------------------

    def _tmpdir(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="gpumix-emulator-")
        return Path(self._tmp.name)

    def kubeconfig(self, path: str | Path | None = None, context: str = "gpumix-emulator") -> Path:
        """Write a kubeconfig for this server (JSON, which is valid YAML); returns its path."""
        cluster: Obj = {"server": self.url}
        if self._ca is not None:
            cluster["certificate-authority-data"] = base64.b64encode(self._ca.cert_pem).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": context,
            "clusters": [{"name": context, "cluster": cluster}],
            "users": [{"name": context, "user": {"token": "gpumix-emulator"}}],
            "contexts": [
                {
                    "name": context,
                    "context": {"cluster": context, "user": context, "namespace": "default"},
                }
            ],
        }
        target = Path(path) if path is not None else self._tmpdir() / "kubeconfig"
        target.write_text(json.dumps(config, indent=2))
        return target

    def api_client(self) -> Any:
        """A kubernetes-asyncio `ApiClient` for this server (close it, or use `async with`)."""
        from kubernetes_asyncio import client

        cfg = client.Configuration(host=self.url)
        cfg.api_key = {"authorization": "gpumix-emulator"}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        if self._ca is not None:
            ca_file = self._tmpdir() / "ca.crt"
            ca_file.write_bytes(self._ca.cert_pem)
            cfg.ssl_ca_cert = str(ca_file)
        return client.ApiClient(configuration=cfg)

    # -- HTTP -----------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.faults.outage() == "refuse":
            if request.transport is not None:
                request.transport.abort()
            raise web.HTTPServiceUnavailable()
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _json_response(
                Response(
                    413,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Failure",
                        "message": "the request is too large",
                        "reason": "RequestEntityTooLarge",
                        "code": 413,
                    },
                )
            )
        user = dict(DEFAULT_USER)
        if request.headers.get("Impersonate-User"):
            user = {
                "username": request.headers["Impersonate-User"],
                "groups": [
                    *request.headers.getall("Impersonate-Group", []),
                    "system:authenticated",
                ],
            }
        req = Request(
            method=request.method,
            path=request.path,
            query={k: request.query[k] for k in request.query},
            body=body,
            content_type=request.headers.get("Content-Type", "application/json"),
            accept=request.headers.get("Accept", "application/json"),
            user=user,
        )
        resp = await self.api.handle(req)
        if resp.stream is None:
            return _json_response(resp)
        stream = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        stream.enable_chunked_encoding()
        await stream.prepare(request)
        self._streams.add(stream)
        try:
            async for event in resp.stream:
                await stream.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")
        except ConnectionAbortedError:
            if request.transport is not None:
                request.transport.abort()
            return stream
        except (ConnectionResetError, asyncio.CancelledError):
            return stream
        finally:
            self._streams.discard(stream)
            await _aclose(resp.stream)
        with contextlib.suppress(ConnectionResetError):
            # the client may have gone away between the last event and the end of stream
            await stream.write_eof()
        return stream

    # -- direct access (no HTTP, no admission) --------------------------------------------

    def resource(self, name: str) -> ResourceType:
        """Resolve `deployments`, `deploy`, `Deployment`, `hpa`, `gpumixes.gpumix.io`, ..."""
        return self.registry.resolve(name)

    def _rt_of(self, obj: Obj) -> ResourceType:
        rt = self.registry.for_kind(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
        if rt is None:
            raise KeyError(f"no resource for {obj.get('apiVersion')}, kind={obj.get('kind')}")
        return rt

    def get(
        self, resource: str, name: str, namespace: str = "", version: str | None = None
    ) -> Obj | None:
        """A deep copy of the stored object (served at `version`, default storage)."""
        rt = self.resource(resource)
        obj = self.store.get(rt.key, namespace if rt.namespaced else "", name)
        if obj is None:
            return None
        return copy.deepcopy(self.api._out(rt, obj, version or rt.storage_version))

    def list(
        self,
        resource: str,
        namespace: str | None = None,
        label_selector: str = "",
        field_selector: str = "",
    ) -> list[Obj]:
        rt = self.resource(resource)
        q = {"labelSelector": label_selector, "fieldSelector": field_selector}
        t = Target(
            rt, rt.storage_version, namespace or "", "", "", rt.namespaced and namespace is None
        )
        return [copy.deepcopy(o) for o in self.api._select(t, q)]

    def create(self, obj: Obj) -> Obj:
        """Store an object directly, as if written to etcd: defaults and server fields are
        filled, validation and admission are skipped. Fast enough for 10,000 objects."""
        rt = self._rt_of(obj)
        version = str(obj["apiVersion"]).rpartition("/")[2]
        t = Target(
            rt,
            version,
            (obj.get("metadata") or {}).get("namespace", "") if rt.namespaced else "",
            "",
            "",
            False,
        )
        stored = self.api._to_storage(rt, self.api._decode_object(t, obj))
        meta = stored["metadata"]
        if not meta.get("name"):
            meta["name"] = self.api._generate_name(str(meta.get("generateName", "x-")))
        for k in ("uid", "resourceVersion", "creationTimestamp"):
            meta.pop(k, None)
        if rt.has_generation:
            meta["generation"] = 1
        from . import builtins

        builtins.prepare(rt, stored)
        if rt.key == "customresourcedefinitions.apiextensions.k8s.io":
            stored["status"] = builtins.crd_status(stored, timestamp(self.store.clock()))
        self.store.insert(rt, stored)
        final = self.api._after_write(rt, stored, None)
        return copy.deepcopy(self.api._out(rt, final, version))

    def put(self, obj: Obj) -> Obj:
        """Replace an object directly (status included); creates it when missing."""
        rt = self._rt_of(obj)
        meta = obj.get("metadata") or {}
        ns = meta.get("namespace", "") if rt.namespaced else ""
        current = self.store.get(rt.key, ns, meta.get("name", ""))
        if current is None:
            return self.create(obj)
        version = str(obj["apiVersion"]).rpartition("/")[2]
        t = Target(rt, version, ns, meta["name"], "", False)
        stored = self.api._to_storage(rt, self.api._decode_object(t, obj))
        smeta, cmeta = stored["metadata"], current["metadata"]
        for k in ("uid", "creationTimestamp", "generation"):
            if k in cmeta:
                smeta[k] = cmeta[k]
        from .api import spec_changed

        if rt.has_generation and spec_changed(rt, stored, current):
            smeta["generation"] = int(cmeta.get("generation", 1)) + 1
        self.store.replace(rt, stored, None)
        final = self.api._after_write(rt, stored, current)
        return copy.deepcopy(self.api._out(rt, final, version))

    def delete(self, resource: str, name: str, namespace: str = "") -> Obj:
        rt = self.resource(resource)
        gone = self.store.remove(rt, namespace, name)
        self.api._after_delete(rt, gone)
        return copy.deepcopy(gone)

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        query: dict[str, str] | None = None,
    ) -> Response:
        """One API call through the full pipeline (admission included), without HTTP."""
        raw = (
            b""
            if body is None
            else (body if isinstance(body, bytes) else json.dumps(body).encode())
        )
        return await self.api.handle(Request(method, path, query or {}, raw, content_type))

    # -- fault injection --------------------------------------------------------------------

    def drop_watches(self, abort: bool = False) -> int:
        """End every open watch (cleanly, or by resetting the connection); returns how many."""
        return self.store.drop_watchers(abort)

    def fail_next(
        self, n: int, status: int = 500, path_prefix: str = "", methods: set[str] | None = None
    ) -> None:
        """The next `n` requests whose path starts with `path_prefix` fail with `status`."""
        self.faults.fail_next(n, status, path_prefix, methods)

    def conflict_next(self, resource: str, name: str, namespace: str = "", n: int = 1) -> None:
        """The next `n` writes (PUT, PATCH, /status, /scale) to this object get 409."""
        rt = self.resource(resource)
        self.faults.conflict_next(rt.key, namespace if rt.namespaced else "", name, n)

    def compact(self) -> int:
        """Forget the watch history; a watch from an older resourceVersion gets 410 Gone."""
        self.store.compact()
        return self.store.rv

    def start_outage(self, mode: str = "503", seconds: float | None = None) -> None:
        """`503`: every request gets 503. `refuse`: connections are closed without an
        answer. Open watches are dropped. Ends after `seconds`, or at `end_outage()`."""
        self.faults.start_outage(mode, seconds)
        self.store.drop_watchers(abort=mode == "refuse")

    def end_outage(self) -> None:
        self.faults.end_outage()


def _json_response(resp: Response) -> web.Response:
    headers = {}
    if resp.warnings:
        headers["Warning"] = ", ".join(_warning(w) for w in resp.warnings)
    if resp.content_type == "text/plain":
        return web.Response(status=resp.status, text=str(resp.body), headers=headers)
    out = web.Response(
        status=resp.status,
        body=json.dumps(resp.body).encode(),
        content_type="application/json",
        headers=headers,
    )
    if len(resp.warnings) > 1:
        out.headers.popall("Warning", None)
        for w in resp.warnings:
            out.headers.add("Warning", _warning(w))
    return out


def _warning(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'299 - "{escaped}"'


async def _aclose(stream: Any) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(RuntimeError, ApiError):
            await aclose()
