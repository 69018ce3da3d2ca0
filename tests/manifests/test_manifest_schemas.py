"""Every rendered object against the Kubernetes OpenAPI schemas, offline.

Built-in kinds and the CustomResourceDefinition are checked with kubernetes-validate's
strict schemas (unknown fields are errors) for KUBERNETES_VERSION. The schemas of
cert-manager's and prometheus-operator's CRDs are not shipped with it, and this
machine cannot download them, so those objects get the structural check in
CUSTOM_SCHEMAS below: the fields gpumix uses, with their types, and no unknown ones
at the top of ``spec``.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from manifest_objects import OVERLAYS, Obj, Rendered, key

KUBERNETES_VERSION = "1.34"

_META = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}


def _object(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _META,
            "spec": spec,
        },
        "additionalProperties": False,
    }


_STRINGS = {"type": "array", "items": {"type": "string"}, "minItems": 1}
_LABEL_SELECTOR = {
    "type": "object",
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array"},
    },
    "additionalProperties": False,
}
_RULE = {
    "type": "object",
    "required": ["expr"],
    "properties": {
        "alert": {"type": "string"},
        "record": {"type": "string"},
        "expr": {"type": "string"},
        "for": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h|d|w|y)$"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
}

CUSTOM_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("cert-manager.io/v1", "Issuer"): _object(
        "cert-manager.io/v1",
        "Issuer",
        {
            "type": "object",
            "properties": {"selfSigned": {"type": "object"}, "ca": {"type": "object"}},
            "additionalProperties": False,
            "minProperties": 1,
        },
    ),
    ("cert-manager.io/v1", "Certificate"): _object(
        "cert-manager.io/v1",
        "Certificate",
        {
            "type": "object",
            "required": ["secretName", "issuerRef", "dnsNames"],
            "properties": {
                "secretName": {"type": "string"},
                "commonName": {"type": "string", "maxLength": 64},
                "dnsNames": _STRINGS,
                "duration": {"type": "string", "pattern": "^[0-9]+h$"},
                "renewBefore": {"type": "string", "pattern": "^[0-9]+h$"},
                "privateKey": {
                    "type": "object",
                    "properties": {
                        "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                        "size": {"type": "integer"},
                        "rotationPolicy": {"enum": ["Never", "Always"]},
                    },
                    "additionalProperties": False,
                },
                "usages": _STRINGS,
                "issuerRef": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string"},
                        "kind": {"enum": ["Issuer", "ClusterIssuer"]},
                        "group": {"type": "string"},
                    },
                    "additionalProperties": False,
                },
            },
            "additionalProperties": False,
        },
    ),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _object(
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
        {
            "type": "object",
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": {
                    "type": "object",
                    "properties": {"matchNames": _STRINGS, "any": {"type": "boolean"}},
                    "additionalProperties": False,
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(s|m)$"},
                            "honorLabels": {"type": "boolean"},
                        },
                        "additionalProperties": False,
                    },
                },
            },
            "additionalProperties": False,
        },
    ),
    ("monitoring.coreos.com/v1", "PrometheusRule"): _object(
        "monitoring.coreos.com/v1",
        "PrometheusRule",
        {
            "type": "object",
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string"},
                            "interval": {"type": "string"},
                            "rules": {"type": "array", "minItems": 1, "items": _RULE},
                        },
                        "additionalProperties": False,
                    },
                },
            },
            "additionalProperties": False,
        },
    ),
}


def _validate(obj: Obj) -> None:
    custom = CUSTOM_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
    if custom is not None:
        jsonschema.validate(obj, custom)
        return
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError as exc:
        pytest.fail(f"{key(obj)}: {exc.message}; add a structural schema for it", pytrace=False)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{key(obj)}: {path}: {exc.message}", pytrace=False)


@pytest.mark.parametrize("overlay", [*OVERLAYS, "monitoring"])
def test_every_object_matches_its_schema(rendered: Rendered, overlay: str) -> None:
    assert rendered[overlay]
    for obj in rendered[overlay]:
        _validate(obj)


def test_the_strict_schemas_reject_unknown_fields(rendered: Rendered) -> None:
    """Guard for the check above: a misspelt field is caught, not ignored."""
    webhook = next(o for o in rendered["enforce"] if o["kind"] == "ValidatingWebhookConfiguration")
    broken = {**webhook, "webhooks": [{**webhook["webhooks"][0], "timeoutSecond": 5}]}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    monitor = next(o for o in rendered["monitoring"] if o["kind"] == "ServiceMonitor")
    broken = {**monitor, "spec": {**monitor["spec"], "endpoint": []}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, CUSTOM_SCHEMAS[("monitoring.coreos.com/v1", "ServiceMonitor")])
