# mypy: disable-error-code="arg-type,call-arg"
"""The admission chain against a real HTTPS webhook, the way kube-apiserver calls it."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from emulator_helpers import (
    HttpsWebhook,
    allow,
    deny,
    deployment,
    patch_response,
    rule,
)
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from gpumix.emulator import Emulator, certs

MUTATING = "MutatingWebhookConfiguration"
VALIDATING = "ValidatingWebhookConfiguration"
HPA_RULE = rule(["autoscaling"], ["v2"], ["horizontalpodautoscalers"])
DEPLOY_RULE = rule(["apps"], ["v1"], ["deployments"])


@pytest.fixture
async def hook() -> AsyncIterator[HttpsWebhook]:
    server = HttpsWebhook()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def hpa(name: str = "web", max_replicas: int | None = None, version: str = "v2") -> dict[str, Any]:
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}
    }
    if max_replicas is not None:
        spec["maxReplicas"] = max_replicas
    return {
        "apiVersion": f"autoscaling/{version}",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name},
        "spec": spec,
    }


def inject_ceiling(request: dict[str, Any]) -> dict[str, Any]:
    if request["object"]["spec"].get("maxReplicas", 0) == 0:
        return patch_response(
            request,
            [{"op": "replace", "path": "/spec/maxReplicas", "value": 10}],
            warnings=["maxReplicas set to 10"],
        )
    return allow(request)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def post(
    emu: Emulator, path: str, body: dict[str, Any], query: str = ""
) -> tuple[int, dict[str, Any], list[str]]:
    async with aiohttp.ClientSession() as s, s.post(emu.url + path + query, json=body) as r:
        return r.status, await r.json(), r.headers.getall("Warning", [])


async def test_mutating_webhook_injects_missing_ceiling(
    api: Any, emu: Emulator, hook: HttpsWebhook
) -> None:
    hook.handlers["/mutate"] = inject_ceiling
    emu.create(
        hook.configuration(
            MUTATING,
            "gpumix",
            [{"name": "ceiling.gpumix.io", "path": "/mutate", "rules": [HPA_RULE]}],
        )
    )
    status, body, warnings = await post(
        emu, "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers", hpa()
    )
    assert status == 201, body
    assert body["spec"]["maxReplicas"] == 10
    assert warnings == ['299 - "maxReplicas set to 10"']
    request = hook.received[0]["review"]["request"]
    assert hook.received[0]["query"] == {"timeout": "10s"}
    assert request["operation"] == "CREATE" and request["dryRun"] is False
    assert request["object"]["spec"]["maxReplicas"] == 0
    assert request["kind"] == {
        "group": "autoscaling",
        "version": "v2",
        "kind": "HorizontalPodAutoscaler",
    }
    assert request["resource"] == {
        "group": "autoscaling",
        "version": "v2",
        "resource": "horizontalpodautoscalers",
    }
    assert request["namespace"] == "default" and request["name"] == "web"
    assert request["userInfo"]["username"] == "kubernetes-admin"
    assert request["oldObject"] is None
    assert request["options"]["kind"] == "CreateOptions"
    entry = emu.admission_log[-1]
    assert (entry.webhook, entry.outcome, entry.phase) == (
        "ceiling.gpumix.io",
        "patched",
        "mutating",
    )
    # The same through kubernetes-asyncio; an UPDATE carries the oldObject.
    v2 = client.AutoscalingV2Api(api)
    made = await v2.create_namespaced_horizontal_pod_autoscaler("default", hpa("other"))
    assert made.spec.max_replicas == 10
    made.spec.min_replicas = 2
    await v2.replace_namespaced_horizontal_pod_autoscaler("other", "default", made)
    last = hook.received[-1]["review"]["request"]
    assert last["operation"] == "UPDATE"
    assert last["oldObject"]["spec"]["minReplicas"] == 1


async def test_equivalent_match_policy_converts_versions(emu: Emulator, hook: HttpsWebhook) -> None:
    hook.handlers["/mutate"] = inject_ceiling
    emu.create(
        hook.configuration(
            MUTATING,
            "gpumix",
            [{"name": "ceiling.gpumix.io", "path": "/mutate", "rules": [HPA_RULE]}],
        )
    )
    status, body, _ = await post(
        emu, "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers", hpa(version="v1")
    )
    assert status == 201, body
    assert body["apiVersion"] == "autoscaling/v1" and body["spec"]["maxReplicas"] == 10
    request = hook.received[0]["review"]["request"]
    assert request["kind"]["version"] == "v2" and request["requestKind"]["version"] == "v1"
    assert request["object"]["apiVersion"] == "autoscaling/v2"
    # Exact matching does not call the webhook for v1.
    cfg = emu.get("mutatingwebhookconfigurations", "gpumix")
    assert cfg is not None
    cfg["webhooks"][0]["matchPolicy"] = "Exact"
    emu.put(cfg)
    status, body, _ = await post(
        emu,
        "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers",
        hpa("exact", version="v1"),
    )
    assert status == 422 and "must be set and greater than 0" in body["message"]
    assert len(hook.received) == 1


async def test_deny_message_and_code(api: Any, emu: Emulator, hook: HttpsWebhook) -> None:
    hook.handlers["/validate"] = lambda r: deny(r, "selector overlaps web-a40")
    emu.create(
        hook.configuration(
            VALIDATING,
            "gpumix",
            [{"name": "overlap.gpumix.io", "path": "/validate", "rules": [DEPLOY_RULE]}],
        )
    )
    apps = client.AppsV1Api(api)
    with pytest.raises(ApiException) as err:
        await apps.create_namespaced_deployment("default", deployment("web"))
    assert err.value.status == 403
    body = json.loads(err.value.body)
    assert body["message"] == (
        'admission webhook "overlap.gpumix.io" denied the request: selector overlaps web-a40'
    )
    assert emu.get("deployments", "web", "default") is None
    hook.handlers["/validate"] = lambda r: {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": r["uid"], "allowed": False},
    }
    status, body, _ = await post(
        emu, "/apis/apps/v1/namespaces/default/deployments", deployment("web")
    )
    assert status == 400
    assert body["message"] == (
        'admission webhook "overlap.gpumix.io" denied the request without explanation'
    )


async def test_validating_sees_final_object_and_dry_run(emu: Emulator, hook: HttpsWebhook) -> None:
    hook.handlers["/mutate"] = lambda r: patch_response(
        r, [{"op": "add", "path": "/metadata/labels/gpumix.io~1deployment", "value": "web"}]
    )
    seen: list[dict[str, Any]] = []

    def validate(request: dict[str, Any]) -> dict[str, Any]:
        seen.append(request)
        return allow(request, warnings=["looked"])

    hook.handlers["/validate"] = validate
    emu.create(
        hook.configuration(
            MUTATING, "m", [{"name": "label.gpumix.io", "path": "/mutate", "rules": [DEPLOY_RULE]}]
        )
    )
    emu.create(
        hook.configuration(
            VALIDATING,
            "v",
            [{"name": "check.gpumix.io", "path": "/validate", "rules": [DEPLOY_RULE]}],
        )
    )
    status, body, warnings = await post(
        emu, "/apis/apps/v1/namespaces/default/deployments", deployment("web"), "?dryRun=All"
    )
    assert status == 201
    assert body["metadata"]["labels"]["gpumix.io/deployment"] == "web"
    assert seen[0]["object"]["metadata"]["labels"]["gpumix.io/deployment"] == "web"
    assert seen[0]["dryRun"] is True
    assert warnings == ['299 - "looked"']
    assert emu.get("deployments", "web", "default") is None


async def test_failure_policy_on_dead_webhook(emu: Emulator, hook: HttpsWebhook) -> None:
    dead = f"https://127.0.0.1:{free_port()}/mutate"
    cfg = hook.configuration(
        MUTATING,
        "gpumix",
        [{"name": "dead.gpumix.io", "path": "/x", "rules": [DEPLOY_RULE], "failurePolicy": "Fail"}],
    )
    cfg["webhooks"][0]["clientConfig"]["url"] = dead
    emu.create(cfg)
    status, body, _ = await post(
        emu, "/apis/apps/v1/namespaces/default/deployments", deployment("web")
    )
    assert status == 500
    assert body["reason"] == "InternalError"
    assert body["message"].startswith(
        'Internal error occurred: failed calling webhook "dead.gpumix.io": '
        f'failed to call webhook: Post "{dead}?timeout=10s"'
    )
    cfg["webhooks"][0]["failurePolicy"] = "Ignore"
    emu.put(cfg)
    status, body, _ = await post(
        emu, "/apis/apps/v1/namespaces/default/deployments", deployment("web")
    )
    assert status == 201
    assert emu.admission_log[-1].outcome == "ignored-error"


async def test_timeout(emu: Emulator, hook: HttpsWebhook) -> None:
    async def slow(request: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(3)
        return allow(request)

    hook.handlers["/slow"] = slow
    cfg = hook.configuration(
        VALIDATING,
        "gpumix",
        [{"name": "slow.gpumix.io", "path": "/slow", "rules": [DEPLOY_RULE], "timeoutSeconds": 1}],
    )
    emu.create(cfg)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    status, body, _ = await post(
        emu, "/apis/apps/v1/namespaces/default/deployments", deployment("web")
    )
    assert status == 500 and "context deadline exceeded" in body["message"]
    assert loop.time() - t0 < 2.5
    cfg["webhooks"][0]["failurePolicy"] = "Ignore"
    emu.put(cfg)
    status, _, _ = await post(
        emu, "/apis/apps/v1/namespaces/default/deployments", deployment("web")
    )
    assert status == 201


async def test_untrusted_certificate_and_wrong_uid(emu: Emulator, hook: HttpsWebhook) -> None:
    cfg = hook.configuration(
        VALIDATING, "gpumix", [{"name": "tls.gpumix.io", "path": "/v", "rules": [DEPLOY_RULE]}]
    )
    import base64

    cfg["webhooks"][0]["clientConfig"]["caBundle"] = base64.b64encode(
        certs.make_ca("other").cert_pem
    ).decode()
    emu.create(cfg)
    status, body, _ = await post(
        emu, "/apis/apps/v1/namespaces/default/deployments", deployment("web")
    )
    assert status == 500 and "certificate" in body["message"]
    assert hook.received == []
    cfg["webhooks"][0]["clientConfig"]["caBundle"] = hook.ca_bundle
    emu.put(cfg)
    hook.handlers["/v"] = lambda r: allow(dict(r, uid="not-the-uid"))
    status, body, _ = await post(
        emu, "/apis/apps/v1/namespaces/default/deployments", deployment("web")
    )
    assert status == 500 and "expected response.uid" in body["message"]


async def test_namespace_and_object_selectors(emu: Emulator, hook: HttpsWebhook) -> None:
    hook.handlers["/validate"] = lambda r: deny(r, "no")
    emu.create(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "enforced", "labels": {"gpumix.io/mode": "enforce"}},
        }
    )
    emu.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "free"}})
    emu.create(
        hook.configuration(
            VALIDATING,
            "gpumix",
            [
                {
                    "name": "ns.gpumix.io",
                    "path": "/validate",
                    "rules": [DEPLOY_RULE],
                    "namespaceSelector": {"matchLabels": {"gpumix.io/mode": "enforce"}},
                    "objectSelector": {
                        "matchExpressions": [{"key": "skip", "operator": "DoesNotExist"}]
                    },
                }
            ],
        )
    )
    base = "/apis/apps/v1/namespaces/{}/deployments"
    status, _, _ = await post(emu, base.format("enforced"), deployment("web"))
    assert status == 403
    status, _, _ = await post(emu, base.format("free"), deployment("web"))
    assert status == 201
    status, _, _ = await post(
        emu, base.format("enforced"), deployment("skipped", {"app": "x", "skip": "1"})
    )
    assert status == 201
    # kubernetes.io/metadata.name is always there to select on.
    cfg = emu.get("validatingwebhookconfigurations", "gpumix")
    assert cfg is not None
    cfg["webhooks"][0]["namespaceSelector"] = {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["free"]}
        ]
    }
    emu.put(cfg)
    status, _, _ = await post(emu, base.format("free"), deployment("other"))
    assert status == 403
    status, _, _ = await post(emu, base.format("enforced"), deployment("other"))
    assert status == 201


async def test_subresources_only_when_named(api: Any, emu: Emulator, hook: HttpsWebhook) -> None:
    emu.create(deployment("web", namespace="default"))
    emu.create(
        hook.configuration(
            VALIDATING, "gpumix", [{"name": "all.gpumix.io", "path": "/v", "rules": [DEPLOY_RULE]}]
        )
    )
    apps = client.AppsV1Api(api)
    await apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 2}})
    await apps.patch_namespaced_deployment_status("web", "default", {"status": {"replicas": 2}})
    assert hook.received == []
    hook.handlers["/scale"] = lambda r: deny(r, f"scale to {r['object']['spec']['replicas']}")
    emu.create(
        hook.configuration(
            VALIDATING,
            "scale",
            [
                {
                    "name": "scale.gpumix.io",
                    "path": "/scale",
                    "rules": [rule(["apps"], ["v1"], ["deployments/scale"], ["UPDATE"])],
                }
            ],
        )
    )
    with pytest.raises(ApiException) as err:
        await apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 3}})
    assert "scale to 3" in json.loads(err.value.body)["message"]
    request = hook.received[-1]["review"]["request"]
    assert request["subResource"] == "scale"
    assert request["kind"] == {"group": "autoscaling", "version": "v1", "kind": "Scale"}
    assert request["oldObject"]["spec"]["replicas"] == 2


async def test_service_reference_and_delete(emu: Emulator, hook: HttpsWebhook) -> None:
    calls: list[tuple[str, str, int, str]] = []

    def resolve(namespace: str, name: str, port: int, path: str) -> str:
        calls.append((namespace, name, port, path))
        return hook.url(path)

    emu.service_resolver = resolve
    cfg = hook.configuration(
        VALIDATING,
        "gpumix",
        [
            {
                "name": "svc.gpumix.io",
                "path": "/v",
                "rules": [rule(["apps"], ["v1"], ["deployments"], ["DELETE"])],
            }
        ],
    )
    cfg["webhooks"][0]["clientConfig"] = {
        "service": {"namespace": "gpumix-system", "name": "gpumix-webhook", "path": "/v"},
        "caBundle": hook.ca_bundle,
    }
    emu.create(cfg)
    emu.create(deployment("web", namespace="default"))
    async with (
        aiohttp.ClientSession() as s,
        s.delete(emu.url + "/apis/apps/v1/namespaces/default/deployments/web") as r,
    ):
        assert r.status == 200
    assert calls == [("gpumix-system", "gpumix-webhook", 443, "/v")]
    request = hook.received[0]["review"]["request"]
    assert request["operation"] == "DELETE" and request["object"] is None
    assert request["oldObject"]["metadata"]["name"] == "web"


async def test_reinvocation(emu: Emulator, hook: HttpsWebhook) -> None:
    def first(request: dict[str, Any]) -> dict[str, Any]:
        labels = request["object"]["metadata"].get("labels", {})
        if "second" in labels and "first-saw-second" not in labels:
            return patch_response(
                request,
                [{"op": "add", "path": "/metadata/labels/first-saw-second", "value": "yes"}],
            )
        return allow(request)

    hook.handlers["/first"] = first
    hook.handlers["/second"] = lambda r: patch_response(
        r, [{"op": "add", "path": "/metadata/labels/second", "value": "yes"}]
    )
    emu.create(
        hook.configuration(
            MUTATING,
            "a-first",
            [
                {
                    "name": "first.gpumix.io",
                    "path": "/first",
                    "rules": [DEPLOY_RULE],
                    "reinvocationPolicy": "IfNeeded",
                }
            ],
        )
    )
    emu.create(
        hook.configuration(
            MUTATING,
            "b-second",
            [{"name": "second.gpumix.io", "path": "/second", "rules": [DEPLOY_RULE]}],
        )
    )
    status, body, _ = await post(
        emu, "/apis/apps/v1/namespaces/default/deployments", deployment("web")
    )
    assert status == 201
    assert body["metadata"]["labels"]["first-saw-second"] == "yes"
    assert [e.webhook for e in emu.admission_log] == [
        "first.gpumix.io",
        "second.gpumix.io",
        "first.gpumix.io",
    ]


async def test_write_racing_a_slow_webhook(emu: Emulator, hook: HttpsWebhook) -> None:
    calls = 0

    async def slow(request: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            # Someone else writes the object while this webhook thinks.
            obj = emu.get("configmaps", "c", "default")
            assert obj is not None
            obj["data"] = {"other": "writer"}
            emu.put(obj)
        return allow(request)

    hook.handlers["/slow"] = slow
    emu.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "default"},
            "data": {"a": "1"},
        }
    )
    emu.create(
        hook.configuration(
            VALIDATING,
            "gpumix",
            [
                {
                    "name": "slow.gpumix.io",
                    "path": "/slow",
                    "rules": [rule([""], ["v1"], ["configmaps"])],
                }
            ],
        )
    )
    path = emu.url + "/api/v1/namespaces/default/configmaps/c"
    async with (
        aiohttp.ClientSession() as s,
        s.patch(
            path,
            json={"data": {"mine": "2"}},
            headers={"Content-Type": "application/merge-patch+json"},
        ) as r,
    ):
        assert r.status == 200
        body = await r.json()
    # The patch was redone on the newer object: both writes survive.
    assert body["data"] == {"other": "writer", "mine": "2"}
    assert calls == 2
    # A PUT with a resourceVersion that lost the race is a conflict.
    calls = 0
    current = emu.get("configmaps", "c", "default")
    assert current is not None
    current["data"]["mine"] = "3"
    async with aiohttp.ClientSession() as s, s.put(path, json=current) as r:
        assert r.status == 409


async def test_webhook_url_must_be_https(emu: Emulator) -> None:
    status, body, _ = await post(
        emu,
        "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": "plain"},
            "webhooks": [
                {
                    "name": "plain.gpumix.io",
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "clientConfig": {"url": "http://127.0.0.1:1/v"},
                    "rules": [DEPLOY_RULE],
                }
            ],
        },
    )
    assert status == 422
    assert body["details"]["causes"][0]["field"] == "webhooks[0].clientConfig.url"
