"""Property tests of plan(): whatever the solver says, the safety rules hold."""

from __future__ import annotations

from typing import Any

from controller_helpers import MODEL_KEY, deployment, gpumix, hpa
from hypothesis import given, settings
from hypothesis import strategies as st

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
    plan,
)
from gpumix.controller.spec import LoadBucket, parse_spec
from gpumix.kube.objects import AUTOSCALER_KINDS, autoscaler_view, deployment_view
from gpumix.kube.policy import Policy

POLICY = Policy(model_label_keys=(MODEL_KEY,))
TYPES = ("A100", "A40", "L40S")
T0 = 1_900_000_000.0


@st.composite
def scenarios(draw: Any) -> dict[str, Any]:
    n = draw(st.integers(1, 3))
    types = TYPES[:n]
    return {
        "types": types,
        "current": {t: draw(st.integers(0, 12)) for t in types},
        "gpus": {t: draw(st.integers(1, 4)) for t in types},
        "free": {t: draw(st.integers(-8, 24)) for t in types},
        "spec_max": {t: draw(st.one_of(st.none(), st.integers(0, 10))) for t in types},
        "spec_min": {t: draw(st.integers(0, 3)) for t in types},
        "hpa": {t: draw(st.one_of(st.none(), st.integers(1, 8))) for t in types},
        "solver": {t: draw(st.integers(0, 40)) for t in types},
        "window": draw(st.sampled_from([0, 60, 600])),
        "threshold": draw(st.integers(1, 3)),
        "mode": draw(st.sampled_from(["scale", "recommend"])),
        "load_missing": draw(st.booleans()),
    }


def build(s: dict[str, Any]) -> tuple[MixSnapshot, Any]:
    gpu_types = {
        t: {
            "minReplicas": min(
                s["spec_min"][t], 99 if s["spec_max"][t] is None else s["spec_max"][t]
            )
        }
        | ({"maxReplicas": s["spec_max"][t]} if s["spec_max"][t] is not None else {})
        for t in s["types"]
    }
    obj = gpumix(
        mode=s["mode"],
        stabilization=s["window"],
        prices={t: 1.0 for t in s["types"]},
        extra={"gpuTypes": gpu_types, "minChangeReplicas": s["threshold"]},
    )
    members = []
    for t in s["types"]:
        view = deployment_view(
            deployment(f"m-{t.lower()}", t, replicas=s["current"][t], gpus=s["gpus"][t]), POLICY
        )
        autos = ()
        if s["hpa"][t] is not None:
            autos = (
                autoscaler_view(
                    hpa(f"h-{t}", view.name, s["hpa"][t]),
                    AUTOSCALER_KINDS["HorizontalPodAutoscaler"],
                ),
            )
        members.append(Member(view, s["current"][t] * s["gpus"][t], autos))
    snap = MixSnapshot(
        namespace="default",
        name="llama",
        generation=1,
        spec=parse_spec(obj),
        members=tuple(members),
        pools={t: GpuPool(64, s["free"][t]) for t in s["types"]},
        profiles=ProfileSet(frozenset(s["types"])),
    )
    load: Any = (
        LoadUnavailable("missing", "no data")
        if s["load_missing"]
        else LoadObservation((LoadBucket(512, 128, 5.0),), T0, "static")
    )
    return snap, load


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_safety_rules_hold(s: dict[str, Any]) -> None:
    snap, load = build(s)

    def solver(problem: MixProblem) -> MixSolution:
        return MixSolution("OPTIMAL", dict(s["solver"]), cost_per_hour=1.0)

    out = plan(snap, load, PlanPolicy(solver, POLICY), T0)
    if s["load_missing"] or s["mode"] == "recommend":
        assert out.scales == ()
    for action in out.scales:
        t = next(x for x in s["types"] if f"m-{x.lower()}" == action.deployment)
        assert s["hpa"][t] is None  # autoscaled members are never scaled
        if action.to_replicas > action.from_replicas:
            fits = max(0, s["free"][t] + s["current"][t] * s["gpus"][t]) // s["gpus"][t]
            assert action.to_replicas <= fits
            if s["spec_max"][t] is not None:
                assert action.to_replicas <= s["spec_max"][t]
        else:
            # a scale-down with a window only happens when forced by a ceiling
            if s["window"] > 0:
                assert "above the ceiling" in action.reason
    for rec in out.recommendations:
        t = next(x for x in s["types"] if f"m-{x.lower()}" == rec.deployment)
        if s["load_missing"]:
            assert rec.replicas == s["current"][t]  # fail static: never the minimum
        else:
            if s["hpa"][t] is not None:
                assert rec.replicas <= s["hpa"][t]
            if s["spec_max"][t] is not None:
                assert rec.replicas <= s["spec_max"][t]
