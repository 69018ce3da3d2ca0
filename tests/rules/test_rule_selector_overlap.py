"""Rule selector-overlap: severities, scope and namespaces."""

from __future__ import annotations

from typing import Any

from gpumix.kube.objects import ObjectRef
from gpumix.kube.policy import Policy
from gpumix.kube.snapshot import Snapshot
from gpumix.rules import selector_overlap
from gpumix.rules.engine import evaluate_snapshot

POLICY = Policy()


def dep(
    name: str,
    selector: dict[str, str],
    *,
    ns: str = "ml",
    labels: dict[str, str] | None = None,
    gpu: str | None = None,
    gpus: int = 0,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "c"}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": gpus}}
    spec: dict[str, Any] = {"containers": [container]}
    if gpu:
        spec["nodeSelector"] = {"nvidia.com/gpu.product": gpu}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
        "spec": {
            "selector": {"matchLabels": dict(selector)},
            "template": {"metadata": {"labels": {**selector, "pod": name}}, "spec": spec},
        },
    }


def hpa(name: str, target: str, ns: str = "ml") -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "maxReplicas": 4,
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
        },
    }


def overlap_findings(*objs: dict[str, Any]) -> list[tuple[str, str, str]]:
    snap = Snapshot.from_objects(objs, POLICY)
    return [
        (f.severity, f.subject.name, r.name)
        for f in evaluate_snapshot(snap, POLICY)
        if f.rule == selector_overlap.RULE
        for r in f.related
    ]


MODEL = {"model.aibrix.ai/name": "llama"}


def test_error_when_gpu_types_differ() -> None:
    got = overlap_findings(
        dep("a100", MODEL, labels=MODEL, gpu="A100", gpus=1),
        dep("a40", MODEL, labels=MODEL, gpu="A40", gpus=1),
    )
    assert got == [("error", "a100", "a40"), ("error", "a40", "a100")]
    snap = Snapshot.from_objects(
        [
            dep("a100", MODEL, labels=MODEL, gpu="A100", gpus=1),
            dep("a40", MODEL, labels=MODEL, gpu="A40", gpus=1),
        ],
        POLICY,
    )
    finding = evaluate_snapshot(snap, POLICY)[0]
    assert finding.related == (ObjectRef("Deployment", "ml", "a40"),)
    assert finding.fixable
    assert "GPU types differ (A100 vs A40)" in finding.message
    assert "model.aibrix.ai/name=llama" in finding.message
    assert "gpumix.io/deployment" in finding.message


def test_error_when_gpu_types_differ_pinned_vs_unpinned() -> None:
    got = overlap_findings(
        dep("a100", MODEL, gpu="A100", gpus=1),
        dep("any", MODEL, gpus=1),
    )
    assert {s for s, _, _ in got} == {"error"}


def test_error_when_autoscaled_even_with_the_same_type() -> None:
    got = overlap_findings(
        dep("a", MODEL, gpu="A100", gpus=1),
        dep("b", MODEL, gpu="A100", gpus=1),
        hpa("scale-b", "b"),
    )
    assert got == [("error", "a", "b"), ("error", "b", "a")]
    snap = Snapshot.from_objects(
        [dep("a", MODEL, gpu="A100", gpus=1), dep("b", MODEL, gpu="A100", gpus=1), hpa("h", "b")],
        POLICY,
    )
    assert (
        "autoscaled by HorizontalPodAutoscaler ml/h" in evaluate_snapshot(snap, POLICY)[0].message
    )


def test_warning_when_same_type_and_no_autoscaler() -> None:
    got = overlap_findings(
        dep("a", MODEL, gpu="A100", gpus=1),
        dep("b", MODEL, gpu="A100", gpus=1),
    )
    assert got == [("warning", "a", "b"), ("warning", "b", "a")]


def test_model_label_brings_a_cpu_simulator_into_scope() -> None:
    # simulated engines request no GPU but are one model served by several Deployments
    got = overlap_findings(dep("sim-a", MODEL, labels=MODEL), dep("sim-b", MODEL, labels=MODEL))
    assert got == [("warning", "sim-a", "sim-b"), ("warning", "sim-b", "sim-a")]


def test_in_scope_against_cpu_app_is_an_error() -> None:
    web = {"tier": "web"}
    got = overlap_findings(dep("gpu", web, gpus=1), dep("web", web))
    assert got == [("error", "gpu", "web"), ("error", "web", "gpu")]


def test_two_out_of_scope_cpu_apps_are_never_flagged() -> None:
    web = {"tier": "web"}
    assert overlap_findings(dep("web-1", web), dep("web-2", web), hpa("h", "web-1")) == []


def test_different_namespaces_never_overlap() -> None:
    assert (
        overlap_findings(
            dep("a100", MODEL, ns="one", gpu="A100", gpus=1),
            dep("a40", MODEL, ns="two", gpu="A40", gpus=1),
        )
        == []
    )


