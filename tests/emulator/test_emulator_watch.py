"""list + watch: resume from a resourceVersion, 410 Gone, dropped watches, bookmarks."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from gpumix.emulator import Emulator


def cm(name: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
    }


async def _events(
    emu: Emulator, query: str, limit: int = 100, timeout: float = 5.0
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    url = f"{emu.url}/api/v1/namespaces/default/configmaps?watch=1&{query}"
    async with (
        aiohttp.ClientSession() as s,
        s.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as r,
    ):
        assert r.status == 200
        async for line in r.content:
            out.append(json.loads(line))
            if len(out) >= limit:
                break
    return out


async def test_resume_from_resource_version(api: Any, emu: Emulator) -> None:
    core = client.CoreV1Api(api)
    listing = await core.list_namespaced_config_map("default")
    start = listing.metadata.resource_version
    emu.create(cm("a"))
    emu.create(cm("b"))
    emu.delete("configmaps", "a", "default")
    seen = []
    w = watch.Watch()
    async for ev in w.stream(
        core.list_namespaced_config_map, "default", resource_version=start, timeout_seconds=1
    ):
        seen.append((ev["type"], ev["object"].metadata.name))
    assert seen == [("ADDED", "a"), ("ADDED", "b"), ("DELETED", "a")]


async def test_initial_state_then_live_events(emu: Emulator) -> None:
    emu.create(cm("old"))

    async def later() -> None:
        await asyncio.sleep(0.1)
        emu.create(cm("new"))

    task = asyncio.create_task(later())
    events = await _events(emu, "timeoutSeconds=2", limit=2)
    await task
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "old"),
        ("ADDED", "new"),
    ]


async def test_compacted_history_gives_410(api: Any, emu: Emulator) -> None:
    emu.create(cm("a"))
    old_rv = str(emu.store.rv)
    emu.create(cm("b"))
    emu.compact()
    events = await _events(emu, f"resourceVersion={old_rv}&timeoutSeconds=1")
    assert len(events) == 1 and events[0]["type"] == "ERROR"
    status = events[0]["object"]
    assert status["kind"] == "Status" and status["code"] == 410
    assert status["reason"] == "Expired"
    # kubernetes-asyncio raises it when the watch has a timeout (no auto-retry).
    core = client.CoreV1Api(api)
    with pytest.raises(ApiException) as err:
        async for _ in watch.Watch().stream(
            core.list_namespaced_config_map, "default", resource_version=old_rv, timeout_seconds=1
        ):
            pass
    assert err.value.status == 410
    # A watch from the current resourceVersion is fine.
    current = str(emu.store.rv)
    emu.create(cm("c"))
    events = await _events(emu, f"resourceVersion={current}&timeoutSeconds=1")
    assert [e["object"]["metadata"]["name"] for e in events] == ["c"]


async def test_small_history_window(emu: Emulator) -> None:
    emu.store.history_size = 3
    start = str(emu.store.rv)
    for i in range(5):
        emu.create(cm(f"x{i}"))
    events = await _events(emu, f"resourceVersion={start}&timeoutSeconds=1")
    assert events[0]["type"] == "ERROR" and events[0]["object"]["code"] == 410


@pytest.mark.parametrize("abort", [False, True])
async def test_dropped_watch(emu: Emulator, abort: bool) -> None:
    url = f"{emu.url}/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={emu.store.rv}"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        await asyncio.sleep(0.05)
        assert emu.drop_watches(abort=abort) == 1
        if abort:
            with pytest.raises(aiohttp.ClientError):
                await asyncio.wait_for(r.content.read(), 5)
        else:
            assert await asyncio.wait_for(r.content.read(), 5) == b""
    assert not emu.store.watchers


async def test_bookmarks_and_selector_transitions(emu: Emulator) -> None:
    emu.create(cm("a", team="x"))
    start = emu.store.rv

    async def change() -> None:
        await asyncio.sleep(0.05)
        obj = emu.get("configmaps", "a", "default")
        assert obj is not None
        obj["metadata"]["labels"] = {"team": "y"}
        emu.put(obj)
        await asyncio.sleep(0.05)
        obj["metadata"]["labels"] = {"team": "x"}
        emu.put(obj)

    task = asyncio.create_task(change())
    events = await _events(
        emu,
        f"resourceVersion={start}&labelSelector=team%3Dx&allowWatchBookmarks=true&timeoutSeconds=2",
        limit=3,
    )
    await task
    assert [e["type"] for e in events] == ["DELETED", "ADDED", "BOOKMARK"]
    assert int(events[2]["object"]["metadata"]["resourceVersion"]) >= start + 2


async def test_watch_timeout_ends_stream(emu: Emulator) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    events = await _events(emu, f"resourceVersion={emu.store.rv}&timeoutSeconds=1")
    assert events == []
    assert 0.8 < loop.time() - t0 < 3


async def test_client_watch_survives_dropped_connection(api: Any, emu: Emulator) -> None:
    core = client.CoreV1Api(api)
    start = (await core.list_namespaced_config_map("default")).metadata.resource_version
    seen: list[str] = []

    async def consume() -> None:
        w = watch.Watch()
        async for ev in w.stream(
            core.list_namespaced_config_map, "default", resource_version=start
        ):
            seen.append(ev["object"].metadata.name)
            if len(seen) == 2:
                w.stop()
                return

    task = asyncio.create_task(consume())
    emu.create(cm("a"))
    for _ in range(100):
        if seen:
            break
        await asyncio.sleep(0.02)
    assert emu.drop_watches() == 1
    emu.create(cm("b"))
    await asyncio.wait_for(task, 5)
    assert seen == ["a", "b"]  # resumed from the last resourceVersion: nothing lost or repeated


async def test_streaming_list(emu: Emulator) -> None:
    emu.create(cm("a"))
    emu.create(cm("b"))
    events = await _events(
        emu,
        "sendInitialEvents=true&resourceVersionMatch=NotOlderThan"
        "&allowWatchBookmarks=true&timeoutSeconds=1",
        limit=3,
    )
    assert [e["type"] for e in events] == ["ADDED", "ADDED", "BOOKMARK"]
    marker = events[2]["object"]["metadata"]
    assert marker["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert marker["resourceVersion"] == str(emu.store.rv)
