"""The informer: list + watch of Kubernetes resources into local stores.

One :class:`Reflector` per resource lists it (paged), then watches from the
list's ``resourceVersion``.  A watch that ends is resumed from the last
``resourceVersion`` seen (bookmarks included); a watch or list that fails is
retried with backoff; ``410 Gone`` means the version is too old: list again.
A relist replaces that resource's objects only once the new list is complete,
so nothing is lost or missing in between.  What is kept of each object is the
:class:`Store`'s choice (the webhook keeps views, the controller trimmed
objects); the reflector keeps only keys.

Synced means current.  Once a reflector has lost its view (a list or watch that
failed, a ``410 Gone``), it is unsynced at once and becomes synced again only by a
complete new list, never by resuming a watch from an old ``resourceVersion``: a
resumed watch can open and then report ``410``, and decisions taken in between
would rest on a view of unknown age.  A ``410`` is not an outage: the relist
starts at once.  Failures are retried after a backoff that doubles from
``backoff_initial_s`` up to ``backoff_max_s``, with jitter (each pause is drawn
between half and all of the current backoff) so that replicas do not retry in
step.  An established watch that merely breaks is resumed after the shortest
pause without turning unsynced (a connection reset is not an outage); when the
resume fails too, the reflector is unsynced and lists again.

:class:`Informer` runs a set of reflectors plus API discovery of optional CRDs
(autoscalers: KEDA ``ScaledObject``, AIBrix ``PodAutoscaler``): discovery runs
again every ``discovery_interval_s`` and, when ``crd_names`` are given, at once
whenever one of those CustomResourceDefinitions is created, changed or deleted
(a watch of exactly those names).  A CRD that disappears takes its objects with
it.  With ``strict_crds`` an Established CRD whose objects are not listed yet
makes the informer unsynced (the controller must not act without an autoscaler
that exists); without it, a CRD that appears after the first sync does not make
the informer unsynced before its first list (the webhook: all replicas would turn
unready at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gpumix.kubeio.client import ApiError, Json

log = logging.getLogger("gpumix.kubeio")

Sleep = Callable[[float], Any]
Key = tuple[str, str]
"""(namespace, name); namespace "" for cluster-scoped objects."""
MAX_PAGES = 100_000


@dataclass(frozen=True)
class Resource:
    """A listable, watchable resource (optionally one namespace or a field selector)."""

    kind: str
    api_version: str
    plural: str
    namespaced: bool = True
    optional: bool = False
    """A CRD found by discovery: 404 means it was removed (not an error)."""
    namespace: str | None = None
    """Only this namespace (namespaced resources)."""
    field_selector: str = ""

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def path(self) -> str:
        prefix = "/api" if "/" not in self.api_version else "/apis"
        ns = f"/namespaces/{self.namespace}" if self.namespaced and self.namespace else ""
        return f"{prefix}/{self.api_version}{ns}/{self.plural}"

    def query(self) -> dict[str, str]:
        return {"fieldSelector": self.field_selector} if self.field_selector else {}


@dataclass(frozen=True)
class InformerSettings:
    watch_timeout_s: int = 300
    """Server-side timeout of one watch request; the watch is then resumed."""
    page_size: int = 500
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 4.0
    discovery_interval_s: float = 60.0


class Store(Protocol):
    """Where a reflector's objects go."""

    def convert(self, resource: Resource, obj: Json) -> object | None:
        """What to keep of ``obj`` (None: nothing; the key is still tracked)."""
        ...

    def put(self, resource: Resource, key: Key, item: object | None) -> None: ...

    def remove(self, resource: Resource, key: Key) -> None: ...


class Lister(Protocol):
    async def get(self, path: str, query: Mapping[str, str] | None = None) -> Json: ...

    def watch(
        self, path: str, query: Mapping[str, str], timeout_s: float
    ) -> AsyncIterator[Json]: ...


EventHook = Callable[["Resource", "Json | None"], None]
"""Called with each watch event (``{"type", "object"}``) after it is stored, and with
None after a complete relist (changes in between may not have been seen one by one)."""


def _obj_meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def key_of(obj: Mapping[str, Any], namespaced: bool = True) -> Key:
    meta = _obj_meta(obj)
    name = meta.get("name")
    ns = meta.get("namespace") if namespaced else ""
    return (ns if isinstance(ns, str) and ns else ("default" if namespaced else "")), (
        name if isinstance(name, str) else ""
    )


