"""``gpumix webhook``: the admission webhook process (in a cluster, or on a laptop).

Flags and environment are read here and nowhere else; they become one
``WebhookSettings`` that the webhook package receives.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping
from typing import Any

from gpumix.commands.check import file_objects, load_policy
from gpumix.kube.objects import UnreadableObject, read_view, ref_of
from gpumix.kube.policy import Policy
from gpumix.manifests import InputError, is_kubernetes_object, load_sources
from gpumix.webhook.settings import (
    DAY_S,
    EVENT_LOOPS,
    MIB,
    ServerSettings,
    TLSSettings,
    WebhookSettings,
)

EXIT_OK, EXIT_INPUT = 0, 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "webhook",
        help="run the admission webhook (HTTPS /mutate and /validate)",
        description=(
            "Serve gpumix's admission webhook. Against a cluster (in-cluster config, "
            "--kubeconfig, or the default kubeconfig) it caches Deployments, autoscalers, "
            "Nodes and Namespaces and manages its own serving certificate unless "
            "--tls-cert-file/--tls-key-file are given; with --state FILE it serves from the "
            "objects in a manifests file and needs no cluster."
        ),
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig of the cluster to watch")
    src.add_argument(
        "--state", metavar="FILE", help="serve from the objects in this manifests file, no cluster"
    )
    p.add_argument("--policy", metavar="FILE", help="policy file (YAML), see docs/webhook.md")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=8443, help="HTTPS port (default 8443)")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=8080,
        help="plain-HTTP port for /healthz, /readyz, /metrics (default 8080; -1: off)",
    )
    p.add_argument(
        "--tls-cert-file",
        metavar="FILE",
        help="serving certificate (PEM), e.g. "
        "mounted from a cert-manager Secret; reloaded when it changes",
    )
    p.add_argument("--tls-key-file", metavar="FILE", help="private key for --tls-cert-file")
    p.add_argument(
        "--namespace",
        default="gpumix-system",
        help="namespace of the webhook's Service and certificate Secret (default gpumix-system)",
    )
    p.add_argument(
        "--service-name",
        default="gpumix-webhook",
        help="Service the certificate is made for (default gpumix-webhook)",
    )
    p.add_argument(
        "--secret-name",
        default="gpumix-webhook-tls",
        help="Secret holding the bootstrapped certificate (default gpumix-webhook-tls)",
    )
    p.add_argument(
        "--webhook-config-name",
        default="gpumix",
        help="Mutating/ValidatingWebhookConfiguration whose caBundle is kept current",
    )
    p.add_argument(
        "--extra-san",
        action="append",
        default=[],
        metavar="NAME|IP",
        help="extra DNS name or IP address for the certificate; repeatable",
    )
    p.add_argument(
        "--cert-days",
        type=float,
        default=365.0,
        help="lifetime of a bootstrapped certificate in days (default 365)",
    )
    p.add_argument(
        "--write-ca",
        metavar="FILE",
        help="with --state and no cert files: write the generated CA bundle here",
    )
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.add_argument(
        "--event-loop",
        default="uvloop",
        choices=EVENT_LOOPS,
        help="event loop to serve on (default uvloop; asyncio where uvloop is unavailable)",
    )
    limits = ServerSettings()
    p.add_argument(
        "--header-timeout",
        type=float,
        default=limits.header_timeout_s,
        metavar="SECONDS",
        help="close a connection whose request headers take longer (default %(default)g)",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=limits.body_timeout_s,
        metavar="SECONDS",
        help="answer 408 when a request body takes longer to arrive (default %(default)g)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=limits.idle_timeout_s,
        metavar="SECONDS",
        help="close a kept-alive connection idle this long (default %(default)g)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=limits.max_connections,
        metavar="N",
        help="open connections at once; more are closed at once (default %(default)d)",
    )
    p.add_argument(
        "--max-body-mib-in-flight",
        type=int,
        default=limits.max_body_bytes_in_flight // MIB,
        metavar="MIB",
        help="request bodies read at once, over all connections; past it 429 (default "
        "%(default)d, at least 10)",
    )
    p.add_argument(
        "--cert-check-interval",
        type=float,
        default=TLSSettings.check_interval_s,
        metavar="SECONDS",
        help="how often the certificate files or Secret are read again (default %(default)g)",
    )
    p.add_argument(
        "--cert-reload-failure-grace",
        type=float,
        default=TLSSettings.reload_failure_grace_s,
        metavar="SECONDS",
        help="new certificate material failing to load this long makes /readyz fail "
        "(default %(default)g)",
    )
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> WebhookSettings:
    """The settings for these flags; raises InputError for bad values."""
    if bool(args.tls_cert_file) != bool(args.tls_key_file):
        raise InputError("--tls-cert-file", "give both --tls-cert-file and --tls-key-file")
    for flag, port in (("--port", args.port), ("--metrics-port", args.metrics_port)):
        if not -1 <= port <= 65535 or (flag == "--port" and port < 0):
            raise InputError(flag, f"not a port number: {port}")
    if args.cert_days <= 0:
        raise InputError("--cert-days", "must be positive")
    for flag, seconds in (
        ("--header-timeout", args.header_timeout),
        ("--body-timeout", args.body_timeout),
        ("--idle-timeout", args.idle_timeout),
        ("--cert-check-interval", args.cert_check_interval),
    ):
        if not seconds > 0:
            raise InputError(flag, f"must be a positive number of seconds, got {seconds:g}")
    if args.cert_reload_failure_grace < 0:
        raise InputError("--cert-reload-failure-grace", "must not be negative")
    if args.max_connections < 1:
        raise InputError("--max-connections", "must be at least 1")
    if args.max_body_mib_in_flight < 10:
        raise InputError(
            "--max-body-mib-in-flight", "must be at least 10, so that a 7 MiB body fits"
        )
    return WebhookSettings(
        policy=load_policy(args.policy),
        kubeconfig=args.kubeconfig,
        state_file=args.state,
        host=args.host,
        port=args.port,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        tls=TLSSettings(
            cert_file=args.tls_cert_file,
            key_file=args.tls_key_file,
            namespace=args.namespace,
            service_name=args.service_name,
            secret_name=args.secret_name,
            webhook_config_name=args.webhook_config_name,
            extra_sans=tuple(args.extra_san),
            lifetime_s=args.cert_days * DAY_S,
            ca_out_file=args.write_ca,
            check_interval_s=args.cert_check_interval,
            reload_failure_grace_s=args.cert_reload_failure_grace,
        ),
        server=ServerSettings(
            header_timeout_s=args.header_timeout,
            body_timeout_s=args.body_timeout,
            idle_timeout_s=args.idle_timeout,
            max_connections=args.max_connections,
            max_body_bytes_in_flight=args.max_body_mib_in_flight * MIB,
        ),
    )


def state_objects(path: str, policy: Policy) -> list[Mapping[str, Any]]:
    """The objects of a state file; raise InputError (file, document, field) for the
    first one gpumix cannot read, or that has a value it cannot read: the webhook would
    judge against a cluster state it does not know."""
    sources, errors = load_sources([path], sys.stdin)
    if errors:
        raise errors[0]
    for src in sources:
        for doc in src.documents:
            for obj in doc.objects():
                if not is_kubernetes_object(obj):
                    continue
                try:
                    view = read_view(obj, policy)
                except UnreadableObject as exc:
                    raise InputError(src.path, str(exc), doc.index) from exc
                for fact in getattr(view, "unreadable", ()):
                    raise InputError(src.path, f"{ref_of(obj)}: field {fact}", doc.index)
    return list(file_objects(sources))


def run(args: argparse.Namespace) -> int:
    from gpumix.kubeio.client import ApiError
    from gpumix.webhook.runtime import run as run_webhook

    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = settings_from_args(args)
        objects = (
            state_objects(settings.state_file, settings.policy) if settings.state_file else None
        )
    except InputError as exc:
        sys.stderr.write(f"gpumix webhook: {exc}\n")
        return EXIT_INPUT
    try:
        run_webhook(settings, state_objects=objects, event_loop=args.event_loop)
    except (OSError, ApiError) as exc:
        sys.stderr.write(f"gpumix webhook: {exc}\n")
        return EXIT_INPUT
    return EXIT_OK
