"""gpumix installed on the test API server: manifests, identities, processes, a recorder.

- ``render_manifests()``: the objects of ``kubectl kustomize manifests/overlays/enforce``.
- ``install_prerequisites(env, objects)``: the Namespace, CRDs, ServiceAccounts and RBAC
  from those objects (no Deployments, Services or webhook configurations).
- ``webhook_configurations(objects, port)``: the two shipped webhook configurations with
  only ``clientConfig`` changed to ``url: https://127.0.0.1:<port>/mutate|validate``.
- ``service_account_kubeconfig(env, name)``: a kubeconfig whose client certificate
  authenticates as ``system:serviceaccount:gpumix-system:<name>``, so the processes run
  with the shipped RBAC, not as cluster-admin.
- ``GpumixProcess``: ``python -m gpumix webhook|controller ...`` as a child process
  (own process group, SIGTERM then SIGKILL on stop, log file).
- ``Recorder``: a tiny HTTPS admission webhook that allows everything and keeps every
  AdmissionReview it is sent (to see what the API server hands to admission).
"""

from __future__ import annotations

import base64
import copy
import http.server
import json
import re
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .envtest import REPO_ROOT, Envtest, _Proc, find_kubectl, free_port

MANIFESTS = REPO_ROOT / "manifests"
OVERLAY = MANIFESTS / "overlays" / "enforce"
POLICY_FILE = MANIFESTS / "base" / "policy.yaml"
SYSTEM_NS = "gpumix-system"
CONFIG_NAME = "gpumix"
SECRET_NAME = "gpumix-webhook-tls"
LEASE_NAME = "gpumix-controller"
WEBHOOK_KINDS = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
WEBHOOK_PLURALS = {
    "MutatingWebhookConfiguration": "mutatingwebhookconfigurations",
    "ValidatingWebhookConfiguration": "validatingwebhookconfigurations",
}
PREREQUISITE_KINDS = (
    "Namespace",
    "CustomResourceDefinition",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
)

Obj = dict[str, Any]
T = TypeVar("T")


class E2EError(AssertionError):
    """A gpumix process or a wait in the end-to-end tests failed."""


