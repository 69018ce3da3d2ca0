"""Webhook throughput and cache memory, on loopback.

    python benchmarks/bench_webhook.py [--concurrency 64] [--duration 10] [--rounds 3]
        [--deployments 10000] [--namespaces 100] [--event-loop uvloop|asyncio]
        [--spin-us 30]

The Kubernetes API emulator runs in this process and holds the cluster
(``--deployments`` Deployments in ``--namespaces`` namespaces, one HPA per ten
Deployments, 50 GPU Nodes).  ``gpumix webhook --kubeconfig ...`` runs as a child
process exactly as it would against a cluster: it lists and watches the
emulator, bootstraps its certificate into the Secret, and serves HTTPS.  Three
bare aiohttp TLS endpoints that answer every request with a fixed ``allowed:
true`` review run as more children with the same certificate: two built on
``web.Application`` (router and ``AppRunner``), one on the standard asyncio event
loop and one on uvloop, and one on aiohttp's low-level server (``web.Server`` and
``ServerRunner``, as gpumix serves) on uvloop.  gpumix is compared with the faster
of the two ``Application`` endpoints ("vs bare") and with the low-level one ("vs
low-level bare").  Two more children are reference points for the budget a
webhook has above the bare endpoint, not used for the ratios: the low-level
endpoint that also decodes each body with orjson (the least a webhook that reads
the request does), and with ``--spin-us N`` one that also spins N µs of CPU per
request.  The load generator is wrk (C; ``apt-get install wrk``; the
throughput part refuses to run without it): one thread keeps ``--concurrency``
keep-alive connections busy for ``--duration`` seconds per endpoint and round
with a mix of Deployment and HPA AdmissionReviews, checks every answer (HTTP
200 and the uid of a request in flight), and reports requests/s and p50/p99
latency.  The CPU time each server process used during a run, per request, is
read from ``/proc``.  The webhook's resident memory (VmRSS) is read once its
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
import shutil
import ssl
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
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


def cluster(deployments: int, namespaces: int) -> list[Obj]:
    """The benchmark's cluster: Namespaces, GPU Deployments (an HPA per ten) and 50 GPU Nodes."""
    objects: list[Obj] = []
    per_ns = max(deployments // namespaces, 1)
    for n in range(namespaces):
        ns = f"team-{n:03d}"
        objects.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        for i in range(per_ns):
            model, gpu = f"model-{i // len(GPU_TYPES)}", GPU_TYPES[i % len(GPU_TYPES)]
            name = f"{model}-{gpu.split('-')[1].lower()}"
            objects.append(deployment(ns, name, model, gpu, isolated=True))
            if i % 10 == 0:
                objects.append(hpa(ns, name, name, 8))
    for i in range(50):
        gpu = GPU_TYPES[i % len(GPU_TYPES)]
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": f"gpu-node-{i}", "labels": {"nvidia.com/gpu.product": gpu}},
                "status": {"allocatable": {"nvidia.com/gpu": "8", "cpu": "96"}},
            }
        )
    return objects


def populate(emu: Emulator, deployments: int, namespaces: int) -> None:
    emu.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gpumix-system"}})
    for obj in cluster(deployments, namespaces):
        emu.create(obj)


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


async def start_webhook(
    kubeconfig: Path, event_loop: str = "uvloop", checkout: Path = REPO
) -> Child:
    """``gpumix webhook`` of ``checkout`` (this one, or another, e.g. a git worktree of
    an earlier commit: ``python -m gpumix`` imports from its working directory)."""
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
        "--event-loop",
        event_loop,
        cwd=str(checkout),
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


