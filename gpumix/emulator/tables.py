"""`meta.k8s.io/v1` Table output, which `kubectl get` asks for.

Built-in types get a few of kube-apiserver's columns; custom resources get their CRD's
`additionalPrinterColumns` (simple `.a.b` JSON paths); every table ends with AGE.
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from .resources import ResourceType

Obj = dict[str, Any]


_SEGMENT = re.compile(
    r"""\.?([^.\[\]]+)|\[(\d+)\]|\[\?\(@\.([\w.-]+)\s*==\s*["']([^"']*)["']\)\]"""
)


def _path(obj: Obj, path: str) -> Any:
    """The JSONPath subset printer columns use: fields, ``[N]`` and ``[?(@.f=="v")]``."""
    cur: Any = obj
    text = path.strip()
    pos = 0
    while pos < len(text) and cur is not None:
        m = _SEGMENT.match(text, pos)
        if m is None or m.end() == pos:
            return None
        pos = m.end()
        field, index, filter_key, filter_value = m.groups()
        if field is not None:
            cur = cur.get(field) if isinstance(cur, dict) else None
        elif index is not None:
            cur = cur[int(index)] if isinstance(cur, list) and int(index) < len(cur) else None
        else:
            if not isinstance(cur, list):
                return None
            matches = [
                item
                for item in cur
                if isinstance(item, dict) and _path(item, filter_key) == filter_value
            ]
            cur = matches[0] if matches else None
    return cur


def _age(obj: Obj, now: float) -> str:
    ts = (obj.get("metadata") or {}).get("creationTimestamp")
    if not ts:
        return "<unknown>"
    try:
        created = calendar.timegm(time.strptime(ts, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return "<unknown>"
    secs = max(0, int(now - created))
    if secs < 120:
        return f"{secs}s"
    if secs < 7200:
        return f"{secs // 60}m"
    if secs < 172800:
        return f"{secs // 3600}h"
    return f"{secs // 86400}d"


def _deploy_ready(o: Obj) -> str:
    spec, status = o.get("spec") or {}, o.get("status") or {}
    return f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 0)}"


def _hpa_ref(o: Obj) -> str:
    ref = (o.get("spec") or {}).get("scaleTargetRef") or {}
    return f"{ref.get('kind', '')}/{ref.get('name', '')}"


def _event_object(o: Obj) -> str:
    ref = o.get("involvedObject") or o.get("regarding") or {}
    return f"{str(ref.get('kind', '')).lower()}/{ref.get('name', '')}"


Column = tuple[str, str, Callable[[Obj], Any]]

BUILTIN_COLUMNS: dict[str, list[Column]] = {
    "deployments.apps": [
        ("Ready", "string", _deploy_ready),
        ("Up-to-date", "integer", lambda o: (o.get("status") or {}).get("updatedReplicas", 0)),
        ("Available", "integer", lambda o: (o.get("status") or {}).get("availableReplicas", 0)),
    ],
    "horizontalpodautoscalers.autoscaling": [
        ("Reference", "string", _hpa_ref),
        ("MinPods", "string", lambda o: (o.get("spec") or {}).get("minReplicas", "<unset>")),
        ("MaxPods", "integer", lambda o: (o.get("spec") or {}).get("maxReplicas", 0)),
        ("Replicas", "integer", lambda o: (o.get("status") or {}).get("currentReplicas", 0)),
    ],
    "namespaces": [("Status", "string", lambda o: (o.get("status") or {}).get("phase", ""))],
    "events": [
        ("Type", "string", lambda o: o.get("type", "")),
        ("Reason", "string", lambda o: o.get("reason", "")),
        ("Object", "string", _event_object),
        ("Message", "string", lambda o: o.get("message") or o.get("note", "")),
    ],
    "configmaps": [("Data", "integer", lambda o: len(o.get("data") or {}))],
    "leases": [("Holder", "string", lambda o: (o.get("spec") or {}).get("holderIdentity", ""))],
}
BUILTIN_COLUMNS["events.events.k8s.io"] = BUILTIN_COLUMNS["events"]


def table(
    rt: ResourceType,
    version: str,
    items: list[Obj],
    list_meta: Obj,
    q: Mapping[str, str],
    now: float | None = None,
) -> Obj:
    now = time.time() if now is None else now
    defs: list[dict[str, Any]] = [
        {
            "name": "Name",
            "type": "string",
            "format": "name",
            "description": "Name of the object",
            "priority": 0,
        }
    ]
    getters: list[Callable[[Obj], Any]] = [lambda o: o["metadata"].get("name", "")]
    custom = rt.printer_columns(version)
    if custom:
        for col in custom:
            defs.append(
                {
                    "name": col.name,
                    "type": col.type,
                    "format": "",
                    "description": col.description,
                    "priority": col.priority,
                }
            )
            getters.append(_column_getter(col.json_path, col.type, now))
    else:
        for name, typ, fn in BUILTIN_COLUMNS.get(rt.key, []):
            defs.append(
                {"name": name, "type": typ, "format": "", "description": name, "priority": 0}
            )
            getters.append(fn)
    if not any(d["name"].lower() == "age" for d in defs):
        defs.append(
            {
                "name": "Age",
                "type": "string",
                "format": "",
                "priority": 0,
                "description": "Time since creation",
            }
        )
        getters.append(lambda o: _age(o, now))
    include = q.get("includeObject", "Metadata")
    rows = []
    for o in items:
        row: Obj = {"cells": [g(o) for g in getters]}
        if include == "Object":
            row["object"] = o
        elif include != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": o.get("metadata", {}),
            }
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": dict(list_meta),
        "columnDefinitions": defs,
        "rows": rows,
    }


def _column_getter(path: str, typ: str, now: float) -> Callable[[Obj], Any]:
    return lambda o: _cell(_path(o, path), typ, o, now)


def _cell(value: Any, typ: str, obj: Obj, now: float) -> Any:
    if value is None:
        return None
    if typ == "date" and isinstance(value, str):
        return _age({"metadata": {"creationTimestamp": value}}, now)
    return value
