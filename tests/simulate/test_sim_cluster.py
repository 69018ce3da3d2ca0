"""The cluster model: scheduling, scale-down order, routing, the autoscaler's pod count."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gpumix.kube.objects import AutoscalerView, view_of
from gpumix.kube.policy import Policy
from gpumix.simulate.cluster import Cluster, NodePool, Router, cpu_request
from gpumix.simulate.engine import SimAutoscaler, admit, fix_manifests, target_utilisation

POLICY = Policy()


def deployment(name: str, gpu: str, selector: dict[str, str], replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default", "labels": {"gpumix.io/model": "m"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(selector)},
            "template": {
                "metadata": {"labels": {"gpumix.io/model": "m", **selector}},
                "spec": {
                    "nodeSelector": {"nvidia.com/gpu.product": gpu},
                    "containers": [
                        {
                            "name": "c",
                            "resources": {"requests": {"cpu": "500m", "nvidia.com/gpu": 1}},
                        }
                    ],
                },
            },
        },
    }


def hpa(name: str, target: str, max_replicas: int | None = 8) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
        "minReplicas": 1,
        "metrics": [{"type": "Pods", "pods": {"target": {"averageValue": "50"}}}],
    }
    if max_replicas is not None:
        spec["maxReplicas"] = max_replicas
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


POOLS = (
    NodePool("a100", "A100", nodes=1, gpus_per_node=4, cpus_per_node=8, price_per_gpu_hour=2.0),
    NodePool("a40", "A40", nodes=2, gpus_per_node=2, cpus_per_node=8, price_per_gpu_hour=1.0),
)


def test_pods_schedule_on_their_type_and_wait_when_full() -> None:
    cluster = Cluster(POOLS, POLICY)
    dep = cluster.add_deployment(deployment("x", "A40", {"app": "x"}, replicas=6), startup_s=120)
    cluster.reconcile(0.0)
    assert sum(1 for p in dep.pods if not p.pending) == 4
    assert cluster.pending_pods() == 2
    assert all(
        p.node is not None and p.node.pool.gpu_type == "A40" for p in dep.pods if not p.pending
    )
    assert cluster.pool_usage(POOLS[1]) == (0, 14.0)
    assert not any(p.is_ready(60.0) for p in dep.pods)
    assert sum(1 for p in dep.pods if p.is_ready(120.0)) == 4
    assert cluster.cost_per_hour() == pytest.approx(4.0)
    cluster.scale("x", 3)
    cluster.reconcile(180.0)
    assert cluster.pending_pods() == 0  # Pending pods go first
    assert len(dep.pods) == 3
    assert cluster.pool_usage(POOLS[1])[0] == 1


def test_cpu_request_quantities() -> None:
    assert cpu_request(deployment("x", "A40", {"a": "b"})) == 0.5


def test_router_single_type_and_overload() -> None:
    router = Router({"A40": np.array([10.0, 5.0])})
    r = router.route(np.array([10.0, 5.0]), {"A40": 4}, 60.0)
    assert r.utilisation["A40"] == pytest.approx(0.5)
    assert r.served == pytest.approx(r.requests)
    r = router.route(np.array([40.0, 20.0]), {"A40": 2}, 60.0)
    assert r.utilisation["A40"] == pytest.approx(4.0)
    assert r.served == pytest.approx(r.requests / 4)
    assert router.route(np.array([1.0, 0.0]), {}, 60.0).served == 0.0


def test_router_balances_and_uses_each_type_where_it_is_good() -> None:
    # A100 is twice as fast on bucket 1, equal on bucket 0; A40 cannot serve bucket 2.
    router = Router({"A100": np.array([10.0, 10.0, 4.0]), "A40": np.array([10.0, 5.0, 0.0])})
    r = router.route(np.array([10.0, 0.0, 4.0]), {"A100": 1, "A40": 1}, 60.0)
    # bucket 2 fills the A100; bucket 0 goes to the A40
    assert r.utilisation["A100"] == pytest.approx(1.0)
    assert r.utilisation["A40"] == pytest.approx(1.0)
    assert r.served == pytest.approx(r.requests)
    r = router.route(np.array([0.0, 0.0, 8.0]), {"A100": 1, "A40": 3}, 60.0)
    assert r.utilisation["A100"] == pytest.approx(2.0)
    assert r.served == pytest.approx(r.requests / 2)


def _scaler(cluster: Cluster, obj: dict[str, Any]) -> SimAutoscaler:
    view = view_of(obj, POLICY)
    assert isinstance(view, AutoscalerView)
    return SimAutoscaler(view, target_utilisation(obj))


def test_overlapping_selectors_count_the_other_types_pods() -> None:
    broad = {"gpumix.io/model": "m"}
    cluster = Cluster(POOLS, POLICY)
    cluster.add_deployment(deployment("a100", "A100", broad, replicas=4), 0)
    cluster.add_deployment(deployment("a40", "A40", broad, replicas=1), 0)
    cluster.reconcile(0.0)
    scaler = _scaler(cluster, hpa("a40", "a40"))
    assert scaler.target == 0.5
    assert len(cluster.matching_pods("default", cluster.deployments["a40"].selector)) == 5
    # A100 pods busy at 100 %, the A40 pod idle: the A40 autoscaler wants 8 (its max)
    assert scaler.desired(cluster, {"A100": 1.0, "A40": 0.0}, 60.0) == 8


def test_fixed_selectors_count_only_own_pods() -> None:
    objects = [
        deployment("a100", "A100", {"gpumix.io/model": "m"}, replicas=4),
        deployment("a40", "A40", {"gpumix.io/model": "m"}, replicas=1),
    ]
    events = fix_manifests(objects, [], POLICY)
    assert {e.name for e in events} == {"a100", "a40"}
    cluster = Cluster(POOLS, POLICY)
    for obj in objects:
        cluster.add_deployment(obj, 0)
    cluster.reconcile(0.0)
    scaler = _scaler(cluster, hpa("a40", "a40"))
    assert len(cluster.matching_pods("default", cluster.deployments["a40"].selector)) == 1
    assert scaler.desired(cluster, {"A100": 1.0, "A40": 0.0}, 60.0) == 1


def test_webhook_injects_the_default_ceiling_capped_by_gpus() -> None:
    cluster = Cluster(POOLS, POLICY)
    objects = [deployment("a40", "A40", {"app": "a40"}), hpa("a40", "a40", max_replicas=None)]
    admitted, events = admit(objects, cluster.node_objects(), POLICY, webhook=True)
    assert admitted[1]["spec"]["maxReplicas"] == 4  # policy default 10, but 4 A40 GPUs
    assert [e.verdict for e in events] == ["patched"]
    admitted, events = admit(objects, cluster.node_objects(), POLICY, webhook=False)
    assert "maxReplicas" not in admitted[1]["spec"] and not events


def test_webhook_isolates_both_deployments_of_a_model_group() -> None:
    """Both select by the model label alone: the first is isolated at CREATE, so the
    second can be fixed too and both are admitted."""
    broad = {"gpumix.io/model": "m"}
    objects = [deployment("a100", "A100", broad), deployment("a40", "A40", broad)]
    admitted, events = admit(objects, [], POLICY, webhook=True)
    assert [o["metadata"]["name"] for o in admitted] == ["a100", "a40"]
    assert [e.verdict for e in events] == ["patched", "patched"]
    for o in admitted:
        name = o["metadata"]["name"]
        assert o["spec"]["selector"]["matchLabels"] == {**broad, "gpumix.io/deployment": name}


def test_webhook_denies_a_deployment_a_broad_one_from_before_captures() -> None:
    broad = {"gpumix.io/model": "m"}
    objects = [deployment("a40", "A40", broad)]
    before = deployment("a100", "A100", broad)
    admitted, events = admit(objects, [before], POLICY, webhook=True)
    assert admitted == [] and [e.verdict for e in events] == ["denied"]
