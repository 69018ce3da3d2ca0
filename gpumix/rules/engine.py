"""Run every rule: over one object (admission) or a whole snapshot (check, audit)."""

from __future__ import annotations

from collections.abc import Iterable

from gpumix.kube.objects import AutoscalerView, DeploymentView, ObjectRef, View
from gpumix.kube.policy import Policy
from gpumix.kube.snapshot import Snapshot
from gpumix.rules import (
    invalid_selector,
    max_replicas_above_ceiling,
    missing_max_replicas,
    selector_overlap,
    unreadable_field,
)
from gpumix.rules.base import Finding, sort_findings


def evaluate(
    view: View, snapshot: Snapshot, policy: Policy, *, overlaps: bool = True
) -> list[Finding]:
    """Findings about one object against the rest of the snapshot.  ``overlaps=False``
    leaves ``selector-overlap`` out, for a caller that judges the pairs itself."""
    if isinstance(view, DeploymentView):
        return (
            invalid_selector.check(view)
            + unreadable_field.check(view)
            + (selector_overlap.check(view, snapshot) if overlaps else [])
        )
    if isinstance(view, AutoscalerView):
        return missing_max_replicas.check(view, snapshot, policy) + (
            max_replicas_above_ceiling.check(view, snapshot, policy)
        )
    return []


def evaluate_snapshot(
    snapshot: Snapshot, policy: Policy, subjects: Iterable[ObjectRef] | None = None
) -> list[Finding]:
    """Findings about every object of the snapshot (or only ``subjects``)."""
    wanted = set(subjects) if subjects is not None else None
    findings: list[Finding] = []
    views: list[DeploymentView | AutoscalerView] = [
        *snapshot.deployments.values(),
        *snapshot.autoscalers.values(),
    ]
    for view in views:
        if wanted is not None and view.ref not in wanted:
            continue
        if view.namespace in policy.exempt_namespaces:
            continue
        findings.extend(evaluate(view, snapshot, policy))
    return sort_findings(findings)
