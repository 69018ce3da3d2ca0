"""GPU type of a pod template, GPUs per replica and the model group."""

from __future__ import annotations

from typing import Any

import pytest

from gpumix.kube.fields import Unreadable
from gpumix.kube.gputype import (
    CPU_ONLY,
    GpuType,
    gpu_facts,
    gpu_resources,
    gpu_type_of,
    gpus_per_replica,
    model_group,
    node_gpu_names,
)
from gpumix.kube.policy import Policy


def template(
    labels: dict[str, str] | None = None,
    *,
    node_selector: dict[str, str] | None = None,
    affinity: Any = None,
    limits: dict[str, Any] | None = None,
    requests: dict[str, Any] | None = None,
) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if limits is not None:
        resources["limits"] = limits
    if requests is not None:
        resources["requests"] = requests
    spec: dict[str, Any] = {"containers": [{"name": "engine", "resources": resources}]}
    if node_selector is not None:
        spec["nodeSelector"] = node_selector
    if affinity is not None:
        spec["affinity"] = affinity
    return {"metadata": {"labels": labels or {}}, "spec": spec}


def required(*terms: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": t} for t in terms]
            }
        }
    }


POLICY = Policy()


def test_label_wins_over_everything() -> None:
    t = template(
        {"gpumix.io/gpu-type": "A100"},
        node_selector={"nvidia.com/gpu.product": "NVIDIA-A40"},
        limits={"nvidia.com/gpu": 1},
    )
    gt = gpu_type_of(t, POLICY)
    assert (gt.kind, gt.name, gt.label) == ("pinned", "A100", "A100")
    assert "gpumix.io/gpu-type" in gt.source


@pytest.mark.parametrize(
    "key",
    [
        "nvidia.com/gpu.product",
        "cloud.google.com/gke-accelerator",
        "karpenter.k8s.aws/instance-gpu-name",
        "node.kubernetes.io/instance-type",
        "machine.cluster.vke.volcengine.com/gpu-name",
    ],
)
def test_node_selector_on_each_known_key(key: str) -> None:
    gt = gpu_type_of(template(node_selector={key: "L20"}, limits={"nvidia.com/gpu": 1}), POLICY)
    assert (gt.kind, gt.name) == ("pinned", "L20")
    assert key in gt.source


def test_node_selector_on_unknown_key_is_ignored() -> None:
    gt = gpu_type_of(template(node_selector={"zone": "a"}, limits={"nvidia.com/gpu": 1}), POLICY)
    assert gt.kind == "unpinned"


def test_custom_node_label_keys_from_the_policy() -> None:
    policy = Policy(gpu_node_label_keys=("example.com/accelerator",))
    t = template(node_selector={"example.com/accelerator": "H100"})
    assert gpu_type_of(t, policy).same_as(GpuType("pinned", "H100"))
    # the defaults are replaced, not extended
    t2 = template(node_selector={"nvidia.com/gpu.product": "A100"})
    assert gpu_type_of(t2, policy) == CPU_ONLY
    # and the policy's keys also name the GPUs of a node
    assert node_gpu_names({"example.com/accelerator": "H100"}, policy) == {"H100"}


def test_required_node_affinity_single_in_value() -> None:
    aff = required(
        [
            {"key": "zone", "operator": "In", "values": ["a"]},
            {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-A40"]},
        ]
    )
    gt = gpu_type_of(template(affinity=aff, limits={"nvidia.com/gpu": 1}), POLICY)
    assert (gt.kind, gt.name) == ("pinned", "NVIDIA-A40")
    assert "affinity" in gt.source


@pytest.mark.parametrize(
    "aff",
    [
        required([{"key": "nvidia.com/gpu.product", "operator": "In", "values": ["A", "B"]}]),
        required([{"key": "nvidia.com/gpu.product", "operator": "NotIn", "values": ["A"]}]),
        required(
            [{"key": "nvidia.com/gpu.product", "operator": "In", "values": ["A"]}],
            [{"key": "nvidia.com/gpu.product", "operator": "In", "values": ["B"]}],
        ),
        {
            "nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 1,
                        "preference": {
                            "matchExpressions": [
                                {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["A"]}
                            ]
                        },
                    }
                ]
            }
        },
        "garbage",
    ],
)
def test_affinity_that_does_not_pin_one_type(aff: Any) -> None:
    gt = gpu_type_of(template(affinity=aff, limits={"nvidia.com/gpu": "2"}), POLICY)
    assert gt.kind == "unpinned"
    assert gt.label == "unpinned accelerator"


