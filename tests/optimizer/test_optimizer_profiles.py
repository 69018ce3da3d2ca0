from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from gpumix.optimizer import Bucket, Status, solve
from gpumix.optimizer.profiles import (
    LoadHistogram,
    ProfileError,
    Slo,
    apply_slo,
    build_problem,
    parse_availability,
    parse_load,
    parse_prices,
    parse_profile,
    parse_slo,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
AIBRIX = ROOT / "tests" / "fixtures" / "aibrix-profiles"
A100 = AIBRIX / "sim-llama-a100.json"
A40 = AIBRIX / "sim-llama-a40.json"


def _examples():
    return [
        parse_profile(f.read_text(), str(f)) for f in sorted((EXAMPLES / "profiles").glob("*.yaml"))
    ]


def test_aibrix_profiles_are_read_and_transposed() -> None:
    raw = json.loads(A100.read_text())
    p = parse_profile(A100.read_text(), "a100.json")
    assert p.gpu == "sim-llama-a100"
    # AIBrix: indexes = [output buckets, input buckets]; tputs rows = output buckets
    assert p.output_tokens == tuple(raw["indexes"][0])
    assert p.input_tokens == tuple(raw["indexes"][1])
    assert p.rates[1][3] == raw["tputs"][3][1]
    assert p.latency["e2e"][1][3] == raw["e2e"][3][1]
    assert p.slo == Slo(percentile=99, e2e=5.0)
    assert p.price_per_hour == 1.2
    # the longest outputs break the 5 s end-to-end SLO on this GPU: rate 0
    assert all(row[-1] == 0.0 for row in p.rates)
    assert p.rate_for(Bucket(100, 3)) == p.rates[0][0]
    assert p.rate_for(Bucket(4096, 4)) == 0.0  # beyond the profiled inputs
    a40 = parse_profile(A40.read_text(), "a40.json")
    assert a40.latency == {} and a40.slo == Slo() and a40.price_per_hour == 0.4


def test_stricter_slo_recomputes_rates_from_latency() -> None:
    p = parse_profile(A100.read_text(), "a100.json")
    q = apply_slo(p, Slo(e2e=1.0))
    for i, row in enumerate(q.rates):
        for j, rate in enumerate(row):
            if p.latency["e2e"][i][j] > 1.0:
                assert rate == 0.0
            else:
                assert rate == p.rates[i][j]
    assert sum(x > 0 for r in q.rates for x in r) < sum(x > 0 for r in p.rates for x in r)
    assert q.slo.e2e == 1.0
    # a looser target keeps the measured rates
    assert apply_slo(p, Slo(e2e=50.0)).rates == p.rates
    with pytest.raises(ProfileError, match="ttft"):
        apply_slo(p, Slo(ttft=0.2))
    a40 = parse_profile(A40.read_text(), "a40.json")
    with pytest.raises(ProfileError, match=r"a40\.json: slo\.e2e"):
        apply_slo(a40, Slo(e2e=1.0))


def test_aibrix_profiles_plan_end_to_end() -> None:
    profs = [parse_profile(f.read_text(), f.name) for f in sorted(AIBRIX.glob("*.json"))]
    load = LoadHistogram("llama2-7b", (Bucket(128, 4), Bucket(2048, 64)), (50.0, 4.0))
    prices = {p.gpu: p.price_per_hour or 0.0 for p in profs}
    prob = build_problem(profs, load, prices)
    res = solve(prob, time_limit_s=5)
    assert res.status == Status.OPTIMAL and sum(res.replicas.values()) > 0


def test_examples_parse_and_percentile_is_checked() -> None:
    profs = _examples()
    assert [p.gpu for p in profs] == ["A100", "A40", "L20"]
    assert all(p.slo == Slo(percentile=99, e2e=20.0) for p in profs)
    with pytest.raises(ProfileError, match="p99"):
        apply_slo(profs[0], Slo(percentile=100))
    prices = parse_prices((EXAMPLES / "prices.yaml").read_text())
    assert prices == {"A100": 2.2, "A40": 0.8, "L20": 0.7}
    avail = parse_availability((EXAMPLES / "availability.yaml").read_text())
    assert avail["A100"].available_gpus == 8 and avail["L20"].min_replicas == 1
    load = parse_load((EXAMPLES / "loads" / "chat.yaml").read_text())
    assert load.model == "llama2-7b" and load.rates[0] == 30.0
    assert parse_load((EXAMPLES / "loads" / "idle.yaml").read_text()).buckets == ()


def test_slo_spec_parsing() -> None:
    assert parse_slo("e2e=5, ttft=0.5,percentile=99") == Slo(99, 5.0, 0.5, None)
    with pytest.raises(ProfileError, match="--slo"):
        parse_slo("latency=3")
    with pytest.raises(ProfileError, match="e2e"):
        parse_slo("e2e=fast")


PROFILE = """
apiVersion: gpumix.io/v1alpha1
kind: GPUProfile
spec:
  gpu: X
  inputTokens: [128, 512]
  outputTokens: [64]
  rates: [[RATE0], [2.0]]
"""


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (PROFILE.replace("RATE0", ".nan"), r"f: spec.rates\[0\]\[0\]: must be finite"),
        (PROFILE.replace("RATE0", "-1"), r"f: spec.rates\[0\]\[0\]: must be >= 0"),
        (PROFILE.replace("RATE0", "fast"), r"spec.rates\[0\]\[0\]: must be a number"),
        (PROFILE.replace("RATE0", "0").replace("[2.0]", "[0]"), "empty profile"),
        (PROFILE.replace("[[RATE0], [2.0]]", "[[1.0]]"), "must have 2 rows"),
        (PROFILE.replace("[128, 512]", "[512, 128]").replace("RATE0", "1"), "increasing"),
        (PROFILE.replace("v1alpha1", "v9").replace("RATE0", "1"), "apiVersion"),
        ("{}", "empty profile"),
        ("", "must be a JSON/YAML mapping"),
        ("kind: Other", "not a GPU profile"),
        ("{not json", "invalid JSON"),
        ("a: [1,", "invalid YAML"),
        ('{"gpu": "x", "tputs": [[1]], "indexes": [[1]]}', "indexes"),
        ('{"gpu": "x", "tputs": [[0]], "indexes": [[1],[1]]}', "empty profile"),
        ('{"gpu": "x", "tputs": [[NaN]], "indexes": [[1],[1]]}', "must be finite"),
    ],
)
def test_bad_profiles_name_file_and_field(text: str, match: str) -> None:
    with pytest.raises(ProfileError, match=match) as info:
        parse_profile(text, "f")
    assert str(info.value).startswith("f")


