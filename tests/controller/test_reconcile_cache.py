"""The controller's watch cache: autoscalers honoured as soon as they exist, and no
scale written while the cache is not current."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from controller_helpers import (
    Completed,
    GreedySolver,
    bucket,
    condition,
    deployment,
    gmx_status,
    gpumix,
    hpa,
    node,
    replicas,
    running,
    settings,
    wait_for,
)

CRDS = Path(__file__).resolve().parents[1] / "e2e" / "crds"


def cluster(emu: Any) -> None:
    emu.create(node("a100-0", "A100", 8))
    emu.create(node("a40-0", "A40", 8))
    emu.create(node("a40-1", "A40", 8))
    emu.create(deployment("llama-a100", "A100", replicas=1))
    emu.create(deployment("llama-a40", "A40", replicas=1))


def pod_autoscaler(target: str, max_replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling.aibrix.ai/v1alpha1",
        "kind": "PodAutoscaler",
        "metadata": {"name": target, "namespace": "default"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicas": 1,
            "maxReplicas": max_replicas,
            "scalingStrategy": "KPA",
        },
    }


def set_load(emu: Any, rps: float) -> None:
    obj = emu.get("gpumixes.gpumix.io", "llama", "default")
    obj["spec"]["loadSource"]["static"]["buckets"] = [bucket(512, 128, rps)]
    emu.put(obj)


async def _track_max(emu: Any, name: str, out: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        out.append(replicas(emu, name))
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("kind", ["PodAutoscaler", "HorizontalPodAutoscaler"])
async def test_a_new_autoscaler_is_honoured_at_once(emu: Any, api: Any, kind: str) -> None:
    """The load rises (the plan wants 8 A40 replicas) right as an autoscaler with
    maxReplicas 3 is created for the A40 member (for the PodAutoscaler, right after its
    CRD is installed): the controller never scales the member itself, and its status
    names the autoscaler within 2 s."""
    cluster(emu)
    emu.create(gpumix(load=[bucket(512, 128, 5.0)]))
    seen: list[int] = []
    stop = asyncio.Event()
    async with running(api, settings(), solver=GreedySolver()):
        await wait_for(
            lambda: condition(gmx_status(emu), "Scaling").get("reason") in ("Scaled", "Stable"),
            what="the first plan",
        )
        assert replicas(emu, "llama-a40") == 1
        tracker = asyncio.create_task(_track_max(emu, "llama-a40", seen, stop))
        try:
            if kind == "PodAutoscaler":
                emu.create(yaml.safe_load((CRDS / "aibrix-podautoscaler.yaml").read_text()))
                emu.create(pod_autoscaler("llama-a40", 3))
            else:
                emu.create(hpa("llama-a40", "llama-a40", 3))
            created = time.monotonic()
            set_load(emu, 40.0)

            def honoured() -> bool:
                plan = gmx_status(emu).get("plan") or []
                entry = next((e for e in plan if e.get("deployment") == "llama-a40"), {})
                return f"{kind} default/llama-a40" in str(entry.get("autoscaledBy"))

            await wait_for(honoured, timeout=5, what=f"the {kind} in the plan")
            assert time.monotonic() - created < 2.0
            entry = next(e for e in gmx_status(emu)["plan"] if e["deployment"] == "llama-a40")
            assert entry["ceiling"] == 3
            assert entry["recommendedReplicas"] <= 3
        finally:
            stop.set()
            await tracker
    assert seen and max(seen) <= 3, f"llama-a40 replicas seen: {sorted(set(seen))}"


async def test_no_scale_while_the_cache_is_not_synced(emu: Any, api: Any) -> None:
    """Deployments cannot be listed (after the watches dropped): the cache is not current,
    so a load change is held, not acted on; once the list works again the plan is applied."""
    cluster(emu)
    emu.create(gpumix(load=[bucket(512, 128, 5.0)]))
    async with running(api, settings(), solver=GreedySolver()) as run:
        ctl = run.controller
        await wait_for(lambda: ctl.passes > 0 and ctl.informer.synced, what="the first pass")
        await wait_for(lambda: replicas(emu, "llama-a40") == 1, what="the first plan")
        emu.faults.fail_next(10_000, 500, "/apis/apps/v1/deployments")
        emu.start_outage("503", seconds=0.2)  # drops every open watch
        await wait_for(lambda: not ctl.informer.synced, what="the cache unsynced")
        passes = ctl.passes
        set_load(emu, 40.0)  # the GPUMix watch queues a pass
        held = Completed(ctl.informer, "wait_synced")  # the work loop's take/hold rounds
        await wait_for(lambda: ctl._held and len(ctl.queue) > 0, what="work held")
        await held.more(2, what="two take/hold rounds of the work loop")
        assert not ctl.informer.synced
        assert ctl.passes == passes and replicas(emu, "llama-a40") == 1
        assert not ctl.ready()
        emu.faults.rules.clear()
        await wait_for(lambda: replicas(emu, "llama-a40") == 8, what="the held plan applied")
        assert ctl.informer.synced
