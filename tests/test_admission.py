"""The pure admission decision: ``review(request, snapshot, policy, phase)``."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable

import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from webhook_kit import (
    deployment,
    hpa,
    namespace,
    node,
    pod_autoscaler,
    review_body,
    scaled_object,
    snapshot,
)

from gpumix.admission import _copy_for_fix, _derived_patch, review
from gpumix.kube.gputype import GpuType
from gpumix.kube.objects import view_of
from gpumix.kube.policy import Policy
from gpumix.rules.fixes import isolate_deployment
from gpumix.webhook.wire import json_bytes, parse_review, to_response

POLICY = Policy()


def decide(
    obj: dict,
    snap,
    phase: str,
    operation: str = "CREATE",
    old: dict | None = None,
    policy: Policy = POLICY,
):
    return review(parse_review(review_body(obj, operation, old=old)), snap, policy, phase)


def isolated(name: str, product: str) -> dict:
    d = deployment(name, gpu_product=product)
    d["spec"]["selector"]["matchLabels"]["gpumix.io/deployment"] = name
    d["spec"]["template"]["metadata"]["labels"]["gpumix.io/deployment"] = name
    return d


def test_create_overlapping_an_isolated_deployment_is_fixed_and_the_fix_validates() -> None:
    snap = snapshot(isolated("a100", "A100"))
    a40 = deployment("a40", gpu_product="A40")
    verdict = decide(a40, snap, "mutate")
    assert verdict.shape == "patched"
    fixed = jsonpatch.apply_patch(a40, list(verdict.patch))
    assert fixed["spec"]["selector"]["matchLabels"]["gpumix.io/deployment"] == "a40"
    assert fixed["spec"]["template"]["metadata"]["labels"]["gpumix.io/gpu-type"] == "A40"
    # only labels changed
    assert {op["path"].split("/")[1] for op in verdict.patch} == {"spec"}
    assert decide(fixed, snap, "validate").shape == "allowed"


def test_create_overlapping_a_broad_deployment_is_denied_and_names_it() -> None:
    snap = snapshot(deployment("a100", gpu_product="A100"))
    a40 = deployment("a40", gpu_product="A40")
    assert decide(a40, snap, "mutate").shape == "allowed"  # no provable fix
    verdict = decide(a40, snap, "validate")
    assert verdict.shape == "denied" and verdict.code == 403
    assert "Deployment default/a100" in verdict.message
    assert "immutable" in verdict.message and "recreate" in verdict.message
    assert "model.aibrix.ai/name=llama2-7b" in verdict.message


def test_disjoint_pair_is_admitted_untouched() -> None:
    snap = snapshot(deployment("a100", selector={"app": "a100"}, gpu_product="A100"))
    a40 = deployment("a40", selector={"app": "a40"}, gpu_product="A40")
    assert decide(a40, snap, "mutate").shape == "allowed"
    verdict = decide(a40, snap, "validate")
    assert verdict.shape == "allowed" and not verdict.warnings


def test_update_never_mutates_a_deployment_selector() -> None:
    snap = snapshot(isolated("a100", "A100"), deployment("a40", gpu_product="A40"))
    a40 = deployment("a40", gpu_product="A40")
    assert decide(a40, snap, "mutate", "UPDATE", old=a40).shape == "allowed"


def test_update_keeps_a_pre_existing_overlap_as_a_warning() -> None:
    a100, a40 = deployment("a100", gpu_product="A100"), deployment("a40", gpu_product="A40")
    snap = snapshot(a100, a40)
    newer = copy.deepcopy(a40)
    newer["spec"]["template"]["spec"]["containers"][0]["image"] = "vllm:v2"
    verdict = decide(newer, snap, "validate", "UPDATE", old=a40)
    assert verdict.shape == "allowed"
    assert any("already present" in w for w in verdict.warnings)


def test_update_that_raises_an_overlap_to_an_error_is_denied() -> None:
    # same GPU type: a warning; re-pinned to another type: an error this update creates
    a100, other = deployment("a100", gpu_product="A100"), deployment("b", gpu_product="A100")
    snap = snapshot(a100, other)
    repinned = deployment("b", gpu_product="A40")
    verdict = decide(repinned, snap, "validate", "UPDATE", old=other)
    assert verdict.shape == "denied"
    assert "GPU types differ" in verdict.message


def test_update_changing_the_selector_is_denied_with_how_to_recreate() -> None:
    old = deployment("a", selector={"app": "a"})
    new = deployment("a", selector={"app": "a", "tier": "gpu"})
    verdict = decide(new, snapshot(old), "validate", "UPDATE", old=old)
    assert verdict.shape == "denied"
    assert "[selector-immutable]" in verdict.message and "recreate" in verdict.message


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        (hpa("h", "d", max_replicas=0), "maxReplicas"),
        (hpa("h", "d"), "maxReplicas"),
        (scaled_object("s", "d"), "maxReplicaCount"),
        (pod_autoscaler("p", "d", None), "maxReplicas"),
    ],
)
def test_missing_ceiling_is_injected(obj: dict, field: str) -> None:
    verdict = decide(obj, snapshot(), "mutate")
    assert verdict.shape == "patched"
    fixed = jsonpatch.apply_patch(obj, list(verdict.patch))
    assert fixed["spec"][field] == POLICY.default_max_replicas
    assert decide(fixed, snapshot(), "validate").shape == "allowed"


def test_injected_ceiling_follows_the_namespace_annotation_and_gpu_capacity() -> None:
    ns = namespace("ml", annotations={"gpumix.io/default-max-replicas": "50"})
    dep = deployment("a100", "ml", gpu_product="A100", gpus=2)
    snap = snapshot(ns, dep, node("n1", "A100", 8), node("n2", "A100", 4))
    verdict = decide(hpa("h", "a100", ns="ml"), snap, "mutate")
    fixed = jsonpatch.apply_patch(hpa("h", "a100", ns="ml"), list(verdict.patch))
    assert fixed["spec"]["maxReplicas"] == 6  # 12 GPUs / 2 per replica, below 50


def test_over_ceiling_is_denied() -> None:
    verdict = decide(pod_autoscaler("p", "d", 1000), snapshot(), "validate")
    assert verdict.shape == "denied" and "hard limit of 100" in verdict.message


@pytest.mark.parametrize("mode", ["warn", "audit"])
def test_warn_and_audit_allow_without_fixing(mode: str) -> None:
    snap = snapshot(
        namespace("default", labels={"gpumix.io/mode": mode}),
        deployment("a100", gpu_product="A100"),
    )
    a40 = deployment("a40", gpu_product="A40")
    assert decide(a40, snap, "mutate").shape == "allowed"
    verdict = decide(a40, snap, "validate")
    assert verdict.shape == "allowed" and verdict.findings
    assert bool(verdict.warnings) == (mode == "warn")
    assert decide(hpa("h", "d"), snap, "mutate").shape == "allowed"


def test_exempt_namespace_is_untouched() -> None:
    snap = snapshot(deployment("a100", "kube-system", gpu_product="A100"))
    a40 = deployment("a40", "kube-system", gpu_product="A40")
    for phase in ("mutate", "validate"):
        verdict = decide(a40, snap, phase)
        assert verdict.shape == "allowed" and not verdict.findings


def test_dry_run_gets_the_same_answer() -> None:
    snap = snapshot(deployment("a100", gpu_product="A100"))
    body = review_body(deployment("a40", gpu_product="A40"), dry_run=True)
    request = parse_review(body)
    assert request["dryRun"] is True
    assert review(request, snap, POLICY, "validate").shape == "denied"


def test_subresources_and_deletes_are_allowed() -> None:
    body = review_body(hpa("h", "d"), "DELETE")
    assert review(parse_review(body), snapshot(), POLICY, "validate").shape == "allowed"
    body = review_body(hpa("h", "d"))
    body["request"]["subResource"] = "status"
    assert review(parse_review(body), snapshot(), POLICY, "mutate").shape == "allowed"


def test_update_keeps_the_labels_of_an_earlier_fix() -> None:
    # A server-side re-apply of the unfixed manifest drops the fix's labels; the API
    # server would refuse the selector change. The webhook puts them back.
    live = isolated("a40", "A40")
    live["spec"]["template"]["metadata"]["labels"]["gpumix.io/gpu-type"] = "A40"
    reapplied = deployment("a40", gpu_product="A40")
    verdict = decide(reapplied, snapshot(live), "mutate", "UPDATE", old=live)
    assert verdict.shape == "patched"
    fixed = jsonpatch.apply_patch(reapplied, list(verdict.patch))
    assert fixed["spec"]["selector"] == live["spec"]["selector"]
    assert (
        fixed["spec"]["template"]["metadata"]["labels"]
        == (live["spec"]["template"]["metadata"]["labels"])
    )
    assert decide(fixed, snapshot(live), "validate", "UPDATE", old=live).shape == "allowed"


def test_update_that_keeps_the_labels_is_not_patched() -> None:
    live = isolated("a40", "A40")
    assert decide(copy.deepcopy(live), snapshot(live), "mutate", "UPDATE", old=live).shape == (
        "allowed"
    )


def test_selector_change_is_explained_already_in_the_mutating_step() -> None:
    old = deployment("a", selector={"app": "a"})
    new = deployment("a", selector={"app": "a", "tier": "gpu"})
    verdict = decide(new, snapshot(old), "mutate", "UPDATE", old=old)
    assert verdict.allowed
    assert any(w.startswith("selector-immutable:") and "recreate" in w for w in verdict.warnings)


def test_patches_touch_only_spec_and_apply_to_the_original_request_object() -> None:
    obj = hpa("h", "d")
    obj["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
    obj["status"] = {"currentReplicas": 2}
    verdict = decide(obj, snapshot(), "mutate")
    assert all(op["path"].startswith("/spec/") for op in verdict.patch)
    fixed = jsonpatch.apply_patch(obj, list(verdict.patch))
    assert fixed["metadata"] == obj["metadata"] and fixed["status"] == obj["status"]
    assert fixed["spec"] == {**obj["spec"], "maxReplicas": POLICY.default_max_replicas}


# --------------------------------------------------------------------------- derived patches


@pytest.mark.parametrize(
    ("obj", "snap", "operation", "old"),
    [
        pytest.param(
            deployment("a40", gpu_product="A40"),
            snapshot(isolated("a100", "A100")),
            "CREATE",
            None,
            id="isolate",
        ),
        pytest.param(hpa("h", "d"), snapshot(), "CREATE", None, id="ceiling"),
        pytest.param(
            deployment("a40", gpu_product="A40"),
            snapshot(),
            "UPDATE",
            isolated("a40", "A40"),
            id="restore",
        ),
    ],
)
def test_mutation_leaves_the_request_untouched_and_its_patch_is_the_full_diff(
    obj: dict, snap, operation: str, old: dict | None
) -> None:
    request = parse_review(review_body(obj, operation, old=old))
    before = copy.deepcopy(request)
    verdict = review(request, snap, POLICY, "mutate")
    assert verdict.shape == "patched"
    assert request == before
    fixed = jsonpatch.apply_patch(obj, list(verdict.patch))
    # the same operations as jsonpatch's own diff (whose order follows set iteration)
    assert _by_path(jsonpatch.make_patch(obj, fixed).patch) == _by_path(verdict.patch)


def _by_path(ops: Iterable[dict]) -> list[dict]:
    return sorted(ops, key=lambda op: (op["path"], op["op"]))


def test_derived_patch_walks_only_copied_dicts_and_escapes_keys() -> None:
    shared = {"containers": [{"name": "c"}]}
    obj = {
        "metadata": {"name": "n"},
        "spec": {
            "selector": {"matchLabels": {"a/b": "1", "t~x": "2"}},
            "template": {"metadata": {"labels": {"a/b": "1"}}, "spec": shared},
            "replicas": 1,
        },
    }
    fixed = _copy_for_fix(obj, (("spec", "selector", "matchLabels"), ("spec", "template")))
    assert fixed["spec"]["template"]["spec"] is shared and fixed["metadata"] is obj["metadata"]
    fixed["spec"]["selector"]["matchLabels"]["t~x"] = "3"
    fixed["spec"]["selector"]["matchLabels"]["c/d"] = "4"
    del fixed["spec"]["selector"]["matchLabels"]["a/b"]
    fixed["spec"]["template"]["metadata"] = {"labels": {"a/b": "1", "new": "y"}}
    fixed["spec"]["paused"] = True
    patch = _derived_patch(obj, fixed)
    assert obj["spec"]["selector"]["matchLabels"] == {"a/b": "1", "t~x": "2"}
    assert jsonpatch.apply_patch(obj, patch) == fixed
    assert _by_path(patch) == _by_path(jsonpatch.make_patch(obj, fixed).patch)
    # the fixed copy's keys first, in its order, then the removed ones
    assert [op["path"] for op in patch] == [
        "/spec/selector/matchLabels/t~0x",
        "/spec/selector/matchLabels/c~1d",
        "/spec/selector/matchLabels/a~1b",
        "/spec/template/metadata/labels/new",
        "/spec/paused",
    ]


def test_fix_creates_missing_dicts_in_the_copy_only() -> None:
    obj = {"metadata": {"name": "x"}, "spec": {"template": "not a dict"}}
    fixed = _copy_for_fix(obj, (("spec", "selector", "matchLabels"), ("spec", "template")))
    isolate_deployment(fixed, GpuType("cpu"))
    assert obj == {"metadata": {"name": "x"}, "spec": {"template": "not a dict"}}
    assert jsonpatch.apply_patch(obj, _derived_patch(obj, fixed)) == fixed


_KEYS = st.sampled_from(["a", "a/b", "t~x", "~", "/", "gpumix.io/deployment", "spec"])
_LEAVES = st.one_of(st.text(max_size=3), st.integers(-2, 2), st.booleans(), st.none())
_JSON = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_KEYS, inner, max_size=3)),
    max_leaves=12,
)
_PATHS = (
    ("spec", "selector", "matchLabels"),
    ("spec", "template", "metadata", "labels"),
    ("spec",),
)


@settings(max_examples=300, deadline=None)
@given(
    obj=st.dictionaries(_KEYS, _JSON, max_size=3).map(
        lambda extra: {
            **extra,
            "spec": {
                "selector": {"matchLabels": {"a": "1", "a/b": "2"}},
                "template": {"metadata": {"labels": {"a": "1", "t~x": "3"}}},
                "replicas": 1,
            },
        }
    ),
    edits=st.lists(
        st.tuples(st.sampled_from(_PATHS), _KEYS, _JSON, st.booleans()), min_size=1, max_size=5
    ),
)
def test_derived_patch_is_jsonpatch_diff_of_the_fixed_copy(obj: dict, edits: list) -> None:
    """Any edit a fix can make (writes into the dicts ``_copy_for_fix`` copied): the
    patch turns the object into the fixed copy, leaves the object alone, and, for
    edits that add or replace (as every fix does), is exactly jsonpatch's own diff."""
    before = copy.deepcopy(obj)
    fixed = _copy_for_fix(obj, _PATHS)
    removed = False
    for path, key, value, delete in edits:
        node = fixed
        for part in path:
            node = node[part]
        if delete and key in node:
            del node[key]
            removed = True
        else:
            node[key] = value
    patch = _derived_patch(obj, fixed)
    assert obj == before
    assert jsonpatch.apply_patch(obj, patch) == fixed
    if not removed:  # (jsonpatch turns a removal plus an equal addition into a move)
        assert _by_path(patch) == _by_path(jsonpatch.make_patch(obj, fixed).patch)


