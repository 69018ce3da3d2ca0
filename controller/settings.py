"""Settings of ``gpumix controller``: one typed object, built by the CLI or by a caller."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from gpumix.kube.policy import Policy


def default_identity() -> str:
    """``<hostname>_<pid>``: unique per process, stable for its lifetime."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{os.getpid()}"


@dataclass(frozen=True)
class ControllerSettings:
    namespace: str | None = None
    """Only GPUMixes (and members) in this namespace; None: every namespace."""
    policy: Policy = field(default_factory=Policy)
    """Model label keys, GPU node labels and the rules the audit runs."""
    leader_election: bool = True
    lease_namespace: str = "gpumix-system"
    lease_name: str = "gpumix-controller"
    identity: str = field(default_factory=default_identity)
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0
    metrics_host: str = "127.0.0.1"
    """Address of the metrics/probe server; in a Pod set it to 0.0.0.0 so probes reach it."""
    metrics_port: int | None = 8080
    """None: no metrics server (tests that only need the loop); 0: a free port."""
    audit_interval_s: float = 300.0
    """0 disables the audit loop."""
    resync_interval_s: float = 300.0
    """Every GPUMix is reconciled at least this often, even without changes or its interval."""
    watch: bool = True
    """Changes seen by the watches (GPUMixes, Deployments, autoscalers, Nodes) queue
    reconciles; False: the intervals alone drive them (the watch cache runs either way)."""
    debounce_s: float = 0.2
    """Wait this long after the first queued change so a burst is handled in one pass."""
    scale_attempts: int = 4
    """Writes of one /scale before giving up for this pass (409 conflicts re-read and retry)."""
    api_timeout_s: float = 30.0
    watch_timeout_s: int = 300
    error_backoff_max_s: float = 60.0
