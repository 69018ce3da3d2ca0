"""The controller's ServiceAccount may do exactly what its code does, as the real authorizer
sees it: ``kubectl auth can-i --list --as=system:serviceaccount:gpumix-system:gpumix-controller``
on a real kube-apiserver with the shipped manifests applied.

The expected tables are written out in full (one row per resource: names, verbs), so any
verb or resource added to ``manifests/base/controller-rbac.yaml`` is a visible change here
and must come with the code that uses it (docs/controller.md, "Running it").
"""

from __future__ import annotations

import re

import pytest

from .envtest import Envtest
from .gpumix_env import Obj

SA = "system:serviceaccount:gpumix-system:gpumix-controller"
# what every authenticated user may do (system:basic-user and friends), not ours to check
BUILT_IN = {
    "selfsubjectreviews.authentication.k8s.io",
    "selfsubjectaccessreviews.authorization.k8s.io",
    "selfsubjectrulesreviews.authorization.k8s.io",
}
Row = tuple[str, frozenset[str], frozenset[str]]

CLUSTER_WIDE: set[Row] = {
    ("gpumixes.gpumix.io", frozenset(), frozenset({"list", "watch"})),
    ("gpumixes.gpumix.io/status", frozenset(), frozenset({"patch"})),
    ("deployments.apps", frozenset(), frozenset({"list", "watch"})),
    ("deployments.apps/scale", frozenset(), frozenset({"get", "update"})),
    ("nodes", frozenset(), frozenset({"list", "watch"})),
    ("pods", frozenset(), frozenset({"list", "watch"})),
    ("namespaces", frozenset(), frozenset({"list"})),
    ("horizontalpodautoscalers.autoscaling", frozenset(), frozenset({"list", "watch"})),
    ("scaledobjects.keda.sh", frozenset(), frozenset({"list", "watch"})),
    ("podautoscalers.autoscaling.aibrix.ai", frozenset(), frozenset({"list", "watch"})),
    (
        "customresourcedefinitions.apiextensions.k8s.io",
        frozenset({"podautoscalers.autoscaling.aibrix.ai"}),
        frozenset({"list", "watch"}),
    ),
    (
        "customresourcedefinitions.apiextensions.k8s.io",
        frozenset({"scaledobjects.keda.sh"}),
        frozenset({"list", "watch"}),
    ),
    ("configmaps", frozenset(), frozenset({"get"})),
    ("events", frozenset(), frozenset({"create"})),
    ("policyreports.wgpolicyk8s.io", frozenset(), frozenset({"get", "create", "update"})),
}
LEASE: set[Row] = {
    ("leases.coordination.k8s.io", frozenset({"gpumix-controller"}), frozenset({"get", "update"})),
    ("leases.coordination.k8s.io", frozenset(), frozenset({"create"})),
}
ROW = re.compile(r"^(\S*)\s+\[(.*?)\]\s+\[(.*?)\]\s+\[(.*?)\]\s*$")


def can_i_list(apiserver: Envtest, namespace: str) -> set[Row]:
    out = apiserver.kubectl("auth", "can-i", "--list", f"--as={SA}", "-n", namespace).stdout
    rows: set[Row] = set()
    lines = out.strip().splitlines()
    assert lines and lines[0].split()[0] == "Resources", out
    for line in lines[1:]:
        m = ROW.match(line)
        assert m is not None, f"unreadable row {line!r} in:\n{out}"
        resource, _urls, names, verbs = m.groups()
        if not resource or resource in BUILT_IN:  # non-resource URLs (discovery) and self-review
            continue
        rows.add((resource, frozenset(names.split()), frozenset(verbs.split())))
    return rows


@pytest.mark.parametrize(
    ("namespace", "expected"),
    [("default", CLUSTER_WIDE), ("gpumix-system", CLUSTER_WIDE | LEASE)],
)
def test_controller_service_account_gets_exactly_what_the_code_uses(
    apiserver: Envtest, gpumix_manifests: list[Obj], namespace: str, expected: set[Row]
) -> None:
    got = can_i_list(apiserver, namespace)
    extra, missing = got - expected, expected - got
    assert not extra and not missing, f"extra {sorted(extra)}; missing {sorted(missing)}"
