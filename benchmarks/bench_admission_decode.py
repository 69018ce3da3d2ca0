"""Decoding an AdmissionReview: orjson into dicts against msgspec typed structs.

    python benchmarks/bench_admission_decode.py [--repeat 2000]

Needs msgspec (``pip install msgspec``; gpumix does not depend on it). Starts the test
kube-apiserver (``tools/envtest/build.sh``), registers the shipped webhook
configurations pointed at a recording webhook, and sends four dry-run creates: a GPU
Deployment already isolated, one not isolated, an HPA without maxReplicas and one with
it. The AdmissionReview bodies the API server sent (managedFields, defaults and
userInfo included) are then decoded ``--repeat`` times each, and the CPU per body is
printed for:

- orjson.loads: what the webhook does (into dicts, every field);
- orjson.loads + ``parse_review``: the webhook's whole reading of a request;
- msgspec typed: structs holding only the fields the rules read (the request's
  identity, the objects' names, labels, selector, template, resources, node selector,
  affinity, replicas and autoscaler fields), everything else skipped.
"""

import argparse
import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_admission_apiserver import gpu_deployment, hpa  # noqa: E402
from tests.e2e.envtest import Envtest, ensure_binaries  # noqa: E402
from tests.e2e.gpumix_env import (  # noqa: E402
    Recorder,
    render_manifests,
    wait_until,
    webhook_configurations,
)


def captured_bodies() -> list[bytes]:
    """The AdmissionReview bodies a real API server sends for four creates."""
    env = Envtest(ensure_binaries()).start()
    try:
        with Recorder(env) as recorder:
            configs = webhook_configurations(render_manifests(), recorder.port)
            for config in configs:
                for hook in config["webhooks"]:
                    hook["clientConfig"]["caBundle"] = base64.b64encode(env.ca.cert_pem).decode()
            env.kubectl("create", "namespace", "bench")
            env.kubectl(
                "apply",
                "-f",
                "-",
                input=json.dumps({"apiVersion": "v1", "kind": "List", "items": configs}),
            )
            objects = [
                gpu_deployment("isolated", "bench"),
                gpu_deployment("broad", "bench", isolated=False),
                hpa("no-ceiling", "bench", None),
                hpa("ceiling", "bench", 4),
            ]

            def sent() -> bool:
                for obj in objects:
                    deployment = obj["kind"] == "Deployment"
                    api = "/apis/apps/v1" if deployment else "/apis/autoscaling/v2"
                    plural = "deployments" if deployment else "horizontalpodautoscalers"
                    env.request("POST", f"{api}/namespaces/bench/{plural}?dryRun=All", obj)
                names = {str(r.get("name")) for r in recorder.requests()}
                return names >= {"isolated", "broad", "no-ceiling", "ceiling"}

            wait_until(sent, timeout_s=30, what="the recorder to receive the four creates")
            seen: dict[str, bytes] = {}
            for review in recorder.reviews:
                seen.setdefault(review["request"]["name"], json.dumps(review).encode())
            return list(seen.values())
    finally:
        env.stop()


def typed_decoder() -> Any:
    import msgspec

    class Kind(msgspec.Struct):
        group: str = ""
        version: str = ""
        kind: str = ""

    class Meta(msgspec.Struct):
        name: str = ""
        namespace: str = ""
        labels: dict[str, str] = {}

    class Resources(msgspec.Struct):
        limits: dict[str, Any] = {}
        requests: dict[str, Any] = {}

    class Container(msgspec.Struct):
        resources: Resources = msgspec.field(default_factory=Resources)

    class PodSpec(msgspec.Struct):
        containers: list[Container] = []
        initContainers: list[Container] = []
        nodeSelector: dict[str, str] = {}
        affinity: dict[str, Any] | None = None

    class TemplateMeta(msgspec.Struct):
        labels: dict[str, str] = {}

    class Template(msgspec.Struct):
        metadata: TemplateMeta = msgspec.field(default_factory=TemplateMeta)
        spec: PodSpec = msgspec.field(default_factory=PodSpec)

    class Spec(msgspec.Struct):
        selector: dict[str, Any] | None = None
        template: Template | None = None
        replicas: int | None = None
        scaleTargetRef: dict[str, Any] | None = None
        maxReplicas: int | None = None
        minReplicas: int | None = None

    class Object(msgspec.Struct):
        apiVersion: str = ""
        kind: str = ""
        metadata: Meta = msgspec.field(default_factory=Meta)
        spec: Spec = msgspec.field(default_factory=Spec)

    class Request(msgspec.Struct):
        uid: str
        kind: Kind
        operation: str
        name: str = ""
        namespace: str = ""
        subResource: str = ""
        object: Object | None = None
        oldObject: Object | None = None
        dryRun: bool = False

    class Review(msgspec.Struct):
        apiVersion: str
        kind: str
        request: Request

    return msgspec.json.Decoder(Review)


def best_us(fn: Any, bodies: list[bytes], repeat: int) -> float:
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(repeat):
            for body in bodies:
                fn(body)
        best = min(best, (time.process_time() - t0) / (repeat * len(bodies)))
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    try:
        decoder = typed_decoder()
    except ImportError:
        raise SystemExit("msgspec is needed for this benchmark: pip install msgspec") from None
    import orjson

    from gpumix.webhook.wire import parse_review

    bodies = captured_bodies()
    size = sum(map(len, bodies)) / len(bodies)
    print(f"{len(bodies)} AdmissionReview bodies from the API server, {size:.0f} bytes on average")
    rows = {
        "orjson.loads (dicts, every field)": orjson.loads,
        "orjson.loads + parse_review": lambda b: parse_review(orjson.loads(b)),
        "msgspec typed (fields the rules read)": decoder.decode,
    }
    base = None
    for label, fn in rows.items():
        us = best_us(fn, bodies, args.repeat)
        base = base or us
        print(f"{label}: {us:.2f} µs per body ({us / base:.2f}x)")


if __name__ == "__main__":
    main()
