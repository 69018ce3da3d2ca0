"""The webhook process's settings: one typed object, filled in by the command line."""

from __future__ import annotations

from dataclasses import dataclass, field

from gpumix.kube.policy import Policy

EVENT_LOOPS = ("uvloop", "asyncio")  # what ``gpumix webhook --event-loop`` accepts

DAY_S = 86_400.0


@dataclass(frozen=True)
class TLSSettings:
    """Where the serving certificate comes from and how long it lives."""

    cert_file: str | None = None
    """PEM certificate chain (e.g. a mounted cert-manager Secret); with ``key_file``."""
    key_file: str | None = None
    """PEM private key for ``cert_file``."""
    namespace: str = "gpumix-system"
    """Namespace of the Service and of the certificate Secret."""
    service_name: str = "gpumix-webhook"
    """Service whose DNS names the bootstrapped certificate covers."""
    secret_name: str = "gpumix-webhook-tls"
    """Secret (keys ``tls.crt``, ``tls.key``, ``ca.crt``) shared by all replicas."""
    webhook_config_name: str = "gpumix"
    """Mutating and validating webhook configurations whose ``caBundle`` is kept current."""
    extra_sans: tuple[str, ...] = ()
    """More names for the certificate: DNS names or IP addresses (``127.0.0.1``)."""
    lifetime_s: float = 365 * DAY_S
    """Validity of a bootstrapped CA and serving certificate."""
    rotate_fraction: float = 2 / 3
    """Replace the certificate once this fraction of its lifetime has passed."""
    check_interval_s: float = 60.0
    """How often the Secret (or the files) are re-read and the expiry checked."""
    reload_grace_s: float = 30.0
    """After a rotation, keep serving the previous certificate (while it is valid) this
    long, so that API servers have seen the new ``caBundle`` before it is presented."""
    reload_failure_grace_s: float = 300.0
    """How long new certificate material may keep failing to load (a cert file replaced
    before its key, a broken Secret) before ``/readyz`` reports it; the previous
    certificate is served meanwhile."""
    ca_out_file: str | None = None
    """Without a cluster (``--state``): write the generated CA bundle to this file."""

    @property
    def from_files(self) -> bool:
        return self.cert_file is not None

    def dns_names(self) -> tuple[str, ...]:
        svc = f"{self.service_name}.{self.namespace}.svc"
        return (
            self.service_name,
            f"{self.service_name}.{self.namespace}",
            svc,
            f"{svc}.cluster.local",
        )


@dataclass(frozen=True)
class CacheSettings:
    """How the cluster cache lists and watches."""

    watch_timeout_s: int = 300
    """Server-side timeout of one watch request; the watch is then resumed."""
    page_size: int = 500
    """Objects per list page."""
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 4.0
    """Retries of a failed list or watch back off up to this (with jitter). While a
    reflector is not synced, writes in scope are refused, so recovery is kept prompt:
    a few GETs per resource every few seconds cost the API server little."""
    discovery_interval_s: float = 60.0
    """How often API discovery runs again to pick up autoscaler CRDs installed later."""
    request_timeout_s: float = 30.0


MIB = 1024 * 1024


@dataclass(frozen=True)
class ServerSettings:
    """What the HTTPS server allows a client before it refuses or hangs up."""

    header_timeout_s: float = 10.0
    """From a new connection, or the first byte of a request on a kept-alive one, to its
    last header line; then the connection is closed (slowloris)."""
    body_timeout_s: float = 10.0
    """To read a request body once its headers are in; then HTTP 408 and the connection
    is closed.  kube-apiserver gives a webhook call at most 30 s (``timeoutSeconds``)."""
    idle_timeout_s: float = 120.0
    """A kept-alive connection without a request this long is closed.  Longer than the
    90 s after which kube-apiserver's HTTP client drops its own idle connections, so
    that it closes first and never sends a request into a connection being closed."""
    max_connections: int = 512
    """Open connections at once; one more is closed as soon as its TLS handshake is done.
    Each connection may buffer up to about 0.5 MiB of what it sends before its request is
    looked at, so this bounds that memory too."""
    max_body_bytes_in_flight: int = 64 * MIB
    """Bytes of request bodies (as declared by ``Content-Length``) being read or reviewed
    at once, over all connections.  A request that would pass it is refused at once with
    HTTP 429 and ``Retry-After`` (the API server retries).  A quarter is kept for bodies
    up to 1 MiB, so that large stalled bodies cannot lock out ordinary reviews."""


@dataclass(frozen=True)
class WebhookSettings:
    """Everything ``gpumix webhook`` needs to run."""

    policy: Policy = field(default_factory=Policy)
    kubeconfig: str | None = None
    """Kubeconfig file; None: in-cluster config, else the default kubeconfig."""
    state_file: str | None = None
    """Serve from the objects in this manifests file instead of a cluster."""
    host: str = "0.0.0.0"
    port: int = 8443
    metrics_port: int | None = 8080
    """Plain-HTTP port for /healthz, /readyz and /metrics (None: off; 0: any free port)."""
    tls: TLSSettings = field(default_factory=TLSSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
