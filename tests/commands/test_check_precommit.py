"""The pre-commit hook (``.pre-commit-hooks.yaml``), run by the real ``pre-commit`` on a
temporary git repository.

``pre-commit try-repo`` installs the hook the way a user's pre-commit does
(``language: python``: a virtualenv, then ``pip install`` of this repository's
working tree).  Offline: the virtualenv sees this environment's packages
(``VIRTUALENV_SYSTEM_SITE_PACKAGES``) and pip uses no index, so only gpumix itself is
built and installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "aibrix"


def git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        timeout=60,
    )


def test_hook_definition() -> None:
    (hook,) = yaml.safe_load((REPO_ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "gpumix-check"
    assert hook["entry"] == "gpumix check" and hook["args"] == ["-f", "."]
    assert hook["pass_filenames"] is False  # the rules need the whole tree


def test_pre_commit_runs_the_hook(tmp_path: Path) -> None:
    pre_commit = shutil.which("pre-commit")
    assert pre_commit, "pre-commit is not installed (pip install -e '.[dev]')"
    assert (REPO_ROOT / ".git").exists(), "the hook is installed from this git checkout"
    work = tmp_path / "gitops"
    (work / "deploy").mkdir(parents=True)
    shutil.copy(FIXTURES / "heterogeneous-before.yaml", work / "deploy" / "engines.yaml")
    (work / ".prowlabels.yaml").write_text("kind: [a]\n")
    (work / "docker-compose.yml").write_text("services: {web: {image: nginx}}\n")
    git(work, "init", "-q")
    git(work, "add", ".")
    git(work, "commit", "-qm", "manifests")
    env = {
        **os.environ,
        "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"),
        "VIRTUALENV_SYSTEM_SITE_PACKAGES": "1",
        "PIP_NO_INDEX": "1",
        "PIP_NO_BUILD_ISOLATION": "0",  # pip's spelling of --no-build-isolation
    }
    env.pop("PYTHONPATH", None)  # the hook runs the gpumix pre-commit installed
    proc = subprocess.run(
        [pre_commit, "try-repo", str(REPO_ROOT), "gpumix-check", "--all-files"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "gpumix check...." in out and "Failed" in out
    assert "deploy/engines.yaml:4: ERROR selector-overlap" in out
    assert (
        "gpumix check: 2 errors, 0 warnings (2 fixable with --fix); 4 objects in 3 files; "
        "2 documents skipped" in out
    )
    assert "Traceback" not in out