def wait_until(
    probe: Callable[[], T], *, timeout_s: float, what: str, interval_s: float = 0.2
) -> T:
    """Call ``probe`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            last = probe()
        except E2EError:
            raise
        except (OSError, AssertionError, KeyError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise E2EError(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {last!r})")
        time.sleep(interval_s)


# --------------------------------------------------------------------------- manifests


def render_manifests(overlay: Path = OVERLAY) -> list[Obj]:
    """``kubectl kustomize <overlay>``: the objects a user installs."""
    proc = subprocess.run(
        [find_kubectl(), "kustomize", str(overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise E2EError(f"kubectl kustomize {overlay} failed:\n{proc.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def of_kind(objects: Iterable[Obj], *kinds: str) -> list[Obj]:
    return [o for o in objects if o.get("kind") in kinds]


def install_prerequisites(env: Envtest, objects: list[Obj]) -> None:
    """Apply the Namespace, CRDs, ServiceAccounts and RBAC of the rendered manifests."""
    wanted = of_kind(objects, *PREREQUISITE_KINDS)
    env.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": wanted})
    )
    crds = [f"crd/{o['metadata']['name']}" for o in of_kind(wanted, "CustomResourceDefinition")]
    if crds:
        env.kubectl("wait", "--for=condition=Established", "--timeout=30s", *crds, timeout_s=40)


def webhook_configurations(objects: list[Obj], port: int) -> list[Obj]:
    """The shipped Mutating/ValidatingWebhookConfiguration ``gpumix`` pointed at
    ``https://127.0.0.1:<port><path>``; nothing but ``clientConfig`` is changed (and it
    carries no ``caBundle``: the webhook writes that itself)."""
    configs = [
        copy.deepcopy(o)
        for o in of_kind(objects, *WEBHOOK_KINDS)
        if o["metadata"]["name"] == CONFIG_NAME
    ]
    if sorted(c["kind"] for c in configs) != sorted(WEBHOOK_KINDS):
        raise E2EError(f"the rendered manifests lack the two {CONFIG_NAME} webhook configurations")
    for config in configs:
        for hook in config["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}"}
    return configs


def apply_webhook_configurations(env: Envtest, configs: list[Obj]) -> None:
    """Install them afresh with ``kubectl apply`` (deleted first: no caBundle left over)."""
    delete_webhook_configurations(env)
    env.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": configs})
    )


def delete_webhook_configurations(env: Envtest) -> None:
    for kind in WEBHOOK_KINDS:
        env.kubectl("delete", kind.lower(), CONFIG_NAME, "--ignore-not-found", "--wait=false")


def ca_bundles(env: Envtest) -> dict[str, list[str]]:
    """``caBundle`` (base64) of every webhook in both gpumix configurations, by kind."""
    out: dict[str, list[str]] = {}
    for kind, plural in WEBHOOK_PLURALS.items():
        status, body = env.request(
            "GET", f"/apis/admissionregistration.k8s.io/v1/{plural}/{CONFIG_NAME}"
        )
        if status != 200:
            out[kind] = []
            continue
        out[kind] = [str(h.get("clientConfig", {}).get("caBundle", "")) for h in body["webhooks"]]
    return out


def read_secret(env: Envtest, name: str = SECRET_NAME) -> Obj | None:
    status, body = env.request("GET", f"/api/v1/namespaces/{SYSTEM_NS}/secrets/{name}")
    if status == 404:
        return None
    assert status == 200, body
    return body


def secret_bytes(secret: Obj, key: str) -> bytes:
    return base64.b64decode(secret["data"][key])


# --------------------------------------------------------------------------- identities


def service_account_kubeconfig(env: Envtest, name: str, namespace: str = SYSTEM_NS) -> Path:
    """A kubeconfig authenticating as the ServiceAccount ``namespace/name`` (client cert
    with the user name and groups the API server gives a service account token)."""
    user = f"system:serviceaccount:{namespace}:{name}"
    cert = env.ca.issue(
        user,
        organizations=["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
        client=True,
    )
    pki = env.workdir / "pki"
    cert_path, key_path = pki / f"sa-{name}.crt", pki / f"sa-{name}.key"
    cert_path.write_bytes(cert.cert_pem)
    key_path.write_bytes(cert.key_pem)
    key_path.chmod(0o600)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "e2e",
                "cluster": {"server": env.server, "certificate-authority": str(env.ca_file)},
            }
        ],
        "users": [
            {
                "name": name,
                "user": {"client-certificate": str(cert_path), "client-key": str(key_path)},
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": "e2e", "user": name}}],
        "current-context": name,
    }
    path = env.workdir / f"kubeconfig-{name}"
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)
    return path


# --------------------------------------------------------------------------- processes


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format -> ``{'name{labels}': value}`` (labels as written)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        try:
            out[series] = float(value)
        except ValueError:
            continue
    return out


def metric_sum(metrics: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the series of ``name`` whose labels include ``labels``."""
    total = 0.0
    for series, value in metrics.items():
        base, _, rest = series.partition("{")
        if base != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest))
        if all(have.get(k) == v for k, v in labels.items()):
            total += value
    return total


PYTHON = sys.executable
"""The interpreter of the gpumix child processes (a benchmark may compare another)."""