# --------------------------------------------------------------------------- model groups


def _admit(obj: dict, snap, operation: str = "CREATE", old: dict | None = None) -> dict:
    """Both phases as the API server runs them: the mutating patch applied, then
    validation of the result, which must allow it. Returns the stored object."""
    verdict = decide(obj, snap, "mutate", operation, old=old)
    assert verdict.allowed, verdict
    stored = jsonpatch.apply_patch(obj, list(verdict.patch)) if verdict.patch else obj
    checked = decide(stored, snap, "validate", operation, old=old)
    assert checked.allowed, checked.message
    return stored


@pytest.mark.parametrize("order", [("a100", "a40"), ("a40", "a100")])
def test_headline_pair_is_admitted_and_isolated_in_either_order(order: tuple[str, str]) -> None:
    """Two per-GPU Deployments of one model, each selecting by the model label alone: the
    first is isolated at CREATE (its selector can still change), so the second is fixed
    too and nothing has to be recreated."""
    products = {"a100": "NVIDIA-A100-SXM4-80GB", "a40": "NVIDIA-A40"}
    snap = snapshot()
    stored = {}
    for name in order:
        obj = deployment(name, gpu_product=products[name])
        stored[name] = _admit(obj, snap)
        view = view_of(stored[name], POLICY)
        assert view is not None
        snap.put(view)
    for name, obj in stored.items():
        assert obj["spec"]["selector"]["matchLabels"] == {
            "model.aibrix.ai/name": "llama2-7b",
            "gpumix.io/deployment": name,
        }
        assert (
            obj["spec"]["template"]["metadata"]["labels"]["gpumix.io/gpu-type"] == (products[name])
        )
    # A re-sync of the unchanged manifests (server-side apply sends the selector without
    # the label) is put back to what is stored: no change, no warning but the note.
    for name in order:
        manifest = deployment(name, gpu_product=products[name])
        verdict = decide(manifest, snap, "mutate", "UPDATE", old=stored[name])
        assert verdict.shape == "patched"
        again = jsonpatch.apply_patch(manifest, list(verdict.patch))
        assert again["spec"]["selector"] == stored[name]["spec"]["selector"]
        checked = decide(again, snap, "validate", "UPDATE", old=stored[name])
        assert checked.shape == "allowed" and not checked.warnings


