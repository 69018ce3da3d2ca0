"""Invariants of the two webhook configurations, in every overlay."""

from __future__ import annotations

import pytest
import yaml
from manifest_objects import NAMESPACE, OVERLAYS, Obj, Rendered, find

from gpumix.kube.policy import policy_from_mapping

KINDS = {
    "MutatingWebhookConfiguration": ("mutate.gpumix.io", "/mutate"),
    "ValidatingWebhookConfiguration": ("validate.gpumix.io", "/validate"),
}
MAIN_RESOURCES = {
    ("apps", "deployments"),
    ("autoscaling", "horizontalpodautoscalers"),
    ("keda.sh", "scaledobjects"),
    ("autoscaling.aibrix.ai", "podautoscalers"),
}
FAILURE_POLICY = {"enforce": "Fail", "audit": "Ignore", "cert-manager": "Fail"}
EXEMPT = {"kube-system", NAMESPACE}


def webhooks(objects: list[Obj]) -> list[tuple[str, Obj]]:
    out = []
    for kind, (name, _path) in KINDS.items():
        config = find(objects, kind, "gpumix")
        assert [w["name"] for w in config["webhooks"]] == [name]
        out.append((kind, config["webhooks"][0]))
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rules_cover_main_resources_only(rendered: Rendered, overlay: str) -> None:
    for kind, hook in webhooks(rendered[overlay]):
        covered = set()
        for rule in hook["rules"]:
            assert rule["operations"] == ["CREATE", "UPDATE"], kind
            assert rule["scope"] == "Namespaced"
            assert "*" not in rule["apiGroups"] + rule["apiVersions"] + rule["resources"]
            for resource in rule["resources"]:
                assert "/" not in resource, f"{kind} matches the subresource {resource}"
                covered |= {(group, resource) for group in rule["apiGroups"]}
        assert covered == MAIN_RESOURCES, kind


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_admission_contract(rendered: Rendered, overlay: str) -> None:
    for kind, hook in webhooks(rendered[overlay]):
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["sideEffects"] == "None"
        assert hook["matchPolicy"] == "Equivalent"
        assert hook["failurePolicy"] == FAILURE_POLICY[overlay]
        # Short enough that a hung webhook does not hold every write for the default 10 s.
        assert hook["timeoutSeconds"] == 5
        if kind == "MutatingWebhookConfiguration":
            assert hook["reinvocationPolicy"] == "IfNeeded"
        assert "objectSelector" not in hook


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_system_namespaces_are_never_sent(rendered: Rendered, overlay: str) -> None:
    cm = next(o for o in rendered[overlay] if o["metadata"]["name"].startswith("gpumix-policy-"))
    policy = policy_from_mapping(yaml.safe_load(cm["data"]["policy.yaml"]))
    for kind, hook in webhooks(rendered[overlay]):
        selector = hook["namespaceSelector"]
        assert set(selector) == {"matchExpressions"}, kind
        [expression] = selector["matchExpressions"]
        assert expression["key"] == "kubernetes.io/metadata.name"
        assert expression["operator"] == "NotIn"
        assert set(expression["values"]) == EXEMPT
        # The policy exempts the same namespaces that are never sent.
        assert policy.exempt_namespaces == EXEMPT


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_client_config_points_at_the_webhook_service(rendered: Rendered, overlay: str) -> None:
    objects = rendered[overlay]
    service = find(objects, "Service", "gpumix-webhook")
    service_ports = {p["port"]: p["targetPort"] for p in service["spec"]["ports"]}
    for kind, hook in webhooks(objects):
        config = hook["clientConfig"]
        assert "url" not in config
        assert "caBundle" not in config, "the caBundle is written in the cluster, never in Git"
        assert config["service"] == {
            "namespace": NAMESPACE,
            "name": "gpumix-webhook",
            "path": KINDS[kind][1],
            "port": 443,
        }
        assert service_ports[443] == "https"
