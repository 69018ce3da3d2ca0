from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from optimizer_kit import brute_force, check_plan, fits, make_problem

from gpumix.optimizer import (
    Bucket,
    GpuOption,
    Pool,
    Problem,
    Status,
    single_type_plans,
    solve,
    solve_joint,
)

LIMIT = 10.0


@st.composite
def tiny_problems(draw, max_types=3, max_buckets=4, churn=True):
    ng = draw(st.integers(1, max_types))
    nb = draw(st.integers(1, max_buckets))
    grid = st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.5, 6.0, 8.0])
    load = draw(st.lists(grid, min_size=nb, max_size=nb))
    rates = [
        draw(st.lists(st.sampled_from([0.0, 1.0, 2.0, 3.0, 5.0, 8.0]), min_size=nb, max_size=nb))
        for _ in range(ng)
    ]
    prices = draw(st.lists(st.sampled_from([0.5, 1.0, 1.3, 2.0, 3.1]), min_size=ng, max_size=ng))
    kw = {
        "gpr": draw(st.lists(st.sampled_from([1, 1, 2]), min_size=ng, max_size=ng)),
        "avail": draw(
            st.lists(st.sampled_from([None, None, 0, 2, 3, 6]), min_size=ng, max_size=ng)
        ),
        "mins": draw(st.lists(st.sampled_from([0, 0, 1]), min_size=ng, max_size=ng)),
        "maxs": draw(st.lists(st.sampled_from([None, None, 1, 3]), min_size=ng, max_size=ng)),
        "cur": draw(st.lists(st.integers(0, 3), min_size=ng, max_size=ng)),
        "headroom": draw(st.sampled_from([0.0, 0.0, 0.1, 0.25])),
        "churn_weight": draw(st.sampled_from([0.0, 0.4, 1.5])) if churn else 0.0,
    }
    return make_problem(load, rates, prices, **kw)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tiny_problems())
def test_equals_brute_force_and_every_plan_is_feasible(problem: Problem) -> None:
    res = solve(problem, time_limit_s=LIMIT, seed=0)
    expected = brute_force(problem)
    if expected is None:
        assert res.status == Status.INFEASIBLE, res
        assert res.reason
    else:
        assert res.status == Status.OPTIMAL, res
        assert math.isclose(res.objective, expected, rel_tol=1e-9, abs_tol=1e-9), (res, expected)
        assert res.gap == 0.0 and math.isclose(res.bound, res.objective)
        check_plan(problem, res)


@settings(max_examples=60, deadline=None)
@given(tiny_problems(max_types=4, max_buckets=8, churn=False))
def test_mix_never_costs_more_than_best_single_type(problem: Problem) -> None:
    res = solve(problem, time_limit_s=LIMIT, seed=0)
    singles = [r for r in single_type_plans(problem).values() if r.ok]
    for r in singles:
        check_plan(problem, r)
    if singles:
        assert res.ok
        assert res.cost_per_hour <= min(r.cost_per_hour for r in singles) + 1e-9
    if res.ok:
        check_plan(problem, res)


def test_fits_helper_agrees_with_hand_cases() -> None:
    # one bucket needing 2 replicas of type 0 or 4 of type 1
    assert fits([[2.0, 4.0]], [1.0, 2.0])  # half on each
    assert not fits([[2.0, 4.0]], [0.9, 2.0])
    assert fits([[2.0, math.inf], [1.0, 1.0]], [2.0, 1.0])
    assert not fits([[2.0, math.inf], [1.0, 1.0]], [2.0, 0.9])


def test_replicas_are_rounded_up_never_truncated() -> None:
    p = make_problem([2.5], [[1.0]], [1.0])
    res = solve(p, time_limit_s=LIMIT)
    assert res.status == Status.OPTIMAL and res.replicas == {"g0": 3}


def test_headroom_reserves_capacity() -> None:
    p = make_problem([3.0], [[1.0]], [1.0], headroom=0.25)
    assert solve(p, time_limit_s=LIMIT).replicas == {"g0": 4}


