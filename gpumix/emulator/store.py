"""The object store: what etcd is to kube-apiserver.

Objects are plain dicts in their storage version, keyed by resource key and
(namespace, name). A stored dict is never changed in place: every write puts a new
dict, so readers may hold on to what they got. One global resourceVersion counter
orders all writes; a bounded history window of change events feeds watches.
"""

from __future__ import annotations

import asyncio
import copy
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import already_exists, conflict, gone, not_found
from .resources import ResourceType

Obj = dict[str, Any]
ObjKey = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects


def timestamp(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


@dataclass(frozen=True)
class Change:
    """One write, as watches see it."""

    rv: int
    key: str
    type: str  # ADDED | MODIFIED | DELETED
    obj: Obj
    old: Obj | None


@dataclass(eq=False)
class Watcher:
    key: str
    namespace: str | None
    match: Callable[[Obj], bool]
    queue: asyncio.Queue[Change | None]
    closed: bool = False
    abort: bool = False
    overflowed: bool = False
    transport_closers: list[Callable[[], None]] = field(default_factory=list)

    def offer(self, change: Change) -> None:
        if self.closed:
            return
        try:
            self.queue.put_nowait(change)
        except asyncio.QueueFull:
            # A consumer that cannot keep up is disconnected, as kube-apiserver does.
            self.overflowed = True
            self.close()

    def close(self, abort: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        self.abort = abort
        while True:
            try:
                self.queue.put_nowait(None)
                break
            except asyncio.QueueFull:
                self.queue.get_nowait()


class Store:
    """In-memory objects, the resourceVersion counter, the history window and watchers."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        history_size: int = 50_000,
        watch_queue_size: int = 100_000,
    ) -> None:
        self.clock = clock
        self.rv = 0
        self._data: dict[str, dict[ObjKey, Obj]] = {}
        self.history: deque[Change] = deque()
        self.history_size = history_size
        # Watches may start from any resourceVersion >= floor.
        self.floor = 0
        self.watchers: set[Watcher] = set()
        self.watch_queue_size = watch_queue_size
        # Resource keys kept in another type's storage (served with conversion).
        self.aliases: dict[str, str] = {"events.events.k8s.io": "events"}

    # -- reads ------------------------------------------------------------------------

    def storage_key(self, key: str) -> str:
        return self.aliases.get(key, key)

    def get(self, key: str, namespace: str, name: str) -> Obj | None:
        return self._data.get(self.storage_key(key), {}).get((namespace, name))

    def items(self, key: str, namespace: str | None = None) -> Iterator[Obj]:
        bucket = self._data.get(self.storage_key(key), {})
        if namespace is None:
            for k in sorted(bucket):
                yield bucket[k]
        else:
            for k in sorted(k for k in bucket if k[0] == namespace):
                yield bucket[k]

    def count(self, key: str) -> int:
        return len(self._data.get(self.storage_key(key), {}))

    # -- writes -----------------------------------------------------------------------

    def _next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def insert(self, rt: ResourceType, obj: Obj) -> Obj:
        """Store a new object; fills uid, creationTimestamp and resourceVersion."""
        meta = obj["metadata"]
        ns, name = meta.get("namespace", "") if rt.namespaced else "", meta["name"]
        bucket = self._data.setdefault(self.storage_key(rt.key), {})
        if (ns, name) in bucket:
            raise already_exists(rt.plural, rt.group, name)
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", timestamp(self.clock()))
        meta["resourceVersion"] = str(self._next_rv())
        bucket[(ns, name)] = obj
        self._record(Change(self.rv, self.storage_key(rt.key), "ADDED", obj, None))
        return obj

    def replace(self, rt: ResourceType, obj: Obj, expected_rv: str | None) -> Obj:
        meta = obj["metadata"]
        ns, name = meta.get("namespace", "") if rt.namespaced else "", meta["name"]
        bucket = self._data.get(self.storage_key(rt.key), {})
        old = bucket.get((ns, name))
        if old is None:
            raise not_found(rt.plural, rt.group, name)
        if expected_rv and old["metadata"]["resourceVersion"] != expected_rv:
            raise conflict(rt.plural, rt.group, name)
        meta["resourceVersion"] = str(self._next_rv())
        bucket[(ns, name)] = obj
        self._record(Change(self.rv, self.storage_key(rt.key), "MODIFIED", obj, old))
        return obj

    def remove(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        bucket = self._data.get(self.storage_key(rt.key), {})
        old = bucket.pop((namespace if rt.namespaced else "", name), None)
        if old is None:
            raise not_found(rt.plural, rt.group, name)
        gone_obj = copy.copy(old)
        gone_obj["metadata"] = dict(old["metadata"], resourceVersion=str(self._next_rv()))
        self._record(Change(self.rv, self.storage_key(rt.key), "DELETED", gone_obj, old))
        return gone_obj

    def drop_type(self, key: str) -> None:
        self._data.pop(self.storage_key(key), None)

    def _record(self, change: Change) -> None:
        self.history.append(change)
        while len(self.history) > self.history_size:
            self.floor = self.history.popleft().rv
        for w in list(self.watchers):
            if w.key == change.key:
                w.offer(change)

    # -- watch ------------------------------------------------------------------------

    def compact(self) -> None:
        """Forget all history: a watch from any earlier resourceVersion gets 410 Gone."""
        self.history.clear()
        self.floor = self.rv

    def since(self, key: str, rv: int) -> list[Change]:
        """Changes after `rv`; raises 410 when the window no longer reaches back that far."""
        if rv < self.floor:
            raise gone(f"too old resource version: {rv} ({self.floor + 1})")
        key = self.storage_key(key)
        return [c for c in self.history if c.rv > rv and c.key == key]

    def add_watcher(self, key: str, namespace: str | None, match: Callable[[Obj], bool]) -> Watcher:
        w = Watcher(self.storage_key(key), namespace, match, asyncio.Queue(self.watch_queue_size))
        self.watchers.add(w)
        return w

    def remove_watcher(self, w: Watcher) -> None:
        self.watchers.discard(w)

    def drop_watchers(self, abort: bool = False) -> int:
        n = 0
        for w in list(self.watchers):
            w.close(abort)
            self.watchers.discard(w)
            n += 1
        return n
