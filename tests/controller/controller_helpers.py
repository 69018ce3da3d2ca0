"""Builders shared by the controller tests (objects as plain dicts, like the API returns)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from real_cluster import Conflict

from gpumix.controller.plan import MixProblem, MixSolution
from gpumix.controller.settings import ControllerSettings
from gpumix.controller.shell import Controller, run_controller
from gpumix.kube.policy import Policy

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


# --------------------------------------------------------------------------- running


CRD_PATH = Path(__file__).resolve().parents[2] / "manifests" / "crds" / "gpumix.io_gpumixes.yaml"


def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


def settings(**kw: Any) -> ControllerSettings:
    base: dict[str, Any] = {
        "policy": Policy(model_label_keys=(MODEL_KEY, "gpumix.io/model")),
        "leader_election": False,
        "metrics_port": None,
        "audit_interval_s": 0,
        "debounce_s": 0.02,
        "resync_interval_s": 30,
        "identity": "test-controller",
    }
    base.update(kw)
    return ControllerSettings(**base)


class GreedySolver:
    """A tiny stand-in for the optimizer: cheapest replicas per bucket, independent types.

    Records every problem and solution, so tests can compare the cluster with
    what the solver answered.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[MixProblem, MixSolution]] = []

    def __call__(self, problem: MixProblem) -> MixSolution:
        profiles = {p.gpu_type: p.buckets for p in problem.profiles}  # type: ignore[attr-defined]
        need: dict[str, float] = {o.gpu_type: 0.0 for o in problem.options}
        price = {o.gpu_type: o.price_per_hour * o.gpus_per_replica for o in problem.options}
        for b in problem.load:
            best = None
            for o in problem.options:
                rows = [
                    x
                    for x in profiles.get(o.gpu_type, ())
                    if x.input_tokens >= b.input_tokens and x.output_tokens >= b.output_tokens
                ] or list(profiles.get(o.gpu_type, ()))
                if not rows:
                    continue
                cap = min(rows, key=lambda x: (x.input_tokens, x.output_tokens)).max_rps
                if cap <= 0:
                    continue
                cost = price[o.gpu_type] / cap
                if best is None or cost < best[0]:
                    best = (cost, o.gpu_type, cap)
            if best is None:
                sol = MixSolution("INFEASIBLE", message="no GPU type serves a bucket")
                self.calls.append((problem, sol))
                return sol
            need[best[1]] += b.rps / best[2]
        import math

        replicas = {}
        for o in problem.options:
            n = max(o.min_replicas, math.ceil(need[o.gpu_type] - 1e-9))
            replicas[o.gpu_type] = min(n, o.max_replicas)
        cost = sum(replicas[t] * price[t] for t in replicas)
        sol = MixSolution("OPTIMAL", replicas, cost_per_hour=cost, solve_seconds=0.001)
        self.calls.append((problem, sol))
        return sol


async def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Completed:
    """Counts the completed calls of an async method of one object (replaced on that
    object only): a test waits for the work it needs to have happened, not for time."""

    def __init__(self, obj: Any, method: str) -> None:
        self.count = 0
        original = getattr(obj, method)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            result = await original(*args, **kwargs)
            self.count += 1
            return result

        setattr(obj, method, counted)

    async def more(self, n: int, what: str, timeout: float = 10.0) -> None:
        """Wait until ``n`` more calls have completed."""
        target = self.count + n
        await wait_for(lambda: self.count >= target, timeout=timeout, what=what)


@dataclass
class Running:
    controller: Controller
    stop: asyncio.Event
    task: asyncio.Task[None]
    extra: dict[str, Any] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def running(
    api: Any, cfg: ControllerSettings, *, solver: Any = None, clock: Callable[[], float] = time.time
) -> AsyncIterator[Running]:
    stop = asyncio.Event()
    box: list[Controller] = []
    task = asyncio.create_task(
        run_controller(cfg, api, clock=clock, stop_event=stop, solver=solver, started=box.append)
    )
    await wait_for(lambda: box or task.done(), 10, "controller start")
    if task.done():
        task.result()
    try:
        yield Running(box[0], stop, task)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


def replicas(emu: Any, name: str, namespace: str = "default") -> int:
    obj = emu.get("deployments.apps", name, namespace)
    return int(obj["spec"].get("replicas", 1))


def update(
    cluster: Any, resource: str, name: str, namespace: str, change: Callable[[Any], None]
) -> dict[str, Any]:
    """Read an object, ``change`` it in place and write it back, reading again after a
    409 (on a real API server the controller's status writes move the resourceVersion
    between the read and the write; the emulator's direct writes do not check it)."""
    for _ in range(20):
        obj = cluster.get(resource, name, namespace)
        change(obj)
        try:
            return dict(cluster.put(obj))
        except Conflict:
            continue
    raise AssertionError(f"{resource} {namespace}/{name}: still conflicting after 20 writes")


def gmx_status(emu: Any, name: str = "llama", namespace: str = "default") -> dict[str, Any]:
    obj = emu.get("gpumixes.gpumix.io", name, namespace)
    return (obj or {}).get("status") or {}


def condition(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    for c in status.get("conditions") or []:
        if c.get("type") == ctype:
            return c
    return {}


def events(emu: Any, namespace: str = "default") -> list[dict[str, Any]]:
    return emu.list("events", namespace)
