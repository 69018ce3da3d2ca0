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


def check(dep: DeploymentView, snapshot: Snapshot, *, fixable: bool = True) -> list[Finding]:
    """Findings about ``dep`` against every other Deployment in the snapshot."""
    if dep.selector_error is not None:
        return []
    findings: list[Finding] = []
    for other in snapshot.overlap_candidates(dep.selector, dep.namespace):
        if other.name == dep.name or other.selector_error is not None:
            continue
        finding = pair_finding(dep, other, snapshot, fixable=fixable)
        if finding is not None:
            findings.append(finding)
    return findings


def severity_of(a: DeploymentView, b: DeploymentView, snapshot: Snapshot) -> Severity | None:
    if not (a.in_scope or b.in_scope):
        return None
    if not a.gpu_type.same_as(b.gpu_type):
        return "error"
    if snapshot.autoscalers_targeting(a.ref) or snapshot.autoscalers_targeting(b.ref):
        return "error"
    return "warning"


def pair_finding(
    dep: DeploymentView, other: DeploymentView, snapshot: Snapshot, *, fixable: bool
) -> Finding | None:
    witness = overlap_witness(dep.selector, other.selector)
    if witness is None:
        return None
    captured = dep.selector.matches(other.template_labels) or other.selector.matches(
        dep.template_labels
    )
    if not captured and not (dep.selector.keys & other.selector.keys):
        # Selectors on unrelated keys: only a pod labelled on purpose for both would match.
        return None
    severity = severity_of(dep, other, snapshot)
    if severity is None:
        return None
    if not captured:
        severity = "warning"  # possible, not actual: no pod template is selected by both
    return Finding(
        RULE,
        severity,
        dep.ref,
        _message(dep, other, witness, snapshot),
        (other.ref,),
        fixable=fixable,
    )


def _message(
    dep: DeploymentView, other: DeploymentView, witness: dict[str, str], snapshot: Snapshot
) -> str:
    shared = ", ".join(f"{k}={v}" for k, v in sorted(witness.items())) or "any labels"
    why = []
    if not dep.gpu_type.same_as(other.gpu_type):
        why.append(f"GPU types differ ({dep.gpu_type.label} vs {other.gpu_type.label})")
    scalers = snapshot.autoscalers_targeting(dep.ref) + snapshot.autoscalers_targeting(other.ref)
    if scalers:
        names = ", ".join(str(s.ref) for s in scalers)
        why.append(f"autoscaled by {names}, which would count the other's pods")
    captured = []
    if dep.selector.matches(other.template_labels):
        captured.append(f"its selector matches the pod template of {other.name}")
    if other.selector.matches(dep.template_labels):
        captured.append(f"the selector of {other.name} matches its pod template")
    detail = "; ".join(why + captured)
    return (
        f"selector of {dep.ref} ({dep.selector.describe()}) overlaps the selector of "
        f"{other.ref} ({other.selector.describe()}): a pod labelled {shared} matches both"
        + (f"; {detail}" if detail else "")
        + f". Fix: add a distinct label such as {DEPLOYMENT_LABEL}: <deployment name> "
        "to the selector and the pod template of each"
    )
