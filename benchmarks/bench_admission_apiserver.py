"""gpumix webhook CPU per admission and memory, behind a real kube-apiserver.

    python benchmarks/bench_admission_apiserver.py [--deployments 10000] [--writes 1000]
        [--rate 100] [--raw] [--python PATH]

Starts the test kube-apiserver and etcd (``tools/envtest/build.sh``), stores
``--deployments`` GPU Deployments (in 100 namespaces, before any webhook is
registered), then starts ``gpumix webhook`` as its ServiceAccount with the shipped
policy and webhook configurations (``tests/e2e/gpumix_env.start_webhook``) and waits
until its cache holds them all.  Then, at ``--rate`` writes/s (open loop, four client
threads, each on a kept-alive connection), ``--writes`` server-side dry-run creates of
each kind go through admission:
isolated GPU Deployments (validate only), GPU Deployments that are not isolated (mutate +
validate), HPAs with maxReplicas (validate only), HPAs without maxReplicas (mutate
patches the default, validate judges it) and CPU Deployments (decided by the match
condition).
The same writes are sent first with no webhook registered (the latency floor), then
to a bare aiohttp endpoint that decodes each body and allows it, with ``--raw`` to a TLS
``asyncio.Protocol`` that does the same with no HTTP library (the floor of any Python
webhook), then to gpumix.  ``--python`` runs the endpoints and the webhook under another
interpreter (an environment with gpumix's base dependencies).
Each kind says which webhook calls the shipped match conditions leave: a GPU Deployment
that is already isolated and an HPA with maxReplicas reach only the validating webhook.
For each kind: the webhook process's user + system CPU (``/proc/<pid>/stat``) over the
writes divided by the writes, the API server's webhook calls, and the client's
p50/p99/p99.9.  The webhook's RSS is read after sync and at the end.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e import gpumix_env  # noqa: E402
from tests.e2e.envtest import Envtest, ensure_binaries  # noqa: E402
from tests.e2e.gpumix_env import (  # noqa: E402
    apply_webhook_configurations,
    delete_webhook_configurations,
    install_prerequisites,
    parse_metrics,
    render_manifests,
    start_webhook,
    stop_webhook,
    wait_until,
    webhook_configurations,
)


def gpu_deployment(name: str, namespace: str, isolated: bool = True) -> dict[str, Any]:
    """A GPU Deployment; ``isolated``: its selector and pod template already pin
    ``gpumix.io/deployment`` and the template names its GPU type (what gpumix's fix
    writes), so the mutating webhook's match condition leaves it out."""
    limits = {"nvidia.com/gpu": "1"}
    labels = {"app": name, "gpumix.io/deployment": name} if isolated else {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": {**labels, "gpumix.io/gpu-type": "NVIDIA-A100"}},
                "spec": {
                    "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100"},
                    "containers": [
                        {
                            "name": "engine",
                            "image": "vllm/vllm-openai:v0.6.3",
                            "resources": {"limits": limits},
                        }
                    ],
                },
            },
        },
    }


def cpu_deployment(name: str, namespace: str) -> dict[str, Any]:
    """A Deployment no rule judges: no accelerator, no model or GPU-type label."""
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]},
            },
        },
    }


def hpa(name: str, namespace: str, ceiling: int | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d-0"},
            "minReplicas": 1,
        },
    }
    if ceiling is not None:
        obj["spec"]["maxReplicas"] = ceiling
    return obj


BARE = "bare aiohttp + orjson decode"
RAW = "raw TLS protocol + orjson decode"


