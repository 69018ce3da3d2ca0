"""``gpumix check --fix`` output, in the styles real repositories use, is accepted by a
real kube-apiserver: the selectors still match the pod templates, the ceilings are
valid, and what the fix did not touch is what the API server stores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .envtest import Envtest

# block style indented by 4, a selector of matchExpressions only, a flow document,
# end markers, comments inside a flow list, and an HPA whose 0 ceiling the API server
# refuses
FLOW = (
    "{apiVersion: apps/v1, kind: Deployment, metadata: {name: llama-l20, labels: "
    "{gpumix.io/model: llama}}, spec: {selector: {matchLabels: {model: llama}}, template: "
    "{metadata: {labels: {model: llama}}, spec: {nodeSelector: {nvidia.com/gpu.product: L20}, "
    'containers: [{name: engine, image: "registry.example/engine:1", resources: '
    "{limits: {nvidia.com/gpu: 1}}}]}}}}"
)
ENGINES = """\
# engines
apiVersion: apps/v1
kind: Deployment
metadata:
    name: llama-a100   # the big one
    labels: {gpumix.io/model: llama}
spec:
    selector:
        matchLabels:
            model: llama
    template:
        metadata:
            labels:
                model: llama
        spec:
            nodeSelector: {nvidia.com/gpu.product: A100}
            containers:
            -   name: engine
                image: registry.example/engine:1
                args: ["--port", "8000",   # the port
                       "--tp", "1"]
                resources: {limits: {nvidia.com/gpu: 1}}
...
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: llama-a40
spec:
  selector:
    matchExpressions: [{key: model, operator: In, values: [llama]}]
  template:
    metadata:
      labels:
        model: llama
        gpumix.io/model: llama
    spec:
      nodeSelector:
        nvidia.com/gpu.product: A40
      containers:
        - name: engine
          image: registry.example/engine:1
          resources:
            limits: {nvidia.com/gpu: 1}
---
{FLOW}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: llama-a100}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: llama-a100}
  minReplicas: 1
  maxReplicas: 0     # no ceiling
""".replace("{FLOW}", FLOW)


def gpumix_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpumix", "check", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_fixed_manifests_are_accepted(apiserver: Envtest, namespace: str, tmp_path: Path) -> None:
    f = tmp_path / "engines.yaml"
    f.write_text(ENGINES.replace("\n", "\r\n"), encoding="utf-8", newline="")
    # as written, the API server refuses the HPA (maxReplicas must be at least 1)
    refused = apiserver.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", str(f), check=False
    )
    assert refused.returncode != 0 and "maxReplicas" in refused.stderr

    proc = gpumix_check("-f", str(f), "--fix", "--in-place")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "# fixed 4 finding(s)" in proc.stdout

    applied = apiserver.kubectl("apply", "-n", namespace, "-f", str(f), check=False)
    assert applied.returncode == 0, applied.stderr
    deployments = json.loads(
        apiserver.kubectl("get", "deployments", "-n", namespace, "-o", "json").stdout
    )["items"]
    assert {
        d["metadata"]["name"]: d["spec"]["selector"].get("matchLabels") for d in deployments
    } == {
        "llama-a100": {"model": "llama", "gpumix.io/deployment": "llama-a100"},
        "llama-a40": {"gpumix.io/deployment": "llama-a40"},
        "llama-l20": {"model": "llama", "gpumix.io/deployment": "llama-l20"},
    }
    a100 = next(d for d in deployments if d["metadata"]["name"] == "llama-a100")
    assert a100["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "--port",
        "8000",
        "--tp",
        "1",
    ]
    hpa = json.loads(
        apiserver.kubectl("get", "hpa", "llama-a100", "-n", namespace, "-o", "json").stdout
    )
    assert hpa["spec"]["maxReplicas"] == 10
    # and the check is clean on what it wrote
    assert gpumix_check("-f", str(f)).returncode == 0
