"""Webhook throughput and cache memory, on loopback.

    python benchmarks/bench_webhook.py [--requests 20000] [--concurrency 64]
        [--deployments 10000] [--namespaces 100] [--time-limit 60]

The Kubernetes API emulator runs in this process and holds the cluster
(``--deployments`` Deployments in ``--namespaces`` namespaces, one HPA per ten
Deployments, 50 GPU Nodes).  ``gpumix webhook --kubeconfig ...`` runs as a child
process exactly as it would against a cluster: it lists and watches the
emulator, bootstraps its certificate into the Secret, and serves HTTPS.  A bare
aiohttp TLS endpoint that answers every request with a fixed ``allowed: true``
review runs as a second child with the same certificate.  The load generator
(this process) keeps ``--concurrency`` keep-alive connections busy with a mix
of Deployment and HPA AdmissionReviews and reports requests/s and p50/p99
latency per endpoint.  The webhook's resident memory (VmRSS) is read once its
cache has synced, and compared with a webhook watching an empty cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import re
import ssl
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gpumix.emulator import Emulator  # noqa: E402

GPU_TYPES = ("NVIDIA-A100-SXM4-80GB", "NVIDIA-A40", "NVIDIA-L40S", "NVIDIA-H100-80GB-HBM3")
Obj = dict[str, Any]


# --------------------------------------------------------------------------- cluster


def deployment(ns: str, name: str, model: str, gpu: str, isolated: bool) -> Obj:
    selector = {"model.aibrix.ai/name": model}
    if isolated:
        selector["gpumix.io/deployment"] = name
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": {"model.aibrix.ai/name": model}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": dict(selector)},
                "spec": {
                    "nodeSelector": {"nvidia.com/gpu.product": gpu},
                    "containers": [
                        {
                            "name": "engine",
                            "image": "vllm/vllm-openai:v0.6.0",
                            "args": ["--model", model, "--port", "8000"],
                            "ports": [{"containerPort": 8000}],
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }
                    ],
                },
            },
        },
    }


def hpa(ns: str, name: str, target: str, max_replicas: int | None) -> Obj:
    spec: Obj = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
        "minReplicas": 1,
        "metrics": [
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 70},
                },
            }
        ],
    }
    if max_replicas is not None:
        spec["maxReplicas"] = max_replicas
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def populate(emu: Emulator, deployments: int, namespaces: int) -> None:
    emu.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gpumix-system"}})
    per_ns = max(deployments // namespaces, 1)
    for n in range(namespaces):
        ns = f"team-{n:03d}"
        emu.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        for i in range(per_ns):
            model, gpu = f"model-{i // len(GPU_TYPES)}", GPU_TYPES[i % len(GPU_TYPES)]
            name = f"{model}-{gpu.split('-')[1].lower()}"
            emu.create(deployment(ns, name, model, gpu, isolated=True))
            if i % 10 == 0:
                emu.create(hpa(ns, name, name, 8))
    for i in range(50):
        gpu = GPU_TYPES[i % len(GPU_TYPES)]
        emu.create(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": f"gpu-node-{i}", "labels": {"nvidia.com/gpu.product": gpu}},
                "status": {"allocatable": {"nvidia.com/gpu": "8", "cpu": "96"}},
            }
        )


def review_body(obj: Obj, uid: str) -> bytes:
    group, _, version = obj["apiVersion"].rpartition("/")
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"group": group, "version": version, "kind": obj["kind"]},
                "resource": {
                    "group": group,
                    "version": version,
                    "resource": obj["kind"].lower() + "s",
                },
                "name": obj["metadata"]["name"],
                "namespace": obj["metadata"]["namespace"],
                "operation": "CREATE",
                "userInfo": {
                    "username": "system:serviceaccount:argocd:argocd-application-controller"
                },
                "object": obj,
                "oldObject": None,
                "dryRun": False,
            },
        }
    ).encode()


def request_mix(namespaces: int, count: int, seed: int = 7) -> list[bytes]:
    """Deployments (new isolated ones, and broad ones that overlap) and HPAs (with and
    without a ceiling), in the same namespaces as the cached objects."""
    rnd = random.Random(seed)
    bodies = []
    for i in range(count):
        ns = f"team-{rnd.randrange(namespaces):03d}"
        roll = rnd.random()
        if roll < 0.4:
            obj = deployment(ns, f"new-{i}", f"fresh-{i}", rnd.choice(GPU_TYPES), True)
        elif roll < 0.5:
            obj = deployment(ns, f"broad-{i}", "model-1", "NVIDIA-A40", False)
        elif roll < 0.8:
            obj = hpa(ns, f"h-{i}", "model-2-a100", None)
        else:
            obj = hpa(ns, f"h-{i}", "model-3-a40", 5)
        bodies.append(review_body(obj, f"uid-{i}"))
    return bodies


# --------------------------------------------------------------------------- processes


@dataclass
class Child:
    proc: asyncio.subprocess.Process
    port: int
    probe_port: int = 0

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        kb = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
        return kb / 1024

    def cpu_s(self) -> float:
        """User + system CPU time the child has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def start_webhook(kubeconfig: Path) -> Child:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gpumix",
        "webhook",
        "--kubeconfig",
        str(kubeconfig),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--extra-san",
        "127.0.0.1",
        "--log-level",
        "INFO",
        cwd=str(REPO),
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
        if not line:
            raise RuntimeError("gpumix webhook exited before serving")
        m = re.search(r"serving HTTPS on [\d.]+:(\d+), probes on port (\d+)", line)
        if m:
            asyncio.get_running_loop().create_task(_drain(proc.stderr))
            return Child(proc, int(m.group(1)), int(m.group(2)))
    raise RuntimeError("gpumix webhook did not start in time")


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