def test_split_beats_single_types() -> None:
    # bucket 0 is cheap on g0, bucket 1 cheap on g1: the mix uses both
    p = make_problem([1.0, 1.0], [[1.0, 0.25], [0.25, 1.0]], [1.0, 1.0])
    res = solve(p, time_limit_s=LIMIT)
    assert res.replicas == {"g0": 1, "g1": 1}
    assert [round(x, 6) for x in res.assignment[0]] == [1.0, 0.0]
    best_single = min(r.cost_per_hour for r in single_type_plans(p).values() if r.ok)
    assert res.cost_per_hour == 2.0 < best_single == 5.0


def test_fractional_split_fills_rounding_slack() -> None:
    # 1.5 replicas of load: one cheap g1 replica (capacity 1) + half on g0 is cheaper than 2 g0
    p = make_problem([1.5], [[1.0], [1.0]], [1.0, 0.6], maxs=[None, 1])
    res = solve(p, time_limit_s=LIMIT)
    assert res.replicas == {"g0": 1, "g1": 1}
    check_plan(p, res)


def test_zero_load_gives_minimums() -> None:
    p = make_problem([0.0, 0.0], [[1.0, 1.0], [2.0, 0.0]], [1.0, 2.0], mins=[2, 1])
    res = solve(p, time_limit_s=LIMIT)
    assert res.status == Status.OPTIMAL and res.replicas == {"g0": 2, "g1": 1}
    empty = Problem(
        (),
        (),
        p.gpus[:1]
        and tuple(GpuOption(g.name, (), g.price_per_hour, min_replicas=1) for g in p.gpus),
    )
    assert solve(empty, time_limit_s=LIMIT).replicas == {"g0": 1, "g1": 1}


def test_churn_zero_ignores_current_replicas() -> None:
    p = make_problem([2.0], [[1.0], [1.0]], [1.0, 1.2], cur=[0, 5], churn_weight=0.0)
    assert solve(p, time_limit_s=LIMIT).replicas == {"g0": 2, "g1": 0}


def test_churn_keeps_current_plan_when_change_is_not_worth_it() -> None:
    # moving from 2 x g1 to 2 x g0 saves 0.4/h but changes 4 replicas
    p = make_problem([2.0], [[1.0], [1.0]], [1.0, 1.2], cur=[0, 2], churn_weight=0.5)
    res = solve(p, time_limit_s=LIMIT)
    assert res.replicas == {"g0": 0, "g1": 2}
    assert math.isclose(res.objective, 2.4)
    cheap = make_problem([2.0], [[1.0], [1.0]], [1.0, 1.2], cur=[0, 2], churn_weight=0.01)
    assert solve(cheap, time_limit_s=LIMIT).replicas == {"g0": 2, "g1": 0}


def test_availability_and_gpus_per_replica_hold() -> None:
    # g0 is cheapest but only 3 GPUs at 2 per replica: at most 1 replica
    p = make_problem([4.0], [[2.0], [1.0]], [0.4, 1.0], gpr=[2, 1], avail=[3, None])
    res = solve(p, time_limit_s=LIMIT)
    assert res.replicas["g0"] == 1
    check_plan(p, res)


def test_deterministic_for_a_fixed_seed() -> None:
    import random

    rng = random.Random(7)
    nb, ng = 40, 5
    load = [rng.uniform(0, 3) for _ in range(nb)]
    rates = [[rng.choice([0.0, rng.uniform(0.5, 6)]) for _ in range(nb)] for _ in range(ng)]
    rates[0] = [rng.uniform(0.5, 6) for _ in range(nb)]
    prices = [rng.uniform(0.5, 3) for _ in range(ng)]
    p = make_problem(load, rates, prices, headroom=0.1)
    a = solve(p, time_limit_s=LIMIT, seed=3)
    b = solve(p, time_limit_s=LIMIT, seed=3)
    assert a.status == Status.OPTIMAL
    assert (a.replicas, a.assignment, a.objective, a.nodes) == (
        b.replicas,
        b.assignment,
        b.objective,
        b.nodes,
    )
    check_plan(p, a)


