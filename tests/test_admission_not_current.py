"""Decisions while the webhook's cluster view is not current (``review(..., current=False)``):
right after an API-server restart, a ``410 Gone`` or an outage, the cache may miss a
Deployment created a moment ago, so overlaps cannot be judged on it."""

from __future__ import annotations

import copy
from typing import Any

from webhook_kit import deployment, hpa, namespace, review_body, snapshot

from gpumix.admission import CACHE_RULE, Verdict, review
from gpumix.kube.policy import Policy
from gpumix.webhook.wire import parse_review

POLICY = Policy()


def decide(
    obj: dict[str, Any],
    *objs: dict[str, Any],
    phase: str = "validate",
    operation: str = "CREATE",
    old: dict[str, Any] | None = None,
    current: bool = False,
) -> Verdict:
    request = parse_review(review_body(obj, operation, old=old))
    return review(request, snapshot(*objs), POLICY, phase, current=current)  # type: ignore[arg-type]


def test_gpu_deployment_is_refused_with_a_retryable_reason_in_enforce_mode() -> None:
    verdict = decide(deployment("a40", gpu_product="A40"))
    assert verdict.shape == "denied" and verdict.code == 503
    assert "not current" in verdict.message and "retry" in verdict.message
    assert [f.rule for f in verdict.findings] == [CACHE_RULE]
    # the same request with a current view is judged by the rules (here: allowed)
    assert decide(deployment("a40", gpu_product="A40"), current=True).shape == "allowed"


def test_an_overlap_the_stale_view_cannot_see_is_not_admitted() -> None:
    # the A100 Deployment exists in the cluster but not (yet) in the stale view
    verdict = decide(deployment("a40", gpu_product="A40"))
    assert not verdict.allowed
    # with it in a current view, the same create is denied for the overlap itself
    current = decide(
        deployment("a40", gpu_product="A40"), deployment("a100", gpu_product="A100"), current=True
    )
    assert not current.allowed and "selector-overlap" in current.message


def test_update_that_changes_nothing_overlaps_depend_on_is_judged_as_usual() -> None:
    old = deployment("a40", gpu_product="A40")
    new = copy.deepcopy(old)
    new["spec"]["replicas"] = 5
    new["spec"]["template"]["spec"]["containers"][0]["image"] = "vllm:v2"
    assert decide(new, old, operation="UPDATE", old=old).allowed
    # a change of the template labels could create an overlap: refused while not current
    relabelled = copy.deepcopy(new)
    relabelled["spec"]["template"]["metadata"]["labels"]["tier"] = "gold"
    verdict = decide(relabelled, old, operation="UPDATE", old=old)
    assert verdict.shape == "denied" and verdict.code == 503


def test_warn_and_audit_modes_allow() -> None:
    warn_ns = namespace("default", labels={"gpumix.io/mode": "warn"})
    audit_ns = namespace("default", labels={"gpumix.io/mode": "audit"})
    warned = decide(deployment("a40", gpu_product="A40"), warn_ns)
    assert warned.allowed and any(CACHE_RULE in w for w in warned.warnings)
    audited = decide(deployment("a40", gpu_product="A40"), audit_ns)
    assert audited.allowed and not audited.warnings


def test_out_of_scope_objects_and_the_mutating_step_do_not_depend_on_the_view() -> None:
    cpu = deployment("web", selector={"app": "web"}, gpus=0, model=None)
    assert decide(cpu).allowed
    assert decide(hpa("h", "a40", 4)).allowed
    # mutation runs as usual; the validating step that follows it refuses
    mutated = decide(deployment("a40", gpu_product="A40"), phase="mutate")
    assert mutated.shape in ("allowed", "patched")
