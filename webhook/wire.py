"""The AdmissionReview wire format (admission.k8s.io/v1), without I/O: a request body
checked into an ``AdmissionRequest`` (``parse_review``), the response built from a
``Verdict`` (``to_response``), and compact JSON.  The decision itself is
``gpumix.admission.review``; the HTTP layer (``gpumix.webhook.server``) only moves
bytes.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from typing import Any, TypedDict

import orjson

from gpumix.admission import AdmissionRequest, Verdict
from gpumix.kube.fields import is_mapping

ADMISSION_API_VERSION = "admission.k8s.io/v1"


class StatusDict(TypedDict, total=False):
    code: int
    message: str
    reason: str


class AdmissionResponse(TypedDict, total=False):
    uid: str
    allowed: bool
    status: StatusDict
    patchType: str
    patch: str
    warnings: list[str]


class AdmissionReviewResponse(TypedDict):
    apiVersion: str
    kind: str
    response: AdmissionResponse


class ReviewError(ValueError):
    """A request body that is not a usable AdmissionReview (the server answers 400)."""

    def __init__(self, message: str, uid: str = "") -> None:
        super().__init__(message)
        self.uid = uid


def parse_review(body: object) -> AdmissionRequest:
    """Check an AdmissionReview body and return its request, or raise ReviewError.

    Fields the API server always sends as strings must be strings (or absent, where
    optional): anything else is reported by its JSON type, never printed, so a value
    nested a thousand levels deep costs no recursion.
    """
    if not is_mapping(body):
        raise ReviewError("body must be a JSON object (an AdmissionReview)")
    raw_request = body.get("request")
    request = raw_request if is_mapping(raw_request) else None
    uid = ""
    if request is not None and isinstance(request.get("uid"), str):
        uid = request["uid"]
    if body.get("apiVersion") != ADMISSION_API_VERSION:
        raise ReviewError(
            f"apiVersion must be {ADMISSION_API_VERSION}, got {_describe(body.get('apiVersion'))}",
            uid,
        )
    if body.get("kind") != "AdmissionReview":
        raise ReviewError(f"kind must be AdmissionReview, got {_describe(body.get('kind'))}", uid)
    if request is None:
        raise ReviewError("request is missing or not an object", uid)
    if not uid:
        raise ReviewError("request.uid is missing or not a string")
    operation = request.get("operation")
    if operation not in ("CREATE", "UPDATE", "DELETE", "CONNECT"):
        raise ReviewError(f"request.operation {_describe(operation)} is not a known operation", uid)
    obj = request.get("object")
    if not is_mapping(obj):
        obj = None
    if obj is None and operation in ("CREATE", "UPDATE"):
        raise ReviewError("request.object is missing or not an object", uid)
    old = request.get("oldObject")
    if old is not None and not is_mapping(old):
        raise ReviewError("request.oldObject is not an object", uid)
    kind = request.get("kind")
    if not is_mapping(kind):
        raise ReviewError("request.kind is missing or not an object", uid)
    if not isinstance(kind.get("kind"), str):
        raise ReviewError(
            f"request.kind.kind must be a string, got {_describe(kind.get('kind'))}", uid
        )
    return {
        "uid": uid,
        "kind": {
            "group": _string(kind, "group", "request.kind.group", uid),
            "version": _string(kind, "version", "request.kind.version", uid),
            "kind": kind["kind"],
        },
        "name": _string(request, "name", "request.name", uid),
        "namespace": _string(request, "namespace", "request.namespace", uid),
        "operation": operation,
        "subResource": _string(request, "subResource", "request.subResource", uid),
        "object": dict(obj) if obj is not None else {},
        "oldObject": dict(old) if old is not None else None,
        "dryRun": bool(request.get("dryRun", False)),
    }


_JSON_TOKEN = re.compile(rb'\s*(?:("(?:[^"\\]|\\.)*")|([{}\[\]:,])|[^\s{}\[\]:,"]+)')


def uid_in_prefix(raw: bytes | bytearray, limit: int = 65536, max_tokens: int = 20_000) -> str:
    """``request.uid`` of a body the JSON decoders refuse (nested deeper than they
    recurse), read without recursion from its first ``limit`` bytes; "" when it is not
    there.  kube-apiserver writes ``request`` and its ``uid`` first, so a deep object
    further on does not hide it, and the API server gets an answer it can show."""
    # one frame per open container: [is_object, key being read, expecting a key]
    stack: list[list[Any]] = []
    view = bytes(raw[:limit])
    at = 0
    for _ in range(max_tokens):
        match = _JSON_TOKEN.match(view, at)
        if match is None:
            return ""
        at = match.end()
        string, punct = match.group(1), match.group(2)
        top = stack[-1] if stack else None
        if punct in (b"{", b"["):
            stack.append([punct == b"{", None, punct == b"{"])
        elif punct in (b"}", b"]"):
            if not stack:
                return ""
            stack.pop()
        elif punct == b":" and top is not None:
            top[2] = False
        elif punct == b"," and top is not None and top[0]:
            top[1], top[2] = None, True
        elif string is not None and top is not None:
            try:
                text = json.loads(string)
            except ValueError:
                return ""
            if top[0] and top[2]:
                top[1] = text
            elif (
                len(stack) == 2
                and stack[0][0]
                and stack[0][1] == "request"
                and top[0]
                and top[1] == "uid"
                and isinstance(text, str)
            ):
                return text
    return ""


def _string(parent: Mapping[str, Any], key: str, where: str, uid: str) -> str:
    """An optional string field ("" when absent or null), or ReviewError naming it."""
    value = parent.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ReviewError(f"{where} must be a string, got {_describe(value)}", uid)
    return value


def _describe(value: object) -> str:
    """A request value in an error message: short, and without walking into it."""
    if isinstance(value, str):
        return repr(value if len(value) <= 100 else value[:97] + "...")
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if is_mapping(value):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def to_response(uid: str, verdict: Verdict) -> AdmissionReviewResponse:
    """The AdmissionReview the API server reads; always echoes the uid."""
    response: AdmissionResponse = {"uid": uid, "allowed": verdict.allowed}
    if verdict.shape in ("denied", "errored"):
        reason = "Forbidden" if verdict.shape == "denied" else "BadRequest"
        response["status"] = {"code": verdict.code, "message": verdict.message, "reason": reason}
    if verdict.shape == "patched":
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json_bytes(list(verdict.patch))).decode()
    if verdict.warnings:
        # each once (kubectl prints every one), in the order they came
        response["warnings"] = list(dict.fromkeys(_warning_text(w) for w in verdict.warnings))
    return {"apiVersion": ADMISSION_API_VERSION, "kind": "AdmissionReview", "response": response}


def json_bytes(data: object) -> bytes:
    """Compact JSON (orjson; the standard library for what orjson refuses, such as
    strings with lone surrogates that ``json.loads`` let in)."""
    try:
        return orjson.dumps(data)
    except TypeError:
        return json.dumps(data, separators=(",", ":")).encode()


def _warning_text(text: str) -> str:
    # The API server passes warnings on as HTTP headers: keep them printable and short.
    clean = text if text.isprintable() else "".join(ch if ch.isprintable() else " " for ch in text)
    return clean if len(clean) <= 1000 else clean[:997] + "..."


__all__ = [
    "ADMISSION_API_VERSION",
    "AdmissionResponse",
    "AdmissionReviewResponse",
    "ReviewError",
    "json_bytes",
    "parse_review",
    "to_response",
    "uid_in_prefix",
]
