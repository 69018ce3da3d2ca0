"""Plots, summary and text report; the ``gpumix simulate`` command."""

from __future__ import annotations

import io
import json
from pathlib import Path

import matplotlib.image
import pytest
from PIL import Image

from gpumix.cli import build_parser, main
from gpumix.commands import simulate as command
from gpumix.simulate.planning import load_inputs, optimizer_planner
from gpumix.simulate.report import write_report
from gpumix.simulate.runner import simulate
from gpumix.simulate.scenario import builtin_scenarios, read_scenario


def frozen_clock() -> float:
    """Solves are bounded by the optimizer's node limit, not by the machine's speed."""
    return 0.0


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _run(argv: list[str]) -> tuple[int, str, str]:
    args = build_parser().parse_args(["simulate", *argv])
    out, err = io.StringIO(), io.StringIO()
    code = command.run(args, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_plots_are_valid_pngs_and_deterministic(tmp_path: Path) -> None:
    scenario, profiles = load_inputs(read_scenario(builtin_scenarios()["selector-overlap"]))
    planner = optimizer_planner(profiles, clock=frozen_clock) if profiles else None
    result = simulate(scenario, profiles, planner, hours=2.0)
    first = write_report(result, tmp_path / "a")
    second = write_report(simulate(scenario, profiles, planner, hours=2.0), tmp_path / "b")
    pngs = [p for p in first if p.suffix == ".png"]
    assert {p.name.split("-", 2)[-1] for p in pngs} >= {
        "load.png",
        "replicas.png",
        "cost.png",
        "slo.png",
        "cluster.png",
    }
    for path in pngs:
        data = path.read_bytes()
        assert data[:8] == PNG_SIGNATURE
        pixels = matplotlib.image.imread(path)
        assert pixels.shape[0] > 0 and pixels.shape[1] > 0
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.size[0] > 100 and image.size[1] > 100
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    summary = json.loads((tmp_path / "a" / "summary.json").read_text(encoding="utf-8"))
    assert summary["scenario"] == "selector-overlap"
    assert summary["hours"] == 2.0
    assert [v["name"] for v in summary["variants"]] == ["overlapping selectors", "fixed selectors"]
    assert 0 <= summary["variants"][0]["slo_attainment"] <= 1
    assert "headline" in summary
    report = (tmp_path / "a" / "report.txt").read_text(encoding="utf-8")
    assert report.startswith("scenario selector-overlap: 2 h, seed 11")


def test_cli_runs_a_named_scenario(tmp_path: Path) -> None:
    code, out, err = _run(["unbounded-ramp", "--out", str(tmp_path), "--hours", "3", "--quiet"])
    assert code == 0, err
    assert "HOLDS" in out
    assert f"wrote 7 files to {tmp_path}/" in out
    assert (tmp_path / "unbounded-ramp-replicas.png").read_bytes()[:8] == PNG_SIGNATURE


def test_cli_lists_scenarios() -> None:
    code, out, _ = _run(["--list"])
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()]
    assert {"unbounded-ramp", "selector-overlap", "mix-vs-single"} <= set(names)


def test_cli_unknown_scenario_exits_2() -> None:
    code, out, err = _run(["no-such-thing"])
    assert code == 2 and not out
    assert err.startswith("error: no-such-thing: unknown scenario")
    assert len(err.splitlines()) == 1


def test_cli_bad_scenario_file_names_the_field(tmp_path: Path) -> None:
    named = builtin_scenarios()["unbounded-ramp"]
    source = named.read_text(encoding="utf-8").replace("../", f"{named.parent.parent}/")
    assert "endRate: 150" in source
    bad = tmp_path / "bad.yaml"
    bad.write_text(source.replace("endRate: 150", "endRate: -3"), encoding="utf-8")
    code, _, err = _run([str(bad), "--out", str(tmp_path / "out")])
    assert code == 2
    assert err == f"error: {bad}: load.ramp.endRate: must be >= 0, got -3\n"
    assert not (tmp_path / "out").exists()


def test_cli_missing_profiles_exit_2(tmp_path: Path) -> None:
    source = builtin_scenarios()["unbounded-ramp"].read_text(encoding="utf-8")
    moved = tmp_path / "moved.yaml"
    moved.write_text(source, encoding="utf-8")  # ../profiles no longer resolves
    code, _, err = _run([str(moved), "--out", str(tmp_path / "out")])
    assert code == 2
    assert err.startswith(f"error: {tmp_path}/../profiles: ") and "not found" in err


@pytest.mark.parametrize("argv", [[], ["unbounded-ramp", "--hours", "0"]])
def test_cli_usage_errors_exit_2(argv: list[str]) -> None:
    code, _, err = _run(argv)
    assert code == 2 and err.startswith("error: ")


def test_cli_is_wired_into_gpumix(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--list"]) == 0
    assert "mix-vs-single" in capsys.readouterr().out
