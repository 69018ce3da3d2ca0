"""No overlap is admitted across a kube-apiserver crash (``kill -9``) and restart.

After the restart the webhook's watches are answered with ``410 Gone`` (the new API
server's watch cache starts at the current version), so its cluster view is not
current until it has listed again. Dry-run creates of a Deployment that overlaps an
existing one are sent every 200 ms throughout: before the kill, while the API server
is down, while the webhook catches up and after. None may be admitted. One of the
existing Deployments is created only after the restart, so a view that missed it
(a watch resumed from an old version, a relist delayed by a grown backoff) would let
its overlapping twin through.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

from .envtest import Envtest
from .gpumix_env import Obj, Webhook, wait_until

PRODUCT_KEY = "nvidia.com/gpu.product"
PROBE_PERIOD_S = 0.2
NOT_CURRENT = "not current"


def model_deployment(name: str, namespace: str, app: str, product: str) -> Obj:
    """One per-GPU-type Deployment of ``app`` selecting its pods by the ``app`` label
    alone: two of them on different GPU types select each other's pods. (No model-group
    label: the first of such a pair is not isolated at its create, so the second one
    overlaps a Deployment that no change to it can fix, and is denied.)"""
    labels = {"app": app}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "nodeSelector": {PRODUCT_KEY: product},
                    "containers": [
                        {
                            "name": "vllm",
                            "image": "vllm/vllm-openai:v0.6.0",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }
                    ],
                },
            },
        },
    }


def overlaps(returned: Obj, existing: Obj) -> bool:
    """Whether the admitted object's selector selects ``existing``'s pods or the other
    way round (matchLabels only, as these objects use)."""
    sel = returned["spec"]["selector"].get("matchLabels") or {}
    pods = returned["spec"]["template"]["metadata"].get("labels") or {}
    other_sel = existing["spec"]["selector"].get("matchLabels") or {}
    other_pods = existing["spec"]["template"]["metadata"].get("labels") or {}
    return all(other_pods.get(k) == v for k, v in sel.items()) or all(
        pods.get(k) == v for k, v in other_sel.items()
    )


@dataclass
class Probe:
    """Dry-run creates of overlapping twins, every ``PROBE_PERIOD_S``, in a thread."""

    env: Envtest
    twins: list[tuple[Obj, str]]
    """(the probing object, the name of the Deployment it overlaps)"""
    outcomes: list[tuple[float, str, str]] = field(default_factory=list)
    """(time, probing object's name, "admitted-overlap" | "admitted" | "not-current" |
    "denied" | "unreachable")"""
    stop: threading.Event = field(default_factory=threading.Event)

    def once(self, obj: Obj, other: str) -> str:
        # The twin is read first: only a twin stored before the dry run began counts.
        ns = obj["metadata"]["namespace"]
        stored = self.env.kubectl(
            "get", "deployment", other, "-n", ns, "-o", "json", check=False, timeout_s=20
        )
        proc = self.env.kubectl(
            "create", "--dry-run=server", "-o", "json", "-f", "-",
            input=json.dumps(obj), check=False, timeout_s=20,
        )  # fmt: skip
        if proc.returncode == 0:
            if stored.returncode != 0:
                return "admitted"  # the twin did not exist (yet): nothing to overlap
            returned = json.loads(proc.stdout)
            twin = json.loads(stored.stdout)
            return "admitted-overlap" if overlaps(returned, twin) else "admitted"
        if NOT_CURRENT in proc.stderr:
            return "not-current"
        if "denied the request" in proc.stderr:
            return "denied"
        return "unreachable"

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            for obj, other in self.twins:
                outcome = self.once(obj, other)
                self.outcomes.append((time.monotonic(), obj["metadata"]["name"], outcome))
            self.stop.wait(max(0.0, PROBE_PERIOD_S - (time.monotonic() - started)))


def create_when_possible(env: Envtest, obj: Obj, timeout_s: float = 60.0) -> float:
    """Create ``obj`` as soon as the API server and gpumix accept it; the time it took."""
    started = time.monotonic()
    wait_until(
        lambda: (
            env.kubectl(
                "create", "-f", "-", input=json.dumps(obj), check=False, timeout_s=20
            ).returncode
            == 0
        ),
        timeout_s=timeout_s,
        interval_s=0.1,
        what=f"creating {obj['metadata']['name']}",
    )
    return time.monotonic() - started


def test_no_overlap_is_admitted_across_an_apiserver_kill_and_restart(
    apiserver: Envtest, gpumix_webhook: Webhook, namespace: str
) -> None:
    before = model_deployment("early-a100", namespace, "early", "NVIDIA-A100-SXM4-80GB")
    apiserver.kubectl("create", "-f", "-", input=json.dumps(before))
    early_twin = model_deployment("early-a40", namespace, "early", "NVIDIA-A40")
    wait_until(
        lambda: Probe(apiserver, []).once(early_twin, "early-a100") == "denied",
        timeout_s=15,
        what="the webhook to know early-a100",
    )
    late = model_deployment("late-a100", namespace, "late", "NVIDIA-A100-SXM4-80GB")
    late_twin = model_deployment("late-a40", namespace, "late", "NVIDIA-A40")
    probe = Probe(apiserver, [(early_twin, "early-a100"), (late_twin, "late-a100")])
    thread = threading.Thread(target=probe.run, daemon=True)
    thread.start()
    try:
        time.sleep(1.0)
        apiserver.restart_apiserver(downtime_s=2.0, kill=True)
        restarted = time.monotonic()
        took = create_when_possible(apiserver, late)
        # keep probing until both twins are denied by the overlap rule again, then a bit
        wait_until(
            lambda: (
                {
                    name
                    for t, name, outcome in probe.outcomes
                    if t > restarted + took and outcome == "denied"
                }
                == {"early-a40", "late-a40"}
            ),
            timeout_s=60,
            what="both twins denied by the overlap rule after the restart",
        )
        time.sleep(2.0)
    finally:
        probe.stop.set()
        thread.join(timeout=30)
    admitted = [o for o in probe.outcomes if o[2] == "admitted-overlap"]
    created_at = restarted + took
    timeline = [(round(t - created_at, 2), name, outcome) for t, name, outcome in probe.outcomes]
    assert not admitted, f"overlaps admitted (seconds after late-a100 was created): {timeline}"
    refused = [t for t, _, outcome in probe.outcomes if outcome == "not-current"]
    after = [o for o in probe.outcomes if o[0] > restarted]
    # the probe ran throughout, and the webhook came back to judging overlaps
    assert len(probe.outcomes) >= 20 and after, probe.outcomes
    window = (max(refused) - restarted) if refused else 0.0
    print(
        f"\nprobes: {len(probe.outcomes)}; refused as not current: {len(refused)}; "
        f"late-a100 created {took:.1f} s after the API server was ready; "
        f"last refusal {window:.1f} s after it"
    )
    assert gpumix_webhook.process.get("/readyz")[0] == 200
