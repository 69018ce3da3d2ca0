"""Webhook calls the API server makes for writes gpumix does not judge, on a real kube-apiserver.

    python benchmarks/bench_admission_scope.py [--creates 1000]

Starts the test kube-apiserver and etcd (``tools/envtest/build.sh``), and a recording
webhook that allows everything.  The shipped webhook configurations are registered
twice, pointed at the recorder, each limited to a namespace of its own: once as
shipped (with the ``gpumix-scope`` matchConditions) and once without matchConditions
(the baseline: every Deployment write is sent).  Then ``--creates`` CPU Deployments
and as many GPU Deployments are created (server-side dry run) in each namespace, one
at a time, and the API server's own metrics are read: webhook calls
(``apiserver_admission_webhook_admission_duration_seconds_count``), time in webhook
calls, and time spent evaluating match conditions
(``apiserver_admission_match_condition_evaluation_seconds``).  The client-side time
per create is reported as p50/p99.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.envtest import Envtest, ensure_binaries  # noqa: E402
from tests.e2e.gpumix_env import (  # noqa: E402
    Recorder,
    parse_metrics,
    render_manifests,
    wait_until,
    webhook_configurations,
)


def deployment(name: str, gpu: bool) -> dict[str, Any]:
    resources = {"limits": {"nvidia.com/gpu": "1"}} if gpu else {"limits": {"cpu": "1"}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {"name": "c", "image": "registry.k8s.io/pause:3.10", "resources": resources}
                    ]
                },
            },
        },
    }


def configurations(env: Envtest, port: int, namespace: str, with_conditions: bool) -> list[Any]:
    configs = webhook_configurations(render_manifests(), port)
    for config in configs:
        config["metadata"]["name"] = f"bench-{namespace}"
        for hook in config["webhooks"]:
            hook["name"] = f"{hook['name'].split('.')[0]}.{namespace}.bench.gpumix.io"
            hook["clientConfig"]["caBundle"] = base64.b64encode(env.ca.cert_pem).decode()
            hook["namespaceSelector"]["matchLabels"] = {"kubernetes.io/metadata.name": namespace}
            if not with_conditions:
                hook.pop("matchConditions", None)
    return configs


def hook_metrics(env: Envtest, namespace: str) -> dict[str, float]:
    status, text = env.request("GET", "/metrics")
    assert status == 200 and isinstance(text, str)
    out = {"calls": 0.0, "call_seconds": 0.0, "cel_evaluations": 0.0, "cel_seconds": 0.0}
    needle = f'.{namespace}.bench.gpumix.io"'
    for series, value in parse_metrics(text).items():
        if needle not in series:
            continue
        if series.startswith("apiserver_admission_webhook_admission_duration_seconds_count{"):
            out["calls"] += value
        elif series.startswith("apiserver_admission_webhook_admission_duration_seconds_sum{"):
            out["call_seconds"] += value
        elif series.startswith("apiserver_admission_match_condition_evaluation_seconds_count{"):
            out["cel_evaluations"] += value
        elif series.startswith("apiserver_admission_match_condition_evaluation_seconds_sum{"):
            out["cel_seconds"] += value
    return out


def create_many(env: Envtest, namespace: str, gpu: bool, count: int) -> list[float]:
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments?dryRun=All"
    times = []
    for i in range(count):
        obj = deployment(f"{'gpu' if gpu else 'cpu'}-{i}", gpu)
        start = time.perf_counter()
        status, body = env.request("POST", path, obj)
        times.append(time.perf_counter() - start)
        if status != 201:
            raise SystemExit(f"create {obj['metadata']['name']} in {namespace}: {status} {body}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--creates", type=int, default=1000)
    args = parser.parse_args()
    env = Envtest(ensure_binaries()).start()
    try:
        with Recorder(env) as recorder:
            cases = {"shipped": "bench-shipped", "no-conditions": "bench-baseline"}
            for label, namespace in cases.items():
                env.kubectl("create", "namespace", namespace)
                configs = configurations(env, recorder.port, namespace, label == "shipped")
                for config in configs:
                    env.kubectl("apply", "-f", "-", input=json.dumps(config))
            for namespace in cases.values():  # until admission sees both registrations
                wait_until(
                    lambda ns=namespace: (
                        create_many(env, ns, True, 1) and hook_metrics(env, ns)["calls"] > 0
                    ),
                    timeout_s=20,
                    what=f"the configurations of {namespace}",
                )
            print(f"{args.creates} creates of each kind, server-side dry run, one at a time")
            header = (
                f"{'configuration':<15} {'Deployment':<10} {'webhook calls':>13} "
                f"{'calls/create':>12} {'ms in calls':>11} {'CEL evals':>9} "
                f"{'µs per CEL':>10} {'p50 ms':>7} {'p99 ms':>7}"
            )
            print(header)
            for label, namespace in cases.items():
                for gpu in (False, True):
                    before = hook_metrics(env, namespace)
                    times = create_many(env, namespace, gpu, args.creates)
                    after = hook_metrics(env, namespace)
                    d = {k: after[k] - before[k] for k in after}
                    qs = statistics.quantiles(times, n=100)
                    evals = d["cel_evaluations"]
                    per_cel = d["cel_seconds"] / evals * 1e6 if evals else 0.0
                    print(
                        f"{label:<15} {'GPU' if gpu else 'CPU':<10} {d['calls']:>13.0f} "
                        f"{d['calls'] / args.creates:>12.2f} {d['call_seconds'] * 1e3:>11.0f} "
                        f"{d['cel_evaluations']:>9.0f} {per_cel:>10.1f} "
                        f"{qs[49] * 1e3:>7.2f} {qs[98] * 1e3:>7.2f}"
                    )
    finally:
        env.stop()


if __name__ == "__main__":
    main()
