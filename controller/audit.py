"""The audit: the webhook's rules over the whole cluster, at an interval.

Admission sees one object at a time; two overlapping Deployments created at
the same moment, or objects that predate the webhook, slip through.  The audit
takes every Deployment, autoscaler and Node from the controller's watch cache
(it waits while that cache is not synced), lists the Namespaces, runs
:func:`gpumix.rules.engine.evaluate_snapshot` (the same rules), and reports:

- the ``gpumix_audit_findings{rule,severity,namespace}`` gauge (always);
- a Warning Event on the subject of each finding first seen (leader only);
- one ``PolicyReport`` (``wgpolicyk8s.io/v1alpha2``) named ``gpumix-audit`` per
  namespace with findings, when that CRD is served (leader only); a report
  whose namespace became clean is emptied, not left stale.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from typing import Any

from gpumix.controller.cluster import ObjectStore, build_state
from gpumix.controller.metrics import ControllerMetrics
from gpumix.controller.plan import format_time
from gpumix.kube.policy import Policy
from gpumix.kubeio.client import ApiError, KubeClient, resource_path
from gpumix.kubeio.informer import Informer
from gpumix.rules.base import Finding
from gpumix.rules.engine import evaluate_snapshot

log = logging.getLogger("gpumix.controller.audit")

REPORT_GROUP, REPORT_VERSION, REPORT_PLURAL = "wgpolicyk8s.io", "v1alpha2", "policyreports"
REPORT_NAME = "gpumix-audit"
MAX_EVENTS_PER_AUDIT = 200

_API_VERSIONS = {
    "Deployment": "apps/v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
    "ScaledObject": "keda.sh/v1alpha1",
    "PodAutoscaler": "autoscaling.aibrix.ai/v1alpha1",
}


class Auditor:
    def __init__(
        self,
        kube: KubeClient,
        policy: Policy,
        metrics: ControllerMetrics,
        informer: Informer,
        store: ObjectStore,
        can_write: Callable[[], bool],
    ) -> None:
        self._kube = kube
        self._policy = policy
        self._metrics = metrics
        self._informer = informer
        self._store = store
        self._can_write = can_write
        self._reported: set[tuple[str, str, str, str]] = set()
        self._report_namespaces: set[str] = set()
        self.last_findings: list[Finding] = []

    async def run_once(self, now: float) -> list[Finding] | None:
        """One audit; None (nothing reported) while the watch cache is not synced."""
        if not self._informer.synced:
            log.info("audit skipped: the cluster cache is not synced")
            return None
        namespaces, _ = await self._kube.list(resource_path("", "v1", "namespaces"))
        store = self._store
        state = build_state(
            [],
            store.of("Deployment"),
            store.of("Node"),
            [],
            store.autoscalers(),
            self._policy,
            namespaces,
        )
        findings = evaluate_snapshot(state.snapshot, self._policy)
        self.last_findings = findings
        self._export(findings)
        if self._can_write():
            await self._events(findings, now)
            if await self._reports_served():
                await self._reports(findings, now)
        log.info("audit", extra={"findings": len(findings)})
        return findings

    async def _reports_served(self) -> bool:
        """Is the PolicyReport API served (one discovery GET per audit)?"""
        try:
            doc = await self._kube.get_or_none(f"/apis/{REPORT_GROUP}/{REPORT_VERSION}")
        except ApiError:
            return False
        return any(
            isinstance(r, dict) and r.get("name") == REPORT_PLURAL
            for r in (doc or {}).get("resources") or []
        )

    def _export(self, findings: list[Finding]) -> None:
        counts: dict[tuple[str, str, str], int] = {}
        for f in findings:
            key = (f.rule, f.severity, f.subject.namespace)
            counts[key] = counts.get(key, 0) + 1
        gauge = self._metrics.audit_findings
        gauge.clear()
        for (rule, severity, ns), n in counts.items():
            gauge.labels(rule, severity, ns).set(n)

    async def _events(self, findings: list[Finding], now: float) -> None:
        current = {_fkey(f) for f in findings}
        new = [f for f in findings if _fkey(f) not in self._reported]
        for f in new[:MAX_EVENTS_PER_AUDIT]:
            if not self._can_write():
                return
            body = {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {
                    "name": f"{f.subject.name}.{uuid.uuid4().hex[:16]}",
                    "namespace": f.subject.namespace,
                },
                "involvedObject": {
                    "apiVersion": _API_VERSIONS.get(f.subject.kind, "v1"),
                    "kind": f.subject.kind,
                    "name": f.subject.name,
                    "namespace": f.subject.namespace,
                },
                "reason": "AuditFinding",
                "message": f"[{f.rule}, {f.severity}] {f.message}"[:1024],
                "type": "Warning",
                "source": {"component": "gpumix-controller"},
                "reportingComponent": "gpumix.io/audit",
                "reportingInstance": "gpumix-controller",
                "action": f.rule,
                "firstTimestamp": format_time(now),
                "lastTimestamp": format_time(now),
                "count": 1,
            }
            try:
                await self._kube.request(
                    "POST", resource_path("", "v1", "events", f.subject.namespace), body=body
                )
            except ApiError as exc:
                log.warning("audit event not recorded", extra={"error": str(exc)})
                continue
            self._reported.add(_fkey(f))
        self._reported &= current | {_fkey(f) for f in new}

    async def _reports(self, findings: list[Finding], now: float) -> None:
        by_ns: dict[str, list[Finding]] = {}
        for f in findings:
            by_ns.setdefault(f.subject.namespace, []).append(f)
        for ns in sorted(set(by_ns) | self._report_namespaces):
            if not self._can_write():
                return
            report = policy_report(ns, by_ns.get(ns, []), now)
            path = resource_path(REPORT_GROUP, REPORT_VERSION, REPORT_PLURAL, ns, REPORT_NAME)
            try:
                existing = await self._kube.get_or_none(path)
                if existing is None:
                    await self._kube.request(
                        "POST",
                        resource_path(REPORT_GROUP, REPORT_VERSION, REPORT_PLURAL, ns),
                        body=report,
                    )
                else:
                    report["metadata"]["resourceVersion"] = existing["metadata"].get(
                        "resourceVersion"
                    )
                    await self._kube.request("PUT", path, body=report)
            except ApiError as exc:
                log.warning("policy report not written", extra={"namespace": ns, "error": str(exc)})
                continue
            if ns in by_ns:
                self._report_namespaces.add(ns)
            else:
                self._report_namespaces.discard(ns)


def _fkey(f: Finding) -> tuple[str, str, str, str]:
    return (f.rule, f.subject.kind, f"{f.subject.namespace}/{f.subject.name}", f.message)


def policy_report(namespace: str, findings: list[Finding], now: float) -> dict[str, Any]:
    """A wgpolicyk8s.io/v1alpha2 PolicyReport for one namespace."""
    seconds = math.floor(now)
    results = []
    for f in findings:
        results.append(
            {
                "source": "gpumix",
                "policy": "gpumix",
                "rule": f.rule,
                "category": "GPU serving",
                "result": "fail" if f.severity == "error" else "warn",
                "severity": "high" if f.severity == "error" else "medium",
                "scored": True,
                "message": f.message[:2048],
                "timestamp": {"seconds": seconds, "nanos": 0},
                "resources": [
                    {
                        "apiVersion": _API_VERSIONS.get(r.kind, "v1"),
                        "kind": r.kind,
                        "name": r.name,
                        "namespace": r.namespace,
                    }
                    for r in (f.subject, *f.related)
                ],
            }
        )
    fail = sum(1 for r in results if r["result"] == "fail")
    warn = sum(1 for r in results if r["result"] == "warn")
    return {
        "apiVersion": f"{REPORT_GROUP}/{REPORT_VERSION}",
        "kind": "PolicyReport",
        "metadata": {
            "name": REPORT_NAME,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "gpumix"},
        },
        "scope": {"apiVersion": "v1", "kind": "Namespace", "name": namespace},
        "summary": {"pass": 0, "fail": fail, "warn": warn, "error": 0, "skip": 0},
        "results": results,
    }
