"""The Helm chart installed, upgraded and uninstalled with the real ``helm`` against the
real kube-apiserver: webhook configurations, RBAC and the CRD are what the values say,
the webhook's own caBundle survives an upgrade, the chart's RBAC is enough for the real
``gpumix webhook`` to bootstrap its certificate, and uninstall leaves nothing that blocks
writes.

It runs on its own API server: the other e2e modules install the kustomize manifests,
whose cluster-scoped objects (ClusterRoles, webhook configurations ``gpumix``) a Helm
release may not adopt.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .envtest import REPO_ROOT, Envtest, ensure_binaries, free_port
from .gpumix_env import (
    GpumixProcess,
    Obj,
    ca_bundles,
    read_secret,
    service_account_kubeconfig,
    wait_until,
)

CHART = REPO_ROOT / "manifests" / "helm" / "gpumix"
HELM_BUILD = REPO_ROOT / "tools" / "helm" / "build.sh"
RELEASE = "gpumix"
NS = "gpumix-system"
WEBHOOK_PLURALS = ("mutatingwebhookconfigurations", "validatingwebhookconfigurations")


def helm_binary() -> str:
    """The helm that tools/helm/build.sh built; a missing one fails the test."""
    override = os.environ.get("GPUMIX_HELM")
    if override:
        return override
    proc = subprocess.run(
        ["bash", str(HELM_BUILD), "--check"], capture_output=True, text=True, timeout=30
    )
    if proc.returncode != 0:
        pytest.fail(proc.stderr.strip(), pytrace=False)
    return str(Path(proc.stdout.strip().splitlines()[-1]) / "helm")


class Helm:
    def __init__(self, env: Envtest) -> None:
        self.env = env
        self.binary = helm_binary()
        self.home = env.workdir / "helm-home"

    def __call__(
        self, *args: str, values: dict[str, Any] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = [self.binary, f"--kubeconfig={self.env.kubeconfig}", "--kube-context=admin", *args]
        if values:
            path = self.env.workdir / "helm-values.yaml"
            path.write_text(yaml.safe_dump(values))
            argv += ["-f", str(path)]
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=120,
            env={
                **os.environ,
                "HELM_CACHE_HOME": str(self.home / "cache"),
                "HELM_CONFIG_HOME": str(self.home / "config"),
                "HELM_DATA_HOME": str(self.home / "data"),
            },
        )
        if check:
            assert proc.returncode == 0, f"helm {' '.join(args)} failed:\n{proc.stderr}"
        return proc


@pytest.fixture(scope="module")
def env() -> Iterator[Envtest]:
    server = Envtest(ensure_binaries()).start()
    try:
        yield server
    finally:
        server.stop()


def get(env: Envtest, path: str) -> Obj | None:
    status, body = env.request("GET", path)
    if status == 404:
        return None
    assert status == 200, body
    result: Obj = body
    return result


def webhook_configs(env: Envtest) -> dict[str, Obj | None]:
    return {
        plural: get(env, f"/apis/admissionregistration.k8s.io/v1/{plural}/{RELEASE}")
        for plural in WEBHOOK_PLURALS
    }


def failure_policies(env: Envtest) -> set[str]:
    return {
        hook["failurePolicy"]
        for config in webhook_configs(env).values()
        if config is not None
        for hook in config["webhooks"]
    }


def rbac(env: Envtest) -> set[str]:
    """Names of gpumix's ClusterRoles, ClusterRoleBindings, Roles and RoleBindings."""
    out = set()
    for kind, path in (
        ("ClusterRole", "/apis/rbac.authorization.k8s.io/v1/clusterroles"),
        ("ClusterRoleBinding", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"),
        ("Role", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/roles"),
        ("RoleBinding", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/rolebindings"),
    ):
        body = get(env, path)
        assert body is not None
        out |= {
            f"{kind}/{o['metadata']['name']}"
            for o in body["items"]
            if o["metadata"]["name"].startswith("gpumix")
        }
    return out


def deployment(name: str, namespace: str) -> Obj:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]},
            },
        },
    }