def test_first_of_a_model_group_note_says_why() -> None:
    verdict = decide(deployment("a100", gpu_product="A100"), snapshot(), "mutate")
    assert verdict.shape == "patched"
    (note,) = verdict.warnings
    assert note.startswith("gpumix fixed selector-overlap on Deployment default/a100: ")
    assert "selects model group llama2-7b as a whole" in note


@pytest.mark.parametrize(
    ("obj", "why"),
    [
        (deployment("web", model=None, selector={"app": "web"}, gpus=0), "no model group"),
        (deployment("cpu", gpus=0), "CPU-only"),
        (deployment("a100", selector={"app": "a100"}, gpu_product="A100"), "not by model"),
        (
            deployment(
                "llama-a100",
                selector={"model.aibrix.ai/name": "llama2-7b", "app": "llama-a100"},
                gpu_product="A100",
            ),
            "names itself",
        ),
        (
            deployment(
                "x",
                selector={"model.aibrix.ai/name": "llama2-7b", "gpu": "nvidia-a100"},
                gpu_product="NVIDIA-A100",
            ),
            "names its GPU type",
        ),
    ],
)
def test_first_is_left_alone_when_its_selector_cannot_take_a_sibling(obj: dict, why: str) -> None:
    assert decide(obj, snapshot(), "mutate").shape == "allowed", why


