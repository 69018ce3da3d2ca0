"""What each component may do, computed from the rendered Roles, ClusterRoles and bindings.

A permission is (scope, apiGroup, resource, verb, resourceName): scope is the namespace of
a RoleBinding or "*" for a ClusterRoleBinding; resourceName is "*" when the rule does not
limit names. The expected sets are written out in full, so any added verb, resource or
binding is a visible change to this file.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import product

import pytest
from manifest_objects import NAMESPACE, OVERLAYS, Obj, Rendered, find

Permission = tuple[str, str, str, str, str]
WRITE_VERBS = {
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "escalate",
    "bind",
    "impersonate",
}
ALL = "*"
WEBHOOK_SA = "gpumix-webhook"
CONTROLLER_SA = "gpumix-controller"


def perms(
    scope: str,
    groups: Iterable[str],
    resources: Iterable[str],
    verbs: Iterable[str],
    names: Iterable[str] = (ALL,),
) -> set[Permission]:
    return set(product([scope], groups, resources, verbs, names))


WEBHOOK_READ = (
    perms(ALL, ["apps"], ["deployments"], ["list", "watch"])
    | perms(ALL, ["autoscaling"], ["horizontalpodautoscalers"], ["list", "watch"])
    | perms(ALL, ["keda.sh"], ["scaledobjects"], ["list", "watch"])
    | perms(ALL, ["autoscaling.aibrix.ai"], ["podautoscalers"], ["list", "watch"])
    | perms(ALL, [""], ["nodes", "namespaces"], ["list", "watch"])
)
WEBHOOK_SELF_MANAGED_TLS = (
    perms(
        ALL,
        ["admissionregistration.k8s.io"],
        ["mutatingwebhookconfigurations", "validatingwebhookconfigurations"],
        ["get", "patch", "update"],
        ["gpumix"],
    )
    | perms(NAMESPACE, [""], ["secrets"], ["get", "update"], ["gpumix-webhook-tls"])
    | perms(NAMESPACE, [""], ["secrets"], ["create"])
)
CONTROLLER = (
    perms(ALL, ["gpumix.io"], ["gpumixes"], ["list", "watch"])
    | perms(ALL, ["gpumix.io"], ["gpumixes/status"], ["patch"])
    | perms(ALL, ["apps"], ["deployments"], ["list", "watch"])
    | perms(ALL, ["apps"], ["deployments/scale"], ["get", "update"])
    | perms(ALL, [""], ["nodes", "pods"], ["list", "watch"])
    | perms(ALL, [""], ["namespaces"], ["list"])
    | perms(ALL, ["autoscaling"], ["horizontalpodautoscalers"], ["list", "watch"])
    | perms(ALL, ["keda.sh"], ["scaledobjects"], ["list", "watch"])
    | perms(ALL, ["autoscaling.aibrix.ai"], ["podautoscalers"], ["list", "watch"])
    | perms(
        ALL,
        ["apiextensions.k8s.io"],
        ["customresourcedefinitions"],
        ["list", "watch"],
        ["podautoscalers.autoscaling.aibrix.ai", "scaledobjects.keda.sh"],
    )
    | perms(ALL, [""], ["configmaps"], ["get"])
    | perms(ALL, [""], ["events"], ["create"])
    | perms(ALL, ["wgpolicyk8s.io"], ["policyreports"], ["get", "create", "update"])
    | perms(
        NAMESPACE, ["coordination.k8s.io"], ["leases"], ["get", "update"], ["gpumix-controller"]
    )
    | perms(NAMESPACE, ["coordination.k8s.io"], ["leases"], ["create"])
)
EXPECTED = {
    "enforce": {WEBHOOK_SA: WEBHOOK_READ | WEBHOOK_SELF_MANAGED_TLS, CONTROLLER_SA: CONTROLLER},
    "audit": {WEBHOOK_SA: WEBHOOK_READ | WEBHOOK_SELF_MANAGED_TLS, CONTROLLER_SA: CONTROLLER},
    # cert-manager writes the Secret and injects the CA: the webhook only reads.
    "cert-manager": {WEBHOOK_SA: WEBHOOK_READ, CONTROLLER_SA: CONTROLLER},
}


def granted(objects: list[Obj]) -> dict[str, set[Permission]]:
    """ServiceAccount name -> permissions, from every binding in the rendered objects."""
    out: dict[str, set[Permission]] = {}
    for binding in objects:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        ref = binding["roleRef"]
        assert ref["apiGroup"] == "rbac.authorization.k8s.io"
        role = find(objects, ref["kind"], ref["name"])  # only roles shipped here, never built-ins
        scope = binding["metadata"]["namespace"] if binding["kind"] == "RoleBinding" else ALL
        if binding["kind"] == "RoleBinding":
            assert role["metadata"].get("namespace", scope) == scope
        granted_here: set[Permission] = set()
        for rule in role["rules"]:
            assert "nonResourceURLs" not in rule
            names = rule.get("resourceNames") or [ALL]
            granted_here |= perms(scope, rule["apiGroups"], rule["resources"], rule["verbs"], names)
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount", subject
            assert subject["namespace"] == NAMESPACE, subject
            out.setdefault(subject["name"], set()).update(granted_here)
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_component_gets_exactly_its_permissions(rendered: Rendered, overlay: str) -> None:
    got = granted(rendered[overlay])
    assert set(got) == {WEBHOOK_SA, CONTROLLER_SA}
    for account, expected in EXPECTED[overlay].items():
        extra, missing = got[account] - expected, expected - got[account]
        assert not extra and not missing, (
            f"{account}: extra {sorted(extra)}, missing {sorted(missing)}"
        )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_wildcards(rendered: Rendered, overlay: str) -> None:
    for role in rendered[overlay]:
        if role["kind"] in ("Role", "ClusterRole"):
            for rule in role["rules"]:
                for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                    assert "*" not in rule.get(field, []), (role["metadata"]["name"], rule)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_webhook_writes_only_its_secret_and_its_configurations(
    rendered: Rendered, overlay: str
) -> None:
    writes = {p for p in granted(rendered[overlay])[WEBHOOK_SA] if p[3] in WRITE_VERBS}
    for scope, group, resource, verb, name in writes:
        if resource == "secrets":
            assert (scope, group) == (NAMESPACE, "")
            # create cannot be limited by name in RBAC; everything else is.
            assert name == "gpumix-webhook-tls" or verb == "create"
        else:
            assert group == "admissionregistration.k8s.io"
            assert resource in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations")
            assert name == "gpumix" and verb in ("patch", "update")
    secret_reads = {p for p in granted(rendered[overlay])[WEBHOOK_SA] if p[2] == "secrets"}
    assert all(p[4] == "gpumix-webhook-tls" or p[3] == "create" for p in secret_reads)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_controller_changes_replicas_only_through_scale(rendered: Rendered, overlay: str) -> None:
    got = granted(rendered[overlay])[CONTROLLER_SA]
    assert not any(p[2] == "secrets" for p in got)
    assert not any(p[2] == "deployments" and p[3] in WRITE_VERBS for p in got)
    assert {p[3] for p in got if p[2] == "deployments/scale"} == {"get", "update"}
    writes = {(p[1], p[2]) for p in got if p[3] in WRITE_VERBS}
    assert writes == {
        ("gpumix.io", "gpumixes/status"),
        ("apps", "deployments/scale"),
        ("", "events"),
        ("wgpolicyk8s.io", "policyreports"),
        ("coordination.k8s.io", "leases"),
    }
    assert all(p[0] == NAMESPACE for p in got if p[2] == "leases")