def test_mig_resource() -> None:
    gt = gpu_type_of(template(limits={"nvidia.com/mig-1g.10gb": 1}), POLICY)
    assert (gt.kind, gt.name, gt.label) == (
        "mig",
        "nvidia.com/mig-1g.10gb",
        "nvidia.com/mig-1g.10gb",
    )


@pytest.mark.parametrize("resource", ["nvidia.com/gpu", "amd.com/gpu"])
def test_unpinned(resource: str) -> None:
    t = template(requests={resource: 1})
    gt = gpu_type_of(t, POLICY)
    assert gt.kind == "unpinned" and gt.name is None
    assert gpus_per_replica(t, POLICY) == 1


@pytest.mark.parametrize(
    "t",
    [
        template(),
        template(limits={"cpu": "2", "memory": "1Gi"}),
        template(limits={"nvidia.com/gpu": 0}),
        {},
        {"spec": {"containers": "nope"}},
        {"metadata": {"labels": ["x"]}, "spec": {"containers": [None, 3]}},
    ],
)
def test_cpu_only(t: dict[str, Any]) -> None:
    assert gpu_type_of(t, POLICY) == CPU_ONLY
    assert CPU_ONLY.label == "CPU-only"
    assert gpus_per_replica(t, POLICY) == 0


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("lots", "not a quantity"),
        (True, "a boolean is not a quantity"),
        ("10e399", "out of range"),  # what the API server stores for 1e400
        ("1e400", "out of range"),
        ("inf", "not a quantity"),
        (float("inf"), "not a finite number"),
        (float("nan"), "not a finite number"),
        ("0.5", "must be a whole number"),
        ("-1", "must not be negative"),
        ({"nested": ["x"]}, "must be a string or a number, got dict"),
    ],
)
def test_unreadable_gpu_quantity_is_a_named_fact_not_a_crash(value: object, reason: str) -> None:
    t: dict[str, Any] = {
        "spec": {
            "containers": [
                {"resources": {"limits": {"cpu": "1"}}},
                {"resources": {"requests": {"nvidia.com/gpu": value}}},
            ]
        }
    }
    unreadable: list[Unreadable] = []
    gpu_type, gpus = gpu_facts(t, POLICY, None, unreadable)
    # the resource is requested, so the type says so; only its amount is unknown
    assert gpu_type.kind == "unpinned" and gpus == 0
    [fact] = unreadable
    assert fact.field == "spec.template.spec.containers[1].resources.requests[nvidia.com/gpu]"
    assert reason in fact.reason


def test_unreadable_mig_quantity_still_gives_the_mig_type() -> None:
    unreadable: list[Unreadable] = []
    t = template(limits={"nvidia.com/mig-1g.10gb": "1e400", "nvidia.com/gpu": "1"})
    gpu_type, gpus = gpu_facts(t, POLICY, None, unreadable)
    assert (gpu_type.kind, gpu_type.name, gpus) == ("mig", "nvidia.com/mig-1g.10gb", 1)
    assert [u.field for u in unreadable] == [
        "spec.template.spec.containers[0].resources.limits[nvidia.com/mig-1g.10gb]"
    ]


@pytest.mark.parametrize(
    ("value", "count"), [("1", 1), (2, 2), (4.0, 4), ("1e1", 10), ("1k", 1000)]
)
def test_gpu_quantities_are_read_as_kubernetes_quantities(value: object, count: int) -> None:
    unreadable: list[Unreadable] = []
    assert (
        gpu_facts(template(limits={"nvidia.com/gpu": value}), POLICY, None, unreadable)[1] == count
    )
    assert unreadable == []


