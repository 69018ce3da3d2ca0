"""The serving certificate: create, store, share, rotate and hot-reload it.

Three sources, one interface (``context``, ``loaded``, ``start``/``stop``):

- ``FileCerts``: PEM files, e.g. a mounted cert-manager Secret (cainjector fills
  the ``caBundle`` via ``cert-manager.io/inject-ca-from``); re-read when they change.
- ``BootstrapCerts`` (default in a cluster): a CA and a serving certificate kept in
  the Secret ``gpumix-webhook-tls``.  Every replica runs the same loop: read the
  Secret; create it if absent (on 409 AlreadyExists adopt the winner's); replace it
  when due for rotation with an update carrying the ``resourceVersion`` read (on
  409 Conflict adopt the winner's); keep ``caBundle`` of every webhook in the
  ``gpumix`` Mutating/ValidatingWebhookConfiguration equal to the Secret's
  ``ca.crt``.  Replicas therefore never fight: the Secret is the only truth.
  A rotated certificate is presented only ``reload_grace_s`` after the new
  ``caBundle`` was written (the previous one is still valid meanwhile).
- ``EphemeralCerts``: generated in memory (``--state`` mode, no cluster).

Rotation makes a new CA and serving certificate; ``ca.crt`` carries the new CA
followed by the previous ones that are still valid, so clients that have not
seen the new bundle yet keep trusting the replicas still serving the old
certificate.

Reloading is atomic: the certificate and key are loaded into a *new* ``SSLContext``,
which replaces the one in use only when both load and the key belongs to the
certificate.  The server listens with one context that holds no certificate; its
SNI callback (called for every handshake, with or without a server name) hands the
handshake the context in use.  New handshakes get the new certificate, open
connections go on; a failed load leaves everything as it was.  New material that
keeps failing (a cert file replaced before its key) is counted
(``gpumix_webhook_cert_reload_failures_total``), logged, and after
``reload_failure_grace_s`` makes ``/readyz`` fail.

The clock is injected (``clock() -> float``, Unix seconds).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import ipaddress
import logging
import os
import ssl
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gpumix.kubeio.client import ApiError, KubeClient
from gpumix.webhook.metrics import WebhookMetrics
from gpumix.webhook.settings import TLSSettings

log = logging.getLogger("gpumix.webhook.tls")

Clock = Callable[[], float]
SKEW_S = 300.0
"""Certificates are valid from five minutes before they are made (clock skew)."""
MAX_OLD_CAS = 2


class CertError(ValueError):
    """Unusable certificate material (names the file or Secret and what is wrong)."""


# --------------------------------------------------------------------------- pure helpers


@dataclass(frozen=True)
class CertBundle:
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _sans(names: Sequence[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def cert_names(cert: x509.Certificate) -> set[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(n) for n in ext.get_values_for_type(x509.DNSName)} | {
        str(ip) for ip in ext.get_values_for_type(x509.IPAddress)
    }


def make_ca(
    common_name: str, start: dt.datetime, end: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA certificate (P-256, may sign only leaf certificates)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue_cert(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    start: dt.datetime,
    end: dt.datetime,
    *,
    names: Sequence[str] = (),
    organizations: Sequence[str] = (),
    server: bool = True,
    client: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf certificate signed by ``ca``: for serving ``names`` (DNS names or IP
    addresses) and/or as a client certificate (``organizations`` become the
    Kubernetes groups of a client certificate's user)."""
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]))
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(_sans(names)), False)
    cert = (
        builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def issue_serving_cert(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    names: Sequence[str],
    start: dt.datetime,
    end: dt.datetime,
    common_name: str | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A serving certificate for ``names`` (DNS names or IP addresses) signed by ``ca``."""
    first = common_name or (names[0] if names else "gpumix-webhook")
    return issue_cert(ca, ca_key, first, start, end, names=names)


def new_bundle(
    names: Sequence[str], now: float, lifetime_s: float, previous_ca_pem: bytes = b""
) -> CertBundle:
    """A fresh CA and a serving certificate for ``names`` (DNS names or IPs).

    ``ca_pem`` is the new CA followed by the still-valid CAs of ``previous_ca_pem``.
    """
    start, end = _utc(now - SKEW_S), _utc(now + lifetime_s)
    ca, ca_key = make_ca(f"gpumix-webhook-ca-{int(now)}", start, end)
    cert, key = issue_serving_cert(ca, ca_key, names, start, end)
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    kept = [c for c in _load_certs(previous_ca_pem) if c.not_valid_after_utc.timestamp() > now][
        :MAX_OLD_CAS
    ]
    bundle_ca = ca_pem + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in kept)
    return CertBundle(cert.public_bytes(serialization.Encoding.PEM), key_pem(key), bundle_ca)


def _load_certs(pem: bytes) -> list[x509.Certificate]:
    if not pem.strip():
        return []
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        return []


def problems(bundle: CertBundle, names: Sequence[str], now: float) -> list[str]:
    """Why this bundle cannot serve ``names`` now (empty: it can)."""
    try:
        cert = bundle.cert
        key = serialization.load_pem_private_key(bundle.key_pem, password=None)
    except ValueError as exc:
        return [f"certificate or key does not parse: {exc}"]
    out: list[str] = []
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        out.append("the key does not belong to the certificate")
    if not cert.not_valid_before_utc.timestamp() <= now < cert.not_valid_after_utc.timestamp():
        out.append(f"the certificate is not valid now (notAfter {cert.not_valid_after_utc})")
    missing = sorted(set(names) - cert_names(cert))
    if missing:
        out.append(f"the certificate does not cover {', '.join(missing)}")
    if not any(_issued_by(cert, ca) for ca in _load_certs(bundle.ca_pem)):
        out.append("the certificate is not signed by a CA in ca.crt")
    return out


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def rotation_due(cert: x509.Certificate, now: float, fraction: float) -> bool:
    start = cert.not_valid_before_utc.timestamp()
    end = cert.not_valid_after_utc.timestamp()
    return now >= start + fraction * (end - start)


TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
"""TLS 1.2 suites: forward secrecy (ECDHE, ECDSA or RSA certificates) and AEAD only; no
CBC, no static RSA.  TLS 1.3 suites are all AEAD and stay OpenSSL's defaults.  Every
client kube-apiserver builds (Go's crypto/tls) offers these."""


def server_context() -> ssl.SSLContext:
    """A server SSLContext: TLS 1.2 (AEAD suites only) and 1.3, no compression or
    renegotiation; the certificate is loaded separately."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    return ctx


# --------------------------------------------------------------------------- holder


def loaded_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A new server context serving this certificate and key, or ``CertError``
    (OpenSSL checks that the key belongs to the certificate)."""
    ctx = server_context()
    # load_cert_chain only reads files: write them to a private directory for the call.
    with tempfile.TemporaryDirectory(prefix="gpumix-tls-") as tmp:
        cert_path, key_path = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
        cert_path.write_bytes(cert_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        try:
            ctx.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as exc:
            raise CertError(f"certificate and key do not load: {exc}") from None
    return ctx


class CertHolder:
    """The server's listening SSLContext and the certificate it presents.

    ``context`` (what the server listens with) never changes and holds no certificate:
    its SNI callback switches each handshake to the context in use, which ``load``
    replaces in one assignment once a new one is complete.
    """

    def __init__(self, metrics: WebhookMetrics | None = None) -> None:
        self.context = server_context()
        self.context.sni_callback = self._select
        self._serving: ssl.SSLContext | None = None
        self.metrics = metrics
        self.cert_pem: bytes = b""
        self.key_pem: bytes = b""
        self.not_after: float | None = None

    def _select(
        self, conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        serving = self._serving
        if serving is not None:
            conn.context = serving

    @property
    def loaded(self) -> bool:
        return bool(self.cert_pem)

    @property
    def problem(self) -> str:
        return "" if self.cert_pem else "no serving certificate loaded"

    def load(self, cert_pem: bytes, key_pem: bytes) -> bool:
        """Serve this certificate from the next handshake on; False when it is the one
        already served.  ``CertError`` (and the previous one still served) when the
        pair does not load."""
        if cert_pem == self.cert_pem and key_pem == self.key_pem:
            return False
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as exc:
            raise CertError(f"not a PEM certificate: {exc}") from None
        self._serving = loaded_context(cert_pem, key_pem)
        self.cert_pem, self.key_pem = cert_pem, key_pem
        self.not_after = cert.not_valid_after_utc.timestamp()
        if self.metrics is not None:
            self.metrics.cert_expiry.set(self.not_after)
        log.info("serving certificate loaded, valid until %s", cert.not_valid_after_utc)
        return True


class CertSource:
    """Keeps a ``CertHolder`` current by running ``refresh`` every check interval."""

    def __init__(
        self,
        settings: TLSSettings,
        holder: CertHolder,
        clock: Clock,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.holder = holder
        self.clock = clock
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None
        self.last_error: str = ""
        self.failing_since: float | None = None
        """When new certificate material started failing to load (clock time), if it does."""

    @property
    def context(self) -> ssl.SSLContext:
        return self.holder.context

    @property
    def loaded(self) -> bool:
        return self.holder.loaded

    @property
    def problem(self) -> str:
        """Why ``/readyz`` should fail because of the certificate ("": it should not):
        none is loaded, or new material has failed to load for ``reload_failure_grace_s``."""
        if not self.holder.loaded:
            return "no serving certificate loaded"
        since = self.failing_since
        if since is not None and self.clock() - since >= self.settings.reload_failure_grace_s:
            return (
                f"new serving certificate has not loaded for {self.clock() - since:.0f}s "
                f"(still serving the previous one): {self.last_error}"
            )
        return ""

    async def refresh(self) -> None:
        raise NotImplementedError

    async def refresh_safely(self) -> bool:
        try:
            await self.refresh()
        except CertError as exc:
            # New material that does not load: the previous certificate stays in use.
            self.last_error = str(exc)
            if self.failing_since is None:
                self.failing_since = self.clock()
            metrics = self.holder.metrics
            if metrics is not None:
                metrics.cert_reload_failures.inc()
                metrics.cert_reload_failing.set(1)
            log.warning(
                "serving certificate not reloaded (%s one in use): %s",
                "the previous" if self.holder.loaded else "no",
                exc,
            )
            return False
        except (ApiError, OSError) as exc:
            self.last_error = str(exc)
            log.warning("serving certificate not refreshed: %s", exc)
            return False
        self.last_error = ""
        if self.failing_since is not None:
            self.failing_since = None
            log.info("serving certificate material loads again")
        metrics = self.holder.metrics
        if metrics is not None:
            metrics.cert_reload_failing.set(0)
        return True

    async def start(self) -> None:
        """Load once (waiting up to a few tries), then keep refreshing in the background."""
        for attempt in range(3):
            if await self.refresh_safely():
                break
            await self._sleep(min(0.2 * 2**attempt, 1.0))
        self._task = asyncio.create_task(self._loop(), name="gpumix-tls-refresh")

    def _next_check_s(self) -> float:
        return self.settings.check_interval_s if self.loaded else 1.0

    async def _loop(self) -> None:
        while True:
            await self._sleep(self._next_check_s())
            await self.refresh_safely()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class FileCerts(CertSource):
    """PEM files; reloaded when their content changes (cert-manager renews them in place)."""

    async def refresh(self) -> None:
        assert self.settings.cert_file and self.settings.key_file
        try:
            cert_pem = Path(self.settings.cert_file).read_bytes()
            key_pem = Path(self.settings.key_file).read_bytes()
        except OSError as exc:
            raise CertError(f"cannot read {exc.filename}: {exc.strerror}") from None
        if cert_pem == self.holder.cert_pem and key_pem == self.holder.key_pem:
            return
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as exc:
            raise CertError(f"{self.settings.cert_file}: not a PEM certificate: {exc}") from None
        if self.clock() >= cert.not_valid_after_utc.timestamp():
            log.warning("%s expired at %s", self.settings.cert_file, cert.not_valid_after_utc)
        try:
            self.holder.load(cert_pem, key_pem)
        except CertError as exc:
            raise CertError(f"{self.settings.cert_file}, {self.settings.key_file}: {exc}") from None


class EphemeralCerts(CertSource):
    """Generated in memory (no cluster): for ``--state`` mode on a laptop."""

    def __init__(
        self,
        settings: TLSSettings,
        holder: CertHolder,
        clock: Clock,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        super().__init__(settings, holder, clock, sleep)
        self.bundle: CertBundle | None = None

    def names(self) -> tuple[str, ...]:
        return (*self.settings.dns_names(), "localhost", *self.settings.extra_sans)

    async def refresh(self) -> None:
        now = self.clock()
        if self.bundle is None or rotation_due(
            self.bundle.cert, now, self.settings.rotate_fraction
        ):
            previous = self.bundle.ca_pem if self.bundle else b""
            self.bundle = new_bundle(self.names(), now, self.settings.lifetime_s, previous)
            if self.settings.ca_out_file:
                Path(self.settings.ca_out_file).write_bytes(self.bundle.ca_pem)
        self.holder.load(self.bundle.cert_pem, self.bundle.key_pem)


# --------------------------------------------------------------------------- bootstrap


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _secret_bundle(secret: dict[str, Any]) -> CertBundle | None:
    data = secret.get("data")
    if not isinstance(data, dict):
        return None
    try:
        return CertBundle(
            base64.b64decode(str(data.get("tls.crt", ""))),
            base64.b64decode(str(data.get("tls.key", ""))),
            base64.b64decode(str(data.get("ca.crt", ""))),
        )
    except ValueError:
        return None


WEBHOOK_CONFIG_KINDS = (
    "mutatingwebhookconfigurations",
    "validatingwebhookconfigurations",
)


class BootstrapCerts(CertSource):
    """Self-managed CA and serving certificate, shared by all replicas through one Secret."""

    def __init__(
        self,
        client: KubeClient,
        settings: TLSSettings,
        holder: CertHolder,
        clock: Clock,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        super().__init__(settings, holder, clock, sleep)
        self.client = client
        self._pending = b""
        self._pending_since = 0.0

    @property
    def names(self) -> tuple[str, ...]:
        return (*self.settings.dns_names(), *self.settings.extra_sans)

    @property
    def _secret_path(self) -> str:
        s = self.settings
        return f"/api/v1/namespaces/{s.namespace}/secrets/{s.secret_name}"

    def _secret_body(self, bundle: CertBundle, resource_version: str = "") -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "name": self.settings.secret_name,
            "namespace": self.settings.namespace,
            "labels": {
                "app.kubernetes.io/name": "gpumix-webhook",
                "app.kubernetes.io/managed-by": "gpumix",
            },
        }
        if resource_version:
            metadata["resourceVersion"] = resource_version
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata,
            "type": "kubernetes.io/tls",
            "data": {
                "tls.crt": _b64(bundle.cert_pem),
                "tls.key": _b64(bundle.key_pem),
                "ca.crt": _b64(bundle.ca_pem),
            },
        }

    async def _read_secret(self) -> dict[str, Any] | None:
        try:
            return await self.client.get(self._secret_path)
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    async def ensure_secret(self) -> CertBundle:
        """The bundle in the Secret, created or rotated if needed (create-or-adopt)."""
        for _ in range(4):
            now = self.clock()
            secret = await self._read_secret()
            if secret is None:
                bundle = new_bundle(self.names, now, self.settings.lifetime_s)
                try:
                    await self.client.request(
                        "POST",
                        f"/api/v1/namespaces/{self.settings.namespace}/secrets",
                        body=self._secret_body(bundle),
                    )
                except ApiError as exc:
                    if exc.code == 409:  # another replica created it first: adopt theirs
                        continue
                    raise
                log.info("created Secret %s/%s", self.settings.namespace, self.settings.secret_name)
                return bundle
            current = _secret_bundle(secret)
            why = problems(current, self.names, now) if current else ["no certificate data"]
            if current is not None and not why:
                if not rotation_due(current.cert, now, self.settings.rotate_fraction):
                    return current
                why = ["due for rotation"]
            # Cover the names already in the certificate too, so replicas started with
            # different extra names converge instead of replacing each other's certificate.
            names = list(self.names)
            previous_ca = b""
            if current is not None:
                with contextlib.suppress(ValueError):
                    names += sorted(cert_names(current.cert) - set(names))
                previous_ca = current.ca_pem
            bundle = new_bundle(names, now, self.settings.lifetime_s, previous_ca)
            rv = str((secret.get("metadata") or {}).get("resourceVersion", ""))
            try:
                await self.client.request(
                    "PUT", self._secret_path, body=self._secret_body(bundle, rv)
                )
            except ApiError as exc:
                if exc.code == 409:  # another replica replaced it first: adopt theirs
                    continue
                raise
            log.info(
                "replaced Secret %s/%s: %s",
                self.settings.namespace,
                self.settings.secret_name,
                "; ".join(why),
            )
            return bundle
        raise CertError("the certificate Secret keeps changing under us; will retry")

    async def sync_ca_bundle(self, ca_pem: bytes) -> bool:
        """Set ``caBundle`` of every webhook in the gpumix configurations to ``ca_pem``;
        True when something had to be changed."""
        want = _b64(ca_pem)
        updated = False
        name = self.settings.webhook_config_name
        for plural in WEBHOOK_CONFIG_KINDS:
            path = f"/apis/admissionregistration.k8s.io/v1/{plural}/{name}"
            for _ in range(4):
                try:
                    config = await self.client.get(path)
                except ApiError as exc:
                    if exc.code == 404:
                        log.info("%s %s does not exist (yet): caBundle not set", plural, name)
                        break
                    raise
                hooks = config.get("webhooks")
                if not isinstance(hooks, list):
                    break
                changed = False
                for hook in hooks:
                    if not isinstance(hook, dict):
                        continue
                    client_config = hook.setdefault("clientConfig", {})
                    if isinstance(client_config, dict) and client_config.get("caBundle") != want:
                        client_config["caBundle"] = want
                        changed = True
                if not changed:
                    break
                try:  # the update carries the resourceVersion read: 409 means read again
                    await self.client.request("PUT", path, body=config)
                except ApiError as exc:
                    if exc.code == 409:
                        continue
                    raise
                log.info("caBundle of %s %s updated", plural, name)
                updated = True
                break
        return updated

    async def refresh(self) -> None:
        bundle = await self.ensure_secret()
        ca_changed = await self.sync_ca_bundle(bundle.ca_pem)
        now = self.clock()
        if (
            self.holder.loaded
            and bundle.cert_pem != self.holder.cert_pem
            and self.holder.not_after is not None
            and now < self.holder.not_after
        ):
            # The caBundle (old and new CA) was just written; API servers pick it up
            # within moments. Until the grace has passed, the previous certificate is
            # still trusted everywhere and still valid: keep presenting it.
            # If the caBundle had to be written now (it was missing the new CA, e.g. a
            # replica with an older Secret overwrote it), the grace starts again.
            if self._pending != bundle.cert_pem or ca_changed:
                self._pending, self._pending_since = bundle.cert_pem, now
            if now - self._pending_since < self.settings.reload_grace_s:
                return
        self.holder.load(bundle.cert_pem, bundle.key_pem)
        self._pending = b""

    def _next_check_s(self) -> float:
        if self._pending:
            return min(self.settings.check_interval_s, self.settings.reload_grace_s)
        return super()._next_check_s()
