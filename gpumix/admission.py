"""The admission decision, pure: ``review(request, snapshot, policy, phase) -> Verdict``.

Defaulting (``mutate``) and validation (``validate``) are separate steps, as in
Kubernetes: the mutating webhook fixes what it provably can (in ``enforce``
mode), and the validating webhook judges the final object.  The AdmissionReview
wire format (checking a body into an ``AdmissionRequest``, the response) is
``gpumix.webhook.wire``; the rules are ``gpumix.rules``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, TypedDict

import jsonpatch

from gpumix.kube.fields import as_mapping, is_mapping
from gpumix.kube.objects import (
    AutoscalerView,
    DeploymentView,
    ObjectRef,
    UnreadableObject,
    View,
    autoscaler_info,
    read_view,
    view_of,
)
from gpumix.kube.policy import DEPLOYMENT_LABEL, GPU_TYPE_LABEL, MODE_LABEL, MODES, Mode, Policy
from gpumix.kube.scope import judged, may_mutate, selector_labels, template_labels
from gpumix.kube.snapshot import Snapshot
from gpumix.rules import (
    max_replicas_above_ceiling,
    missing_max_replicas,
    model_selector,
    selector_immutable,
    selector_overlap,
    unreadable_field,
)
from gpumix.rules.base import Finding
from gpumix.rules.engine import evaluate
from gpumix.rules.fixes import isolate_deployment, restore_labels, set_ceiling

Phase = Literal["mutate", "validate"]
Shape = Literal["allowed", "denied", "patched", "errored"]


class GroupVersionKind(TypedDict):
    group: str
    version: str
    kind: str


class AdmissionRequest(TypedDict, total=False):
    uid: str
    kind: GroupVersionKind
    resource: dict[str, str]
    subResource: str
    name: str
    namespace: str
    operation: str
    userInfo: dict[str, Any]
    object: dict[str, Any]
    oldObject: dict[str, Any] | None
    dryRun: bool
    options: dict[str, Any] | None


@dataclass(frozen=True)
class Verdict:
    """One of four shapes: allowed, denied(reason), patched(patch), errored(code, message)."""

    shape: Shape
    message: str = ""
    code: int = 200
    patch: tuple[dict[str, Any], ...] = ()
    warnings: tuple[str, ...] = ()
    findings: tuple[Finding, ...] = ()
    mode: Mode | None = None

    @property
    def allowed(self) -> bool:
        return self.shape in ("allowed", "patched")


def _object_of(request: AdmissionRequest) -> dict[str, Any]:
    """The object with the request's kind and namespace filled in (they may be absent)."""
    obj = dict(request.get("object") or {})
    gvk = request["kind"]
    if not obj.get("apiVersion"):
        obj["apiVersion"] = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
    if not obj.get("kind"):
        obj["kind"] = gvk["kind"]
    metadata = dict(as_mapping(obj.get("metadata")))
    if request.get("namespace") and not metadata.get("namespace"):
        metadata["namespace"] = request["namespace"]
    if request.get("name") and not metadata.get("name"):
        metadata["name"] = request["name"]
    obj["metadata"] = metadata
    return obj


INVALID_MODE_RULE = "invalid-mode-label"


def mode_for(namespace: str, snapshot: Snapshot, policy: Policy) -> Mode:
    """The namespace's ``gpumix.io/mode`` label when it is a mode, else the policy's."""
    ns = snapshot.namespace(namespace)
    return ns.mode if ns is not None and ns.mode is not None else policy.mode


CACHE_RULE = "cluster-view-not-current"
"""The finding of a decision refused because the cluster view is not current."""


def invalid_mode(namespace: str, snapshot: Snapshot, policy: Policy) -> Finding | None:
    """A warning when the namespace's ``gpumix.io/mode`` label is not a mode: it is
    ignored and the policy's mode applies (counted as the finding's metric)."""
    ns = snapshot.namespace(namespace)
    if ns is None or ns.invalid_mode is None:
        return None
    return Finding(
        INVALID_MODE_RULE,
        "warning",
        ObjectRef("Namespace", "", namespace),
        f"namespace {namespace} has the label {MODE_LABEL}={ns.invalid_mode!r}, which is not "
        f"one of {', '.join(MODES)}; it is ignored and the policy's mode ({policy.mode}) "
        f"applies. Fix: kubectl label namespace {namespace} {MODE_LABEL}=<{'|'.join(MODES)}> "
        "--overwrite",
    )