def test_unservable_bucket_is_infeasible_with_its_name() -> None:
    p = make_problem([1.0, 2.0], [[1.0, 0.0], [1.0, 0.0]], [1.0, 1.0])
    res = solve(p, time_limit_s=LIMIT)
    assert res.status == Status.INFEASIBLE
    assert "in=32,out=16" in res.reason and "within the SLO" in res.reason
    assert "in=16,out=8" not in res.reason


def test_low_availability_is_infeasible_with_a_reason() -> None:
    p = make_problem([5.0], [[1.0], [1.0]], [1.0, 1.0], avail=[2, 2])
    res = solve(p, time_limit_s=LIMIT)
    assert res.status == Status.INFEASIBLE
    assert "2 GPUs available" in res.reason
    only = make_problem([1.0], [[1.0], [0.0]], [1.0, 1.0], avail=[0, 4])
    r2 = solve(only, time_limit_s=LIMIT)
    assert r2.status == Status.INFEASIBLE and "no capacity for bucket" in r2.reason
    mins = make_problem([1.0], [[1.0]], [1.0], mins=[3], avail=[2])
    assert "min_replicas 3" in solve(mins, time_limit_s=LIMIT).reason


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"load": [math.nan]}, "load[0]"),
        ({"load": [-1.0]}, "load[0]"),
        ({"rates": [[-2.0]]}, "gpus[g0].rates[0]"),
        ({"rates": [[math.inf]]}, "gpus[g0].rates[0]"),
        ({"prices": [math.nan]}, "price_per_hour"),
        ({"headroom": 1.0}, "headroom"),
        ({"churn_weight": -1.0}, "churn_weight"),
        ({"gpr": [0]}, "gpus_per_replica"),
        ({"mins": [-1]}, "min_replicas"),
    ],
)
def test_invalid_inputs_are_reported_not_raised(kwargs, needle) -> None:
    base = {"load": [1.0], "rates": [[1.0]], "prices": [1.0]}
    base.update(kwargs)
    load, rates, prices = base.pop("load"), base.pop("rates"), base.pop("prices")
    res = solve(make_problem(load, rates, prices, **base), time_limit_s=LIMIT)
    assert res.status == Status.INVALID
    assert any(needle in e for e in res.errors), res.errors


def test_more_invalid_shapes() -> None:
    g = GpuOption("a", (1.0, 2.0), 1.0)
    assert solve(Problem((Bucket(1, 1),), (1.0,), (g,)), time_limit_s=1).status == Status.INVALID
    assert solve(Problem((Bucket(1, 1),), (1.0,), ()), time_limit_s=1).errors == (
        "gpus: no GPU types",
    )
    dup = Problem((), (), (GpuOption("a", (), 1.0), GpuOption("a", (), 2.0)))
    assert "duplicate" in solve(dup, time_limit_s=1).errors[0]
    ok = make_problem([1.0], [[1.0]], [1.0])
    assert solve(ok, time_limit_s=0).status == Status.INVALID
    assert solve(ok, time_limit_s=math.nan).status == Status.INVALID
    assert solve("nonsense", time_limit_s=1).status == Status.INVALID  # type: ignore[arg-type]


def test_time_limit_is_never_reported_optimal() -> None:
    ticks = iter(range(10_000))

    def clock() -> float:  # every reading is one second later
        return float(next(ticks))

    p = make_problem([1.5, 2.5], [[1.0, 1.0], [1.0, 1.0]], [1.0, 0.9])
    res = solve(p, time_limit_s=0.5, clock=clock)
    assert res.status in (Status.FEASIBLE, Status.UNKNOWN)
    assert res.status != Status.OPTIMAL