class Reflector:
    """List, then watch one resource into a store; forever, until cancelled."""

    def __init__(
        self,
        resource: Resource,
        client: Lister,
        store: Store,
        settings: InformerSettings,
        on_change: Callable[[], None],
        sleep: Sleep = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        on_event: EventHook | None = None,
    ) -> None:
        self.resource = resource
        self.client = client
        self.store = store
        self.settings = settings
        self.on_change = on_change
        self.on_event = on_event
        self._sleep = sleep
        self._jitter = jitter
        self.keys: set[Key] = set()
        self.synced = False
        self.has_synced = False
        """Synced at least once (a late CRD counts for readiness only from then on)."""
        self.resource_version = ""
        self.relists = 0
        self.gone = False
        """True once an optional resource has disappeared (404); the reflector stops."""
        self.late = False
        """Started for a CRD found after the informer had synced."""

    # -- applying ----------------------------------------------------------------
    def _key(self, obj: Mapping[str, Any]) -> Key:
        return key_of(obj, self.resource.namespaced)

    def _convert(self, obj: Json) -> object | None:
        # List items carry no apiVersion/kind; watch events do: set both the same way.
        obj["apiVersion"] = self.resource.api_version
        obj["kind"] = self.resource.kind
        return self.store.convert(self.resource, obj)

    def _remove(self, key: Key) -> None:
        self.store.remove(self.resource, key)
        self.keys.discard(key)

    def clear(self) -> None:
        for key in list(self.keys):
            self._remove(key)

    async def relist(self) -> str:
        """List every page, then replace this resource's objects; return the list's version.

        Each page is converted at once, so only what the store keeps (not 10,000
        whole objects) is held until the list is complete and applied.
        """
        items: dict[Key, object | None] = {}
        cont = ""
        version = ""
        for _ in range(MAX_PAGES):
            query = {**self.resource.query(), "limit": str(self.settings.page_size)}
            if cont:
                query["continue"] = cont
            page = await self.client.get(self.resource.path, query)
            for item in page.get("items") or []:
                if isinstance(item, dict):
                    items[self._key(item)] = self._convert(item)
            meta = _obj_meta(page)
            cont = str(meta.get("continue") or "")
            version = str(meta.get("resourceVersion") or version)
            del page
            if not cont:
                break
        for key in self.keys - items.keys():
            self._remove(key)
        for key, item in items.items():
            self.store.put(self.resource, key, item)
            self.keys.add(key)
        self.relists += 1
        self.on_change()
        if self.on_event is not None:
            self.on_event(self.resource, None)
        return version

    def apply(self, event: Json) -> None:
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, dict):
            return
        version = _obj_meta(obj).get("resourceVersion")
        if isinstance(version, str) and version:
            self.resource_version = version
        if kind in ("ADDED", "MODIFIED"):
            key = self._key(obj)
            self.store.put(self.resource, key, self._convert(obj))
            self.keys.add(key)
        elif kind == "DELETED":
            self._remove(self._key(obj))
        else:
            return  # BOOKMARK: only the version moves
        self.on_change()
        if self.on_event is not None:
            self.on_event(self.resource, event)

    # -- the loop ----------------------------------------------------------------
    def _set_synced(self, value: bool) -> None:
        if self.synced != value:
            self.synced = value
            self.has_synced = self.has_synced or value
            self.on_change()

    def _lost(self) -> None:
        """The view is no longer known to be current: unsynced now, and only a complete
        new list makes it synced again (see the module docstring)."""
        self.resource_version = ""
        self._set_synced(False)

    def _pause(self, backoff: float) -> float:
        """A pause of between half and all of ``backoff`` (jitter keeps replicas apart)."""
        return backoff * (0.5 + 0.5 * self._jitter())

    async def run(self) -> None:
        backoff = self.settings.backoff_initial_s
        for _ in range(10**9):  # ends by cancellation, or when an optional CRD goes away
            opened = False
            try:
                if not self.resource_version:
                    self.resource_version = await self.relist()
                    self._set_synced(True)
                    backoff = self.settings.backoff_initial_s
                query = {
                    **self.resource.query(),
                    "resourceVersion": self.resource_version,
                    "allowWatchBookmarks": "true",
                    "timeoutSeconds": str(self.settings.watch_timeout_s),
                }
                started = time.monotonic()
                async for event in self.client.watch(
                    self.resource.path, query, self.settings.watch_timeout_s
                ):
                    if event.get("type") == "OPENED":
                        opened = True
                        continue
                    self.apply(event)
                if time.monotonic() - started > 1.0:
                    backoff = self.settings.backoff_initial_s
                    continue  # the server ended the watch: resume from resource_version
                # A watch that ends at once, again and again, must not spin: back off.
            except ApiError as exc:
                if exc.code == 410:
                    # The version is too old (an API-server restart, a compaction): the
                    # view may miss changes, so it is not current; list again at once.
                    log.info("%s: %s; listing again", self.resource.path, exc.message)
                    self._lost()
                    backoff = self.settings.backoff_initial_s
                    continue
                if exc.code == 404 and self.resource.optional:
                    log.info("%s is gone; dropping its objects", self.resource.path)
                    self.clear()
                    self.gone = True
                    self._set_synced(True)
                    return
                if opened and exc.unreachable:
                    # An established watch broke: resume after the shortest pause;
                    # readiness changes only if the API server cannot be reached again
                    # (no flapping on a connection reset).
                    log.info("%s: %s; resuming", self.resource.path, exc.message)
                    backoff = self.settings.backoff_initial_s
                else:
                    log.warning(
                        "watch failed",
                        extra={
                            "kind": self.resource.kind,
                            "path": self.resource.path,
                            "error": str(exc),
                            "retry_in_s": round(backoff, 2),
                        },
                    )
                    self._lost()
            except Exception:  # a bug must not stop the informer for good: log it, back off
                log.exception("%s: unexpected error; listing again", self.resource.path)
                self._lost()
            await self._sleep(self._pause(backoff))
            backoff = min(backoff * 2, self.settings.backoff_max_s)


