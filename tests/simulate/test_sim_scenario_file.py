"""Scenario files: the named ones parse; bad ones are refused with the field named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from gpumix.simulate.scenario import (
    ScenarioError,
    builtin_scenarios,
    read_scenario,
    resolve,
    scenario_from_mapping,
)

NAMED = ("unbounded-ramp", "selector-overlap", "mix-vs-single")


def _doc(name: str) -> dict[str, Any]:
    doc = YAML(typ="safe", pure=True).load(builtin_scenarios()[name].read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def test_named_scenarios_exist_and_parse() -> None:
    named = builtin_scenarios()
    for name in NAMED:
        assert name in named
        scenario = read_scenario(named[name])
        assert scenario.name == name
        assert scenario.description
        assert scenario.profiles is not None and scenario.profiles.is_dir()
        assert len(scenario.variants) >= 2


def test_resolve_names_and_files(tmp_path: Path) -> None:
    assert resolve("unbounded-ramp").name == "unbounded-ramp.yaml"
    f = tmp_path / "mine.yaml"
    f.write_text("name: x\n", encoding="utf-8")
    assert resolve(str(f)) == f
    with pytest.raises(ScenarioError, match=r"unknown scenario.*unbounded-ramp"):
        resolve("no-such-scenario")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["load"]["diurnal"].update(meanRate=-1), "load.diurnal.meanRate"),
        (lambda d: d["load"].update(profile="sawtooth"), "load.profile"),
        (lambda d: d["load"]["inputTokens"].update(sigma="wide"), "load.inputTokens.sigma"),
        (lambda d: d["cluster"]["pools"][0].update(nodes=0), "cluster.pools[0].nodes"),
        (lambda d: d["cluster"]["pools"][0].update(gpus=3), "cluster.pools[0].gpus"),
        (lambda d: d.update(hours="all day"), "hours"),
        (lambda d: d.update(surprise=1), "surprise"),
        (lambda d: d["variants"][0].update(admission="maybe"), "variants[0].admission"),
        (lambda d: d["controller"].update(headroom=1.5), "controller.headroom"),
        (lambda d: d["manifests"][0].pop("kind"), "manifests[0].kind"),
        (lambda d: d.update(policy={"defaultMaxReplicas": 0}), "policy.defaultMaxReplicas"),
        (lambda d: d.update(workloads={"x": {"replicasAt": [[1]]}}), "workloads.x.replicasAt[0]"),
    ],
)
def test_bad_fields_are_named(change: Any, field: str) -> None:
    doc = _doc("mix-vs-single")
    change(doc)
    with pytest.raises(ScenarioError) as info:
        scenario_from_mapping(doc, "bad.yaml")
    assert info.value.field == field
    assert str(info.value).startswith(f"bad.yaml: {field}: ")


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        read_scenario(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(ScenarioError, match="invalid YAML"):
        read_scenario(bad)
    bad.write_text("- a list\n", encoding="utf-8")
    with pytest.raises(ScenarioError, match="must be a YAML mapping"):
        read_scenario(bad)
