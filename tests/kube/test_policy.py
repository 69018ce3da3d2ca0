"""Policy documents: defaults, parsing and errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest

from gpumix.kube.policy import Policy, PolicyError, policy_from_mapping


def test_defaults() -> None:
    p = Policy()
    assert policy_from_mapping(None) == p
    assert policy_from_mapping({}) == p
    assert (p.mode, p.default_max_replicas, p.hard_max_replicas) == ("enforce", 10, 100)
    assert "nvidia.com/gpu.product" in p.gpu_node_label_keys
    assert p.model_label_keys == ("gpumix.io/model", "model.aibrix.ai/name")
    assert p.exempt_namespaces == {"kube-system", "gpumix-system"}
    assert p.with_mode("audit").mode == "audit"


def test_full_document() -> None:
    p = policy_from_mapping(
        {
            "apiVersion": "gpumix.io/v1alpha1",
            "kind": "Policy",
            "metadata": {"name": "default"},
            "mode": "warn",
            "defaultMaxReplicas": 4,
            "hardMaxReplicas": 8,
            "gpuNodeLabelKeys": ["example.com/gpu"],
            "modelLabelKeys": ["app.kubernetes.io/name"],
            "gpuResourceNames": ["example.com/gpu"],
            "exemptNamespaces": ["ops"],
        }
    )
    assert p == Policy(
        mode="warn",
        default_max_replicas=4,
        hard_max_replicas=8,
        gpu_node_label_keys=("example.com/gpu",),
        model_label_keys=("app.kubernetes.io/name",),
        gpu_resource_names=("example.com/gpu",),
        exempt_namespaces=frozenset({"ops"}),
    )


@pytest.mark.parametrize(
    ("doc", "field", "words"),
    [
        ([], "<document>", "mapping"),
        ("mode: warn", "<document>", "mapping"),
        ({"kind": "Deployment"}, "kind", "must be Policy"),
        ({"mode": "strict"}, "mode", "enforce, warn, audit"),
        ({"defaultMaxReplicas": 0}, "defaultMaxReplicas", "positive integer"),
        ({"defaultMaxReplicas": "5"}, "defaultMaxReplicas", "positive integer"),
        ({"hardMaxReplicas": True}, "hardMaxReplicas", "positive integer"),
        ({"hardMaxReplicas": 2.0}, "hardMaxReplicas", "positive integer"),
        ({"defaultMaxReplicas": 20, "hardMaxReplicas": 10}, "defaultMaxReplicas", "above"),
        ({"defaultMaxReplicas": 200}, "defaultMaxReplicas", "above hardMaxReplicas (100)"),
        ({"gpuNodeLabelKeys": "nvidia.com/gpu.product"}, "gpuNodeLabelKeys", "list"),
        ({"modelLabelKeys": ["ok", ""]}, "modelLabelKeys", "non-empty strings"),
        ({"gpuResourceNames": [1]}, "gpuResourceNames", "strings"),
        ({"exemptNamespaces": {"a": 1}}, "exemptNamespaces", "list"),
        ({"defaultMaxReplica": 5}, "defaultMaxReplica", "unknown field"),
        ({1: 5, "x": 1}, "1", "unknown field"),
    ],
)
def test_errors_name_the_field(doc: Any, field: str, words: str) -> None:
    with pytest.raises(PolicyError) as info:
        policy_from_mapping(doc)
    assert info.value.field == field
    assert words in str(info.value)
    assert str(info.value).startswith(f"{field}: ")


def test_empty_lists_are_allowed() -> None:
    p = policy_from_mapping({"exemptNamespaces": [], "modelLabelKeys": []})
    assert p.exempt_namespaces == frozenset()
    assert p.model_label_keys == ()


def test_accelerator_settings() -> None:
    p = Policy()
    assert "node.kubernetes.io/instance-type" not in p.gpu_node_label_keys
    assert "node.kubernetes.io/instance-type" in p.instance_type_label_keys
    for key in (
        "accelerator",
        "aliyun.accelerator/nvidia_name",
        "cloud.google.com/gke-tpu-accelerator",
    ):
        assert key in p.gpu_node_label_keys
    for name in ("nvidia.com/gpu", "nvidia.com/mig-1g.10gb", "amd.com/gpu", "google.com/tpu"):
        assert p.is_accelerator(name), name
    assert not p.is_accelerator("cpu") and not p.is_accelerator("nvidia.com/mig")
    q = policy_from_mapping(
        {
            "gpuResourceNames": ["example.com/npu-*"],
            "instanceTypeLabelKeys": ["example.com/machine"],
            "gpuPoolCapacity": {"NVIDIA-A40": 16, "NVIDIA-L4": 0},
        }
    )
    assert q.is_accelerator("example.com/npu-v2") and not q.is_accelerator("nvidia.com/gpu")
    assert q.instance_type_label_keys == ("example.com/machine",)
    assert q.gpu_pool_capacity == {"NVIDIA-A40": 16, "NVIDIA-L4": 0}


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"gpuPoolCapacity": ["A40"]}, "gpuPoolCapacity"),
        ({"gpuPoolCapacity": {"A40": -1}}, "gpuPoolCapacity.A40"),
        ({"gpuPoolCapacity": {"A40": "8"}}, "gpuPoolCapacity.A40"),
        ({"gpuPoolCapacity": {"A40": True}}, "gpuPoolCapacity.A40"),
        ({"gpuResourceNames": ["*"]}, "gpuResourceNames[0]"),
        ({"gpuResourceNames": ["nvidia.com/gpu", "a*b"]}, "gpuResourceNames[1]"),
        ({"instanceTypeLabelKeys": "x"}, "instanceTypeLabelKeys"),
    ],
)
def test_accelerator_settings_errors_name_the_field(doc: dict[str, Any], field: str) -> None:
    with pytest.raises(PolicyError) as err:
        policy_from_mapping(doc)
    assert err.value.field == field