def test_first_is_not_isolated_outside_enforce() -> None:
    snap = snapshot(namespace("default", labels={"gpumix.io/mode": "warn"}))
    assert decide(deployment("a100", gpu_product="A100"), snap, "mutate").shape == "allowed"


def test_restoring_labels_of_an_earlier_fix_works_in_every_mode() -> None:
    """A namespace switched to warn after a fix: re-applies must not fail on the selector."""
    snap = snapshot(namespace("default", labels={"gpumix.io/mode": "audit"}))
    manifest = deployment("a100", gpu_product="A100")
    verdict = decide(manifest, snap, "mutate", "UPDATE", old=isolated("a100", "A100"))
    assert verdict.shape == "patched"
    again = jsonpatch.apply_patch(manifest, list(verdict.patch))
    assert again["spec"]["selector"]["matchLabels"]["gpumix.io/deployment"] == "a100"


# --------------------------------------------------------------------------- scope


def test_a_cpu_deployment_is_not_judged_at_admission_but_by_the_audit() -> None:
    """The API server does not send it (matchConditions) and review() agrees; a CPU
    selector that captures a GPU Deployment's pods is reported by the audit."""
    from gpumix.rules.engine import evaluate_snapshot

    gpu = deployment("llama", selector={"app": "llama"}, gpu_product="A100")
    cpu = deployment("proxy", model=None, selector={"app": "llama"}, gpus=0)
    snap = snapshot(gpu)
    for phase in ("mutate", "validate"):
        verdict = decide(cpu, snap, phase)
        assert verdict.shape == "allowed" and not verdict.findings and not verdict.warnings
    snap = snapshot(gpu, cpu)
    audit = evaluate_snapshot(snap, POLICY)
    assert any(f.rule == "selector-overlap" and f.subject.name == "proxy" for f in audit)
    # the GPU Deployment created next to it is judged, the pair with it
    assert decide(gpu, snapshot(cpu), "validate").shape == "denied"


