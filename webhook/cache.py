"""The webhook's cluster cache: the informer's objects kept as views.

The list + watch machinery (paged lists, resumed watches, ``410 Gone`` relists,
bookmarks, jittered backoff, "synced means current", discovery of autoscaler
CRDs installed later) is :mod:`gpumix.kubeio.informer`, shared with the
controller; this module decides what the webhook keeps: only views
(``gpumix.kube.objects.view_of``) in a ``Snapshot``, never whole objects.

Each object is turned into its view on its own (``read_view``): a value gpumix
cannot read is named in the view (and the rules report it), and an object that
cannot be read at all is left out and recorded in the snapshot's ``unreadable``;
neither stops the list, the watch or readiness.  Both are counted in
``gpumix_cache_unreadable_objects``.

The cache is ``synced`` when discovery has run and every reflector has listed
and is connected; a failing list or watch makes it unsynced until it recovers
with a complete list.  A CRD that appears later does not make it unsynced before
its first list (all replicas would turn unready at once).
"""

from __future__ import annotations

import asyncio
import logging

from gpumix.kube.objects import ObjectRef, UnreadableObject, View, read_view
from gpumix.kube.policy import Policy
from gpumix.kube.snapshot import Snapshot
from gpumix.kubeio.client import Json, KubeClient
from gpumix.kubeio.informer import (
    Informer,
    InformerSettings,
    Key,
    Reflector,
    Resource,
    Sleep,
)
from gpumix.webhook.metrics import CACHE_KINDS, WebhookMetrics
from gpumix.webhook.settings import CacheSettings

__all__ = ["BUILTIN_RESOURCES", "CRD_KINDS", "ClusterCache", "Reflector", "ViewStore"]

log = logging.getLogger("gpumix.webhook.cache")

BUILTIN_RESOURCES = (
    Resource("Namespace", "v1", "namespaces", namespaced=False),
    Resource("Node", "v1", "nodes", namespaced=False),
    Resource("Deployment", "apps/v1", "deployments"),
    Resource("HorizontalPodAutoscaler", "autoscaling/v2", "horizontalpodautoscalers"),
)
CRD_KINDS = {"keda.sh": "ScaledObject", "autoscaling.aibrix.ai": "PodAutoscaler"}


def informer_settings(settings: CacheSettings) -> InformerSettings:
    return InformerSettings(
        watch_timeout_s=settings.watch_timeout_s,
        page_size=settings.page_size,
        backoff_initial_s=settings.backoff_initial_s,
        backoff_max_s=settings.backoff_max_s,
        discovery_interval_s=settings.discovery_interval_s,
    )


class ViewStore:
    """The informer's store for the webhook: views in a ``Snapshot``."""

    def __init__(self, snapshot: Snapshot, policy: Policy) -> None:
        self.snapshot = snapshot
        self.policy = policy
        self.partial: dict[str, set[Key]] = {}
        """Per kind, keys of objects kept as views that name fields gpumix cannot read."""
        self.skipped: dict[str, set[Key]] = {}
        """Per kind, keys of objects that could not be read at all (left out of the views)."""

    def convert(self, resource: Resource, obj: Json) -> View | UnreadableObject | None:
        """The object's view; an UnreadableObject when it cannot be read at all (this
        object's conversion is isolated from every other's)."""
        try:
            return read_view(obj, self.policy)
        except UnreadableObject as exc:
            meta = obj.get("metadata")
            meta = meta if isinstance(meta, dict) else {}
            where = (
                f"{meta.get('namespace')}/{meta.get('name')}"
                if resource.namespaced
                else (str(meta.get("name")))
            )
            log.warning(
                "%s %s: %s; left out of the cache",
                resource.kind,
                where,
                exc.reason,
                exc_info=exc.__cause__,
            )
            return exc

    def put(self, resource: Resource, key: Key, item: object | None) -> None:
        partial = self.partial.setdefault(resource.kind, set())
        skipped = self.skipped.setdefault(resource.kind, set())
        if isinstance(item, UnreadableObject):
            self.snapshot.mark_unreadable(ObjectRef(resource.kind, *key), item.reason)
            skipped.add(key)
            partial.discard(key)
        elif item is not None:
            self.snapshot.put(item)  # type: ignore[arg-type]
            skipped.discard(key)
            if getattr(item, "unreadable", ()):
                partial.add(key)
            else:
                partial.discard(key)

    def remove(self, resource: Resource, key: Key) -> None:
        self.snapshot.remove(resource.kind, key[0], key[1])
        self.partial.get(resource.kind, set()).discard(key)
        self.skipped.get(resource.kind, set()).discard(key)


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
        self.store = ViewStore(self.snapshot, policy)
        self.informer = Informer(
            client,
            self.store,
            BUILTIN_RESOURCES,
            crd_kinds=CRD_KINDS,
            settings=informer_settings(self.settings),
            on_change=self._changed,
            sleep=sleep,
        )

    @property
    def reflectors(self) -> dict[Resource, Reflector]:
        return self.informer.reflectors

    @property
    def synced(self) -> bool:
        return self.informer.synced

    def _changed(self) -> None:
        if self.metrics is None:
            return
        snap = self.snapshot
        self.metrics.cache_objects.labels(kind="Deployment").set(len(snap.deployments))
        self.metrics.cache_objects.labels(kind="Autoscaler").set(len(snap.autoscalers))
        self.metrics.cache_objects.labels(kind="Node").set(len(snap.nodes))
        self.metrics.cache_objects.labels(kind="Namespace").set(len(snap.namespaces))
        self.metrics.cache_synced.set(1 if self.informer.synced else 0)
        unreadable = {(k, h): 0 for k in CACHE_KINDS for h in ("kept", "skipped")}
        for kind, keys in self.store.partial.items():
            unreadable[kind if kind in CACHE_KINDS else "Autoscaler", "kept"] += len(keys)
        for kind, keys in self.store.skipped.items():
            unreadable[kind if kind in CACHE_KINDS else "Autoscaler", "skipped"] += len(keys)
        for (kind, handling), count in unreadable.items():
            self.metrics.cache_unreadable.labels(kind=kind, handling=handling).set(count)

    async def wait_synced(self, timeout_s: float) -> bool:
        return await self.informer.wait_synced(timeout_s)

    async def discover(self) -> list[Resource]:
        return await self.informer.discover()

    async def start(self) -> None:
        await self.informer.start()

    async def stop(self) -> None:
        await self.informer.stop()
