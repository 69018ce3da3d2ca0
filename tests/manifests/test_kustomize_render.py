"""Every overlay renders, holds the expected objects, and its workloads are hardened."""

from __future__ import annotations

import argparse

import pytest
import yaml
from manifest_objects import (
    IMAGES,
    MANIFESTS,
    NAMESPACE,
    OVERLAYS,
    Obj,
    Rendered,
    find,
    key,
    of_kind,
)

from gpumix.kube.policy import policy_from_mapping

CLUSTER_SCOPED = {
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
}

COMMON = {
    ("Namespace", "gpumix-system"),
    ("CustomResourceDefinition", "gpumixes.gpumix.io"),
    ("ServiceAccount", "gpumix-webhook"),
    ("ServiceAccount", "gpumix-controller"),
    ("ClusterRole", "gpumix-webhook"),
    ("ClusterRole", "gpumix-controller"),
    ("ClusterRoleBinding", "gpumix-webhook"),
    ("ClusterRoleBinding", "gpumix-controller"),
    ("Role", "gpumix-controller"),
    ("RoleBinding", "gpumix-controller"),
    ("Deployment", "gpumix-webhook"),
    ("Deployment", "gpumix-controller"),
    ("Service", "gpumix-webhook"),
    ("Service", "gpumix-controller"),
    ("PodDisruptionBudget", "gpumix-webhook"),
    ("MutatingWebhookConfiguration", "gpumix"),
    ("ValidatingWebhookConfiguration", "gpumix"),
}
SELF_MANAGED_TLS = {("Role", "gpumix-webhook"), ("RoleBinding", "gpumix-webhook")}
EXPECTED = {
    "enforce": COMMON | SELF_MANAGED_TLS,
    "audit": COMMON | SELF_MANAGED_TLS,
    "cert-manager": COMMON
    | {("Issuer", "gpumix-selfsigned"), ("Certificate", "gpumix-webhook-tls")},
}
EXPECTED_MODE = {"enforce": "enforce", "audit": "audit", "cert-manager": "enforce"}
DEPLOYMENTS = ("gpumix-webhook", "gpumix-controller")


def policy_configmap(objects: list[Obj]) -> Obj:
    maps = [
        o
        for o in of_kind(objects, "ConfigMap")
        if o["metadata"]["name"].startswith("gpumix-policy-")
    ]
    assert len(maps) == 1, "one generated gpumix-policy-<hash> ConfigMap"
    return maps[0]


def container(deployment: Obj) -> Obj:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    first: Obj = containers[0]
    return first


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_has_exactly_the_expected_objects(rendered: Rendered, overlay: str) -> None:
    objects = rendered[overlay]
    got = {(o["kind"], o["metadata"]["name"]) for o in objects if o["kind"] != "ConfigMap"}
    assert got == EXPECTED[overlay]
    policy_configmap(objects)
    assert len(objects) == len(EXPECTED[overlay]) + 1, "no duplicates"


@pytest.mark.parametrize("overlay", [*OVERLAYS, "monitoring"])
def test_namespaced_objects_live_in_gpumix_system(rendered: Rendered, overlay: str) -> None:
    for obj in rendered[overlay]:
        namespace = obj["metadata"].get("namespace")
        if obj["kind"] in CLUSTER_SCOPED:
            assert namespace is None, key(obj)
        else:
            assert namespace == NAMESPACE, key(obj)
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "gpumix", key(obj)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_policy_file_parses_and_sets_the_mode(rendered: Rendered, overlay: str) -> None:
    cm = policy_configmap(rendered[overlay])
    policy = policy_from_mapping(yaml.safe_load(cm["data"]["policy.yaml"]))
    assert policy.mode == EXPECTED_MODE[overlay]
    assert {"kube-system", NAMESPACE} <= policy.exempt_namespaces
    for name in DEPLOYMENTS:
        deployment = find(rendered[overlay], "Deployment", name)
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        assert {"name": "policy", "configMap": {"name": cm["metadata"]["name"]}} in volumes
        assert "--policy=/etc/gpumix/policy/policy.yaml" in container(deployment)["args"]


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_deployment_is_hardened(rendered: Rendered, overlay: str, name: str) -> None:
    deployment = find(rendered[overlay], "Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    assert c["image"] == IMAGES[name]
    assert pod["serviceAccountName"] == name
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert isinstance(sc["runAsUser"], int) and sc["runAsUser"] > 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # A read-only root needs a writable /tmp (HOME and matplotlib's cache point there).
    assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])
    for kind in ("requests", "limits"):
        assert set(c["resources"][kind]) == {"cpu", "memory"}
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path
        assert ports[get["port"]] == 8080
        assert get.get("scheme", "HTTP") == "HTTP"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_webhook_is_highly_available(rendered: Rendered, overlay: str) -> None:
    objects = rendered[overlay]
    deployment = find(objects, "Deployment", "gpumix-webhook")
    spec = deployment["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    spread = {t["topologyKey"]: t for t in spec["template"]["spec"]["topologySpreadConstraints"]}
    by_node = spread["kubernetes.io/hostname"]
    assert by_node["maxSkew"] == 1 and by_node["whenUnsatisfiable"] == "DoNotSchedule"
    assert by_node["labelSelector"]["matchLabels"].items() <= labels.items()
    pdb = find(objects, "PodDisruptionBudget", "gpumix-webhook")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_reach_the_containers(rendered: Rendered, overlay: str) -> None:
    objects = rendered[overlay]
    want = {
        "gpumix-webhook": {443: 8443, 8080: 8080},
        "gpumix-controller": {8080: 8080},
    }
    for name, port_map in want.items():
        service = find(objects, "Service", name)
        deployment = find(objects, "Deployment", name)
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        named = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}
        got = {p["port"]: named[p["targetPort"]] for p in service["spec"]["ports"]}
        assert got == port_map