async def wait_ready(child: Child, timeout_s: float = 120) -> float:
    start = time.monotonic()
    async with aiohttp.ClientSession() as s:
        while time.monotonic() - start < timeout_s:
            with contextlib.suppress(aiohttp.ClientError):
                async with s.get(f"http://127.0.0.1:{child.probe_port}/readyz") as r:
                    if r.status == 200:
                        return time.monotonic() - start
            await asyncio.sleep(0.1)
    raise RuntimeError("webhook not ready in time")


async def start_bare(cert: Path, key: Path) -> Child:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve-bare",
        str(cert),
        str(key),
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
    return Child(proc, int(line.split()[1]))


def serve_bare(cert: str, key: str) -> None:
    """A bare aiohttp TLS endpoint: read the body, answer a fixed allowed review."""
    fixed = json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {"uid": "fixed", "allowed": True},
        }
    ).encode()

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=fixed, content_type="application/json")

    async def main() -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert, key)
        app = web.Application(client_max_size=7 * 1024 * 1024)
        app.router.add_post("/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(f"PORT {port}", flush=True)
        await asyncio.sleep(3600)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


# --------------------------------------------------------------------------- load


@dataclass
class Result:
    name: str
    requests: int
    seconds: float
    latencies: list[float]
    errors: int
    server_cpu_s: float = 0.0

    @property
    def cpu_us(self) -> float:
        """Server CPU per request: unlike req/s, not skewed by other load on the machine."""
        return self.server_cpu_s / self.requests * 1e6

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        data = sorted(self.latencies)
        return data[min(int(q * len(data)), len(data) - 1)] * 1000


async def load(
    url: str,
    bodies: list[bytes],
    ctx: ssl.SSLContext,
    total: int,
    concurrency: int,
    time_limit_s: float,
    name: str,
    check_uid: bool,
) -> Result:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(total))
    deadline = time.monotonic() + time_limit_s
    connector = aiohttp.TCPConnector(ssl=ctx, limit=concurrency)
    headers = {"Content-Type": "application/json"}

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        for i in counter:  # shared iterator: `total` requests across all workers
            if time.monotonic() > deadline:
                return
            body = bodies[i % len(bodies)]
            t0 = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as resp:
                data = await resp.read()
            latencies.append(time.perf_counter() - t0)
            if resp.status != 200 or (
                check_uid and f'"uid":"uid-{i % len(bodies)}"'.encode() not in data
            ):
                errors += 1

    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return Result(name, len(latencies), seconds, latencies, errors)


