"""Rendering the Helm chart (manifests/helm/gpumix) with the real ``helm``, and putting
its objects next to the kustomize manifests' for comparison.

``helm`` is built from Go modules by ``tools/helm/build.sh`` (``tools/test.sh`` runs it)
and cached outside the tree; the tests only look it up (``build.sh --check``), so a
build never runs inside a timed test, and a missing helm fails the test.
"""

from __future__ import annotations

import atexit
import copy
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from manifest_objects import MANIFESTS, REPO_ROOT, Obj

CHART = MANIFESTS / "helm" / "gpumix"
HELM_BUILD = REPO_ROOT / "tools" / "helm" / "build.sh"
RELEASE = "gpumix"
NAMESPACE = "gpumix-system"

HELM_ONLY_LABELS = (
    "app.kubernetes.io/instance",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/version",
    "helm.sh/chart",
)
POLICY_CHECKSUM = "checksum/policy"

_helm_path: str | None = None
_helm_home: Path | None = None


def helm() -> str:
    """Path of the built helm; fails the test (with how to build it) when it is missing."""
    global _helm_path
    if _helm_path is None:
        override = os.environ.get("GPUMIX_HELM")
        if override:
            _helm_path = override
        else:
            proc = subprocess.run(
                ["bash", str(HELM_BUILD), "--check"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if proc.returncode != 0:
                pytest.fail(proc.stderr.strip(), pytrace=False)
            _helm_path = str(Path(proc.stdout.strip().splitlines()[-1]) / "helm")
    if not os.access(_helm_path, os.X_OK):
        pytest.fail(f"{_helm_path} is not an executable helm", pytrace=False)
    return _helm_path


def run_helm(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """``helm ARGS`` with a private, empty Helm home (no repositories, no plugins)."""
    global _helm_home
    if _helm_home is None:
        _helm_home = Path(tempfile.mkdtemp(prefix="gpumix-helm-home-"))
        atexit.register(shutil.rmtree, _helm_home, True)
    home = _helm_home
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    return subprocess.run(
        [helm(), *args], capture_output=True, text=True, timeout=timeout_s, check=False, env=env
    )


def values_args(values: dict[str, Any] | None, tmp_path: Path) -> list[str]:
    if not values:
        return []
    path = tmp_path / f"values-{abs(hash(json.dumps(values, sort_keys=True)))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return ["-f", str(path)]


def template(
    values: dict[str, Any] | None, tmp_path: Path, *, include_crds: bool = True
) -> list[Obj]:
    """``helm template`` of the chart into gpumix-system, as a list of objects."""
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    if include_crds:
        args.append("--include-crds")
    proc = run_helm(*args, *values_args(values, tmp_path))
    if proc.returncode != 0:
        pytest.fail(f"helm template failed for {values}:\n{proc.stderr}", pytrace=False)
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def template_error(values: dict[str, Any], tmp_path: Path) -> str:
    """``helm template`` that must fail; returns its error output."""
    proc = run_helm(
        "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *values_args(values, tmp_path)
    )
    assert proc.returncode != 0, f"helm template accepted {values}"
    return proc.stderr


def normalized(objects: list[Obj]) -> dict[tuple[str, str, str], Obj]:
    """Objects by (kind, namespace, name), without what only one of the two tools adds:
    Helm's release labels and policy checksum, kustomize's hash suffix on the policy
    ConfigMap. The policy file itself is compared parsed (comments differ)."""
    out: dict[tuple[str, str, str], Obj] = {}
    for original in objects:
        obj = copy.deepcopy(original)
        meta = obj["metadata"]
        if meta.get("name", "").startswith("gpumix-policy"):
            meta["name"] = "gpumix-policy"
            obj["data"] = {k: yaml.safe_load(v) for k, v in obj["data"].items()}
        labels = meta.get("labels", {})
        for label in HELM_ONLY_LABELS:
            labels.pop(label, None)
        if obj["kind"] == "CustomResourceDefinition":
            # Helm installs crds/ as the files are; the base's common label is not in them.
            labels.pop("app.kubernetes.io/part-of", None)
        pod = obj.get("spec", {}).get("template", {})
        if obj["kind"] == "Deployment":
            annotations = pod["metadata"].get("annotations", {})
            annotations.pop(POLICY_CHECKSUM, None)
            if not annotations:
                pod["metadata"].pop("annotations", None)
            for volume in pod["spec"]["volumes"]:
                if volume.get("configMap", {}).get("name", "").startswith("gpumix-policy"):
                    volume["configMap"]["name"] = "gpumix-policy"
        out[(obj["kind"], meta.get("namespace", ""), meta["name"])] = obj
    return out
