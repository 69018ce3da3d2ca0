"""The audit loop: the webhook's rules over the whole cluster, Events, metric, PolicyReports."""

from __future__ import annotations

from typing import Any

from controller_helpers import Completed, deployment, hpa, node, running, settings, wait_for
from prometheus_client import generate_latest

POLICY_REPORT_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "policyreports.wgpolicyk8s.io"},
    "spec": {
        "group": "wgpolicyk8s.io",
        "scope": "Namespaced",
        "names": {
            "kind": "PolicyReport",
            "plural": "policyreports",
            "singular": "policyreport",
            "shortNames": ["polr"],
        },
        "versions": [
            {
                "name": "v1alpha2",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


def racy_cluster(emu: Any) -> None:
    """What admission cannot catch: an overlapping pair and a ceiling-less HPA (stored directly)."""
    emu.create(node("a100-0", "A100", 8))
    emu.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}})
    emu.create(deployment("llama-a100", "A100", namespace="team-a", isolated=False))
    emu.create(deployment("llama-a40", "A40", namespace="team-a", isolated=False))
    emu.create(deployment("ok-a100", "A100", model="ok"))
    bad = hpa("ok-a100", "ok-a100", 5)
    del bad["spec"]["maxReplicas"]
    emu.create(bad)


async def test_audit_reports_events_metric_and_policy_reports(emu: Any, api: Any) -> None:
    emu.create(POLICY_REPORT_CRD)
    racy_cluster(emu)
    async with running(api, settings(audit_interval_s=0.3)) as run:
        auditor = run.controller.auditor
        await wait_for(lambda: len(auditor.last_findings) >= 3, what="audit findings")
        rules = {(f.rule, f.subject.name) for f in auditor.last_findings}
        assert ("selector-overlap", "llama-a100") in rules
        assert ("selector-overlap", "llama-a40") in rules
        assert ("missing-max-replicas", "ok-a100") in rules

        def reports() -> dict[str, Any]:
            return {r["metadata"]["namespace"]: r for r in emu.list("policyreports.wgpolicyk8s.io")}

        await wait_for(lambda: {"team-a", "default"} <= set(reports()), what="PolicyReports")
        team = reports()["team-a"]
        assert team["summary"]["fail"] == 2
        assert {r["rule"] for r in team["results"]} == {"selector-overlap"}
        assert team["results"][0]["resources"][0]["kind"] == "Deployment"

        def finding_events() -> set[str]:
            return {
                e["involvedObject"]["name"]
                for e in emu.list("events", "team-a")
                if e["reason"] == "AuditFinding"
            }

        await wait_for(lambda: finding_events() == {"llama-a100", "llama-a40"}, what="Events")
        text = generate_latest(run.controller.metrics.registry).decode()
        assert (
            'gpumix_audit_findings{namespace="team-a",rule="selector-overlap",severity="error"} 2.0'
            in text
        )
        # later audits do not repeat Events for the same findings
        count = len(emu.list("events", "team-a"))
        await Completed(run.controller.auditor, "run_once").more(2, what="two more audits")
        assert len(emu.list("events", "team-a")) == count
        emu.delete("deployments.apps", "llama-a40", "team-a")
        await wait_for(
            lambda: reports()["team-a"]["summary"]["fail"] == 0, what="the report to empty"
        )
        assert len(emu.list("events", "team-a")) == count
        assert "selector-overlap" not in generate_latest(run.controller.metrics.registry).decode()


async def test_audit_without_policy_report_crd(emu: Any, api: Any) -> None:
    racy_cluster(emu)
    async with running(api, settings(audit_interval_s=0.3)) as run:
        await wait_for(lambda: len(run.controller.auditor.last_findings) >= 3, what="findings")
        await wait_for(
            lambda: any(e["reason"] == "AuditFinding" for e in emu.list("events", "team-a")),
            what="AuditFinding Events",
        )


async def test_audit_reports_only_pairs_that_capture_and_each_finding_once(
    emu: Any, api: Any
) -> None:
    """A pair isolated by different keys (app.kubernetes.io/instance, gpumix.io/deployment)
    shares the model key but neither selects the other's pods: no finding, no Event, even
    with autoscalers. The racy pair gets one Event per finding across audits."""
    racy_cluster(emu)
    emu.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-b"}})
    for name, key in (
        ("by-instance", "app.kubernetes.io/instance"),
        ("by-gpumix", "gpumix.io/deployment"),
    ):
        dep = deployment(name, "A100", namespace="team-b", isolated=False)
        dep["spec"]["selector"]["matchLabels"][key] = name
        dep["spec"]["template"]["metadata"]["labels"][key] = name
        emu.create(dep)
        emu.create(hpa(name, name, 2, namespace="team-b"))
    async with running(api, settings(audit_interval_s=0.2)) as run:
        auditor = run.controller.auditor
        audits = Completed(auditor, "run_once")
        await wait_for(lambda: len(auditor.last_findings) >= 3, what="audit findings")
        await audits.more(3, what="three more audits")
        assert not [f for f in auditor.last_findings if f.subject.namespace == "team-b"]
        assert not [e for e in emu.list("events", "team-b") if e["reason"] == "AuditFinding"]
        events = [
            e["involvedObject"]["name"]
            for e in emu.list("events", "team-a")
            if e["reason"] == "AuditFinding"
        ]
        assert sorted(events) == ["llama-a100", "llama-a40"]
