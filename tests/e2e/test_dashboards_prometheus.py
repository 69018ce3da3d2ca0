"""Every query of the Grafana dashboards (manifests/dashboards) runs in a real Prometheus
that scrapes a real ``gpumix webhook`` (registered with the real kube-apiserver, which is
scraped too) and a real ``gpumix controller`` planning two GPUMixes, one of them without
load data (held at its replicas). Each query must be valid PromQL, and each must return
a finite number except the few that need something this cluster has not got (listed in
NEEDS_ELSEWHERE with the reason).

With ``GPUMIX_DASHBOARD_PNG_DIR=docs/img/dashboards`` the run lasts about two minutes
with changing load and writes a PNG of each dashboard from the same queries
(docs/dashboards.md).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .dashboards import Prometheus, PrometheusError, finite, panels, promql, render_png
from .envtest import Envtest, free_port
from .gpumix_env import (
    LEASE_NAME,
    SYSTEM_NS,
    GpumixProcess,
    Obj,
    Webhook,
    controller_process,
    dry_run_admitted,
    service_account_kubeconfig,
    wait_until,
)

RATE_INTERVAL = "20s"
MODEL_KEY = "model.aibrix.ai/name"
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

# (dashboard, panel title, legendFormat) -> why this cluster gives it no data.
NEEDS_ELSEWHERE = {
    ("controller", "Plan vs replicas per GPU type", "running {{gpu_type}}"): (
        "kube_deployment_spec_replicas comes from kube-state-metrics"
    ),
    ("webhook", "Failed calls seen by kube-apiserver", "rejected {{name}} {{error_type}}"): (
        "only while kube-apiserver cannot reach the webhook"
    ),
    ("webhook", "Failed calls seen by kube-apiserver", "failed open {{name}}"): (
        "only while a webhook with failurePolicy Ignore is unreachable"
    ),
    ("controller", "Reconcile errors per GPUMix", "{{namespace}}/{{gpumix}}"): (
        "the counter has a series only once a reconcile failed; none does here"
    ),
}


def node(name: str, gpu_type: str) -> Obj:
    resources = {"nvidia.com/gpu": "16", "cpu": "64", "memory": "512Gi", "pods": "110"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": gpu_type}},
        "status": {"capacity": resources, "allocatable": resources},
    }


def deployment(name: str, namespace: str, gpu_type: str, model: str) -> Obj:
    selector = {MODEL_KEY: model, "app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {MODEL_KEY: model}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": {**selector, "gpumix.io/gpu-type": gpu_type}},
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


def gpumix(namespace: str, model: str, load_source: Obj) -> Obj:
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
            "loadSource": load_source,
            "intervalSeconds": 5,
            "mode": "scale",
            "scaleDownStabilizationSeconds": 0,
            "minChangeReplicas": 1,
        },
    }


def static_load(rps: float) -> Obj:
    return {
        "static": {"buckets": [{"inputTokens": 512, "outputTokens": 128, "requestsPerSecond": rps}]}
    }


def hpa(name: str, namespace: str, target: str) -> Obj:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicas": 1,
            "maxReplicas": 4,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 70},
                    },
                }
            ],
        },
    }


def apply(env: Envtest, *objects: Obj) -> None:
    env.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}),
    )


class Scenario:
    """A namespace with two models on A100 and A40: "llama" planned from static load,
    "qwen" whose Prometheus is unreachable (its replicas are held), an HPA, and
    admissions that are allowed, patched and denied; and a namespace in audit mode
    holding two Deployments whose selectors overlap (the controller's audit finds them)."""

    def __init__(self, env: Envtest, webhook: Webhook, namespace: str) -> None:
        self.env = env
        self.namespace = namespace
        audited = f"{namespace}-audit"
        namespaces_before = webhook.cached("Namespace")
        apply(
            env,
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": audited, "labels": {"gpumix.io/mode": "audit"}},
            },
        )
        wait_until(
            lambda: webhook.cached("Namespace") > namespaces_before,
            timeout_s=15,
            what="the audit-mode namespace in the webhook's cache",
        )
        broad = deployment("tools", audited, "A40", "tools")
        broad["spec"]["selector"]["matchLabels"] = {MODEL_KEY: "tools"}
        apply(env, broad, deployment("tools-a40", audited, "A40", "tools"))
        apply(env, node(f"{namespace}-a100", "A100"), node(f"{namespace}-a40", "A40"))
        apply(
            env,
            deployment("llama-a100", namespace, "A100", "llama"),
            deployment("llama-a40", namespace, "A40", "llama"),
            deployment("qwen-a100", namespace, "A100", "qwen"),
            deployment("chat-a40", namespace, "A40", "chat"),
        )
        apply(env, hpa("chat-a40", namespace, "chat-a40"))
        dead = f"http://127.0.0.1:{free_port()}"
        apply(
            env,
            gpumix(namespace, "llama", static_load(12.0)),
            gpumix(namespace, "qwen", {"prometheus": {"url": dead, "timeoutSeconds": 0.5}}),
        )
        self.step = 0
        self.hold = 1  # rounds at one load level

    def activity(self) -> None:
        """One round: a new load for llama (a solve, maybe a scale), admissions of each
        verdict (a dry run goes through both webhooks, a denial is an overlap)."""
        self.step += 1
        rps = (12.0, 30.0, 55.0, 20.0)[(self.step // self.hold) % 4]
        patch = {"spec": {"loadSource": static_load(rps)}}
        self.env.kubectl(
            "patch", "gmx", "llama", "-n", self.namespace, "--type=merge", "-p", json.dumps(patch)
        )
        probe = deployment(f"probe-{self.step}", self.namespace, "A40", f"probe-{self.step}")
        dry_run_admitted(self.env, probe)
        unlabeled = hpa(f"probe-{self.step}", self.namespace, "chat-a40")
        dry_run_admitted(self.env, unlabeled)  # a second autoscaler on chat-a40: a finding
        overlap = deployment(f"llama-copy-{self.step}", self.namespace, "A100", "llama")
        overlap["spec"]["selector"]["matchLabels"] = {MODEL_KEY: "llama"}
        overlap["spec"]["template"]["metadata"]["labels"] = {MODEL_KEY: "llama"}
        dry_run_admitted(self.env, overlap)


@pytest.fixture
def controller(
    apiserver: Envtest, gpumix_manifests: list[Obj], namespace: str
) -> Iterator[GpumixProcess]:
    apiserver.kubectl("delete", "lease", LEASE_NAME, "-n", SYSTEM_NS, "--ignore-not-found")
    kubeconfig = service_account_kubeconfig(apiserver, "gpumix-controller")
    proc = controller_process(
        apiserver, kubeconfig, identity="dashboards", namespace=namespace, audit_interval_s=2
    ).start()
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def prometheus(
    apiserver: Envtest, gpumix_webhook: Webhook, controller: GpumixProcess
) -> Iterator[Prometheus]:
    pki = apiserver.workdir / "pki"
    # honor_labels as the shipped ServiceMonitors: the metrics' own namespace label stays.
    jobs: list[Obj] = [
        {
            "job_name": "gpumix-webhook",
            "honor_labels": True,
            "static_configs": [{"targets": [f"127.0.0.1:{gpumix_webhook.process.http_port}"]}],
        },
        {
            "job_name": "gpumix-controller",
            "honor_labels": True,
            "static_configs": [{"targets": [f"127.0.0.1:{controller.http_port}"]}],
        },
        {
            "job_name": "apiserver",
            "scheme": "https",
            "tls_config": {
                "ca_file": str(apiserver.ca_file),
                "cert_file": str(pki / "admin.crt"),
                "key_file": str(pki / "admin.key"),
            },
            "static_configs": [{"targets": [f"127.0.0.1:{apiserver.port}"]}],
        },
    ]
    server = Prometheus(apiserver.workdir, jobs).start()
    try:
        wait_until(
            lambda: server.targets_up([j["job_name"] for j in jobs]),
            timeout_s=30,
            what="prometheus scraping the webhook, the controller and kube-apiserver",
        )
        yield server
    finally:
        server.stop()


def evaluate(prom: Prometheus) -> tuple[dict[Any, str], dict[Any, str]]:
    """Run every target of both dashboards now: (invalid queries, queries without data)."""
    invalid: dict[Any, str] = {}
    empty: dict[Any, str] = {}
    for dashboard in ("webhook", "controller"):
        for panel in panels(dashboard):
            for target in panel["targets"]:
                where = (dashboard, panel["title"], target["legendFormat"])
                expr = promql(target["expr"], rate_interval=RATE_INTERVAL)
                try:
                    result = prom.query(expr)
                except PrometheusError as err:
                    invalid[where] = f"{expr}: {err}"
                    continue
                if not finite(result):
                    empty[where] = expr
    return invalid, empty


def test_every_dashboard_query_runs_on_real_metrics(
    apiserver: Envtest,
    gpumix_webhook: Webhook,
    namespace: str,
    prometheus: Prometheus,
    controller: GpumixProcess,
) -> None:
    scenario = Scenario(apiserver, gpumix_webhook, namespace)
    png_dir = os.environ.get("GPUMIX_DASHBOARD_PNG_DIR")
    rounds = 60 if png_dir else 4
    scenario.hold = 8 if png_dir else 1
    start = time.time()
    for _ in range(rounds):
        scenario.activity()
        time.sleep(1.0)
    # Activity right up to the check, so rates over RATE_INTERVAL see changes.
    deadline = time.monotonic() + 30
    while True:
        scenario.activity()
        time.sleep(2)
        invalid, empty = evaluate(prometheus)
        if not empty.keys() - NEEDS_ELSEWHERE.keys() or time.monotonic() > deadline:
            break
    assert not invalid, invalid
    missing = {k: v for k, v in empty.items() if k not in NEEDS_ELSEWHERE}
    assert not missing, f"dashboard queries without data: {json.dumps(list(missing), indent=1)}"
    # The fail-static panel shows the GPUMix whose load source is down.
    holding = prometheus.query('count(gpumix_load_available{namespace=~".*"} == 0) or vector(0)')
    assert float(holding[0]["value"][1]) == 1.0
    if png_dir:
        for dashboard in ("webhook", "controller"):
            render_png(
                dashboard,
                prometheus,
                start,
                time.time(),
                Path(png_dir) / f"{dashboard}.png",
                rate_interval=RATE_INTERVAL,
            )
