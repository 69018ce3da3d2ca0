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

A Deployment gets one finding per severity, whatever the number of pairs: the
first pair is explained, :data:`NAMED` others at most are named and the rest
counted, and ``related`` lists them all.  So a selector such as
``model.aibrix.ai/name Exists`` in a namespace of 10,000 Deployments gives a
message of a few hundred characters, and only one pair's explanation is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gpumix.kube.objects import DeploymentView
from gpumix.kube.policy import DEPLOYMENT_LABEL
from gpumix.kube.selectors import overlap_witness
from gpumix.kube.snapshot import Snapshot
from gpumix.rules.base import Finding, Severity

RULE = "selector-overlap"
NAMED = 3
"""How many other Deployments a message names; the rest are counted."""


@dataclass(frozen=True, slots=True)
class Overlap:
    """One reported pair, seen from ``dep``: the facts the severity and the message use."""

    other: DeploymentView
    severity: Severity
    takes_other: bool
    """``dep``'s selector matches the other's pod template."""
    taken_by_other: bool
    """The other's selector matches ``dep``'s pod template."""
    same_type: bool


def check(
    dep: DeploymentView, snapshot: Snapshot, *, fixable: bool = True, explain: bool = True
) -> list[Finding]:
    """Findings about ``dep`` against every other Deployment in the snapshot.

    ``explain=False`` gives the same findings with a one-line message (the pairs
    only), for callers that act on the verdict and show no message: admission's
    mutating step."""
    return findings(dep, overlaps_of(dep, snapshot), snapshot, fixable=fixable, explain=explain)


def overlaps_of(dep: DeploymentView, snapshot: Snapshot) -> list[Overlap]:
    """Every pair the rule reports for ``dep``, by the other's name."""
    if dep.selector_error is not None:
        return []
    out: list[Overlap] = []
    keys = dep.selector.keys
    for other in snapshot.related_candidates(dep):
        if other.name == dep.name or other.selector_error is not None:
            continue
        pair = overlap(dep, other, snapshot, keys)
        if pair is not None:
            out.append(pair)
    return out


def overlap(
    dep: DeploymentView,
    other: DeploymentView,
    snapshot: Snapshot,
    keys: frozenset[str] | None = None,
) -> Overlap | None:
    """The pair ``dep``/``other`` when the rule reports it, else None.  (``keys`` is
    accepted for callers that have ``dep``'s selector keys at hand; capture decides.)"""
    # The cheap tests first: most candidates of a broad selector fail them.
    takes_other = dep.selector.matches(other.template_labels)
    taken_by_other = other.selector.matches(dep.template_labels)
    if not (takes_other or taken_by_other):
        return None  # nothing is selected twice (an overlap in theory only)
    if not (dep.in_scope or other.in_scope):
        return None
    same_type = snapshot.same_gpu_type(dep.gpu_type, other.gpu_type)
    # Only the autoscaler of a Deployment whose selector takes the other's pods counts them.
    autoscaled = (takes_other and snapshot.is_autoscaled(dep.ref)) or (
        taken_by_other and snapshot.is_autoscaled(other.ref)
    )
    severity: Severity = "error" if not same_type or autoscaled else "warning"
    return Overlap(other, severity, takes_other, taken_by_other, same_type)


def findings(
    dep: DeploymentView,
    pairs: Sequence[Overlap],
    snapshot: Snapshot,
    *,
    fixable: bool = True,
    explain: bool = True,
) -> list[Finding]:
    """One finding per severity about ``dep`` and these pairs (errors first)."""
    out: list[Finding] = []
    for severity in ("error", "warning"):
        group = [p for p in pairs if p.severity == severity]
        if not group:
            continue
        first = group[0]
        others = _others(group[1:])
        if explain:
            message = _explain(dep, first, snapshot, others)
        else:
            message = f"selector of {dep.ref} overlaps the selector of {first.other.ref}" + (
                f"; it also overlaps {others}" if others else ""
            )
        related = tuple(p.other.ref for p in group)
        out.append(Finding(RULE, first.severity, dep.ref, message, related, fixable=fixable))
    return out


def _others(rest: Sequence[Overlap]) -> str:
    """``B, C and 78 more Deployments``: at most NAMED - 1 names (the first pair is
    named in the message already), then a count."""
    if not rest:
        return ""
    named = [p.other.name for p in rest[: NAMED - 1]]
    more = len(rest) - len(named)
    if more:
        return f"{', '.join(named)} and {more} more Deployment{'s' if more > 1 else ''}"
    if len(named) == 1:
        return named[0]
    return f"{', '.join(named[:-1])} and {named[-1]}"


def _explain(dep: DeploymentView, pair: Overlap, snapshot: Snapshot, others: str) -> str:
    other = pair.other
    dep_ref, other_ref = dep.ref, other.ref
    # The witness is built only here, for the one pair a message explains.
    witness = overlap_witness(dep.selector, other.selector) or {}
    scalers = (snapshot.autoscalers_targeting(dep_ref) if pair.takes_other else []) + (
        snapshot.autoscalers_targeting(other_ref) if pair.taken_by_other else []
    )
    shared = ", ".join(f"{k}={v}" for k, v in sorted(witness.items())) or "any labels"
    why = []
    if not pair.same_type:
        why.append(f"GPU types differ ({dep.gpu_type.label} vs {other.gpu_type.label})")
    if scalers:
        names = ", ".join(str(s.ref) for s in scalers[:NAMED])
        if len(scalers) > NAMED:
            names += f" and {len(scalers) - NAMED} more"
        why.append(f"autoscaled by {names}, which would count the other's pods")
    for d in (dep, other):
        if d.gpu_type.unread:
            keys = ", ".join(d.gpu_type.unread)
            why.append(
                f"{d.name} requests accelerators and pins nodes by {keys}, which gpumix does "
                "not read as a GPU type: if it names the GPU model, add it to the policy's "
                "gpuNodeLabelKeys"
            )
    if pair.takes_other:
        why.append(f"its selector matches the pod template of {other.name}")
    if pair.taken_by_other:
        why.append(f"the selector of {other.name} matches its pod template")
    detail = "; ".join(why)
    return (
        f"selector of {dep_ref} ({_bounded(dep.selector.describe())}) overlaps the selector of "
        f"{other_ref} ({_bounded(other.selector.describe())}): a pod labelled {_bounded(shared)} "
        "matches both"
        + (f"; {detail}" if detail else "")
        + (f". It also overlaps the selectors of {others}" if others else "")
        + f". Fix: add a distinct label such as {DEPLOYMENT_LABEL}: <deployment name> "
        "to the selector and the pod template of each"
    )


def _bounded(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
