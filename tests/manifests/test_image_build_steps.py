"""Every image target of the Dockerfile, built as far as a machine without Docker allows.

Each stage a target needs is carried out on this machine, in its own temporary directory
that stands for that stage's root: WORKDIR and COPY (from the repository, or with
``--from`` from another stage's root), RUN with ``/bin/sh -c`` after moving every
absolute path under the root (``--mount`` flags dropped; the pip cache of this machine
stands in for the cache mount). So the exact ``pip`` commands of the Dockerfile build
gpumix's wheel and install it, with the extra of each target, into fresh virtual
environments. A ``COPY --from`` of a virtual environment rewrites its scripts'
``#!`` lines to the copy's path, as Docker's same-path copy leaves them valid. Then each
image's ENTRYPOINT and CMD run from its own copy, with the image's PATH, and the test
checks which distributions each image holds and its installed size against the table
in docs/architecture.md.

What this cannot show: the base image's Python (here: the Python running the tests,
which must be 3.11 like the image) and Docker's own handling of layers and users.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dockerfile_model import Stage, effective, effective_env, effective_exec_form, parse
from manifest_objects import REPO_ROOT

ABSOLUTE_PATH = re.compile(r"(?<![\w$.\-/])(/[A-Za-z0-9_.\-/*]+)")
UNMAPPED = ("/dev/",)
STEP_TIMEOUT_S = 300
COPY_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
ARCHITECTURE_MD = REPO_ROOT / "docs" / "architecture.md"
SIZE_TOLERANCE = 0.25
"""How far a measured venv size may be from the size docs/architecture.md gives."""

OPTIONAL = {"ortools", "numpy", "matplotlib", "rich"}
DEMO_PARTS = {"demo", "simulate", "emulator"}
"""The parts of gpumix that only the CLI image installs (Dockerfile, stage wheel-runtime)."""


@dataclass(frozen=True)
class Target:
    name: str
    image: str
    extra: str  # "" for the base install
    has: frozenset[str]  # of OPTIONAL
    runs: tuple[str, ...]  # commands whose --help must work
    refuses: tuple[str, ...]  # commands whose --help must name the missing extra
    demo: bool  # whether gpumix.demo, gpumix.simulate and gpumix.emulator are installed


TARGETS = {
    "webhook": Target(
        "webhook",
        "ghcr.io/gpumix/gpumix-webhook",
        "",
        frozenset(),
        ("webhook", "check"),
        ("plan",),
        False,
    ),
    "controller": Target(
        "controller",
        "ghcr.io/gpumix/gpumix-controller",
        "controller",
        frozenset({"ortools", "numpy"}),
        ("controller", "webhook", "check", "plan"),
        (),
        False,
    ),
    "cli": Target(
        "cli",
        "ghcr.io/gpumix/gpumix",
        "all",
        frozenset(OPTIONAL),
        ("controller", "webhook", "check", "plan", "demo", "simulate"),
        (),
        True,
    ),
}


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


def rewrite_shebangs(tree: Path, old: Path, new: Path) -> None:
    """Scripts of a copied venv name the venv's absolute path; point them at the copy."""
    prefix = f"#!{old}".encode()
    for script in (tree / "bin").iterdir() if (tree / "bin").is_dir() else ():
        if script.is_symlink() or not script.is_file():
            continue
        data = script.read_bytes()
        if data.startswith(prefix):
            script.write_bytes(b"#!" + str(new).encode() + data[len(prefix) :])


class Build:
    """The Dockerfile's stages, each carried out once, on demand, in its own root."""

    def __init__(self, workdir: Path) -> None:
        _args, self.ordered = parse()
        self.stages = {s.name: s for s in self.ordered if s.name}
        self.workdir = workdir
        self.roots: dict[str, Path] = {}

    def env(self, stage: Stage) -> dict[str, str]:
        return effective_env(self.ordered, stage)

    def root(self, name: str) -> Path:
        if name not in self.roots:
            self.roots[name] = self._run(self.stages[name])
        return self.roots[name]

    def _run(self, stage: Stage) -> Path:
        assert stage.name is not None
        root = self.workdir / stage.name
        if stage.base in self.stages:
            shutil.copytree(self.root(stage.base), root, symlinks=True)
        root.mkdir(parents=True, exist_ok=True)
        env = base_env()
        cwd = root
        if stage.base in self.stages:  # a stage built on another starts in its WORKDIR
            inherited = effective(self.ordered, self.stages[stage.base], "WORKDIR")
            if inherited:
                cwd = in_root(root, inherited[-1].value)
        for inst in stage.instructions:
            if inst.keyword == "WORKDIR":
                cwd = in_root(root, inst.value)
                cwd.mkdir(parents=True, exist_ok=True)
            elif inst.keyword == "ENV":
                env.update(self.env(stage))
            elif inst.keyword == "COPY":
                self._copy(inst.flags, inst.value, inst.line, root, cwd)
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
            elif inst.keyword not in ("LABEL", "EXPOSE", "USER", "ENTRYPOINT", "CMD"):
                pytest.fail(f"line {inst.line}: {inst.keyword} is not exercised here")
        return root

    def _copy(self, flags: tuple[str, ...], value: str, line: int, root: Path, cwd: Path) -> None:
        *sources, dest = value.split()
        target = in_root(root, dest) if dest.startswith("/") else cwd / dest
        origin_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
        assert all(f.startswith("--from=") for f in flags), f"line {line}: COPY {flags}"
        for src in sources:
            if origin_stage is None:
                origin = REPO_ROOT / src
            else:
                assert src.startswith("/"), f"line {line}: COPY --from of a relative path"
                origin = in_root(self.root(origin_stage), src)
            assert origin.exists(), f"line {line}: COPY {src}: nothing there"
            if origin.is_dir():
                # .dockerignore applies to the build context, not to other stages.
                ignore = COPY_IGNORE if origin_stage is None else None
                shutil.copytree(origin, target, ignore=ignore, dirs_exist_ok=True, symlinks=True)
                if origin_stage is not None:
                    rewrite_shebangs(target, origin, target)
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target / origin.name)


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Build]:
    assert sys.version_info[:2] == (3, 11), "the image is python:3.11-slim"
    yield Build(tmp_path_factory.mktemp("image"))


