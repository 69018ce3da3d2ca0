"""The dynamic admission chain: mutating then validating webhooks, as kube-apiserver runs it.

Webhook configurations are read from the store on every request. Each matching
webhook gets an `admission.k8s.io/v1` AdmissionReview over HTTPS (the `caBundle` is the
only trusted CA), with `?timeout=Ns` on the URL like the real server. Mutating
webhooks run one after the other (sorted by configuration name, then in order);
validating webhooks run concurrently on the final object.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jsonpatch

from .certs import client_context
from .errors import ApiError, bad_request, internal, status
from .resources import ResourceType
from .selectors import label_selector_matches
from .store import Store

Obj = dict[str, Any]
MUTATING_KEY = "mutatingwebhookconfigurations.admissionregistration.k8s.io"
VALIDATING_KEY = "validatingwebhookconfigurations.admissionregistration.k8s.io"

# (namespace, name, port, path) -> URL of a webhook configured with `clientConfig.service`.
ServiceResolver = Callable[[str, str, int, str], str]


def default_service_resolver(namespace: str, name: str, port: int, path: str) -> str:
    return f"https://{name}.{namespace}.svc:{port}{path}"


@dataclass(frozen=True)
class Attributes:
    """What is being admitted (the request's view, before any version matching)."""

    rt: ResourceType
    version: str
    subresource: str
    operation: str  # CREATE | UPDATE | DELETE | CONNECT
    namespace: str
    name: str
    dry_run: bool
    user: Obj
    options: Obj | None
    old: Obj | None  # in the request's version (or a Scale for /scale)
    kind: tuple[str, str, str]  # group, version, kind of the object under admission
    convert: Callable[[Obj, str], Obj] | None = None  # to another served version


@dataclass
class AdmissionCall:
    """One webhook call, kept in `Emulator.admission_log` for tests."""

    phase: str  # "mutating" | "validating"
    configuration: str
    webhook: str
    operation: str
    resource: str
    subresource: str
    namespace: str
    name: str
    dry_run: bool
    request: Obj
    response: Obj | None = None
    outcome: str = ""  # allowed | patched | denied | error | ignored-error
    error: str = ""
    warnings: list[str] = field(default_factory=list)
    duration_s: float = 0.0


@dataclass
class _Hook:
    configuration: str
    spec: Obj


class WebhookError(Exception):
    """Calling a webhook failed: subject to its failurePolicy."""


class AdmissionChain:
    def __init__(
        self,
        store: Store,
        resolver: ServiceResolver = default_service_resolver,
        log_limit: int = 10_000,
    ) -> None:
        self.store = store
        self.resolver = resolver
        self.log: list[AdmissionCall] = []
        self.log_limit = log_limit
        self._session: aiohttp.ClientSession | None = None
        self._ssl_cache: dict[str, ssl.SSLContext] = {}
        # Tests may replace the transport (e.g. to count calls) without a server.
        self.transport: (
            Callable[[str, Obj, ssl.SSLContext | None, float], Awaitable[tuple[int, bytes]]] | None
        ) = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- configuration ----------------------------------------------------------------

    def _hooks(self, key: str) -> list[_Hook]:
        hooks = []
        for cfg in self.store.items(key):
            for wh in cfg.get("webhooks") or []:
                hooks.append(_Hook(cfg["metadata"]["name"], wh))
        return hooks

    def has_webhooks(self) -> bool:
        return bool(self.store.count(MUTATING_KEY) or self.store.count(VALIDATING_KEY))

    # -- matching ---------------------------------------------------------------------

    def _match(self, hook: Obj, attrs: Attributes, obj: Obj | None) -> str | None:
        """The version to send the object in, or None when the webhook does not match."""
        rules = hook.get("rules") or []
        version = None
        if _rules_match(rules, attrs, attrs.version):
            version = attrs.version
        elif hook.get("matchPolicy", "Equivalent") == "Equivalent" and not attrs.subresource:
            for v in attrs.rt.versions:
                if v != attrs.version and _rules_match(rules, attrs, v):
                    version = v
                    break
        if version is None:
            return None
        if not self._namespace_matches(hook.get("namespaceSelector"), attrs, obj):
            return None
        sel = hook.get("objectSelector")
        if sel:
            labels_new = ((obj or {}).get("metadata") or {}).get("labels") or {}
            labels_old = ((attrs.old or {}).get("metadata") or {}).get("labels") or {}
            hit_new = obj is not None and label_selector_matches(sel, labels_new)
            hit_old = attrs.old is not None and label_selector_matches(sel, labels_old)
            if not (hit_new or hit_old):
                return None
        return version

    def _namespace_matches(self, selector: Obj | None, attrs: Attributes, obj: Obj | None) -> bool:
        if not selector:
            return True
        if attrs.rt.key == "namespaces":
            source = obj if obj is not None else attrs.old
            labels = dict(((source or {}).get("metadata") or {}).get("labels") or {})
            labels.setdefault("kubernetes.io/metadata.name", attrs.name)
            return label_selector_matches(selector, labels)
        if not attrs.rt.namespaced:
            return True
        ns = self.store.get("namespaces", "", attrs.namespace)
        labels = dict(((ns or {}).get("metadata") or {}).get("labels") or {})
        labels.setdefault("kubernetes.io/metadata.name", attrs.namespace)
        return label_selector_matches(selector, labels)

    # -- the two phases ---------------------------------------------------------------

    async def mutate(
        self, attrs: Attributes, obj: Obj | None, redefault: Callable[[Obj], None] | None = None
    ) -> tuple[Obj | None, list[str]]:
        hooks = sorted(self._hooks(MUTATING_KEY), key=lambda h: h.configuration)
        warnings: list[str] = []
        after: list[str | None] = []
        for hook in hooks:
            obj = await self._mutate_one(hook, attrs, obj, warnings, redefault)
            after.append(_digest(obj))
        final = _digest(obj)
        for i, hook in enumerate(hooks):
            if (
                hook.spec.get("reinvocationPolicy") == "IfNeeded"
                and after[i] != final
                and self._match(hook.spec, attrs, obj) is not None
            ):
                obj = await self._mutate_one(hook, attrs, obj, warnings, redefault)
        return obj, warnings

    async def _mutate_one(
        self,
        hook: _Hook,
        attrs: Attributes,
        obj: Obj | None,
        warnings: list[str],
        redefault: Callable[[Obj], None] | None,
    ) -> Obj | None:
        version = self._match(hook.spec, attrs, obj)
        if version is None:
            return obj
        sent = obj
        if obj is not None and version != attrs.version and attrs.convert is not None:
            sent = attrs.convert(obj, version)
        response, entry = await self._call("mutating", hook, attrs, sent, version, warnings)
        if response is None or not response.get("patch"):
            return obj
        if response.get("patchType") != "JSONPatch":
            raise internal(
                f'admission webhook "{hook.spec.get("name")}" returned an '
                f"unsupported patchType {response.get('patchType')!r}"
            )
        try:
            ops = json.loads(base64.b64decode(response["patch"]))
            patched = jsonpatch.apply_patch(sent, ops, in_place=False)
        except Exception as exc:  # any malformed patch is the webhook's fault
            raise internal(
                f'admission webhook "{hook.spec.get("name")}" returned an invalid patch: {exc}'
            ) from None
        if not isinstance(patched, dict):
            raise internal(
                f'admission webhook "{hook.spec.get("name")}" patched the object into a non-object'
            )
        if redefault is not None and version == attrs.version:
            redefault(patched)
        if version != attrs.version and attrs.convert is not None:
            patched = attrs.convert(patched, attrs.version)
        entry.outcome = "patched"
        result: Obj = patched
        return result

    async def validate(self, attrs: Attributes, obj: Obj | None) -> list[str]:
        warnings: list[str] = []
        tasks = []
        for hook in sorted(self._hooks(VALIDATING_KEY), key=lambda h: h.configuration):
            version = self._match(hook.spec, attrs, obj)
            if version is None:
                continue
            sent = obj
            if obj is not None and version != attrs.version and attrs.convert is not None:
                sent = attrs.convert(obj, version)
            tasks.append(self._call("validating", hook, attrs, sent, version, warnings))
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return warnings

    # -- one call ---------------------------------------------------------------------

    def _review(self, attrs: Attributes, obj: Obj | None, version: str) -> Obj:
        group, kind_version, kind = attrs.kind
        if not attrs.subresource:
            kind_version = version
        old = attrs.old
        if old is not None and version != attrs.version and attrs.convert is not None:
            old = attrs.convert(old, version)
        request: Obj = {
            "uid": str(uuid.uuid4()),
            "kind": {"group": group, "version": kind_version, "kind": kind},
            "resource": {"group": attrs.rt.group, "version": version, "resource": attrs.rt.plural},
            "requestKind": {
                "group": group,
                "version": attrs.kind[1] if attrs.subresource else attrs.version,
                "kind": kind,
            },
            "requestResource": {
                "group": attrs.rt.group,
                "version": attrs.version,
                "resource": attrs.rt.plural,
            },
            "name": attrs.name,
            "operation": attrs.operation,
            "userInfo": attrs.user,
            "object": obj,
            "oldObject": old,
            "dryRun": attrs.dry_run,
            "options": attrs.options,
        }
        if attrs.rt.namespaced:
            request["namespace"] = attrs.namespace
        elif attrs.rt.key == "namespaces" and attrs.name:
            # kube-apiserver reads a Namespace's own name as the request's namespace.
            request["namespace"] = attrs.name
        if attrs.subresource:
            request["subResource"] = attrs.subresource
            request["requestSubResource"] = attrs.subresource
        if not attrs.name:
            request.pop("name")
        return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}

    async def _call(
        self,
        phase: str,
        hook: _Hook,
        attrs: Attributes,
        obj: Obj | None,
        version: str,
        warnings: list[str],
    ) -> tuple[Obj | None, AdmissionCall]:
        spec = hook.spec
        name = str(spec.get("name", ""))
        review = self._review(attrs, obj, version)
        uid = review["request"]["uid"]
        entry = AdmissionCall(
            phase,
            hook.configuration,
            name,
            attrs.operation,
            attrs.rt.plural,
            attrs.subresource,
            attrs.namespace,
            attrs.name,
            attrs.dry_run,
            copy.deepcopy(review),
        )
        self.log.append(entry)
        if len(self.log) > self.log_limit:
            del self.log[: len(self.log) - self.log_limit]
        if attrs.dry_run and spec.get("sideEffects") not in ("None", "NoneOnDryRun"):
            entry.outcome = "error"
            raise bad_request(f'admission webhook "{name}" does not support dry run')
        started = time.monotonic()
        timeout_s = float(spec.get("timeoutSeconds") or 10)
        try:
            url = self._url(spec, timeout_s)
            response = await self._post(url, review, spec, timeout_s)
            result = _check_response(response, uid, phase)
        except WebhookError as exc:
            entry.duration_s = time.monotonic() - started
            entry.error = str(exc)
            if spec.get("failurePolicy", "Fail") == "Ignore":
                entry.outcome = "ignored-error"
                return None, entry
            entry.outcome = "error"
            raise internal(f'failed calling webhook "{name}": {exc}') from None
        entry.duration_s = time.monotonic() - started
        entry.response = result
        raw_warnings = result.get("warnings")
        for w in raw_warnings if isinstance(raw_warnings, list) else []:
            if isinstance(w, str):
                warnings.append(w)
                entry.warnings.append(w)
        if not result.get("allowed"):
            entry.outcome = "denied"
            raise ApiError(_denied_status(name, result.get("status")))
        entry.outcome = "allowed"
        return result, entry

    def _url(self, spec: Obj, timeout_s: float) -> str:
        cc = spec.get("clientConfig") or {}
        if cc.get("url"):
            base = str(cc["url"])
        elif isinstance(cc.get("service"), dict):
            svc = cc["service"]
            base = self.resolver(
                str(svc.get("namespace", "")),
                str(svc.get("name", "")),
                int(svc.get("port", 443)),
                str(svc.get("path") or ""),
            )
        else:
            raise WebhookError("no clientConfig url or service")
        sep = "&" if "?" in base else "?"
        return f"{base}{sep}timeout={int(timeout_s)}s"

    def _ssl(self, spec: Obj) -> ssl.SSLContext | None:
        bundle = (spec.get("clientConfig") or {}).get("caBundle")
        if not bundle:
            return None
        ctx = self._ssl_cache.get(bundle)
        if ctx is None:
            try:
                ctx = client_context(base64.b64decode(bundle))
            except (ValueError, ssl.SSLError) as exc:
                raise WebhookError(f"invalid caBundle: {exc}") from None
            if len(self._ssl_cache) >= 64:
                self._ssl_cache.clear()
            self._ssl_cache[bundle] = ctx
        return ctx

    async def _post(self, url: str, review: Obj, spec: Obj, timeout_s: float) -> Obj:
        ctx = self._ssl(spec)
        shown_url = url
        try:
            if self.transport is not None:
                code, body = await asyncio.wait_for(
                    self.transport(url, review, ctx, timeout_s), timeout_s
                )
            else:
                if self._session is None or self._session.closed:
                    self._session = aiohttp.ClientSession()
                async with self._session.post(
                    url,
                    json=review,
                    ssl=ctx if ctx is not None else True,
                    timeout=aiohttp.ClientTimeout(total=timeout_s),
                    headers={"Accept": "application/json"},
                ) as resp:
                    code, body = resp.status, await resp.read()
        except TimeoutError:
            raise WebhookError(
                f'failed to call webhook: Post "{shown_url}": context deadline exceeded'
            ) from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise WebhookError(
                f'failed to call webhook: Post "{shown_url}": tls: failed to '
                f"verify certificate: {exc.certificate_error}"
            ) from None
        except aiohttp.ClientError as exc:
            raise WebhookError(f'failed to call webhook: Post "{shown_url}": {exc}') from None
        except OSError as exc:
            raise WebhookError(f'failed to call webhook: Post "{shown_url}": {exc}') from None
        if code != 200:
            text = body[:200].decode("utf-8", "replace")
            raise WebhookError(
                f'failed to call webhook: an error on the server ("{text}") '
                f"has prevented the request from succeeding (status {code})"
            )
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise WebhookError(f"received invalid webhook response: {exc}") from None
        if not isinstance(data, dict):
            raise WebhookError("received invalid webhook response: not an object")
        return data