def test_distinct_selectors_do_not_overlap() -> None:
    assert (
        overlap_findings(
            dep("a100", {**MODEL, "app": "a100"}, gpu="A100", gpus=1),
            dep("a40", {**MODEL, "app": "a40"}, gpu="A40", gpus=1),
        )
        == []
    )


def test_broader_selector_overlaps_and_captures() -> None:
    snap = Snapshot.from_objects(
        [
            dep("broad", MODEL, gpu="A100", gpus=1),
            dep("narrow", {**MODEL, "app": "narrow"}, gpu="A40", gpus=1),
        ],
        POLICY,
    )
    findings = evaluate_snapshot(snap, POLICY)
    broad = next(f for f in findings if f.subject.name == "broad")
    assert "its selector matches the pod template of narrow" in broad.message


def test_match_expressions_overlap() -> None:
    a = dep("a", MODEL, gpu="A100", gpus=1)
    a["spec"]["selector"]["matchExpressions"] = [
        {"key": "pod", "operator": "NotIn", "values": ["b"]}
    ]
    b = dep("b", MODEL, gpu="A40", gpus=1)
    assert overlap_findings(a, b) == [("error", "a", "b"), ("error", "b", "a")]
    b["spec"]["selector"]["matchLabels"]["pod"] = "b"
    assert overlap_findings(a, b) == []


def test_exempt_namespaces_are_skipped() -> None:
    objs = [
        dep("a100", MODEL, ns="kube-system", gpu="A100", gpus=1),
        dep("a40", MODEL, ns="kube-system", gpu="A40", gpus=1),
    ]
    assert overlap_findings(*objs) == []


def test_invalid_selectors_are_not_compared() -> None:
    bad = dep("bad", MODEL, gpu="A40", gpus=1)
    bad["spec"]["selector"]["matchExpressions"] = [{"key": "x", "operator": "Is"}]
    assert overlap_findings(dep("ok", MODEL, gpu="A100", gpus=1), bad) == []


def test_check_one_deployment_against_a_snapshot() -> None:
    snap = Snapshot.from_objects([dep("a100", MODEL, gpu="A100", gpus=1)], POLICY)
    new = Snapshot.from_objects([dep("a40", MODEL, gpu="A40", gpus=1)], POLICY)
    view = next(iter(new.deployments.values()))
    snap.put(view)
    findings = selector_overlap.check(view, snap, fixable=False)
    assert [(f.severity, f.related[0].name, f.fixable) for f in findings] == [
        ("error", "a100", False)
    ]


def test_selectors_on_unrelated_keys_that_capture_nothing_are_not_flagged() -> None:
    # {app: web} and {model: llama} can both match a pod labelled with both, but no
    # pod template carries both: flagging such pairs would flag every pair of apps.
    web = dep("web", {"app": "web"})
    llama = dep("llama-a100", MODEL, gpu="A100", gpus=1)
    assert overlap_findings(web, llama) == []


def test_shared_key_without_capture_is_not_reported() -> None:
    # Each selector pins a key the other's template lacks: nothing is selected by both,
    # so nothing is reported (a warning here could never be cleared by either side).
    a = dep("a100", {**MODEL, "app": "a100"}, gpu="A100", gpus=1)
    b = dep("a40", {**MODEL, "gpumix.io/deployment": "a40"}, gpu="A40", gpus=1)
    assert overlap_findings(a, b) == []


def test_unexplained_findings_judge_every_pair_alike() -> None:
    """``explain=False`` (admission's mutating step) reports the same pairs at the same
    severities as the full check, with a one-line message."""
    snap = Snapshot.from_objects(
        [
            dep("a100", MODEL, gpu="A100", gpus=1),
            dep("a40", MODEL, gpu="A40", gpus=1),
            dep("a40-twin", MODEL, gpu="A40", gpus=1),
            dep("scaled", {"app": "s"}, gpu="A40", gpus=1),
            dep("scaled-twin", {"app": "s"}, gpu="A40", gpus=1),
            hpa("h", "scaled"),
            dep("web", {"app": "web"}),
            dep("web-twin", {"app": "web"}),
            dep("canary", {"app": "s", "track": "canary"}, gpu="A40", gpus=1),
            dep("unrelated", {"team": "x"}, labels=MODEL),
        ],
        POLICY,
    )
    severities = set()
    for view in snap.deployments.values():
        full = selector_overlap.check(view, snap)
        short = selector_overlap.check(view, snap, explain=False)
        assert [(f.severity, f.subject, f.related) for f in short] == [
            (f.severity, f.subject, f.related) for f in full
        ]
        assert all(
            f.message.startswith(f"selector of {f.subject} overlaps the selector of {f.related[0]}")
            and len(f.message) < 200
            for f in short
        )
        severities |= {f.severity for f in full}
    assert severities == {"error", "warning"}


# --------------------------------------------------------------------------- semantics


def test_cpu_apps_pinned_to_different_machine_types_are_not_flagged() -> None:
    def web(name: str, machine: str) -> dict[str, Any]:
        d = dep(name, {"app": "storefront"})
        d["spec"]["template"]["spec"]["nodeSelector"] = {
            "node.kubernetes.io/instance-type": machine
        }
        return d

    assert overlap_findings(web("a", "m6i.2xlarge"), web("b", "m7g.2xlarge")) == []


