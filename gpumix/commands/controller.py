"""``gpumix controller``: the scaling controller (in a cluster, or against any kubeconfig).

Exit codes: 0 after a clean stop (SIGINT/SIGTERM), 2 when the settings or the
kubeconfig cannot be read (one-line message, no traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from typing import Any

from gpumix.kube.policy import Policy

EXIT_OK, EXIT_INPUT = 0, 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "controller",
        help="run the GPUMix scaling controller and the cluster audit",
        description=(
            "Keep each GPUMix's per-GPU-type Deployments at the cheapest mix that meets the "
            "SLO, and audit the cluster with the admission rules. Runs in-cluster "
            "(service account) or against a kubeconfig."
        ),
    )
    p.add_argument(
        "--kubeconfig", metavar="FILE", help="kubeconfig (default: in-cluster, then ~/.kube/config)"
    )
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("--namespace", help="only GPUMixes in this namespace (default: all)")
    p.add_argument("--lease-namespace", default="gpumix-system")
    p.add_argument("--lease-name", default="gpumix-controller")
    p.add_argument("--identity", help="leader-election identity (default: <hostname>_<pid>)")
    p.add_argument(
        "--no-leader-election",
        action="store_true",
        help="act without a Lease (only safe with exactly one replica)",
    )
    p.add_argument("--metrics-port", type=int, default=8080, help="0 picks a free port")
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address of /metrics, /healthz, /readyz (in a Pod: 0.0.0.0)",
    )
    p.add_argument(
        "--audit-interval",
        type=float,
        default=300.0,
        metavar="S",
        help="seconds between cluster audits; 0 disables the audit",
    )
    p.add_argument("--policy", metavar="FILE", help="policy file (YAML), as for gpumix check")
    p.add_argument("--log-format", choices=("json", "text"), default="json")
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> Any:
    from gpumix.controller.settings import ControllerSettings, default_identity

    policy = Policy()
    if args.policy:
        from gpumix.commands.check import load_policy

        policy = load_policy(args.policy)
    if args.audit_interval < 0:
        raise ValueError("--audit-interval: must be >= 0")
    if not 0 <= args.metrics_port <= 65535:
        raise ValueError("--metrics-port: must be 0..65535")
    return ControllerSettings(
        namespace=args.namespace,
        policy=policy,
        leader_election=not args.no_leader_election,
        lease_namespace=args.lease_namespace,
        lease_name=args.lease_name,
        identity=args.identity or default_identity(),
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        audit_interval_s=args.audit_interval,
    )


class _JsonFormatter(logging.Formatter):
    _SKIP = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in self._SKIP})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger("gpumix")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


async def _api_client(args: argparse.Namespace) -> Any:
    from kubernetes_asyncio import client, config

    if args.kubeconfig is None:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            return client.ApiClient()
        except config.ConfigException:
            pass
    cfg = client.Configuration()
    await config.load_kube_config(
        config_file=args.kubeconfig, context=args.context, client_configuration=cfg
    )
    return client.ApiClient(configuration=cfg)


async def _main(args: argparse.Namespace, settings: Any) -> int:
    from gpumix.controller.shell import run_controller

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        api = await _api_client(args)
    except Exception as exc:
        print(f"gpumix controller: cannot load the kubeconfig: {exc}", file=sys.stderr)
        return EXIT_INPUT
    async with api:
        await run_controller(settings, api, clock=time.time, stop_event=stop)
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except Exception as exc:  # InputError, ValueError: one line, exit 2
        print(f"gpumix controller: {exc}", file=sys.stderr)
        return EXIT_INPUT
    setup_logging(args.log_format)
    return asyncio.run(_main(args, settings))
