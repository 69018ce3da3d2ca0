"""The webhook's Prometheus metrics, on a registry owned by one app (no globals).

Names and labels are a contract with the alerts and dashboards (see the metrics
table in docs/architecture.md); change them there first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Label values come from requests: keep them to a known, small set.
KNOWN_KINDS = frozenset({"Deployment", "HorizontalPodAutoscaler", "ScaledObject", "PodAutoscaler"})
KNOWN_OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})
CACHE_KINDS = ("Deployment", "Autoscaler", "Node", "Namespace")

# Admission runs in well under a millisecond; the API server's default timeout is 10 s.
DURATION_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
    2.5,
    10.0,
)


def kind_label(kind: str) -> str:
    return kind if kind in KNOWN_KINDS else ("unknown" if not kind else "other")


def operation_label(operation: str) -> str:
    return operation if operation in KNOWN_OPERATIONS else "unknown"


@dataclass
class WebhookMetrics:
    """Every metric of one webhook process, registered on ``registry``."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "gpumix_admission_requests",
            "Admission requests answered, by path, kind, operation and verdict.",
            ("path", "kind", "operation", "verdict"),
            registry=r,
        )
        self.duration = Histogram(
            "gpumix_admission_duration_seconds",
            "Time from reading the request body to the serialized response.",
            ("path", "kind", "verdict"),
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.findings = Counter(
            "gpumix_admission_findings",
            "Rule findings reported by admission, by rule, severity and mode.",
            ("rule", "severity", "mode"),
            registry=r,
        )
        self.cache_objects = Gauge(
            "gpumix_cache_objects",
            "Objects held in the cluster cache, by kind.",
            ("kind",),
            registry=r,
        )
        self.cache_synced = Gauge(
            "gpumix_cache_synced",
            "1 when every watched resource has been listed and is current.",
            registry=r,
        )
        self.cert_expiry = Gauge(
            "gpumix_webhook_cert_expiry_timestamp_seconds",
            "Expiry (notAfter, Unix time) of the serving certificate in use.",
            registry=r,
        )
        for kind in CACHE_KINDS:
            self.cache_objects.labels(kind=kind).set(0)
        self._children: dict[tuple[str, str, str, str], tuple[Counter, Histogram]] = {}
        self._finding_children: dict[tuple[str, str, str], Counter] = {}

    def observe(self, path: str, kind: str, operation: str, verdict: str, seconds: float) -> None:
        key = (path, kind, operation, verdict)
        children = self._children.get(key)
        if children is None:
            k = kind_label(kind)
            children = (
                self.requests.labels(
                    path=path, kind=k, operation=operation_label(operation), verdict=verdict
                ),
                self.duration.labels(path=path, kind=k, verdict=verdict),
            )
            if len(self._children) < 1024:  # label values are bounded; the key may not be
                self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def finding(self, rule: str, severity: str, mode: str) -> None:
        key = (rule, severity, mode)
        child = self._finding_children.get(key)
        if child is None:  # rules, severities and modes are a small fixed set
            child = self.findings.labels(rule=rule, severity=severity, mode=mode)
            self._finding_children[key] = child
        child.inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
