from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpumix.cli import main

ROOT = Path(__file__).resolve().parents[2]
EX = ROOT / "examples"
BASE = ["plan", "--profiles", str(EX / "profiles"), "--prices", str(EX / "prices.yaml")]


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main([*BASE, *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_table_shows_mix_single_type_and_saving(capsys) -> None:
    code, out, err = run(capsys, "--load", str(EX / "loads" / "chat.yaml"))
    assert code == 0, err
    assert "GPU TYPE" in out and "A100" in out and "TOTAL" in out
    assert "best single GPU type: A100" in out and "the mix saves" in out


def test_json_shape(capsys) -> None:
    code, out, _ = run(
        capsys,
        "--load",
        str(EX / "loads" / "rag.yaml"),
        "--availability",
        str(EX / "availability.yaml"),
        "--output",
        "json",
        "--time-limit",
        "5",
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["status"] == "OPTIMAL"
    assert set(doc["replicas"]) == {"A100", "A40", "L20"}
    assert {
        "costPerHour",
        "objective",
        "bound",
        "gap",
        "runtimeSeconds",
        "singleType",
        "bestSingleType",
        "saving",
        "gpus",
        "assignment",
        "reason",
        "errors",
    } <= set(doc)
    assert doc["costPerHour"] <= doc["bestSingleType"]["costPerHour"]
    assert doc["replicas"]["L20"] >= 1  # the availability file's minimum
    for row in doc["assignment"]:
        assert abs(sum(row["fractions"].values()) - 1.0) < 1e-6


def test_infeasible_exits_1_with_reason(capsys) -> None:
    code, out, _ = run(capsys, "--load", str(EX / "loads" / "chat.yaml"), "--slo", "e2e=10")
    assert code == 1
    assert "INFEASIBLE" in out and "in=8192,out=1024" in out


def test_idle_load_gives_minimums(capsys) -> None:
    code, out, _ = run(
        capsys,
        "--load",
        str(EX / "loads" / "idle.yaml"),
        "--availability",
        str(EX / "availability.yaml"),
        "-o",
        "json",
    )
    assert code == 0
    assert json.loads(out)["replicas"] == {"A100": 0, "A40": 0, "L20": 1}


@pytest.mark.parametrize(
    ("setup", "needle"),
    [
        ("missing", "cannot read"),
        ("badyaml", "invalid YAML"),
        ("noprice", "spec.gpus.L20: no price"),
        ("negative", "spec.buckets[0].rate"),
        ("badslo", "--slo"),
        ("emptydir", "no *.json"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, tmp_path: Path, setup: str, needle: str) -> None:
    load = str(EX / "loads" / "chat.yaml")
    args = [*BASE, "--load", load]
    if setup == "missing":
        args[args.index(load)] = str(tmp_path / "nope.yaml")
    elif setup == "badyaml":
        f = tmp_path / "load.yaml"
        f.write_text("spec: [unclosed\n")
        args[args.index(load)] = str(f)
    elif setup == "noprice":
        f = tmp_path / "prices.yaml"
        f.write_text("A100: 1\nA40: 1\n")
        args[args.index(str(EX / "prices.yaml"))] = str(f)
    elif setup == "negative":
        f = tmp_path / "load.yaml"
        f.write_text("buckets: [{inputTokens: 1, outputTokens: 1, rate: -1}]\n")
        args[args.index(load)] = str(f)
    elif setup == "badslo":
        args += ["--slo", "speed=3"]
    elif setup == "emptydir":
        args[args.index(str(EX / "profiles"))] = str(tmp_path)
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert out == ""


def test_invalid_numbers_exit_2(capsys) -> None:
    code = main([*BASE, "--load", str(EX / "loads" / "chat.yaml"), "--headroom", "1.5"])
    _, err = capsys.readouterr()
    assert code == 2 and "headroom" in err


def test_bad_time_limit_exits_2(capsys) -> None:
    code = main([*BASE, "--load", str(EX / "loads" / "chat.yaml"), "--time-limit", "0"])
    _, err = capsys.readouterr()
    assert code == 2 and "--time-limit" in err and len(err.strip().splitlines()) == 1


def test_aibrix_profiles_through_the_cli(capsys, tmp_path: Path) -> None:
    shared = Path(__file__).resolve().parents[1] / "fixtures" / "aibrix-profiles"
    load = tmp_path / "load.yaml"
    load.write_text(
        "buckets:\n  - {inputTokens: 128, outputTokens: 8, rate: 40}\n"
        "  - {inputTokens: 2048, outputTokens: 64, rate: 3}\n"
    )
    prices = tmp_path / "prices.yaml"
    prices.write_text("sim-llama-a100: 1.2\nsim-llama-a40: 0.4\n")
    code = main(
        [
            "plan",
            "--profiles",
            str(shared),
            "--load",
            str(load),
            "--prices",
            str(prices),
            "-o",
            "json",
        ]
    )
    out, _ = capsys.readouterr()
    assert code == 0
    doc = json.loads(out)
    assert set(doc["replicas"]) == {"sim-llama-a100", "sim-llama-a40"}


@pytest.mark.parametrize(
    ("rate", "needle"),
    [
        ("1e308", "load[0] (bucket in=8000,out=1000): must be 0 or between"),
        ("1e6", "load: needs at least"),
    ],
)
def test_huge_load_exits_2_without_printing_a_plan(
    capsys, tmp_path: Path, rate: str, needle: str
) -> None:
    """A load no cluster could serve is an input error naming the field, not a table of
    300-digit replica counts."""
    f = tmp_path / "load.yaml"
    f.write_text(f"buckets: [{{inputTokens: 8000, outputTokens: 1000, rate: {rate}}}]\n")
    code = main([*BASE, "--load", str(f)])
    out, err = capsys.readouterr()
    assert code == 2
    assert needle in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert out == ""
