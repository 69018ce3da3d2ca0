"""The controller's Prometheus metrics and its plain-HTTP server on 8080.

Routes: ``/metrics`` (Prometheus text), ``/healthz``, ``/readyz`` and the
AIBrix-compatible ``/metrics/<namespace>/<deployment>``, which answers in the
format AIBrix's GPU optimizer serves to a PodAutoscaler whose metrics source
is ``targetMetric: vllm:deployment_replicas``::

    # HELP vllm:deployment_replicas Number of suggested replicas.
    # TYPE vllm:deployment_replicas gauge
    vllm:deployment_replicas{model_name="llama2-7b"} 3

and 404 for a Deployment no GPUMix plans.  Metric names are the contract in
docs/architecture.md ("Metrics").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

AIBRIX_METRIC = "vllm:deployment_replicas"


class OneHot:
    """A gauge of one GPUMix's current state, one series per value (as kube-state-metrics
    exports phases): 1 for the current value, 0 for the values seen before."""

    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge
        self._seen: dict[tuple[str, str], set[str]] = {}

    def set(self, key: tuple[str, str], value: str | None) -> None:
        """``value`` None: no current value (every series of ``key`` is 0)."""
        seen = self._seen.setdefault(key, set())
        for old in seen:
            if old != value:
                self.gauge.labels(*key, old).set(0)
        if value is not None:
            seen.add(value)
            self.gauge.labels(*key, value).set(1)

    def forget(self, key: tuple[str, str]) -> None:
        for value in self._seen.pop(key, set()):
            self.gauge.remove(*key, value)

    def clear(self) -> None:
        self._seen.clear()
        self.gauge.clear()


@dataclass
class ControllerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.audit_findings = Gauge(
            "gpumix_audit_findings",
            "Findings of the last audit, by rule, severity and namespace.",
            ["rule", "severity", "namespace"],
            registry=r,
        )
        self.gpu_capacity = Gauge(
            "gpumix_gpu_capacity",
            "Allocatable GPUs on schedulable Nodes.",
            ["gpu_type"],
            registry=r,
        )
        self.gpu_free = Gauge(
            "gpumix_gpu_free",
            "Allocatable GPUs minus those requested by bound pods and unscheduled replicas.",
            ["gpu_type"],
            registry=r,
        )
        self.autoscaler_ceiling_gpus = Gauge(
            "gpumix_autoscaler_ceiling_gpus",
            "Sum of ceiling x GPUs per replica over autoscalers whose target has this GPU type.",
            ["gpu_type"],
            registry=r,
        )
        self.autoscaler_max_replicas = Gauge(
            "gpumix_autoscaler_max_replicas",
            "Ceiling of an autoscaler.",
            ["namespace", "kind", "name", "gpu_type"],
            registry=r,
        )
        self.autoscaler_current_replicas = Gauge(
            "gpumix_autoscaler_current_replicas",
            "Replicas of an autoscaler's target.",
            ["namespace", "kind", "name", "gpu_type"],
            registry=r,
        )
        self.load_available = Gauge(
            "gpumix_load_available",
            "1 when the GPUMix's load data was usable at the last reconcile.",
            ["namespace", "gpumix"],
            registry=r,
        )
        self.recommended_replicas = Gauge(
            "gpumix_recommended_replicas",
            "Replicas the last plan recommends for a member Deployment.",
            ["namespace", "deployment", "gpu_type"],
            registry=r,
        )
        self.plan_cost = Gauge(
            "gpumix_plan_cost_per_hour",
            "Cost per hour of the last plan.",
            ["namespace", "gpumix"],
            registry=r,
        )
        self.best_single_type_cost = Gauge(
            "gpumix_best_single_type_cost_per_hour",
            "Cost per hour of the cheapest plan that uses one GPU type only, for the same load "
            "(what the mix saves is the difference to gpumix_plan_cost_per_hour).",
            ["namespace", "gpumix"],
            registry=r,
        )
        self.solver_status = OneHot(
            Gauge(
                "gpumix_solver_status",
                "1 for the optimizer status of the last plan (OPTIMAL, FEASIBLE, INFEASIBLE, "
                "...), 0 for the others seen before.",
                ["namespace", "gpumix", "status"],
                registry=r,
            )
        )
        self.fail_static = OneHot(
            Gauge(
                "gpumix_fail_static",
                "1 while the GPUMix holds its replicas because no usable load is read, by the "
                "LoadAvailable condition's reason (LoadMissing, LoadStale, LoadPartial, or "
                "NotReady while the GPUMix itself is not ready); 0 otherwise.",
                ["namespace", "gpumix", "reason"],
                registry=r,
            )
        )
        self.solve_duration = Histogram(
            "gpumix_solve_duration_seconds",
            "Time the optimizer took for one GPUMix.",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
            registry=r,
        )
        self.scale_actions = Counter(
            "gpumix_scale_actions",
            "Replica changes written through the /scale subresource.",
            ["namespace", "deployment", "direction"],
            registry=r,
        )
        self.reconcile_errors = Counter(
            "gpumix_reconcile_errors",
            "Reconciles of a GPUMix that failed (retried with backoff).",
            ["namespace", "gpumix"],
            registry=r,
        )
        self.leader = Gauge("gpumix_leader", "1 while this replica holds the lease.", registry=r)


@dataclass(frozen=True, slots=True)
class PublishedRecommendation:
    model: str
    replicas: int


def aibrix_text(model: str, replicas: int) -> str:
    escaped = model.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return (
        f"# HELP {AIBRIX_METRIC} Number of suggested replicas.\n"
        f"# TYPE {AIBRIX_METRIC} gauge\n"
        f'{AIBRIX_METRIC}{{model_name="{escaped}"}} {replicas}\n'
    )


def metrics_app(
    metrics: ControllerMetrics,
    recommendation: Callable[[str, str], PublishedRecommendation | None],
    ready: Callable[[], bool],
) -> web.Application:
    async def prom(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if ready():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="not ready: no successful cluster read yet\n")

    async def aibrix(request: web.Request) -> web.Response:
        ns, name = request.match_info["namespace"], request.match_info["deployment"]
        rec = recommendation(ns, name)
        if rec is None:
            return web.json_response(
                {"error": f"no GPUMix plans Deployment {ns}/{name}"}, status=404
            )
        return web.Response(
            text=aibrix_text(rec.model, rec.replicas), content_type="text/plain", charset="utf-8"
        )

    app = web.Application(client_max_size=64 * 1024)
    app.router.add_get("/metrics", prom)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics/{namespace}/{deployment}", aibrix)
    return app
