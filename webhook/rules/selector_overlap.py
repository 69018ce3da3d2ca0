"""Rule ``selector-overlap``: two Deployments in a namespace select overlapping pods.

A pair is reported only when one selector *captures* the other's pods (it
matches the other's pod template), and at least one of the two is in scope:

- error, when their GPU types differ, or a Deployment whose selector captures
  the other's pods is the target of an autoscaler (that autoscaler counts them);
- warning, for any other captured pair (two controllers own the same pods).

Selectors that overlap only in theory (a pod would need labels neither pod
template has) are not reported: nothing is selected twice, and no change to the
pair could clear such a warning. Two out-of-scope Deployments (ordinary CPU
apps) are never flagged.
"""

from __future__ import annotations

from gpumix.kube.objects import DeploymentView
from gpumix.kube.policy import DEPLOYMENT_LABEL
from gpumix.kube.selectors import overlap_witness
from gpumix.kube.snapshot import Snapshot
from webhook.rules.base import Finding, Severity

RULE = "selector-overlap"


def check(
    dep: DeploymentView, snapshot: Snapshot, *, fixable: bool = True, explain: bool = True
) -> list[Finding]:
    """Findings about ``dep`` against every other Deployment in the snapshot.

    ``explain=False`` gives the same findings with a one-line message (the pair
    only), for callers that act on the verdict and show no message: admission's
    mutating step."""
    if dep.selector_error is not None:
        return []
    findings: list[Finding] = []
    for other in snapshot.overlap_candidates(dep.selector, dep.namespace):
        if other.name == dep.name or other.selector_error is not None:
            continue
        finding = pair_finding(dep, other, snapshot, fixable=fixable, explain=explain)
        if finding is not None:
            findings.append(finding)
    return findings


def pair_finding(
    dep: DeploymentView,
    other: DeploymentView,
    snapshot: Snapshot,
    *,
    fixable: bool,
    explain: bool = True,
) -> Finding | None:
    # Each fact is computed once here and handed to the message (a hot path: admission).
    takes_other = dep.selector.matches(other.template_labels)
    taken_by_other = other.selector.matches(dep.template_labels)
    if not (takes_other or taken_by_other):
        return None  # nothing is selected twice (an overlap in theory only)
    if not (dep.in_scope or other.in_scope):
        return None
    dep_ref, other_ref = dep.ref, other.ref
    same_type = snapshot.same_gpu_type(dep.gpu_type, other.gpu_type)
    # Only the autoscaler of a Deployment whose selector takes the other's pods counts them.
    autoscaled = (takes_other and snapshot.is_autoscaled(dep_ref)) or (
        taken_by_other and snapshot.is_autoscaled(other_ref)
    )
    severity: Severity = "error" if not same_type or autoscaled else "warning"
    if not explain:
        message = f"selector of {dep_ref} overlaps the selector of {other_ref}"
        return Finding(RULE, severity, dep_ref, message, (other_ref,), fixable=fixable)
    witness = overlap_witness(dep.selector, other.selector) or {}
    scalers = (snapshot.autoscalers_targeting(dep_ref) if takes_other else []) + (
        snapshot.autoscalers_targeting(other_ref) if taken_by_other else []
    )
    shared = ", ".join(f"{k}={v}" for k, v in sorted(witness.items())) or "any labels"
    why = []
    if not same_type:
        why.append(f"GPU types differ ({dep.gpu_type.label} vs {other.gpu_type.label})")
    if scalers:
        names = ", ".join(str(s.ref) for s in scalers)
        why.append(f"autoscaled by {names}, which would count the other's pods")
    for d in (dep, other):
        if d.gpu_type.unread:
            keys = ", ".join(d.gpu_type.unread)
            why.append(
                f"{d.name} requests accelerators and pins nodes by {keys}, which gpumix does "
                "not read as a GPU type: if it names the GPU model, add it to the policy's "
                "gpuNodeLabelKeys"
            )
    if takes_other:
        why.append(f"its selector matches the pod template of {other.name}")
    if taken_by_other:
        why.append(f"the selector of {other.name} matches its pod template")
    detail = "; ".join(why)
    message = (
        f"selector of {dep_ref} ({dep.selector.describe()}) overlaps the selector of "
        f"{other_ref} ({other.selector.describe()}): a pod labelled {shared} matches both"
        + (f"; {detail}" if detail else "")
        + f". Fix: add a distinct label such as {DEPLOYMENT_LABEL}: <deployment name> "
        "to the selector and the pod template of each"
    )
    return Finding(RULE, severity, dep_ref, message, (other_ref,), fixable=fixable)
