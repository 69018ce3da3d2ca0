"""The test API server itself: up, RBAC on, CRDs, HPA validation, restart keeps data."""

from __future__ import annotations

import json
import re

import pytest
from kubernetes_asyncio import config
from kubernetes_asyncio.client import ApiClient, Configuration, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from .envtest import UNPRIVILEGED_USER, Envtest, pinned_kubernetes_version

MAX_REPLICAS_MESSAGE = re.compile(r"spec\.maxReplicas: .*must be (set and )?greater than 0")


def test_server_is_ready_and_pinned(apiserver: Envtest) -> None:
    status, _ = apiserver.request("GET", "/readyz")
    assert status == 200
    status, version = apiserver.request("GET", "/version")
    assert status == 200
    assert version["gitVersion"] == pinned_kubernetes_version()
    assert apiserver.server.startswith("https://127.0.0.1:")


def test_kubectl_uses_the_admin_context(apiserver: Envtest) -> None:
    out = apiserver.kubectl("auth", "whoami", "-o", "json").stdout
    user = json.loads(out)["status"]["userInfo"]
    assert user["username"] == "admin"
    assert "system:masters" in user["groups"]


def test_rbac_forbids_an_unprivileged_user(apiserver: Envtest) -> None:
    proc = apiserver.kubectl(
        "get", "configmaps", "-n", "default", context="unprivileged", check=False
    )
    assert proc.returncode != 0
    assert "Forbidden" in proc.stderr
    assert f'User "{UNPRIVILEGED_USER}" cannot list resource "configmaps"' in proc.stderr

    status, body = apiserver.request(
        "GET", "/api/v1/namespaces/default/configmaps", context="unprivileged"
    )
    assert status == 403
    assert body["reason"] == "Forbidden"


async def test_api_client_helper(apiserver: Envtest) -> None:
    async with apiserver.api_client() as api:
        names = [ns.metadata.name for ns in (await CoreV1Api(api).list_namespace()).items]
    assert {"default", "kube-system"} <= set(names)

    async with apiserver.api_client("unprivileged") as api:
        with pytest.raises(ApiException) as err:
            await CoreV1Api(api).list_namespace()
    assert err.value.status == 403


async def test_kubeconfig_loads_in_kubernetes_asyncio(apiserver: Envtest) -> None:
    for context, allowed in (("admin", True), ("unprivileged", False)):
        cfg = Configuration()
        await config.load_kube_config(
            config_file=str(apiserver.kubeconfig), context=context, client_configuration=cfg
        )
        assert cfg.host == apiserver.server
        async with ApiClient(configuration=cfg) as api:
            try:
                await CoreV1Api(api).read_namespace("default")
                ok = True
            except ApiException as err:
                assert err.status == 403
                ok = False
        assert ok is allowed


def test_crds_install_and_accept_autoscalers(apiserver: Envtest, namespace: str) -> None:
    apiserver.install_crds()
    scaled_object = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "llama-a40", "namespace": namespace},
        "spec": {
            "scaleTargetRef": {"name": "llama-a40"},
            "minReplicaCount": 1,
            "triggers": [
                {"type": "prometheus", "metadata": {"query": "sum(rate(x[1m]))"}},
            ],
        },
    }
    pod_autoscaler = {
        "apiVersion": "autoscaling.aibrix.ai/v1alpha1",
        "kind": "PodAutoscaler",
        "metadata": {"name": "llama-a100", "namespace": namespace},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llama-a100"},
            "minReplicas": 1,
            "maxReplicas": 4,
            "targetMetric": "avg_prompt_throughput_toks_per_s",
            "targetValue": "20",
            "scalingStrategy": "KPA",
        },
    }
    for obj in (scaled_object, pod_autoscaler):
        apiserver.kubectl("apply", "-f", "-", input=json.dumps(obj))

    got = json.loads(
        apiserver.kubectl("get", "scaledobject", "llama-a40", "-n", namespace, "-o", "json").stdout
    )
    assert got["spec"]["scaleTargetRef"] == {"name": "llama-a40"}
    assert "maxReplicaCount" not in got["spec"]  # optional, as in KEDA
    got = json.loads(
        apiserver.kubectl(
            "get", "podautoscaler", "llama-a100", "-n", namespace, "-o", "json"
        ).stdout
    )
    assert got["spec"]["maxReplicas"] == 4

    # The schemas are enforced by the API server.
    bad = json.loads(json.dumps(pod_autoscaler))
    bad["metadata"]["name"] = "bad-strategy"
    bad["spec"]["scalingStrategy"] = "SOMETIMES"
    proc = apiserver.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert proc.returncode != 0
    assert "spec.scalingStrategy" in proc.stderr


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_hpa_without_max_replicas_is_rejected_by_the_bare_api_server(
    apiserver: Envtest, namespace: str, version: str
) -> None:
    hpa = {
        "apiVersion": f"autoscaling/{version}",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": f"no-ceiling-{version}", "namespace": namespace},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
            "minReplicas": 1,
        },
    }
    status, body = apiserver.request(
        "POST",
        f"/apis/autoscaling/{version}/namespaces/{namespace}/horizontalpodautoscalers",
        hpa,
    )
    assert status == 422, body
    assert body["reason"] == "Invalid"
    # v1.34: "spec.maxReplicas: Invalid value: 0: must be greater than 0";
    # v1.36: "spec.maxReplicas: Required value: must be set and greater than 0".
    assert MAX_REPLICAS_MESSAGE.search(body["message"]), body["message"]
    assert "spec.maxReplicas" in {c.get("field") for c in body["details"]["causes"]}

    proc = apiserver.kubectl("create", "-f", "-", input=json.dumps(hpa), check=False)
    assert proc.returncode != 0
    assert MAX_REPLICAS_MESSAGE.search(proc.stderr), proc.stderr


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_restart_keeps_objects(apiserver: Envtest, namespace: str, kill: bool) -> None:
    apiserver.kubectl("create", "configmap", "survivor", "-n", namespace, "--from-literal=k=v")
    before = json.loads(
        apiserver.kubectl("get", "configmap", "survivor", "-n", namespace, "-o", "json").stdout
    )

    apiserver.stop_apiserver(kill=kill)
    assert not apiserver.is_serving()
    apiserver.start_apiserver()

    after = json.loads(
        apiserver.kubectl("get", "configmap", "survivor", "-n", namespace, "-o", "json").stdout
    )
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["data"] == {"k": "v"}
