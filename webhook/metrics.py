"""The webhook's Prometheus metrics, on a registry owned by one app (no globals).

Names and labels are a contract with the alerts and dashboards (see the metrics
table in docs/architecture.md); change them there first.

The three per-request families (requests, duration, findings) are plain counts
that a collector turns into Prometheus families at scrape time: they are only
ever touched from the event loop's thread, so they need none of the locks that
``prometheus_client``'s ``Counter`` and ``Histogram`` take on every update (about
8 µs per admission in the server, docs/benchmarks.md).  The gauges, set rarely,
stay ``prometheus_client`` gauges.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

# Label values come from requests: keep them to a known, small set.
KNOWN_KINDS = frozenset({"Deployment", "HorizontalPodAutoscaler", "ScaledObject", "PodAutoscaler"})
KNOWN_OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})
CACHE_KINDS = ("Deployment", "Autoscaler", "Node", "Namespace")
REFUSAL_REASONS = (
    "busy",
    "body-timeout",
    "body-incomplete",
    "header-timeout",
    "too-many-connections",
)
"""Why the HTTPS server stopped reading a request (``gpumix_webhook_requests_refused_total``)."""

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


_BUCKET_LABELS = (*(repr(b) for b in DURATION_BUCKETS), "+Inf")
"""The ``le`` label of each bucket, as ``prometheus_client`` writes it."""


def kind_label(kind: str) -> str:
    return kind if kind in KNOWN_KINDS else ("unknown" if not kind else "other")


def operation_label(operation: str) -> str:
    return operation if operation in KNOWN_OPERATIONS else "unknown"


class _Counts:
    """One labelled counter or histogram child: counts per bucket, sum, creation time."""

    __slots__ = ("buckets", "created", "total")

    def __init__(self, buckets: int, created: float) -> None:
        self.buckets = [0] * buckets
        self.total = 0.0
        self.created = created


class AdmissionCounts(Collector):
    """Requests, their duration and findings, counted without locks (event loop only)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        # label values -> counts; label values are normalized to small known sets
        self._requests: dict[tuple[str, str, str, str], _Counts] = {}
        self._durations: dict[tuple[str, str, str], _Counts] = {}
        self._findings: dict[tuple[str, str, str], _Counts] = {}
        # raw (path, kind, operation, verdict) -> the children it counts in
        self._children: dict[tuple[str, str, str, str], tuple[_Counts, _Counts]] = {}

    def observe(self, path: str, kind: str, operation: str, verdict: str, seconds: float) -> None:
        key = (path, kind, operation, verdict)
        children = self._children.get(key)
        if children is None:
            children = self._children_of(key)
        children[0].total += 1
        duration = children[1]
        duration.buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1
        duration.total += seconds

    def _children_of(self, key: tuple[str, str, str, str]) -> tuple[_Counts, _Counts]:
        path, kind, operation, verdict = key
        k = kind_label(kind)
        request_key = (path, k, operation_label(operation), verdict)
        duration_key = (path, k, verdict)
        now = self._clock()
        if request_key not in self._requests:
            self._requests[request_key] = _Counts(0, now)
        if duration_key not in self._durations:
            self._durations[duration_key] = _Counts(len(DURATION_BUCKETS) + 1, now)
        children = (self._requests[request_key], self._durations[duration_key])
        if len(self._children) < 1024:  # label values are bounded; the raw key may not be
            self._children[key] = children
        return children

    def finding(self, rule: str, severity: str, mode: str) -> None:
        key = (rule, severity, mode)
        child = self._findings.get(key)
        if child is None:  # rules, severities and modes are a small fixed set
            child = self._findings[key] = _Counts(0, self._clock())
        child.total += 1

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "gpumix_admission_requests",
            "Admission requests answered, by path, kind, operation and verdict.",
            labels=("path", "kind", "operation", "verdict"),
        )
        for request_labels, counts in self._requests.items():
            requests.add_metric(request_labels, counts.total, created=counts.created)
        yield requests
        duration = HistogramMetricFamily(
            "gpumix_admission_duration_seconds",
            "Time from reading the request body to the serialized response.",
            labels=("path", "kind", "verdict"),
        )
        for labels, counts in self._durations.items():
            cumulative, buckets = 0, []
            for le, count in zip(_BUCKET_LABELS, counts.buckets, strict=True):
                cumulative += count
                buckets.append((le, float(cumulative)))
            duration.add_metric(labels, buckets, counts.total)
            duration.add_sample(
                "gpumix_admission_duration_seconds_created",
                dict(zip(("path", "kind", "verdict"), labels, strict=True)),
                counts.created,
            )
        yield duration
        findings = CounterMetricFamily(
            "gpumix_admission_findings",
            "Rule findings reported by admission, by rule, severity and mode.",
            labels=("rule", "severity", "mode"),
        )
        for finding_labels, counts in self._findings.items():
            findings.add_metric(finding_labels, counts.total, created=counts.created)
        yield findings


@dataclass
class WebhookMetrics:
    """Every metric of one webhook process, registered on ``registry``."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.admission = AdmissionCounts()
        r.register(self.admission)
        # the hot path calls these directly
        self.observe = self.admission.observe
        self.finding = self.admission.finding
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
        self.cache_unreadable = Gauge(
            "gpumix_cache_unreadable_objects",
            "Objects with values gpumix cannot read, by kind: kept (as views that name the "
            "unreadable fields; the rules report them) or skipped (not readable at all).",
            ("kind", "handling"),
            registry=r,
        )
        self.cert_expiry = Gauge(
            "gpumix_webhook_cert_expiry_timestamp_seconds",
            "Expiry (notAfter, Unix time) of the serving certificate in use.",
            registry=r,
        )
        self.cert_reload_failures = Counter(
            "gpumix_webhook_cert_reload_failures",
            "Attempts to load new serving certificate material that failed (the previous "
            "certificate stays in use).",
            registry=r,
        )
        self.cert_reload_failing = Gauge(
            "gpumix_webhook_cert_reload_failing",
            "1 while the certificate source holds material that does not load.",
            registry=r,
        )
        self.requests_refused = Counter(
            "gpumix_webhook_requests_refused",
            "Requests the HTTPS server stopped reading, by reason: busy (the in-flight body "
            "budget is used up: 429), body-timeout (408), body-incomplete (the client hung "
            "up or broke off its body), header-timeout and too-many-connections (connection "
            "closed).",
            ("reason",),
            registry=r,
        )
        self.body_bytes_in_flight = Gauge(
            "gpumix_webhook_body_bytes_in_flight",
            "Bytes of request bodies reserved by requests being read or reviewed.",
            registry=r,
        )
        for kind in CACHE_KINDS:
            self.cache_objects.labels(kind=kind).set(0)
            for handling in ("kept", "skipped"):
                self.cache_unreadable.labels(kind=kind, handling=handling).set(0)
        for reason in REFUSAL_REASONS:
            self.requests_refused.labels(reason=reason)

    def refused(self, reason: str) -> None:
        self.requests_refused.labels(reason=reason).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