def test_build_problem_errors_name_the_file() -> None:
    profs = _examples()
    load = parse_load((EXAMPLES / "loads" / "chat.yaml").read_text(), "chat.yaml")
    with pytest.raises(ProfileError, match=r"prices.yaml: spec.gpus.L20: no price"):
        build_problem(profs, load, {"A100": 1.0, "A40": 1.0}, prices_source="prices.yaml")
    with pytest.raises(ProfileError, match="H100"):
        build_problem(profs, load, {"A100": 1, "A40": 1, "L20": 1}, parse_availability("H100: 3"))
    with pytest.raises(ProfileError, match="also profiled"):
        build_problem([profs[0], profs[0]], load, {"A100": 1.0})
    with pytest.raises(ProfileError, match="no GPU profiles"):
        build_problem([], load, {})
    with pytest.raises(ProfileError, match=r"spec.buckets\[0\].rate"):
        parse_load("buckets: [{inputTokens: 1, outputTokens: 1, rate: -3}]", "l")
    with pytest.raises(ProfileError, match=r"spec.gpus.A100"):
        parse_prices("A100: .nan", "p")
    with pytest.raises(ProfileError, match="kind"):
        parse_prices("kind: Load\napiVersion: gpumix.io/v1alpha1\nspec: {}", "p")
    with pytest.raises(ProfileError, match=r"spec.gpus.A100.limit"):
        parse_availability("A100: {limit: 3}", "a")


def test_load_beyond_the_profiled_grid_is_infeasible_by_name() -> None:
    profs = _examples()
    load = LoadHistogram("m", (Bucket(100, 10), Bucket(20000, 10)), (1.0, 1.0))
    prob = build_problem(profs, load, {"A100": 2.2, "A40": 0.8, "L20": 0.7})
    res = solve(prob, time_limit_s=5)
    assert res.status == Status.INFEASIBLE and "in=20000,out=10" in res.reason


def test_slo_change_through_build_problem() -> None:
    profs = _examples()
    load = parse_load((EXAMPLES / "loads" / "rag.yaml").read_text())
    prices = parse_prices((EXAMPLES / "prices.yaml").read_text())
    loose = solve(build_problem(profs, load, prices), time_limit_s=5)
    tight = solve(build_problem(profs, load, prices, slo=Slo(e2e=4.0)), time_limit_s=5)
    assert loose.status == Status.OPTIMAL
    assert tight.status != Status.OPTIMAL or tight.cost_per_hour >= loose.cost_per_hour
    assert not math.isnan(loose.cost_per_hour)