def review(
    request: AdmissionRequest,
    snapshot: Snapshot,
    policy: Policy,
    phase: Phase,
    *,
    current: bool = True,
) -> Verdict:
    """Decide one admission request.  Never raises for a well-formed request.

    ``current`` says whether ``snapshot`` is known to be current (the webhook's cache is
    synced).  When it is not, the validating step does not judge overlaps on it: see
    ``_not_current``."""
    if request.get("subResource") or request.get("operation") not in ("CREATE", "UPDATE"):
        return Verdict("allowed")
    # The rule the webhook configurations' matchConditions apply in the API server: a
    # Deployment that cannot be in scope, before or after, is not judged here either.
    group = request["kind"]["group"]
    if not judged(group, request.get("object"), request.get("oldObject"), policy):
        return Verdict("allowed")
    # The mutating webhook's second match condition: a write the mutating step cannot
    # change (an isolated Deployment, an autoscaler with a ceiling) is allowed as it is.
    if phase == "mutate" and not may_mutate(
        group, request.get("operation", ""), request.get("object"), request.get("oldObject")
    ):
        return Verdict("allowed")
    obj = _object_of(request)
    try:
        view = read_view(obj, policy)
    except UnreadableObject as exc:
        return _unreadable_object(exc, obj, snapshot, policy, phase)
    if not isinstance(view, (DeploymentView, AutoscalerView)):
        return Verdict("allowed")
    if view.namespace in policy.exempt_namespaces:
        return Verdict("allowed", message=f"namespace {view.namespace} is exempt")
    mode = mode_for(view.namespace, snapshot, policy)
    old_obj = request.get("oldObject")
    # Each object of the request is turned into a view once, and only where it is used.
    if phase == "mutate":
        if isinstance(view, DeploymentView) and old_obj:
            # In every mode: the labels were added when the selector could still change,
            # and dropping them now is a change the API server refuses.
            verdict = _keep_isolation(obj, old_obj, mode)
            old_view = _old_view(old_obj, policy)
            return _warn_selector_change(verdict, obj, old_obj, view, old_view)
        return _mutate(obj, view, snapshot, policy, mode, request.get("operation", ""))
    old_view = _old_view(old_obj, policy)
    if not current and isinstance(view, DeploymentView):
        stale = _not_current(view, old_view, mode)
        if stale is not None:
            return stale
    immutable: list[Finding] = []
    if isinstance(view, DeploymentView) and isinstance(old_view, DeploymentView) and old_obj:
        immutable = selector_immutable.check(
            old_view,
            view,
            old_selector=as_mapping(old_obj.get("spec")).get("selector"),
            new_selector=as_mapping(obj.get("spec")).get("selector"),
        )
    verdict = _validate(view, old_view, immutable, snapshot, policy, mode)
    bad_mode = invalid_mode(view.namespace, snapshot, policy)
    if bad_mode is None:
        return verdict
    return Verdict(
        verdict.shape,
        verdict.message,
        verdict.code,
        verdict.patch,
        (f"{bad_mode.rule}: {bad_mode.message}", *verdict.warnings),
        (bad_mode, *verdict.findings),
        verdict.mode,
    )


def _old_view(old_obj: Mapping[str, Any] | None, policy: Policy) -> View | None:
    """The view of the object before an UPDATE; None when absent or unreadable (the
    update is then judged as if the object were new)."""
    if not old_obj:
        return None
    try:
        return read_view(old_obj, policy)
    except UnreadableObject:
        return None


def _unreadable_object(
    exc: UnreadableObject,
    obj: Mapping[str, Any],
    snapshot: Snapshot,
    policy: Policy,
    phase: Phase,
) -> Verdict:
    """An object of a kind the rules judge that cannot be read at all: the mode
    decides, as for any error finding (enforce: denied; warn: a warning; audit: a
    metric).  Any other kind is allowed."""
    kind, raw_version = obj.get("kind"), obj.get("apiVersion")
    api_version = raw_version if isinstance(raw_version, str) else ""
    reviewed = (kind == "Deployment" and api_version.startswith("apps/")) or (
        isinstance(kind, str) and autoscaler_info(api_version, kind) is not None
    )
    namespace = exc.ref.namespace
    if not reviewed:
        return Verdict("allowed")
    if namespace in policy.exempt_namespaces:
        return Verdict("allowed", message=f"namespace {namespace} is exempt")
    mode = mode_for(namespace, snapshot, policy)
    finding = Finding(
        unreadable_field.RULE,
        "error",
        exc.ref,
        f"{exc}. gpumix cannot judge an object it cannot read. Fix: check the object's "
        "fields (nesting, types)",
    )
    if phase == "mutate":
        return Verdict("allowed", findings=(finding,), mode=mode)
    return _verdict([finding], snapshot, mode)