def test_gpus_per_replica_limits_win_and_containers_add_up() -> None:
    t: dict[str, Any] = {
        "spec": {
            "containers": [
                {"resources": {"requests": {"nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 2}}},
                {"resources": {"limits": {"nvidia.com/gpu": "2"}}},
            ]
        }
    }
    assert gpu_resources(t["spec"], POLICY) == {"nvidia.com/gpu": 4}
    assert gpus_per_replica(t, POLICY) == 4


def test_init_container_gpus_are_not_added_to_the_app_containers() -> None:
    # A pod's effective request is the larger of the app containers' sum and
    # any one init container (init containers run before, one at a time).
    t: dict[str, Any] = {
        "spec": {
            "initContainers": [
                {"resources": {"limits": {"nvidia.com/gpu": 1}}},
                {"resources": {"limits": {"nvidia.com/gpu": 1}}},
            ],
            "containers": [{"resources": {"limits": {"nvidia.com/gpu": 2}}}],
        }
    }
    assert gpus_per_replica(t, POLICY) == 2
    t["spec"]["initContainers"][0]["resources"]["limits"]["nvidia.com/gpu"] = 4
    assert gpus_per_replica(t, POLICY) == 4


def test_sidecar_init_container_gpus_add_to_the_app_containers() -> None:
    t: dict[str, Any] = {
        "spec": {
            "initContainers": [
                {"restartPolicy": "Always", "resources": {"limits": {"nvidia.com/gpu": 1}}}
            ],
            "containers": [{"resources": {"limits": {"nvidia.com/gpu": 2}}}],
        }
    }
    assert gpus_per_replica(t, POLICY) == 3


def test_model_group() -> None:
    assert model_group({"gpumix.io/model": "a", "model.aibrix.ai/name": "b"}, POLICY) == "a"
    assert model_group({"model.aibrix.ai/name": "b"}, POLICY) == "b"
    assert model_group({"model.aibrix.ai/name": ""}, POLICY) is None
    assert model_group({"app": "web"}, POLICY) is None
    assert model_group({"team/model": "c"}, Policy(model_label_keys=("team/model",))) == "c"


def test_node_gpu_names() -> None:
    labels = {"nvidia.com/gpu.product": "NVIDIA-A100", "gpumix.io/gpu-type": "A100", "x": "y"}
    assert node_gpu_names(labels, POLICY) == {"NVIDIA-A100", "A100"}
    assert node_gpu_names({}, POLICY) == frozenset()


# --------------------------------------------------------------------------- keys and scope


def test_machine_type_is_a_gpu_type_only_for_accelerator_requesters() -> None:
    pin = {"node.kubernetes.io/instance-type": "p4d.24xlarge"}
    assert gpu_type_of(template(node_selector=pin), POLICY) == CPU_ONLY
    gt = gpu_type_of(template(node_selector=pin, limits={"nvidia.com/gpu": 8}), POLICY)
    assert (gt.kind, gt.name, gt.key) == (
        "pinned",
        "p4d.24xlarge",
        "node.kubernetes.io/instance-type",
    )
    # a GPU key wins over the machine type, whatever the order in the nodeSelector
    both = {**pin, "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    gt = gpu_type_of(template(node_selector=both, limits={"nvidia.com/gpu": 8}), POLICY)
    assert (gt.name, gt.key) == ("NVIDIA-A100-SXM4-80GB", "nvidia.com/gpu.product")


@pytest.mark.parametrize(
    "key",
    [
        "accelerator",
        "aliyun.accelerator/nvidia_name",
        "eks.tke.cloud.tencent.com/gpu-type",
        "cloud.google.com/gke-tpu-accelerator",
        "karpenter.k8s.aws/instance-gpu-name",
    ],
)
def test_well_known_gpu_keys_are_read_by_default(key: str) -> None:
    gt = gpu_type_of(template(node_selector={key: "X"}, limits={"nvidia.com/gpu": 1}), POLICY)
    assert (gt.kind, gt.name, gt.key) == ("pinned", "X", key)


def test_tpu_deployments_are_accelerator_workloads() -> None:
    t = template(
        node_selector={"cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice"},
        limits={"google.com/tpu": 4},
    )
    gt = gpu_type_of(t, POLICY)
    assert (gt.kind, gt.name) == ("pinned", "tpu-v5-lite-podslice")
    assert gpus_per_replica(t, POLICY) == 4
    assert gpu_type_of(template(limits={"google.com/tpu": 4}), POLICY).label == (
        "unpinned accelerator"
    )


def test_unreadable_pin_of_an_accelerator_deployment_is_named() -> None:
    t = template(
        node_selector={"example.com/gpu": "a100", "topology.kubernetes.io/zone": "z1"},
        limits={"nvidia.com/gpu": 1},
    )
    gt = gpu_type_of(t, POLICY)
    assert gt.kind == "unpinned" and gt.unread == ("example.com/gpu",)
    # a CPU app's pins are nobody's business
    assert gpu_type_of(template(node_selector={"example.com/gpu": "a100"}), POLICY) == CPU_ONLY