# (aiohttp server, event loop, work per request, name in the report)
BARES = (
    ("application", "asyncio", "read", "bare aiohttp TLS on asyncio, fixed allowed review"),
    ("application", "uvloop", "read", "bare aiohttp TLS on uvloop, fixed allowed review"),
    (
        "low-level",
        "uvloop",
        "read",
        "bare aiohttp low-level server TLS on uvloop, fixed allowed review",
    ),
)
LOW_LEVEL_BARE = BARES[2][3]
# Reference points below the bare endpoints (not used for the ratios): what the same
# low-level endpoint costs when it also decodes the body with orjson (the least any
# webhook that reads the request does), and when it spins ``--spin-us`` of CPU.
DECODE_BARE = (
    "low-level",
    "uvloop",
    "decode",
    "bare low-level server on uvloop + orjson decode of the body",
)


def spin_bare(spin_us: float) -> tuple[str, str, str, str]:
    return (
        "low-level",
        "uvloop",
        f"spin:{spin_us:g}",
        f"bare low-level server on uvloop + {spin_us:g} µs spin",
    )


async def start_bare(cert: Path, key: Path, server: str, event_loop: str, work: str) -> Child:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve-bare",
        str(cert),
        str(key),
        server,
        event_loop,
        work,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
    return Child(proc, int(line.split()[1]))


def serve_bare(cert: str, key: str, server: str, event_loop: str, work: str) -> None:
    """A bare aiohttp TLS endpoint: read the body, answer a fixed allowed review.
    ``server``: ``application`` (``web.Application``, a catch-all POST route,
    ``AppRunner``) or ``low-level`` (``web.Server`` and ``ServerRunner``); both read
    bodies up to 7 MiB.  ``work``: ``read`` (only that), ``decode`` (also
    ``orjson.loads`` the body) or ``spin:N`` (also spin N µs on the CPU)."""
    import orjson

    spin_s = float(work.split(":")[1]) / 1e6 if work.startswith("spin:") else 0.0
    decode = work == "decode"
    fixed = json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {"uid": "fixed", "allowed": True},
        }
    ).encode()

    async def handle(request: web.BaseRequest) -> web.Response:
        raw = await request.read()
        if decode:
            orjson.loads(raw)
        if spin_s:
            until = time.perf_counter() + spin_s
            while time.perf_counter() < until:
                pass
        return web.Response(body=fixed, content_type="application/json")

    async def main() -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert, key)
        runner: web.BaseRunner
        if server == "low-level":
            loop = asyncio.get_running_loop()
            low_level = web.Server(
                handle,
                request_factory=partial(
                    web.BaseRequest, loop=loop, client_max_size=7 * 1024 * 1024
                ),
                access_log=None,
            )
            runner = web.ServerRunner(low_level)
        else:
            app = web.Application(client_max_size=7 * 1024 * 1024)
            app.router.add_post("/{tail:.*}", handle)
            runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(f"PORT {port}", flush=True)
        await asyncio.sleep(3600)

    factory = None
    if event_loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


# --------------------------------------------------------------------------- load

# wrk (C, one thread) drives the load.  Each of its threads reads the request bodies
# (one "uid<TAB>body" line each), cycles through them, and checks every answer: HTTP
# 200, and (for gpumix) the uid of a request that is in flight on that thread and not
# answered yet.  wrk's Lua API does not say which connection an answer came on, so the
# uids in flight are a multiset: every answer must take one of them away.
WRK_SCRIPT = r"""
local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  check_uid = args[2] == "uid"
  reqs, uids, pending = {}, {}, {}
  for line in io.lines(args[1]) do
    local tab = line:find("\t", 1, true)
    uids[#uids + 1] = line:sub(1, tab - 1)
    reqs[#reqs + 1] = wrk.format("POST", nil, {["Content-Type"] = "application/json"},
                                 line:sub(tab + 1))
  end
  n = #reqs
  i = (id * 997) % n
  bad_status, bad_uid = 0, 0
end

function request()
  i = i % n + 1
  local uid = uids[i]
  pending[uid] = (pending[uid] or 0) + 1
  return reqs[i]
end

function response(status, headers, body)
  if status ~= 200 then bad_status = bad_status + 1 end
  if check_uid then
    local uid = body:match('"uid":"([^"]*)"')
    local left = uid and pending[uid]
    if left == nil then
      bad_uid = bad_uid + 1
    elseif left == 1 then
      pending[uid] = nil
    else
      pending[uid] = left - 1
    end
  end
end

function done(summary, latency, requests)
  local bs, bu = 0, 0
  for _, t in ipairs(threads) do
    bs = bs + t:get("bad_status")
    bu = bu + t:get("bad_uid")
  end
  local e = summary.errors
  io.write(string.format(
    "GPUMIX_WRK requests=%d duration_us=%d p50_us=%.0f p99_us=%.0f max_us=%.0f " ..
    "bad_status=%d bad_uid=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, bs, bu, e.connect, e.read, e.write, e.timeout))
end
"""


