"""Decoding of the Kubernetes protobuf envelope for the types kubectl sends as protobuf.

kubectl's typed clients (`kubectl create namespace|configmap|secret|deployment|
serviceaccount|service`, `kubectl run`, `kubectl autoscale`) write bodies as
`application/vnd.kubernetes.protobuf`: the bytes `k8s\\0`, then a `runtime.Unknown`
message whose `raw` field is the object's own message. This module turns those into the
JSON objects the rest of the emulator works on. Only the fields listed in the tables
below are read (what those commands set, and a little more); any other field number is
skipped. Responses are always JSON, which kubectl accepts.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

from .errors import bad_request, unsupported_media_type

MAGIC = b"k8s\x00"

# A message table maps field number -> (JSON name, kind). Kinds: "str", "bytes", "int",
# "bool", "rep_str", "map_str", "map_bytes", "map_qty", "time", "ios" (IntOrString),
# "qty" (Quantity), or ("msg", table) / ("rep", table).
Table = dict[int, tuple[str, Any]]

TIME = "time"
SELECTOR: Table = {
    1: ("matchLabels", "map_str"),
    2: (
        "matchExpressions",
        ("rep", {1: ("key", "str"), 2: ("operator", "str"), 3: ("values", "rep_str")}),
    ),
}
OWNER_REF: Table = {
    1: ("kind", "str"),
    3: ("name", "str"),
    4: ("uid", "str"),
    5: ("apiVersion", "str"),
    6: ("controller", "bool"),
    7: ("blockOwnerDeletion", "bool"),
}
META: Table = {
    1: ("name", "str"),
    2: ("generateName", "str"),
    3: ("namespace", "str"),
    5: ("uid", "str"),
    6: ("resourceVersion", "str"),
    7: ("generation", "int"),
    8: ("creationTimestamp", TIME),
    11: ("labels", "map_str"),
    12: ("annotations", "map_str"),
    13: ("ownerReferences", ("rep", OWNER_REF)),
    14: ("finalizers", "rep_str"),
}
PORT: Table = {
    1: ("name", "str"),
    2: ("hostPort", "int"),
    3: ("containerPort", "int"),
    4: ("protocol", "str"),
    5: ("hostIP", "str"),
}
ENV: Table = {1: ("name", "str"), 2: ("value", "str")}
RESOURCES: Table = {1: ("limits", "map_qty"), 2: ("requests", "map_qty")}
CONTAINER: Table = {
    1: ("name", "str"),
    2: ("image", "str"),
    3: ("command", "rep_str"),
    4: ("args", "rep_str"),
    5: ("workingDir", "str"),
    6: ("ports", ("rep", PORT)),
    7: ("env", ("rep", ENV)),
    8: ("resources", ("msg", RESOURCES)),
    13: ("terminationMessagePath", "str"),
    14: ("imagePullPolicy", "str"),
    16: ("stdin", "bool"),
    17: ("stdinOnce", "bool"),
    18: ("tty", "bool"),
    20: ("terminationMessagePolicy", "str"),
}
POD_SPEC: Table = {
    2: ("containers", ("rep", CONTAINER)),
    3: ("restartPolicy", "str"),
    4: ("terminationGracePeriodSeconds", "int"),
    6: ("dnsPolicy", "str"),
    7: ("nodeSelector", "map_str"),
    8: ("serviceAccountName", "str"),
    10: ("nodeName", "str"),
    15: ("imagePullSecrets", ("rep", {1: ("name", "str")})),
    19: ("schedulerName", "str"),
    20: ("initContainers", ("rep", CONTAINER)),
    14: ("securityContext", ("msg", {})),
}
TEMPLATE: Table = {1: ("metadata", ("msg", META)), 2: ("spec", ("msg", POD_SPEC))}
DEPLOYMENT: Table = {
    1: ("metadata", ("msg", META)),
    2: (
        "spec",
        (
            "msg",
            {
                1: ("replicas", "int"),
                2: ("selector", ("msg", SELECTOR)),
                3: ("template", ("msg", TEMPLATE)),
                4: (
                    "strategy",
                    (
                        "msg",
                        {
                            1: ("type", "str"),
                            2: (
                                "rollingUpdate",
                                ("msg", {1: ("maxUnavailable", "ios"), 2: ("maxSurge", "ios")}),
                            ),
                        },
                    ),
                ),
                5: ("minReadySeconds", "int"),
                6: ("revisionHistoryLimit", "int"),
                7: ("paused", "bool"),
                9: ("progressDeadlineSeconds", "int"),
            },
        ),
    ),
}
SCALE_REF: Table = {1: ("kind", "str"), 2: ("name", "str"), 3: ("apiVersion", "str")}
METRIC_TARGET: Table = {
    1: ("type", "str"),
    2: ("value", "qty"),
    3: ("averageValue", "qty"),
    4: ("averageUtilization", "int"),
}
HPA_V2: Table = {
    1: ("metadata", ("msg", META)),
    2: (
        "spec",
        (
            "msg",
            {
                1: ("scaleTargetRef", ("msg", SCALE_REF)),
                2: ("minReplicas", "int"),
                3: ("maxReplicas", "int"),
                4: (
                    "metrics",
                    (
                        "rep",
                        {
                            1: ("type", "str"),
                            4: (
                                "resource",
                                (
                                    "msg",
                                    {1: ("name", "str"), 2: ("target", ("msg", METRIC_TARGET))},
                                ),
                            ),
                        },
                    ),
                ),
            },
        ),
    ),
}
HPA_V1: Table = {
    1: ("metadata", ("msg", META)),
    2: (
        "spec",
        (
            "msg",
            {
                1: ("scaleTargetRef", ("msg", SCALE_REF)),
                2: ("minReplicas", "int"),
                3: ("maxReplicas", "int"),
                4: ("targetCPUUtilizationPercentage", "int"),
            },
        ),
    ),
}
SERVICE: Table = {
    1: ("metadata", ("msg", META)),
    2: (
        "spec",
        (
            "msg",
            {
                1: (
                    "ports",
                    (
                        "rep",
                        {
                            1: ("name", "str"),
                            2: ("protocol", "str"),
                            3: ("port", "int"),
                            4: ("targetPort", "ios"),
                            5: ("nodePort", "int"),
                        },
                    ),
                ),
                2: ("selector", "map_str"),
                3: ("clusterIP", "str"),
                4: ("type", "str"),
                7: ("externalName", "str"),
                18: ("clusterIPs", "rep_str"),
            },
        ),
    ),
}

TYPES: dict[tuple[str, str], Table] = {
    ("v1", "Namespace"): {
        1: ("metadata", ("msg", META)),
        2: ("spec", ("msg", {1: ("finalizers", "rep_str")})),
    },
    ("v1", "ConfigMap"): {
        1: ("metadata", ("msg", META)),
        2: ("data", "map_str"),
        3: ("binaryData", "map_bytes"),
        4: ("immutable", "bool"),
    },
    ("v1", "Secret"): {
        1: ("metadata", ("msg", META)),
        2: ("data", "map_bytes"),
        3: ("type", "str"),
        4: ("stringData", "map_str"),
        5: ("immutable", "bool"),
    },
    ("v1", "ServiceAccount"): {
        1: ("metadata", ("msg", META)),
        3: ("imagePullSecrets", ("rep", {1: ("name", "str")})),
        4: ("automountServiceAccountToken", "bool"),
    },
    ("v1", "Pod"): {1: ("metadata", ("msg", META)), 2: ("spec", ("msg", POD_SPEC))},
    ("v1", "Service"): SERVICE,
    ("apps/v1", "Deployment"): DEPLOYMENT,
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview"): {
        1: ("metadata", ("msg", META)),
        2: (
            "spec",
            (
                "msg",
                {
                    1: (
                        "resourceAttributes",
                        (
                            "msg",
                            {
                                1: ("namespace", "str"),
                                2: ("verb", "str"),
                                3: ("group", "str"),
                                4: ("version", "str"),
                                5: ("resource", "str"),
                                6: ("subresource", "str"),
                                7: ("name", "str"),
                            },
                        ),
                    ),
                    2: ("nonResourceAttributes", ("msg", {1: ("path", "str"), 2: ("verb", "str")})),
                },
            ),
        ),
    },
    ("autoscaling/v2", "HorizontalPodAutoscaler"): HPA_V2,
    ("autoscaling/v1", "HorizontalPodAutoscaler"): HPA_V1,
}


def decode(body: bytes, content_type: str) -> dict[str, Any]:
    """The JSON object of a protobuf request body; 415 for anything this cannot read."""
    if not body.startswith(MAGIC):
        raise unsupported_media_type(content_type)
    try:
        unknown = _fields(body[len(MAGIC) :])
        type_meta = _fields(_one(unknown, 1, b""))
        api_version = _one(type_meta, 1, b"").decode()
        kind = _one(type_meta, 2, b"").decode()
        table = TYPES.get((api_version, kind))
        if table is None:
            raise unsupported_media_type(f"{content_type} ({api_version}, Kind={kind})")
        obj = _message(_one(unknown, 2, b""), table)
    except (
        ValueError,
        IndexError,
        TypeError,
        AttributeError,
        UnicodeDecodeError,
        OverflowError,
    ) as exc:
        raise bad_request(
            f"the body of the request could not be decoded as protobuf: {exc}"
        ) from None
    obj["apiVersion"], obj["kind"] = api_version, kind
    return obj


def _one(fields: dict[int, list[Any]], number: int, default: Any) -> Any:
    values = fields.get(number)
    return values[-1] if values else default


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> dict[int, list[Any]]:
    """Field number -> raw values (ints for varints, bytes for length-delimited)."""
    out: dict[int, list[Any]] = {}
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ValueError("truncated field")
            value, pos = data[pos : pos + length], pos + length
        elif wire == 1:
            value, pos = int.from_bytes(data[pos : pos + 8], "little"), pos + 8
        elif wire == 5:
            value, pos = int.from_bytes(data[pos : pos + 4], "little"), pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _map(values: list[bytes], kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for entry in values:
        f = _fields(entry)
        key = _one(f, 1, b"").decode()
        raw = _one(f, 2, b"")
        if kind == "map_str":
            out[key] = raw.decode()
        elif kind == "map_bytes":
            out[key] = base64.b64encode(raw).decode()
        else:
            out[key] = _one(_fields(raw), 1, b"").decode()
    return out


def _value(kind: Any, values: list[Any]) -> Any:
    if isinstance(kind, tuple):
        shape, table = kind
        if shape == "msg":
            return _message(values[-1], table)
        return [_message(v, table) for v in values]
    last = values[-1]
    if kind == "str":
        return last.decode()
    if kind == "bytes":
        return base64.b64encode(last).decode()
    if kind == "int":
        return _signed(last)
    if kind == "bool":
        return bool(last)
    if kind == "rep_str":
        return [v.decode() for v in values]
    if kind in ("map_str", "map_bytes", "map_qty"):
        return _map(values, kind)
    if kind == "qty":
        return _one(_fields(last), 1, b"").decode()
    if kind == "ios":
        f = _fields(last)
        if _one(f, 1, 0) == 1:
            return _one(f, 3, b"").decode()
        return _signed(_one(f, 2, 0))
    if kind == TIME:
        f = _fields(last)
        seconds = _signed(_one(f, 1, 0))
        if not seconds:
            return None
        return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    raise ValueError(f"unknown field kind {kind}")


def _message(data: bytes, table: Table) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for number, values in _fields(data).items():
        spec = table.get(number)
        if spec is None:
            continue
        name, kind = spec
        value = _value(kind, values)
        if value is None or _omitted(name, value):
            continue
        out[name] = value
    return out


# Protobuf writes zero values of plain (non-pointer) fields, JSON omits them
# (`omitempty`). These fields are pointers or not omitempty: their zero is kept.
KEEP_ZERO = {
    "replicas",
    "minReplicas",
    "maxReplicas",
    "containerPort",
    "port",
    "targetCPUUtilizationPercentage",
    "averageUtilization",
    "revisionHistoryLimit",
    "progressDeadlineSeconds",
    "terminationGracePeriodSeconds",
    "immutable",
    "automountServiceAccountToken",
    "maxUnavailable",
    "maxSurge",
    "targetPort",
}


def _omitted(name: str, value: Any) -> bool:
    if name in KEEP_ZERO:
        return False
    return value == "" or value is False or (isinstance(value, int) and value == 0)