def test_webhook_and_controller_pods_are_told_apart(rendered: Rendered) -> None:
    objects = rendered["enforce"]
    webhook = find(objects, "Deployment", "gpumix-webhook")["spec"]["selector"]["matchLabels"]
    controller = find(objects, "Deployment", "gpumix-controller")["spec"]["selector"]["matchLabels"]
    shared = webhook.keys() & controller.keys()
    assert any(webhook[k] != controller[k] for k in shared)


def test_cert_manager_overlay_wires_the_certificate(rendered: Rendered) -> None:
    objects = rendered["cert-manager"]
    certificate = find(objects, "Certificate", "gpumix-webhook-tls")
    spec = certificate["spec"]
    assert spec["secretName"] == "gpumix-webhook-tls"
    assert "gpumix-webhook.gpumix-system.svc" in spec["dnsNames"]
    issuer = find(objects, spec["issuerRef"]["kind"], spec["issuerRef"]["name"])
    assert issuer["metadata"]["namespace"] == NAMESPACE
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        annotations = find(objects, kind, "gpumix")["metadata"]["annotations"]
        assert annotations["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/gpumix-webhook-tls"
    deployment = find(objects, "Deployment", "gpumix-webhook")
    c = container(deployment)
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    tls_volume = next(
        n
        for n, v in volumes.items()
        if v.get("secret", {}).get("secretName") == "gpumix-webhook-tls"
    )
    directory = mounts[tls_volume]
    assert f"--tls-cert-file={directory}/tls.crt" in c["args"]
    assert f"--tls-key-file={directory}/tls.key" in c["args"]


@pytest.mark.parametrize("overlay", ["enforce", "audit"])
def test_self_managed_tls_needs_no_mounted_certificate(rendered: Rendered, overlay: str) -> None:
    c = container(find(rendered[overlay], "Deployment", "gpumix-webhook"))
    assert not any(a.startswith("--tls-") for a in c["args"])


def test_crd_is_the_gpumix_crd(rendered: Rendered) -> None:
    crd = find(rendered["enforce"], "CustomResourceDefinition", "gpumixes.gpumix.io")
    assert crd["spec"]["group"] == "gpumix.io"
    assert crd["spec"]["names"]["kind"] == "GPUMix"
    assert "gmx" in crd["spec"]["names"]["shortNames"]


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_container_args_are_accepted_by_the_cli(rendered: Rendered, name: str) -> None:
    """The Deployments' args parse with gpumix's own argument parser (every overlay)."""
    from gpumix.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands = set(sub.choices)
    for overlay in OVERLAYS:
        args = container(find(rendered[overlay], "Deployment", name))["args"]
        assert args[0] in commands, f"gpumix has no '{args[0]}' command yet"
        try:
            parsed = parser.parse_args(args)
        except SystemExit as exc:  # argparse reports unknown or bad flags this way
            pytest.fail(f"{overlay}: gpumix {' '.join(args)} is refused by the CLI ({exc})")
        # Probes and scraping reach the pod's IP on 8080, the webhook's HTTPS is on 8443.
        assert parsed.metrics_port == 8080
        host = getattr(parsed, "metrics_host", None) or parsed.host
        assert host in ("0.0.0.0", "::"), f"{args[0]} listens on {host} only"
        if args[0] == "webhook":
            assert parsed.port == 8443 and parsed.host in ("0.0.0.0", "::")


def test_crd_folder_is_a_kustomization() -> None:
    """base lists ../crds; kustomize only accepts a folder with its own kustomization."""
    folder = MANIFESTS / "crds"
    assert (folder / "gpumix.io_gpumixes.yaml").is_file()
    kustomization = folder / "kustomization.yaml"
    assert kustomization.is_file(), (
        "manifests/crds/kustomization.yaml is missing; it should read:\n"
        "resources:\n  - gpumix.io_gpumixes.yaml"
    )
    assert "gpumix.io_gpumixes.yaml" in yaml.safe_load(kustomization.read_text())["resources"]
