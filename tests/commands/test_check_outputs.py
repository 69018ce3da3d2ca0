"""``gpumix check --output``: what CI systems read (SARIF, JUnit, GitHub annotations) and
the JSON report with its input errors and skipped documents."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from check_repo_kit import deployment, hpa, run, write

Capsys = pytest.CaptureFixture[str]


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """An overlapping pair, an HPA without a ceiling, a stray file and a broken object."""
    write(
        tmp_path / "engines.yaml",
        deployment("a100", "A100", distinct=False)
        + "---\n"
        + deployment("a40", "A40", distinct=False)
        + "---\n"
        + hpa("h", "a100", None),
    )
    write(tmp_path / "compose.yaml", "services: {web: {image: nginx}}\n")
    write(
        tmp_path / "broken.yaml",
        "# a ceiling that is a string\n" + hpa("h2", "a40", 3).replace("3", "'3'"),
    )
    return tmp_path


def test_json_has_findings_input_errors_and_skips(inputs: Path, capsys: Capsys) -> None:
    code, out, err = run(capsys, "-f", str(inputs), "-o", "json")
    assert code == 2
    doc = json.loads(out)
    assert doc["inputErrors"] == [
        {
            "file": str(inputs / "broken.yaml"),
            "line": 13,
            "message": "HorizontalPodAutoscaler h2: field spec.maxReplicas: must be an "
            "integer, got a str",
        }
    ]
    assert doc["skipped"] == [
        {
            "file": str(inputs / "compose.yaml"),
            "line": 1,
            "message": "not a Kubernetes object (no apiVersion and kind)",
        }
    ]
    assert [(f["rule"], f["name"], f["line"]) for f in doc["findings"]] == [
        ("selector-overlap", "a100", 1),
        ("selector-overlap", "a40", 27),
        ("missing-max-replicas", "h", 53),
    ]
    assert doc["summary"] == (
        "gpumix check: 3 errors, 0 warnings (3 fixable with --fix); 3 objects in 3 files; "
        "1 document skipped (-v lists them); 1 input error"
    )
    assert err.startswith(f"error: {inputs / 'broken.yaml'}:13: ")


def test_sarif(inputs: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(inputs)
    code, out, _ = run(capsys, "-f", ".", "-o", "sarif")
    assert code == 2
    doc = json.loads(out)
    assert doc["version"] == "2.1.0"
    (run_,) = doc["runs"]
    rules = {r["id"] for r in run_["tool"]["driver"]["rules"]}
    assert rules == {"input-error", "missing-max-replicas", "selector-overlap"}
    results = {
        (
            r["ruleId"],
            r["level"],
            r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
            r["locations"][0]["physicalLocation"]["region"]["startLine"],
        )
        for r in run_["results"]
    }
    assert results == {
        ("missing-max-replicas", "error", "engines.yaml", 53),
        ("selector-overlap", "error", "engines.yaml", 1),
        ("selector-overlap", "error", "engines.yaml", 27),
        ("input-error", "error", "broken.yaml", 13),
    }
    overlap = next(r for r in run_["results"] if r["ruleId"] == "selector-overlap")
    (related,) = overlap["relatedLocations"]
    assert related["physicalLocation"]["region"]["startLine"] == 27
    assert related["message"]["text"] == "Deployment llm/a40"


def test_junit(inputs: Path, capsys: Capsys) -> None:
    code, out, _ = run(capsys, "-f", str(inputs), "-o", "junit")
    assert code == 2
    root = ET.fromstring(out)
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("4", "3", "1")
    cases = root.findall("./testsuite/testcase")
    failures = [c for c in cases if c.find("failure") is not None]
    assert {c.get("name") for c in failures} == {
        "missing-max-replicas HorizontalPodAutoscaler llm/h",
        "selector-overlap Deployment llm/a100",
        "selector-overlap Deployment llm/a40",
    }
    assert all(c.get("file") == str(inputs / "engines.yaml") for c in failures)
    (error,) = [c.find("error") for c in cases if c.find("error") is not None]
    assert error is not None and "spec.maxReplicas" in (error.text or "")


def test_junit_clean_run_has_one_passing_case(tmp_path: Path, capsys: Capsys) -> None:
    f = write(tmp_path / "d.yaml", deployment("a", "A100", distinct=True))
    code, out, _ = run(capsys, "-f", str(f), "-o", "junit")
    assert code == 0
    root = ET.fromstring(out)
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("1", "0", "0")


def test_github_annotations(inputs: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(inputs)
    code, out, _ = run(capsys, "-f", ".", "-o", "github")
    assert code == 2
    lines = out.splitlines()
    assert lines[-1].startswith("gpumix check: 3 errors")
    annotations = lines[:-1]
    assert len(annotations) == 4
    assert annotations[0].startswith(
        "::error file=engines.yaml,line=1,title=selector-overlap Deployment llm/a100::"
    )
    assert annotations[2].startswith(
        "::error file=engines.yaml,line=53,title=missing-max-replicas HorizontalPodAutoscaler "
        "llm/h::"
    )
    assert annotations[-1].startswith(
        "::error file=broken.yaml,line=13,title=input-error::HorizontalPodAutoscaler h2: "
    )
    # the properties escape ':' and ',' (a message may hold anything but a newline)
    assert all("\n" not in a and a.count("::") >= 2 for a in annotations)


def test_github_escapes_properties(tmp_path: Path, capsys: Capsys) -> None:
    d = tmp_path / "a,b:c"
    write(d / "h.yaml", hpa("h", "x", None))
    code, out, _ = run(capsys, "-f", str(d / "h.yaml"), "-o", "github")
    assert code == 1
    assert "a%2Cb%3Ac/h.yaml,line=1," in out.splitlines()[0]
