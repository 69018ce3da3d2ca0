"""gpumix.kubeio against the in-process API emulator over HTTP: the client's paging,
errors and call counts, and the informer's CRD watch (an autoscaler kind installed
later is watched at once and, with ``strict_crds``, holds the informer unsynced until
its objects are listed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpumix.emulator import Emulator
from gpumix.kubeio.client import ApiError, KubeClient, resource_path
from gpumix.kubeio.informer import Informer, InformerSettings, Key, Resource

CRD_DIR = Path(__file__).resolve().parents[1] / "e2e" / "crds"
PA_CRD = "podautoscalers.autoscaling.aibrix.ai"
FAST = InformerSettings(
    watch_timeout_s=5,
    page_size=3,
    backoff_initial_s=0.02,
    backoff_max_s=0.2,
    discovery_interval_s=3600.0,  # only the CRD watch can trigger discovery in time
)


def config_map(name: str, ns: str = "default") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}}


def pod_autoscaler(name: str, max_replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling.aibrix.ai/v1alpha1",
        "kind": "PodAutoscaler",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "maxReplicas": max_replicas,
        },
    }


class DictStore:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, Key], dict[str, Any]] = {}

    def convert(self, resource: Resource, obj: dict[str, Any]) -> object | None:
        return obj

    def put(self, resource: Resource, key: Key, item: object | None) -> None:
        assert isinstance(item, dict)
        self.objects[(resource.kind, key)] = item

    def remove(self, resource: Resource, key: Key) -> None:
        self.objects.pop((resource.kind, key), None)


async def until(pred: Callable[[], bool], timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(bookmark_interval_s=0.2) as e:
        yield e


@pytest.fixture
async def client(emu: Emulator) -> AsyncIterator[KubeClient]:
    c = await KubeClient.connect(str(emu.kubeconfig()))
    try:
        yield c
    finally:
        await c.close()


async def test_list_follows_every_page_and_counts_calls(emu: Emulator, client: KubeClient) -> None:
    for i in range(7):
        emu.create(config_map(f"cm-{i}"))
    items, version = await client.list(
        resource_path("", "v1", "configmaps", "default"), page_size=3
    )
    assert sorted(i["metadata"]["name"] for i in items) == [f"cm-{i}" for i in range(7)]
    assert version
    assert client.calls["list"] == 3  # 3 + 3 + 1


async def test_errors_are_one_type_with_the_servers_status(
    emu: Emulator, client: KubeClient
) -> None:
    path = resource_path("", "v1", "configmaps", "default", "missing")
    assert await client.get_or_none(path) is None
    with pytest.raises(ApiError) as err:
        await client.get(path)
    assert err.value.code == 404 and err.value.reason == "NotFound"
    assert "missing" in err.value.message
    emu.create(config_map("dup"))
    with pytest.raises(ApiError) as err:
        await client.request(
            "POST", resource_path("", "v1", "configmaps", "default"), body=config_map("dup")
        )
    assert err.value.code == 409 and err.value.reason == "AlreadyExists"
    emu.start_outage("refuse")
    try:
        with pytest.raises(ApiError) as err:
            await client.get(resource_path("", "v1", "configmaps", "default"))
        assert err.value.unreachable
    finally:
        emu.end_outage()


async def test_a_crd_installed_later_is_watched_at_once_and_holds_a_strict_informer(
    emu: Emulator, client: KubeClient
) -> None:
    store = DictStore()
    seen: list[bool] = []
    informer = Informer(
        client,
        store,
        (Resource("Deployment", "apps/v1", "deployments"),),
        crd_kinds={"autoscaling.aibrix.ai": "PodAutoscaler"},
        crd_names=(PA_CRD,),
        strict_crds=True,
        settings=FAST,
    )
    await informer.start()
    try:
        assert await informer.wait_synced(10)
        informer._on_change = lambda: seen.append(informer.synced)
        emu.create(yaml.safe_load((CRD_DIR / "aibrix-podautoscaler.yaml").read_text()))
        emu.create(pod_autoscaler("a", 3))
        # discovery runs again on the CRD's watch event, not after the 1-hour interval
        await until(lambda: ("PodAutoscaler", ("default", "a")) in store.objects, 2.0)
        await until(lambda: informer.synced)
        assert False in seen  # served but not listed yet: not synced in between
        assert any(r.resource.kind == "PodAutoscaler" for r in informer.reflectors.values())
        emu.delete("customresourcedefinitions.apiextensions.k8s.io", PA_CRD)
        await until(lambda: ("PodAutoscaler", ("default", "a")) not in store.objects)
        await until(lambda: informer.synced)
    finally:
        await informer.stop()


async def test_without_strict_crds_a_late_crd_does_not_unsync(
    emu: Emulator, client: KubeClient
) -> None:
    store = DictStore()
    seen: list[bool] = []
    informer = Informer(
        client,
        store,
        (Resource("Deployment", "apps/v1", "deployments"),),
        crd_kinds={"autoscaling.aibrix.ai": "PodAutoscaler"},
        crd_names=(PA_CRD,),
        settings=FAST,
    )
    await informer.start()
    try:
        assert await informer.wait_synced(10)
        informer._on_change = lambda: seen.append(informer.synced)
        emu.create(yaml.safe_load((CRD_DIR / "aibrix-podautoscaler.yaml").read_text()))
        emu.create(pod_autoscaler("a", 3))
        await until(lambda: ("PodAutoscaler", ("default", "a")) in store.objects, 2.0)
        assert seen and all(seen)
    finally:
        await informer.stop()