def require_wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit(
            "bench_webhook.py: the load generator `wrk` is not installed "
            "(Debian/Ubuntu: apt-get install wrk); the throughput benchmark needs it "
            "(--memory-only does not)"
        )
    return wrk


@dataclass
class Result:
    name: str
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu_s: float = 0.0

    @property
    def cpu_us(self) -> float:
        """Server CPU per request: unlike req/s, not skewed by other load on the machine."""
        return self.server_cpu_s / max(self.requests, 1) * 1e6

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def median_result(rs: list[Result]) -> Result:
    """Each figure the median over the rounds (errors and requests: the total)."""

    def med(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    total = sum(r.requests for r in rs)
    rps, cpu_us = med([r.rps for r in rs]), med([r.cpu_us for r in rs])
    return Result(
        rs[0].name,
        total,
        total / rps,
        med([r.p50_ms for r in rs]),
        med([r.p99_ms for r in rs]),
        sum(r.errors for r in rs),
        cpu_us * total / 1e6,
    )


WRK_ERRORS = ("bad_status", "bad_uid", "connect", "read", "write", "timeout")
"""The counters of WRK_SCRIPT's summary line that count failed requests."""


async def wrk_summary(
    wrk: str, workdir: Path, url: str, check: str, connections: int, duration_s: float
) -> dict[str, int]:
    """One wrk run with WRK_SCRIPT (``connections`` keep-alive connections for
    ``duration_s`` seconds; ``check``: "uid" or "status"): its summary counters."""
    proc = await asyncio.create_subprocess_exec(
        wrk,
        "-t",
        "1",
        "-c",
        str(connections),
        "-d",
        f"{duration_s:g}s",
        "--timeout",
        "10s",
        "-s",
        str(workdir / "mix.lua"),
        url,
        "--",
        str(workdir / "bodies.txt"),
        check,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), duration_s + 30)
    m = re.search(rb"GPUMIX_WRK (.*)", out)
    if proc.returncode != 0 or m is None:
        raise RuntimeError(f"wrk failed on {url}: {out.decode()} {err.decode()}")
    return {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).decode().split())}


async def run_wrk(
    wrk: str,
    workdir: Path,
    url: str,
    name: str,
    check_uid: bool,
    connections: int,
    duration_s: float,
) -> Result:
    """One wrk run: ``connections`` keep-alive connections for ``duration_s`` seconds."""
    check = "uid" if check_uid else "status"
    f = await wrk_summary(wrk, workdir, url, check, connections, duration_s)
    errors = sum(f[k] for k in WRK_ERRORS)
    return Result(
        name,
        f["requests"],
        f["duration_us"] / 1e6,
        f["p50_us"] / 1000,
        f["p99_us"] / 1000,
        errors,
    )


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


