"""``gpumix controller`` against the real API server, run as users run it (a process
with a kubeconfig, here as its ServiceAccount with the shipped RBAC): leader election
on the real Lease, replicas written through ``/scale``, GPUMix status through its
subresource, Events, and watches that survive an API server restart.

There is no kube-controller-manager: Deployments get no pods, so the replicas read
back are exactly what the controller wrote.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .envtest import CRD_DIR, Envtest
from .gpumix_env import (
    LEASE_NAME,
    SYSTEM_NS,
    GpumixProcess,
    Obj,
    controller_process,
    metric_sum,
    service_account_kubeconfig,
    wait_until,
)

MODEL_KEY = "model.aibrix.ai/name"
CONVERGE_S = 30.0

PROFILES = [
    {
        "gpuType": "A100",
        "buckets": [{"inputTokens": 512, "outputTokens": 128, "maxRequestsPerSecond": 10.0}],
    },
    {
        "gpuType": "A40",
        "buckets": [{"inputTokens": 512, "outputTokens": 128, "maxRequestsPerSecond": 5.0}],
    },
]


def node(name: str, gpu_type: str, gpus: int) -> Obj:
    resources = {"nvidia.com/gpu": str(gpus), "cpu": "64", "memory": "512Gi", "pods": "110"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": gpu_type}},
        "status": {"capacity": resources, "allocatable": resources},
    }


def member(name: str, namespace: str, gpu_type: str, model: str) -> Obj:
    labels = {MODEL_KEY: model, "app": name, "gpumix.io/gpu-type": gpu_type}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {MODEL_KEY: model}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {MODEL_KEY: model, "app": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "vllm",
                            "image": "vllm/vllm-openai:v0.6.0",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }
                    ]
                },
            },
        },
    }


def gpumix(namespace: str, model: str, rps: float) -> Obj:
    return {
        "apiVersion": "gpumix.io/v1alpha1",
        "kind": "GPUMix",
        "metadata": {"name": model, "namespace": namespace},
        "spec": {
            "model": model,
            "modelLabelKey": MODEL_KEY,
            "profiles": {"inline": PROFILES},
            "prices": {"A100": 2.0, "A40": 0.8},
            "gpuTypes": {"A100": {"maxReplicas": 8}, "A40": {"maxReplicas": 8}},
            "headroom": 0.0,
            "loadSource": {"static": {"buckets": [load_bucket(rps)]}},
            # Long: only watches (and the 300 s resync) make the controller look again.
            "intervalSeconds": 3600,
            "mode": "scale",
            "scaleDownStabilizationSeconds": 0,
            "minChangeReplicas": 1,
        },
    }


def load_bucket(rps: float) -> dict[str, Any]:
    return {"inputTokens": 512, "outputTokens": 128, "requestsPerSecond": rps}


class Cluster:
    """One namespace with a model served on A100 and A40, and a GPUMix for it."""

    def __init__(self, env: Envtest, namespace: str, rps: float) -> None:
        self.env = env
        self.namespace = namespace
        self.model = "llama"
        for gpu_type in ("A100", "A40"):
            env.kubectl(
                "create",
                "-f",
                "-",
                input=json.dumps(node(f"{namespace}-{gpu_type.lower()}", gpu_type, 16)),
            )
        for gpu_type in ("A100", "A40"):
            env.kubectl(
                "create",
                "-f",
                "-",
                input=json.dumps(
                    member(f"llama-{gpu_type.lower()}", namespace, gpu_type, self.model)
                ),
            )
        env.kubectl("create", "-f", "-", input=json.dumps(gpumix(namespace, self.model, rps)))

    def set_load(self, rps: float) -> None:
        patch = {"spec": {"loadSource": {"static": {"buckets": [load_bucket(rps)]}}}}
        self.env.kubectl(
            "patch",
            "gmx",
            self.model,
            "-n",
            self.namespace,
            "--type=merge",
            "-p",
            json.dumps(patch),
        )

    def gmx(self) -> Obj:
        out = self.env.kubectl("get", "gmx", self.model, "-n", self.namespace, "-o", "json")
        return json.loads(out.stdout)

    def replicas(self) -> dict[str, int]:
        out = self.env.kubectl("get", "deployments", "-n", self.namespace, "-o", "json").stdout
        return {d["metadata"]["name"]: d["spec"]["replicas"] for d in json.loads(out)["items"]}

    def scale_subresource(self, name: str) -> Obj:
        code, body = self.env.request(
            "GET", f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{name}/scale"
        )
        assert code == 200, body
        return body

    def planned(self) -> dict[str, int] | None:
        """Recommended replicas by Deployment, once the status is for the current spec."""
        obj = self.gmx()
        status = obj.get("status") or {}
        if status.get("observedGeneration") != obj["metadata"]["generation"]:
            return None
        plan = status.get("plan") or []
        return {e["deployment"]: e["recommendedReplicas"] for e in plan} or None

    def wait_converged(self, what: str) -> dict[str, int]:
        """Until the status is for the current spec and the replicas equal the plan."""

        def converged() -> dict[str, int] | None:
            plan = self.planned()
            return plan if plan is not None and self.replicas() == plan else None

        return wait_until(converged, timeout_s=CONVERGE_S, what=what, interval_s=0.3)

    def events(self) -> list[Obj]:
        out = self.env.kubectl("get", "events", "-n", self.namespace, "-o", "json").stdout
        return list(json.loads(out)["items"])


def lease(env: Envtest) -> Obj | None:
    code, body = env.request(
        "GET", f"/apis/coordination.k8s.io/v1/namespaces/{SYSTEM_NS}/leases/{LEASE_NAME}"
    )
    return body if code == 200 else None


def holder(env: Envtest) -> str:
    return str(((lease(env) or {}).get("spec") or {}).get("holderIdentity") or "")


def capacity(plan: dict[str, int]) -> float:
    return 10.0 * plan.get("llama-a100", 0) + 5.0 * plan.get("llama-a40", 0)


@pytest.fixture
def controllers(apiserver: Envtest, gpumix_manifests: list[Obj]) -> Iterator[Any]:
    """Start ``gpumix controller`` processes (``start(identity)``); all stopped afterwards.
    The Lease is deleted first so every test starts an election from scratch."""
    apiserver.kubectl("delete", "lease", LEASE_NAME, "-n", SYSTEM_NS, "--ignore-not-found")
    kubeconfig: Path = service_account_kubeconfig(apiserver, "gpumix-controller")
    started: list[GpumixProcess] = []

    def start(identity: str, namespace: str | None = None) -> GpumixProcess:
        proc = controller_process(apiserver, kubeconfig, identity=identity, namespace=namespace)
        started.append(proc.start())
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.stop()


def subresources_written(env: Envtest, path: str, manager: str = "gpumix-controller") -> set[str]:
    """Subresources that ``manager`` wrote (managedFields record the user agent's name)."""
    code, body = env.request("GET", path)
    assert code == 200, body
    return {
        e.get("subresource", "")
        for e in body["metadata"].get("managedFields") or []
        if e.get("manager") == manager
    }


def scale_actions(proc: GpumixProcess) -> float:
    return metric_sum(proc.metrics(), "gpumix_scale_actions_total")


def test_two_controllers_one_writer_and_failover(
    apiserver: Envtest, namespace: str, controllers: Any
) -> None:
    cluster = Cluster(apiserver, namespace, rps=30.0)
    first, second = (
        controllers("e2e-controller-a", namespace),
        controllers("e2e-controller-b", namespace),
    )
    leader_id = wait_until(lambda: holder(apiserver), timeout_s=15, what="a Lease holder")
    leader, follower = (first, second) if leader_id == first.name else (second, first)
    for proc in (leader, follower):
        proc.wait_ready()

    plan = cluster.wait_converged("the first plan applied through /scale")
    assert capacity(plan) >= 30.0
    assert plan != {"llama-a100": 1, "llama-a40": 1}  # it did scale
    for name, replicas in plan.items():
        # autoscaling/v1 Scale leaves out a replicas of 0
        assert cluster.scale_subresource(name)["spec"].get("replicas", 0) == replicas
    status = cluster.gmx()["status"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    # The writes went through the subresources (managedFields record which).
    assert "status" in subresources_written(
        apiserver, f"/apis/gpumix.io/v1alpha1/namespaces/{namespace}/gpumixes/llama"
    )
    # (Created with 1; a /scale write of 0 leaves no managedFields entry: autoscaling/v1
    # Scale omits a replicas of 0, so the write sets no field.)
    for name in [n for n, replicas in plan.items() if replicas not in (0, 1)]:
        path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}"
        assert "scale" in subresources_written(apiserver, path)

    # Only the leader acted: its metrics, its Events; the follower is idle.
    assert metric_sum(leader.metrics(), "gpumix_leader") == 1
    assert metric_sum(follower.metrics(), "gpumix_leader") == 0
    assert scale_actions(leader) >= 1
    assert scale_actions(follower) == 0
    scaled = [e for e in cluster.events() if e["reason"] in ("ScaledUp", "ScaledDown")]
    assert scaled, cluster.events()
    assert {e["reportingInstance"] for e in scaled} == {leader.name}
    assert {e["source"]["component"] for e in scaled} == {"gpumix-controller"}
    assert {e["involvedObject"]["kind"] for e in scaled} <= {"GPUMix", "Deployment"}

    # The Lease is a real one: renewed while held.
    spec = (lease(apiserver) or {})["spec"]
    renewed = spec["renewTime"]
    wait_until(
        lambda: (lease(apiserver) or {})["spec"]["renewTime"] != renewed,
        timeout_s=10,
        what="a Lease renewal",
    )
    transitions = int(spec.get("leaseTransitions") or 0)

    # Failover: the leader stops cleanly and gives the Lease up; the other takes over
    # well before the 15 s lease duration would run out.
    assert leader.stop() == 0
    wait_until(
        lambda: holder(apiserver) == follower.name, timeout_s=10, what="the follower to lead"
    )
    assert int((lease(apiserver) or {})["spec"]["leaseTransitions"]) == transitions + 1
    wait_until(
        lambda: metric_sum(follower.metrics(), "gpumix_leader") == 1,
        timeout_s=10,
        what="gpumix_leader=1 on the new leader",
    )

    cluster.set_load(60.0)
    plan = cluster.wait_converged("the new leader's plan for the higher load")
    assert capacity(plan) >= 60.0
    assert scale_actions(follower) >= 1
    newer = [
        e
        for e in cluster.events()
        if e["reason"] in ("ScaledUp", "ScaledDown") and e["reportingInstance"] == follower.name
    ]
    assert newer


def log_messages(proc: GpumixProcess) -> list[Obj]:
    out = []
    for line in proc.log().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def test_watches_resume_after_an_apiserver_restart(
    apiserver: Envtest, namespace: str, controllers: Any
) -> None:
    """The API server is killed and comes back on the same port with the same etcd.
    Nothing may be lost, including a change made while the controller's GPUMix watch
    is not re-established yet but the API answers again (right after a restart
    kube-apiserver answered 403 for a few seconds; here the watch verb is withheld
    for longer to make that window certain). Everything must be acted on long before
    the GPUMix's one-hour interval or the five-minute resync."""
    cluster = Cluster(apiserver, namespace, rps=20.0)
    proc = controllers("e2e-controller-restart", namespace)
    proc.wait_ready()
    first = cluster.wait_converged("the first plan")

    role = json.loads(
        apiserver.kubectl("get", "clusterrole", "gpumix-controller", "-o", "json").stdout
    )
    (index,) = [
        n
        for n, rule in enumerate(role["rules"])
        if rule.get("resources") == ["gpumixes"] and "watch" in rule["verbs"]
    ]
    verbs = role["rules"][index]["verbs"]

    def set_verbs(new: list[str]) -> None:
        patch = [{"op": "replace", "path": f"/rules/{index}/verbs", "value": new}]
        apiserver.kubectl(
            "patch", "clusterrole", "gpumix-controller", "--type=json", "-p", json.dumps(patch)
        )

    set_verbs([v for v in verbs if v != "watch"])
    try:
        seen = len(log_messages(proc))
        apiserver.restart_apiserver(downtime_s=1.0, kill=True)

        def backing_off() -> bool:
            """The GPUMix watch failed 3 times since the restart (so it waits >= 4 s before
            the next try), and a full pass has run since the last failure."""
            msgs = log_messages(proc)[seen:]
            failed = [
                n
                for n, m in enumerate(msgs)
                if m.get("msg") == "watch failed"
                and m.get("kind") == "GPUMix"
                and "403" in str(m.get("error"))
            ]
            passed = [n for n, m in enumerate(msgs) if m.get("msg") == "reconcile pass"]
            return len(failed) >= 3 and bool(passed) and passed[-1] > failed[-1]

        wait_until(backing_off, timeout_s=CONVERGE_S, what="the GPUMix watch backing off")
    finally:
        set_verbs(verbs)
    cluster.set_load(60.0)
    plan = cluster.wait_converged("the plan for the load set while the watch was down")
    assert proc.running(), proc.log()[-2000:]
    assert capacity(plan) >= 60.0 and plan != first
    assert cluster.gmx()["status"]["load"]["requestsPerSecond"] == 60.0

    # Later changes arrive through the resumed watches: the GPUMix, and a Deployment
    # scaled by hand (the plan puts it back).
    wait_until(lambda: holder(apiserver) == proc.name, timeout_s=10, what="the Lease held")
    cluster.set_load(75.0)
    plan = cluster.wait_converged("the plan for a later load change")
    assert capacity(plan) >= 75.0 and plan["llama-a40"] != 1
    apiserver.kubectl("scale", "deployment", "llama-a40", "-n", namespace, "--replicas=1")
    wait_until(
        lambda: cluster.replicas() == plan,
        timeout_s=CONVERGE_S,
        what="the hand-scaled member put back",
    )
    gmx = cluster.gmx()
    assert gmx["status"]["observedGeneration"] == gmx["metadata"]["generation"]


def test_manual_scale_is_reported_as_an_override_and_reverted(
    apiserver: Envtest, namespace: str, controllers: Any
) -> None:
    """``kubectl scale`` of a member in mode scale: a ScaleOverridden Warning that names the
    field manager recorded in managedFields, and the plan's replicas come back (the
    documented choice: in mode scale the members' replicas belong to the plan)."""
    cluster = Cluster(apiserver, namespace, rps=20.0)
    proc = controllers("e2e-controller-override", namespace)
    proc.wait_ready()
    plan = cluster.wait_converged("the first plan")
    target = max(plan, key=lambda n: plan[n])
    manual = plan[target] + 3

    def seen_by_controller() -> bool:
        # The Event says "scaled from N", N being the replicas gpumix last observed: wait
        # until it has observed its own scale, or N is the count before it.
        entries = (cluster.gmx().get("status") or {}).get("plan") or []
        return any(
            e.get("deployment") == target and e.get("currentReplicas") == plan[target]
            for e in entries
        )

    wait_until(seen_by_controller, timeout_s=CONVERGE_S, what="the controller to see its scale")
    apiserver.kubectl("scale", "deployment", target, "-n", namespace, f"--replicas={manual}")
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{target}"
    code, body = apiserver.request("GET", path)
    assert code == 200, body
    managers = {
        e["manager"]
        for e in body["metadata"]["managedFields"]
        if "f:replicas" in (e.get("fieldsV1") or {}).get("f:spec", {})
    }
    manager = next(m for m in managers if m != "gpumix-controller")

    def override() -> Obj | None:
        return next((e for e in cluster.events() if e["reason"] == "ScaleOverridden"), None)

    event = wait_until(override, timeout_s=CONVERGE_S, what="a ScaleOverridden Event")
    assert event["type"] == "Warning"
    assert f"was scaled from {plan[target]} to {manual} by {manager}" in event["message"]
    wait_until(
        lambda: cluster.replicas()[target] == plan[target],
        timeout_s=CONVERGE_S,
        what="the plan's replicas back",
    )
    assert len([e for e in cluster.events() if e["reason"] == "ScaleOverridden"]) == 1


PA_CRD = "podautoscalers.autoscaling.aibrix.ai"


def test_a_pod_autoscaler_created_right_after_its_crd_is_honoured_at_once(
    apiserver: Envtest, namespace: str, controllers: Any
) -> None:
    """The AIBrix PodAutoscaler CRD is installed while the controller runs, a
    PodAutoscaler with maxReplicas 3 is created for the A40 member at once, and the load
    rises so that the plan alone would give that member 6 replicas: the controller
    never scales it past 3 (it leaves it to its autoscaler), and its status names the
    PodAutoscaler within 2 s.  The CRD is back as the session installed it afterwards."""
    apiserver.kubectl("delete", "crd", PA_CRD, "--ignore-not-found", "--wait=true")
    try:
        cluster = Cluster(apiserver, namespace, rps=5.0)
        proc = controllers("e2e-controller-new-pa", namespace)
        proc.wait_ready()
        cluster.wait_converged("the first plan")
        apiserver.install_crds([CRD_DIR / "aibrix-podautoscaler.yaml"])
        pa = {
            "apiVersion": "autoscaling.aibrix.ai/v1alpha1",
            "kind": "PodAutoscaler",
            "metadata": {"name": "llama-a40", "namespace": namespace},
            "spec": {
                "scaleTargetRef": {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": "llama-a40",
                },
                "minReplicas": 1,
                "maxReplicas": 3,
                "scalingStrategy": "KPA",
            },
        }
        code, body = apiserver.request(
            "POST",
            f"/apis/autoscaling.aibrix.ai/v1alpha1/namespaces/{namespace}/podautoscalers",
            pa,
        )
        assert code == 201, body
        created = time.monotonic()
        cluster.set_load(30.0)
        seen: list[int] = []
        honoured_at: float | None = None
        path = f"/apis/apps/v1/namespaces/{namespace}/deployments/llama-a40"
        deadline = created + 10.0
        while time.monotonic() < deadline:
            code, body = apiserver.request("GET", path)
            assert code == 200, body
            seen.append(int(body["spec"]["replicas"]))
            if honoured_at is None:
                plan = (cluster.gmx().get("status") or {}).get("plan") or []
                entry = next((e for e in plan if e.get("deployment") == "llama-a40"), {})
                if "PodAutoscaler" in str(entry.get("autoscaledBy")):
                    honoured_at = time.monotonic()
                    assert entry["ceiling"] == 3 and entry["recommendedReplicas"] <= 3
            elif time.monotonic() - honoured_at > 3.0:
                break
            time.sleep(0.05)
        assert honoured_at is not None, proc.log()[-2000:]
        assert honoured_at - created < 2.0
        assert max(seen) <= 3, f"llama-a40 replicas seen: {sorted(set(seen))}"
    finally:
        apiserver.install_crds()
