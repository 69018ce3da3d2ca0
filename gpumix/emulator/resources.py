"""Resource types the emulator serves: the built-in ones and those registered by CRDs.

A `ResourceType` is keyed by group and plural; it is stored once (in its storage
version, the first of `versions`) and served at every version in `versions`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
SUB_VERBS = ("get", "patch", "update")


@dataclass(frozen=True)
class ScaleSpec:
    """Where a resource keeps what its `/scale` subresource shows (JSON paths as dotted keys)."""

    spec_replicas: str = ".spec.replicas"
    status_replicas: str = ".status.replicas"
    label_selector: str | None = ".status.selector"
    # Deployments expose spec.selector (a LabelSelector), rendered as a string.
    selector_from_spec: bool = False


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    type: str
    json_path: str
    description: str = ""
    priority: int = 0


@dataclass(frozen=True)
class ResourceType:
    group: str
    versions: tuple[str, ...]
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status: bool = False
    scale: ScaleSpec | None = None
    verbs: tuple[str, ...] = ALL_VERBS
    custom: bool = False
    schemas: tuple[tuple[str, Any], ...] = ()
    columns: tuple[tuple[str, tuple[PrinterColumn, ...]], ...] = ()
    has_generation: bool = True
    extra_sub: tuple[str, ...] = field(default=())

    @property
    def key(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def storage_version(self) -> str:
        return self.versions[0]

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version

    def schema(self, version: str) -> Any:
        for v, s in self.schemas:
            if v == version:
                return s
        return None

    def printer_columns(self, version: str) -> tuple[PrinterColumn, ...]:
        for v, cols in self.columns:
            if v == version:
                return cols
        return ()


def _rt(
    group: str, versions: Iterable[str], plural: str, kind: str, namespaced: bool, **kw: Any
) -> ResourceType:
    return ResourceType(
        group=group,
        versions=tuple(versions),
        plural=plural,
        singular=kind.lower(),
        kind=kind,
        namespaced=namespaced,
        **kw,
    )


DEPLOYMENT_SCALE = ScaleSpec(".spec.replicas", ".status.replicas", None, selector_from_spec=True)

BUILTINS: tuple[ResourceType, ...] = (
    _rt(
        "",
        ["v1"],
        "namespaces",
        "Namespace",
        False,
        short_names=("ns",),
        status=True,
        has_generation=False,
        extra_sub=("finalize",),
        verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
    ),
    _rt("", ["v1"], "nodes", "Node", False, short_names=("no",), status=True, has_generation=False),
    _rt("", ["v1"], "pods", "Pod", True, short_names=("po",), categories=("all",), status=True),
    _rt("", ["v1"], "configmaps", "ConfigMap", True, short_names=("cm",), has_generation=False),
    _rt("", ["v1"], "secrets", "Secret", True, has_generation=False),
    _rt("", ["v1"], "events", "Event", True, short_names=("ev",), has_generation=False),
    _rt(
        "",
        ["v1"],
        "serviceaccounts",
        "ServiceAccount",
        True,
        short_names=("sa",),
        has_generation=False,
    ),
    _rt(
        "",
        ["v1"],
        "services",
        "Service",
        True,
        short_names=("svc",),
        categories=("all",),
        status=True,
        has_generation=False,
    ),
    _rt(
        "events.k8s.io", ["v1"], "events", "Event", True, short_names=("ev",), has_generation=False
    ),
    _rt(
        "apps",
        ["v1"],
        "deployments",
        "Deployment",
        True,
        short_names=("deploy",),
        categories=("all",),
        status=True,
        scale=DEPLOYMENT_SCALE,
    ),
    _rt(
        "autoscaling",
        ["v2", "v1"],
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
        True,
        short_names=("hpa",),
        categories=("all",),
        status=True,
        has_generation=False,
    ),
    _rt("coordination.k8s.io", ["v1"], "leases", "Lease", True, has_generation=False),
    _rt(
        "admissionregistration.k8s.io",
        ["v1"],
        "mutatingwebhookconfigurations",
        "MutatingWebhookConfiguration",
        False,
        categories=("api-extensions",),
    ),
    _rt(
        "admissionregistration.k8s.io",
        ["v1"],
        "validatingwebhookconfigurations",
        "ValidatingWebhookConfiguration",
        False,
        categories=("api-extensions",),
    ),
    _rt(
        "authorization.k8s.io",
        ["v1"],
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        False,
        verbs=("create",),
        has_generation=False,
    ),
    _rt(
        "apiextensions.k8s.io",
        ["v1"],
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        short_names=("crd", "crds"),
        categories=("api-extensions",),
        status=True,
    ),
)


class Registry:
    """The set of served resource types; CRDs add and remove entries at run time."""

    def __init__(self, types: Iterable[ResourceType] = BUILTINS) -> None:
        self._by_key: dict[str, ResourceType] = {}
        for rt in types:
            self.add(rt)

    def add(self, rt: ResourceType) -> None:
        self._by_key[rt.key] = rt

    def remove(self, key: str) -> None:
        self._by_key.pop(key, None)

    def __iter__(self) -> Iterator[ResourceType]:
        return iter(list(self._by_key.values()))

    def by_key(self, key: str) -> ResourceType | None:
        return self._by_key.get(key)

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        rt = self._by_key.get(f"{plural}.{group}" if group else plural)
        if rt is None or version not in rt.versions:
            return None
        return rt

    def for_kind(self, api_version: str, kind: str) -> ResourceType | None:
        group, _, version = api_version.rpartition("/")
        for rt in self._by_key.values():
            if rt.group == group and rt.kind == kind and version in rt.versions:
                return rt
        return None

    def resolve(self, name: str) -> ResourceType:
        """Find a type by plural, singular, kind or short name, optionally `.group`-qualified."""
        low = name.lower()
        found = self._by_key.get(low)
        if found is not None:
            return found
        for rt in self._by_key.values():
            names = {rt.plural, rt.singular, rt.kind.lower(), *rt.short_names}
            if low in names and rt.group in ("", "apps", "autoscaling", "coordination.k8s.io"):
                return rt
            for n in names:
                if low == f"{n}.{rt.group}":
                    return rt
        for rt in self._by_key.values():
            if low in {rt.plural, rt.singular, rt.kind.lower(), *rt.short_names}:
                return rt
        raise KeyError(name)

    def groups(self) -> dict[str, list[str]]:
        """Group name to served versions, preferred (storage) version first."""
        out: dict[str, list[str]] = {}
        for rt in self._by_key.values():
            versions = out.setdefault(rt.group, [])
            for v in rt.versions:
                if v not in versions:
                    versions.append(v)
        return out

    # -- discovery documents ----------------------------------------------------------

    def api_versions(self, server_address: str) -> dict[str, Any]:
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
            ],
        }

    def api_group(self, group: str) -> dict[str, Any] | None:
        versions = self.groups().get(group)
        if not versions or not group:
            return None
        ordered = _order_versions(versions)
        return {
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": group,
            "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in ordered],
            "preferredVersion": {"groupVersion": f"{group}/{ordered[0]}", "version": ordered[0]},
        }

    def api_group_list(self) -> dict[str, Any]:
        groups = []
        for g in sorted(self.groups()):
            doc = self.api_group(g)
            if doc is not None:
                doc = dict(doc)
                doc.pop("kind")
                doc.pop("apiVersion")
                groups.append(doc)
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def resource_list(self, group: str, version: str) -> dict[str, Any] | None:
        entries: list[dict[str, Any]] = []
        for rt in sorted(self._by_key.values(), key=lambda r: r.plural):
            if rt.group != group or version not in rt.versions:
                continue
            entry: dict[str, Any] = {
                "name": rt.plural,
                "singularName": rt.singular,
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": list(rt.verbs),
            }
            if rt.short_names:
                entry["shortNames"] = list(rt.short_names)
            if rt.categories:
                entry["categories"] = list(rt.categories)
            entries.append(entry)
            if rt.status:
                entries.append(
                    {
                        "name": f"{rt.plural}/status",
                        "singularName": "",
                        "namespaced": rt.namespaced,
                        "kind": rt.kind,
                        "verbs": list(SUB_VERBS),
                    }
                )
            if rt.scale is not None:
                entries.append(
                    {
                        "name": f"{rt.plural}/scale",
                        "singularName": "",
                        "namespaced": rt.namespaced,
                        "group": "autoscaling",
                        "version": "v1",
                        "kind": "Scale",
                        "verbs": list(SUB_VERBS),
                    }
                )
            for sub in rt.extra_sub:
                entries.append(
                    {
                        "name": f"{rt.plural}/{sub}",
                        "singularName": "",
                        "namespaced": rt.namespaced,
                        "kind": rt.kind,
                        "verbs": ["update"],
                    }
                )
        if not entries:
            return None
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": entries,
        }


def _order_versions(versions: list[str]) -> list[str]:
    """Kubernetes version priority: GA > beta > alpha, higher numbers first."""

    def rank(v: str) -> tuple[int, int, int]:
        import re

        m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", v)
        if not m:
            return (3, 0, 0)
        level = {"": 0, "beta": 1, "alpha": 2}[m.group(2) or ""]
        return (level, -int(m.group(1)), -int(m.group(3) or 0))

    return sorted(versions, key=rank)