def in_process(args: argparse.Namespace) -> str:
    """CPU per admission without HTTP, by kind of request: decoding the body,
    ``parse_review``, ``review``, the answer and its encoding, the metrics (what the
    server's handler does between reading the body and writing the answer).  Also the
    patch of each fix, derived as the webhook does and by ``jsonpatch.make_patch`` on
    the same two objects."""
    import gc

    import jsonpatch
    import orjson

    from gpumix.admission import (
        _CEILING_PATHS,
        _ISOLATION_PATHS,
        _copy_for_fix,
        _derived_patch,
        _object_of,
        review,
    )
    from gpumix.kube.policy import Policy
    from gpumix.kube.snapshot import Snapshot
    from gpumix.webhook.metrics import WebhookMetrics
    from gpumix.webhook.wire import json_bytes, parse_review, to_response

    emu = Emulator()
    populate(emu, args.deployments, args.namespaces)
    cluster = [
        o
        for r in ("namespaces", "deployments", "horizontalpodautoscalers", "nodes")
        for o in emu.list(r)
    ]
    policy = Policy()
    snapshot = Snapshot.from_objects(cluster, policy)
    metrics = WebhookMetrics()
    bodies = request_mix(args.namespaces, 2000)
    kinds: dict[str, list[bytes]] = {}
    for body in bodies:
        name = orjson.loads(body)["request"]["name"]
        kind = {"new": "new isolated Deployment", "broad": "overlapping Deployment"}.get(
            name.split("-")[0]
        ) or ("HPA without maxReplicas" if b'"maxReplicas"' not in body else "HPA with maxReplicas")
        kinds.setdefault(kind, []).append(body)
    kinds["the mix"] = bodies
    gc.collect()

    def admit(raw: bytes, phase: Any, path: str) -> bytes:
        started = time.perf_counter()
        request = parse_review(orjson.loads(raw))
        verdict = review(request, snapshot, policy, phase)
        answer = json_bytes(to_response(request["uid"], verdict))
        metrics.observe(
            path,
            request["kind"]["kind"],
            request["operation"],
            verdict.shape,
            time.perf_counter() - started,
        )
        if phase == "validate" or verdict.shape == "patched":
            for f in verdict.findings:
                metrics.finding(f.rule, f.severity, verdict.mode or "none")
        return answer

    def best_us(fn: Any, items: list[Any], repeat: int = 9) -> float:
        best = float("inf")
        for _ in range(repeat):
            t0 = time.process_time()
            for item in items:
                fn(item)
            best = min(best, (time.process_time() - t0) / len(items))
        return best * 1e6

    lines = [
        f"In-process CPU per admission, µs (best of 9 passes; {args.deployments} Deployments "
        "cached):",
        "",
        "| requests | count | /validate | /mutate |",
        "|---|---|---|---|",
    ]
    for kind, items in kinds.items():
        v = best_us(lambda b: admit(b, "validate", "/validate"), items)
        m = best_us(lambda b: admit(b, "mutate", "/mutate"), items)
        lines.append(f"| {kind} | {len(items)} | {v:.1f} | {m:.1f} |")
    pairs = []  # (object, fixed copy sharing what the fix left alone)
    for body in bodies:
        request = parse_review(orjson.loads(body))
        verdict = review(request, snapshot, policy, "mutate")
        if verdict.shape == "patched":
            obj = _object_of(request)
            paths = _ISOLATION_PATHS if obj["kind"] == "Deployment" else _CEILING_PATHS
            fixed = _copy_for_fix(obj, paths)
            jsonpatch.apply_patch(fixed, list(verdict.patch), in_place=True)
            pairs.append((obj, fixed))
    ours = best_us(lambda p: _derived_patch(*p), pairs)
    theirs = best_us(lambda p: jsonpatch.make_patch(*p), pairs)
    lines += [
        "",
        f"The patches of the {len(pairs)} fixes, from the object and its fixed copy: "
        f"{ours:.1f} µs each as derived, {theirs:.1f} µs by jsonpatch.make_patch "
        f"({theirs / ours:.0f}x).",
    ]
    return "\n".join(lines)


async def memory(args: argparse.Namespace) -> dict[str, float]:
    out: dict[str, float] = {}
    for label, deps in (("empty", 0), ("full", args.deployments)):
        async with emulator(deps, args.namespaces if deps else 1) as (_, kubeconfig):
            child = await start_webhook(kubeconfig, args.event_loop)
            try:
                out[f"sync_s_{label}"] = await wait_ready(child)
                await asyncio.sleep(1.0)
                out[f"rss_mb_{label}"] = child.rss_mb()
            finally:
                await child.stop()
    return out