# The dicts each fix writes to.  (``_child`` in gpumix.rules.fixes writes into a
# parent only to replace a missing child, which then is in a copied parent.)
_ISOLATION_PATHS = (("spec", "selector", "matchLabels"), ("spec", "template", "metadata", "labels"))
_CEILING_PATHS = (("spec",),)


def _copy_for_fix(obj: dict[str, Any], paths: tuple[tuple[str, ...], ...]) -> dict[str, Any]:
    """A copy of ``obj`` to fix: the dicts along ``paths`` (the only ones the fix writes
    to) are new, every other subtree is shared with ``obj``, unchanged.  Copying the
    whole object would cost more than the review itself (``metadata.managedFields``
    alone can be larger than the rest)."""
    fixed = dict(obj)
    fresh = {id(fixed)}
    for path in paths:
        node = fixed
        for key in path:
            child = node.get(key)
            if not isinstance(child, dict):
                break  # the fix creates it, in a dict that is already a copy
            if id(child) not in fresh:
                child = dict(child)
                node[key] = child
                fresh.add(id(child))
            node = child
    return fixed


_ABSENT: Any = object()


def _derived_patch(obj: Mapping[str, Any], fixed: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The JSONPatch from ``obj`` to its fixed copy (``_copy_for_fix``).

    Subtrees the fix did not copy are the very same objects in both, so they cannot
    differ: only the dicts on the way to a change are walked.  The operations are the
    ones ``jsonpatch.make_patch(obj, fixed)`` gives (``add``, ``replace``, ``remove``;
    a property test holds the two equal), in a fixed order (the fixed copy's keys, then
    the removed ones), for a few percent of its cost (``bench_webhook.py --in-process``:
    2.6 µs per fix against make_patch's 40 µs, docs/benchmarks.md).
    """
    ops: list[dict[str, Any]] = []
    _diff(obj, fixed, "", ops)
    return ops


def _diff(
    src: Mapping[str, Any], dst: Mapping[str, Any], prefix: str, ops: list[dict[str, Any]]
) -> None:
    for key, after in dst.items():
        before = src.get(key, _ABSENT)
        if before is after:
            continue
        path = f"{prefix}/{_pointer_token(key)}"
        if before is _ABSENT:
            ops.append({"op": "add", "path": path, "value": after})
        elif is_mapping(before) and is_mapping(after):
            _diff(before, after, path, ops)
        elif before != after:
            ops.append({"op": "replace", "path": path, "value": after})
    for key in src:
        if key not in dst:
            ops.append({"op": "remove", "path": f"{prefix}/{_pointer_token(key)}"})


def _pointer_token(key: object) -> str:
    """One reference token of a JSON Pointer (RFC 6901): ``~`` and ``/`` escaped."""
    token = str(key)
    return token.replace("~", "~0").replace("/", "~1") if "~" in token or "/" in token else token


def _mutate(
    obj: dict[str, Any],
    view: View,
    snapshot: Snapshot,
    policy: Policy,
    mode: Mode,
    operation: str,
) -> Verdict:
    if mode != "enforce":
        return Verdict("allowed", mode=mode)
    applied: list[Finding] = []
    if isinstance(view, DeploymentView):
        if operation != "CREATE":
            return Verdict("allowed", mode=mode)  # a live selector is immutable: never fix it
        findings = _overlap_errors(view, snapshot)
        # The first of a model group is isolated too, while its selector can still
        # change: otherwise the next one of the group cannot be fixed (model_selector).
        first = [] if findings else model_selector.check(view, policy)
        if not findings and not first:
            return Verdict("allowed", mode=mode)
        fixed = _copy_for_fix(obj, _ISOLATION_PATHS)
        isolate_deployment(fixed, view.gpu_type)
        fixed_view = view_of(fixed, policy)
        assert isinstance(fixed_view, DeploymentView)
        if findings and _overlap_errors(fixed_view, snapshot):
            # The fix does not remove the overlap (an existing Deployment's selector is
            # the broad one): leave the object as it is; validation denies and explains.
            return Verdict("allowed", findings=tuple(findings), mode=mode)
        applied = findings or first
    elif isinstance(view, AutoscalerView):
        applied = missing_max_replicas.check(view, snapshot, policy)
        if not applied:
            return Verdict("allowed", mode=mode)
        fixed = _copy_for_fix(obj, _CEILING_PATHS)
        set_ceiling(
            fixed, view.ceiling_field, missing_max_replicas.default_ceiling(view, snapshot, policy)
        )
    else:
        return Verdict("allowed", mode=mode)
    patch = _derived_patch(obj, fixed)
    if not patch:
        return Verdict("allowed", mode=mode)
    notes = tuple(
        dict.fromkeys(
            f"gpumix fixed {f.rule} on {f.subject}"
            + (f": {f.message}" if f.severity == "warning" else "")
            for f in applied
        )
    )
    return Verdict(
        "patched", patch=tuple(patch), warnings=notes, findings=tuple(applied), mode=mode
    )


def _overlap_errors(view: DeploymentView, snapshot: Snapshot) -> list[Finding]:
    """The overlaps a fix must remove (messages are not built: the mutating step
    shows none, validation explains)."""
    return [
        f for f in selector_overlap.check(view, snapshot, explain=False) if f.severity == "error"
    ]


def _keep_isolation(obj: dict[str, Any], old_obj: Mapping[str, Any], mode: Mode) -> Verdict:
    """On UPDATE, put back the labels an earlier fix added and the new object lacks.

    A re-apply of the unfixed manifest (``kubectl apply --server-side``, a GitOps
    sync) would otherwise drop ``gpumix.io/deployment`` from the live selector, which
    the API server refuses as a selector change. Restoring it keeps re-applies
    idempotent; nothing else is touched.
    """
    old_selector, old_labels = selector_labels(old_obj), template_labels(old_obj)
    selector, labels = selector_labels(obj), template_labels(obj)
    missing_sel = {
        k: old_selector[k] for k in (DEPLOYMENT_LABEL,) if k in old_selector and k not in selector
    }
    missing_tpl = {
        k: old_labels[k]
        for k in (DEPLOYMENT_LABEL, GPU_TYPE_LABEL)
        if k in old_labels and k not in labels and (k != DEPLOYMENT_LABEL or missing_sel)
    }
    if not missing_sel and not missing_tpl:
        return Verdict("allowed", mode=mode)
    fixed = _copy_for_fix(obj, _ISOLATION_PATHS)
    restore_labels(fixed, selector=missing_sel, template=missing_tpl)
    patch = _derived_patch(obj, fixed)
    names = ", ".join(sorted({*missing_sel, *missing_tpl}))
    return Verdict(
        "patched",
        patch=tuple(patch),
        warnings=(f"gpumix kept {names} set by an earlier fix (a selector is immutable)",),
        mode=mode,
    )


def _warn_selector_change(
    verdict: Verdict,
    obj: dict[str, Any],
    old_obj: Mapping[str, Any],
    view: DeploymentView,
    old_view: View | None,
) -> Verdict:
    """kube-apiserver refuses a selector change in its own validation, which runs
    before validating webhooks; a warning from the mutating step still reaches the
    user with the API's error, and says how to recreate the Deployment."""
    fixed = jsonpatch.apply_patch(obj, list(verdict.patch)) if verdict.patch else obj
    if not isinstance(old_view, DeploymentView):
        return verdict
    findings = selector_immutable.check(
        old_view,
        view,
        old_selector=as_mapping(old_obj.get("spec")).get("selector"),
        new_selector=as_mapping(fixed.get("spec")).get("selector"),
    )
    if not findings:
        return verdict
    notes = tuple(f"{f.rule}: {f.message}" for f in findings)
    return Verdict(
        verdict.shape,
        verdict.message,
        verdict.code,
        verdict.patch,
        verdict.warnings + notes,
        verdict.findings,
        verdict.mode,
    )


def ceiling_judged(new: AutoscalerView, old: View | None) -> bool:
    """Whether admission judges the ceiling: on CREATE, and on an UPDATE that sets or
    raises it or points the autoscaler at another target. A drain, a cordon or a
    scale-in of the pool never turns an unchanged re-apply into a denial."""
    if not isinstance(old, AutoscalerView):
        return True
    if new.target != old.target:
        return True
    if new.ceiling is None:
        return False
    return old.ceiling is None or new.ceiling > old.ceiling


def _validate(
    view: DeploymentView | AutoscalerView,
    old_view: View | None,
    immutable: list[Finding],
    snapshot: Snapshot,
    policy: Policy,
    mode: Mode,
) -> Verdict:
    update = isinstance(view, DeploymentView) and isinstance(old_view, DeploymentView)
    findings = evaluate(view, snapshot, policy, overlaps=not update)
    if isinstance(view, AutoscalerView) and not ceiling_judged(view, old_view):
        findings = [f for f in findings if f.rule != max_replicas_above_ceiling.RULE]
    if isinstance(view, DeploymentView) and isinstance(old_view, DeploymentView):
        # An UPDATE is denied for overlaps it creates, not for ones that were already there.
        # (Same pairs at the same or a lower severity; an update that raises a pair to an
        # error, e.g. by re-pinning the GPU type, is judged as new.)
        earlier = selector_overlap.overlaps_of(old_view, snapshot)
        before = {(p.other.ref, p.severity) for p in earlier}
        pairs = selector_overlap.overlaps_of(view, snapshot)
        new = [p for p in pairs if (p.other.ref, p.severity) not in before]
        kept = [p for p in pairs if (p.other.ref, p.severity) in before]
        findings = (
            immutable
            + findings
            + selector_overlap.findings(view, new, snapshot)
            + [_as_warning(f) for f in selector_overlap.findings(view, kept, snapshot)]
        )
    return _verdict(findings, snapshot, mode)


def _verdict(findings: list[Finding], snapshot: Snapshot, mode: Mode) -> Verdict:
    """What the mode makes of these findings: denied (enforce, with errors), allowed
    with warnings (warn), or allowed and only recorded (audit)."""
    errors = [f for f in findings if f.severity == "error"]
    # Each finding once (dict keeps the first of equal texts, in order).
    warnings = tuple(
        dict.fromkeys(f"{f.rule}: {f.message}" for f in findings if f.severity == "warning")
    )
    if mode == "audit":
        return Verdict("allowed", findings=tuple(findings), mode=mode)
    if mode == "warn" or not errors:
        extra = tuple(f"{f.rule}: {f.message}" for f in errors)
        return Verdict("allowed", warnings=extra + warnings, findings=tuple(findings), mode=mode)
    message = " | ".join(f"[{f.rule}] {f.message}" for f in errors)
    broad = sorted(
        {
            str(r)
            for f in errors
            if f.rule == selector_overlap.RULE
            for r in f.related
            if not _isolated(snapshot.deployment(r))
        }
    )
    if broad:
        named = ", ".join(broad[: selector_overlap.NAMED])
        if len(broad) > selector_overlap.NAMED:
            named += f" and {len(broad) - selector_overlap.NAMED} more"
        message += (
            f" | {named} already exist(s) with a broad selector, so fixing this "
            "object alone cannot remove the overlap. A Deployment's selector is immutable: "
            "recreate the existing one(s) with a distinct selector label (run "
            "`gpumix check --fix` on the manifests to see the change), then apply this again"
        )
    return Verdict(
        "denied", message=message, code=403, warnings=warnings, findings=tuple(findings), mode=mode
    )


def _not_current(view: DeploymentView, old_view: View | None, mode: Mode) -> Verdict | None:
    """The verdict for a Deployment while the cluster view is not current, or None when
    the view does not matter for it.

    Overlaps are judged against the other Deployments of the namespace, and a view of
    unknown age can miss one created a moment ago (right after an API-server restart,
    a ``410 Gone``, an outage).  So in ``enforce`` mode an in-scope Deployment is
    refused (code 503: retry shortly) until the view is current again, unless it is an
    UPDATE that changes nothing overlaps depend on (an image bump, a replica count),
    which cannot create an overlap.  ``warn`` mode allows with a warning, ``audit``
    silently (the API server's retry or the controller's audit catches up)."""
    if not view.in_scope or mode == "audit":
        return None
    if isinstance(old_view, DeploymentView) and replace(old_view, replicas=None) == replace(
        view, replicas=None
    ):
        return None
    message = (
        "gpumix's view of the cluster is not current (its watch of the API server is "
        "reconnecting), so overlaps with other Deployments cannot be judged; retry in a "
        "few seconds"
    )
    finding = Finding(CACHE_RULE, "error", view.ref, message)
    if mode == "warn":
        return Verdict(
            "allowed", warnings=(f"{CACHE_RULE}: {message}",), findings=(finding,), mode=mode
        )
    return Verdict("denied", message=message, code=503, findings=(finding,), mode=mode)


def _isolated(dep: DeploymentView | None) -> bool:
    return dep is not None and any(r.key == DEPLOYMENT_LABEL for r in dep.selector.requirements)


def _as_warning(f: Finding) -> Finding:
    return Finding(
        f.rule,
        "warning",
        f.subject,
        f"(already present before this update) {f.message}",
        f.related,
        f.fixable,
    )


def errored(message: str, code: int = 400) -> Verdict:
    return Verdict("errored", message=message, code=code)


__all__ = [
    "CACHE_RULE",
    "INVALID_MODE_RULE",
    "AdmissionRequest",
    "GroupVersionKind",
    "Phase",
    "Verdict",
    "ceiling_judged",
    "errored",
    "invalid_mode",
    "mode_for",
    "review",
]
