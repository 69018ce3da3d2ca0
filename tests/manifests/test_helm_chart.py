"""The Helm chart: lints, renders every values case into the objects the values say, is
the same product as the kustomize manifests, and refuses bad values with a clear error.

Runs the real ``helm`` (tools/helm/build.sh) and ``kubectl kustomize``.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_chart import CHART, NAMESPACE, normalized, run_helm, template, template_error, values_args
from manifest_objects import MANIFESTS, REPO_ROOT, Obj, Rendered, find, key, render
from test_manifest_schemas import _validate

from gpumix.kube.policy import Policy, policy_from_mapping
from gpumix.kube.scope import match_condition, mutation_condition

WEBHOOK_KINDS = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
CA_BUNDLE = base64.b64encode(
    b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
).decode()

CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "audit": {"mode": "audit"},
    "warn-with-fail": {"mode": "warn", "webhook": {"failurePolicy": "Fail"}},
    "cert-manager": {"certificates": {"mode": "cert-manager"}},
    "cert-manager-own-issuer": {
        "webhook": {"configurationAnnotations": {"argocd.argoproj.io/sync-wave": "1"}},
        "certificates": {
            "mode": "cert-manager",
            "certManager": {"issuerRef": {"kind": "ClusterIssuer", "name": "corp-ca"}},
        },
    },
    "given-certificate": {
        "certificates": {
            "mode": "given",
            "given": {"secretName": "corp-tls", "caBundle": CA_BUNDLE},
        }
    },
    "webhook-only": {"controller": {"enabled": False}},
    "monitoring": {
        "monitoring": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "kps"}, "interval": "15s"},
            "prometheusRule": {"enabled": True, "labels": {"release": "kps"}},
            "dashboards": {"enabled": True, "namespace": "monitoring"},
        }
    },
    "tuned": {
        "policy": {
            "defaultMaxReplicas": 4,
            "hardMaxReplicas": 32,
            "exemptNamespaces": ["kube-system", "istio-system"],
            "gpuNodeLabelKeys": ["example.com/gpu"],
            "modelLabelKeys": ["example.com/model"],
            "gpuResourceNames": ["nvidia.com/gpu", "example.com/npu", "acme.io/tpu-*"],
        },
        "webhook": {
            "replicas": 3,
            "pdb": {"minAvailable": 2},
            "timeoutSeconds": 3,
            "image": {"repository": "registry.example/gpumix", "tag": "0.1.0-hotfix"},
            "resources": {
                "requests": {"cpu": "50m", "memory": "96Mi"},
                "limits": {"cpu": "500m", "memory": "256Mi"},
            },
            "namespaceSelector": {"matchLabels": {"gpumix.io/enabled": "true"}},
            "objectSelector": {"matchExpressions": [{"key": "skip", "operator": "DoesNotExist"}]},
            "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        },
        "controller": {
            "replicas": 2,
            "pdb": {"enabled": True},
            "image": {"repository": "registry.example/gpumix-controller", "tag": "0.1.1"},
            "extraArgs": ["--audit-interval=120"],
        },
    },
}


def of_kind(objects: list[Obj], *kinds: str) -> list[Obj]:
    return [o for o in objects if o["kind"] in kinds]


def deployment(objects: list[Obj], name: str) -> Obj:
    return find(objects, "Deployment", name)


def container(objects: list[Obj], name: str) -> Obj:
    containers = deployment(objects, name)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    c: Obj = containers[0]
    return c


def policy(objects: list[Obj]) -> Policy:
    cm = find(objects, "ConfigMap", "gpumix-policy")
    return policy_from_mapping(yaml.safe_load(cm["data"]["policy.yaml"]))


def webhooks(objects: list[Obj]) -> list[Obj]:
    out = [h for o in of_kind(objects, *WEBHOOK_KINDS) for h in o["webhooks"]]
    assert len(out) == 2
    return out


def exempt_in_selector(hook: Obj) -> list[str]:
    (expr,) = [
        e
        for e in hook["namespaceSelector"]["matchExpressions"]
        if e["key"] == "kubernetes.io/metadata.name"
    ]
    assert expr["operator"] == "NotIn"
    values: list[str] = expr["values"]
    return values


def names(objects: list[Obj]) -> set[tuple[str, str]]:
    return {(o["kind"], o["metadata"]["name"]) for o in objects}


@pytest.fixture(scope="module")
def charts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Obj]]:
    tmp = tmp_path_factory.mktemp("values")
    return {case: template(values, tmp) for case, values in CASES.items()}


# --------------------------------------------------------------------------- lint, schema


@pytest.mark.parametrize("case", CASES)
def test_chart_lints_strictly(case: str, tmp_path: Path) -> None:
    proc = run_helm("lint", "--strict", str(CHART), *values_args(CASES[case], tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("case", CASES)
def test_every_rendered_object_matches_its_schema(charts: dict[str, list[Obj]], case: str) -> None:
    for obj in charts[case]:
        _validate(obj)


@pytest.mark.parametrize("case", CASES)
def test_namespaced_objects_go_to_the_release_namespace(
    charts: dict[str, list[Obj]], case: str
) -> None:
    cluster_scoped = {
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        *WEBHOOK_KINDS,
    }
    for obj in charts[case]:
        namespace = obj["metadata"].get("namespace")
        if obj["kind"] in cluster_scoped:
            assert namespace is None, key(obj)
        elif obj["kind"] == "ConfigMap" and obj["metadata"]["name"].startswith("gpumix-dashboard"):
            assert namespace == "monitoring", key(obj)
        else:
            assert namespace == NAMESPACE, key(obj)
        if obj["kind"] != "CustomResourceDefinition":  # crds/ is installed as it is
            assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm", key(obj)


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("case", CASES)
def test_policy_and_webhook_selector_share_the_exemptions(
    charts: dict[str, list[Obj]], case: str
) -> None:
    objects = charts[case]
    pol = policy(objects)
    assert pol.mode == CASES[case].get("mode", "enforce")
    assert NAMESPACE in pol.exempt_namespaces and "kube-system" in pol.exempt_namespaces
    for hook in webhooks(objects):
        assert set(exempt_in_selector(hook)) == pol.exempt_namespaces
        assert hook["clientConfig"]["service"]["namespace"] == NAMESPACE


@pytest.mark.parametrize("case", CASES)
def test_match_condition_is_generated_from_the_chart_policy(
    charts: dict[str, list[Obj]], case: str
) -> None:
    """The CEL that keeps out-of-scope writes in the API server is the core's for the
    policy the chart renders (its model labels and accelerator names)."""
    objects = charts[case]
    for hook in webhooks(objects):
        # the mutating webhook also skips what its step cannot change
        more = [mutation_condition()] if hook["name"].startswith("mutate.") else []
        assert hook["matchConditions"] == [match_condition(policy(objects)), *more], hook["name"]


@pytest.mark.parametrize(
    ("case", "failure_policy"),
    [("defaults", "Fail"), ("audit", "Ignore"), ("warn-with-fail", "Fail"), ("tuned", "Fail")],
)
def test_failure_policy_follows_mode_unless_set(
    charts: dict[str, list[Obj]], case: str, failure_policy: str
) -> None:
    assert {h["failurePolicy"] for h in webhooks(charts[case])} == {failure_policy}


def test_warn_mode_without_a_failure_policy_fails_open(tmp_path: Path) -> None:
    objects = template({"mode": "warn"}, tmp_path)
    assert {h["failurePolicy"] for h in webhooks(objects)} == {"Ignore"}
    ignore = template({"mode": "enforce", "webhook": {"failurePolicy": "Ignore"}}, tmp_path)
    assert {h["failurePolicy"] for h in webhooks(ignore)} == {"Ignore"}


def test_tuned_values_reach_the_objects(charts: dict[str, list[Obj]]) -> None:
    objects = charts["tuned"]
    pol = policy(objects)
    assert (pol.default_max_replicas, pol.hard_max_replicas) == (4, 32)
    assert pol.exempt_namespaces == {"kube-system", "istio-system", NAMESPACE}
    assert pol.gpu_node_label_keys == ("example.com/gpu",)
    assert pol.model_label_keys == ("example.com/model",)
    assert pol.gpu_resource_names == ("nvidia.com/gpu", "example.com/npu", "acme.io/tpu-*")

    webhook = deployment(objects, "gpumix-webhook")
    assert webhook["spec"]["replicas"] == 3
    assert find(objects, "PodDisruptionBudget", "gpumix-webhook")["spec"]["minAvailable"] == 2
    assert container(objects, "gpumix-webhook")["image"] == "registry.example/gpumix:0.1.0-hotfix"
    assert (
        container(objects, "gpumix-webhook")["resources"] == CASES["tuned"]["webhook"]["resources"]
    )
    assert webhook["spec"]["template"]["spec"]["tolerations"][0]["key"] == "dedicated"
    for hook in webhooks(objects):
        assert hook["timeoutSeconds"] == 3
        assert hook["namespaceSelector"]["matchLabels"] == {"gpumix.io/enabled": "true"}
        assert hook["objectSelector"] == CASES["tuned"]["webhook"]["objectSelector"]

    controller = deployment(objects, "gpumix-controller")
    assert controller["spec"]["replicas"] == 2
    assert find(objects, "PodDisruptionBudget", "gpumix-controller")["spec"]["minAvailable"] == 1
    assert container(objects, "gpumix-controller")["image"] == (
        "registry.example/gpumix-controller:0.1.1"
    )
    assert container(objects, "gpumix-controller")["args"][-1] == "--audit-interval=120"


def test_default_image_is_the_app_version(charts: dict[str, list[Obj]]) -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    for name in ("gpumix-webhook", "gpumix-controller"):
        assert (
            container(charts["defaults"], name)["image"] == f"ghcr.io/gpumix/{name}:{app_version}"
        )


def test_policy_change_rolls_both_deployments(tmp_path: Path) -> None:
    before = template({}, tmp_path)
    after = template({"policy": {"defaultMaxReplicas": 5}}, tmp_path)
    for name in ("gpumix-webhook", "gpumix-controller"):
        old = deployment(before, name)["spec"]["template"]["metadata"]["annotations"]
        new = deployment(after, name)["spec"]["template"]["metadata"]["annotations"]
        assert old["checksum/policy"] != new["checksum/policy"]


def test_webhook_only_installs_no_controller(charts: dict[str, list[Obj]]) -> None:
    objects = charts["webhook-only"]
    assert not [o for o in objects if "gpumix-controller" in o["metadata"]["name"]]
    assert ("Deployment", "gpumix-webhook") in names(objects)
    assert ("CustomResourceDefinition", "gpumixes.gpumix.io") in names(objects)


@pytest.mark.parametrize("case", ["cert-manager", "cert-manager-own-issuer", "given-certificate"])
def test_external_certificates_take_the_webhook_write_access(
    charts: dict[str, list[Obj]], case: str
) -> None:
    objects = charts[case]
    assert ("Role", "gpumix-webhook") not in names(objects)
    assert ("RoleBinding", "gpumix-webhook") not in names(objects)
    rules = find(objects, "ClusterRole", "gpumix-webhook")["rules"]
    assert all(set(r["verbs"]) <= {"list", "watch"} for r in rules), rules
    c = container(objects, "gpumix-webhook")
    secret = "corp-tls" if case == "given-certificate" else "gpumix-webhook-tls"
    volumes = deployment(objects, "gpumix-webhook")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tls", "secret": {"secretName": secret, "defaultMode": 0o440}} in volumes
    assert "--tls-cert-file=/etc/gpumix/tls/tls.crt" in c["args"]
    assert {"name": "tls", "mountPath": "/etc/gpumix/tls", "readOnly": True} in c["volumeMounts"]


def test_self_managed_certificate_gets_exactly_its_write_access(
    charts: dict[str, list[Obj]],
) -> None:
    objects = charts["defaults"]
    role = find(objects, "Role", "gpumix-webhook")
    assert {"resourceNames": ["gpumix-webhook-tls"], "verbs": ["get", "update"]}.items() <= (
        role["rules"][0].items()
    )
    rules = find(objects, "ClusterRole", "gpumix-webhook")["rules"]
    assert [r["resourceNames"] for r in rules if "resourceNames" in r] == [["gpumix"]]
    for hook in webhooks(objects):
        assert "caBundle" not in hook["clientConfig"]


def test_given_certificate_sets_the_ca_bundle(charts: dict[str, list[Obj]]) -> None:
    for obj in of_kind(charts["given-certificate"], *WEBHOOK_KINDS):
        assert obj["webhooks"][0]["clientConfig"]["caBundle"] == CA_BUNDLE
        assert "annotations" not in obj["metadata"]


def test_own_issuer_replaces_the_self_signed_one(charts: dict[str, list[Obj]]) -> None:
    objects = charts["cert-manager-own-issuer"]
    assert not of_kind(objects, "Issuer")
    certificate = find(objects, "Certificate", "gpumix-webhook-tls")
    assert certificate["spec"]["issuerRef"] == {"kind": "ClusterIssuer", "name": "corp-ca"}
    for obj in of_kind(objects, *WEBHOOK_KINDS):
        assert obj["metadata"]["annotations"] == {
            "argocd.argoproj.io/sync-wave": "1",
            "cert-manager.io/inject-ca-from": f"{NAMESPACE}/gpumix-webhook-tls",
        }


def test_monitoring_objects_carry_the_selector_labels(charts: dict[str, list[Obj]]) -> None:
    objects = charts["monitoring"]
    monitors = of_kind(objects, "ServiceMonitor")
    assert {m["metadata"]["name"] for m in monitors} == {"gpumix-webhook", "gpumix-controller"}
    for obj in [*monitors, find(objects, "PrometheusRule", "gpumix")]:
        assert obj["metadata"]["labels"]["release"] == "kps", key(obj)
    for monitor in monitors:
        assert monitor["spec"]["endpoints"][0]["interval"] == "15s"
    dashboards = [o for o in of_kind(objects, "ConfigMap") if "dashboard" in o["metadata"]["name"]]
    assert {d["metadata"]["name"] for d in dashboards} == {
        "gpumix-dashboard-webhook",
        "gpumix-dashboard-controller",
    }
    for d in dashboards:
        assert d["metadata"]["labels"]["grafana_dashboard"] == "1"
        (body,) = d["data"].values()
        assert json.loads(body)["uid"].startswith("gpumix-")
    for case in ("defaults", "webhook-only"):
        kinds = {o["kind"] for o in charts[case]}
        assert not kinds & {"ServiceMonitor", "PrometheusRule"}, case


def test_webhook_only_monitors_only_the_webhook(tmp_path: Path) -> None:
    objects = template({"controller": {"enabled": False}, **CASES["monitoring"]}, tmp_path)
    assert [m["metadata"]["name"] for m in of_kind(objects, "ServiceMonitor")] == ["gpumix-webhook"]


# --------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mode": "enforcing"}, "mode"),
        (
            {"policy": {"defaultMaxReplicas": 50, "hardMaxReplicas": 20}},
            "policy.defaultMaxReplicas",
        ),
        ({"policy": {"hardMaxReplicas": 0}}, "hardMaxReplicas"),
        ({"webhook": {"failurePolicy": "fail"}}, "failurePolicy"),
        ({"webhook": {"timeoutSeconds": 31}}, "timeoutSeconds"),
        ({"webhook": {"replica": 3}}, "replica"),
        ({"certificates": {"mode": "given"}}, "certificates.given"),
        ({"certificates": {"mode": "given", "given": {"caBundle": CA_BUNDLE}}}, "secretName"),
        ({"certificates": {"mode": "vault"}}, "certificates"),
        ({"monitoring": {"serviceMonitor": {"enabled": "yes"}}}, "enabled"),
    ],
)
def test_bad_values_are_refused_with_the_field_named(
    values: dict[str, Any], message: str, tmp_path: Path
) -> None:
    error = template_error(values, tmp_path)
    assert message in error, error
    assert "panic" not in error and "goroutine" not in error


# --------------------------------------------------------------------------- kustomize parity


def assert_same_objects(helm_objects: list[Obj], kustomize_objects: list[Obj]) -> None:
    helm_side = normalized(helm_objects)
    kustomize_side = normalized(kustomize_objects)
    assert sorted(helm_side) == sorted(kustomize_side)
    for k, obj in kustomize_side.items():
        assert helm_side[k] == obj, f"{k} differs between the chart and kustomize"


@pytest.mark.parametrize(
    ("overlay", "case"),
    [("enforce", "defaults"), ("audit", "audit"), ("cert-manager", "cert-manager")],
)
def test_chart_renders_the_kustomize_overlay(
    rendered: Rendered, charts: dict[str, list[Obj]], overlay: str, case: str
) -> None:
    kustomized = rendered[overlay]
    # The chart leaves the namespace to the installer (helm --create-namespace, Argo
    # CD's CreateNamespace, Flux's install.createNamespace); everything else matches.
    assert [o["kind"] for o in kustomized if o["kind"] == "Namespace"] == ["Namespace"]
    assert_same_objects(charts[case], [o for o in kustomized if o["kind"] != "Namespace"])


def test_chart_renders_the_monitoring_and_dashboard_manifests(
    rendered: Rendered, tmp_path: Path
) -> None:
    values = {
        "monitoring": {
            "serviceMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True},
            "dashboards": {"enabled": True},
        }
    }
    extra = {"ServiceMonitor", "PrometheusRule"}
    chart = [
        o
        for o in template(values, tmp_path, include_crds=False)
        if o["kind"] in extra or o["metadata"]["name"].startswith("gpumix-dashboard")
    ]
    kustomized = [*rendered["monitoring"], *render(MANIFESTS / "dashboards")]
    assert_same_objects(chart, kustomized)


def test_chart_copies_of_shared_files_are_current() -> None:
    spec = importlib.util.spec_from_file_location(
        "sync_chart", REPO_ROOT / "tools" / "helm" / "sync_chart.py"
    )
    assert spec is not None and spec.loader is not None
    sync_chart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync_chart)
    stale = [str(p.relative_to(REPO_ROOT)) for p in sync_chart.stale()]
    assert not stale, f"stale copies in the chart: {stale}; run python tools/helm/sync_chart.py"
    assert (CHART / "crds" / "gpumix.io_gpumixes.yaml").is_file()


# --------------------------------------------------------------------------- docs


def install_md_documents(kind: str) -> list[Obj]:
    text = (REPO_ROOT / "docs" / "install.md").read_text(encoding="utf-8")
    docs = [
        doc
        for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
        for doc in yaml.safe_load_all(block)
        if isinstance(doc, dict) and doc.get("kind") == kind
    ]
    assert docs, f"docs/install.md has no {kind} example"
    return docs


def test_install_md_argo_cd_application_renders(tmp_path: Path) -> None:
    (app,) = install_md_documents("Application")
    source = app["spec"]["source"]
    assert (REPO_ROOT / source["path"] / "Chart.yaml").is_file()
    assert app["spec"]["destination"]["namespace"] == NAMESPACE
    objects = template(source["helm"]["valuesObject"], tmp_path)
    assert {"ServiceMonitor", "PrometheusRule"} <= {o["kind"] for o in objects}
    # The webhook configurations come in a later wave than the webhook Deployment.
    for obj in of_kind(objects, *WEBHOOK_KINDS):
        assert obj["metadata"]["annotations"] == {"argocd.argoproj.io/sync-wave": "1"}
    ignored = {d["kind"] for d in app["spec"]["ignoreDifferences"]}
    assert ignored == set(WEBHOOK_KINDS)
    # The ignored field is the one the self-managed certificate leaves out of the chart.
    for hook in webhooks(objects):
        assert "caBundle" not in hook["clientConfig"]


def test_install_md_flux_helm_release_renders(tmp_path: Path) -> None:
    (release,) = install_md_documents("HelmRelease")
    spec = release["spec"]
    assert (REPO_ROOT / spec["chart"]["spec"]["chart"] / "Chart.yaml").is_file()
    assert spec["targetNamespace"] == NAMESPACE
    assert (spec["install"]["crds"], spec["upgrade"]["crds"]) == ("Create", "CreateReplace")
    objects = template(spec["values"], tmp_path)
    dashboards = [o for o in objects if o["metadata"]["name"].startswith("gpumix-dashboard")]
    assert len(dashboards) == 2
