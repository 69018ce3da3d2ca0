"""GPU accounting of a cluster read: capacity, bound pods, unscheduled replicas."""

from __future__ import annotations

from typing import Any

from controller_helpers import MODEL_KEY, deployment, node

from gpumix.controller.cluster import build_state
from gpumix.kube.objects import ObjectRef
from gpumix.kube.policy import Policy

POLICY = Policy(model_label_keys=(MODEL_KEY,))


def pod(name: str, labels: dict[str, str], node_name: str | None, gpus: int, phase: str) -> Any:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {
            "nodeName": node_name,
            "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
        },
        "status": {"phase": phase},
    }


def test_free_gpus_count_bound_pods_and_unscheduled_replicas() -> None:
    nodes = [node("a-0", "A100", 8), node("a-1", "A100", 8), node("b-0", "A40", 4)]
    cordoned = node("a-2", "A100", 8)
    cordoned["spec"] = {"unschedulable": True}
    nodes.append(cordoned)
    deps = [
        deployment("llama-a100", "A100", replicas=3, gpus=2),  # 2 bound + 1 pending
        deployment("other-a100", "A100", replicas=1, gpus=1),  # nothing bound
    ]
    sel = {MODEL_KEY: "llama", "app": "llama-a100", "gpumix.io/gpu-type": "A100"}
    pods = [
        pod("p0", sel, "a-0", 2, "Running"),
        pod("p1", sel, "a-1", 2, "Running"),
        pod("done", sel, "a-1", 2, "Succeeded"),  # finished: holds nothing
        pod("stray", {"x": "y"}, "a-0", 3, "Running"),  # no Deployment, still uses GPUs
    ]
    state = build_state([], deps, nodes, pods, [], POLICY)
    assert state.capacity == {"A100": 16, "A40": 4}
    # bound: 2 + 2 + 3 = 7; unscheduled: llama 1 x 2, other 1 x 1 -> 10 committed
    assert state.free == {"A100": 6, "A40": 4}
    assert state.committed[ObjectRef("Deployment", "default", "llama-a100")] == 6
    assert state.committed[ObjectRef("Deployment", "default", "other-a100")] == 1
    pools = state.pools()
    assert pools["A100"].capacity == 16 and pools["A100"].free == 6
