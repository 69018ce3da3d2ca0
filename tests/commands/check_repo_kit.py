"""A GitOps repository shaped like the real ones ``gpumix check`` runs on: kustomize
bases, overlays and patches, a Helm chart, a compose file, CI workflows, per-environment
copies of the same objects and a hidden file that is not a Kubernetes object."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from gpumix.cli import main


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["check", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = run(capsys, *args, "-o", "json")
    doc: dict[str, Any] = json.loads(out)
    return code, doc


def deployment(name: str, gpu: str, *, distinct: bool, namespace: str = "llm") -> str:
    sel = f"\n      gpumix.io/deployment: {name}" if distinct else ""
    tpl = f"\n        gpumix.io/deployment: {name}" if distinct else ""
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {namespace}
  labels:
    gpumix.io/model: llama
spec:
  replicas: 1
  selector:
    matchLabels:
      gpumix.io/model: llama{sel}
  template:
    metadata:
      labels:
        gpumix.io/model: llama{tpl}
    spec:
      nodeSelector:
        nvidia.com/gpu.product: {gpu}
      containers:
        - name: engine
          image: vllm/vllm-openai:v0.6.0
          resources:
            limits:
              nvidia.com/gpu: 1
"""


def hpa(name: str, target: str, ceiling: int | None, namespace: str = "llm") -> str:
    line = f"  maxReplicas: {ceiling}\n" if ceiling is not None else ""
    return f"""\
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {name}
  namespace: {namespace}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {target}
  minReplicas: 1
{line}"""


PATCHES = (
    "hpa-patch.yaml",
    "deploy-patch.yaml",
    "json-patch.yaml",
    "replicas.yaml",
    "patches/hpa-floor.yaml",
)


def make_repo(root: Path) -> Path:
    """The repository; returns its root."""
    # a label config of a CI bot: valid YAML, not an object (kind is a list)
    write(root / ".prowlabels.yaml", "kind: [a]\nlabels: [{name: lgtm}]\n")
    write(
        root / ".github" / "workflows" / "ci.yaml",
        """
        name: ci
        on: [push]
        jobs:
          check:
            runs-on: ubuntu-latest
            steps:
              - uses: actions/checkout@v4
              - run: gpumix check -f deploy/ --output github
        """,
    )
    write(
        root / "docker-compose.yaml",
        """
        version: "3.9"
        services:
          vllm:
            image: vllm/vllm-openai:v0.6.0
            ports: ["8000:8000"]
        """,
    )
    chart = root / "charts" / "llama"
    write(chart / "Chart.yaml", "apiVersion: v2\nname: llama\nversion: 0.1.0\n")
    write(chart / "values.yaml", "replicaCount: 1\nimage:\n  repository: vllm/vllm-openai\n")
    write(
        chart / "templates" / "deployment.yaml",
        """
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: {{ include "llama.fullname" . }}
        spec:
          replicas: {{ .Values.replicaCount }}
        """,
    )
    base = root / "deploy" / "base"
    # a kustomization without `kind:` (legal)
    write(base / "kustomization.yaml", "resources:\n  - engines.yaml\n  - autoscaling.yaml\n")
    (base / "engines.yaml").write_text(
        deployment("llama-a100", "A100", distinct=True)
        + "---\n"
        + deployment("llama-a40", "A40", distinct=True),
        encoding="utf-8",
    )
    (base / "autoscaling.yaml").write_text(
        hpa("llama-a100", "llama-a100", 4) + "---\n" + hpa("llama-a40", "llama-a40", None),
        encoding="utf-8",
    )
    prod = root / "deploy" / "overlays" / "prod"
    write(
        prod / "kustomization.yaml",
        """
        apiVersion: kustomize.config.k8s.io/v1beta1
        kind: Kustomization
        resources:
          - ../../base
        patches:
          - path: hpa-patch.yaml
          - path: patches/hpa-floor.yaml
          - path: json-patch.yaml
            target: {kind: Deployment, name: llama-a40}
        patchesStrategicMerge:
          - deploy-patch.yaml
        replacements:
          - path: replicas.yaml
        """,
    )
    # strategic-merge patches: partial objects (no ceiling, no selector)
    write(
        prod / "hpa-patch.yaml",
        """
        apiVersion: autoscaling/v2
        kind: HorizontalPodAutoscaler
        metadata:
          name: llama-a40
          namespace: llm
        spec:
          maxReplicas: 6
        """,
    )
    # a patch without a ceiling: the base's ceiling stays; never "fixed"
    write(
        prod / "patches" / "hpa-floor.yaml",
        """
        apiVersion: autoscaling/v2
        kind: HorizontalPodAutoscaler
        metadata:
          name: llama-a100
          namespace: llm
        spec:
          minReplicas: 2
        """,
    )
    write(
        prod / "deploy-patch.yaml",
        """
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: llama-a100
          namespace: llm
        spec:
          replicas: 3
        """,
    )
    write(
        prod / "json-patch.yaml",
        """
        - op: replace
          path: /spec/replicas
          value: 2
        """,
    )
    write(
        prod / "replicas.yaml",
        """
        source: {kind: Deployment, name: llama-a100, fieldPath: spec.replicas}
        targets:
          - select: {kind: Deployment, name: llama-a40}
            fieldPaths: [spec.replicas]
        """,
    )
    # a tutorial in two copies: dev still has the broad selectors, prod is fixed
    for env, distinct in (("dev", False), ("prod", True)):
        (root / "tutorials" / env).mkdir(parents=True)
        (root / "tutorials" / env / "llama.yaml").write_text(
            "# the same Deployments in each environment\n"
            + deployment("tut-a100", "A100", distinct=distinct, namespace="tutorial")
            + "---\n"
            + deployment("tut-a40", "A40", distinct=distinct, namespace="tutorial"),
            encoding="utf-8",
        )
    return root
