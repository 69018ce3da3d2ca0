"""Structural-schema handling for custom resources: pruning, defaulting and basic
validation.

Covers `type`, `properties`, `required`, `items`, `additionalProperties`, `enum`,
`minimum`/`maximum` (with `exclusive*`), `minLength`/`maxLength`, `minItems`/`maxItems`,
`pattern`, `nullable`, `x-kubernetes-preserve-unknown-fields`,
`x-kubernetes-int-or-string` and `x-kubernetes-embedded-resource`. Not covered: CEL
rules (`x-kubernetes-validations`), `format`, `oneOf`/`anyOf`/`allOf`/`not`.
`default` is applied as kube-apiserver does: to absent fields (and `null` where not
`nullable`) of objects that are present.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from .errors import StatusCause, field_invalid, field_required, field_unsupported

_META_KEYS = ("apiVersion", "kind", "metadata")


def prune(obj: Any, schema: dict[str, Any] | None, root: bool = True) -> Any:
    """Drop fields the schema does not know (what kube-apiserver does for structural CRDs)."""
    if not isinstance(schema, dict):
        return obj
    if isinstance(obj, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields") and "properties" not in schema:
            return obj
        props = schema.get("properties")
        addl = schema.get("additionalProperties")
        keep_unknown = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        embedded = bool(schema.get("x-kubernetes-embedded-resource"))
        out: dict[str, Any] = {}
        for k, v in obj.items():
            if root and k in _META_KEYS:
                out[k] = v
            elif isinstance(props, dict) and k in props:
                out[k] = prune(v, props[k], False)
            elif isinstance(addl, dict):
                out[k] = prune(v, addl, False)
            elif addl is True or keep_unknown or (embedded and k in _META_KEYS):
                out[k] = v
        return out
    if isinstance(obj, list) and isinstance(schema.get("items"), dict):
        return [prune(v, schema["items"], False) for v in obj]
    return obj


def apply_defaults(obj: Any, schema: dict[str, Any] | None) -> None:
    """Fill `default`s in place: absent properties (or `null` ones that are not
    `nullable`) of objects present in `obj`, through `items` and `additionalProperties`."""
    if not isinstance(schema, dict):
        return
    if isinstance(obj, dict):
        props = schema.get("properties")
        if isinstance(props, dict):
            for k, sub_schema in props.items():
                if not isinstance(sub_schema, dict) or "default" not in sub_schema:
                    continue
                if k not in obj or (obj[k] is None and not sub_schema.get("nullable")):
                    obj[k] = copy.deepcopy(sub_schema["default"])
            for k, v in obj.items():
                if isinstance(props.get(k), dict):
                    apply_defaults(v, props[k])
        addl = schema.get("additionalProperties")
        if isinstance(addl, dict):
            for k, v in obj.items():
                if not (isinstance(props, dict) and k in props):
                    apply_defaults(v, addl)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for v in obj:
            apply_defaults(v, schema["items"])


def validate(obj: Any, schema: dict[str, Any] | None) -> list[StatusCause]:
    causes: list[StatusCause] = []
    if isinstance(schema, dict):
        _check(obj, schema, "", causes, root=True)
    return causes


_TYPE_NAMES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
}


def _is_type(value: Any, typ: str) -> bool:
    if typ == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if typ == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    cls = _TYPE_NAMES.get(typ)
    return cls is None or isinstance(value, cls)


def _check(
    value: Any, schema: dict[str, Any], path: str, causes: list[StatusCause], root: bool = False
) -> None:
    shown = path or "<root>"
    if value is None:
        if not schema.get("nullable") and not root:
            typ = schema.get("type")
            if typ:
                causes.append(
                    field_invalid(shown, "null", f'{shown} in body must be of type {typ}: "null"')
                )
        return
    typ = schema.get("type")
    if schema.get("x-kubernetes-int-or-string"):
        if not (isinstance(value, str) or _is_type(value, "integer")):
            causes.append(
                field_invalid(
                    shown,
                    value,
                    f'{shown} in body must be of type integer,string: "{type(value).__name__}"',
                )
            )
            return
    elif typ and not _is_type(value, typ):
        # kube-apiserver shows the JSON type as the invalid value, not the value.
        causes.append(
            field_invalid(
                shown,
                _json_type(value),
                f'{shown} in body must be of type {typ}: "{_json_type(value)}"',
            )
        )
        return
    enum = schema.get("enum")
    if isinstance(enum, list) and value not in enum:
        causes.append(field_unsupported(shown, value, enum))
    if isinstance(value, int | float) and not isinstance(value, bool):
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if lo is not None:
            if schema.get("exclusiveMinimum") and value <= lo:
                causes.append(
                    field_invalid(shown, value, f"{shown} in body should be greater than {lo}")
                )
            elif value < lo:
                causes.append(
                    field_invalid(
                        shown, value, f"{shown} in body should be greater than or equal to {lo}"
                    )
                )
        if hi is not None:
            if schema.get("exclusiveMaximum") and value >= hi:
                causes.append(
                    field_invalid(shown, value, f"{shown} in body should be less than {hi}")
                )
            elif value > hi:
                causes.append(
                    field_invalid(
                        shown, value, f"{shown} in body should be less than or equal to {hi}"
                    )
                )
    if isinstance(value, str):
        if "minLength" in schema and len(value) < int(schema["minLength"]):
            causes.append(
                field_invalid(
                    shown,
                    value,
                    f"{shown} in body should be at least {schema['minLength']} chars long",
                )
            )
        if "maxLength" in schema and len(value) > int(schema["maxLength"]):
            causes.append(
                {
                    "reason": "FieldValueTooLong",
                    "field": shown,
                    "message": f"Too long: may not be more than {schema['maxLength']} bytes",
                }
            )
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            try:
                if re.search(pattern, value) is None:
                    causes.append(
                        field_invalid(shown, value, f"{shown} in body should match '{pattern}'")
                    )
            except re.error:
                pass
    if isinstance(value, list):
        if "minItems" in schema and len(value) < int(schema["minItems"]):
            causes.append(
                field_invalid(
                    shown, value, f"{shown} in body should have at least {schema['minItems']} items"
                )
            )
        if "maxItems" in schema and len(value) > int(schema["maxItems"]):
            causes.append(
                {
                    "reason": "FieldValueTooMany",
                    "field": shown,
                    "message": f"Too many: {len(value)}: must have at most "
                    f"{schema['maxItems']} items",
                }
            )
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                _check(item, items, f"{path}[{i}]", causes)
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for req in schema.get("required") or []:
            if req not in value:
                causes.append(field_required(_join(path, req)))
        for k, v in value.items():
            if root and k in _META_KEYS:
                continue
            if k in props and isinstance(props[k], dict):
                _check(v, props[k], _join(path, k), causes)
            elif isinstance(schema.get("additionalProperties"), dict):
                _check(v, schema["additionalProperties"], _join(path, k), causes)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def unknown_fields(
    obj: Any, schema: dict[str, Any] | None, path: str = "", root: bool = True
) -> list[str]:
    """Paths of fields that `prune` would drop."""
    if not isinstance(schema, dict):
        return []
    out: list[str] = []
    if isinstance(obj, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields") and "properties" not in schema:
            return []
        props = schema.get("properties")
        addl = schema.get("additionalProperties")
        for k, v in obj.items():
            sub = _join(path, k)
            if root and k in _META_KEYS:
                continue
            if isinstance(props, dict) and k in props:
                out += unknown_fields(v, props[k], sub, False)
            elif isinstance(addl, dict):
                out += unknown_fields(v, addl, sub, False)
            elif not (addl is True or schema.get("x-kubernetes-preserve-unknown-fields")):
                out.append(sub)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(obj):
            out += unknown_fields(v, schema["items"], f"{path}[{i}]", False)
    return out