def test_joint_respects_the_shared_pool() -> None:
    a = make_problem([3.0], [[1.0], [1.0]], [1.0, 2.0], model="a")
    b = make_problem([2.0], [[1.0], [1.0]], [1.0, 2.0], model="b")
    # alone each model takes only g0 (5 GPUs in total); the pool has 4 of g0
    pool = Pool({"g0": 4})
    jr = solve_joint([a, b], pool, time_limit_s=LIMIT)
    assert jr.status == Status.OPTIMAL
    used = sum(r.replicas["g0"] for r in jr.results)
    assert used == 4
    assert math.isclose(jr.cost_per_hour, 4 * 1.0 + 1 * 2.0)
    for p, r in zip([a, b], jr.results, strict=True):
        check_plan(p, r)
    free = solve_joint([a, b], Pool({}), time_limit_s=LIMIT)
    assert math.isclose(free.cost_per_hour, 5.0)
    tight = solve_joint([a, b], Pool({"g0": 0, "g1": 2}), time_limit_s=LIMIT)
    assert tight.status == Status.INFEASIBLE and tight.reason
    bad = solve_joint([a, make_problem([math.nan], [[1.0]], [1.0])], pool, time_limit_s=1)
    assert bad.status == Status.INVALID and "problems[1]" in bad.errors[0]


@settings(max_examples=25, deadline=None)
@given(
    st.lists(tiny_problems(max_types=2, max_buckets=2), min_size=2, max_size=2), st.integers(0, 6)
)
def test_joint_equals_brute_force_on_tiny_pools(problems, pool_g0) -> None:
    import itertools

    from optimizer_kit import _need

    pool = {"g0": pool_g0}
    jr = solve_joint(problems, Pool(pool), time_limit_s=LIMIT, gap_limit=0.0)
    # brute force over both models' replica vectors
    best = None
    per_model = []
    for p in problems:
        need = _need(p)
        usable = 1.0 - p.headroom
        opts = []
        ranges = []
        for j, g in enumerate(p.gpus):
            total = sum(r[j] for r in need if math.isfinite(r[j]))
            hi = max(g.min_replicas, g.current_replicas, math.ceil(total / usable) + 1)
            cap = g.replica_cap()
            ranges.append(range(g.min_replicas, (hi if cap is None else min(hi, cap)) + 1))
        for ns in itertools.product(*ranges):
            if fits(need, [n * usable for n in ns]):
                obj = sum(
                    n * g.replica_cost + p.churn_weight * abs(n - g.current_replicas)
                    for n, g in zip(ns, p.gpus, strict=True)
                )
                g0 = sum(
                    n * g.gpus_per_replica
                    for n, g in zip(ns, p.gpus, strict=True)
                    if g.name == "g0"
                )
                opts.append((obj, g0))
        per_model.append(opts)
    for (o1, u1), (o2, u2) in itertools.product(*per_model):
        if u1 + u2 <= pool_g0 and (best is None or o1 + o2 < best):
            best = o1 + o2
    if best is None:
        assert jr.status == Status.INFEASIBLE, jr
    else:
        assert jr.status == Status.OPTIMAL, jr
        assert math.isclose(jr.objective, best, rel_tol=1e-9, abs_tol=1e-9)
        for p, r in zip(problems, jr.results, strict=True):
            check_plan(p, r)
        assert (
            sum(
                r.replicas.get("g0", 0) * p.gpus[0].gpus_per_replica
                for p, r in zip(problems, jr.results, strict=True)
            )
            <= pool_g0
        )


@settings(max_examples=60, deadline=None)
@given(tiny_problems())
def test_full_mip_path_equals_brute_force(problem: Problem) -> None:
    """The HiGHS path used for large instances agrees with brute force too."""
    from optimizer_kit import full_mip

    from gpumix.optimizer.solve import _block, _merge_buckets, diagnose

    expected = brute_force(problem)
    if diagnose(problem):
        assert expected is None
        return
    need, _ = _merge_buckets(problem)
    out = full_mip([_block(problem, need, None)], [], time_limit_s=LIMIT, hint=None)
    if expected is None:
        assert out.status == "infeasible"
    else:
        assert out.status == "optimal"
        assert math.isclose(out.objective, expected, rel_tol=1e-9, abs_tol=1e-9)