def test_cpu_apps_pinned_to_machine_types_are_out_of_scope() -> None:
    def web(name: str, instance_type: str) -> dict:
        d = deployment(name, model=None, selector={"app": "storefront"}, gpus=0)
        d["spec"]["template"]["spec"]["nodeSelector"] = {
            "node.kubernetes.io/instance-type": instance_type
        }
        return d

    snap = snapshot(web("m6i", "m6i.2xlarge"))
    verdict = decide(web("m7g", "m7g.2xlarge"), snap, "validate")
    assert verdict.shape == "allowed" and not verdict.warnings


# --------------------------------------------------------------------------- ceilings


def cordoned(obj: dict) -> dict:
    return {**obj, "spec": {"unschedulable": True}}


def test_ceiling_is_not_judged_again_when_nodes_are_drained() -> None:
    """An HPA admitted at 4 over two 2-GPU nodes: after one node is cordoned, and even
    after it is deleted, an unchanged re-apply or an annotation is allowed."""
    dep = deployment("llama", selector={"app": "llama"}, gpu_product="A40")
    scaler = hpa("llama", "llama", max_replicas=4)
    snap = snapshot(dep, node("n1", "A40", 2), node("n2", "A40", 2))
    assert decide(scaler, snap, "validate").shape == "allowed"
    snap.put(view_of(scaler, POLICY))  # type: ignore[arg-type]
    # cordoned: capacity still counts the node, so even a CREATE at 4 is fine
    snap.put(view_of(cordoned(node("n2", "A40", 2)), POLICY))  # type: ignore[arg-type]
    assert decide(hpa("other", "llama", 4), snap, "validate").shape == "allowed"
    # scaled in: the node is gone; an UPDATE that does not raise the ceiling is allowed
    snap.remove("Node", "", "n2")
    annotated = copy.deepcopy(scaler)
    annotated["metadata"]["annotations"] = {"team": "ml"}
    verdict = decide(annotated, snap, "validate", "UPDATE", old=scaler)
    assert verdict.shape == "allowed" and not verdict.warnings
    # raising it, or pointing it at another target, is judged
    raised = hpa("llama", "llama", max_replicas=5)
    verdict = decide(raised, snap, "validate", "UPDATE", old=scaler)
    assert verdict.shape == "denied" and "lower it to at most 2" in verdict.message
    snap.put(view_of(deployment("llama2", selector={"app": "l2"}, gpu_product="A40"), POLICY))  # type: ignore[arg-type]
    moved = hpa("llama", "llama2", max_replicas=4)
    assert decide(moved, snap, "validate", "UPDATE", old=scaler).shape == "denied"
    # lowering is never denied
    lowered = hpa("llama", "llama", max_replicas=3)
    assert decide(lowered, snap, "validate", "UPDATE", old=scaler).shape == "allowed"


