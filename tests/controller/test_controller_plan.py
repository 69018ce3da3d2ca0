"""Pure tests of controller.plan with a fake clock and a fake solver."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from controller_helpers import MODEL_KEY, bucket, deployment, gpumix, hpa

from gpumix.controller.plan import (
    GpuPool,
    LoadObservation,
    LoadUnavailable,
    Member,
    MixProblem,
    MixSnapshot,
    MixSolution,
    PlanPolicy,
    ProfileSet,
    ProfilesUnavailable,
    format_time,
    plan,
)
from gpumix.controller.spec import LoadBucket, SpecError, parse_spec
from gpumix.kube.objects import AUTOSCALER_KINDS, autoscaler_view, deployment_view
from gpumix.kube.policy import Policy

POLICY = Policy(model_label_keys=(MODEL_KEY,))
T0 = 1_800_000_000.0


class FakeSolver:
    def __init__(self, replicas: dict[str, int], status: str = "OPTIMAL") -> None:
        self.replicas = replicas
        self.status = status
        self.problems: list[MixProblem] = []

    def __call__(self, problem: MixProblem) -> MixSolution:
        self.problems.append(problem)
        return MixSolution(
            self.status,  # type: ignore[arg-type]
            dict(self.replicas),
            cost_per_hour=3.0,
            best_single_type_cost_per_hour=4.0,
            best_single_type="A100",
            solve_seconds=0.01,
        )


def member(name: str, gpu: str | None, replicas: int, **kw: Any) -> Member:
    auto = kw.pop("autoscalers", ())
    used = kw.pop("used", 0)
    view = deployment_view(deployment(name, gpu, replicas=replicas, **kw), POLICY)
    return Member(view, used, tuple(auto))


def snap(
    members: list[Member],
    *,
    status: dict[str, Any] | None = None,
    pools: dict[str, GpuPool] | None = None,
    **spec_kw: Any,
) -> MixSnapshot:
    # the fake solvers here change their answer for the same load: no tolerance band
    extra = {"tolerance": 0.0, **spec_kw.pop("extra", {})}
    obj = gpumix(load=[bucket(512, 128, 10)], extra=extra, **spec_kw)
    try:
        spec: Any = parse_spec(obj)
    except SpecError as exc:
        spec = exc
    return MixSnapshot(
        namespace="default",
        name="llama",
        generation=1,
        spec=spec,
        members=tuple(members),
        pools=pools if pools is not None else {"A100": GpuPool(16, 16), "A40": GpuPool(16, 16)},
        profiles=ProfileSet(frozenset({"A100", "A40"})),
        previous_status=status or {},
    )


def load(t: float = T0) -> LoadObservation:
    return LoadObservation((LoadBucket(512, 128, 10.0),), t, "static")


def cond(actions: Any, ctype: str) -> dict[str, Any]:
    return next(c for c in actions.status["conditions"] if c["type"] == ctype)


def test_scales_members_to_the_plan() -> None:
    solver = FakeSolver({"A100": 3, "A40": 2})
    s = snap([member("a100", "A100", 1), member("a40", "A40", 1)])
    out = plan(s, load(), PlanPolicy(solver, POLICY), T0)
    assert {(a.deployment, a.to_replicas) for a in out.scales} == {("a100", 3), ("a40", 2)}
    assert cond(out, "Ready")["status"] == "True"
    assert cond(out, "LoadAvailable")["status"] == "True"
    assert cond(out, "Scaling")["reason"] == "Scaled"
    assert out.status["costPerHour"] == 3.0 and out.status["bestSingleTypeCostPerHour"] == 4.0
    assert [e.reason for e in out.events] == ["ScaledUp", "ScaledUp"]
    # Each scale Event names its Deployment as a field (the shell drops it if the write fails).
    assert sorted(e.scaled or "" for e in out.events) == ["a100", "a40"]
    problem = solver.problems[0]
    assert {o.gpu_type: o.max_replicas for o in problem.options} == {"A100": 16, "A40": 16}


def test_recommend_mode_does_not_scale() -> None:
    s = snap([member("a100", "A100", 1), member("a40", "A40", 1)], mode="recommend")
    out = plan(s, load(), PlanPolicy(FakeSolver({"A100": 3, "A40": 2}), POLICY), T0)
    assert out.scales == ()
    assert cond(out, "Scaling")["reason"] == "RecommendOnly"
    assert {r.deployment: r.replicas for r in out.recommendations} == {"a100": 3, "a40": 2}


def test_missing_or_stale_load_keeps_replicas() -> None:
    s = snap(
        [member("a100", "A100", 4), member("a40", "A40", 2)],
        extra={"loadSource": {"prometheus": {"url": "http://p:9090", "stalenessSeconds": 60}}},
    )
    solver = FakeSolver({"A100": 0, "A40": 0})
    for ld, reason in (
        (LoadUnavailable("missing", "no series"), "LoadMissing"),
        (LoadUnavailable("partial", "no generation histogram"), "LoadPartial"),
        (load(T0 - 600), "LoadStale"),
    ):
        out = plan(s, ld, PlanPolicy(solver, POLICY), T0)
        assert out.scales == ()
        assert not out.load_available
        assert cond(out, "LoadAvailable")["status"] == "False"
        assert cond(out, "LoadAvailable")["reason"] == reason
        assert [e.type for e in out.events] == ["Warning"]
        # never scale to the minimum because data is missing: publish current replicas
        assert {r.deployment: r.replicas for r in out.recommendations} == {"a100": 4, "a40": 2}
    assert solver.problems == []


def test_scale_down_waits_for_stabilization_then_takes_window_max() -> None:
    policy = PlanPolicy(FakeSolver({"A100": 2, "A40": 1}), POLICY)
    members = [member("a100", "A100", 6), member("a40", "A40", 1)]
    out = plan(snap(members, stabilization=300), load(), policy, T0)
    assert out.scales == ()
    assert cond(out, "Scaling")["reason"] == "StabilizingScaleDown"
    assert 1.0 <= out.requeue_after <= 300
    status = dict(out.status)
    # 100 s later the plan asks 4: the floor in the window becomes 4
    policy = PlanPolicy(FakeSolver({"A100": 4, "A40": 1}), POLICY)
    out = plan(snap(members, stabilization=300, status=status), load(T0 + 100), policy, T0 + 100)
    assert out.scales == ()
    status = dict(out.status)
    policy = PlanPolicy(FakeSolver({"A100": 2, "A40": 1}), POLICY)
    out = plan(snap(members, stabilization=300, status=status), load(T0 + 299), policy, T0 + 299)
    assert out.scales == ()
    status = dict(out.status)
    out = plan(snap(members, stabilization=300, status=status), load(T0 + 301), policy, T0 + 301)
    assert [(a.deployment, a.to_replicas) for a in out.scales] == [("a100", 4)]


def test_scale_down_right_after_a_scale_up_waits() -> None:
    members = [member("a100", "A100", 5), member("a40", "A40", 1)]
    status = {"plan": [{"deployment": "a100", "lastScaleTime": format_time(T0 - 10)}]}
    policy = PlanPolicy(FakeSolver({"A100": 2, "A40": 1}), POLICY)
    out = plan(snap(members, stabilization=60, status=status), load(), policy, T0)
    assert out.scales == ()


def test_min_change_threshold() -> None:
    members = [member("a100", "A100", 4), member("a40", "A40", 3)]
    policy = PlanPolicy(FakeSolver({"A100": 5, "A40": 1}), POLICY)
    out = plan(snap(members, extra={"minChangeReplicas": 2}), load(), policy, T0)
    assert [(a.deployment, a.to_replicas) for a in out.scales] == [("a40", 1)]
    a100 = next(e for e in out.status["plan"] if e["deployment"] == "a100")
    assert "minChangeReplicas" in a100["decision"]


def test_below_minimum_is_raised_despite_threshold() -> None:
    members = [member("a100", "A100", 0), member("a40", "A40", 3)]
    extra = {
        "minChangeReplicas": 3,
        "gpuTypes": {"A100": {"minReplicas": 1, "maxReplicas": 8}, "A40": {"maxReplicas": 8}},
    }
    policy = PlanPolicy(FakeSolver({"A100": 1, "A40": 3}), POLICY)
    out = plan(snap(members, extra=extra), load(), policy, T0)
    assert [(a.deployment, a.to_replicas) for a in out.scales] == [("a100", 1)]


def test_ceilings_spec_max_free_gpus_and_autoscaler() -> None:
    auto = autoscaler_view(hpa("h", "a40", 3), AUTOSCALER_KINDS["HorizontalPodAutoscaler"])
    members = [
        member("a100", "A100", 1, gpus=2, used=2),
        member("a40", "A40", 1, autoscalers=[auto]),
    ]
    pools = {"A100": GpuPool(8, 4), "A40": GpuPool(16, 16)}
    solver = FakeSolver({"A100": 50, "A40": 50})
    out = plan(snap(members, pools=pools), load(), PlanPolicy(solver, POLICY), T0)
    # A100: (4 free + 2 held) // 2 per replica = 3; A40 runs what its HPA chose (1): the
    # others are planned around its actual replicas, not the 3 it could grow to
    options = {o.gpu_type: (o.min_replicas, o.max_replicas) for o in solver.problems[0].options}
    assert options == {"A100": (0, 3), "A40": (1, 1)}
    assert [(a.deployment, a.to_replicas) for a in out.scales] == [("a100", 3)]
    entries = {e["deployment"]: e for e in out.status["plan"]}
    assert "free A100 GPUs" in entries["a100"]["ceilingReason"]
    assert entries["a40"]["recommendedReplicas"] == 1
    assert entries["a40"]["ceiling"] == 3
    assert "HorizontalPodAutoscaler default/h" in entries["a40"]["autoscaledBy"]
    assert cond(out, "Scaling")["reason"] == "MembersAutoscaled"


def test_member_whose_autoscaler_follows_the_recommendation_is_planned_freely() -> None:
    auto = autoscaler_view(hpa("h", "a40", 3), AUTOSCALER_KINDS["HorizontalPodAutoscaler"])
    a40 = member("a40", "A40", 1, autoscalers=[auto])
    follower = Member(a40.deployment, 0, a40.autoscalers, follows_plan=True)
    solver = FakeSolver({"A100": 1, "A40": 50})
    out = plan(snap([member("a100", "A100", 1), follower]), load(), PlanPolicy(solver, POLICY), T0)
    options = {o.gpu_type: (o.min_replicas, o.max_replicas) for o in solver.problems[0].options}
    assert options["A40"] == (0, 3)
    entries = {e["deployment"]: e for e in out.status["plan"]}
    assert entries["a40"]["recommendedReplicas"] == 3
    assert out.scales == ()


def test_above_ceiling_is_lowered_at_once() -> None:
    members = [member("a100", "A100", 10), member("a40", "A40", 1)]
    pools = {"A100": GpuPool(4, -6), "A40": GpuPool(16, 15)}
    policy = PlanPolicy(FakeSolver({"A100": 4, "A40": 1}), POLICY)
    m = [Member(members[0].deployment, 10), Member(members[1].deployment, 1)]
    out = plan(snap(m, pools=pools, stabilization=600), load(), policy, T0)
    assert [(a.deployment, a.to_replicas) for a in out.scales] == [("a100", 4)]


def test_no_node_of_a_type_means_no_growth() -> None:
    members = [member("a100", "A100", 2), member("a40", "A40", 1)]
    solver = FakeSolver({"A100": 5, "A40": 1})
    out = plan(snap(members, pools={"A40": GpuPool(8, 7)}), load(), PlanPolicy(solver, POLICY), T0)
    assert out.scales == ()
    assert {o.gpu_type: o.max_replicas for o in solver.problems[0].options}["A100"] == 2


def test_every_member_autoscaled() -> None:
    h1 = autoscaler_view(hpa("h1", "a100", 8), AUTOSCALER_KINDS["HorizontalPodAutoscaler"])
    h2 = autoscaler_view(hpa("h2", "a40", 8), AUTOSCALER_KINDS["HorizontalPodAutoscaler"])
    members = [
        member("a100", "A100", 1, autoscalers=[h1]),
        member("a40", "A40", 1, autoscalers=[h2]),
    ]
    out = plan(snap(members), load(), PlanPolicy(FakeSolver({"A100": 4, "A40": 2}), POLICY), T0)
    assert out.scales == ()
    assert cond(out, "Scaling")["status"] == "False"
    assert cond(out, "Scaling")["reason"] == "MembersAutoscaled"


def test_bad_members_are_a_condition_naming_them() -> None:
    policy = PlanPolicy(FakeSolver({"A100": 1}), POLICY)
    overlapping = [
        member("a100", "A100", 1, isolated=False),
        member("a40", "A40", 1, isolated=False),
    ]
    out = plan(snap(overlapping), load(), policy, T0)
    ready = cond(out, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "OverlappingMembers")
    assert "a100" in ready["message"] and "a40" in ready["message"]
    assert out.scales == () and out.events[0].type == "Warning"

    dup = [member("x", "A100", 1), member("y", "A100", 1)]
    ready = cond(plan(snap(dup), load(), policy, T0), "Ready")
    assert ready["reason"] == "DuplicateGpuType" and "x and y" in ready["message"]

    unpinned = [member("x", None, 1)]
    assert cond(plan(snap(unpinned), load(), policy, T0), "Ready")["reason"] == (
        "MemberWithoutGpuType"
    )
    assert cond(plan(snap([]), load(), policy, T0), "Ready")["reason"] == "NoMembers"


def test_unknown_price_type_and_missing_profiles() -> None:
    policy = PlanPolicy(FakeSolver({}), POLICY)
    members = [member("a100", "A100", 1), member("a40", "A40", 1)]
    out = plan(snap(members, prices={"A100": 2, "A40": 1, "H200": 9}), load(), policy, T0)
    ready = cond(out, "Ready")
    assert ready["reason"] == "UnknownGpuType" and "H200" in ready["message"]

    s = snap(members)
    s = replace(s, **{"profiles": ProfileSet(frozenset({"A100"}))})
    ready = cond(plan(s, load(), policy, T0), "Ready")
    assert ready["reason"] == "MissingProfiles" and "A40" in ready["message"]

    s = replace(s, **{"profiles": ProfilesUnavailable("ConfigMap x not found")})
    ready = cond(plan(s, load(), policy, T0), "Ready")
    assert ready["reason"] == "ProfilesUnavailable" and "ConfigMap x" in ready["message"]


def test_invalid_spec_is_a_condition_and_one_event() -> None:
    s = snap([member("a100", "A100", 1)], extra={"headroom": 2.0, "mode": "fast"})
    assert "spec.headroom" in str(s.spec) and "spec.mode" in str(s.spec)
    out = plan(s, load(), PlanPolicy(FakeSolver({}), POLICY), T0)
    assert cond(out, "Ready")["reason"] == "InvalidSpec"
    assert [e.reason for e in out.events] == ["InvalidSpec"]
    # the same again: no new event (the condition did not change)
    s2 = replace(s, previous_status=dict(out.status))
    again = plan(s2, load(), PlanPolicy(FakeSolver({}), POLICY), T0 + 5)
    assert again.events == ()
    assert cond(again, "Ready")["lastTransitionTime"] == format_time(T0)


def test_solver_failure_keeps_replicas() -> None:
    members = [member("a100", "A100", 2), member("a40", "A40", 1)]
    out = plan(snap(members), load(), PlanPolicy(FakeSolver({}, "INFEASIBLE"), POLICY), T0)
    assert out.scales == ()
    assert cond(out, "Scaling")["reason"] == "NoPlan"
    assert out.status["solverStatus"] == "INFEASIBLE"


def test_spec_errors_name_fields() -> None:
    bad = gpumix(extra={"prices": {"A100": -1}, "loadSource": {}, "intervalSeconds": 0})
    try:
        parse_spec(bad)
    except SpecError as exc:
        fields = {f for f, _ in exc.problems}
    else:
        raise AssertionError("expected SpecError")
    assert {"spec.prices.A100", "spec.loadSource", "spec.intervalSeconds"} <= fields


def test_gpu_types_naming_no_member_are_not_ready() -> None:
    members = [member("a100", "A100", 1), member("a40", "A40", 1)]
    extra = {"gpuTypes": {"A100": {"maxReplicas": 4}, "H100": {"maxReplicas": 4}}}
    out = plan(snap(members, extra=extra), load(), PlanPolicy(FakeSolver({}), POLICY), T0)
    ready = cond(out, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "UnknownGpuType")
    assert "spec.gpuTypes names GPU type H100" in ready["message"]
    assert "A100, A40" in ready["message"]
    assert out.scales == ()
    assert [e.reason for e in out.events] == ["UnknownGpuType"]


def test_load_events_fire_on_transitions_only() -> None:
    """A stale load seen pass after pass (older each time) is one Event and one status."""
    prom = {"loadSource": {"prometheus": {"url": "http://p:9090", "stalenessSeconds": 60}}}
    members = [member("a100", "A100", 4), member("a40", "A40", 2)]
    policy = PlanPolicy(FakeSolver({"A100": 4, "A40": 2}), POLICY)
    status: dict[str, Any] = {}
    reasons: list[str] = []
    statuses = []
    for age in (10, 100, 200, 300, 400):
        out = plan(snap(members, status=status, extra=prom), load(T0 - age), policy, T0 + age)
        reasons += [e.reason for e in out.events]
        status = dict(out.status)
        statuses.append({k: v for k, v in status.items() if k != "lastPlanTime"})
    assert reasons.count("LoadStale") == 1
    # the held status is the same pass after pass (only the data's time moves)
    held = [
        {k: v for k, v in st.items() if k != "load"} | {"c": st["conditions"]}
        for st in statuses[1:]
    ]
    assert all(h == held[0] for h in held)
    out = plan(snap(members, status=status, extra=prom), load(T0 + 500), policy, T0 + 500)
    assert [e.reason for e in out.events] == ["LoadAvailable"]


def test_members_autoscaled_event_only_when_the_set_changes() -> None:
    h = autoscaler_view(hpa("h", "a40", 8), AUTOSCALER_KINDS["HorizontalPodAutoscaler"])
    members = [member("a100", "A100", 1), member("a40", "A40", 1, autoscalers=[h])]
    status: dict[str, Any] = {}
    seen: list[str] = []
    for i, rps in enumerate((10.0, 40.0, 10.0, 40.0)):
        policy = PlanPolicy(FakeSolver({"A100": 1 + i % 2, "A40": 1}), POLICY)
        ld = LoadObservation((LoadBucket(512, 128, rps),), T0 + i, "static")
        out = plan(snap(members, status=status), ld, policy, T0 + i)
        seen += [e.reason for e in out.events]
        status = dict(out.status)
    assert seen.count("MembersAutoscaled") == 1
    assert "ScaledUp" in seen


def test_manual_scale_is_reported_as_an_override() -> None:
    policy = PlanPolicy(FakeSolver({"A100": 2, "A40": 1}), POLICY)
    members = [member("a100", "A100", 2), member("a40", "A40", 1)]
    out = plan(snap(members), load(), policy, T0)
    status = dict(out.status)
    # someone runs kubectl scale deployment/a100 --replicas=5
    a100 = member("a100", "A100", 5)
    scaled = [Member(a100.deployment, 0, (), replicas_manager="kubectl"), members[1]]
    out = plan(snap(scaled, status=status), load(T0 + 5), policy, T0 + 5)
    overrides = [e for e in out.events if e.reason == "ScaleOverridden"]
    assert len(overrides) == 1 and overrides[0].type == "Warning"
    assert "a100 (A100) was scaled from 2 to 5 by kubectl" in overrides[0].message
    # the documented choice: in mode scale the plan wins (like an HPA's target)
    assert [(a.deployment, a.to_replicas) for a in out.scales] == [("a100", 2)]
    # our own scale (no other manager) is no override
    ours = [Member(a100.deployment, 0, ()), members[1]]
    out = plan(snap(ours, status=status), load(T0 + 5), policy, T0 + 5)
    assert not [e for e in out.events if e.reason == "ScaleOverridden"]