@contextlib.asynccontextmanager
async def emulator(deployments: int, namespaces: int) -> AsyncIterator[tuple[Emulator, Path]]:
    emu = Emulator(bookmark_interval_s=30.0, history_size=1000)
    t0 = time.perf_counter()
    populate(emu, deployments, namespaces)
    print(
        f"# emulator: {deployments} Deployments in {namespaces} namespaces stored in "
        f"{time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    await emu.start()
    try:
        yield emu, emu.kubeconfig()
    finally:
        await emu.stop()


async def memory(args: argparse.Namespace) -> dict[str, float]:
    out: dict[str, float] = {}
    for label, deps in (("empty", 0), ("full", args.deployments)):
        async with emulator(deps, args.namespaces if deps else 1) as (_, kubeconfig):
            child = await start_webhook(kubeconfig)
            try:
                out[f"sync_s_{label}"] = await wait_ready(child)
                await asyncio.sleep(1.0)
                out[f"rss_mb_{label}"] = child.rss_mb()
            finally:
                await child.stop()
    return out


async def throughput(args: argparse.Namespace) -> list[Result]:
    async with emulator(args.deployments, args.namespaces) as (emu, kubeconfig):
        webhook = await start_webhook(kubeconfig)
        try:
            ready_s = await wait_ready(webhook)
            print(
                f"# webhook ready (cache synced) after {ready_s:.1f} s; RSS "
                f"{webhook.rss_mb():.0f} MB",
                file=sys.stderr,
            )
            secret = emu.get("secrets", "gpumix-webhook-tls", "gpumix-system")
            assert secret is not None
            data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
            with tempfile.TemporaryDirectory() as tmp:
                cert, key = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
                cert.write_bytes(data["tls.crt"])
                key.write_bytes(data["tls.key"])
                bare = await start_bare(cert, key)
            try:
                ctx = ssl.create_default_context(cadata=data["ca.crt"].decode())
                bodies = request_mix(args.namespaces, 2000)
                targets = [
                    (
                        "bare aiohttp TLS, fixed allowed review",
                        f"https://127.0.0.1:{bare.port}/validate",
                        False,
                    ),
                    ("gpumix /validate", f"https://127.0.0.1:{webhook.port}/validate", True),
                    ("gpumix /mutate", f"https://127.0.0.1:{webhook.port}/mutate", True),
                ]
                for name, url, check in targets:  # warm-up
                    await load(
                        url,
                        bodies,
                        ctx,
                        min(1000, args.requests),
                        args.concurrency,
                        args.time_limit,
                        name,
                        check,
                    )
                # Rounds interleave the endpoints so that load from other processes on the
                # machine hits all of them alike; the median round of each is reported.
                runs: dict[str, list[Result]] = {name: [] for name, _, _ in targets}
                servers = {targets[0][0]: bare, targets[1][0]: webhook, targets[2][0]: webhook}
                for _ in range(args.rounds):
                    for name, url, check in targets:
                        cpu0 = servers[name].cpu_s()
                        result = await load(
                            url,
                            bodies,
                            ctx,
                            args.requests,
                            args.concurrency,
                            args.time_limit,
                            name,
                            check,
                        )
                        result.server_cpu_s = servers[name].cpu_s() - cpu0
                        runs[name].append(result)
                for name, rs in runs.items():
                    print(
                        f"# {name}: "
                        + ", ".join(f"{r.rps:.0f} req/s ({r.cpu_us:.0f} µs CPU)" for r in rs),
                        file=sys.stderr,
                    )
                medians = [sorted(rs, key=lambda r: r.rps)[len(rs) // 2] for rs in runs.values()]
                # Service time without queueing: one connection, one request at a time.
                for name, url, check in targets:
                    single = await load(
                        url,
                        bodies,
                        ctx,
                        min(2000, args.requests),
                        1,
                        args.time_limit,
                        name + " (1 connection)",
                        check,
                    )
                    medians.append(single)
                return medians
            finally:
                await bare.stop()
        finally:
            await webhook.stop()


def report(results: list[Result], mem: dict[str, float], args: argparse.Namespace) -> str:
    bare = results[0]
    lines = [
        f"{args.deployments} Deployments in {args.namespaces} namespaces cached, "
        f"{args.concurrency} concurrent keep-alive TLS connections, {args.requests} requests "
        f"per endpoint and round, median of {args.rounds} interleaved rounds (40% new "
        "Deployments, 10% overlapping Deployments, 30% HPAs without maxReplicas, 20% HPAs "
        "with it).",
        "",
        "| endpoint | requests | req/s | vs bare | p50 ms | p99 ms | errors "
        "| server CPU µs/req | capacity vs bare |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.name.endswith("(1 connection)"):
            continue
        lines.append(
            f"| {r.name} | {r.requests} | {r.rps:.0f} | {r.rps / bare.rps:.2f}x | "
            f"{r.pct(0.5):.2f} | {r.pct(0.99):.2f} | {r.errors} | {r.cpu_us:.0f} | "
            f"{bare.cpu_us / r.cpu_us:.2f}x |"
        )
    lines += [
        "",
        "One connection, one request at a time (no queueing):",
        "",
        "| endpoint | requests | p50 ms | p99 ms |",
        "|---|---|---|---|",
    ]
    for r in results:
        if r.name.endswith("(1 connection)"):
            lines.append(
                f"| {r.name.removesuffix(' (1 connection)')} | {r.requests} | "
                f"{r.pct(0.5):.2f} | {r.pct(0.99):.2f} |"
            )
    if mem:
        lines += [
            "",
            f"Webhook RSS: {mem['rss_mb_full']:.0f} MB with {args.deployments} Deployments "
            f"cached (synced in {mem['sync_s_full']:.1f} s), {mem['rss_mb_empty']:.0f} MB "
            "with an empty cluster.",
        ]
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-bare":
        serve_bare(sys.argv[2], sys.argv[3])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--deployments", type=int, default=10000)
    p.add_argument("--namespaces", type=int, default=100)
    p.add_argument("--time-limit", type=float, default=60.0, help="seconds per endpoint at most")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median is shown)")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--memory-only", action="store_true")
    args = p.parse_args()

    async def run() -> tuple[list[Result], dict[str, float]]:
        mem = {} if args.skip_memory else await memory(args)
        results = [] if args.memory_only else await throughput(args)
        return results, mem

    results, mem = asyncio.run(run())
    if results:
        print(report(results, mem, args))
    else:
        print(json.dumps(mem, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
