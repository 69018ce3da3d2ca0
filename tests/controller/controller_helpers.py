"""Builders shared by the controller tests (objects as plain dicts, like the API returns)."""

from __future__ import annotations

from typing import Any

MODEL_KEY = "model.aibrix.ai/name"

PROFILES_INLINE = [
    {
        "gpuType": "A100",
        "buckets": [
            {"inputTokens": 512, "outputTokens": 128, "maxRequestsPerSecond": 10.0},
            {"inputTokens": 2048, "outputTokens": 512, "maxRequestsPerSecond": 2.0},
        ],
    },
    {
        "gpuType": "A40",
        "buckets": [
            {"inputTokens": 512, "outputTokens": 128, "maxRequestsPerSecond": 5.0},
            {"inputTokens": 2048, "outputTokens": 512, "maxRequestsPerSecond": 0.5},
        ],
    },
]


def deployment(
    name: str,
    gpu: str | None,
    *,
    model: str = "llama",
    namespace: str = "default",
    replicas: int = 1,
    gpus: int = 1,
    isolated: bool = True,
) -> dict[str, Any]:
    selector: dict[str, str] = {MODEL_KEY: model}
    if isolated:
        selector["app"] = name
    template_labels = dict(selector)
    if gpu is not None:
        template_labels["gpumix.io/gpu-type"] = gpu
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {MODEL_KEY: model}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": template_labels},
                "spec": {
                    "containers": [
                        {
                            "name": "vllm",
                            "image": "vllm/vllm-openai:v0.6.0",
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                        }
                    ]
                },
            },
        },
    }


def node(name: str, gpu: str, gpus: int = 8) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": gpu}},
        "status": {
            "allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "64", "memory": "512Gi"},
            "capacity": {"nvidia.com/gpu": str(gpus), "cpu": "64", "memory": "512Gi"},
        },
    }


def hpa(name: str, target: str, max_replicas: int, namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicas": 1,
            "maxReplicas": max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 80},
                    },
                }
            ],
        },
    }


def gpumix(
    name: str = "llama",
    *,
    model: str = "llama",
    namespace: str = "default",
    load: list[dict[str, Any]] | None = None,
    mode: str = "scale",
    stabilization: int = 0,
    prices: dict[str, float] | None = None,
    profiles: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": model,
        "modelLabelKey": MODEL_KEY,
        "profiles": profiles if profiles is not None else {"inline": PROFILES_INLINE},
        "prices": prices if prices is not None else {"A100": 2.0, "A40": 0.8},
        "gpuTypes": {"A100": {"maxReplicas": 20}, "A40": {"maxReplicas": 20}},
        "headroom": 0.0,
        "loadSource": {"static": {"buckets": load if load is not None else []}},
        "intervalSeconds": 5,
        "mode": mode,
        "scaleDownStabilizationSeconds": stabilization,
        "minChangeReplicas": 1,
    }
    spec.update(extra or {})
    return {
        "apiVersion": "gpumix.io/v1alpha1",
        "kind": "GPUMix",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def bucket(inp: int, out: int, rps: float) -> dict[str, Any]:
    return {"inputTokens": inp, "outputTokens": out, "requestsPerSecond": rps}
