"""Go-struct shapes of the built-in types: what JSON decoding would refuse.

kube-apiserver decodes a body into typed Go structs, so `"spec": 1` or
`"replicas": "two"` is a 400 before anything else happens. This module checks the
fields the emulator reads; unknown fields are left alone.
"""

from __future__ import annotations

from typing import Any

from .errors import bad_request

Shape = Any  # a type, a tuple of types, a dict of field shapes, or a one-element list

STR_MAP: Shape = ("map", str)
SELECTOR: Shape = {
    "matchLabels": STR_MAP,
    "matchExpressions": [{"key": str, "operator": str, "values": [str]}],
}
META: Shape = {
    "name": str,
    "generateName": str,
    "namespace": str,
    "resourceVersion": str,
    "uid": str,
    "labels": STR_MAP,
    "annotations": STR_MAP,
    "finalizers": [str],
    "ownerReferences": [{"apiVersion": str, "kind": str, "name": str, "uid": str}],
    "generation": int,
}
CONTAINER: Shape = {
    "name": str,
    "image": str,
    "ports": [{"containerPort": int}],
    "env": [{"name": str}],
}
POD_SPEC: Shape = {
    "containers": [CONTAINER],
    "initContainers": [CONTAINER],
    "nodeSelector": STR_MAP,
}
TEMPLATE: Shape = {"metadata": META, "spec": POD_SPEC}
RULE: Shape = {
    "apiGroups": [str],
    "apiVersions": [str],
    "operations": [str],
    "resources": [str],
    "scope": str,
}
WEBHOOK: Shape = {
    "name": str,
    "rules": [RULE],
    "namespaceSelector": SELECTOR,
    "objectSelector": SELECTOR,
    "failurePolicy": str,
    "matchPolicy": str,
    "sideEffects": str,
    "timeoutSeconds": int,
    "reinvocationPolicy": str,
    "admissionReviewVersions": [str],
    "clientConfig": {
        "url": str,
        "caBundle": str,
        "service": {"namespace": str, "name": str, "path": str, "port": int},
    },
}
CRD_VERSION: Shape = {
    "name": str,
    "served": bool,
    "storage": bool,
    "schema": {"openAPIV3Schema": dict},
    "subresources": {
        "status": dict,
        "scale": {"specReplicasPath": str, "statusReplicasPath": str, "labelSelectorPath": str},
    },
    "additionalPrinterColumns": [{"name": str, "type": str, "jsonPath": str, "priority": int}],
}

SPECS: dict[str, Shape] = {
    "deployments.apps": {
        "spec": {"replicas": int, "selector": SELECTOR, "template": TEMPLATE, "strategy": dict},
        "status": dict,
    },
    "pods": {"spec": POD_SPEC, "status": dict},
    "horizontalpodautoscalers.autoscaling": {
        "spec": {
            "minReplicas": int,
            "maxReplicas": int,
            "targetCPUUtilizationPercentage": int,
            "scaleTargetRef": {"kind": str, "name": str, "apiVersion": str},
            "metrics": [dict],
            "behavior": dict,
        },
        "status": dict,
    },
    "mutatingwebhookconfigurations.admissionregistration.k8s.io": {"webhooks": [WEBHOOK]},
    "validatingwebhookconfigurations.admissionregistration.k8s.io": {"webhooks": [WEBHOOK]},
    "customresourcedefinitions.apiextensions.k8s.io": {
        "spec": {
            "group": str,
            "scope": str,
            "versions": [CRD_VERSION],
            "names": {
                "plural": str,
                "singular": str,
                "kind": str,
                "listKind": str,
                "shortNames": [str],
                "categories": [str],
            },
        },
        "status": dict,
    },
    "namespaces": {"spec": {"finalizers": [str]}, "status": dict},
    "services": {
        "spec": {"type": str, "ports": [{"port": int}], "selector": STR_MAP},
        "status": dict,
    },
    "nodes": {"spec": dict, "status": dict},
    "configmaps": {"data": STR_MAP, "binaryData": STR_MAP},
    "secrets": {"data": STR_MAP, "stringData": STR_MAP, "type": str},
    "leases": {
        "spec": {"holderIdentity": str, "leaseDurationSeconds": int, "leaseTransitions": int}
    },
    "events": {"involvedObject": dict, "reason": str, "message": str, "type": str},
    "events.events.k8s.io": {"regarding": dict, "reason": str, "note": str, "type": str},
    "serviceaccounts": {},
}
SCALE: Shape = {"metadata": META, "spec": {"replicas": int}, "status": dict}

_NAMES = {str: "string", int: "int32", bool: "bool", dict: "object", list: "array"}


def check(key: str, obj: Any, custom: bool) -> None:
    """Raise a 400 when `obj` could not be decoded into the type's Go struct."""
    shape: dict[str, Any] = {"metadata": META, "apiVersion": str, "kind": str}
    if not custom:
        shape.update(SPECS.get(key, {"spec": dict, "status": dict}))
    _walk(obj, shape, "", key)


def check_scale(obj: Any) -> None:
    _walk(obj, dict(SCALE, apiVersion=str, kind=str), "", "Scale")


def _fail(path: str, expected: str, value: Any, what: str) -> None:
    got = {
        bool: "bool",
        int: "number",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), "null")
    raise bad_request(
        f"{what} in version is invalid: json: cannot unmarshal {got} into Go "
        f"struct field {path or '<root>'} of type {expected}"
    )


def _walk(value: Any, shape: Shape, path: str, what: str) -> None:
    if value is None:
        return
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            _fail(path, "object", value, what)
        for k, sub in shape.items():
            if k in value:
                _walk(value[k], sub, f"{path}.{k}" if path else k, what)
    elif isinstance(shape, list):
        if not isinstance(value, list):
            _fail(path, "array", value, what)
        for i, item in enumerate(value):
            _walk(item, shape[0], f"{path}[{i}]", what)
    elif isinstance(shape, tuple) and shape and shape[0] == "map":
        if not isinstance(value, dict):
            _fail(path, "map[string]string", value, what)
        for k, v in value.items():
            if not isinstance(v, shape[1]):
                _fail(f"{path}.{k}", "string", v, what)
    elif shape is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(path, "int32", value, what)
    elif shape is bool:
        if not isinstance(value, bool):
            _fail(path, "bool", value, what)
    elif isinstance(shape, type) and not isinstance(value, shape):
        _fail(path, _NAMES.get(shape, shape.__name__), value, what)