def serve_bare(cert: str, key: str) -> None:
    """The floor of an aiohttp webhook: a low-level aiohttp TLS server on uvloop that
    decodes each body with orjson and allows it, echoing its uid."""
    import asyncio
    import ssl
    from functools import partial

    import orjson
    import uvloop
    from aiohttp import web

    async def handle(request: web.BaseRequest) -> web.Response:
        uid = orjson.loads(await request.read())["request"]["uid"]
        answer = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}
        answer["response"] = {"uid": uid, "allowed": True}
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    async def main() -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        loop = asyncio.get_running_loop()
        server = web.Server(
            handle,
            request_factory=partial(web.BaseRequest, loop=loop, client_max_size=7 * 1024 * 1024),
            access_log=None,
        )
        runner = web.ServerRunner(server)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        print(f"PORT {site._server.sockets[0].getsockname()[1]}", flush=True)  # type: ignore[union-attr]
        await asyncio.sleep(3600)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def serve_raw(cert: str, key: str) -> None:
    """The floor of any Python webhook on uvloop: a TLS ``asyncio.Protocol`` with no HTTP
    library (it finds the end of the headers and reads ``Content-Length`` itself, which is
    all the API server's requests need), decoding each body with orjson and allowing it."""
    import asyncio
    import ssl

    import orjson
    import uvloop

    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "

    class Raw(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.buffer = bytearray()

        def data_received(self, data: bytes) -> None:
            buffer = self.buffer
            buffer += data
            while True:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                length = 0
                for line in bytes(buffer[:end]).split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if len(buffer) < end + 4 + length:
                    return
                body = bytes(buffer[end + 4 : end + 4 + length])
                del buffer[: end + 4 + length]
                uid = orjson.loads(body)["request"]["uid"]
                answer = orjson.dumps(
                    {
                        "apiVersion": "admission.k8s.io/v1",
                        "kind": "AdmissionReview",
                        "response": {"uid": uid, "allowed": True},
                    }
                )
                self.transport.write(  # type: ignore[attr-defined]
                    head + str(len(answer)).encode() + b"\r\n\r\n" + answer
                )

    async def main() -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Raw, "127.0.0.1", 0, ssl=ctx)
        print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
        await asyncio.sleep(3600)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def start_bare(env: Envtest, kind: str = "--serve-bare") -> tuple[subprocess.Popen[str], int]:
    pair = env.ca.issue("bench-bare", hosts=["127.0.0.1"], server=True)
    cert, key = env.workdir / "pki" / "bare.crt", env.workdir / "pki" / "bare.key"
    cert.write_bytes(pair.cert_pem)
    key.write_bytes(pair.key_pem)
    proc = subprocess.Popen(
        [gpumix_env.PYTHON, __file__, kind, str(cert), str(key)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline().split()[1])


def bare_configurations(env: Envtest, objects: list[Any], port: int) -> list[Any]:
    configs = webhook_configurations(objects, port)
    for config in configs:
        for hook in config["webhooks"]:
            hook["clientConfig"]["caBundle"] = base64.b64encode(env.ca.cert_pem).decode()
    return configs


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def write_path(obj: dict[str, Any]) -> str:
    """The collection a Deployment or an HPA is created in."""
    api = "/apis/apps/v1" if obj["kind"] == "Deployment" else "/apis/autoscaling/v2"
    plural = "deployments" if obj["kind"] == "Deployment" else "horizontalpodautoscalers"
    return f"{api}/namespaces/{obj['metadata']['namespace']}/{plural}"


def create(env: Envtest, obj: dict[str, Any], dry_run: bool = True) -> tuple[int, Any]:
    """One create on a connection of its own: ``(status, parsed body)``."""
    return env.request("POST", write_path(obj) + ("?dryRun=All" if dry_run else ""), obj)


def post(env: Envtest, obj: dict[str, Any], dry_run: bool) -> float:
    """One create that must succeed (setting up and probing); the time it took."""
    start = time.perf_counter()
    status, body = create(env, obj, dry_run)
    if status != 201:
        raise SystemExit(f"create {obj['kind']} {obj['metadata']['name']}: {status} {body}")
    return time.perf_counter() - start


class Client:
    """Dry-run creates over kept-alive HTTPS connections, one per client thread, as a
    controller's or kubectl's client keeps its connections: a TLS handshake per write
    would cost the client and the API server more CPU than the admission measured."""

    def __init__(self, env: Envtest) -> None:
        self.port = env.port
        self.context = env._ssl_context("admin")
        self.local = threading.local()

    def post(self, path: str, obj: dict[str, Any]) -> tuple[int, bytes]:
        body = json.dumps(obj).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        for attempt in (0, 1):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = http.client.HTTPSConnection(
                    "127.0.0.1", self.port, context=self.context, timeout=30
                )
                self.local.conn = conn
            try:
                conn.request("POST", path, body, headers)
                resp = conn.getresponse()
                return resp.status, resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                self.local.conn = None
                if attempt:
                    raise  # a kept-alive connection the server closed is retried once
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                raise
        raise AssertionError("unreachable")


@dataclass
class Sent:
    """What an open loop sent: each write's time, and the failures."""

    times: list[float] = field(default_factory=list)
    writes: int = 0
    failed: int = 0
    first_error: str = ""


def open_loop(
    client: Client,
    objects: list[dict[str, Any]],
    rate: float,
    *,
    workers: int = 4,
    limit_s: float = math.inf,
) -> Sent:
    """Send each object at its scheduled time (``rate`` per second), dry run, from
    ``workers`` threads; writes not yet sent when ``limit_s`` has passed are not sent."""
    sent = Sent()
    lock = threading.Lock()
    t0 = time.perf_counter()

    def one(i: int) -> None:
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if time.perf_counter() - t0 > limit_s:
            return
        start = time.perf_counter()
        try:
            status, body = client.post(write_path(objects[i]) + "?dryRun=All", objects[i])
            error = "" if status == 201 else f"{status}: {body[:300].decode(errors='replace')}"
        except (OSError, http.client.HTTPException) as exc:
            error = f"{type(exc).__name__}: {exc}"
        took = time.perf_counter() - start
        with lock:
            sent.writes += 1
            sent.times.append(took)
            if error:
                sent.failed += 1
                sent.first_error = sent.first_error or error

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, range(len(objects))))
    return sent


