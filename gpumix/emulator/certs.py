"""Small certificate authority for the emulator's own HTTPS and for test webhooks."""

from __future__ import annotations

import datetime as dt
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gpumix.webhook import tls


@dataclass(frozen=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes


def make_ca(common_name: str = "gpumix-emulator-ca", days: int = 2) -> KeyPair:
    now = dt.datetime.now(dt.UTC)
    cert, key = tls.make_ca(
        common_name, now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), tls.key_pem(key))


def issue(ca: KeyPair, hosts: list[str], days: int = 2, common_name: str | None = None) -> KeyPair:
    """A serving certificate for `hosts` (DNS names or IP addresses) signed by `ca`."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    cert, key = tls.issue_serving_cert(
        ca_cert,
        ca_key,
        hosts,
        now - dt.timedelta(minutes=5),
        now + dt.timedelta(days=days),
        common_name,
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), tls.key_pem(key))


def server_context(pair: KeyPair) -> ssl.SSLContext:
    """An `ssl.SSLContext` serving `pair` (TLS 1.2 minimum)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
        cert.write_bytes(pair.cert_pem)
        key.write_bytes(pair.key_pem)
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def client_context(ca_pem: bytes) -> ssl.SSLContext:
    """A client context that trusts only `ca_pem` and checks the host name."""
    ctx = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
