"""Rule ``selector-overlap``: two Deployments in a namespace select overlapping pods.

Two selectors overlap when some label set satisfies both (exact test).  Among
overlapping pairs with at least one in-scope Deployment:

- error, when one selector captures the other's pod template (it selects the
  other's pods today) and their GPU types differ or either is the target of an
  autoscaler (its autoscaler would count the other's pods);
- warning, for any other captured pair, and for a pair that shares a selector
  key but captures nothing (a pod could be labelled for both);
- nothing, for selectors on unrelated keys that capture nothing (``app: web`` vs
  ``model: llama``): any two such selectors "overlap" in theory, and flagging
  them would drown the real findings.

Two out-of-scope Deployments (ordinary CPU apps) are never flagged.
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
    witness = overlap_witness(dep.selector, other.selector)
    if witness is None:
        return None
    # Each fact is computed once here and handed to the message (a hot path: admission).
    takes_other = dep.selector.matches(other.template_labels)
    taken_by_other = other.selector.matches(dep.template_labels)
    captured = takes_other or taken_by_other
    if not captured and not (dep.selector.keys & other.selector.keys):
        # Selectors on unrelated keys: only a pod labelled on purpose for both would match.
        return None
    if not (dep.in_scope or other.in_scope):
        return None
    dep_ref, other_ref = dep.ref, other.ref
    same_type = dep.gpu_type.same_as(other.gpu_type)
    autoscaled = snapshot.is_autoscaled(dep_ref) or snapshot.is_autoscaled(other_ref)
    # An error when one captures the other's pods and the GPU types differ or either is
    # autoscaled (a scaler counts the other's pods); two Deployments of one type without
    # autoscalers only warn, and so does a pair where no pod template is selected by both
    # (possible, not actual).
    severity: Severity = "error" if captured and (not same_type or autoscaled) else "warning"
    if not explain:
        message = f"selector of {dep_ref} overlaps the selector of {other_ref}"
        return Finding(RULE, severity, dep_ref, message, (other_ref,), fixable=fixable)
    scalers = snapshot.autoscalers_targeting(dep_ref) + snapshot.autoscalers_targeting(other_ref)
    shared = ", ".join(f"{k}={v}" for k, v in sorted(witness.items())) or "any labels"
    why = []
    if not same_type:
        why.append(f"GPU types differ ({dep.gpu_type.label} vs {other.gpu_type.label})")
    if scalers:
        names = ", ".join(str(s.ref) for s in scalers)
        why.append(f"autoscaled by {names}, which would count the other's pods")
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