async def throughput(args: argparse.Namespace) -> tuple[list[Result], list[Result]]:
    wrk = require_wrk()
    async with emulator(args.deployments, args.namespaces) as (emu, kubeconfig):
        webhook = await start_webhook(kubeconfig, args.event_loop)
        others: list[Child] = []
        bares: list[Child] = []
        try:
            for checkout in (None, *args.also):
                if checkout is None:
                    child = webhook
                else:
                    child = await start_webhook(kubeconfig, args.event_loop, Path(checkout))
                    others.append(child)
                ready_s = await wait_ready(child)
                print(
                    f"# webhook of {checkout or REPO} ready (cache synced) after {ready_s:.1f} s;"
                    f" RSS {child.rss_mb():.0f} MB",
                    file=sys.stderr,
                )
            secret = emu.get("secrets", "gpumix-webhook-tls", "gpumix-system")
            assert secret is not None
            data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
            with tempfile.TemporaryDirectory() as tmp:
                work = Path(tmp)
                cert, key = work / "tls.crt", work / "tls.key"
                cert.write_bytes(data["tls.crt"])
                key.write_bytes(data["tls.key"])
                kinds = [*BARES, DECODE_BARE]
                if args.spin_us:
                    kinds.append(spin_bare(args.spin_us))
                for server, loop, job, _ in kinds:
                    bares.append(await start_bare(cert, key, server, loop, job))
                (work / "mix.lua").write_text(WRK_SCRIPT)
                with (work / "bodies.txt").open("wb") as f:
                    for i, body in enumerate(request_mix(args.namespaces, 2000)):
                        f.write(f"uid-{i}\t".encode() + body + b"\n")
                # (name, server, url, check the uid)
                targets = [
                    (name, bare, f"https://127.0.0.1:{bare.port}/validate", False)
                    for (_, _, _, name), bare in zip(kinds, bares, strict=True)
                ] + [
                    (f"gpumix{label} {path}", child, f"https://127.0.0.1:{child.port}{path}", True)
                    for label, child in (
                        ("", webhook),
                        *((f"@{Path(p).name}", o) for p, o in zip(args.also, others, strict=True)),
                    )
                    for path in ("/validate", "/mutate")
                ]

                async def one(
                    target: tuple[str, Child, str, bool], conns: int, secs: float
                ) -> Result:
                    name, server, url, check = target
                    cpu0 = server.cpu_s()
                    result = await run_wrk(wrk, work, url, name, check, conns, secs)
                    result.server_cpu_s = server.cpu_s() - cpu0
                    return result

                for target in targets:  # warm-up
                    await one(target, args.concurrency, 2)
                # Rounds interleave the endpoints so that load from other processes on the
                # machine hits all of them alike; the median round of each is reported.
                runs: dict[str, list[Result]] = {t[0]: [] for t in targets}
                for _ in range(args.rounds):
                    for target in targets:
                        runs[target[0]].append(await one(target, args.concurrency, args.duration))
                for name, rs in runs.items():
                    print(
                        f"# {name}: "
                        + ", ".join(
                            f"{r.rps:.0f} req/s ({r.cpu_us:.0f} µs CPU, p99 {r.p99_ms:.1f} ms)"
                            for r in rs
                        ),
                        file=sys.stderr,
                    )
                medians = [median_result(rs) for rs in runs.values()]
                # Service time without queueing: one connection, one request at a time.
                singles = [await one(target, 1, args.single_duration) for target in targets]
                return medians, singles
        finally:
            for child in (*bares, *others, webhook):
                await child.stop()