def du_bytes(path: Path) -> int:
    """Disk usage of a tree, as ``du -sk`` gives it, in bytes."""
    proc = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True)
    return int(proc.stdout.split()[0]) * 1024


def documented_sizes() -> dict[str, float]:
    """Image target -> installed size of its venv in MB, from docs/architecture.md."""
    text = ARCHITECTURE_MD.read_text(encoding="utf-8")
    rows = re.findall(r"^\| `--target (\w+)`.*?\| ([\d.]+) MB \|", text, re.MULTILINE)
    return {name: float(mb) for name, mb in rows}


def test_the_default_target_is_the_cli_image() -> None:
    _args, stages = parse()
    assert stages[-1].name == "cli"
    assert set(TARGETS) <= {s.name for s in stages}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TARGETS))
def test_target_installs_its_role_and_runs(build: Build, name: str, tmp_path: Path) -> None:
    target = TARGETS[name]
    final = build.stages[name]
    root = build.root(name)

    # The venv the image copies in, at the path the image's PATH names.
    [copy] = final.all("COPY")
    _source, dest = copy.value.split()
    venv = in_root(root, dest)
    assert (venv / "bin" / "python").exists()

    env = base_env()
    final_env = build.env(final)
    image_path = [p for p in final_env["PATH"].split(":") if p != "$PATH"]
    env["PATH"] = os.pathsep.join([str(in_root(root, p)) for p in image_path] + [env["PATH"]])
    env["HOME"] = str(tmp_path / "home")
    env["MPLCONFIGDIR"] = str(tmp_path / "home" / "matplotlib")
    env["PYTHONDONTWRITEBYTECODE"] = "1"

    # What the venv holds: its role's optional packages and no others.
    listing = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m, json;"
            "print(json.dumps(sorted({d.metadata['Name'].lower() for d in m.distributions()})))",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    installed = set(json.loads(listing.stdout))
    assert "gpumix" in installed
    assert installed & OPTIONAL == target.has, f"{name}: {sorted(installed & OPTIONAL)}"

    # gpumix's own parts: the runtime images leave out the demo, simulator and emulator.
    [package] = venv.glob("lib/python3.*/site-packages/gpumix")
    parts = {p.name for p in package.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert {"webhook", "controller", "optimizer", "kube", "kubeio", "rules", "check"} <= parts
    assert (parts & DEMO_PARTS == DEMO_PARTS) if target.demo else not parts & DEMO_PARTS, (
        f"{name}: {sorted(parts)}"
    )
    print(f"{name}: gpumix package {du_bytes(package) / 1e6:.1f} MB")

    entrypoint = effective_exec_form(build.ordered, final, "ENTRYPOINT") or []
    cmd = effective_exec_form(build.ordered, final, "CMD") or []
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

    for command in target.runs:
        proc = run(command, "--help")
        assert proc.returncode == 0, f"gpumix {command} --help in {name}:\n{proc.stderr}"
        assert proc.stdout.startswith(f"usage: gpumix {command}")
    for command in target.refuses:
        proc = run(command, "--help")
        assert proc.returncode == 2, f"gpumix {command} --help in {name}: {proc.returncode}"
        assert "Traceback" not in proc.stderr
        assert re.search(r"extra installs: pip install 'gpumix\[\w+\]'", proc.stderr), proc.stderr
    for command in () if target.demo else ("demo", "simulate"):
        proc = run(command, "--help")
        assert proc.returncode == 2, f"gpumix {command} --help in {name}: {proc.returncode}"
        [line] = proc.stderr.splitlines()
        assert line.startswith(f"gpumix {command}: gpumix.{command} is not installed in this image")

    check = run("check", "-f", "-", "-o", "json", stdin=SAMPLE)
    assert check.returncode == 0, check.stdout + check.stderr
    assert '"findings": []' in check.stdout

    plugin = shutil.which("kubectl-gpumix", path=str(venv / "bin"))
    assert plugin is not None, "the kubectl plugin script is installed with the package"

    # The installed size docs/architecture.md gives for this image.
    size_mb = du_bytes(venv) / 1e6
    print(f"{name}: venv {size_mb:.0f} MB")
    documented = documented_sizes()
    assert name in documented, f"docs/architecture.md gives no size for --target {name}"
    assert abs(size_mb - documented[name]) <= SIZE_TOLERANCE * documented[name], (
        f"--target {name}: the venv is {size_mb:.0f} MB, docs/architecture.md says "
        f"{documented[name]:.0f} MB"
    )


SAMPLE = """
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web, namespace: shop}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 1
  maxReplicas: 5
"""