def sent_all(sent: Sent) -> list[float]:
    """The times of an open loop whose every write was admitted (else the run stops)."""
    if sent.failed:
        raise SystemExit(f"{sent.failed} of {sent.writes} writes failed: {sent.first_error}")
    return sent.times


def percentiles(times: list[float]) -> str:
    """p50, p99 and p99.9 in ms, as table cells."""
    qs = statistics.quantiles(times, n=1000)
    return " | ".join(f"{qs[i] * 1e3:.1f}" for i in (499, 989, 998))


def webhook_calls(env: Envtest) -> float:
    status, text = env.request("GET", "/metrics")
    assert status == 200 and isinstance(text, str)
    total = 0.0
    for series, value in parse_metrics(text).items():
        if series.startswith("apiserver_admission_webhook_admission_duration_seconds_count{") and (
            'name="mutate.gpumix.io"' in series or 'name="validate.gpumix.io"' in series
        ):
            total += value
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, default=10000)
    parser.add_argument("--writes", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument(
        "--raw",
        action="store_true",
        help="also measure a TLS endpoint with no HTTP library (the floor of Python itself)",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter of the webhook and the bare endpoints (an environment with "
        "gpumix's base dependencies; gpumix is imported from this checkout)",
    )
    args = parser.parse_args()
    gpumix_env.PYTHON = args.python
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    print(f"webhook interpreter: {args.python}", flush=True)
    env = Envtest(ensure_binaries()).start()
    try:
        objects = render_manifests()
        env.install_crds()
        install_prerequisites(env, objects)
        namespaces = [f"bench-{i}" for i in range(100)]
        env.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "List",
                    "items": [
                        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}
                        for n in namespaces
                    ],
                }
            ),
        )
        stored = [
            gpu_deployment(f"d-{i}", namespaces[i % len(namespaces)])
            for i in range(args.deployments)
        ]
        t = time.monotonic()
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda o: post(env, o, False), stored))
        print(f"stored {len(stored)} Deployments in {time.monotonic() - t:.0f} s")
        kinds = {
            "GPU Deployment, isolated (validate only)": lambda tag: [
                gpu_deployment(f"{tag}-{i}", namespaces[i % 100]) for i in range(args.writes)
            ],
            "GPU Deployment, not isolated (mutate + validate)": lambda tag: [
                gpu_deployment(f"{tag}-b-{i}", namespaces[i % 100], isolated=False)
                for i in range(args.writes)
            ],
            "HPA with maxReplicas (validate only)": lambda tag: [
                hpa(f"{tag}-c-{i}", namespaces[i % 100], 4) for i in range(args.writes)
            ],
            # only gpumix adds a default ceiling: the other runs' HPAs carry one
            "HPA (gpumix: without maxReplicas)": lambda tag: [
                hpa(f"{tag}-{i}", namespaces[i % 100], None if tag == "gpumix" else 4)
                for i in range(args.writes)
            ],
            "CPU Deployment": lambda tag: [
                cpu_deployment(f"{tag}-{i}", namespaces[i % 100]) for i in range(args.writes)
            ],
        }
        print(
            f"{args.deployments} Deployments stored; {args.writes} dry-run creates of each "
            f"kind at {args.rate:.0f}/s, one webhook registered at a time"
        )
        print(
            "| webhook | writes | webhook calls | webhook CPU ms per write "
            "| p50 ms | p99 ms | p99.9 ms |"
        )
        print("|---|---|---|---|---|---|---|")
        results: dict[tuple[str, str], float] = {}
        client = Client(env)

        def measure(label: str, pid: int, tag: str) -> None:
            for kind, make in kinds.items():
                items = make(tag)
                calls0, cpu0 = webhook_calls(env), cpu_seconds(pid)
                times = sent_all(open_loop(client, items, args.rate))
                cpu1, calls1 = cpu_seconds(pid), webhook_calls(env)
                results[(label, kind)] = (cpu1 - cpu0) / len(items) * 1e3
                print(
                    f"| {label} | {kind} | {calls1 - calls0:.0f} | "
                    f"{results[(label, kind)]:.3f} | {percentiles(times)} |",
                    flush=True,
                )

        # no webhook registered: the API server alone (the floor of the latency)
        for kind, make in kinds.items():
            times = sent_all(open_loop(client, make("none"), args.rate))
            print(f"| none | {kind} | 0 | — | {percentiles(times)} |", flush=True)
        floors = [("--serve-bare", BARE, "bare")]
        if args.raw:
            floors.append(("--serve-raw", RAW, "raw"))
        for flag, label, tag in floors:
            bare, port = start_bare(env, flag)
            try:
                apply_webhook_configurations(env, bare_configurations(env, objects, port))
                wait_until(
                    lambda: (
                        post(env, gpu_deployment("probe", namespaces[0]), True)
                        and webhook_calls(env) > 0
                    ),
                    timeout_s=20,
                    what=f"the {tag} endpoint registered",
                )
                measure(label, bare.pid, tag)
            finally:
                delete_webhook_configurations(env)
                bare.terminate()
                bare.wait(10)
        webhook = start_webhook(env, objects)
        try:
            wait_until(
                lambda: webhook.cached("Deployment") >= args.deployments,
                timeout_s=300,
                what="the webhook cache",
            )
            pid = webhook.process.proc.popen.pid  # type: ignore[union-attr]
            time.sleep(2)
            rss_synced = rss_mb(pid)
            measure("gpumix", pid, "gpumix")
            print(
                f"gpumix webhook RSS: {rss_synced:.1f} MB after sync, "
                f"{rss_mb(pid):.1f} MB at the end"
            )
            for kind in kinds:
                for _, label, tag in floors:
                    floor_ms = results[(label, kind)]
                    if floor_ms:
                        ratio = results[("gpumix", kind)] / floor_ms
                        print(f"gpumix vs {tag}, {kind}: {ratio:.2f}x")
        finally:
            stop_webhook(webhook)
    finally:
        env.stop()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-bare":
        serve_bare(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "--serve-raw":
        serve_raw(sys.argv[2], sys.argv[3])
    else:
        main()