def test_declared_pool_capacity_admits_a_ceiling_for_nodes_not_yet_there() -> None:
    dep = deployment("llama", selector={"app": "llama"}, gpu_product="A40")
    snap = snapshot(dep, node("n1", "A40", 1))
    scaler = hpa("llama", "llama", max_replicas=8)
    verdict = decide(scaler, snap, "validate")
    assert verdict.shape == "denied" and "lower it to at most 1" in verdict.message
    assert "gpuPoolCapacity" in verdict.message
    pool = Policy(gpu_pool_capacity={"A40": 8})
    assert decide(scaler, snap, "validate", policy=pool).shape == "allowed"
    assert decide(hpa("llama", "llama", 9), snap, "validate", policy=pool).shape == "denied"
    # the injected default is capped by the pool, not by the one node up now
    verdict = decide(hpa("llama", "llama"), snap, "mutate", policy=pool)
    fixed = jsonpatch.apply_patch(hpa("llama", "llama"), list(verdict.patch))
    assert fixed["spec"]["maxReplicas"] == 8


# --------------------------------------------------------------------------- modes


def test_invalid_mode_label_is_reported_and_the_policy_mode_applies() -> None:
    snap = snapshot(
        namespace("default", labels={"gpumix.io/mode": "off"}),
        deployment("a100", gpu_product="A100"),
    )
    verdict = decide(deployment("a40", gpu_product="A40"), snap, "validate")
    assert verdict.shape == "denied"  # the policy's enforce applies, not "off"
    assert verdict.mode == "enforce"
    assert verdict.warnings[0].startswith(
        "invalid-mode-label: namespace default has the label gpumix.io/mode='off'"
    )
    assert verdict.findings[0].rule == "invalid-mode-label"
    # on every admission there, whatever the kind
    verdict = decide(hpa("h", "x", 3), snap, "validate")
    assert verdict.shape == "allowed" and len(verdict.warnings) == 1
    # once, from validation only (the mutating step does not repeat it)
    assert not decide(hpa("h", "x", 3), snap, "mutate").warnings
    audit = decide(hpa("h", "x", 3), snap, "validate", policy=Policy(mode="audit"))
    assert "the policy's mode (audit) applies" in audit.warnings[0]


