"""Per-resource behaviour of the built-in types: defaulting, validation, conversion,
and turning a CustomResourceDefinition into a served `ResourceType`."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from . import podresources
from . import schema as schemas
from .errors import (
    StatusCause,
    field_forbidden,
    field_invalid,
    field_required,
    field_unsupported,
)
from .resources import PrinterColumn, ResourceType, ScaleSpec
from .selectors import label_selector_matches

Obj = dict[str, Any]

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
    "or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', "
    "regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
LABEL_NAME_TYPES = {"namespaces", "services"}
HPA_METRICS_ANNOTATION = "autoscaling.alpha.kubernetes.io/metrics"
HPA_CURRENT_METRICS_ANNOTATION = "autoscaling.alpha.kubernetes.io/current-metrics"
HPA_BEHAVIOR_ANNOTATION = "autoscaling.alpha.kubernetes.io/behavior"
HPA_CONDITIONS_ANNOTATION = "autoscaling.alpha.kubernetes.io/conditions"
HPA_KEY = "horizontalpodautoscalers.autoscaling"
EVENTS_KEY = "events.events.k8s.io"


# -- conversion -----------------------------------------------------------------------


def convert(rt: ResourceType, obj: Obj, version: str) -> Obj:
    """Return `obj` served at `version` (a new dict when anything changes)."""
    target = rt.api_version(version)
    if obj.get("apiVersion") == target:
        return obj
    if rt.key in ("events", EVENTS_KEY):
        return _convert_event(obj, target)
    if rt.key == HPA_KEY:
        current = str(obj.get("apiVersion", "")).rpartition("/")[2]
        if current == "v2" and version == "v1":
            return _hpa_v2_to_v1(obj)
        if current == "v1" and version == "v2":
            return _hpa_v1_to_v2(obj)
    out = dict(obj)
    out["apiVersion"] = target
    return out


# core/v1 Event field <-> events.k8s.io/v1 Event field (one storage, two shapes).
EVENT_FIELDS = (
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
)


def _convert_event(obj: Obj, target: str) -> Obj:
    current = obj.get("apiVersion")
    if current == target:
        return obj
    out = {k: v for k, v in obj.items()}
    to_group = target == "events.k8s.io/v1"
    for core, group in EVENT_FIELDS:
        src, dst = (core, group) if to_group else (group, core)
        if src in out:
            out[dst] = out.pop(src)
    out["apiVersion"] = target
    if not to_group and "source" not in out and out.get("reportingComponent"):
        out["source"] = {"component": out["reportingComponent"]}
    return out


def _is_cpu_utilization(metric: Any) -> bool:
    return (
        isinstance(metric, dict)
        and metric.get("type") == "Resource"
        and (metric.get("resource") or {}).get("name") == "cpu"
        and ((metric.get("resource") or {}).get("target") or {}).get("type") == "Utilization"
    )


def _hpa_v2_to_v1(obj: Obj) -> Obj:
    out = copy.deepcopy(obj)
    out["apiVersion"] = "autoscaling/v1"
    spec = out.setdefault("spec", {})
    annotations = dict(out["metadata"].get("annotations") or {})
    metrics = spec.pop("metrics", None) or []
    behavior = spec.pop("behavior", None)
    others = []
    for m in metrics:
        if _is_cpu_utilization(m) and "targetCPUUtilizationPercentage" not in spec:
            spec["targetCPUUtilizationPercentage"] = m["resource"]["target"].get(
                "averageUtilization"
            )
        else:
            others.append(m)
    if others:
        annotations[HPA_METRICS_ANNOTATION] = json.dumps(others)
    if behavior is not None:
        annotations[HPA_BEHAVIOR_ANNOTATION] = json.dumps(behavior)
    status = out.get("status")
    if isinstance(status, dict):
        current = status.pop("currentMetrics", None) or []
        conditions = status.pop("conditions", None)
        rest = []
        for m in current:
            res = (m or {}).get("resource") or {}
            if m.get("type") == "Resource" and res.get("name") == "cpu":
                value = (res.get("current") or {}).get("averageUtilization")
                if value is not None:
                    status["currentCPUUtilizationPercentage"] = value
            else:
                rest.append(m)
        if rest:
            annotations[HPA_CURRENT_METRICS_ANNOTATION] = json.dumps(rest)
        if conditions:
            annotations[HPA_CONDITIONS_ANNOTATION] = json.dumps(conditions)
    if annotations:
        out["metadata"]["annotations"] = annotations
    return out


def _hpa_v1_to_v2(obj: Obj) -> Obj:
    out = copy.deepcopy(obj)
    out["apiVersion"] = "autoscaling/v2"
    spec = out.setdefault("spec", {})
    meta = out["metadata"]
    annotations = dict(meta.get("annotations") or {})
    metrics: list[Any] = []
    target = spec.pop("targetCPUUtilizationPercentage", None)
    if target is not None:
        metrics.append(
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": target},
                },
            }
        )
    for name, dest in ((HPA_METRICS_ANNOTATION, "metrics"), (HPA_BEHAVIOR_ANNOTATION, "behavior")):
        raw = annotations.pop(name, None)
        if raw is None:
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            continue
        if dest == "metrics" and isinstance(value, list):
            metrics.extend(value)
        elif dest == "behavior":
            spec["behavior"] = value
    if metrics:
        spec["metrics"] = metrics
    status = out.get("status")
    if isinstance(status, dict):
        current: list[Any] = []
        cpu = status.pop("currentCPUUtilizationPercentage", None)
        if cpu is not None:
            current.append(
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "current": {"averageUtilization": cpu}},
                }
            )
        for name, dest in (
            (HPA_CURRENT_METRICS_ANNOTATION, "currentMetrics"),
            (HPA_CONDITIONS_ANNOTATION, "conditions"),
        ):
            raw = annotations.pop(name, None)
            if raw is None:
                continue
            try:
                value = json.loads(raw)
            except ValueError:
                continue
            if dest == "currentMetrics" and isinstance(value, list):
                current.extend(value)
            else:
                status[dest] = value
        if current:
            status["currentMetrics"] = current
    else:
        for name in (HPA_CURRENT_METRICS_ANNOTATION, HPA_CONDITIONS_ANNOTATION):
            annotations.pop(name, None)
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    return out


# -- defaulting (applied when a request body is decoded, before admission) ------------


def default(rt: ResourceType, version: str, obj: Obj) -> None:
    """Fill defaults in place, in the request's version, like decoding in Go does."""
    spec = obj.get("spec")
    if rt.key == "deployments.apps":
        if not isinstance(spec, dict):
            spec = obj["spec"] = {}
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        strategy = spec.setdefault("strategy", {})
        if isinstance(strategy, dict):
            strategy.setdefault("type", "RollingUpdate")
            if strategy["type"] == "RollingUpdate":
                ru = strategy.setdefault("rollingUpdate", {})
                if isinstance(ru, dict):
                    ru.setdefault("maxUnavailable", "25%")
                    ru.setdefault("maxSurge", "25%")
        template = spec.get("template")
        if isinstance(template, dict) and isinstance(template.get("spec"), dict):
            _default_pod_spec(template["spec"])
            podresources.canonicalize(template["spec"])
    elif rt.key == "pods" and isinstance(spec, dict):
        _default_pod_spec(spec)
        podresources.default_requests_from_limits(spec)
        podresources.canonicalize(spec)
    elif rt.key == HPA_KEY:
        # maxReplicas is a plain int32 in both versions: absent reads as 0.
        if not isinstance(spec, dict):
            spec = obj["spec"] = {}
        spec.setdefault("maxReplicas", 0)
        spec.setdefault("minReplicas", 1)
        if version == "v2" and not spec.get("metrics"):
            spec["metrics"] = [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 80},
                    },
                }
            ]
    elif rt.key == "services":
        if not isinstance(spec, dict):
            spec = obj["spec"] = {}
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        for port in spec.get("ports") or []:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")
                port.setdefault("targetPort", port.get("port"))
    elif rt.key in (
        "mutatingwebhookconfigurations.admissionregistration.k8s.io",
        "validatingwebhookconfigurations.admissionregistration.k8s.io",
    ):
        mutating = rt.kind.startswith("Mutating")
        for wh in obj.get("webhooks") or []:
            if not isinstance(wh, dict):
                continue
            wh.setdefault("failurePolicy", "Fail")
            wh.setdefault("matchPolicy", "Equivalent")
            wh.setdefault("namespaceSelector", {})
            wh.setdefault("objectSelector", {})
            wh.setdefault("timeoutSeconds", 10)
            if mutating:
                wh.setdefault("reinvocationPolicy", "Never")
            for rule in wh.get("rules") or []:
                if isinstance(rule, dict):
                    rule.setdefault("scope", "*")
            svc = (wh.get("clientConfig") or {}).get("service")
            if isinstance(svc, dict):
                svc.setdefault("port", 443)
    elif rt.key == "secrets":
        obj.setdefault("type", "Opaque")
    elif rt.key == "namespaces":
        if not isinstance(spec, dict):
            spec = obj["spec"] = {}
        spec.setdefault("finalizers", ["kubernetes"])


