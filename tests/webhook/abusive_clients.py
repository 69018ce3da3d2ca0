"""Abusive HTTPS clients, run as their own process so that their TLS work does not slow
down the test's own (ordinary) client:

    python abusive_clients.py HOST PORT CA_FILE SECONDS BIG SLOWLORIS IDLE NO_HANDSHAKE

runs for SECONDS and prints, as JSON, what each kind of client saw."""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time

MIB = 1024 * 1024


def request_head(length: int, path: str = "/validate") -> bytes:
    """The head of a POST announcing a JSON body of ``length`` bytes."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True when the server closes the connection (EOF or reset) within ``seconds``."""
    try:
        while await asyncio.wait_for(reader.read(65536), seconds):
            pass
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError):
        pass
    return True


async def big_body(host: str, port: int, tls: ssl.SSLContext, deadline: float) -> list[str]:
    """Declare 7 MiB, send 6.75 MiB, stall; again until the deadline.  How each attempt
    ended: the status the server answered, or "closed" when it hung up first."""
    chunk = b" " * (256 * 1024)
    seen: list[str] = []
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection(host, port, ssl=tls)
        except (ConnectionError, ssl.SSLError, OSError):
            await asyncio.sleep(0.1)
            continue
        try:
            left = max(0.01, deadline - time.monotonic())
            writer.write(request_head(7 * MIB))
            for _ in range(27):
                writer.write(chunk)
                await asyncio.wait_for(writer.drain(), left)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n"), left)
            seen.append(head.split()[1].decode())
        except TimeoutError:
            seen.append("open")
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, OSError):
            seen.append("closed")
        finally:
            writer.transport.abort()
    return seen


async def slowloris(host: str, port: int, tls: ssl.SSLContext, deadline: float) -> float:
    """Headers a byte every half second: seconds until the server hung up (-1: never)."""
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection(host, port, ssl=tls)
    except (ConnectionError, ssl.SSLError, OSError):  # hung up during the handshake
        return time.monotonic() - started
    try:
        writer.write(b"POST /validate HTTP/1.1\r\nHost: w\r\nX-Slow: ")
        while time.monotonic() < deadline:
            writer.write(b"a")
            await writer.drain()
            if await closed_within(reader, 0.5):
                return time.monotonic() - started
        return -1.0
    except (ConnectionError, ssl.SSLError, OSError):
        return time.monotonic() - started
    finally:
        writer.transport.abort()


async def idle(host: str, port: int, tls: ssl.SSLContext | None, deadline: float) -> float:
    """A connection that never sends (``tls`` None: not even a TLS handshake): seconds
    until the server hung up (-1: never)."""
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection(host, port, ssl=tls)
    except (ConnectionError, ssl.SSLError, OSError):  # hung up during the handshake
        return time.monotonic() - started
    try:
        closed = await closed_within(reader, max(0.01, deadline - time.monotonic()))
        return time.monotonic() - started if closed else -1.0
    finally:
        writer.transport.abort()


async def main(host: str, port: int, ca_file: str, seconds: float, counts: list[int]) -> None:
    tls = ssl.create_default_context(cafile=ca_file)
    deadline = time.monotonic() + seconds
    big, slow, quiet, no_handshake = counts
    results = await asyncio.gather(
        asyncio.gather(*(idle(host, port, tls, deadline) for _ in range(quiet))),
        asyncio.gather(*(slowloris(host, port, tls, deadline) for _ in range(slow))),
        asyncio.gather(*(big_body(host, port, tls, deadline) for _ in range(big))),
        asyncio.gather(*(idle(host, port, None, deadline) for _ in range(no_handshake))),
    )
    keys = ("idle", "slowloris", "big", "no_handshake")
    json.dump(dict(zip(keys, results, strict=True)), sys.stdout)


if __name__ == "__main__":
    a = sys.argv[1:]
    asyncio.run(main(a[0], int(a[1]), a[2], float(a[3]), [int(x) for x in a[4:8]]))