def test_machine_type_and_gpu_product_on_the_same_nodes_are_one_type() -> None:
    a = dep("a", MODEL, gpus=1)
    a["spec"]["template"]["spec"]["nodeSelector"] = {
        "node.kubernetes.io/instance-type": "p4d.24xlarge"
    }
    b = dep("b", MODEL, gpu="NVIDIA-A100-SXM4-80GB", gpus=1)
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": "n1",
            "labels": {
                "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
                "node.kubernetes.io/instance-type": "p4d.24xlarge",
            },
        },
        "status": {"allocatable": {"nvidia.com/gpu": "8"}},
    }
    # without Nodes the two names are two types; the Nodes show they are one
    assert overlap_findings(a, b) == [("error", "a", "b"), ("error", "b", "a")]
    assert overlap_findings(a, b, node) == [("warning", "a", "b"), ("warning", "b", "a")]


def test_pin_by_a_key_gpumix_cannot_read_is_named_with_the_setting() -> None:
    a = dep("a100", MODEL, gpus=1)
    a["spec"]["template"]["spec"]["nodeSelector"] = {"example.com/gpu": "a100"}
    b = dep("l4", MODEL, gpus=1)
    b["spec"]["template"]["spec"]["nodeSelector"] = {"example.com/gpu": "l4"}
    snap = Snapshot.from_objects([a, b], POLICY)
    (f, _) = evaluate_snapshot(snap, POLICY)
    assert f.severity == "warning"
    assert "pins nodes by example.com/gpu, which gpumix does not read as a GPU type" in f.message
    assert "gpuNodeLabelKeys" in f.message
    keyed = Policy(gpu_node_label_keys=("example.com/gpu",))
    snap = Snapshot.from_objects([a, b], keyed)
    assert {x.severity for x in evaluate_snapshot(snap, keyed)} == {"error"}


def test_only_the_autoscaler_of_the_capturing_side_counts() -> None:
    """broad captures narrow's pods, not the other way round: narrow's autoscaler counts
    only its own pods, so it does not make the pair an error nor appear in the message."""
    broad = dep("broad", {"app": "s"}, gpu="A40", gpus=1)
    narrow = dep("narrow", {"app": "s", "track": "canary"}, gpu="A40", gpus=1)
    snap = Snapshot.from_objects([broad, narrow, hpa("h", "narrow")], POLICY)
    got = [f for f in evaluate_snapshot(snap, POLICY) if f.rule == selector_overlap.RULE]
    assert {(f.severity, f.subject.name) for f in got} == {
        ("warning", "broad"),
        ("warning", "narrow"),
    }
    assert not any("autoscaled by" in f.message for f in got)
    snap = Snapshot.from_objects([broad, narrow, hpa("h", "broad")], POLICY)
    got = [f for f in evaluate_snapshot(snap, POLICY) if f.rule == selector_overlap.RULE]
    assert {f.severity for f in got} == {"error"}
    assert all("autoscaled by HorizontalPodAutoscaler ml/h" in f.message for f in got)
def test_one_finding_per_severity_names_three_and_counts_the_rest() -> None:
    existing = [dep(f"a100-{i:02d}", MODEL, gpu="A100", gpus=1) for i in range(40)]
    twins = [dep(f"a40-{i:02d}", MODEL, gpu="A40", gpus=1) for i in range(5)]
    snap = Snapshot.from_objects([*existing, *twins], POLICY)
    me = snap.deployments[ObjectRef("Deployment", "ml", "a40-00")]
    error, warning = selector_overlap.check(me, snap)
    assert (error.severity, warning.severity) == ("error", "warning")
    assert [r.name for r in error.related] == [f"a100-{i:02d}" for i in range(40)]
    assert "a100-01, a100-02 and 37 more Deployments" in error.message
    assert "a100-03" not in error.message and len(error.message) < 1000
    assert [r.name for r in warning.related] == ["a40-01", "a40-02", "a40-03", "a40-04"]
    assert "a40-02, a40-03 and 1 more Deployment." in warning.message


def test_exists_selector_over_a_namespace_is_one_bounded_finding() -> None:
    objs = [dep(f"m{i:03d}", {"model": f"m{i}"}, gpu="A100", gpus=1) for i in range(300)]
    broad = dep("broad", {"x": "y"}, gpu="A40", gpus=1)
    broad["spec"]["selector"] = {"matchExpressions": [{"key": "model", "operator": "Exists"}]}
    broad["spec"]["template"]["metadata"]["labels"] = {"model": "any"}
    snap = Snapshot.from_objects([*objs, broad], POLICY)
    me = snap.deployments[ObjectRef("Deployment", "ml", "broad")]
    [finding] = selector_overlap.check(me, snap)
    assert len(finding.related) == 300 and "and 297 more" in finding.message
    assert len(finding.message) < 1000