def _check_response(data: Obj, uid: str, phase: str) -> Obj:
    if data.get("apiVersion") != "admission.k8s.io/v1" or data.get("kind") != "AdmissionReview":
        raise WebhookError(
            "received invalid webhook response: expected webhook response of "
            f"admission.k8s.io/v1, Kind=AdmissionReview, got {data.get('apiVersion', '')}, "
            f"Kind={data.get('kind', '')}"
        )
    response = data.get("response")
    if not isinstance(response, dict):
        raise WebhookError("received invalid webhook response: webhook response was absent")
    if response.get("uid") != uid:
        raise WebhookError(
            f'received invalid webhook response: expected response.uid="{uid}", '
            f'got "{response.get("uid", "")}"'
        )
    if not isinstance(response.get("allowed"), bool):
        raise WebhookError("received invalid webhook response: response.allowed is not a bool")
    if phase == "validating" and (response.get("patch") or response.get("patchType")):
        raise WebhookError(
            "received invalid webhook response: validating webhooks may not return patches"
        )
    return response


def _denied_status(name: str, result: Any) -> Obj:
    result = result if isinstance(result, dict) else {}
    code = result.get("code")
    if not isinstance(code, int) or code < 400:
        code = 400
    prefix = f'admission webhook "{name}" denied the request'
    if result.get("message"):
        message = f"{prefix}: {result['message']}"
    elif result.get("reason"):
        message = f"{prefix}: {result['reason']}"
    else:
        message = f"{prefix} without explanation"
    body = status(code, str(result.get("reason") or ""), message, result.get("details"))
    if not body["reason"]:
        body.pop("reason")
    return body


def _rules_match(rules: list[Any], attrs: Attributes, version: str) -> bool:
    for rule in rules:
        if not isinstance(rule, dict):
            continue
        groups = rule.get("apiGroups") or []
        versions = rule.get("apiVersions") or []
        ops = rule.get("operations") or []
        if "*" not in groups and attrs.rt.group not in groups:
            continue
        if "*" not in versions and version not in versions:
            continue
        if "*" not in ops and attrs.operation not in ops:
            continue
        scope = rule.get("scope", "*")
        if scope == "Namespaced" and not attrs.rt.namespaced:
            continue
        if scope == "Cluster" and attrs.rt.namespaced:
            continue
        for res in rule.get("resources") or []:
            name, _, sub = str(res).partition("/")
            if name not in ("*", attrs.rt.plural):
                continue
            if "/" in str(res):
                if sub == "*" or sub == attrs.subresource:
                    return True
            elif not attrs.subresource:
                return True
    return False


def _digest(obj: Obj | None) -> str | None:
    return None if obj is None else json.dumps(obj, sort_keys=True)
