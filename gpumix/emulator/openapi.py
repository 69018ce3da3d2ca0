"""A minimal `/openapi/v3`: enough for kubectl to see that the server validates fields.

Each group-version document lists the REST paths of its resources; PATCH, POST and PUT
carry the `fieldValidation` query parameter and the `x-kubernetes-group-version-kind`
extension, which is what kubectl checks before it leaves validation to the server.
Custom resources also get their `openAPIV3Schema` under `components.schemas`;
built-in types get an open object schema.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .resources import Registry, ResourceType

Obj = dict[str, Any]

_QUERY = [
    {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
    {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
    {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
]


def _gv_path(group: str, version: str) -> str:
    return f"api/{version}" if not group else f"apis/{group}/{version}"


def _schema_name(rt: ResourceType, version: str) -> str:
    prefix = ".".join(reversed(rt.group.split("."))) if rt.group else "io.k8s.api.core"
    return f"{prefix}.{version}.{rt.kind}"


def gv_document(registry: Registry, group: str, version: str) -> Obj | None:
    paths: Obj = {}
    schemas: Obj = {}
    for rt in registry:
        if rt.group != group or version not in rt.versions:
            continue
        gvk = {"group": rt.group, "version": version, "kind": rt.kind}
        name = _schema_name(rt, version)
        ref = {"$ref": f"#/components/schemas/{name}"}
        body = {"content": {"application/json": {"schema": ref}}}
        responses = {"200": body}
        custom = rt.schema(version)
        schema: Obj = (
            dict(custom)
            if isinstance(custom, dict)
            else {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        )
        schema["x-kubernetes-group-version-kind"] = [gvk]
        schemas[name] = schema
        base = "/" + _gv_path(group, version)
        collection = (
            f"{base}/namespaces/{{namespace}}/{rt.plural}"
            if rt.namespaced
            else f"{base}/{rt.plural}"
        )
        item = f"{collection}/{{name}}"
        ext = {"x-kubernetes-group-version-kind": gvk}
        paths[collection] = {
            "get": {**ext, "x-kubernetes-action": "list", "responses": responses},
            "post": {
                **ext,
                "x-kubernetes-action": "post",
                "parameters": _QUERY,
                "requestBody": body,
                "responses": responses,
            },
        }
        paths[item] = {
            "get": {**ext, "x-kubernetes-action": "get", "responses": responses},
            "put": {
                **ext,
                "x-kubernetes-action": "put",
                "parameters": _QUERY,
                "requestBody": body,
                "responses": responses,
            },
            "patch": {
                **ext,
                "x-kubernetes-action": "patch",
                "parameters": [
                    *_QUERY,
                    {"name": "force", "in": "query", "schema": {"type": "boolean"}},
                ],
                "requestBody": {
                    "content": {"application/merge-patch+json": {"schema": {"type": "object"}}}
                },
                "responses": responses,
            },
            "delete": {**ext, "x-kubernetes-action": "delete", "responses": responses},
        }
    if not paths:
        return None
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "unversioned"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def root_document(registry: Registry) -> Obj:
    paths: Obj = {}
    for group, versions in sorted(registry.groups().items()):
        for version in versions:
            doc = gv_document(registry, group, version)
            digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]
            gv = _gv_path(group, version)
            paths[gv] = {"serverRelativeURL": f"/openapi/v3/{gv}?hash={digest.upper()}"}
    return {"paths": paths}