# -- values gpumix cannot read -----------------------------------------------------------

GPU_FIELD = "spec.template.spec.containers[0].resources.limits[nvidia.com/gpu]"


def with_gpus(obj: dict, value: object) -> dict:
    obj["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "limits": {"nvidia.com/gpu": value}
    }
    return obj


def wire_request(obj: dict, literal: str) -> dict:
    """The request as the server decodes it from the wire, with a JSON literal (such as
    Infinity or NaN, which the standard library's decoder lets in) as the GPU amount."""
    body = json.dumps(review_body(with_gpus(obj, "PLACEHOLDER"))).replace('"PLACEHOLDER"', literal)
    return parse_review(json.loads(body))


@pytest.mark.parametrize("literal", ['"inf"', '"1e400"', '"10e399"', "1e400", "Infinity", "NaN"])
def test_unreadable_gpu_request_is_judged_by_the_mode_never_a_500(literal: str) -> None:
    snap = snapshot(namespace("warned", labels={"gpumix.io/mode": "warn"}))
    request = wire_request(deployment("huge"), literal)
    for phase in ("mutate", "validate"):
        verdict = review(request, snap, POLICY, phase)
        json.loads(json_bytes(to_response("u", verdict)))  # the answer serializes
    # enforce: denied, naming the field
    assert verdict.shape == "denied" and verdict.code == 403
    assert GPU_FIELD in verdict.message and "unreadable-field" in verdict.message
    # warn: allowed with the same finding as a warning; audit: only recorded
    warned = wire_request(deployment("huge", "warned"), literal)
    verdict = review(warned, snap, POLICY, "validate")
    assert verdict.shape == "allowed" and any(GPU_FIELD in w for w in verdict.warnings)
    verdict = review(request, snap, Policy(mode="audit"), "validate")
    assert verdict.shape == "allowed" and not verdict.warnings
    assert [f.rule for f in verdict.findings] == ["unreadable-field"]


def test_unreadable_gpu_request_still_counts_for_the_overlap_rule() -> None:
    """Its type (an unpinned GPU) is still read: an overlap with it is still an error."""
    snap = snapshot(with_gpus(deployment("huge"), "10e399"))
    verdict = decide(deployment("a40", gpu_product="A40"), snap, "validate")
    assert verdict.shape == "denied" and "selector-overlap" in verdict.message


def test_ceiling_rules_say_when_the_targets_gpus_cannot_be_read() -> None:
    snap = snapshot(
        with_gpus(deployment("huge", gpu_product="A100"), "1e400"), node("n", "A100", 8)
    )
    verdict = decide(hpa("h", "huge"), snap, "mutate")
    assert verdict.shape == "patched"  # the default ceiling, not capped by capacity
    assert verdict.patch[0]["value"] == POLICY.default_max_replicas
    [finding] = verdict.findings
    assert "cannot be read" in finding.message and GPU_FIELD in finding.message
    verdict = decide(hpa("h", "huge", 50), snap, "validate")
    assert verdict.shape == "allowed"
    assert any("max-replicas-above-ceiling" in w and GPU_FIELD in w for w in verdict.warnings)