@dataclass
class GpumixProcess:
    """One ``python -m gpumix <command> ...`` child process."""

    name: str
    args: list[str]
    workdir: Path
    http_port: int
    """Plain-HTTP port of /healthz, /readyz and /metrics."""
    proc: _Proc = field(init=False)

    def __post_init__(self) -> None:
        self.proc = _Proc(
            self.name,
            [PYTHON, "-m", "gpumix", *self.args],
            self.workdir / f"{self.name}.log",
        )

    @property
    def log_path(self) -> Path:
        return self.proc.log_path

    def start(self) -> GpumixProcess:
        self.proc.start()
        return self

    def running(self) -> bool:
        return self.proc.running()

    def stop(self, *, kill: bool = False) -> int | None:
        """SIGTERM (or SIGKILL) and wait; returns the exit code (None if never started)."""
        popen = self.proc.popen
        self.proc.stop(kill=kill)
        return None if popen is None else popen.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def get(self, path: str, timeout_s: float = 5.0) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")

    def metrics(self) -> dict[str, float]:
        status, text = self.get("/metrics")
        assert status == 200, text
        return parse_metrics(text)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        def ready() -> bool:
            if not self.running():
                raise E2EError(f"{self.name} exited:\n{self.log()[-3000:]}")
            return self.get("/readyz", timeout_s=2)[0] == 200

        try:
            wait_until(ready, timeout_s=timeout_s, what=f"{self.name} /readyz")
        except E2EError as err:
            raise E2EError(f"{err}\n--- {self.name} log ---\n{self.log()[-3000:]}") from None


def webhook_process(
    env: Envtest, kubeconfig: Path, *, port: int, name: str = "gpumix-webhook"
) -> GpumixProcess:
    """``gpumix webhook`` as users run it outside a Pod: their kubeconfig, the shipped
    policy, a self-managed certificate with 127.0.0.1 added to its names."""
    http_port = free_port()
    args = [
        "webhook",
        f"--kubeconfig={kubeconfig}",
        f"--policy={POLICY_FILE}",
        "--host=127.0.0.1",
        f"--port={port}",
        f"--metrics-port={http_port}",
        f"--namespace={SYSTEM_NS}",
        "--extra-san=127.0.0.1",
        "--log-level=INFO",
    ]
    return GpumixProcess(name, args, env.workdir, http_port)


def controller_process(
    env: Envtest,
    kubeconfig: Path,
    *,
    identity: str,
    namespace: str | None = None,
    audit_interval_s: float = 0,
) -> GpumixProcess:
    """``gpumix controller`` with leader election on the shipped Lease."""
    http_port = free_port()
    args = [
        "controller",
        f"--kubeconfig={kubeconfig}",
        f"--policy={POLICY_FILE}",
        f"--lease-namespace={SYSTEM_NS}",
        f"--lease-name={LEASE_NAME}",
        f"--identity={identity}",
        "--metrics-host=127.0.0.1",
        f"--metrics-port={http_port}",
        f"--audit-interval={audit_interval_s}",
        "--log-format=json",
    ]
    if namespace:
        args.append(f"--namespace={namespace}")
    return GpumixProcess(identity, args, env.workdir, http_port)


@dataclass
class Webhook:
    """A running ``gpumix webhook`` registered through the shipped configurations."""

    env: Envtest
    process: GpumixProcess
    port: int
    configs: list[Obj]
    kubeconfig: Path

    def metrics(self) -> dict[str, float]:
        return self.process.metrics()

    def admissions(self, **labels: str) -> float:
        return metric_sum(self.metrics(), "gpumix_admission_requests_total", **labels)

    def cached(self, kind: str) -> float:
        return metric_sum(self.metrics(), "gpumix_cache_objects", kind=kind)

    def restart(self) -> None:
        self.process.stop()
        self.process = webhook_process(self.env, self.kubeconfig, port=self.port).start()
        self.process.wait_ready()
        wait_admitting(self.env)


def wait_admitting(env: Envtest, timeout_s: float = 30.0) -> None:
    """Until the API server gets answers from the gpumix webhooks (a server-side dry run
    of a Deployment in ``default`` goes through both without an error; it requests a
    GPU, as a CPU app is not sent to them)."""
    probe = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "e2e-admission-probe", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": "e2e-admission-probe"}},
            "template": {
                "metadata": {"labels": {"app": "e2e-admission-probe"}},
                "spec": {
                    "containers": [
                        {
                            "name": "c",
                            "image": "registry.k8s.io/pause:3.10",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }
                    ]
                },
            },
        },
    }

    wait_until(
        lambda: dry_run_admitted(env, probe),
        timeout_s=timeout_s,
        what="the API server to reach the gpumix webhooks",
    )


