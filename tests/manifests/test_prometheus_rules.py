"""The alerts: rules.yaml is the PrometheusRule's spec, promtool accepts and tests them,
every alert is tested both firing and not firing, and every gpumix metric they use is one
that docs/architecture.md promises."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from manifest_objects import MANIFESTS, REPO_ROOT, Rendered, find, require_tool
from sync_rules import SOURCE, TARGET, rules_text

PROMTOOL_TESTS = sorted((Path(__file__).resolve().parent / "promtool").glob("*.yaml"))
ARCHITECTURE = REPO_ROOT / "docs" / "architecture.md"
METRIC = re.compile(r"\b((?:gpumix|apiserver)_[a-z0-9_]+)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
APISERVER_METRICS = {
    "apiserver_admission_webhook_rejection_count",
    "apiserver_admission_webhook_fail_open_count",
    "apiserver_admission_webhook_admission_duration_seconds_bucket",
}


def promtool() -> str:
    return require_tool("promtool", "apt-get install prometheus (Debian) provides promtool")


def alerts() -> list[dict[str, object]]:
    groups = yaml.safe_load(TARGET.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_rules_file_is_the_prometheusrule_spec() -> None:
    spec = yaml.safe_load(SOURCE.read_text(encoding="utf-8"))["spec"]
    assert yaml.safe_load(TARGET.read_text(encoding="utf-8")) == spec
    assert TARGET.read_text(encoding="utf-8") == rules_text(SOURCE.read_text(encoding="utf-8")), (
        "rules.yaml is stale: python tests/manifests/sync_rules.py"
    )


def test_rendered_prometheusrule_matches_the_source(rendered: Rendered) -> None:
    rule = find(rendered["monitoring"], "PrometheusRule", "gpumix")
    assert rule["spec"] == yaml.safe_load(TARGET.read_text(encoding="utf-8"))


def test_promtool_check_rules() -> None:
    proc = subprocess.run(
        [promtool(), "check", "rules", str(TARGET)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_test_rules() -> None:
    assert PROMTOOL_TESTS
    proc = subprocess.run(
        [promtool(), "test", "rules", *map(str, PROMTOOL_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_is_tested_firing_and_silent() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for path in PROMTOOL_TESTS:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert doc["rule_files"] == [str(Path("..", "..", "..", TARGET.relative_to(REPO_ROOT)))], (
            path.name
        )
        for test in doc["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {str(a["alert"]) for a in alerts()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - silent == set(), "alerts never tested silent"
    assert firing | silent <= names, "tests name unknown alerts"


def test_alerts_use_only_documented_metrics() -> None:
    documented = set(re.findall(r"`(gpumix_[a-z0-9_]+)`", ARCHITECTURE.read_text(encoding="utf-8")))
    assert documented, f"no metric names found in {ARCHITECTURE}"
    for alert in alerts():
        expr = re.sub(r'"[^"]*"', '""', str(alert["expr"]))  # not label values
        for metric in METRIC.findall(expr):
            if metric.startswith("apiserver_"):
                assert metric in APISERVER_METRICS, metric
                continue
            base = next((metric[: -len(s)] for s in HISTOGRAM_SUFFIXES if metric.endswith(s)), "")
            assert metric in documented or base in documented, (alert["alert"], metric)


@pytest.mark.parametrize("name", ["gpumix-webhook", "gpumix-controller"])
def test_servicemonitors_select_the_services(rendered: Rendered, name: str) -> None:
    monitor = find(rendered["monitoring"], "ServiceMonitor", name)
    service = find(rendered["enforce"], "Service", name)
    spec = monitor["spec"]
    assert spec["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    for endpoint in spec["endpoints"]:
        assert ports[endpoint["port"]] == 8080, "metrics are served on plain HTTP 8080"
        assert endpoint["path"] == "/metrics"
        # Keep the metrics' own "namespace" label (the alerts group by it).
        assert endpoint["honorLabels"] is True


def test_monitoring_is_separate_from_the_install(rendered: Rendered) -> None:
    """The base installs without prometheus-operator; monitoring is applied on its own."""
    kinds = {o["kind"] for o in rendered["monitoring"]}
    assert kinds == {"ServiceMonitor", "PrometheusRule"}
    assert (MANIFESTS / "monitoring" / "kustomization.yaml").is_file()
    for overlay in ("enforce", "audit", "cert-manager"):
        assert not kinds & {o["kind"] for o in rendered[overlay]}