def test_an_object_that_cannot_be_read_at_all_is_judged_by_the_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gpumix.kube.objects as objects

    def failing(obj: object, policy: Policy) -> object:
        raise RecursionError  # what a value nested past the interpreter's limit raises

    monkeypatch.setattr(objects, "deployment_view", failing)
    snap = snapshot(namespace("warned", labels={"gpumix.io/mode": "warn"}))
    assert decide(deployment("d"), snap, "mutate").shape == "allowed"
    verdict = decide(deployment("d"), snap, "validate")
    assert verdict.shape == "denied"
    assert "Deployment default/d: cannot be read: nested too deeply" in verdict.message
    verdict = decide(deployment("d", "warned"), snap, "validate")
    assert verdict.shape == "allowed" and "nested too deeply" in verdict.warnings[0]
    assert decide(deployment("d", "kube-system"), snap, "validate").shape == "allowed"


# -- bounded messages, warnings once ---------------------------------------------------


def broad_many(count: int) -> list[dict]:
    return [deployment(f"old-{i:03d}", gpu_product="A100") for i in range(count)]


def test_denial_names_at_most_three_others_and_counts_the_rest() -> None:
    snap = snapshot(*broad_many(81))
    verdict = decide(deployment("a40", gpu_product="A40"), snap, "validate")
    assert verdict.shape == "denied"
    assert verdict.message.count("[selector-overlap]") == 1
    assert "old-000" in verdict.message and "old-001, old-002 and 78 more" in verdict.message
    assert "old-003" not in verdict.message.split("already exist")[0]
    assert len(verdict.message) < 2000
    [finding] = [f for f in verdict.findings if f.rule == "selector-overlap"]
    assert len(finding.related) == 81  # every pair is still known, only not all named


def test_an_exists_selector_over_a_big_namespace_gives_a_bounded_answer() -> None:
    snap = snapshot(*broad_many(500))
    broad = deployment("any-model", gpu_product="A40")
    broad["spec"]["selector"] = {
        "matchExpressions": [{"key": "model.aibrix.ai/name", "operator": "Exists"}]
    }
    verdict = decide(broad, snap, "validate")
    assert verdict.shape == "denied" and "and 497 more" in verdict.message
    assert len(json_bytes(to_response("u", verdict))) < 4000


def test_mutate_sends_each_warning_once() -> None:
    snap = snapshot(*[isolated(f"old-{i}", "A100") for i in range(81)])
    verdict = decide(deployment("a40", gpu_product="A40"), snap, "mutate")
    assert verdict.shape == "patched"
    warnings = to_response("u", verdict)["response"]["warnings"]
    assert warnings == ["gpumix fixed selector-overlap on Deployment default/a40"]


def test_update_splits_new_overlaps_from_ones_already_there() -> None:
    """An UPDATE that re-pins the GPU type (A40 -> A100) raises one pair to an error
    (a40: the types now differ), keeps one error (scaled: autoscaled, before and after)
    and lowers one (twin: now the same type): only the new error denies."""
    scaled = deployment("scaled", gpu_product="A100")
    snap = snapshot(
        scaled,
        hpa("h", "scaled"),
        deployment("twin", gpu_product="A100"),
        deployment("a40", gpu_product="A40"),
    )
    old = deployment("me", gpu_product="A40")
    new = deployment("me", gpu_product="A100")
    verdict = decide(new, snap, "validate", "UPDATE", old=old)
    assert verdict.shape == "denied"
    errors = [f for f in verdict.findings if f.severity == "error"]
    assert [[r.name for r in f.related] for f in errors] == [["a40"]]
    kept = [f for f in verdict.findings if f.message.startswith("(already present")]
    assert [[r.name for r in f.related] for f in kept] == [["scaled"]]
    assert kept[0].severity == "warning" and "[selector-overlap]" in verdict.message
    assert "scaled" not in verdict.message


def test_an_unreadable_namespace_default_is_named_where_the_default_is_used() -> None:
    snap = snapshot(namespace("default", annotations={"gpumix.io/default-max-replicas": "lots"}))
    verdict = decide(hpa("h", "d"), snap, "mutate")
    assert verdict.shape == "patched" and verdict.patch[0]["value"] == POLICY.default_max_replicas
    [finding] = verdict.findings
    assert "metadata.annotations[gpumix.io/default-max-replicas]" in finding.message
    assert "must be a positive integer" in finding.message