def _default_pod_spec(spec: Obj) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for c in list(spec.get("containers") or []) + list(spec.get("initContainers") or []):
        if not isinstance(c, dict):
            continue
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        c.setdefault("resources", {})
        image = str(c.get("image", ""))
        tagged = ":" in image.rsplit("/", 1)[-1] or "@" in image
        latest = image.endswith(":latest") or not tagged
        c.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
        for p in c.get("ports") or []:
            if isinstance(p, dict):
                p.setdefault("protocol", "TCP")


# -- preparation (server-owned fields) ------------------------------------------------


def prepare(rt: ResourceType, obj: Obj) -> None:
    """Set fields the server owns, on create and update (storage version)."""
    meta = obj["metadata"]
    if rt.key == "namespaces":
        labels = dict(meta.get("labels") or {})
        labels["kubernetes.io/metadata.name"] = meta["name"]
        meta["labels"] = labels
        status = obj.setdefault("status", {})
        if isinstance(status, dict) and not meta.get("deletionTimestamp"):
            status["phase"] = "Active"


# -- validation -----------------------------------------------------------------------


def validate(rt: ResourceType, obj: Obj, old: Obj | None) -> list[StatusCause]:
    """Field errors of `obj` in its storage version; `old` is set on update."""
    causes: list[StatusCause] = []
    meta = obj.get("metadata") or {}
    name = meta.get("name", "")
    if old is None:
        pattern, msg = (
            (DNS1123_LABEL, LABEL_MSG)
            if rt.key in LABEL_NAME_TYPES
            else (DNS1123_SUBDOMAIN, SUBDOMAIN_MSG)
        )
        if rt.key not in ("events", "events.events.k8s.io", "nodes") and (
            not pattern.match(name) or len(name) > 253
        ):
            causes.append(field_invalid("metadata.name", name, msg))
    for k, v in (meta.get("labels") or {}).items():
        if not isinstance(v, str) or len(v) > 63:
            causes.append(field_invalid("metadata.labels", v, "must be no more than 63 characters"))
        if not isinstance(k, str) or not k:
            causes.append(field_invalid("metadata.labels", k, "name part must be non-empty"))
    spec = obj.get("spec")
    if rt.key == "deployments.apps":
        causes += _validate_deployment(spec if isinstance(spec, dict) else {}, old)
        template = spec.get("template") if isinstance(spec, dict) else None
        if isinstance(template, dict):
            causes += podresources.validate(template.get("spec"), "spec.template.spec")
    elif rt.key == "pods":
        causes += podresources.validate(spec, "spec")
    elif rt.key == HPA_KEY:
        causes += _validate_hpa(spec if isinstance(spec, dict) else {})
    elif rt.key == "customresourcedefinitions.apiextensions.k8s.io":
        causes += _validate_crd(obj)
    elif rt.key in (
        "mutatingwebhookconfigurations.admissionregistration.k8s.io",
        "validatingwebhookconfigurations.admissionregistration.k8s.io",
    ):
        causes += _validate_webhooks(obj)
    elif rt.custom:
        version = str(obj.get("apiVersion", "")).rpartition("/")[2]
        causes += schemas.validate(obj, rt.schema(version))
    return causes