def dry_run_admitted(env: Envtest, obj: Obj) -> bool:
    """Whether ``kubectl create --dry-run=server`` of ``obj`` succeeds (admission ran
    through every webhook, nothing was stored)."""
    proc = env.kubectl(
        "create", "--dry-run=server", "-o", "name", "-f", "-", input=json.dumps(obj), check=False
    )
    return proc.returncode == 0


def start_webhook(env: Envtest, objects: list[Obj]) -> Webhook:
    """Register the shipped configurations (no caBundle) and start ``gpumix webhook`` as
    its ServiceAccount; returns once both caBundles are written and admission works."""
    port = free_port()
    configs = webhook_configurations(objects, port)
    apply_webhook_configurations(env, configs)
    kubeconfig = service_account_kubeconfig(env, "gpumix-webhook")
    process = webhook_process(env, kubeconfig, port=port).start()
    try:
        process.wait_ready()
        wait_until(
            lambda: all(all(b) and bundle for bundle in ca_bundles(env).values() for b in bundle),
            timeout_s=15,
            what="caBundle in both webhook configurations",
        )
        wait_admitting(env)
    except BaseException:
        process.stop()
        delete_webhook_configurations(env)
        raise
    return Webhook(env, process, port, configs, kubeconfig)


def stop_webhook(webhook: Webhook) -> None:
    """Unregister first (as docs/install.md says to uninstall), then stop the process."""
    delete_webhook_configurations(webhook.env)
    webhook.process.stop()


# --------------------------------------------------------------------------- recorder


class Recorder:
    """An HTTPS admission webhook on 127.0.0.1 that allows everything and records the
    AdmissionReview requests; runs in a thread (kubectl calls block the test)."""

    def __init__(self, env: Envtest) -> None:
        self.env = env
        self.reviews: list[Obj] = []
        self._lock = threading.Lock()
        cert = env.ca.issue("e2e-recorder", hosts=["127.0.0.1"], server=True)
        pki = env.workdir / "pki"
        (pki / "recorder.crt").write_bytes(cert.cert_pem)
        (pki / "recorder.key").write_bytes(cert.key_pem)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki / "recorder.crt", pki / "recorder.key")
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with recorder._lock:
                    recorder.reviews.append(body)
                uid = (body.get("request") or {}).get("uid", "")
                answer = json.dumps(
                    {
                        "apiVersion": "admission.k8s.io/v1",
                        "kind": "AdmissionReview",
                        "response": {"uid": uid, "allowed": True},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def register(self, name: str, namespace: str, rules: list[Obj]) -> None:
        """A MutatingWebhookConfiguration ``name`` sending ``rules`` in ``namespace`` here.

        Mutating webhooks are called in the order of their configurations' names, so a
        name sorting before ``gpumix`` sees each object before gpumix changes it."""
        config = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": "record.e2e.gpumix.io",
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                    "failurePolicy": "Fail",
                    "timeoutSeconds": 5,
                    "matchPolicy": "Equivalent",
                    "reinvocationPolicy": "Never",
                    "clientConfig": {
                        "url": f"https://127.0.0.1:{self.port}/record",
                        "caBundle": base64.b64encode(self.env.ca.cert_pem).decode(),
                    },
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": namespace}
                    },
                    "rules": rules,
                }
            ],
        }
        self.env.kubectl("apply", "-f", "-", input=json.dumps(config))

    def requests(self, kind: str | None = None, name: str | None = None) -> Iterator[Obj]:
        with self._lock:
            reviews = list(self.reviews)
        for review in reviews:
            request = review.get("request") or {}
            if kind is not None and (request.get("kind") or {}).get("kind") != kind:
                continue
            if name is not None and request.get("name") != name:
                continue
            yield request
