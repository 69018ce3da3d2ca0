# mypy: disable-error-code="arg-type,call-arg"
"""CRUD, discovery, selectors, patch types and Status errors through kubernetes-asyncio."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from emulator_helpers import deployment
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from gpumix.emulator import Emulator


async def test_discovery_documents(emu: Emulator) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(emu.url + "/version") as r:
            assert (await r.json())["major"] == "1"
        async with s.get(emu.url + "/api") as r:
            assert (await r.json())["versions"] == ["v1"]
        async with s.get(emu.url + "/apis") as r:
            groups = {g["name"]: g for g in (await r.json())["groups"]}
        assert groups["autoscaling"]["preferredVersion"]["version"] == "v2"
        assert {v["version"] for v in groups["autoscaling"]["versions"]} == {"v1", "v2"}
        for g in (
            "apps",
            "coordination.k8s.io",
            "events.k8s.io",
            "apiextensions.k8s.io",
            "admissionregistration.k8s.io",
        ):
            assert g in groups
        async with s.get(emu.url + "/apis/apps/v1") as r:
            doc = await r.json()
        by_name = {res["name"]: res for res in doc["resources"]}
        assert by_name["deployments"]["namespaced"] is True
        assert by_name["deployments"]["kind"] == "Deployment"
        assert "watch" in by_name["deployments"]["verbs"]
        assert by_name["deployments/scale"]["kind"] == "Scale"
        assert by_name["deployments/scale"]["group"] == "autoscaling"
        assert by_name["deployments/status"]["verbs"] == ["get", "patch", "update"]
        async with s.get(emu.url + "/api/v1") as r:
            core = {res["name"] for res in (await r.json())["resources"]}
        assert {
            "namespaces",
            "nodes",
            "pods",
            "configmaps",
            "secrets",
            "events",
            "serviceaccounts",
            "services",
        } <= core
        async with s.get(emu.url + "/apis/nope/v1") as r:
            assert r.status == 404


async def test_create_get_update_delete(api: Any) -> None:
    apps = client.AppsV1Api(api)
    created = await apps.create_namespaced_deployment("default", deployment("web"))
    meta = created.metadata
    assert meta.uid and meta.creation_timestamp and meta.generation == 1
    assert created.spec.replicas == 1  # defaulted
    assert created.spec.strategy.type == "RollingUpdate"
    got = await apps.read_namespaced_deployment("web", "default")
    assert got.metadata.resource_version == meta.resource_version
    got.spec.replicas = 4
    updated = await apps.replace_namespaced_deployment("web", "default", got)
    assert updated.metadata.generation == 2
    assert int(updated.metadata.resource_version) > int(meta.resource_version)
    # A metadata-only change does not bump generation.
    updated.metadata.labels["extra"] = "1"
    relabeled = await apps.replace_namespaced_deployment("web", "default", updated)
    assert relabeled.metadata.generation == 2
    status = await apps.delete_namespaced_deployment("web", "default")
    assert status.status == "Success"
    with pytest.raises(ApiException) as err:
        await apps.read_namespaced_deployment("web", "default")
    assert err.value.status == 404
    body = json.loads(err.value.body)
    assert body["kind"] == "Status" and body["reason"] == "NotFound"
    assert body["message"] == 'deployments.apps "web" not found'
    assert body["details"] == {"name": "web", "group": "apps", "kind": "deployments"}


async def test_already_exists_and_stale_update(api: Any) -> None:
    apps = client.AppsV1Api(api)
    first = await apps.create_namespaced_deployment("default", deployment("web"))
    with pytest.raises(ApiException) as err:
        await apps.create_namespaced_deployment("default", deployment("web"))
    assert err.value.status == 409
    assert json.loads(err.value.body)["reason"] == "AlreadyExists"
    first.spec.replicas = 2
    await apps.replace_namespaced_deployment("web", "default", first)
    first.spec.replicas = 3  # still carries the old resourceVersion
    with pytest.raises(ApiException) as err:
        await apps.replace_namespaced_deployment("web", "default", first)
    assert err.value.status == 409
    body = json.loads(err.value.body)
    assert body["reason"] == "Conflict"
    assert "the object has been modified" in body["message"]


async def test_missing_namespace_and_invalid(api: Any) -> None:
    apps = client.AppsV1Api(api)
    with pytest.raises(ApiException) as err:
        await apps.create_namespaced_deployment("nowhere", deployment("web"))
    assert err.value.status == 404
    assert json.loads(err.value.body)["message"] == 'namespaces "nowhere" not found'
    bad = deployment("web")
    bad["spec"]["template"]["metadata"]["labels"] = {"app": "other"}
    with pytest.raises(ApiException) as err:
        await apps.create_namespaced_deployment("default", bad)
    assert err.value.status == 422
    body = json.loads(err.value.body)
    assert body["reason"] == "Invalid"
    assert body["details"]["causes"][0]["field"] == "spec.template.metadata.labels"
    await apps.create_namespaced_deployment("default", deployment("web"))
    changed = deployment("web", {"app": "web", "tier": "x"})
    with pytest.raises(ApiException) as err:
        await apps.replace_namespaced_deployment("web", "default", changed)
    assert err.value.status == 422
    assert "field is immutable" in json.loads(err.value.body)["message"]


async def test_generate_name_selectors_and_paging(api: Any) -> None:
    core = client.CoreV1Api(api)
    for i in range(7):
        body = {
            "metadata": {"generateName": "cm-", "labels": {"idx": str(i), "even": str(i % 2 == 0)}},
            "data": {"i": str(i)},
        }
        made = await core.create_namespaced_config_map("default", body)
        assert made.metadata.name.startswith("cm-") and len(made.metadata.name) == 8
    evens = await core.list_namespaced_config_map("default", label_selector="even=True")
    assert len(evens.items) == 4
    some = await core.list_namespaced_config_map("default", label_selector="idx in (1,2,9)")
    assert sorted(i.metadata.labels["idx"] for i in some.items) == ["1", "2"]
    none = await core.list_namespaced_config_map("default", label_selector="!idx")
    assert none.items == []
    name = evens.items[0].metadata.name
    one = await core.list_namespaced_config_map("default", field_selector=f"metadata.name={name}")
    assert [i.metadata.name for i in one.items] == [name]
    seen: list[str] = []
    token = None
    for _ in range(10):
        page = await core.list_namespaced_config_map("default", limit=3, _continue=token)
        seen += [i.metadata.name for i in page.items]
        token = page.metadata._continue
        if not token:
            break
    assert len(seen) == 7 and len(set(seen)) == 7


async def test_dry_run_persists_nothing(api: Any, emu: Emulator) -> None:
    apps = client.AppsV1Api(api)
    rv = emu.store.rv
    out = await apps.create_namespaced_deployment("default", deployment("web"), dry_run="All")
    assert out.metadata.name == "web"
    assert emu.get("deployments", "web", "default") is None
    assert emu.store.rv == rv


async def test_patch_types(api: Any, emu: Emulator) -> None:
    apps = client.AppsV1Api(api)
    dep = deployment("web")
    dep["spec"]["template"]["spec"]["containers"].append({"name": "side", "image": "busybox:1"})
    await apps.create_namespaced_deployment("default", dep)
    url = emu.url + "/apis/apps/v1/namespaces/default/deployments/web"
    async with aiohttp.ClientSession() as s:

        async def patch(ctype: str, body: Any, query: str = "") -> dict[str, Any]:
            async with s.patch(
                url + query, data=json.dumps(body), headers={"Content-Type": ctype}
            ) as r:
                assert r.status == 200, await r.text()
                return dict(await r.json())

        out = await patch(
            "application/json-patch+json", [{"op": "replace", "path": "/spec/replicas", "value": 3}]
        )
        assert out["spec"]["replicas"] == 3
        out = await patch("application/merge-patch+json", {"metadata": {"labels": {"x": "y"}}})
        assert out["metadata"]["labels"] == {"app": "web", "x": "y"}
        # Strategic merge: containers are merged by name, the sidecar stays.
        out = await patch(
            "application/strategic-merge-patch+json",
            {
                "spec": {
                    "template": {"spec": {"containers": [{"name": "main", "image": "nginx:1.28"}]}}
                }
            },
        )
        containers = out["spec"]["template"]["spec"]["containers"]
        assert [(c["name"], c["image"]) for c in containers] == [
            ("main", "nginx:1.28"),
            ("side", "busybox:1"),
        ]
        out = await patch(
            "application/apply-patch+yaml",
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web"},
                "spec": {"replicas": 5},
            },
            "?fieldManager=test",
        )
        assert out["spec"]["replicas"] == 5
        # Server-side apply creates a missing object.
        async with s.patch(
            url.replace("/web", "/fresh") + "?fieldManager=test",
            data=json.dumps(deployment("fresh")),
            headers={"Content-Type": "application/apply-patch+yaml"},
        ) as r:
            assert r.status == 201
        async with s.patch(url, data=b"{}", headers={"Content-Type": "text/plain"}) as r:
            assert r.status == 415


async def test_finalizers_and_namespace_deletion(api: Any, emu: Emulator) -> None:
    core = client.CoreV1Api(api)
    await core.create_namespace({"metadata": {"name": "team"}})
    ns = await core.read_namespace("team")
    assert ns.metadata.labels["kubernetes.io/metadata.name"] == "team"
    await core.create_namespaced_config_map(
        "team", {"metadata": {"name": "held", "finalizers": ["example.com/keep"]}}
    )
    await core.delete_namespaced_config_map("held", "team")
    held = await core.read_namespaced_config_map("held", "team")
    assert held.metadata.deletion_timestamp is not None
    await core.patch_namespaced_config_map("held", "team", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException):
        await core.read_namespaced_config_map("held", "team")
    await core.create_namespaced_config_map("team", {"metadata": {"name": "c"}})
    await core.delete_namespace("team")
    assert emu.list("configmaps", "team") == []
    assert emu.get("namespaces", "team") is None


async def test_injected_failures_and_outage(api: Any, emu: Emulator) -> None:
    core = client.CoreV1Api(api)
    emu.fail_next(2, 503, path_prefix="/api/v1/namespaces/default/configmaps")
    for _ in range(2):
        with pytest.raises(ApiException) as err:
            await core.list_namespaced_config_map("default")
        assert err.value.status == 503
    await core.list_namespaced_config_map("default")
    emu.start_outage("503", seconds=0.3)
    with pytest.raises(ApiException) as err:
        await core.list_namespace()
    assert err.value.status == 503
    await asyncio.sleep(0.35)
    await core.list_namespace()
    emu.start_outage("refuse")
    with pytest.raises(aiohttp.ClientError):
        async with aiohttp.ClientSession() as s, s.get(emu.url + "/api/v1/namespaces") as r:
            await r.read()
    emu.end_outage()
    await core.list_namespace()


async def test_many_deployments_are_fast(emu: Emulator) -> None:
    started = time.monotonic()
    for i in range(10_000):
        emu.create(deployment(f"d{i}", namespace="default"))
    created = time.monotonic() - started
    resp = await emu.request("GET", "/apis/apps/v1/deployments")
    listed = time.monotonic() - started - created
    assert len(resp.body["items"]) == 10_000
    assert created < 20 and listed < 10, (created, listed)
