"""The demo's cluster: the API emulator, the webhook over real HTTPS and the controller,
all in this process, wired the way they are in a real cluster.

The webhook configurations are the shipped ones from ``manifests/base``; the
emulator resolves their ``clientConfig.service`` to the webhook's loopback port,
as a cluster's Service would. The webhook bootstraps its own CA and serving
certificate into the Secret ``gpumix-webhook-tls`` and patches ``caBundle`` into
those configurations, exactly as it does in a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from ruamel.yaml import YAML

from gpumix.controller.settings import ControllerSettings
from gpumix.controller.shell import run_controller
from gpumix.emulator import Emulator
from gpumix.lifecycle import Service
from gpumix.webhook.runtime import serve as serve_webhook
from gpumix.webhook.settings import TLSSettings, WebhookSettings

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "manifests" / "crds" / "gpumix.io_gpumixes.yaml"
WEBHOOK_CONFIG_FILE = REPO / "manifests" / "base" / "webhook-configurations.yaml"
DEMO_DIR = REPO / "examples" / "demo"
NAMESPACE = "gpumix-system"


class DemoError(Exception):
    """The demo cannot run (a file is missing, a component did not start)."""


@dataclass(frozen=True)
class NodePool:
    gpu_type: str
    nodes: int
    gpus_per_node: int


POOLS = (NodePool("A100", 2, 8), NodePool("A40", 3, 8))


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DemoError(
            f"{path} is missing: run the demo from a checkout of the gpumix repository "
            "(pip install -e .)"
        )
    yaml = YAML(typ="safe")
    return [doc for doc in yaml.load_all(path.read_text(encoding="utf-8")) if doc]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node(name: str, pool: NodePool) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "gpumix.io/gpu-type": pool.gpu_type,
                "nvidia.com/gpu.product": f"NVIDIA-{pool.gpu_type}",
                "kubernetes.io/hostname": name,
            },
        },
        "status": {
            "capacity": {"nvidia.com/gpu": str(pool.gpus_per_node), "cpu": "64"},
            "allocatable": {"nvidia.com/gpu": str(pool.gpus_per_node), "cpu": "63"},
        },
    }


@dataclass
class DemoCluster(Service):
    """Start with ``async with DemoCluster() as cluster``; everything stops on exit."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gpumix-demo-")))
    emulator: Emulator = field(default_factory=Emulator)
    webhook_port: int = 0
    kubeconfig: Path | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _api: Any = None
    session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return self.emulator.url

    async def start(self, port: int = 0) -> None:
        crd = load_yaml_documents(CRD_FILE)
        webhook_configs = load_yaml_documents(WEBHOOK_CONFIG_FILE)
        cluster_objects = load_yaml_documents(DEMO_DIR / "cluster.yaml")
        await self.emulator.start(port=port)
        self.kubeconfig = self.emulator.kubeconfig(self.workdir / "kubeconfig")
        self.session = aiohttp.ClientSession()
        for obj in [*crd, *cluster_objects]:
            self.emulator.create(obj)
        for pool in POOLS:
            for i in range(pool.nodes):
                self.emulator.create(node(f"gpu-{pool.gpu_type.lower()}-{i}", pool))
        self.webhook_port = free_port()
        port_of_webhook = self.webhook_port

        def resolve(namespace: str, name: str, port: int, path: str) -> str:
            if (namespace, name) != (NAMESPACE, "gpumix-webhook"):
                raise LookupError(f"no endpoints for service {namespace}/{name}")
            return f"https://127.0.0.1:{port_of_webhook}{path}"

        self.emulator.service_resolver = resolve
        for obj in webhook_configs:
            self.emulator.create(obj)
        await self._start_webhook()
        await self._start_controller()

    async def _start_webhook(self) -> None:
        settings = WebhookSettings(
            kubeconfig=str(self.kubeconfig),
            host="127.0.0.1",
            port=self.webhook_port,
            metrics_port=None,
            tls=TLSSettings(namespace=NAMESPACE, extra_sans=("127.0.0.1",)),
        )
        self._tasks.append(
            asyncio.create_task(serve_webhook(settings, stop=self._stop), name="webhook")
        )
        await self._wait_ready()

    async def _wait_ready(self, timeout_s: float = 20.0) -> None:
        """Ready when the API server trusts the webhook (caBundle patched) and it says ready."""
        assert self.session is not None
        deadline = time.monotonic() + timeout_s
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        while time.monotonic() < deadline:
            self._raise_if_failed()
            configs = [
                self.emulator.get(kind, "gpumix")
                for kind in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations")
            ]
            patched = all(
                c is not None
                and all(w.get("clientConfig", {}).get("caBundle") for w in c.get("webhooks", []))
                for c in configs
            )
            if patched:
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with self.session.get(
                        f"https://127.0.0.1:{self.webhook_port}/readyz", ssl=insecure
                    ) as resp:
                        if resp.status == 200:
                            return
            await asyncio.sleep(0.05)
        raise DemoError(f"the webhook was not ready within {timeout_s:.0f} s")

    def _raise_if_failed(self) -> None:
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise DemoError(f"{task.get_name()} stopped: {task.exception()}")

    async def _start_controller(self) -> None:
        self._api = self.emulator.api_client()
        settings = ControllerSettings(
            lease_namespace=NAMESPACE,
            identity="gpumix-demo",
            metrics_port=None,
            audit_interval_s=0,
            debounce_s=0.05,
        )
        self._tasks.append(
            asyncio.create_task(
                run_controller(settings, self._api, stop_event=self._stop), name="controller"
            )
        )

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=10)
        self._tasks.clear()
        if self._api is not None:
            await self._api.close()
            self._api = None
        if self.session is not None:
            await self.session.close()
            self.session = None
        await self.emulator.stop()
        for child in sorted(self.workdir.glob("**/*"), reverse=True):
            if child.is_file():
                child.unlink()
            else:
                child.rmdir()
        with contextlib.suppress(OSError):
            self.workdir.rmdir()

    # -- API calls, over HTTP like kubectl ------------------------------------------

    async def call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, Any], list[str]]:
        """``(status, json body, warnings)`` of one API request."""
        assert self.session is not None
        async with self.session.request(
            method,
            f"{self.url}{path}",
            json=body,
            headers={"Content-Type": content_type},
        ) as resp:
            data = await resp.json(content_type=None)
            warnings = [_warning_text(w) for w in resp.headers.getall("Warning", [])]
            return resp.status, data if isinstance(data, dict) else {}, warnings

    def controller_failed(self) -> str | None:
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                return f"{task.get_name()}: {task.exception()}"
        return None


def _warning_text(header: str) -> str:
    # `299 - "text"`
    _, _, rest = header.partition(" - ")
    return rest.strip().strip('"') or header