def create(env: Envtest, obj: Obj) -> subprocess.CompletedProcess[str]:
    return env.kubectl("create", "-f", "-", input=json.dumps(obj), check=False)


def run_webhook(env: Envtest, policy_text: str, *extra: str) -> GpumixProcess:
    """``gpumix webhook`` as the chart's ServiceAccount, with the chart's policy file."""
    policy = env.workdir / "helm-policy.yaml"
    policy.write_text(policy_text)
    kubeconfig = service_account_kubeconfig(env, "gpumix-webhook", NS)
    http_port = free_port()
    args = [
        "webhook",
        f"--kubeconfig={kubeconfig}",
        f"--policy={policy}",
        "--host=127.0.0.1",
        f"--port={free_port()}",
        f"--metrics-port={http_port}",
        f"--namespace={NS}",
        "--log-level=INFO",
        *extra,
    ]
    return GpumixProcess(f"helm-webhook-{len(extra)}", args, env.workdir, http_port).start()


CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/gpumixes.gpumix.io"


def test_install_upgrade_uninstall(env: Envtest) -> None:
    helm = Helm(env)
    env.kubectl("create", "namespace", "apps")

    # ---- install: enforce, self-managed certificate, controller on.
    helm("install", RELEASE, str(CHART), "--namespace", NS, "--create-namespace")
    configs = webhook_configs(env)
    assert all(configs.values())
    for config in configs.values():
        assert config is not None
        (hook,) = config["webhooks"]
        assert hook["failurePolicy"] == "Fail"
        assert hook["clientConfig"]["service"] == {
            "namespace": NS,
            "name": "gpumix-webhook",
            "path": "/mutate" if hook["name"].startswith("mutate") else "/validate",
            "port": 443,
        }
        expr = hook["namespaceSelector"]["matchExpressions"][0]
        assert (expr["operator"], expr["values"]) == ("NotIn", ["kube-system", NS])
    assert rbac(env) == {
        "ClusterRole/gpumix-webhook",
        "ClusterRole/gpumix-controller",
        "ClusterRoleBinding/gpumix-webhook",
        "ClusterRoleBinding/gpumix-controller",
        "Role/gpumix-webhook",
        "Role/gpumix-controller",
        "RoleBinding/gpumix-webhook",
        "RoleBinding/gpumix-controller",
    }
    crd = get(env, CRD_PATH)
    assert crd is not None and crd["spec"]["names"]["kind"] == "GPUMix"
    env.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/gpumixes.gpumix.io")

    # No webhook pod runs here, so failurePolicy Fail refuses in-scope writes: this is
    # what an orphaned configuration would do after an uninstall.
    refused = create(env, deployment("before-uninstall", "apps"))
    assert refused.returncode != 0 and "gpumix.io" in refused.stderr, refused.stderr
    # The release namespace is exempt, so gpumix can always be repaired.
    assert create(env, deployment("repair", NS)).returncode == 0

    # ---- the real webhook, as the chart's ServiceAccount, bootstraps its certificate.
    policy_text = env.kubectl(
        "get", "configmap", "gpumix-policy", "-n", NS, "-o", "jsonpath={.data.policy\\.yaml}"
    ).stdout
    webhook = run_webhook(env, policy_text)
    try:
        webhook.wait_ready()
        wait_until(
            lambda: all(b and all(b) for b in ca_bundles(env).values()),
            timeout_s=20,
            what="caBundle written into both configurations by the webhook",
        )
    finally:
        webhook.stop()
    assert read_secret(env) is not None
    bundles = ca_bundles(env)

    # ---- the emergency switch (docs/install.md) takes failurePolicy from Helm: a plain
    # upgrade stops at the conflict instead of silently undoing it; --force-conflicts
    # takes it back.
    env.kubectl(
        "patch",
        "validatingwebhookconfiguration",
        RELEASE,
        "--type=json",
        "-p",
        '[{"op":"replace","path":"/webhooks/0/failurePolicy","value":"Ignore"}]',
    )
    upgrade = ("upgrade", RELEASE, str(CHART), "--namespace", NS)
    conflict = helm(*upgrade, values={"policy": {"defaultMaxReplicas": 5}}, check=False)
    assert conflict.returncode != 0 and "failurePolicy" in conflict.stderr, conflict.stderr
    assert failure_policies(env) == {"Fail", "Ignore"}
    helm(*upgrade, "--force-conflicts", values={"policy": {"defaultMaxReplicas": 5}})
    assert failure_policies(env) == {"Fail"}
    assert ca_bundles(env) == bundles

    # ---- upgrade: audit mode, no controller. The caBundle the webhook wrote is kept.
    helm(
        "upgrade",
        RELEASE,
        str(CHART),
        "--namespace",
        NS,
        values={"mode": "audit", "controller": {"enabled": False}},
    )
    assert failure_policies(env) == {"Ignore"}
    assert ca_bundles(env) == bundles, "helm upgrade dropped the webhook's caBundle"
    assert rbac(env) == {
        "ClusterRole/gpumix-webhook",
        "ClusterRoleBinding/gpumix-webhook",
        "Role/gpumix-webhook",
        "RoleBinding/gpumix-webhook",
    }
    assert get(env, f"/apis/apps/v1/namespaces/{NS}/deployments/gpumix-controller") is None
    policy_now = env.kubectl(
        "get", "configmap", "gpumix-policy", "-n", NS, "-o", "jsonpath={.data.policy\\.yaml}"
    ).stdout
    assert yaml.safe_load(policy_now)["mode"] == "audit"
    # Ignore: the unreachable webhook no longer blocks.
    assert create(env, deployment("during-audit", "apps")).returncode == 0

    # ---- upgrade: a given certificate (your own CA). The caBundle the webhook wrote is
    # not Helm's, so replacing it is a conflict until --force-conflicts.
    cert = env.ca.issue(
        f"gpumix-webhook.{NS}.svc", hosts=[f"gpumix-webhook.{NS}.svc", "127.0.0.1"], server=True
    )
    given_ca = base64.b64encode(env.ca.cert_pem).decode()
    given = {
        "certificates": {"mode": "given", "given": {"secretName": "corp-tls", "caBundle": given_ca}}
    }
    conflict = helm(*upgrade, values=given, check=False)
    assert conflict.returncode != 0 and "caBundle" in conflict.stderr, conflict.stderr
    helm(*upgrade, "--force-conflicts", values=given)
    assert failure_policies(env) == {"Fail"}
    assert all(b == [given_ca] for b in ca_bundles(env).values())
    assert "Role/gpumix-webhook" not in rbac(env)
    # The real webhook serves the given certificate with the chart's read-only RBAC.
    tls = env.workdir / "given-tls"
    tls.mkdir()
    (tls / "tls.crt").write_bytes(cert.cert_pem)
    (tls / "tls.key").write_bytes(cert.key_pem)
    webhook = run_webhook(
        env, policy_now, f"--tls-cert-file={tls / 'tls.crt'}", f"--tls-key-file={tls / 'tls.key'}"
    )
    try:
        webhook.wait_ready()
    finally:
        webhook.stop()
    assert "Forbidden" not in webhook.log(), webhook.log()[-2000:]
    assert all(b == [given_ca] for b in ca_bundles(env).values())
    role = get(env, "/apis/rbac.authorization.k8s.io/v1/clusterroles/gpumix-webhook")
    assert role is not None
    assert all(set(r["verbs"]) <= {"list", "watch"} for r in role["rules"])

    # ---- uninstall: no webhook configuration is left, writes go through again.
    helm("uninstall", RELEASE, "--namespace", NS)
    assert webhook_configs(env) == dict.fromkeys(WEBHOOK_PLURALS)
    assert failure_policies(env) == set()
    assert create(env, deployment("after-uninstall", "apps")).returncode == 0
    assert rbac(env) == set()
    assert get(env, f"/apis/apps/v1/namespaces/{NS}/deployments/gpumix-webhook") is None
    # Helm never deletes CRDs (every GPUMix would go with it); docs/install.md says how.
    assert get(env, CRD_PATH) is not None
    # The Secret the webhook created is not part of the release.
    assert read_secret(env) is not None
