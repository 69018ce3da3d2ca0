"""`Status` objects the way kube-apiserver writes them, raised as `ApiError`."""

from __future__ import annotations

from typing import Any, TypedDict


class StatusCause(TypedDict, total=False):
    reason: str
    message: str
    field: str


class ApiError(Exception):
    """An API failure carrying the `metav1.Status` body that is sent to the client."""

    def __init__(self, status: dict[str, Any]) -> None:
        super().__init__(status.get("message", ""))
        self.status = status

    @property
    def code(self) -> int:
        return int(self.status.get("code", 500))

    @property
    def reason(self) -> str:
        return str(self.status.get("reason", ""))


def status(
    code: int,
    reason: str,
    message: str,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        body["details"] = details
    return body


def success_status(details: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    }


def qualified(plural: str, group: str) -> str:
    return f"{plural}.{group}" if group else plural


def not_found(plural: str, group: str, name: str) -> ApiError:
    return ApiError(
        status(
            404,
            "NotFound",
            f'{qualified(plural, group)} "{name}" not found',
            {"name": name, "group": group, "kind": plural} if name else None,
        )
    )


def path_not_found(path: str) -> ApiError:
    return ApiError(
        status(
            404,
            "NotFound",
            "the server could not find the requested resource",
            {
                "causes": [
                    {"reason": "UnexpectedServerResponse", "message": f"404 page not found: {path}"}
                ]
            },
        )
    )


def already_exists(plural: str, group: str, name: str) -> ApiError:
    return ApiError(
        status(
            409,
            "AlreadyExists",
            f'{qualified(plural, group)} "{name}" already exists',
            {"name": name, "group": group, "kind": plural},
        )
    )


def conflict(plural: str, group: str, name: str, why: str | None = None) -> ApiError:
    why = why or (
        "the object has been modified; please apply your changes to the latest version "
        "and try again"
    )
    return ApiError(
        status(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {qualified(plural, group)} "{name}": {why}',
            {"name": name, "group": group, "kind": plural},
        )
    )


def invalid(kind: str, group: str, name: str, causes: list[StatusCause]) -> ApiError:
    shown = kind if not group else f"{kind}.{group}"
    parts = [f"{c['field']}: {c['message']}" if c.get("field") else c["message"] for c in causes]
    joined = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    return ApiError(
        status(
            422,
            "Invalid",
            f'{shown} "{name}" is invalid: {joined}',
            {"name": name, "group": group, "kind": kind, "causes": list(causes)},
        )
    )


def field_invalid(field: str, value: Any, detail: str) -> StatusCause:
    return {
        "reason": "FieldValueInvalid",
        "field": field,
        "message": f"Invalid value: {_render(value)}: {detail}",
    }


def field_required(field: str, detail: str = "") -> StatusCause:
    msg = "Required value" + (f": {detail}" if detail else "")
    return {"reason": "FieldValueRequired", "field": field, "message": msg}


def field_unsupported(field: str, value: Any, allowed: list[Any]) -> StatusCause:
    shown = ", ".join(_render(v) for v in allowed)
    return {
        "reason": "FieldValueNotSupported",
        "field": field,
        "message": f"Unsupported value: {_render(value)}: supported values: {shown}",
    }


def field_forbidden(field: str, detail: str) -> StatusCause:
    return {"reason": "FieldValueForbidden", "field": field, "message": f"Forbidden: {detail}"}


def _render(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict | list):
        return "{...}" if isinstance(value, dict) else "[...]"
    return str(value)


def bad_request(message: str) -> ApiError:
    return ApiError(status(400, "BadRequest", message))


def forbidden(message: str) -> ApiError:
    return ApiError(status(403, "Forbidden", message))


def method_not_allowed(
    message: str = "the server does not allow this method on the requested resource",
) -> ApiError:
    return ApiError(status(405, "MethodNotAllowed", message))


def unsupported_media_type(content_type: str) -> ApiError:
    return ApiError(
        status(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted media "
            f"types include: application/json-patch+json, "
            f"application/merge-patch+json, application/apply-patch+yaml "
            f'(got "{content_type}")',
        )
    )


def internal(message: str) -> ApiError:
    return ApiError(
        status(
            500,
            "InternalError",
            f"Internal error occurred: {message}",
            {"causes": [{"message": message}]},
        )
    )


def gone(message: str) -> ApiError:
    return ApiError(status(410, "Expired", message))


def unavailable(message: str = "the server is currently unable to handle the request") -> ApiError:
    return ApiError(status(503, "ServiceUnavailable", message))


def timeout(message: str) -> ApiError:
    return ApiError(status(504, "Timeout", message))
