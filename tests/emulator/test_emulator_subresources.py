# mypy: disable-error-code="arg-type,call-arg"
"""/scale and /status subresources, generation, optimistic concurrency, forced conflicts."""

from __future__ import annotations

import json
from typing import Any

import pytest
from emulator_helpers import deployment
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from gpumix.emulator import Emulator


async def test_scale_subresource(api: Any) -> None:
    apps = client.AppsV1Api(api)
    await apps.create_namespaced_deployment("default", deployment("web", replicas=2))
    scale = await apps.read_namespaced_deployment_scale("web", "default")
    assert scale.kind == "Scale" and scale.api_version == "autoscaling/v1"
    assert scale.spec.replicas == 2 and scale.status.selector == "app=web"
    scale.spec.replicas = 5
    out = await apps.replace_namespaced_deployment_scale("web", "default", scale)
    assert out.spec.replicas == 5
    dep = await apps.read_namespaced_deployment("web", "default")
    assert dep.spec.replicas == 5 and dep.metadata.generation == 2
    # The Scale carries the Deployment's resourceVersion: a stale one conflicts.
    scale.spec.replicas = 6
    with pytest.raises(ApiException) as err:
        await apps.replace_namespaced_deployment_scale("web", "default", scale)
    assert err.value.status == 409
    out = await apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 1}})
    assert out.spec.replicas == 1
    with pytest.raises(ApiException) as err:
        await apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": -1}})
    assert err.value.status == 422


async def test_status_subresource(api: Any) -> None:
    apps = client.AppsV1Api(api)
    await apps.create_namespaced_deployment("default", deployment("web", replicas=2))
    dep = await apps.patch_namespaced_deployment_status(
        "web", "default", {"status": {"replicas": 2, "readyReplicas": 2}, "spec": {"replicas": 9}}
    )
    assert dep.status.ready_replicas == 2
    assert dep.spec.replicas == 2  # /status ignores spec
    assert dep.metadata.generation == 1  # and does not bump generation
    # The main resource ignores status changes.
    dep = await apps.patch_namespaced_deployment("web", "default", {"status": {"readyReplicas": 0}})
    assert dep.status.ready_replicas == 2
    # Status set on create is dropped.
    body = deployment("other")
    body["status"] = {"replicas": 3}
    made = await apps.create_namespaced_deployment("default", body)
    assert made.status is None or made.status.replicas is None


async def test_forced_conflicts(api: Any, emu: Emulator) -> None:
    apps = client.AppsV1Api(api)
    await apps.create_namespaced_deployment("default", deployment("web"))
    emu.conflict_next("deployments", "web", "default", n=2)
    for _ in range(2):
        with pytest.raises(ApiException) as err:
            await apps.patch_namespaced_deployment_scale(
                "web", "default", {"spec": {"replicas": 3}}
            )
        assert err.value.status == 409
        assert json.loads(err.value.body)["reason"] == "Conflict"
    out = await apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 3}})
    assert out.spec.replicas == 3


async def test_noop_update_keeps_resource_version(api: Any) -> None:
    apps = client.AppsV1Api(api)
    made = await apps.create_namespaced_deployment("default", deployment("web"))
    again = await apps.replace_namespaced_deployment("web", "default", made)
    assert again.metadata.resource_version == made.metadata.resource_version


async def test_simulated_deployment_controller() -> None:
    async with Emulator(simulate_deployments=True) as emu, emu.api_client() as api:
        apps = client.AppsV1Api(api)
        await apps.create_namespaced_deployment("default", deployment("web", replicas=3))
        dep = await apps.read_namespaced_deployment("web", "default")
        assert dep.status.ready_replicas == 3
        assert dep.status.observed_generation == 1
        await apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 4}})
        dep = await apps.read_namespaced_deployment("web", "default")
        assert dep.status.ready_replicas == 4 and dep.status.observed_generation == 2


async def test_leases_and_events(api: Any) -> None:
    coord = client.CoordinationV1Api(api)
    lease = await coord.create_namespaced_lease(
        "default",
        {
            "metadata": {"name": "gpumix-controller"},
            "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
        },
    )
    lease.spec.holder_identity = "b"
    await coord.replace_namespaced_lease("gpumix-controller", "default", lease)
    lease.spec.holder_identity = "c"
    with pytest.raises(ApiException) as err:
        await coord.replace_namespaced_lease("gpumix-controller", "default", lease)
    assert err.value.status == 409
    core = client.CoreV1Api(api)
    await core.create_namespaced_event(
        "default",
        {
            "metadata": {"name": "web.1"},
            "reason": "Scaled",
            "message": "to 3",
            "type": "Normal",
            "involvedObject": {"kind": "Deployment", "name": "web", "namespace": "default"},
        },
    )
    events = client.EventsV1Api(api)
    await events.create_namespaced_event(
        "default",
        {
            "metadata": {"name": "web.2"},
            "reason": "Scaled",
            "note": "to 4",
            "type": "Normal",
            "action": "Scale",
            "reportingController": "gpumix",
            "reportingInstance": "x",
            "eventTime": "2026-01-01T00:00:00.000000Z",
            "regarding": {"kind": "Deployment", "name": "web", "namespace": "default"},
        },
    )
    listed = await core.list_namespaced_event("default", field_selector="involvedObject.name=web")
    # Both APIs write one storage: the events.k8s.io Event is listed here too.
    assert [e.reason for e in listed.items] == ["Scaled", "Scaled"]


async def test_both_event_apis_share_storage(api: Any, emu: Emulator) -> None:
    events = client.EventsV1Api(api)
    await events.create_namespaced_event(
        "default",
        {
            "metadata": {"name": "web.1"},
            "reason": "Scaled",
            "note": "to 4",
            "type": "Normal",
            "action": "Scale",
            "reportingController": "gpumix.io/controller",
            "reportingInstance": "x",
            "eventTime": "2026-01-01T00:00:00.000000Z",
            "regarding": {"kind": "Deployment", "name": "web", "namespace": "default"},
        },
    )
    core = client.CoreV1Api(api)
    listed = await core.list_namespaced_event("default", field_selector="involvedObject.name=web")
    assert [(e.reason, e.message, e.involved_object.kind) for e in listed.items] == [
        ("Scaled", "to 4", "Deployment")
    ]
    assert listed.items[0].reporting_component == "gpumix.io/controller"
    await core.create_namespaced_event(
        "default",
        {
            "metadata": {"name": "web.2"},
            "reason": "Planned",
            "message": "a100=2",
            "type": "Normal",
            "involvedObject": {"kind": "Deployment", "name": "web"},
            # kubernetes-asyncio's events.k8s.io model insists on eventTime.
            "eventTime": "2026-01-01T00:00:01.000000Z",
        },
    )
    back = await events.list_namespaced_event("default", field_selector="regarding.name=web")
    assert sorted(e.note for e in back.items) == ["a100=2", "to 4"]
    await events.delete_namespaced_event("web.2", "default")
    assert [e["metadata"]["name"] for e in emu.list("events", "default")] == ["web.1"]
