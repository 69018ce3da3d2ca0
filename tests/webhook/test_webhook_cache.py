"""The cluster cache against the emulator: sync, events, dropped watches, 410 Gone,
API outages and CRDs that appear later; nothing is lost and readiness follows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML
from webhook_kit import deployment, hpa, namespace, node, pod_autoscaler, scaled_object

from gpumix.emulator import Emulator
from gpumix.kube.objects import ObjectRef
from gpumix.kube.policy import Policy
from gpumix.kube.snapshot import Snapshot
from gpumix.kubeio.client import ApiError, KubeClient
from gpumix.webhook.cache import (
    BUILTIN_RESOURCES,
    ClusterCache,
    Reflector,
    ViewStore,
    informer_settings,
)
from gpumix.webhook.metrics import WebhookMetrics
from gpumix.webhook.settings import CacheSettings

CRD_DIR = Path(__file__).resolve().parents[1] / "e2e" / "crds"
FAST = CacheSettings(
    watch_timeout_s=5,
    page_size=7,
    backoff_initial_s=0.02,
    backoff_max_s=0.2,
    discovery_interval_s=0.2,
    request_timeout_s=5,
)


def crd(name: str) -> dict[str, Any]:
    data: dict[str, Any] = YAML(typ="safe").load((CRD_DIR / name).read_text())
    return data


async def until(pred: Callable[[], bool], timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


def dep_ref(name: str, ns: str = "default") -> ObjectRef:
    return ObjectRef("Deployment", ns, name)


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    emulator = Emulator(bookmark_interval_s=0.2)
    emulator.create(namespace("team"))
    for i in range(20):  # more than one list page (FAST.page_size = 7)
        emulator.create(deployment(f"d{i}", "team", model=f"m{i}"))
    emulator.create(node("gpu-1", "NVIDIA-A100-SXM4-80GB", 8))
    emulator.create(hpa("h0", "d0", 5, "team"))
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.stop()


@pytest.fixture
async def cache(emu: Emulator) -> AsyncIterator[ClusterCache]:
    client = await KubeClient.connect(str(emu.kubeconfig()))
    c = ClusterCache(client, Policy(), WebhookMetrics(), FAST)
    await c.start()
    try:
        assert await c.wait_synced(10)
        yield c
    finally:
        await c.stop()
        await client.close()


async def test_initial_sync_holds_every_object_as_views(cache: ClusterCache) -> None:
    snap = cache.snapshot
    assert {r.name for r in snap.deployments if r.namespace == "team"} == {
        f"d{i}" for i in range(20)
    }
    assert "gpu-1" in snap.nodes and snap.gpu_capacity("NVIDIA-A100-SXM4-80GB") == 8
    assert {"team", "default", "kube-system"} <= set(snap.namespaces)
    assert ObjectRef("HorizontalPodAutoscaler", "team", "h0") in snap.autoscalers
    metrics = cache.metrics
    assert metrics is not None
    assert metrics.cache_synced._value.get() == 1
    assert metrics.cache_objects.labels(kind="Deployment")._value.get() == 20


async def test_watch_events_add_change_and_remove(emu: Emulator, cache: ClusterCache) -> None:
    snap = cache.snapshot
    await emu.request(
        "POST", "/apis/apps/v1/namespaces/team/deployments", deployment("new", "team")
    )
    await until(lambda: dep_ref("new", "team") in snap.deployments)
    changed = deployment("d1", "team", model="m1", gpu_product="NVIDIA-A40")
    emu.put(changed)
    await until(lambda: snap.deployments[dep_ref("d1", "team")].gpu_type.name == "NVIDIA-A40")
    emu.delete("deployments", "d2", "team")
    await until(lambda: dep_ref("d2", "team") not in snap.deployments)
    emu.delete("horizontalpodautoscalers", "h0", "team")
    await until(lambda: not snap.autoscalers)


@pytest.mark.parametrize("abort", [False, True])
async def test_dropped_watch_resumes_without_losing_objects(
    emu: Emulator, cache: ClusterCache, abort: bool
) -> None:
    relists = sum(r.relists for r in cache.reflectors.values())
    assert emu.drop_watches(abort=abort) > 0
    emu.create(deployment("during-drop", "team"))
    emu.delete("deployments", "d3", "team")
    snap = cache.snapshot
    await until(lambda: dep_ref("during-drop", "team") in snap.deployments)
    await until(lambda: dep_ref("d3", "team") not in snap.deployments)
    assert sum(r.relists for r in cache.reflectors.values()) == relists  # resumed, no relist
    assert cache.synced


async def test_410_gone_relists_and_keeps_every_object(emu: Emulator, cache: ClusterCache) -> None:
    deployments = next(r for r in cache.reflectors.values() if r.resource.kind == "Deployment")
    relists = deployments.relists
    # changes the watch never sees, then the history is gone
    emu.drop_watches()
    emu.store.drop_watchers()
    emu.create(deployment("while-gone", "team"))
    emu.delete("deployments", "d4", "team")
    emu.compact()
    snap = cache.snapshot
    await until(lambda: deployments.relists > relists)
    await until(lambda: dep_ref("while-gone", "team") in snap.deployments)
    assert dep_ref("d4", "team") not in snap.deployments
    assert {f"d{i}" for i in range(20) if i != 4} <= {r.name for r in snap.deployments}
    await until(lambda: cache.synced)


@pytest.mark.parametrize("mode", ["503", "refuse"])
async def test_api_outage_makes_cache_unready_then_recovers(
    emu: Emulator, cache: ClusterCache, mode: str
) -> None:
    emu.start_outage(mode)
    await until(lambda: not cache.synced)
    assert cache.metrics is not None and cache.metrics.cache_synced._value.get() == 0
    # the cluster changes while the webhook cannot see it
    emu.create(deployment("in-outage", "team"))
    emu.delete("deployments", "d5", "team")
    snap = cache.snapshot
    assert dep_ref("d6", "team") in snap.deployments  # stale data is kept, not dropped
    emu.end_outage()
    await until(lambda: cache.synced)
    await until(lambda: dep_ref("in-outage", "team") in snap.deployments)
    await until(lambda: dep_ref("d5", "team") not in snap.deployments)
    assert len([r for r in snap.deployments if r.namespace == "team"]) == 20


async def test_crds_found_later_are_watched(emu: Emulator, cache: ClusterCache) -> None:
    assert not any(r.resource.optional for r in cache.reflectors.values())
    ready: list[bool] = []
    watcher = asyncio.create_task(_record_readiness(cache, ready))
    emu.create(crd("keda-scaledobject.yaml"))
    emu.create(crd("aibrix-podautoscaler.yaml"))
    await asyncio.sleep(0.05)
    emu.create(scaled_object("so", "d0", None, "team"))
    emu.create(pod_autoscaler("pa", "d1", 3, "team"))
    snap = cache.snapshot
    await until(lambda: ObjectRef("ScaledObject", "team", "so") in snap.autoscalers)
    await until(lambda: ObjectRef("PodAutoscaler", "team", "pa") in snap.autoscalers)
    assert all(r.late for r in cache.reflectors.values() if r.resource.optional)
    assert snap.autoscalers[ObjectRef("ScaledObject", "team", "so")].ceiling is None
    watcher.cancel()
    assert cache.synced and all(ready)  # a new CRD never made the cache unready
    # a CRD that goes away takes its objects with it
    emu.delete("customresourcedefinitions", "scaledobjects.keda.sh")
    await until(lambda: ObjectRef("ScaledObject", "team", "so") not in snap.autoscalers)
    await until(lambda: cache.synced)


async def _record_readiness(cache: ClusterCache, out: list[bool]) -> None:
    for _ in range(10_000):
        out.append(cache.synced)
        await asyncio.sleep(0.005)


async def test_not_synced_before_the_first_list(emu: Emulator) -> None:
    client = await KubeClient.connect(str(emu.kubeconfig()))
    c = ClusterCache(client, Policy(), WebhookMetrics(), FAST)
    emu.start_outage("503")
    try:
        await c.start()
        refused = emu.faults.injected
        await until(lambda: emu.faults.injected >= refused + 10)  # its lists keep failing
        assert not c.synced
        emu.end_outage()
        assert await c.wait_synced(10)
    finally:
        await c.stop()
        await client.close()


class _ClosingServer:
    """A fake API whose watches end as soon as they open."""

    def __init__(self) -> None:
        self.watches = 0

    async def get(self, path: str, query: dict[str, str] | None = None) -> dict[str, Any]:
        return {"metadata": {"resourceVersion": "5"}, "items": []}

    async def watch(
        self, path: str, query: dict[str, str], timeout_s: float
    ) -> AsyncIterator[dict[str, Any]]:
        self.watches += 1
        yield {"type": "OPENED"}


async def test_watches_that_end_at_once_are_backed_off() -> None:
    pauses: list[float] = []

    async def sleep(s: float) -> None:
        pauses.append(s)
        if len(pauses) >= 6:
            raise asyncio.CancelledError

    server = _ClosingServer()
    reflector = Reflector(
        BUILTIN_RESOURCES[2],
        server,
        ViewStore(Snapshot(), Policy()),
        informer_settings(FAST),
        lambda: None,
        sleep,
        jitter=lambda: 1.0,  # the top of the jitter range: the backoff itself
    )
    with pytest.raises(asyncio.CancelledError):
        await reflector.run()
    assert server.watches == 6 and reflector.relists == 1 and reflector.synced
    assert pauses == sorted(pauses) and pauses[-1] == FAST.backoff_max_s


class _ScriptedServer:
    """A fake API whose list and watch calls answer from a script, one entry per call:
    an ``ApiError`` to raise, or (for a watch) the events to stream."""

    def __init__(self, lists: list[object], watches: list[object]) -> None:
        self.lists = lists
        self.watches = watches
        self.calls: list[str] = []

    async def get(self, path: str, query: dict[str, str] | None = None) -> dict[str, Any]:
        self.calls.append("list")
        step = self.lists.pop(0) if self.lists else None
        if isinstance(step, ApiError):
            raise step
        version = str(len(self.calls))
        return {"metadata": {"resourceVersion": version}, "items": [deployment("d", "team")]}

    async def watch(
        self, path: str, query: dict[str, str], timeout_s: float
    ) -> AsyncIterator[dict[str, Any]]:
        self.calls.append(f"watch@{query['resourceVersion']}")
        step = self.watches.pop(0) if self.watches else ApiError(0, "down")
        if isinstance(step, ApiError):
            raise step
        yield {"type": "OPENED"}
        for event in step:  # type: ignore[attr-defined]
            if isinstance(event, ApiError):
                raise event
            yield event


def _scripted_reflector(
    server: _ScriptedServer, pauses: list[float], synced_at_pause: list[bool], stop_after: int
) -> Reflector:
    holder: list[Reflector] = []

    async def sleep(s: float) -> None:
        pauses.append(s)
        synced_at_pause.append(holder[0].synced)
        if len(pauses) >= stop_after:
            raise asyncio.CancelledError

    reflector = Reflector(
        BUILTIN_RESOURCES[2],
        server,  # type: ignore[arg-type]
        ViewStore(Snapshot(), Policy()),
        informer_settings(FAST),
        lambda: None,
        sleep,
        jitter=lambda: 0.0,  # the bottom of the jitter range: half the backoff
    )
    holder.append(reflector)
    return reflector


async def test_410_makes_the_view_not_current_at_once_and_relists_without_a_pause() -> None:
    gone = ApiError(410, "too old resource version", "Expired")
    server = _ScriptedServer(lists=[], watches=[[gone], [gone]])
    pauses: list[float] = []
    synced: list[bool] = []
    reflector = _scripted_reflector(server, pauses, synced, stop_after=1)
    seen: list[bool] = []
    original = reflector.relist

    async def relist() -> str:
        seen.append(reflector.synced)  # relisting: the view is not current meanwhile
        return await original()

    reflector.relist = relist  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError):
        await reflector.run()
    # list, watch -> 410, list at once, watch -> 410, list at once, watch -> down: pause
    assert server.calls == ["list", "watch@1", "list", "watch@3", "list", "watch@5"]
    assert seen == [False, False, False]
    assert len(pauses) == 1


async def test_after_a_failure_only_a_new_list_makes_the_view_current() -> None:
    """The API server is down (the watch cannot be opened), then back: the reflector
    does not resume its old watch (it could open and then answer 410, with decisions
    taken on a stale view in between); it lists again and is synced only after that."""
    down = ApiError(0, "connection refused")
    forbidden = ApiError(403, "RBAC warming up", "Forbidden")
    server = _ScriptedServer(lists=[None, down, forbidden], watches=[down, [], []])
    pauses: list[float] = []
    synced: list[bool] = []
    reflector = _scripted_reflector(server, pauses, synced, stop_after=4)
    with pytest.raises(asyncio.CancelledError):
        await reflector.run()
    assert server.calls[:5] == ["list", "watch@1", "list", "list", "list"]
    assert synced[:3] == [False, False, False]  # unsynced from the first failure on
    assert reflector.relists == 2
    # the backoff doubles and is jittered (here: half of each step)
    assert pauses[:3] == [FAST.backoff_initial_s / 2, FAST.backoff_initial_s, 0.04]


def gpu_request(obj: dict[str, Any], value: object) -> dict[str, Any]:
    obj["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "limits": {"nvidia.com/gpu": value}
    }
    return obj


async def test_objects_that_cannot_be_read_do_not_stop_the_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A GPU quantity the API server accepts but gpumix cannot count (``10e399``, its
    form of ``1e400``) is kept as a view naming the field, in any namespace; an object
    whose conversion fails outright (a defect in a reader, simulated here) is left out.
    Neither stops the list or the watch: every other object is cached and the cache
    syncs (readiness)."""
    import gpumix.kube.objects as objects

    real = objects.deployment_view

    def failing(obj: Any, policy: Policy) -> Any:
        if objects.name_of(obj).startswith("broken"):
            raise RuntimeError("a reader defect")
        return real(obj, policy)

    monkeypatch.setattr(objects, "deployment_view", failing)
    emulator = Emulator(bookmark_interval_s=0.2)
    emulator.create(namespace("team"))
    emulator.create(gpu_request(deployment("huge", "kube-system"), "10e399"))
    emulator.create(gpu_request(deployment("huge", "team"), "10e399"))
    emulator.create(deployment("broken-1", "team"))
    for i in range(10):  # more than one list page around them
        emulator.create(deployment(f"d{i}", "team"))
    await emulator.start()
    client = await KubeClient.connect(str(emulator.kubeconfig()))
    metrics = WebhookMetrics()
    c = ClusterCache(client, Policy(), metrics, FAST)
    try:
        await c.start()
        assert await c.wait_synced(10)
        snap = c.snapshot
        assert {f"d{i}" for i in range(10)} <= {r.name for r in snap.deployments}
        for ns in ("team", "kube-system"):
            huge = snap.deployments[dep_ref("huge", ns)]
            assert [u.field for u in huge.unreadable] == [
                "spec.template.spec.containers[0].resources.limits[nvidia.com/gpu]"
            ]
            assert huge.in_scope and huge.gpu_type.kind == "unpinned"
        assert dep_ref("broken-1", "team") not in snap.deployments
        assert "a reader defect" in snap.unreadable[dep_ref("broken-1", "team")]
        gauge = metrics.cache_unreadable
        assert gauge.labels(kind="Deployment", handling="kept")._value.get() == 2
        assert gauge.labels(kind="Deployment", handling="skipped")._value.get() == 1
        assert metrics.cache_synced._value.get() == 1
        # the watch too: a new unreadable object, then the fix of one, are applied in turn
        emulator.create(deployment("broken-2", "team"))
        emulator.create(gpu_request(deployment("later", "team"), "inf"))
        await until(lambda: dep_ref("broken-2", "team") in snap.unreadable)
        await until(lambda: dep_ref("later", "team") in snap.deployments)
        assert snap.deployments[dep_ref("later", "team")].unreadable
        emulator.put(gpu_request(deployment("huge", "team"), "1"))
        await until(lambda: not snap.deployments[dep_ref("huge", "team")].unreadable)
        emulator.delete("deployments", "broken-1", "team")
        await until(lambda: dep_ref("broken-1", "team") not in snap.unreadable)
        assert gauge.labels(kind="Deployment", handling="skipped")._value.get() == 1
        assert gauge.labels(kind="Deployment", handling="kept")._value.get() == 2
        assert c.synced
    finally:
        await c.stop()
        await client.close()
        await emulator.stop()
