"""Request semantics of kube-apiserver, independent of HTTP.

`Api.handle(Request) -> Response` does what the real server does for one REST call:
decode and default, run admission, keep server-owned fields, validate, check
optimistic concurrency, write, and answer with the object or a `Status`.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from . import builtins, errors, openapi, protobuf, schema, shapes, tables
from .admission import AdmissionChain, Attributes
from .errors import ApiError
from .faults import Faults
from .patch import APPLY_PATCH, PATCH_TYPES, ApiPatchError, apply_patch, parse_body
from .resources import Registry, ResourceType
from .selectors import (
    field_matcher,
    label_selector_string,
    matches_all,
    parse_field_selector,
    parse_label_selector,
)
from .store import Change, Store, timestamp

log = logging.getLogger(__name__)
Obj = dict[str, Any]
DEFAULT_USER: Obj = {
    "username": "kubernetes-admin",
    "groups": ["system:masters", "system:authenticated"],
}
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
CRD_KEY = "customresourcedefinitions.apiextensions.k8s.io"
DEPLOYMENT_KEY = "deployments.apps"
ACCESS_REVIEW_KEY = "selfsubjectaccessreviews.authorization.k8s.io"
# Types whose create keeps the status it was sent with (a kubelet registers a Node with
# its capacity); other types with a status subresource start with an empty status.
STATUS_KEPT_ON_CREATE = ("namespaces", "nodes")
GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


MAX_RETRIES = 5


class _Changed(Exception):
    """The object changed while a write without a resourceVersion was in flight."""


@dataclass
class Request:
    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    content_type: str = "application/json"
    accept: str = "application/json"
    user: Obj = field(default_factory=lambda: dict(DEFAULT_USER))


@dataclass
class Response:
    status: int
    body: Any = None
    warnings: list[str] = field(default_factory=list)
    stream: AsyncIterator[Obj] | None = None
    content_type: str = "application/json"


@dataclass(frozen=True)
class Target:
    rt: ResourceType
    version: str
    namespace: str  # "" for cluster-scoped or all namespaces
    name: str
    sub: str
    all_namespaces: bool


@dataclass
class Settings:
    """Knobs of the emulated server."""

    server_address: str = "127.0.0.1:0"
    git_version: str = "v1.36.3-gpumix-emulator"
    require_namespace: bool = True
    bookmark_interval_s: float = 1.0
    default_watch_timeout_s: float = 1800.0
    # Emulate the deployment controller: status follows spec.replicas at once.
    simulate_deployments: bool = False


class Api:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        chain: AdmissionChain,
        faults: Faults,
        settings: Settings | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.chain = chain
        self.faults = faults
        self.settings = settings or Settings()
        self.rng = random.Random()

    # -- entry point --------------------------------------------------------------------

    async def handle(self, req: Request) -> Response:
        try:
            injected = self.faults.check(req.method, req.path)
            if injected is not None:
                raise injected
            return await self._route(req)
        except ApiError as exc:
            return Response(exc.code, exc.status)
        except Exception as exc:  # a bug here must still answer like a server, with a Status
            log.exception("emulator error on %s %s", req.method, req.path)
            err = errors.internal(f"{type(exc).__name__}: {exc}")
            return Response(err.code, err.status)

    async def _route(self, req: Request) -> Response:
        path = req.path.rstrip("/") or "/"
        parts = [unquote(p) for p in path.split("/") if p]
        if path == "/version":
            return Response(
                200,
                {
                    "major": "1",
                    "minor": self.settings.git_version.split(".")[1],
                    "gitVersion": self.settings.git_version,
                    "platform": "linux/amd64",
                    "goVersion": "go1.22",
                    "compiler": "gc",
                    "buildDate": "2026-01-01T00:00:00Z",
                    "gitCommit": "0" * 40,
                    "gitTreeState": "clean",
                },
            )
        if path in ("/healthz", "/livez", "/readyz"):
            return Response(200, "ok", content_type="text/plain")
        if path == "/api":
            return Response(200, self.registry.api_versions(self.settings.server_address))
        if path == "/apis":
            return Response(200, self.registry.api_group_list())
        if parts[:2] == ["openapi", "v3"]:
            return self._openapi(parts[2:], path)
        if parts and parts[0] == "openapi":
            raise errors.path_not_found(path)
        if len(parts) >= 2 and parts[0] == "api" and parts[1] == "v1":
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 2 and parts[0] == "apis":
            group = parts[1]
            if len(parts) == 2:
                doc = self.registry.api_group(group)
                if doc is None:
                    raise errors.path_not_found(path)
                return Response(200, doc)
            version, rest = parts[2], parts[3:]
        else:
            raise errors.path_not_found(path)
        if not rest:
            doc = self.registry.resource_list(group, version)
            if doc is None:
                raise errors.path_not_found(path)
            return Response(200, doc)
        target = self._target(group, version, rest, path)
        return await self._dispatch(req, target)

    def _openapi(self, rest: list[str], path: str) -> Response:
        if not rest:
            return Response(200, openapi.root_document(self.registry))
        doc = None
        if rest[0] == "api" and len(rest) == 2:
            doc = openapi.gv_document(self.registry, "", rest[1])
        elif rest[0] == "apis" and len(rest) == 3:
            doc = openapi.gv_document(self.registry, rest[1], rest[2])
        if doc is None:
            raise errors.path_not_found(path)
        return Response(200, doc)

    def _target(self, group: str, version: str, rest: list[str], path: str) -> Target:
        ns = ""
        if rest[0] == "namespaces" and len(rest) >= 3:
            candidate = self.registry.lookup(group, version, rest[2])
            if candidate is not None and candidate.namespaced:
                ns, rest = rest[1], rest[2:]
        rt = self.registry.lookup(group, version, rest[0])
        if rt is None:
            raise errors.path_not_found(path)
        if len(rest) > 3:
            raise errors.path_not_found(path)
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        if rt.namespaced and name and not ns:
            raise errors.path_not_found(path)
        if sub and not (
            (sub == "status" and rt.status) or (sub == "scale" and rt.scale) or sub in rt.extra_sub
        ):
            raise errors.path_not_found(path)
        return Target(rt, version, ns, name, sub, rt.namespaced and not ns)

    async def _dispatch(self, req: Request, t: Target) -> Response:
        m = req.method.upper()
        q = req.query
        if not t.sub:
            verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(m)
            if m == "GET":
                verb = (
                    "get"
                    if t.name
                    else ("watch" if q.get("watch") in ("1", "true", "True") else "list")
                )
            elif m == "DELETE":
                verb = "delete" if t.name else "deletecollection"
            if verb is not None and verb not in t.rt.verbs:
                raise errors.method_not_allowed()
        if m in ("POST", "PUT") and req.body and "protobuf" in req.content_type:
            req.body = json.dumps(protobuf.decode(req.body, req.content_type)).encode()
        if m == "GET":
            if not t.name:
                if q.get("watch") in ("1", "true", "True"):
                    return self._watch(t, q, req.accept)
                return self._list(t, q, req.accept)
            if t.sub == "scale":
                return Response(200, self._scale_of(t.rt, self._current(t)))
            obj = self._out(t.rt, self._current(t), t.version)
            if "as=Table" in req.accept:
                return Response(200, tables.table(t.rt, t.version, [obj], {}, q))
            return Response(200, obj)
        if t.all_namespaces and m != "GET" and t.rt.namespaced:
            raise errors.method_not_allowed()
        if m == "POST":
            if t.name:
                raise errors.method_not_allowed()
            return await self._create(t, self._decode_json(req.body), q, req.user)
        if m == "PUT":
            if not t.name:
                raise errors.method_not_allowed()
            body = self._decode_json(req.body)
            if t.sub == "scale":
                return await self._retrying(
                    t, lambda: self._write_scale(t, body, None, q, req.user)
                )
            return await self._update(t, body, q, req.user)
        if m == "PATCH":
            if not t.name:
                raise errors.method_not_allowed()
            ctype = req.content_type.split(";")[0].strip()
            if ctype not in PATCH_TYPES:
                raise errors.unsupported_media_type(ctype)
            return await self._patch(t, ctype, parse_body(req.body, ctype), q, req.user)
        if m == "DELETE":
            options = self._decode_json(req.body) if req.body.strip() else {}
            if not t.name:
                return await self._delete_collection(t, q, options, req.user)
            return await self._delete(t, q, options, req.user)
        raise errors.method_not_allowed()

    # -- helpers ------------------------------------------------------------------------

    @staticmethod
    def _decode_json(raw: bytes) -> Obj:
        try:
            data = json.loads(raw or b"null")
        except ValueError as exc:
            raise errors.bad_request(
                f"the body of the request could not be decoded: {exc}"
            ) from None
        if not isinstance(data, dict):
            raise errors.bad_request("the body of the request must be a JSON object")
        return data

    def _current(self, t: Target) -> Obj:
        obj = self.store.get(t.rt.key, t.namespace, t.name)
        if obj is None:
            raise errors.not_found(t.rt.plural, t.rt.group, t.name)
        return obj

    def _out(self, rt: ResourceType, obj: Obj, version: str) -> Obj:
        return builtins.convert(rt, obj, version)

    def _converter(self, rt: ResourceType) -> Callable[[Obj, str], Obj]:
        return lambda obj, version: builtins.convert(rt, obj, version)

    def _decode_object(self, t: Target, body: Obj) -> Obj:
        rt = t.rt
        want = rt.api_version(t.version)
        api_version, kind = body.get("apiVersion"), body.get("kind")
        if api_version and api_version != want:
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected "
                f"API version ({want})"
            )
        if kind and kind != rt.kind:
            raise errors.bad_request(
                f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})"
            )
        shapes.check(rt.key, body, rt.custom)
        obj = copy.deepcopy(body)
        obj["apiVersion"], obj["kind"] = want, rt.kind
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            meta = obj["metadata"] = {}
        if rt.namespaced:
            body_ns = meta.get("namespace")
            if body_ns and t.namespace and body_ns != t.namespace:
                raise errors.bad_request(
                    "the namespace of the provided object does not match "
                    "the namespace sent on the request"
                )
            meta["namespace"] = t.namespace
        else:
            meta.pop("namespace", None)
        builtins.default(rt, t.version, obj)
        return obj

    def _require_namespace(self, rt: ResourceType, ns: str) -> None:
        if (
            rt.namespaced
            and self.settings.require_namespace
            and self.store.get("namespaces", "", ns) is None
        ):
            raise errors.not_found("namespaces", "", ns)
        if rt.namespaced:
            nso = self.store.get("namespaces", "", ns)
            if nso is not None and nso["metadata"].get("deletionTimestamp"):
                raise errors.forbidden(
                    f'{errors.qualified(rt.plural, rt.group)} "" is forbidden: unable to create '
                    f"new content in namespace {ns} because it is being terminated"
                )

    @staticmethod
    def _dry_run(q: Mapping[str, str], options: Obj | None = None) -> bool:
        if q.get("dryRun") == "All":
            return True
        return bool(options and "All" in (options.get("dryRun") or []))

    def _attrs(
        self,
        t: Target,
        operation: str,
        name: str,
        q: Mapping[str, str],
        user: Obj,
        old: Obj | None,
        options: Obj | None,
        sub: str = "",
        kind: tuple[str, str, str] | None = None,
    ) -> Attributes:
        return Attributes(
            rt=t.rt,
            version=t.version,
            subresource=sub,
            operation=operation,
            namespace=t.namespace,
            name=name,
            dry_run=self._dry_run(q, options),
            user=user,
            options=options,
            old=old,
            kind=kind or (t.rt.group, t.version, t.rt.kind),
            convert=self._converter(t.rt),
        )

    @staticmethod
    def _options(kind: str, q: Mapping[str, str]) -> Obj:
        opts: Obj = {"kind": kind, "apiVersion": "meta.k8s.io/v1"}
        if q.get("dryRun"):
            opts["dryRun"] = [q["dryRun"]]
        if q.get("fieldManager"):
            opts["fieldManager"] = q["fieldManager"]
        return opts

    def _to_storage(self, rt: ResourceType, obj: Obj) -> Obj:
        stored = builtins.convert(rt, obj, rt.storage_version)
        if stored is obj:
            stored = copy.deepcopy(obj)
        if rt.custom:
            stored = builtins.prune_custom(rt, stored)
        return stored

    def _field_validation(
        self, rt: ResourceType, obj: Obj, q: Mapping[str, str], warnings: list[str]
    ) -> None:
        """`fieldValidation=Strict|Warn` for custom resources (unknown fields); without the
        parameter the server warns, as kube-apiserver does."""
        mode = q.get("fieldValidation") or "Warn"
        if not rt.custom or mode not in ("Strict", "Warn"):
            return
        version = str(obj.get("apiVersion", "")).rpartition("/")[2]
        unknown = schema.unknown_fields(obj, rt.schema(version))
        if not unknown:
            return
        texts = [f'unknown field "{u}"' for u in unknown]
        if mode == "Strict":
            raise errors.bad_request(
                f'{rt.kind} in version "{version}" cannot be handled as a {rt.kind}: '
                "strict decoding error: " + ", ".join(texts)
            )
        warnings.extend(texts)

    def _validate(self, rt: ResourceType, obj: Obj, old: Obj | None) -> None:
        causes = builtins.validate(rt, obj, old)
        if causes:
            raise errors.invalid(rt.kind, rt.group, obj["metadata"].get("name", ""), causes)

    def _generate_name(self, prefix: str) -> str:
        return prefix + "".join(self.rng.choice(GENERATE_ALPHABET) for _ in range(5))

    # -- create -------------------------------------------------------------------------

    async def _create(
        self, t: Target, body: Obj, q: Mapping[str, str], user: Obj, obj: Obj | None = None
    ) -> Response:
        rt = t.rt
        if rt.key == ACCESS_REVIEW_KEY:
            # There is no authorization: every user may do everything.
            review = self._decode_object(t, body)
            review["status"] = {"allowed": True, "reason": "the gpumix emulator does not authorize"}
            return Response(201, review)
        if obj is None:
            obj = self._decode_object(t, body)
        meta = obj["metadata"]
        if not meta.get("name") and not meta.get("generateName"):
            raise errors.invalid(
                rt.kind,
                rt.group,
                "",
                [errors.field_required("metadata.name", "name or generateName is required")],
            )
        self._require_namespace(rt, t.namespace)
        attrs = self._attrs(
            t,
            "CREATE",
            str(meta.get("name") or ""),
            q,
            user,
            None,
            self._options("CreateOptions", q),
        )
        warnings: list[str] = []
        if self.chain.has_webhooks():
            mutated, warnings = await self.chain.mutate(
                attrs, obj, lambda o: builtins.default(rt, t.version, o)
            )
            assert mutated is not None
            obj = mutated
        self._field_validation(rt, obj, q, warnings)
        stored = self._to_storage(rt, obj)
        meta = stored["metadata"]
        if not meta.get("name"):
            meta["name"] = self._generate_name(str(meta.get("generateName", "")))
        if rt.namespaced:
            meta["namespace"] = t.namespace
        for k in (
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ):
            meta.pop(k, None)
        if rt.has_generation:
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        if rt.status and rt.key not in STATUS_KEPT_ON_CREATE:
            stored.pop("status", None)
        builtins.prepare(rt, stored)
        if rt.key == CRD_KEY:
            stored["status"] = builtins.crd_status(stored, timestamp(self.store.clock()))
        self._validate(rt, stored, None)
        if self.chain.has_webhooks():
            warnings += await self.chain.validate(attrs, self._out(rt, stored, t.version))
        if attrs.dry_run:
            if self.store.get(rt.key, t.namespace, meta["name"]) is not None:
                raise errors.already_exists(rt.plural, rt.group, meta["name"])
            meta.setdefault("uid", "00000000-0000-0000-0000-000000000000")
            meta.setdefault("creationTimestamp", timestamp(self.store.clock()))
            return Response(201, self._out(rt, stored, t.version), warnings)
        if rt.key == CRD_KEY:
            self._check_crd_conflict(stored)
        self.store.insert(rt, stored)
        self._after_write(rt, stored, None)
        latest = self.store.get(rt.key, t.namespace, meta["name"]) or stored
        return Response(201, self._out(rt, latest, t.version), warnings)

    # -- update -------------------------------------------------------------------------

    async def _update(self, t: Target, body: Obj, q: Mapping[str, str], user: Obj) -> Response:
        return await self._retrying(t, lambda: self._update_once(t, body, q, user))

    async def _update_once(self, t: Target, body: Obj, q: Mapping[str, str], user: Obj) -> Response:
        obj = self._decode_object(t, body)
        body_name = obj["metadata"].get("name")
        if body_name and body_name != t.name:
            raise errors.bad_request(
                f"the name of the object ({body_name}) does not match the "
                f"name on the URL ({t.name})"
            )
        obj["metadata"]["name"] = t.name
        current = self._current(t)
        if rt_custom_needs_version(t.rt) and not obj["metadata"].get("resourceVersion"):
            # Custom resources do not allow unconditional updates.
            raise errors.invalid(
                t.rt.kind,
                t.rt.group,
                t.name,
                [
                    errors.field_invalid(
                        "metadata.resourceVersion", 0, "must be specified for an update"
                    )
                ],
            )
        return await self._write(t, current, obj, q, user, obj["metadata"].get("resourceVersion"))

    async def _write(
        self,
        t: Target,
        current: Obj,
        obj: Obj,
        q: Mapping[str, str],
        user: Obj,
        precondition_rv: str | None,
    ) -> Response:
        """Update `current` to `obj` (request version) for the main resource or `/status`."""
        rt = t.rt
        old_out = self._out(rt, current, t.version)
        attrs = self._attrs(
            t, "UPDATE", t.name, q, user, old_out, self._options("UpdateOptions", q), sub=t.sub
        )
        warnings: list[str] = []
        if self.chain.has_webhooks():
            mutated, warnings = await self.chain.mutate(
                attrs, obj, lambda o: builtins.default(rt, t.version, o)
            )
            assert mutated is not None
            obj = mutated
        self._check_conflict(t, current, precondition_rv)
        self._field_validation(rt, obj, q, warnings)
        stored = self._to_storage(rt, obj)
        self._keep_server_fields(rt, stored, current, t.sub)
        builtins.prepare(rt, stored)
        self._validate(rt, stored, current)
        if self.chain.has_webhooks():
            warnings += await self.chain.validate(attrs, self._out(rt, stored, t.version))
        self._still_current(t, current, precondition_rv)
        if _same(stored, current):
            return Response(200, old_out, warnings)
        if attrs.dry_run:
            return Response(200, self._out(rt, stored, t.version), warnings)
        self._replace(t, stored, current, precondition_rv)
        final = self._after_write(rt, stored, current)
        return Response(200, self._out(rt, final, t.version), warnings)

    async def _retrying(self, t: Target, attempt: Callable[[], Awaitable[Response]]) -> Response:
        for _ in range(MAX_RETRIES):
            try:
                return await attempt()
            except _Changed:
                continue
        raise errors.conflict(t.rt.plural, t.rt.group, t.name)

    def _still_current(self, t: Target, current: Obj, precondition: str | None) -> None:
        """If another write came in since `current` was read, a request with its own
        resourceVersion gets 409 and one without is redone (`_Changed`)."""
        live = self.store.get(t.rt.key, t.namespace, t.name)
        if live is None:
            raise errors.not_found(t.rt.plural, t.rt.group, t.name)
        if live["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"]:
            if precondition:
                raise errors.conflict(t.rt.plural, t.rt.group, t.name)
            raise _Changed()

    def _replace(self, t: Target, stored: Obj, current: Obj, precondition: str | None) -> None:
        self._still_current(t, current, precondition)
        self.store.replace(t.rt, stored, current["metadata"]["resourceVersion"])

    def _check_conflict(self, t: Target, current: Obj, precondition_rv: str | None) -> None:
        if self.faults.take_conflict(t.rt.key, t.namespace, t.name):
            raise errors.conflict(t.rt.plural, t.rt.group, t.name)
        if precondition_rv and precondition_rv != current["metadata"]["resourceVersion"]:
            raise errors.conflict(t.rt.plural, t.rt.group, t.name)

    def _keep_server_fields(self, rt: ResourceType, stored: Obj, current: Obj, sub: str) -> None:
        meta, old_meta = stored["metadata"], current["metadata"]
        if sub == "status":
            status = stored.get("status")
            stored.clear()
            stored.update(copy.deepcopy(current))
            if status is None:
                stored.pop("status", None)
            else:
                stored["status"] = status
            return
        for k in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "name",
        ):
            if k in old_meta:
                meta[k] = old_meta[k]
            else:
                meta.pop(k, None)
        if rt.namespaced:
            meta["namespace"] = old_meta.get("namespace", "")
        meta["resourceVersion"] = old_meta.get("resourceVersion")
        if rt.status and rt.key != "namespaces":
            if "status" in current:
                stored["status"] = copy.deepcopy(current["status"])
            else:
                stored.pop("status", None)
        if rt.key == CRD_KEY:
            stored["status"] = builtins.crd_status(stored, timestamp(self.store.clock()))
        if rt.has_generation:
            gen = int(old_meta.get("generation", 1))
            if spec_changed(rt, stored, current):
                gen += 1
            meta["generation"] = gen
        else:
            meta.pop("generation", None)

    # -- patch --------------------------------------------------------------------------

    async def _patch(
        self, t: Target, ctype: str, patch: Any, q: Mapping[str, str], user: Obj
    ) -> Response:
        """Apply `patch` to the live object; retried when the object changes meanwhile
        (while webhooks were being called), like kube-apiserver's patcher."""
        return await self._retrying(t, lambda: self._patch_once(t, ctype, patch, q, user))

    async def _patch_once(
        self, t: Target, ctype: str, patch: Any, q: Mapping[str, str], user: Obj
    ) -> Response:
        rt = t.rt
        if ctype == APPLY_PATCH and not q.get("fieldManager"):
            raise errors.invalid(
                "PatchOptions",
                "meta.k8s.io",
                "",
                [errors.field_required("fieldManager", "is required for apply patch")],
            )
        current = self.store.get(rt.key, t.namespace, t.name)
        if current is None:
            if ctype == APPLY_PATCH and not t.sub and isinstance(patch, dict):
                body = dict(patch)
                meta = dict(body.get("metadata") or {})
                meta["name"] = meta.get("name") or t.name
                body["metadata"] = meta
                if meta["name"] != t.name:
                    raise errors.bad_request(
                        "the name of the object does not match the name on the URL"
                    )
                return await self._create(t, body, q, user)
            raise errors.not_found(rt.plural, rt.group, t.name)
        if t.sub == "scale":
            return await self._write_scale(t, None, (ctype, patch), q, user)
        base = self._out(rt, current, t.version)
        if ctype == APPLY_PATCH and isinstance(patch, dict):
            want = rt.api_version(t.version)
            if patch.get("apiVersion") not in (None, want) or patch.get("kind") not in (
                None,
                rt.kind,
            ):
                raise errors.bad_request(
                    "apiVersion and kind of the applied configuration must match the URL"
                )
        try:
            patched = apply_patch(ctype, base, patch)
        except ApiPatchError as exc:
            raise ApiError(errors.status(422, "Invalid", str(exc))) from None
        meta_any = patched.get("metadata")
        if not isinstance(meta_any, dict):
            raise errors.bad_request("the patch removed metadata")
        meta = meta_any
        if meta.get("name", t.name) != t.name:
            raise errors.bad_request("the patch changes the object's name")
        obj = self._decode_object(t, patched)
        # Only a resourceVersion the patch itself changed is a precondition.
        precondition = meta.get("resourceVersion")
        if precondition == base["metadata"].get("resourceVersion"):
            precondition = None
        return await self._write(t, current, obj, q, user, precondition)

    # -- scale --------------------------------------------------------------------------

    def _scale_of(self, rt: ResourceType, obj: Obj) -> Obj:
        spec_path = rt.scale.spec_replicas if rt.scale else ".spec.replicas"
        status_path = rt.scale.status_replicas if rt.scale else ".status.replicas"
        meta = obj["metadata"]
        scale: Obj = {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                k: meta[k]
                for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                if k in meta
            },
            "spec": {"replicas": _get_path(obj, spec_path) or 0},
            "status": {"replicas": _get_path(obj, status_path) or 0},
        }
        selector = ""
        if rt.scale and rt.scale.selector_from_spec:
            selector = label_selector_string((obj.get("spec") or {}).get("selector"))
        elif rt.scale and rt.scale.label_selector:
            selector = str(_get_path(obj, rt.scale.label_selector) or "")
        if selector:
            scale["status"]["selector"] = selector
        return scale

    async def _write_scale(
        self,
        t: Target,
        body: Obj | None,
        patch: tuple[str, Any] | None,
        q: Mapping[str, str],
        user: Obj,
    ) -> Response:
        rt = t.rt
        assert rt.scale is not None
        current = self._current(t)
        old_scale = self._scale_of(rt, current)
        if patch is not None:
            try:
                new_scale = apply_patch(patch[0], old_scale, patch[1])
            except ApiPatchError as exc:
                raise ApiError(errors.status(422, "Invalid", str(exc))) from None
        else:
            assert body is not None
            new_scale = copy.deepcopy(body)
            if new_scale.get("kind") not in (None, "Scale"):
                raise errors.bad_request(
                    f"the kind in the data ({new_scale.get('kind')}) does "
                    "not match the expected kind (Scale)"
                )
            new_scale.setdefault("metadata", {}).setdefault("name", t.name)
        shapes.check_scale(new_scale)
        new_scale["apiVersion"], new_scale["kind"] = "autoscaling/v1", "Scale"
        attrs = self._attrs(
            t,
            "UPDATE",
            t.name,
            q,
            user,
            old_scale,
            self._options("UpdateOptions", q),
            sub="scale",
            kind=("autoscaling", "v1", "Scale"),
        )
        warnings: list[str] = []
        if self.chain.has_webhooks():
            mutated, warnings = await self.chain.mutate(attrs, new_scale)
            assert mutated is not None
            new_scale = mutated
        precondition = (new_scale.get("metadata") or {}).get("resourceVersion")
        if patch is not None and precondition == old_scale["metadata"].get("resourceVersion"):
            precondition = None
        self._check_conflict(t, current, precondition)
        replicas = (new_scale.get("spec") or {}).get("replicas", 0)
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise errors.invalid(
                "Scale",
                "autoscaling",
                t.name,
                [
                    errors.field_invalid(
                        "spec.replicas", replicas, "must be greater than or equal to 0"
                    )
                ],
            )
        if self.chain.has_webhooks():
            warnings += await self.chain.validate(attrs, new_scale)
        stored = copy.deepcopy(current)
        _set_path(stored, rt.scale.spec_replicas, replicas)
        self._still_current(t, current, precondition)
        if _same(stored, current):
            return Response(200, old_scale, warnings)
        if rt.has_generation:
            stored["metadata"]["generation"] = int(current["metadata"].get("generation", 1)) + 1
        if attrs.dry_run:
            return Response(200, self._scale_of(rt, stored), warnings)
        self._replace(t, stored, current, precondition)
        final = self._after_write(rt, stored, current)
        return Response(200, self._scale_of(rt, final), warnings)

    # -- delete -------------------------------------------------------------------------

    async def _delete(
        self, t: Target, q: Mapping[str, str], options: Obj, user: Obj, current: Obj | None = None
    ) -> Response:
        rt = t.rt
        if current is None:
            current = self._current(t)
        meta = current["metadata"]
        pre = options.get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != meta.get("uid"):
            raise errors.conflict(
                rt.plural,
                rt.group,
                t.name,
                f"Precondition failed: UID in precondition: {pre['uid']}, "
                f"UID in object meta: {meta.get('uid')}",
            )
        if pre.get("resourceVersion") and pre["resourceVersion"] != meta.get("resourceVersion"):
            raise errors.conflict(
                rt.plural,
                rt.group,
                t.name,
                "Precondition failed: ResourceVersion in precondition: "
                f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                f"{meta.get('resourceVersion')}",
            )
        opts = dict(options, kind="DeleteOptions", apiVersion="meta.k8s.io/v1")
        if q.get("dryRun"):
            opts["dryRun"] = [q["dryRun"]]
        t_named = Target(rt, t.version, meta.get("namespace", ""), meta["name"], "", False)
        attrs = self._attrs(
            t_named, "DELETE", meta["name"], q, user, self._out(rt, current, t.version), opts
        )
        warnings: list[str] = []
        if self.chain.has_webhooks():
            _, warnings = await self.chain.mutate(attrs, None)
            warnings += await self.chain.validate(attrs, None)
        if attrs.dry_run:
            return Response(200, self._out(rt, current, t.version), warnings)
        if meta.get("finalizers") or rt.key == "namespaces":
            if not meta.get("deletionTimestamp"):
                marked = copy.deepcopy(current)
                marked["metadata"]["deletionTimestamp"] = timestamp(self.store.clock())
                marked["metadata"]["deletionGracePeriodSeconds"] = 0
                if rt.key == "namespaces":
                    marked.setdefault("status", {})["phase"] = "Terminating"
                self.store.replace(rt, marked, None)
                current = marked
            if rt.key == "namespaces":
                self._empty_namespace(meta["name"])
                if not current["metadata"].get("finalizers"):
                    gone_obj = self.store.remove(rt, "", meta["name"])
                    return Response(200, self._out(rt, gone_obj, t.version), warnings)
            return Response(200, self._out(rt, current, t.version), warnings)
        gone_obj = self.store.remove(rt, t_named.namespace, meta["name"])
        self._after_delete(rt, gone_obj)
        if rt.key == "pods":
            return Response(200, self._out(rt, gone_obj, t.version), warnings)
        return Response(
            200,
            errors.success_status(
                {
                    "name": meta["name"],
                    "group": rt.group,
                    "kind": rt.plural,
                    "uid": meta.get("uid", ""),
                }
            ),
            warnings,
        )

    async def _delete_collection(
        self, t: Target, q: Mapping[str, str], options: Obj, user: Obj
    ) -> Response:
        if "deletecollection" not in t.rt.verbs:
            raise errors.method_not_allowed()
        items = self._select(t, q)
        deleted = []
        for obj in items:
            meta = obj["metadata"]
            sub_t = Target(t.rt, t.version, meta.get("namespace", ""), meta["name"], "", False)
            await self._delete(sub_t, q, options, user, obj)
            deleted.append(self._out(t.rt, obj, t.version))
        return Response(
            200,
            {
                "kind": t.rt.list_kind,
                "apiVersion": t.rt.api_version(t.version),
                "metadata": {"resourceVersion": str(self.store.rv)},
                "items": deleted,
            },
        )

    def _empty_namespace(self, ns: str) -> None:
        for rt in self.registry:
            if not rt.namespaced:
                continue
            for obj in list(self.store.items(rt.key, ns)):
                gone_obj = self.store.remove(rt, ns, obj["metadata"]["name"])
                self._after_delete(rt, gone_obj)

    # -- side effects of writes (what controllers of the real control plane do) --------

    def _after_write(self, rt: ResourceType, obj: Obj, old: Obj | None) -> Obj:
        meta = obj["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            gone_obj = self.store.remove(rt, meta.get("namespace", ""), meta["name"])
            self._after_delete(rt, gone_obj)
            return obj
        if rt.key == CRD_KEY:
            self.registry.add(builtins.crd_resource(obj))
        if rt.key == "deployments.apps" and self.settings.simulate_deployments:
            return self._reflect_deployment(rt, obj)
        return obj

    def _after_delete(self, rt: ResourceType, obj: Obj) -> None:
        if rt.key == CRD_KEY:
            spec = obj.get("spec") or {}
            key = f"{(spec.get('names') or {}).get('plural')}.{spec.get('group')}"
            served = self.registry.by_key(key)
            if served is not None:
                for cr in list(self.store.items(key)):
                    m = cr["metadata"]
                    self.store.remove(served, m.get("namespace", ""), m["name"])
                self.registry.remove(key)
                self.store.drop_type(key)
                for w in list(self.store.watchers):
                    if w.key == key:
                        w.close()
                        self.store.remove_watcher(w)

    def _reflect_deployment(self, rt: ResourceType, obj: Obj) -> Obj:
        replicas = int((obj.get("spec") or {}).get("replicas", 1))
        status = {
            "observedGeneration": obj["metadata"].get("generation", 1),
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
        }
        if replicas == 0:
            status = {"observedGeneration": status["observedGeneration"]}
        if obj.get("status") == status:
            return obj
        new = dict(obj)
        new["metadata"] = dict(obj["metadata"])
        new["status"] = status
        self.store.replace(rt, new, obj["metadata"]["resourceVersion"])
        return new

    def _check_crd_conflict(self, crd: Obj) -> None:
        spec = crd["spec"]
        names = spec["names"]
        existing = self.registry.by_key(f"{names['plural']}.{spec['group']}")
        if existing is not None and not existing.custom:
            raise errors.invalid(
                "CustomResourceDefinition",
                "apiextensions.k8s.io",
                crd["metadata"]["name"],
                [
                    errors.field_invalid(
                        "spec.names.plural", names["plural"], "conflicts with a built-in resource"
                    )
                ],
            )

    # -- list and watch -----------------------------------------------------------------

    def _matcher(self, q: Mapping[str, str]) -> Callable[[Obj], bool]:
        labels = parse_label_selector(q.get("labelSelector"))
        fields = field_matcher(parse_field_selector(q.get("fieldSelector")))

        def match(obj: Obj) -> bool:
            obj_labels = obj["metadata"].get("labels") or {}
            return matches_all(labels, obj_labels) and fields(obj)

        return match

    def _select(self, t: Target, q: Mapping[str, str]) -> list[Obj]:
        """Stored objects whose served form (at `t.version`) matches the selectors."""
        match = self._matcher(q)
        ns = None if (t.all_namespaces or not t.rt.namespaced) else t.namespace
        return [o for o in self.store.items(t.rt.key, ns) if match(self._out(t.rt, o, t.version))]

    def _list(self, t: Target, q: Mapping[str, str], accept: str) -> Response:
        items = self._select(t, q)
        list_meta: Obj = {"resourceVersion": str(self.store.rv)}
        start = 0
        token = q.get("continue")
        if token:
            try:
                state = json.loads(base64.urlsafe_b64decode(token.encode()))
                start = int(state["start"])
                list_meta["resourceVersion"] = str(state["rv"])
            except (ValueError, KeyError, TypeError):
                raise errors.bad_request("continue key is not valid") from None
        limit = int(q.get("limit") or 0)
        page = items[start : start + limit] if limit > 0 else items[start:]
        if limit > 0 and start + limit < len(items):
            list_meta["continue"] = base64.urlsafe_b64encode(
                json.dumps({"start": start + limit, "rv": list_meta["resourceVersion"]}).encode()
            ).decode()
            list_meta["remainingItemCount"] = len(items) - start - limit
        out = [self._out(t.rt, o, t.version) for o in page]
        if "as=Table" in accept:
            return Response(200, tables.table(t.rt, t.version, out, list_meta, q))
        if not t.rt.custom:
            out = [{k: v for k, v in o.items() if k not in ("apiVersion", "kind")} for o in out]
        return Response(
            200,
            {
                "kind": t.rt.list_kind,
                "apiVersion": t.rt.api_version(t.version),
                "metadata": list_meta,
                "items": out,
            },
        )

    def _watch(self, t: Target, q: Mapping[str, str], accept: str = "") -> Response:
        rt = t.rt
        ns = None if (t.all_namespaces or not rt.namespaced) else t.namespace
        match = self._matcher(q)
        rv_param = q.get("resourceVersion") or ""
        bookmarks = q.get("allowWatchBookmarks") in ("1", "true", "True")
        timeout_s = float(q.get("timeoutSeconds") or self.settings.default_watch_timeout_s)
        initial: list[Obj] | None = None
        replay: list[Change] = []
        error: Obj | None = None
        send_initial = q.get("sendInitialEvents")
        if send_initial in ("true", "True", "1") or (
            rv_param in ("", "0") and send_initial is None
        ):
            # The current state as synthetic ADDED events (a "streaming list" when
            # sendInitialEvents=true: it ends with a marked BOOKMARK).
            initial = [
                o for o in self.store.items(rt.key, ns) if match(self._out(rt, o, t.version))
            ]
        elif rv_param in ("", "0"):
            pass
        else:
            try:
                since = int(rv_param)
            except ValueError:
                raise errors.bad_request(f"invalid resource version: {rv_param}") from None
            try:
                replay = self.store.since(rt.key, since)
            except ApiError as exc:
                error = exc.status
        watcher = (
            None
            if error
            else self.store.add_watcher(
                rt.key, ns, lambda o: ns is None or o["metadata"].get("namespace") == ns
            )
        )
        end_marker = send_initial in ("true", "True", "1") and bookmarks
        stream = self._stream(
            t, ns, match, initial or [], replay, error, watcher, bookmarks, timeout_s, end_marker
        )
        if "as=Table" in accept:
            stream = self._tables(t, q, stream)
        return Response(200, stream=stream)

    async def _tables(
        self, t: Target, q: Mapping[str, str], events: AsyncIterator[Obj]
    ) -> AsyncIterator[Obj]:
        """Watch events for `kubectl get -w`: each object becomes a one-row Table."""
        try:
            async for event in events:
                if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                    obj = event["object"]
                    meta = {"resourceVersion": obj["metadata"].get("resourceVersion", "")}
                    event = {
                        "type": event["type"],
                        "object": tables.table(t.rt, t.version, [obj], meta, q),
                    }
                yield event
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _stream(
        self,
        t: Target,
        ns: str | None,
        match: Callable[[Obj], bool],
        initial: list[Obj],
        replay: list[Change],
        error: Obj | None,
        watcher: Any,
        bookmarks: bool,
        timeout_s: float,
        end_marker: bool = False,
    ) -> AsyncIterator[Obj]:
        rt, version = t.rt, t.version
        if error is not None:
            yield {"type": "ERROR", "object": error}
            return
        assert watcher is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            for obj in initial:
                yield {"type": "ADDED", "object": self._out(rt, obj, version)}
            if end_marker:
                yield {
                    "type": "BOOKMARK",
                    "object": {
                        "kind": rt.kind,
                        "apiVersion": rt.api_version(version),
                        "metadata": {
                            "resourceVersion": str(self.store.rv),
                            "annotations": {"k8s.io/initial-events-end": "true"},
                        },
                    },
                }
            for change in replay:
                event = self._event(t, change, ns, match, version)
                if event is not None:
                    yield event
            next_bookmark = loop.time() + self.settings.bookmark_interval_s
            while True:
                now = loop.time()
                if now >= deadline:
                    return
                wait = deadline - now
                if bookmarks:
                    wait = min(wait, max(0.0, next_bookmark - now))
                try:
                    change = await asyncio.wait_for(watcher.queue.get(), wait)
                except TimeoutError:
                    if bookmarks and loop.time() >= next_bookmark:
                        next_bookmark = loop.time() + self.settings.bookmark_interval_s
                        if watcher.queue.empty():
                            yield {
                                "type": "BOOKMARK",
                                "object": {
                                    "kind": rt.kind,
                                    "apiVersion": rt.api_version(version),
                                    "metadata": {"resourceVersion": str(self.store.rv)},
                                },
                            }
                    continue
                if change is None:
                    if watcher.abort:
                        raise ConnectionAbortedError("watch dropped")
                    return
                event = self._event(t, change, ns, match, version)
                if event is not None:
                    yield event
        finally:
            self.store.remove_watcher(watcher)

    def _event(
        self, t: Target, change: Change, ns: str | None, match: Callable[[Obj], bool], version: str
    ) -> Obj | None:
        rt = t.rt
        if ns is not None and change.obj["metadata"].get("namespace") != ns:
            return None
        new_hit = match(self._out(rt, change.obj, version))
        old_hit = change.old is not None and match(self._out(rt, change.old, version))
        kind = change.type
        if kind == "MODIFIED":
            if new_hit and not old_hit:
                kind = "ADDED"
            elif old_hit and not new_hit:
                kind = "DELETED"
            elif not new_hit:
                return None
        elif not new_hit:
            return None
        return {"type": kind, "object": self._out(rt, change.obj, version)}


def _get_path(obj: Obj, path: str) -> Any:
    cur: Any = obj
    for seg in path.strip(".").split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(seg)
    return cur


def _set_path(obj: Obj, path: str, value: Any) -> None:
    segs = path.strip(".").split(".")
    cur = obj
    for seg in segs[:-1]:
        nxt = cur.get(seg)
        if not isinstance(nxt, dict):
            nxt = cur[seg] = {}
        cur = nxt
    cur[segs[-1]] = value


def rt_custom_needs_version(rt: ResourceType) -> bool:
    """Whether a PUT must carry metadata.resourceVersion: custom resources only."""
    return rt.custom


def spec_changed(rt: ResourceType, new: Obj, old: Obj) -> bool:
    """Whether an update changes what bumps metadata.generation: for custom resources
    (and CRDs) anything but metadata and status, for built-in kinds their spec, and for
    Deployments also their annotations."""
    if rt.custom or rt.key == CRD_KEY:
        skip = {"metadata", "status"} if rt.status else {"metadata"}
        return {k: v for k, v in new.items() if k not in skip} != {
            k: v for k, v in old.items() if k not in skip
        }
    if new.get("spec") != old.get("spec"):
        return True
    # kube-apiserver's Deployment strategy also bumps on annotation changes (rollback
    # and pause annotations must be seen by the controller); other built-ins do not.
    if rt.key == DEPLOYMENT_KEY:
        return bool(_annotations(new) != _annotations(old))
    return False


def _annotations(obj: Obj) -> Any:
    return (obj.get("metadata") or {}).get("annotations") or {}


def _same(new: Obj, old: Obj) -> bool:
    def strip(o: Obj) -> Obj:
        out = dict(o)
        meta = dict(o.get("metadata") or {})
        meta.pop("resourceVersion", None)
        meta.pop("managedFields", None)
        out["metadata"] = meta
        return out

    return strip(new) == strip(old)