def test_large_instance_goes_through_both_searches() -> None:
    import random

    rng = random.Random(11)
    nb, ng = 700, 8  # > 4000 columns: short column-generation search, then the full MIP
    load = [rng.uniform(0, 0.3) for _ in range(nb)]
    rates = [[rng.uniform(0.2, 4) for _ in range(nb)] for _ in range(ng)]
    prices = [rng.uniform(0.5, 3) for _ in range(ng)]
    p = make_problem(load, rates, prices)
    res = solve(p, time_limit_s=20)
    assert res.ok
    check_plan(p, res)
    singles = [r.cost_per_hour for r in single_type_plans(p).values() if r.ok]
    assert res.cost_per_hour <= min(singles) + 1e-9


def test_joint_minimums_above_the_pool_are_infeasible_and_branching_survives_pools() -> None:
    a = make_problem([0.0], [[1.0]], [1.0], mins=[3], model="a")
    b = make_problem([0.0], [[1.0]], [1.0], mins=[2], model="b")
    jr = solve_joint([a, b], Pool({"g0": 4}), time_limit_s=LIMIT)
    assert jr.status == Status.INFEASIBLE and jr.reason
    # fractional loads whose rounding must respect a tight pool: branches hit the pool row
    c = make_problem([1.5, 1.5], [[1.0, 1.0], [1.0, 1.0]], [1.0, 1.1], model="c")
    d = make_problem([1.5, 0.7], [[1.0, 1.0], [1.0, 1.0]], [1.0, 1.1], model="d")
    jr2 = solve_joint([c, d], Pool({"g0": 4, "g1": 2}), time_limit_s=LIMIT, gap_limit=0.0)
    assert jr2.status == Status.OPTIMAL
    assert sum(r.replicas["g0"] for r in jr2.results) <= 4
    for p, r in zip([c, d], jr2.results, strict=True):
        check_plan(p, r)


def test_joint_gap_limit_stops_early_but_never_claims_more_than_it_proved() -> None:
    import random

    rng = random.Random(5)
    problems = []
    for m in range(6):
        nb, ng = 12, 3
        load = [rng.uniform(0.5, 3.0) for _ in range(nb)]
        rates = [[rng.uniform(0.5, 3.0) for _ in range(nb)] for _ in range(ng)]
        problems.append(make_problem(load, rates, [1.0, 1.4, 2.1], model=f"m{m}"))
    alone = sum(solve(p, time_limit_s=LIMIT).replicas["g0"] for p in problems)
    pool = Pool({"g0": alone - 4})  # the cheapest type runs short
    loose = solve_joint(problems, pool, time_limit_s=LIMIT, gap_limit=0.01)
    exact = solve_joint(problems, pool, time_limit_s=LIMIT, gap_limit=0.0)
    for jr in (loose, exact):
        assert jr.status in (Status.OPTIMAL, Status.FEASIBLE)
        assert sum(r.replicas["g0"] for r in jr.results) <= alone - 4
        for p, r in zip(problems, jr.results, strict=True):
            check_plan(p, r)
        assert jr.bound <= jr.objective + 1e-9
        if jr.status == Status.FEASIBLE:
            assert jr.gap > 0
    assert loose.gap <= 0.01 + 1e-12
    assert exact.objective <= loose.objective + 1e-9
    assert exact.nodes >= loose.nodes
    bad = solve_joint(problems, pool, time_limit_s=LIMIT, gap_limit=1.5)
    assert bad.status == Status.INVALID and "gap_limit" in bad.errors[0]


def test_optimal_plan_reports_no_gap_when_sums_differ_in_the_last_bit() -> None:
    """The search and the result sum the same optimum in different orders (here
    15.1 against 15.100000000000001): an OPTIMAL result still has gap 0 and its bound
    equal to its objective."""
    p = make_problem([8.0], [[2.0], [0.0], [0.0]], [1.3, 1.3, 0.5], cur=[0, 3, 0], churn_weight=1.5)
    res = solve(p, time_limit_s=LIMIT)
    assert res.status == Status.OPTIMAL
    assert res.replicas == {"g0": 4, "g1": 3, "g2": 0}
    assert res.gap == 0.0 and res.bound == res.objective
