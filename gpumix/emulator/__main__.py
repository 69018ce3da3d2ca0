"""`python -m gpumix.emulator`: serve the emulator until interrupted (for kubectl)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

from .server import Emulator


async def _serve(args: argparse.Namespace) -> None:
    emu = Emulator(simulate_deployments=args.simulate_deployments)
    await emu.start(port=args.port, tls=args.tls)
    path = emu.kubeconfig(args.kubeconfig) if args.kubeconfig else emu.kubeconfig()
    print(f"Kubernetes API emulator at {emu.url}", flush=True)
    print(f"export KUBECONFIG={path}", flush=True)
    try:
        while True:
            await asyncio.sleep(3600)
    finally:
        await emu.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gpumix.emulator",
        description="Serve the in-process Kubernetes API emulator on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--tls", action="store_true", help="serve HTTPS with a fresh CA")
    parser.add_argument("--kubeconfig", help="write the kubeconfig here")
    parser.add_argument(
        "--simulate-deployments",
        action="store_true",
        help="make Deployment status follow spec.replicas at once",
    )
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
