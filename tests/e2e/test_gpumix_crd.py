"""The GPUMix CRD from manifests/crds on the real API server: its schema (OpenAPI and CEL
rules) rejects invalid specs, defaults are applied, and status goes only through the
status subresource, which the controller's ServiceAccount may write while it may not
write the spec."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from .envtest import Envtest
from .gpumix_env import Obj

VALID: Obj = {
    "apiVersion": "gpumix.io/v1alpha1",
    "kind": "GPUMix",
    "metadata": {"name": "llama"},
    "spec": {
        "model": "llama2-7b",
        "profiles": {
            "inline": [
                {
                    "gpuType": "A100",
                    "buckets": [
                        {"inputTokens": 512, "outputTokens": 128, "maxRequestsPerSecond": 10}
                    ],
                }
            ]
        },
        "prices": {"A100": 2.2},
        "loadSource": {
            "static": {
                "buckets": [{"inputTokens": 512, "outputTokens": 128, "requestsPerSecond": 5}]
            }
        },
    },
}


def gpumix(namespace: str, name: str = "llama", **spec: Any) -> Obj:
    obj = copy.deepcopy(VALID)
    obj["metadata"] = {"name": name, "namespace": namespace}
    for key, value in spec.items():
        if value is None:
            obj["spec"].pop(key, None)
        else:
            obj["spec"][key] = value
    return obj


INVALID = {
    "no-model": ({"model": None}, "spec.model: Required value"),
    "both-profile-sources": (
        {"profiles": {**VALID["spec"]["profiles"], "configMapRef": {"name": "p"}}},
        "set exactly one of inline and configMapRef",
    ),
    "no-load-source": ({"loadSource": {}}, "set exactly one of static and prometheus"),
    "negative-price": ({"prices": {"A100": -1}}, "spec.prices.A100: Invalid value: -1"),
    "no-prices": ({"prices": {}}, "spec.prices: Invalid value"),
    "bad-mode": ({"mode": "yolo"}, 'spec.mode: Unsupported value: "yolo"'),
    "headroom-one": ({"headroom": 1}, "spec.headroom: Invalid value: 1"),
    "zero-interval": ({"intervalSeconds": 0}, "spec.intervalSeconds: Invalid value: 0"),
    "prometheus-url": (
        {"loadSource": {"prometheus": {"url": "prometheus:9090"}}},
        "spec.loadSource.prometheus.url: Invalid value",
    ),
    "gpu-type-without-price": (
        {"gpuTypes": {"H100": {"maxReplicas": 4}}},
        "spec.gpuTypes: Invalid value: every spec.gpuTypes key needs a price in spec.prices",
    ),
    "zero-gpus-per-replica": (
        {"gpuTypes": {"A100": {"gpusPerReplica": 0}}},
        "spec.gpuTypes.A100.gpusPerReplica: Invalid value: 0",
    ),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_schema_rejects_invalid_specs(
    apiserver: Envtest, gpumix_manifests: list[Obj], namespace: str, case: str
) -> None:
    change, message = INVALID[case]
    proc = apiserver.kubectl(
        "apply", "-f", "-", input=json.dumps(gpumix(namespace, case, **change)), check=False
    )
    assert proc.returncode != 0
    assert f'The GPUMix "{case}" is invalid' in proc.stderr, proc.stderr
    assert message in proc.stderr, proc.stderr
    assert apiserver.kubectl("get", "gmx", case, "-n", namespace, check=False).returncode != 0


def test_valid_spec_is_stored_with_defaults(
    apiserver: Envtest, gpumix_manifests: list[Obj], namespace: str
) -> None:
    apiserver.kubectl("apply", "-f", "-", input=json.dumps(gpumix(namespace)))
    got = json.loads(apiserver.kubectl("get", "gmx", "llama", "-n", namespace, "-o", "json").stdout)
    assert got["spec"]["mode"] == "recommend"  # schema default
    assert got["metadata"]["generation"] == 1
    # The short name and the printer columns work.
    table = apiserver.kubectl("get", "gmx", "-n", namespace).stdout
    assert table.split()[:6] == ["NAME", "MODE", "READY", "LOAD", "COST/H", "SOLVER"]


def test_status_goes_through_the_status_subresource(
    apiserver: Envtest, gpumix_manifests: list[Obj], namespace: str
) -> None:
    apiserver.kubectl("apply", "-f", "-", input=json.dumps(gpumix(namespace)))
    base = f"/apis/gpumix.io/v1alpha1/namespaces/{namespace}/gpumixes/llama"
    merge = "application/merge-patch+json"
    status = {
        "observedGeneration": 1,
        "costPerHour": 4.4,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Planned"}],
    }

    # Through the main resource the status is dropped (and the spec is what changes).
    code, body = apiserver.request("PATCH", base, {"status": status}, content_type=merge)
    assert code == 200, body
    assert "status" not in body
    assert body["metadata"]["generation"] == 1

    # Through /status it is stored, and the spec and generation stay.
    code, body = apiserver.request(
        "PATCH",
        base + "/status",
        {"status": status, "spec": {"model": "other"}},
        content_type=merge,
    )
    assert code == 200, body
    assert body["status"]["costPerHour"] == 4.4
    assert body["spec"]["model"] == "llama2-7b"
    assert body["metadata"]["generation"] == 1

    # The status schema is enforced too.
    code, body = apiserver.request(
        "PATCH",
        base + "/status",
        {"status": {"conditions": [{"type": "Ready", "status": "Maybe"}]}},
        content_type=merge,
    )
    assert code == 422, body
    assert "status.conditions[0].status" in body["message"]

    # A spec change bumps the generation; status writes never do.
    apiserver.kubectl(
        "patch", "gmx", "llama", "-n", namespace, "--type=merge", "-p", '{"spec":{"headroom":0.2}}'
    )
    got = json.loads(apiserver.kubectl("get", "gmx", "llama", "-n", namespace, "-o", "json").stdout)
    assert got["metadata"]["generation"] == 2
    assert got["status"]["observedGeneration"] == 1


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [
        ("patch", "gpumixes.gpumix.io/status", True),
        ("update", "gpumixes.gpumix.io/status", False),
        ("watch", "gpumixes.gpumix.io", True),
        ("patch", "gpumixes.gpumix.io", False),
        ("update", "gpumixes.gpumix.io", False),
        ("create", "gpumixes.gpumix.io", False),
        ("update", "deployments.apps/scale", True),
        ("patch", "deployments.apps", False),
        ("update", "deployments.apps", False),
    ],
)
def test_controller_rbac_writes_status_and_scale_only(
    apiserver: Envtest, gpumix_manifests: list[Obj], verb: str, resource: str, allowed: bool
) -> None:
    """The shipped RBAC of the controller's ServiceAccount, as the real authorizer sees it."""
    name, _, sub = resource.partition("/")
    args = [
        "auth",
        "can-i",
        verb,
        name,
        "-n",
        "default",
        "--as=system:serviceaccount:gpumix-system:gpumix-controller",
    ]
    if sub:
        args.append(f"--subresource={sub}")
    proc = apiserver.kubectl(*args, check=False)
    assert proc.stdout.strip() == ("yes" if allowed else "no"), (args, proc.stdout, proc.stderr)