def _validate_deployment(spec: Obj, old: Obj | None) -> list[StatusCause]:
    causes: list[StatusCause] = []
    replicas = spec.get("replicas")
    if isinstance(replicas, int) and replicas < 0:
        causes.append(
            field_invalid("spec.replicas", replicas, "must be greater than or equal to 0")
        )
    selector = spec.get("selector")
    template = spec.get("template") if isinstance(spec.get("template"), dict) else {}
    labels = ((template or {}).get("metadata") or {}).get("labels") or {}
    if not isinstance(selector, dict):
        causes.append(field_required("spec.selector"))
    elif not selector.get("matchLabels") and not selector.get("matchExpressions"):
        causes.append(
            field_invalid("spec.selector", selector, "empty selector is invalid for deployment")
        )
    elif not label_selector_matches(selector, labels):
        causes.append(
            field_invalid(
                "spec.template.metadata.labels",
                labels,
                "`selector` does not match template `labels`",
            )
        )
    pod_spec = (template or {}).get("spec") if isinstance(template, dict) else None
    if not isinstance(pod_spec, dict) or not pod_spec.get("containers"):
        causes.append(field_required("spec.template.spec.containers"))
    if old is not None:
        old_sel = (old.get("spec") or {}).get("selector")
        if old_sel != selector:
            causes.append(field_invalid("spec.selector", selector, "field is immutable"))
    return causes


