"""``gpumix check`` on the rendered install manifests, as a GitOps CI gate would run it,
directly and as the kubectl plugin (``kubectl gpumix``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from manifest_objects import OVERLAYS, REPO_ROOT, Rendered, kubectl, require_tool

# Two Deployments of one model on different GPU types whose selectors only name the
# model: the broken setup gpumix exists to stop (selector-overlap, error).
OVERLAPPING = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: llama-a100, namespace: llm, labels: {model.aibrix.ai/name: llama}}
spec:
  selector: {matchLabels: {model.aibrix.ai/name: llama}}
  template:
    metadata: {labels: {model.aibrix.ai/name: llama}}
    spec:
      nodeSelector: {nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB}
      containers:
        - name: engine
          image: engine:1
          resources: {limits: {nvidia.com/gpu: 1}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: llama-l20, namespace: llm, labels: {model.aibrix.ai/name: llama}}
spec:
  selector: {matchLabels: {model.aibrix.ai/name: llama}}
  template:
    metadata: {labels: {model.aibrix.ai/name: llama}}
    spec:
      nodeSelector: {nvidia.com/gpu.product: NVIDIA-L20}
      containers:
        - name: engine
          image: engine:1
          resources: {limits: {nvidia.com/gpu: 1}}
"""


def gpumix_check(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpumix", "check", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO_ROOT,
    )


@pytest.mark.parametrize("overlay", [*OVERLAYS, "monitoring"])
def test_rendered_manifests_pass_gpumix_check(rendered: Rendered, overlay: str) -> None:
    text = yaml.safe_dump_all(rendered[overlay], sort_keys=False)
    proc = gpumix_check("-f", "-", "-o", "json", stdin=text)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert (report["findings"], report["inputErrors"]) == ([], [])


def test_kubectl_plugin_checks_a_gitops_folder(rendered: Rendered, tmp_path: Path) -> None:
    """``kubectl gpumix check -f .`` on a folder: clean install manifests pass (exit 0);
    adding an overlapping pair of GPU Deployments fails the gate (exit 1, JSON findings)."""
    require_tool("kubectl-gpumix", "pip install -e . puts the plugin script on PATH")
    for overlay in OVERLAYS:
        (tmp_path / f"{overlay}.yaml").write_text(yaml.safe_dump_all(rendered[overlay]))

    def plugin() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [kubectl(), "gpumix", "check", "-f", ".", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=tmp_path,
        )

    clean = plugin()
    assert clean.returncode == 0, clean.stdout + clean.stderr
    report = json.loads(clean.stdout)
    # the overlays are variants of one install: their shared objects are named as
    # duplicates (warnings), and nothing else is found
    assert report["inputErrors"] == []
    assert {f["rule"] for f in report["findings"]} == {"duplicate-object"}
    assert {f["severity"] for f in report["findings"]} == {"warning"}

    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "llama.yaml").write_text(OVERLAPPING)
    dirty = plugin()
    assert dirty.returncode == 1, dirty.stdout + dirty.stderr
    findings = json.loads(dirty.stdout)["findings"]
    assert {(f["rule"], f["severity"], f["name"]) for f in findings} >= {
        ("selector-overlap", "error", "llama-a100"),
    }
