"""Certificate bootstrap on the real API server: ``gpumix webhook`` creates the Secret
``gpumix-webhook-tls``, writes its CA into ``caBundle`` of the two shipped webhook
configurations (installed without one), and kube-apiserver then trusts the webhook.
No CA is supplied by the test."""

from __future__ import annotations

import base64
import json
import socket
import ssl

from cryptography import x509

from .envtest import Envtest, free_port
from .gpumix_env import (
    SECRET_NAME,
    SYSTEM_NS,
    Obj,
    apply_webhook_configurations,
    ca_bundles,
    delete_webhook_configurations,
    metric_sum,
    read_secret,
    secret_bytes,
    service_account_kubeconfig,
    wait_admitting,
    wait_until,
    webhook_configurations,
    webhook_process,
)


def served_certificate(port: int, ca_pem: bytes) -> x509.Certificate:
    """Handshake with the webhook trusting only ``ca_pem`` and checking the address
    127.0.0.1, as kube-apiserver does with a ``url`` client config."""
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def sans(cert: x509.Certificate) -> set[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n) for n in ext.get_values_for_type(x509.DNSName)} | {
        str(ip) for ip in ext.get_values_for_type(x509.IPAddress)
    }


def test_webhook_bootstraps_its_certificate_and_is_trusted(
    apiserver: Envtest, gpumix_manifests: list[Obj]
) -> None:
    apiserver.kubectl("delete", "secret", SECRET_NAME, "-n", SYSTEM_NS, "--ignore-not-found")
    port = free_port()
    configs = webhook_configurations(gpumix_manifests, port)
    assert not any("caBundle" in h["clientConfig"] for c in configs for h in c["webhooks"])
    apply_webhook_configurations(apiserver, configs)
    assert all(b == [""] for b in ca_bundles(apiserver).values())

    kubeconfig = service_account_kubeconfig(apiserver, "gpumix-webhook")
    process = webhook_process(apiserver, kubeconfig, port=port).start()
    try:
        process.wait_ready()
        secret = wait_until(lambda: read_secret(apiserver), timeout_s=10, what="the Secret")
        assert secret["type"] == "kubernetes.io/tls"
        assert set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}
        ca_pem, cert_pem = secret_bytes(secret, "ca.crt"), secret_bytes(secret, "tls.crt")
        cert = x509.load_pem_x509_certificate(cert_pem)
        assert {
            "127.0.0.1",
            "gpumix-webhook",
            "gpumix-webhook.gpumix-system",
            "gpumix-webhook.gpumix-system.svc",
            "gpumix-webhook.gpumix-system.svc.cluster.local",
        } <= sans(cert)

        want = base64.b64encode(ca_pem).decode()
        wait_until(
            lambda: all(b == [want] for b in ca_bundles(apiserver).values()),
            timeout_s=10,
            what="the Secret's ca.crt in both caBundles",
        )
        assert served_certificate(port, ca_pem) == cert

        # kube-apiserver trusts it: a server-side dry run goes through both webhooks.
        before = process.metrics()
        wait_admitting(apiserver)
        after = process.metrics()
        for path in ("/mutate", "/validate"):
            labels = dict(kind="Deployment", operation="CREATE", path=path, verdict="allowed")
            total = "gpumix_admission_requests_total"
            assert metric_sum(after, total, **labels) > metric_sum(before, total, **labels), path

        # A second start (a restart, another replica) adopts the Secret: nothing changes.
        rv = secret["metadata"]["resourceVersion"]
        assert process.stop() == 0  # SIGTERM: a clean stop
        process = webhook_process(apiserver, kubeconfig, port=port).start()
        process.wait_ready()
        assert (read_secret(apiserver) or {})["metadata"]["resourceVersion"] == rv
        assert served_certificate(port, ca_pem) == cert
        wait_admitting(apiserver)

        # Re-applying the shipped configurations (client-side or server-side, as GitOps
        # tools do) leaves the caBundle alone: the manifests do not carry one.
        items = json.dumps({"apiVersion": "v1", "kind": "List", "items": configs})
        apiserver.kubectl("apply", "-f", "-", input=items)
        apiserver.kubectl("apply", "--server-side", "-f", "-", input=items)
        assert all(b == [want] for b in ca_bundles(apiserver).values())
        wait_admitting(apiserver)
    finally:
        delete_webhook_configurations(apiserver)
        process.stop()
