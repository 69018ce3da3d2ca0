"""The cluster cache: list+watch of the objects the rules read, kept as views.

One ``Reflector`` per resource lists it (paged), then watches from the list's
``resourceVersion``.  A watch that ends is resumed from the last
``resourceVersion`` seen (bookmarks included); a watch or list that fails is
retried with exponential backoff; ``410 Gone`` means the version is too old:
list again.  A relist replaces that resource's objects only once the new list
is complete, so nothing is lost or missing in between.  Only views
(``gpumix.kube.objects.view_of``) are stored, never whole objects.

Each object is turned into its view on its own (``read_view``): a value gpumix
cannot read is named in the view (and the rules report it), and an object that
cannot be read at all is left out and recorded in the snapshot's ``unreadable``;
neither stops the list, the watch or readiness.  Both are counted in
``gpumix_cache_unreadable_objects``.

Autoscaler CRDs (KEDA ``ScaledObject``, AIBrix ``PodAutoscaler``) are found by
API discovery, again every ``discovery_interval_s``, so CRDs installed later are
picked up; a CRD that disappears takes its objects with it.

The cache is ``synced`` when discovery has run and every reflector has listed
and is connected; a failing list or watch makes it unsynced until it recovers.
A CRD that appears later does not make it unsynced before its first list.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpumix.kube.objects import ObjectRef, UnreadableObject, View, namespace_of, read_view
from gpumix.kube.policy import Policy
from gpumix.kube.snapshot import Snapshot
from gpumix.webhook.kubeapi import ApiError, KubeClient
from gpumix.webhook.metrics import CACHE_KINDS, WebhookMetrics
from gpumix.webhook.settings import CacheSettings

log = logging.getLogger("gpumix.webhook.cache")

Sleep = Callable[[float], Any]
MAX_PAGES = 100_000


@dataclass(frozen=True)
class Resource:
    """A listable, watchable resource and how its objects are keyed in the snapshot."""

    kind: str
    api_version: str
    plural: str
    namespaced: bool = True
    optional: bool = False
    """A CRD found by discovery: 404 means it was removed (not an error)."""

    @property
    def path(self) -> str:
        prefix = "/api" if "/" not in self.api_version else "/apis"
        return f"{prefix}/{self.api_version}/{self.plural}"


BUILTIN_RESOURCES = (
    Resource("Namespace", "v1", "namespaces", namespaced=False),
    Resource("Node", "v1", "nodes", namespaced=False),
    Resource("Deployment", "apps/v1", "deployments"),
    Resource("HorizontalPodAutoscaler", "autoscaling/v2", "horizontalpodautoscalers"),
)
CRD_KINDS = {"keda.sh": "ScaledObject", "autoscaling.aibrix.ai": "PodAutoscaler"}


def _obj_meta(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


class Reflector:
    """List, then watch one resource into the snapshot; forever, until cancelled."""

    def __init__(
        self,
        resource: Resource,
        client: KubeClient,
        snapshot: Snapshot,
        policy: Policy,
        settings: CacheSettings,
        on_change: Callable[[], None],
        sleep: Sleep = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.resource = resource
        self.client = client
        self.snapshot = snapshot
        self.policy = policy
        self.settings = settings
        self.on_change = on_change
        self._sleep = sleep
        self._jitter = jitter
        self.keys: set[tuple[str, str]] = set()
        self.partial: set[tuple[str, str]] = set()
        """Keys of objects kept as views that name fields gpumix cannot read."""
        self.skipped: set[tuple[str, str]] = set()
        """Keys of objects that could not be read at all (left out of the views)."""
        self.synced = False
        self.resource_version = ""
        self.relists = 0
        self.gone = False
        """True once an optional resource has disappeared (404); the reflector stops."""
        self.late = False
        """Started for a CRD installed after the cache had synced: it does not make the
        cache unready before its first list (all replicas would turn unready at once)."""

    # -- applying ----------------------------------------------------------------
    def _key(self, obj: dict[str, Any]) -> tuple[str, str]:
        name = _obj_meta(obj).get("name")
        ns = namespace_of(obj) if self.resource.namespaced else ""
        return ns, name if isinstance(name, str) else ""

    def _view(self, obj: dict[str, Any]) -> View | UnreadableObject | None:
        """The object's view; an UnreadableObject when it cannot be read at all (this
        object's conversion is isolated from every other's)."""
        # List items carry no apiVersion/kind; watch events do: set both the same way.
        obj["apiVersion"] = self.resource.api_version
        obj["kind"] = self.resource.kind
        try:
            return read_view(obj, self.policy)
        except UnreadableObject as exc:
            key = self._key(obj)
            log.warning(
                "%s %s: %s; left out of the cache",
                self.resource.kind,
                f"{key[0]}/{key[1]}" if key[0] else key[1],
                exc.reason,
                exc_info=exc.__cause__,
            )
            return exc

    def _store(self, key: tuple[str, str], view: View | UnreadableObject) -> None:
        if isinstance(view, UnreadableObject):
            self.snapshot.mark_unreadable(ObjectRef(self.resource.kind, *key), view.reason)
            self.skipped.add(key)
            self.partial.discard(key)
        else:
            self.snapshot.put(view)
            self.skipped.discard(key)
            if getattr(view, "unreadable", ()):
                self.partial.add(key)
            else:
                self.partial.discard(key)
        self.keys.add(key)

    def _put(self, obj: dict[str, Any]) -> None:
        view = self._view(obj)
        if view is not None:
            self._store(self._key(obj), view)

    def _remove(self, key: tuple[str, str]) -> None:
        self.snapshot.remove(self.resource.kind, key[0], key[1])
        self.keys.discard(key)
        self.partial.discard(key)
        self.skipped.discard(key)

    def clear(self) -> None:
        for key in list(self.keys):
            self._remove(key)

    async def relist(self) -> str:
        """List every page, then replace this resource's objects; return the list's version.

        Each page is turned into views at once, so only views (not 10,000 whole
        objects) are held until the list is complete and applied.
        """
        views: dict[tuple[str, str], View | UnreadableObject] = {}
        cont = ""
        version = ""
        for _ in range(MAX_PAGES):
            query = {"limit": str(self.settings.page_size)}
            if cont:
                query["continue"] = cont
            page = await self.client.get(self.resource.path, query)
            for item in page.get("items") or []:
                if isinstance(item, dict):
                    view = self._view(item)
                    if view is not None:
                        views[self._key(item)] = view
            meta = _obj_meta(page)
            cont = str(meta.get("continue") or "")
            version = str(meta.get("resourceVersion") or version)
            del page
            if not cont:
                break
        for key in self.keys - views.keys():
            self._remove(key)
        for key, view in views.items():
            self._store(key, view)
        self.relists += 1
        self.on_change()
        return version

    def apply(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, dict):
            return
        version = _obj_meta(obj).get("resourceVersion")
        if isinstance(version, str) and version:
            self.resource_version = version
        if kind in ("ADDED", "MODIFIED"):
            self._put(obj)
        elif kind == "DELETED":
            self._remove(self._key(obj))
        else:
            return  # BOOKMARK: only the version moves
        self.on_change()

    # -- the loop ----------------------------------------------------------------
    def _set_synced(self, value: bool) -> None:
        if self.synced != value:
            self.synced = value
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
                    log.warning("%s: %s; retrying in ~%.1f s", self.resource.path, exc, backoff)
                    self._lost()
            except Exception:  # a bug must not stop the cache for good: log it, back off
                log.exception("%s: unexpected error; listing again", self.resource.path)
                self._lost()
            await self._sleep(self._pause(backoff))
            backoff = min(backoff * 2, self.settings.backoff_max_s)


class ClusterCache:
    """Deployments, autoscalers, Nodes and Namespaces of a cluster, as a ``Snapshot``."""

    def __init__(
        self,
        client: KubeClient,
        policy: Policy,
        metrics: WebhookMetrics | None = None,
        settings: CacheSettings | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.client = client
        self.policy = policy
        self.metrics = metrics
        self.settings = settings or CacheSettings()
        self.snapshot = Snapshot()
        self._sleep = sleep
        self.reflectors: dict[Resource, Reflector] = {}
        self._tasks: dict[Resource, asyncio.Task[None]] = {}
        self._discovery: asyncio.Task[None] | None = None
        self._discovered = False
        self._synced_event = asyncio.Event()

    @property
    def synced(self) -> bool:
        return self._discovered and all(
            r.synced
            for r in self.reflectors.values()
            if not r.gone and not (r.late and r.relists == 0)
        )

    def _changed(self) -> None:
        synced = self.synced
        if synced:
            self._synced_event.set()
        else:
            self._synced_event.clear()
        if self.metrics is not None:
            snap = self.snapshot
            self.metrics.cache_objects.labels(kind="Deployment").set(len(snap.deployments))
            self.metrics.cache_objects.labels(kind="Autoscaler").set(len(snap.autoscalers))
            self.metrics.cache_objects.labels(kind="Node").set(len(snap.nodes))
            self.metrics.cache_objects.labels(kind="Namespace").set(len(snap.namespaces))
            self.metrics.cache_synced.set(1 if synced else 0)
            unreadable = {(k, h): 0 for k in CACHE_KINDS for h in ("kept", "skipped")}
            for reflector in self.reflectors.values():
                kind = reflector.resource.kind
                kind = kind if kind in CACHE_KINDS else "Autoscaler"
                unreadable[kind, "kept"] += len(reflector.partial)
                unreadable[kind, "skipped"] += len(reflector.skipped)
            for (kind, handling), count in unreadable.items():
                self.metrics.cache_unreadable.labels(kind=kind, handling=handling).set(count)

    async def wait_synced(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._synced_event.wait(), timeout_s)
        except TimeoutError:
            return False
        return self.synced

    def _start(self, resource: Resource) -> None:
        reflector = Reflector(
            resource,
            self.client,
            self.snapshot,
            self.policy,
            self.settings,
            self._changed,
            self._sleep,
        )
        self.reflectors[resource] = reflector
        self._tasks[resource] = asyncio.create_task(
            reflector.run(), name=f"gpumix-cache-{resource.plural}"
        )

    async def discover(self) -> list[Resource]:
        """The autoscaler CRDs this API server serves (preferred version of each group)."""
        found: list[Resource] = []
        groups = await self.client.get("/apis")
        for group in groups.get("groups") or []:
            if not isinstance(group, dict) or group.get("name") not in CRD_KINDS:
                continue
            kind = CRD_KINDS[str(group["name"])]
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
                    found.append(
                        Resource(
                            kind,
                            gv,
                            str(res["name"]),
                            namespaced=bool(res.get("namespaced", True)),
                            optional=True,
                        )
                    )
        return found

    async def _discovery_loop(self) -> None:
        backoff = self.settings.backoff_initial_s
        for _ in range(10**9):  # ends by cancellation
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
                    self._start(resource)
                    self.reflectors[resource].late = self._discovered
            self._discovered = True
            self._changed()
            await self._sleep(self.settings.discovery_interval_s)

    async def start(self) -> None:
        for resource in BUILTIN_RESOURCES:
            self._start(resource)
        self._discovery = asyncio.create_task(self._discovery_loop(), name="gpumix-discovery")
        self._changed()

    async def stop(self) -> None:
        tasks = [*self._tasks.values(), *([self._discovery] if self._discovery else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._discovery = None