def report(
    results: list[Result],
    singles: list[Result],
    mem: dict[str, float],
    args: argparse.Namespace,
    load: tuple[float, float],
) -> str:
    application = {name for server, _, _, name in BARES if server == "application"}
    bares = [r for r in results if r.name in application]
    fastest = max(bares, key=lambda r: r.rps)
    cheapest = min(bares, key=lambda r: r.cpu_us)
    [low] = [r for r in results if r.name == LOW_LEVEL_BARE]
    lines = [
        f"{args.deployments} Deployments in {args.namespaces} namespaces cached; wrk, one "
        f"thread, {args.concurrency} keep-alive TLS connections, {args.duration:g} s per "
        f"endpoint and round, {args.rounds} interleaved rounds: each figure is the median "
        "over the rounds, requests and errors the total (40% new "
        "Deployments, 10% overlapping Deployments, 30% HPAs without maxReplicas, 20% HPAs "
        f"with it); gpumix on {args.event_loop}. Load average {load[0]:.2f} before, "
        f"{load[1]:.2f} after. 'vs bare' is against the faster bare web.Application "
        f"endpoint ({fastest.name.split(',')[0]}), 'capacity vs bare' (CPU per request) "
        f"against the cheaper one ({cheapest.name.split(',')[0]}); 'vs low-level bare' and "
        f"'capacity vs low-level bare' against the bare low-level web.Server endpoint "
        f"({low.name.split(',')[0]}).",
        "",
        "| endpoint | requests | req/s | vs bare | vs low-level bare | p50 ms | p99 ms | errors "
        "| server CPU µs/req | capacity vs bare | capacity vs low-level bare |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.requests} | {r.rps:.0f} | {r.rps / fastest.rps:.2f}x | "
            f"{r.rps / low.rps:.2f}x | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} | "
            f"{r.cpu_us:.0f} | {cheapest.cpu_us / r.cpu_us:.2f}x | {low.cpu_us / r.cpu_us:.2f}x |"
        )
    lines += [
        "",
        f"One connection, one request at a time (no queueing, {args.single_duration:g} s each):",
        "",
        "| endpoint | requests | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|",
    ]
    for r in singles:
        lines.append(f"| {r.name} | {r.requests} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} |")
    if mem:
        lines += [
            "",
            f"Webhook RSS: {mem['rss_mb_full']:.0f} MB with {args.deployments} Deployments "
            f"cached (synced in {mem['sync_s_full']:.1f} s), {mem['rss_mb_empty']:.0f} MB "
            "with an empty cluster.",
        ]
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) == 7 and sys.argv[1] == "--serve-bare":
        serve_bare(*sys.argv[2:7])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per endpoint and round")
    p.add_argument(
        "--single-duration", type=float, default=3.0, help="seconds of the 1-connection runs"
    )
    p.add_argument("--deployments", type=int, default=10000)
    p.add_argument("--namespaces", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median is shown)")
    p.add_argument(
        "--event-loop", choices=("uvloop", "asyncio"), default="uvloop", help="gpumix's loop"
    )
    p.add_argument(
        "--spin-us",
        type=float,
        default=0.0,
        help="also run the bare low-level endpoint spinning this many µs per request",
    )
    p.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="CHECKOUT",
        help="also run the webhook of another checkout of gpumix (e.g. a git worktree of an "
        "earlier commit) against the same cluster, interleaved with this one",
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="only measure the admission path in this process, without HTTP",
    )
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--memory-only", action="store_true")
    args = p.parse_args()
    if args.in_process:
        print(in_process(args))
        return 0
    if not args.memory_only:
        require_wrk()

    async def run() -> tuple[list[Result], list[Result], dict[str, float]]:
        mem = {} if args.skip_memory else await memory(args)
        results, singles = ([], []) if args.memory_only else await throughput(args)
        return results, singles, mem

    load_before = os.getloadavg()[0]
    started = time.monotonic()
    results, singles, mem = asyncio.run(run())
    print(f"# done in {time.monotonic() - started:.0f} s", file=sys.stderr)
    if results:
        print(report(results, singles, mem, args, (load_before, os.getloadavg()[0])))
    else:
        print(json.dumps(mem, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
