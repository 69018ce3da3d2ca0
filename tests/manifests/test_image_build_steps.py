"""The Dockerfile's build, run as far as a machine without Docker allows.

The builder stage's own instructions are carried out on this machine: WORKDIR and COPY
into a temporary directory that stands for the image's root, RUN with ``/bin/sh -c``
after moving every absolute path under that directory (``--mount`` flags dropped; the
pip cache of this machine stands in for the cache mount). So the exact ``pip`` commands
of the Dockerfile build gpumix's wheel and install it with its dependencies into a
fresh virtual environment. Then the final stage's ENTRYPOINT and CMD run from it, with
the final stage's PATH.

What this cannot show: the base image's Python (here: the Python running the tests,
which must be 3.11 like the image) and Docker's own handling of layers and users.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dockerfile_model import Stage, parse
from manifest_objects import REPO_ROOT

ABSOLUTE_PATH = re.compile(r"(?<![\w$.\-/])(/[A-Za-z0-9_.\-/*]+)")
UNMAPPED = ("/dev/",)
STEP_TIMEOUT_S = 240
COPY_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")


def in_root(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def map_paths(command: str, root: Path) -> str:
    def repl(m: re.Match[str]) -> str:
        path = m.group(1)
        return path if path.startswith(UNMAPPED) else str(in_root(root, path))

    return ABSOLUTE_PATH.sub(repl, command)


def base_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PIP_NO_CACHE_DIR")
    }
    # `python` is the Python running the tests (the image's is python:3.11-slim's).
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    return env


def run_builder(stage: Stage, root: Path) -> None:
    env = base_env()
    cwd = root
    for inst in stage.instructions:
        if inst.keyword == "WORKDIR":
            cwd = in_root(root, inst.value)
            cwd.mkdir(parents=True, exist_ok=True)
        elif inst.keyword == "ENV":
            env.update(stage.env())
        elif inst.keyword == "COPY":
            assert not inst.flags, f"line {inst.line}: COPY flags in the builder"
            *sources, dest = inst.value.split()
            target = in_root(root, dest) if dest.startswith("/") else cwd / dest
            for src in sources:
                origin = REPO_ROOT / src
                if origin.is_dir():
                    shutil.copytree(origin, target, ignore=COPY_IGNORE, dirs_exist_ok=True)
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, target / origin.name)
        elif inst.keyword == "RUN":
            assert all(f.startswith("--mount=type=cache") for f in inst.flags), inst.flags
            command = map_paths(inst.value, root)
            proc = subprocess.run(
                ["/bin/sh", "-c", command],
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=STEP_TIMEOUT_S,
                check=False,
            )
            assert proc.returncode == 0, (
                f"Dockerfile line {inst.line} failed:\n$ {command}\n{proc.stdout[-4000:]}"
                f"\n{proc.stderr[-4000:]}"
            )
        elif inst.keyword not in ("LABEL", "EXPOSE"):
            pytest.fail(f"line {inst.line}: {inst.keyword} in the builder is not exercised here")


@pytest.mark.slow
def test_builder_steps_install_a_working_gpumix(tmp_path: Path) -> None:
    assert sys.version_info[:2] == (3, 11), "the image is python:3.11-slim"
    _args, stages = parse()
    builder, final = stages[0], stages[-1]
    root = tmp_path / "root"
    run_builder(builder, root)

    # What the final stage copies from the builder exists.
    [copy] = final.all("COPY")
    source, _dest = copy.value.split()
    venv = in_root(root, source)
    assert (venv / "bin" / "python").exists()

    # The final stage's environment, with its PATH entries moved under the root.
    env = base_env()
    final_env = final.env()
    image_path = [p for p in final_env["PATH"].split(":") if p != "$PATH"]
    env["PATH"] = os.pathsep.join([str(in_root(root, p)) for p in image_path] + [env["PATH"]])
    env["HOME"] = str(tmp_path / "home")
    env["MPLCONFIGDIR"] = str(tmp_path / "home" / "matplotlib")
    env["PYTHONDONTWRITEBYTECODE"] = "1"

    entrypoint = final.exec_form("ENTRYPOINT") or []
    cmd = final.exec_form("CMD") or []
    program = shutil.which(entrypoint[0], path=env["PATH"])
    assert program is not None and Path(program).parent == venv / "bin"

    def run(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [program, *argv],
            input=stdin,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    default = run(*entrypoint[1:], *cmd)
    assert default.returncode == 0, default.stderr
    assert default.stdout.startswith("usage: gpumix")
    commands = set(re.findall(r"^    ([a-z][\w-]*)", default.stdout, re.MULTILINE))
    missing = {"check", "webhook", "controller"} - commands
    assert not missing, f"the image's gpumix lacks the commands {sorted(missing)}"

    check = run("check", "-f", "-", "-o", "json", stdin=SAMPLE)
    assert check.returncode == 0, check.stdout + check.stderr
    assert '"findings": []' in check.stdout

    plugin = shutil.which("kubectl-gpumix", path=str(venv / "bin"))
    assert plugin is not None, "the kubectl plugin script is installed with the package"
    proc = subprocess.run(
        [plugin, "check", "--help"], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: ")


SAMPLE = """
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web, namespace: shop}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 1
  maxReplicas: 5
"""
