# mypy: disable-error-code="arg-type,call-arg"
"""CRDs register resources at run time; CRs are pruned and validated; HPA v1/v2."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from gpumix.emulator import Emulator

GPUMIX_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "gpumixes.gpumix.io"},
    "spec": {
        "group": "gpumix.io",
        "scope": "Namespaced",
        "names": {
            "plural": "gpumixes",
            "singular": "gpumix",
            "kind": "GPUMix",
            "shortNames": ["gmx"],
        },
        "versions": [
            {
                "name": "v1alpha1",
                "served": True,
                "storage": True,
                "subresources": {
                    "status": {},
                    "scale": {
                        "specReplicasPath": ".spec.replicas",
                        "statusReplicasPath": ".status.replicas",
                        "labelSelectorPath": ".status.selector",
                    },
                },
                "additionalPrinterColumns": [
                    {"name": "Model", "type": "string", "jsonPath": ".spec.model"}
                ],
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["model"],
                                "properties": {
                                    "model": {"type": "string"},
                                    "mode": {"type": "string", "enum": ["recommend", "scale"]},
                                    "replicas": {"type": "integer", "minimum": 0},
                                    "prices": {
                                        "type": "object",
                                        "additionalProperties": {"type": "number"},
                                    },
                                },
                            },
                            "status": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            },
                        },
                    }
                },
            }
        ],
    },
}

SCALED_OBJECT_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "scaledobjects.keda.sh"},
    "spec": {
        "group": "keda.sh",
        "scope": "Namespaced",
        "names": {
            "plural": "scaledobjects",
            "singular": "scaledobject",
            "kind": "ScaledObject",
            "shortNames": ["so"],
        },
        "versions": [
            {
                "name": "v1alpha1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


MERGE = "application/merge-patch+json"


def gpumix(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gpumix.io/v1alpha1",
        "kind": "GPUMix",
        "metadata": {"name": name},
        "spec": spec,
    }


async def test_crd_registers_resource(api: Any, emu: Emulator) -> None:
    ext = client.ApiextensionsV1Api(api)
    crd = await ext.create_custom_resource_definition(GPUMIX_CRD)
    kinds = {c.type: c.status for c in crd.status.conditions}
    assert kinds["Established"] == "True"
    async with aiohttp.ClientSession() as s, s.get(emu.url + "/apis/gpumix.io/v1alpha1") as r:
        doc = await r.json()
    names = {res["name"]: res for res in doc["resources"]}
    assert names["gpumixes"]["kind"] == "GPUMix" and names["gpumixes"]["namespaced"]
    assert names["gpumixes"]["shortNames"] == ["gmx"]
    assert "gpumixes/status" in names and "gpumixes/scale" in names
    co = client.CustomObjectsApi(api)
    made = await co.create_namespaced_custom_object(
        "gpumix.io",
        "v1alpha1",
        "default",
        "gpumixes",
        gpumix("llama", model="llama2-7b", mode="scale", replicas=2, unknown="dropped"),
    )
    assert "unknown" not in made["spec"]  # pruned
    assert made["metadata"]["generation"] == 1
    # Status subresource: main writes ignore status, /status writes ignore spec.
    await co.patch_namespaced_custom_object_status(
        "gpumix.io",
        "v1alpha1",
        "default",
        "gpumixes",
        "llama",
        {"status": {"replicas": 2, "selector": "app=llama", "plan": {"a100": 1}}},
        _content_type=MERGE,
    )
    got = await co.get_namespaced_custom_object(
        "gpumix.io", "v1alpha1", "default", "gpumixes", "llama"
    )
    assert got["status"]["plan"] == {"a100": 1} and got["metadata"]["generation"] == 1
    scale = await co.get_namespaced_custom_object_scale(
        "gpumix.io", "v1alpha1", "default", "gpumixes", "llama"
    )
    assert scale["spec"]["replicas"] == 2 and scale["status"]["selector"] == "app=llama"
    await co.patch_namespaced_custom_object_scale(
        "gpumix.io",
        "v1alpha1",
        "default",
        "gpumixes",
        "llama",
        {"spec": {"replicas": 4}},
        _content_type=MERGE,
    )
    got = await co.get_namespaced_custom_object(
        "gpumix.io", "v1alpha1", "default", "gpumixes", "llama"
    )
    assert got["spec"]["replicas"] == 4 and got["metadata"]["generation"] == 2
    # Deleting the CRD removes the resource and its objects.
    await ext.delete_custom_resource_definition("gpumixes.gpumix.io")
    with pytest.raises(ApiException) as err:
        await co.list_namespaced_custom_object("gpumix.io", "v1alpha1", "default", "gpumixes")
    assert err.value.status == 404


async def test_cr_validation_names_the_field(api: Any) -> None:
    await client.ApiextensionsV1Api(api).create_custom_resource_definition(GPUMIX_CRD)
    co = client.CustomObjectsApi(api)
    with pytest.raises(ApiException) as err:
        await co.create_namespaced_custom_object(
            "gpumix.io",
            "v1alpha1",
            "default",
            "gpumixes",
            gpumix("bad", mode="sometimes", replicas=-1, prices={"a100": "cheap"}),
        )
    assert err.value.status == 422
    body = json.loads(err.value.body)
    fields = {c["field"]: c for c in body["details"]["causes"]}
    assert fields["spec.model"]["reason"] == "FieldValueRequired"
    assert fields["spec.mode"]["reason"] == "FieldValueNotSupported"
    assert "greater than or equal to 0" in fields["spec.replicas"]["message"]
    assert "must be of type number" in fields["spec.prices.a100"]["message"]
    assert body["message"].startswith('GPUMix.gpumix.io "bad" is invalid: [')
    with pytest.raises(ApiException) as err:
        await co.create_namespaced_custom_object(
            "gpumix.io",
            "v1alpha1",
            "default",
            "gpumixes",
            gpumix("strict", model="m", extra=1),
            field_validation="Strict",
        )
    assert err.value.status == 400 and "spec.extra" in str(err.value.body)


async def test_preserve_unknown_fields_and_table(api: Any, emu: Emulator) -> None:
    await client.ApiextensionsV1Api(api).create_custom_resource_definition(SCALED_OBJECT_CRD)
    co = client.CustomObjectsApi(api)
    body = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "so"},
        "spec": {"scaleTargetRef": {"name": "web"}, "triggers": [{"type": "cpu"}]},
    }
    made = await co.create_namespaced_custom_object(
        "keda.sh", "v1alpha1", "default", "scaledobjects", body
    )
    assert made["spec"]["triggers"] == [{"type": "cpu"}]
    emu.create(GPUMIX_CRD)
    emu.create(
        gpumix("llama", model="llama2-7b") | {"metadata": {"name": "llama", "namespace": "default"}}
    )
    headers = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"}
    async with (
        aiohttp.ClientSession() as s,
        s.get(
            emu.url + "/apis/gpumix.io/v1alpha1/namespaces/default/gpumixes", headers=headers
        ) as r,
    ):
        table = await r.json()
    assert table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Model", "Age"]
    assert table["rows"][0]["cells"][:2] == ["llama", "llama2-7b"]


HPA_V2 = {
    "apiVersion": "autoscaling/v2",
    "kind": "HorizontalPodAutoscaler",
    "metadata": {"name": "web"},
    "spec": {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
        "minReplicas": 1,
    },
}


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_hpa_without_max_replicas_is_invalid(api: Any, version: str) -> None:
    body = dict(HPA_V2, apiVersion=f"autoscaling/{version}")
    with pytest.raises(ApiException) as err:
        if version == "v2":
            await client.AutoscalingV2Api(api).create_namespaced_horizontal_pod_autoscaler(
                "default", body
            )
        else:
            await client.AutoscalingV1Api(api).create_namespaced_horizontal_pod_autoscaler(
                "default", body
            )
    assert err.value.status == 422
    status = json.loads(err.value.body)
    assert status["message"] == (
        'HorizontalPodAutoscaler.autoscaling "web" is invalid: '
        "[spec.maxReplicas: Required value: must be set and greater than 0, "
        "spec.maxReplicas: Invalid value: 0: must be greater than or equal to `minReplicas`]"
    )
    assert status["details"]["causes"][0]["field"] == "spec.maxReplicas"


async def test_hpa_served_at_both_versions(api: Any) -> None:
    v1 = client.AutoscalingV1Api(api)
    v2 = client.AutoscalingV2Api(api)
    await v1.create_namespaced_horizontal_pod_autoscaler(
        "default",
        {
            "apiVersion": "autoscaling/v1",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {
                "scaleTargetRef": {"kind": "Deployment", "name": "web"},
                "maxReplicas": 4,
                "targetCPUUtilizationPercentage": 60,
            },
        },
    )
    as_v2 = await v2.read_namespaced_horizontal_pod_autoscaler("web", "default")
    assert as_v2.spec.max_replicas == 4
    metric = as_v2.spec.metrics[0]
    assert metric.resource.name == "cpu" and metric.resource.target.average_utilization == 60
    as_v2.spec.metrics.append(
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "qps"},
                "target": {"type": "AverageValue", "averageValue": "10"},
            },
        }
    )
    await v2.replace_namespaced_horizontal_pod_autoscaler("web", "default", as_v2)
    as_v1 = await v1.read_namespaced_horizontal_pod_autoscaler("web", "default")
    assert as_v1.spec.target_cpu_utilization_percentage == 60
    again = await v2.read_namespaced_horizontal_pod_autoscaler("web", "default")
    assert [m.type for m in again.spec.metrics] == ["Resource", "Pods"]
    # Without metrics, v2 defaults CPU at 80%.
    made = await v2.create_namespaced_horizontal_pod_autoscaler(
        "default",
        dict(HPA_V2, metadata={"name": "other"}, spec=dict(HPA_V2["spec"], maxReplicas=3)),
    )
    assert made.spec.metrics[0].resource.target.average_utilization == 80


async def test_watch_custom_objects(api: Any, emu: Emulator) -> None:
    from kubernetes_asyncio import watch

    emu.create(GPUMIX_CRD)
    start = str(emu.store.rv)
    emu.create(gpumix("a", model="m") | {"metadata": {"name": "a", "namespace": "default"}})
    co = client.CustomObjectsApi(api)
    seen = []
    async for ev in watch.Watch().stream(
        co.list_namespaced_custom_object,
        "gpumix.io",
        "v1alpha1",
        "default",
        "gpumixes",
        resource_version=start,
        timeout_seconds=1,
    ):
        seen.append((ev["type"], ev["object"]["metadata"]["name"]))
    assert seen == [("ADDED", "a")]
