"""The webhook process's malloc thresholds (``gpumix.webhook.runtime.fix_malloc_thresholds``).

``mallopt`` changes the whole process, so each check runs in a fresh interpreter."""

from __future__ import annotations

import asyncio.sslproto
import json
import subprocess
import sys
from pathlib import Path

from gpumix.webhook.runtime import MMAP_THRESHOLD_BYTES, SSL_READ_BYTES

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import asyncio, ctypes, json, resource, ssl, sys, time
import uvloop
from gpumix.webhook.runtime import fix_malloc_thresholds
from gpumix.webhook.tls import CertHolder, new_bundle

if sys.argv[1] == "fixed":
    assert fix_malloc_thresholds()
else:  # the thresholds as they were: glibc's initial 128 KiB, fixed
    mallopt = ctypes.CDLL(None).mallopt
    assert mallopt(-3, 128 * 1024) and mallopt(-1, 128 * 1024)


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]


mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2


def mapped_blocks():
    return mallinfo2().hblks


bundle = new_bundle(["127.0.0.1"], time.time(), 86400.0)
holder = CertHolder()
holder.load(bundle.cert_pem, bundle.key_pem)
client = ssl.create_default_context(cadata=bundle.ca_pem.decode())


class Answer(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data[:64])


async def exchange():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Answer, "127.0.0.1", 0, ssl=holder.context)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
    body = b"x" * 2048  # about what kube-apiserver sends per review
    for _ in range(50):
        writer.write(body)
        await reader.readexactly(64)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(500):
        writer.write(body)
        await reader.readexactly(64)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    writer.close()
    server.close()
    return faults / 500


faults = uvloop.run(exchange())
large = []
for _ in range(2):  # a freed 7 MiB block must not raise the threshold
    before = mapped_blocks()
    block = bytearray(7 * 1024 * 1024)
    large.append(mapped_blocks() - before)
    del block
print(json.dumps({"faults_per_exchange": faults, "large_mapped": large}))
"""


def probe(thresholds: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, thresholds],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=True,
    ).stdout
    result: dict[str, object] = json.loads(out)
    return result


def test_the_tls_read_buffer_is_below_the_mmap_threshold() -> None:
    # the buffer asyncio's TLS transport reads into (uvloop's is the same 256 KiB)
    assert asyncio.sslproto.SSLProtocol.max_size == SSL_READ_BYTES
    assert SSL_READ_BYTES + 4096 < MMAP_THRESHOLD_BYTES


def test_tls_reads_take_no_fresh_pages_and_large_blocks_are_still_given_back() -> None:
    """Each TLS read allocates a 256 KiB buffer: below the fixed mmap threshold it is
    reused from the heap (no page faults per exchange); with the threshold at 128 KiB
    every read mapped fresh pages.  7 MiB blocks keep their own mapping, also after one
    was freed (the threshold does not move)."""
    fixed = probe("fixed")
    assert fixed["faults_per_exchange"] < 0.5, fixed
    assert fixed["large_mapped"] == [1, 1], fixed
    before = probe("128k")
    assert before["faults_per_exchange"] >= 2, before
    assert before["large_mapped"] == [1, 1], before
