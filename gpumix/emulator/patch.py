"""The four PATCH content types.

- `application/json-patch+json`: RFC 6902 (jsonpatch).
- `application/merge-patch+json`: RFC 7386.
- `application/strategic-merge-patch+json`: a subset of Kubernetes' strategic merge:
  lists of objects with a well-known merge key (containers by `name`, ports by
  `containerPort`, ...) are merged element by element, `$patch: delete|replace`,
  `$setElementOrder/<field>`, `$deleteFromPrimitiveList/<field>` and `$retainKeys`
  are honoured; every other list is replaced, as in a JSON merge patch.
- `application/apply-patch+yaml`: server-side apply without field ownership: the
  applied configuration is merged into the live object like a strategic merge patch
  (fields missing from the configuration are kept, not removed).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch

from .errors import bad_request, unsupported_media_type

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_PATCH, APPLY_PATCH)

# Field name -> merge key of lists that strategic merge merges element by element.
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "conditions": "type",
    "ownerReferences": "uid",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
    "webhooks": "name",
}
# Lists of objects keyed by a port number; the key is chosen by the first that exists.
PORT_KEYS = ("containerPort", "port")
# Primitive lists that strategic merge treats as sets.
MERGED_PRIMITIVE_LISTS = ("finalizers",)


def parse_body(raw: bytes, content_type: str) -> Any:
    if content_type == APPLY_PATCH:
        try:
            return json.loads(raw)
        except ValueError:
            from ruamel.yaml import YAML
            from ruamel.yaml.error import YAMLError

            try:
                return _jsonable(YAML(typ="safe", pure=True).load(raw.decode("utf-8")))
            except (YAMLError, UnicodeDecodeError) as exc:
                raise bad_request(f"error decoding YAML: {exc}") from None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise bad_request(f"error decoding patch: {exc}") from None


def _jsonable(value: Any) -> Any:
    """YAML scalars JSON has no type for (dates, timestamps) become strings."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def apply_patch(content_type: str, target: dict[str, Any], patch: Any) -> dict[str, Any]:
    """Return a new object; `target` is not changed."""
    if content_type == JSON_PATCH:
        if not isinstance(patch, list):
            raise bad_request("json patch must be a list of operations")
        try:
            result = jsonpatch.apply_patch(target, patch, in_place=False)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise ApiPatchError(str(exc)) from None
        except (TypeError, KeyError, IndexError, ValueError) as exc:
            raise ApiPatchError(f"invalid json patch: {exc}") from None
        if not isinstance(result, dict):
            raise ApiPatchError("the patch result is not an object")
        return result
    if not isinstance(patch, dict):
        raise bad_request("patch body must be a JSON object")
    if content_type == MERGE_PATCH:
        merged: dict[str, Any] = merge_patch(target, patch)
        return merged
    if content_type in (STRATEGIC_PATCH, APPLY_PATCH):
        out = strategic_merge(target, patch, "")
        assert isinstance(out, dict)
        return out
    raise unsupported_media_type(content_type)


class ApiPatchError(Exception):
    """A patch that cannot be applied (422 in kube-apiserver for JSON patch tests)."""


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _list_key(field: str, items: list[Any]) -> str | None:
    if field in MERGE_KEYS:
        return MERGE_KEYS[field]
    if field == "ports":
        for k in PORT_KEYS:
            if items and all(isinstance(i, dict) and k in i for i in items):
                return k
    return None


def strategic_merge(target: Any, patch: Any, field: str) -> Any:
    if isinstance(patch, dict):
        if patch.get("$patch") == "replace":
            return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
        if patch.get("$patch") == "delete":
            return None
        result = copy.deepcopy(target) if isinstance(target, dict) else {}
        retain = patch.get("$retainKeys")
        orders: dict[str, list[Any]] = {}
        for key, value in patch.items():
            if key.startswith("$setElementOrder/"):
                orders[key.split("/", 1)[1]] = list(value or [])
                continue
            if key.startswith("$deleteFromPrimitiveList/"):
                name = key.split("/", 1)[1]
                drop = set(map(json.dumps, value or []))
                if isinstance(result.get(name), list):
                    result[name] = [v for v in result[name] if json.dumps(v) not in drop]
                continue
            if key.startswith("$"):
                continue
            if value is None:
                result.pop(key, None)
            else:
                merged = strategic_merge(result.get(key), value, key)
                if merged is None:
                    result.pop(key, None)
                else:
                    result[key] = merged
        for name, order in orders.items():
            if isinstance(result.get(name), list):
                result[name] = _reorder(result[name], order, name)
        if isinstance(retain, list):
            keep = set(retain)
            result = {k: v for k, v in result.items() if k in keep}
        return result
    if isinstance(patch, list):
        if field in MERGED_PRIMITIVE_LISTS and isinstance(target, list):
            out = list(target)
            for v in patch:
                if v not in out:
                    out.append(v)
            return out
        key = _list_key(field, [p for p in patch if not _is_directive(p)])
        if key is None or not isinstance(target, list):
            if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
                return [copy.deepcopy(p) for p in patch if not _is_directive(p)]
            return [_strip(p) for p in patch if not _is_directive(p)]
        if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
            return [_strip(p) for p in patch if not _is_directive(p)]
        result_list = copy.deepcopy(target)
        for item in patch:
            if not isinstance(item, dict) or key not in item:
                continue
            idx = next(
                (
                    i
                    for i, cur in enumerate(result_list)
                    if isinstance(cur, dict) and cur.get(key) == item[key]
                ),
                None,
            )
            if item.get("$patch") == "delete":
                if idx is not None:
                    del result_list[idx]
                continue
            if idx is None:
                result_list.append(_strip(item))
            else:
                result_list[idx] = strategic_merge(result_list[idx], item, "")
        return result_list
    return copy.deepcopy(patch)


def _is_directive(item: Any) -> bool:
    return isinstance(item, dict) and set(item) <= {"$patch"}


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _reorder(items: list[Any], order: list[Any], field: str) -> list[Any]:
    key = _list_key(field, items)
    if key is None:
        return items

    def ident(item: Any) -> Any:
        return item.get(key) if isinstance(item, dict) else item

    wanted = [ident(o) for o in order]
    ranked = sorted(
        range(len(items)),
        key=lambda i: (
            wanted.index(ident(items[i])) if ident(items[i]) in wanted else len(wanted) + i
        ),
    )
    return [items[i] for i in ranked]
