"""The admission counters: the same exposition as prometheus_client's own metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gpumix.webhook.metrics import DURATION_BUCKETS, WebhookMetrics

OBSERVED = [
    ("/validate", "Deployment", "CREATE", "allowed", 0.00005),
    ("/validate", "Deployment", "CREATE", "allowed", 0.0001),  # on a bucket bound: counted in it
    ("/validate", "Deployment", "CREATE", "denied", 0.0003),
    ("/mutate", "HorizontalPodAutoscaler", "UPDATE", "patched", 0.004),
    ("/mutate", "HorizontalPodAutoscaler", "UPDATE", "patched", 0.02),
    ("/validate", "Secret", "CONNECT", "allowed", 0.0007),  # kind "other"
    ("/validate", "", "", "errored", 12.0),  # above the last bound: only in +Inf
]
FINDINGS = [
    ("selector-overlap", "error", "enforce"),
    ("selector-overlap", "error", "enforce"),
    ("missing-max-replicas", "error", "warn"),
]


def reference_exposition() -> str:
    """The same observations through prometheus_client's Counter and Histogram."""
    r = CollectorRegistry()
    requests = Counter(
        "gpumix_admission_requests",
        "Admission requests answered, by path, kind, operation and verdict.",
        ("path", "kind", "operation", "verdict"),
        registry=r,
    )
    duration = Histogram(
        "gpumix_admission_duration_seconds",
        "Time from reading the request body to the serialized response.",
        ("path", "kind", "verdict"),
        buckets=DURATION_BUCKETS,
        registry=r,
    )
    findings = Counter(
        "gpumix_admission_findings",
        "Rule findings reported by admission, by rule, severity and mode.",
        ("rule", "severity", "mode"),
        registry=r,
    )
    labels = {"Secret": "other", "": "unknown"}
    for path, kind, operation, verdict, seconds in OBSERVED:
        k = labels.get(kind, kind)
        op = operation or "unknown"
        requests.labels(path=path, kind=k, operation=op, verdict=verdict).inc()
        duration.labels(path=path, kind=k, verdict=verdict).observe(seconds)
    for rule, severity, mode in FINDINGS:
        findings.labels(rule=rule, severity=severity, mode=mode).inc()
    return generate_latest(r).decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample but the creation times (which differ by when they were made)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_admission_counts_expose_what_prometheus_client_would() -> None:
    metrics = WebhookMetrics()
    for observed in OBSERVED:
        metrics.observe(*observed)
    for finding in FINDINGS:
        metrics.finding(*finding)
    ours = metrics.render()[0].decode()
    reference = reference_exposition()
    admission = {k: v for k, v in samples(ours).items() if k[0].startswith("gpumix_admission")}
    assert admission == samples(reference)
    assert (
        'gpumix_admission_duration_seconds_bucket{kind="Deployment",le="0.0001",'
        'path="/validate",verdict="allowed"} 2.0'
    ) in ours
    # the families and their types are the same too (creation times included)
    assert [(f.name, f.type) for f in text_string_to_metric_families(ours)][:3] == [
        (f.name, f.type) for f in text_string_to_metric_families(reference)
    ][:3]
    created = [line for line in ours.splitlines() if line.startswith("gpumix_admission_")]
    assert any("_created{" in line for line in created)