def _validate_hpa(spec: Obj) -> list[StatusCause]:
    causes: list[StatusCause] = []
    min_r = spec.get("minReplicas", 1)
    max_r = spec.get("maxReplicas", 0)
    if isinstance(min_r, int) and min_r < 1:
        causes.append(
            field_invalid("spec.minReplicas", min_r, "must be greater than or equal to 1")
        )
    if not isinstance(max_r, int) or max_r < 1:
        causes.append(field_required("spec.maxReplicas", "must be set and greater than 0"))
    if isinstance(max_r, int) and isinstance(min_r, int) and max_r < min_r:
        causes.append(
            field_invalid(
                "spec.maxReplicas", max_r, "must be greater than or equal to `minReplicas`"
            )
        )
    metrics = spec.get("metrics") or []
    if min_r == 0 and not any(
        isinstance(m, dict) and m.get("type") in ("Object", "External") for m in metrics
    ):
        causes.append(
            field_forbidden(
                "spec.metrics",
                "must specify at least one Object or External metric to support scaling "
                "to zero replicas",
            )
        )
    ref = spec.get("scaleTargetRef")
    if not isinstance(ref, dict):
        causes.append(field_required("spec.scaleTargetRef.kind"))
        causes.append(field_required("spec.scaleTargetRef.name"))
    else:
        for f in ("kind", "name"):
            if not ref.get(f):
                causes.append(field_required(f"spec.scaleTargetRef.{f}"))
    return causes


def _validate_webhooks(obj: Obj) -> list[StatusCause]:
    causes: list[StatusCause] = []
    seen: set[str] = set()
    for i, wh in enumerate(obj.get("webhooks") or []):
        base = f"webhooks[{i}]"
        if not isinstance(wh, dict):
            causes.append(field_invalid(base, wh, "must be an object"))
            continue
        name = wh.get("name")
        if not name:
            causes.append(field_required(f"{base}.name"))
        elif name in seen:
            causes.append(
                {
                    "reason": "FieldValueDuplicate",
                    "field": f"{base}.name",
                    "message": f'Duplicate value: "{name}"',
                }
            )
        seen.add(str(name))
        if wh.get("sideEffects") not in ("None", "NoneOnDryRun"):
            causes.append(
                field_unsupported(
                    f"{base}.sideEffects", wh.get("sideEffects"), ["None", "NoneOnDryRun"]
                )
            )
        if not wh.get("admissionReviewVersions"):
            causes.append(
                field_required(f"{base}.admissionReviewVersions", "must specify one of v1, v1beta1")
            )
        cc = wh.get("clientConfig") or {}
        if bool(cc.get("url")) == bool(cc.get("service")):
            causes.append(
                field_required(f"{base}.clientConfig", "exactly one of url or service is required")
            )
        elif cc.get("url") and not str(cc["url"]).startswith("https://"):
            causes.append(
                field_invalid(
                    f"{base}.clientConfig.url", cc["url"], "'https' is the only allowed URL scheme"
                )
            )
        if wh.get("failurePolicy") not in ("Fail", "Ignore"):
            causes.append(
                field_unsupported(
                    f"{base}.failurePolicy", wh.get("failurePolicy"), ["Fail", "Ignore"]
                )
            )
        t = wh.get("timeoutSeconds")
        if not isinstance(t, int) or not 1 <= t <= 30:
            causes.append(
                field_invalid(
                    f"{base}.timeoutSeconds",
                    t,
                    "the timeout value must be between 1 and 30 seconds",
                )
            )
    return causes


