"""Rules missing-max-replicas and max-replicas-above-ceiling."""

from __future__ import annotations

from typing import Any

import pytest

from gpumix.kube.objects import AutoscalerView
from gpumix.kube.policy import Policy
from gpumix.kube.snapshot import Snapshot
from gpumix.rules import max_replicas_above_ceiling, missing_max_replicas
from gpumix.rules.engine import evaluate, evaluate_snapshot

POLICY = Policy(default_max_replicas=10, hard_max_replicas=50)

KINDS = [
    ("autoscaling/v2", "HorizontalPodAutoscaler", "maxReplicas"),
    ("autoscaling/v1", "HorizontalPodAutoscaler", "maxReplicas"),
    ("keda.sh/v1alpha1", "ScaledObject", "maxReplicaCount"),
    ("autoscaling.aibrix.ai/v1alpha1", "PodAutoscaler", "maxReplicas"),
]


def scaler(
    api_version: str = "autoscaling/v2",
    kind: str = "HorizontalPodAutoscaler",
    field: str = "maxReplicas",
    ceiling: int | None = None,
    target: str = "engine",
    ns: str = "ml",
    floor: int | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target}
    }
    if ceiling is not None:
        spec[field] = ceiling
    if floor is not None:
        spec[field.replace("max", "min")] = floor
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": "s", "namespace": ns},
        "spec": spec,
    }


def engine(gpu: str = "A100", gpus: int = 2, ns: str = "ml") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "engine", "namespace": ns},
        "spec": {
            "selector": {"matchLabels": {"app": "engine"}},
            "template": {
                "metadata": {"labels": {"app": "engine"}},
                "spec": {
                    "nodeSelector": {"nvidia.com/gpu.product": gpu},
                    "containers": [{"resources": {"limits": {"nvidia.com/gpu": gpus}}}],
                },
            },
        },
    }


def node(name: str, gpu: str, count: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": gpu}},
        "status": {"allocatable": {"nvidia.com/gpu": count}},
    }


def namespace(default_max: str | None) -> dict[str, Any]:
    annotations = {} if default_max is None else {"gpumix.io/default-max-replicas": default_max}
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "ml", "annotations": annotations},
    }


def findings(*objs: dict[str, Any], policy: Policy = POLICY) -> list[Any]:
    snap = Snapshot.from_objects(objs, policy)
    return [f for f in evaluate_snapshot(snap, policy) if f.subject.kind != "Deployment"]


def the_scaler(*objs: dict[str, Any]) -> tuple[AutoscalerView, Snapshot]:
    snap = Snapshot.from_objects(objs, POLICY)
    return next(iter(snap.autoscalers.values())), snap


@pytest.mark.parametrize(("api_version", "kind", "field"), KINDS)
@pytest.mark.parametrize("ceiling", [None, 0])
def test_missing_ceiling_is_a_fixable_error(
    api_version: str, kind: str, field: str, ceiling: int | None
) -> None:
    got = findings(scaler(api_version, kind, field, ceiling))
    assert [(f.rule, f.severity, f.fixable) for f in got] == [
        (missing_max_replicas.RULE, "error", True)
    ]
    assert f"spec.{field}" in got[0].message
    assert "default 10" in got[0].message
    assert [r.name for r in got[0].related] == ["engine"]


@pytest.mark.parametrize(("api_version", "kind", "field"), KINDS)
def test_ceiling_within_limits_is_clean(api_version: str, kind: str, field: str) -> None:
    assert findings(scaler(api_version, kind, field, 50)) == []


def test_default_ceiling_from_policy_namespace_and_capacity() -> None:
    view, snap = the_scaler(scaler())
    assert missing_max_replicas.default_ceiling(view, snap, POLICY) == 10
    view, snap = the_scaler(scaler(), namespace("25"))
    assert missing_max_replicas.default_ceiling(view, snap, POLICY) == 25
    # the annotation never goes above the hard limit
    view, snap = the_scaler(scaler(), namespace("500"))
    assert missing_max_replicas.default_ceiling(view, snap, POLICY) == 50
    # an unusable annotation falls back to the policy default
    view, snap = the_scaler(scaler(), namespace("lots"))
    assert missing_max_replicas.default_ceiling(view, snap, POLICY) == 10
    # capped by GPU capacity: 6 A100s at 2 per replica = 3 replicas
    view, snap = the_scaler(
        scaler(), namespace("25"), engine(), node("n1", "A100", 4), node("n2", "A100", 2)
    )
    assert missing_max_replicas.default_ceiling(view, snap, POLICY) == 3
    # nodes of another type say nothing about this one
    view, snap = the_scaler(scaler(), engine(), node("n1", "A40", 4))
    assert missing_max_replicas.default_ceiling(view, snap, POLICY) == 10
    # never below one, never below the floor
    view, snap = the_scaler(scaler(), engine(gpus=8), node("n1", "A100", 4))
    assert missing_max_replicas.default_ceiling(view, snap, POLICY) == 1
    view, snap = the_scaler(scaler(floor=5), engine(), node("n1", "A100", 4))
    assert missing_max_replicas.default_ceiling(view, snap, POLICY) == 5


def test_above_hard_limit() -> None:
    got = findings(scaler(ceiling=51))
    assert [(f.rule, f.severity, f.fixable) for f in got] == [
        (max_replicas_above_ceiling.RULE, "error", False)
    ]
    assert "hard limit of 50" in got[0].message
    assert "spec.maxReplicas=51" in got[0].message


def test_above_gpu_capacity() -> None:
    objs = (engine(gpus=2), node("n1", "A100", 8), node("n2", "A40", 8))
    got = findings(scaler(ceiling=5), *objs)
    assert [(f.rule, f.severity) for f in got] == [(max_replicas_above_ceiling.RULE, "error")]
    assert "the pool of A100 GPUs holds 8" in got[0].message
    assert "room for 4 replicas" in got[0].message and "gpuPoolCapacity" in got[0].message
    assert findings(scaler(ceiling=4), *objs) == []


def test_capacity_unknown_without_nodes_or_target() -> None:
    assert findings(scaler(ceiling=40), engine()) == []
    assert findings(scaler(ceiling=40, target="missing"), node("n1", "A100", 1)) == []


def test_capacity_of_unpinned_deployment_is_unknown() -> None:
    dep = engine()
    del dep["spec"]["template"]["spec"]["nodeSelector"]
    assert findings(scaler(ceiling=40), dep, node("n1", "A100", 1)) == []


def test_target_of_another_kind_is_not_the_same_named_deployment() -> None:
    s = scaler(ceiling=5)
    s["spec"]["scaleTargetRef"]["kind"] = "StatefulSet"
    assert findings(s, engine(gpus=2), node("n1", "A100", 2)) == []


def test_evaluate_one_object() -> None:
    view, snap = the_scaler(scaler(ceiling=60))
    assert [f.rule for f in evaluate(view, snap, POLICY)] == [max_replicas_above_ceiling.RULE]
    node_view = next(iter(Snapshot.from_objects([node("n", "A100", 1)], POLICY).nodes.values()))
    assert evaluate(node_view, snap, POLICY) == []