class _CrdStore:
    """Names of the watched CustomResourceDefinitions that are Established."""

    def __init__(self, changed: Callable[[], None]) -> None:
        self.established: dict[str, str] = {}
        """CRD name -> its group."""
        self._changed = changed

    def convert(self, resource: Resource, obj: Json) -> object | None:
        status = obj.get("status")
        conditions = status.get("conditions") if isinstance(status, dict) else None
        ok = any(
            isinstance(c, dict) and c.get("type") == "Established" and c.get("status") == "True"
            for c in conditions or []
        )
        spec = obj.get("spec")
        group = spec.get("group") if isinstance(spec, dict) else None
        return str(group) if ok and isinstance(group, str) else None

    def put(self, resource: Resource, key: Key, item: object | None) -> None:
        if isinstance(item, str):
            self.established[key[1]] = item
        else:
            self.established.pop(key[1], None)
        self._changed()

    def remove(self, resource: Resource, key: Key) -> None:
        self.established.pop(key[1], None)
        self._changed()


CRD_RESOURCE_VERSION = "apiextensions.k8s.io/v1"


class Informer:
    """Reflectors of fixed resources, plus optional CRDs found by discovery."""

    def __init__(
        self,
        client: Lister,
        store: Store,
        resources: tuple[Resource, ...],
        *,
        crd_kinds: Mapping[str, str] | None = None,
        crd_names: tuple[str, ...] = (),
        strict_crds: bool = False,
        namespace: str | None = None,
        settings: InformerSettings | None = None,
        on_change: Callable[[], None] | None = None,
        on_event: EventHook | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.client = client
        self.store = store
        self.resources = resources
        self.crd_kinds = dict(crd_kinds or {})
        """API group -> the kind discovered in it."""
        self.crd_names = crd_names
        self.strict_crds = strict_crds
        self.namespace = namespace
        """Discovered namespaced CRDs are watched in this namespace only (None: all)."""
        self.settings = settings or InformerSettings()
        self._on_change = on_change
        self.on_event = on_event
        self._sleep = sleep
        self.reflectors: dict[Resource, Reflector] = {}
        self._tasks: dict[Resource, asyncio.Task[None]] = {}
        self._discovery: asyncio.Task[None] | None = None
        self._discover_now = asyncio.Event()
        self._discovered = False
        self._synced_event = asyncio.Event()
        self._crds = _CrdStore(self._crd_changed)
        self._crd_watchers: list[Reflector] = []

    # -- state ---------------------------------------------------------------------
    @property
    def synced(self) -> bool:
        if not self._discovered:
            return False
        if not all(r.synced for r in self._crd_watchers):
            return False
        for r in self.reflectors.values():
            if r.gone or r.synced:
                continue
            if r.late and not r.has_synced and not self.strict_crds:
                continue
            return False
        if self.strict_crds:
            listed = {r.resource.group for r in self.reflectors.values() if r.synced and not r.gone}
            if any(g not in listed for g in self._crds.established.values()):
                return False  # a CRD is served whose objects are not listed yet
        return True

    def changed(self) -> None:
        if self.synced:
            self._synced_event.set()
        else:
            self._synced_event.clear()
        if self._on_change is not None:
            self._on_change()

    def _crd_changed(self) -> None:
        self._discover_now.set()
        self.changed()

    async def wait_synced(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._synced_event.wait(), timeout_s)
        except TimeoutError:
            return False
        return self.synced

    # -- reflectors ----------------------------------------------------------------
    def _start(self, resource: Resource) -> Reflector:
        reflector = Reflector(
            resource,
            self.client,
            self.store,
            self.settings,
            self.changed,
            self._sleep,
            on_event=self.on_event,
        )
        self.reflectors[resource] = reflector
        self._tasks[resource] = asyncio.create_task(
            reflector.run(), name=f"gpumix-informer-{resource.plural}"
        )
        return reflector

    async def discover(self) -> list[Resource]:
        """The CRDs of ``crd_kinds`` this API server serves (preferred version of each group)."""
        found: list[Resource] = []
        if not self.crd_kinds:
            return found
        groups = await self.client.get("/apis")
        for group in groups.get("groups") or []:
            if not isinstance(group, dict) or group.get("name") not in self.crd_kinds:
                continue
            kind = self.crd_kinds[str(group["name"])]
            preferred = group.get("preferredVersion") or {}
            gv = preferred.get("groupVersion") if isinstance(preferred, dict) else None
            if not isinstance(gv, str):
                continue
            try:
                resources = await self.client.get(f"/apis/{gv}")
            except ApiError as exc:
                if exc.code == 404:
                    continue
                raise
            for res in resources.get("resources") or []:
                if (
                    isinstance(res, dict)
                    and res.get("kind") == kind
                    and "/" not in str(res.get("name", ""))
                    and "watch" in (res.get("verbs") or [])
                ):
                    namespaced = bool(res.get("namespaced", True))
                    found.append(
                        Resource(
                            kind,
                            gv,
                            str(res["name"]),
                            namespaced=namespaced,
                            optional=True,
                            namespace=self.namespace if namespaced else None,
                        )
                    )
        return found

    async def _discovery_loop(self) -> None:
        backoff = self.settings.backoff_initial_s
        for _ in range(10**9):  # ends by cancellation
            self._discover_now.clear()
            try:
                crds = await self.discover()
            except ApiError as exc:
                log.warning("API discovery failed: %s; retrying in %.1f s", exc, backoff)
                await self._sleep(backoff)
                backoff = min(backoff * 2, self.settings.backoff_max_s)
                continue
            backoff = self.settings.backoff_initial_s
            for resource in crds:
                current = self.reflectors.get(resource)
                if current is None or current.gone:
                    log.info("watching %s", resource.path)
                    self._start(resource).late = self._discovered
            self._discovered = True
            self.changed()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._discover_now.wait(), self.settings.discovery_interval_s
                )

    async def start(self) -> None:
        for resource in self.resources:
            self._start(resource)
        if self.crd_names:
            crd = Resource(
                "CustomResourceDefinition",
                CRD_RESOURCE_VERSION,
                "customresourcedefinitions",
                namespaced=False,
            )
            # one watch per name: RBAC can then grant exactly these names
            for name in self.crd_names:
                r = Reflector(
                    Resource(
                        crd.kind,
                        crd.api_version,
                        crd.plural,
                        namespaced=False,
                        field_selector=f"metadata.name={name}",
                    ),
                    self.client,
                    self._crds,
                    self.settings,
                    self.changed,
                    self._sleep,
                )
                self._crd_watchers.append(r)
                self._tasks[r.resource] = asyncio.create_task(
                    r.run(), name=f"gpumix-informer-crd-{name}"
                )
        self._discovery = asyncio.create_task(self._discovery_loop(), name="gpumix-discovery")
        self.changed()

    async def stop(self) -> None:
        tasks = [*self._tasks.values(), *([self._discovery] if self._discovery else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._discovery = None