# -- CRDs -----------------------------------------------------------------------------


def _validate_crd(obj: Obj) -> list[StatusCause]:
    causes: list[StatusCause] = []
    spec = obj.get("spec") or {}
    names = spec.get("names") or {}
    plural, group = names.get("plural"), spec.get("group")
    name = (obj.get("metadata") or {}).get("name")
    if not plural:
        causes.append(field_required("spec.names.plural"))
    if not names.get("kind"):
        causes.append(field_required("spec.names.kind"))
    if not group:
        causes.append(field_required("spec.group"))
    if plural and group and name != f"{plural}.{group}":
        causes.append(
            field_invalid("metadata.name", name, 'must be spec.names.plural+"."+spec.group')
        )
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        causes.append(field_unsupported("spec.scope", spec.get("scope"), ["Cluster", "Namespaced"]))
    versions = spec.get("versions") or []
    if not versions:
        causes.append(field_required("spec.versions"))
    storage = [v for v in versions if isinstance(v, dict) and v.get("storage")]
    if versions and len(storage) != 1:
        causes.append(
            field_invalid(
                "spec.versions",
                len(storage),
                "must have exactly one version marked as storage version",
            )
        )
    return causes


def crd_resource(crd: Obj) -> ResourceType:
    spec = crd["spec"]
    names = spec["names"]
    versions = [v for v in spec.get("versions") or [] if v.get("served", True)]
    storage = next((v for v in spec["versions"] if v.get("storage")), spec["versions"][0])
    ordered = [storage["name"]] + [v["name"] for v in versions if v["name"] != storage["name"]]
    sub = storage.get("subresources") or spec.get("subresources") or {}
    scale = None
    if isinstance(sub.get("scale"), dict):
        sc = sub["scale"]
        scale = ScaleSpec(
            sc.get("specReplicasPath", ".spec.replicas"),
            sc.get("statusReplicasPath", ".status.replicas"),
            sc.get("labelSelectorPath"),
        )
    schemas_by_version = []
    columns = []
    for v in versions:
        s = (v.get("schema") or {}).get("openAPIV3Schema")
        if s is None:
            s = (spec.get("validation") or {}).get("openAPIV3Schema")
        schemas_by_version.append((v["name"], s))
        cols = tuple(
            PrinterColumn(
                c.get("name", ""),
                c.get("type", "string"),
                c.get("jsonPath", ""),
                c.get("description", ""),
                int(c.get("priority", 0)),
            )
            for c in v.get("additionalPrinterColumns") or []
        )
        columns.append((v["name"], cols))
    return ResourceType(
        group=spec["group"],
        versions=tuple(ordered),
        plural=names["plural"],
        singular=names.get("singular") or names["kind"].lower(),
        kind=names["kind"],
        namespaced=spec.get("scope", "Namespaced") == "Namespaced",
        short_names=tuple(names.get("shortNames") or ()),
        categories=tuple(names.get("categories") or ()),
        status="status" in sub,
        scale=scale,
        custom=True,
        schemas=tuple(schemas_by_version),
        columns=tuple(columns),
    )


def crd_status(crd: Obj, now: str) -> Obj:
    spec = crd.get("spec") or {}
    storage = next((v["name"] for v in spec.get("versions") or [] if v.get("storage")), None)
    old = crd.get("status") or {}
    stored = list(old.get("storedVersions") or [])
    if storage and storage not in stored:
        stored.append(storage)
    return {
        "acceptedNames": dict(spec.get("names") or {}),
        "conditions": [
            {
                "type": "NamesAccepted",
                "status": "True",
                "reason": "NoConflicts",
                "message": "no conflicts found",
                "lastTransitionTime": now,
            },
            {
                "type": "Established",
                "status": "True",
                "reason": "InitialNamesAccepted",
                "message": "the initial names have been accepted",
                "lastTransitionTime": now,
            },
        ],
        "storedVersions": stored,
    }


def prune_custom(rt: ResourceType, obj: Obj) -> Obj:
    version = str(obj.get("apiVersion", "")).rpartition("/")[2]
    s = rt.schema(version)
    if not isinstance(s, dict):
        return obj
    pruned = schemas.prune(obj, s)
    assert isinstance(pruned, dict)
    schemas.apply_defaults(pruned, s)
    return pruned
