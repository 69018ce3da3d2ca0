"""Admission peers on one real kube-apiserver: none, admission policies, gpumix, Kyverno.

    python benchmarks/bench_admission_peers.py [--deployments 10000] [--rates 25,100,200]
        [--seconds 10] [--peers none,map,vap,gpumix,kyverno] [--runs 1]

Starts the test kube-apiserver and etcd (``tools/envtest/build.sh``) and stores
``--deployments`` GPU Deployments in 100 namespaces.  Then, one peer registered at a
time, it sends open-loop server-side dry-run creates at each rate of ``--rates`` for
``--seconds`` each, of two kinds:

- a GPU Deployment (one ``nvidia.com/gpu``), and
- an HPA without ``maxReplicas`` (the default ceiling must be filled in; with no
  admission at all the API server refuses it, so the ``none`` row sends HPAs that
  carry ``maxReplicas``: the latency floor).

The peers:

- ``none``: nothing registered.
- ``map``: a MutatingAdmissionPolicy (admissionregistration.k8s.io/v1) that fills in
  the default ceiling in the API server, generated from the shipped Policy
  (:func:`default_ceiling_map`): the namespace annotation, else the policy default,
  at most the hard limit, at least ``minReplicas``.  No process; it does not judge
  Deployments (a MAP cannot see other objects).
- ``vap``: the same MAP, and a ValidatingAdmissionPolicy refusing a GPU Deployment
  whose selector captures another Deployment's pods, or whose pods another captures,
  with the namespace's Deployments as its params (:func:`capture_vap`).
- ``gpumix``: ``gpumix webhook`` with the shipped policy and webhook configurations
  (``tests/e2e/gpumix_env.start_webhook``), once its cache holds every Deployment.
- ``kyverno``: Kyverno (``tools/kyverno/build.sh``) run out of cluster with the
  nearest ClusterPolicies (:func:`kyverno_policies`): the namespace's Deployments
  through an ``apiCall`` LIST and a ``foreach`` denying a selector that captures
  another Deployment's pods (or is captured), a JSON-patch mutate setting the default
  ceiling, and a validate rule for the hard limit.

Before measuring, each peer is probed: the HPA default must be filled in (map, vap,
gpumix, kyverno) and a GPU Deployment whose selector captures another's pods must be
refused or fixed (vap, gpumix, kyverno), so the numbers are of peers doing their work.

Per peer, kind and rate: client latency p50/p99/p99.9 (every write, failed ones at
the time they took), failed writes, the peer process's user + system CPU per write
(``/proc/<pid>/stat``), and the API server's own admission time per write: the sum of
``apiserver_admission_webhook_admission_duration_seconds`` (webhook calls) and of
``apiserver_admission_controller_admission_duration_seconds`` of the
MutatingAdmissionPolicy and ValidatingAdmissionPolicy plugins (in-process policies)
over the writes.  RSS of the peer
process: steady (after sync, before the writes) and peak (``VmHWM``).

Every phase is bounded in time; everything listens on loopback; every process started
here is stopped at the end, also on failure.  When Kyverno is not built or does not
start, the other peers still run and the output says what failed.  Not in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_admission_apiserver import (  # noqa: E402
    Client,
    Sent,
    create,
    gpu_deployment,
    hpa,
    open_loop,
)

from gpumix.kube.policy import (  # noqa: E402
    DEFAULT_MAX_REPLICAS_ANNOTATION,
    Policy,
    policy_from_mapping,
)
from tests.e2e.envtest import Envtest, _Proc, ensure_binaries, free_port  # noqa: E402
from tests.e2e.gpumix_env import (  # noqa: E402
    POLICY_FILE,
    install_prerequisites,
    parse_metrics,
    render_manifests,
    start_webhook,
    stop_webhook,
    wait_until,
)

Obj = dict[str, Any]
NAMESPACES = [f"bench-{i}" for i in range(100)]
KINDS = ("GPU Deployment", "HPA without maxReplicas")
KYVERNO_NS = "kyverno"
KYVERNO_CA_SECRET = "kyverno-svc.kyverno.svc.kyverno-tls-ca"
KYVERNO_TLS_SECRET = "kyverno-svc.kyverno.svc.kyverno-tls-pair"
KYVERNO_WEBHOOKS = "webhook.kyverno.io/managed-by=kyverno"
"""Label selector of the webhook configurations Kyverno registers."""
MAP_NAME = "gpumix-default-max-replicas"
CLIENT_WORKERS = 64
"""Client threads of the open loop: enough that a slow peer does not slow the sender
below the rate (each write may wait up to the API server's 10 s webhook timeout)."""


# --------------------------------------------------------------------------- process facts


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def alive(pid: int) -> bool:
    """Whether the process runs (not exited, not a zombie waiting to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def status_mb(pid: int, key: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


# --------------------------------------------------------------------------- the policies


def load_policy(path: Path = POLICY_FILE) -> Policy:
    import yaml

    return policy_from_mapping(yaml.safe_load(path.read_text()))


def default_ceiling_cel(policy: Policy) -> str:
    """CEL of the default ceiling a MutatingAdmissionPolicy can compute: the
    namespace annotation (a positive whole number), else the policy default; at most
    the hard limit; at least ``minReplicas``.  gpumix also caps it by the GPUs of the
    target's type, which needs the Nodes and the target Deployment: CEL in the API
    server sees neither."""
    annotation = json.dumps(DEFAULT_MAX_REPLICAS_ANNOTATION)
    return (
        f"(has(namespaceObject.metadata.annotations) && "
        f"{annotation} in namespaceObject.metadata.annotations && "
        f"namespaceObject.metadata.annotations[{annotation}].matches('^[1-9][0-9]{{0,8}}$') "
        f"? int(namespaceObject.metadata.annotations[{annotation}]) "
        f": {policy.default_max_replicas})"
    )


def not_exempt(policy: Policy) -> Obj:
    """A binding's ``matchResources``: every namespace but the policy's exempt ones."""
    selector = {
        "key": "kubernetes.io/metadata.name",
        "operator": "NotIn",
        "values": sorted(policy.exempt_namespaces),
    }
    return {"namespaceSelector": {"matchExpressions": [selector]}}


def default_ceiling_map(policy: Policy) -> list[Obj]:
    """The MutatingAdmissionPolicy and its binding filling in an HPA's left-out ceiling
    (the API server hands it to admission as ``maxReplicas: 0``)."""
    value = default_ceiling_cel(policy)
    hard = policy.hard_max_replicas
    capped = f"({value} > {hard} ? {hard} : {value})"
    floor = "(has(object.spec.minReplicas) ? object.spec.minReplicas : 1)"
    patch = (
        f'[JSONPatch{{op: "add", path: "/spec/maxReplicas", '
        f"value: {floor} > {capped} ? {floor} : {capped}}}]"
    )
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingAdmissionPolicy",
            "metadata": {"name": MAP_NAME},
            "spec": {
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": ["autoscaling"],
                            "apiVersions": ["*"],
                            "operations": ["CREATE", "UPDATE"],
                            "resources": ["horizontalpodautoscalers"],
                        }
                    ]
                },
                "matchConditions": [
                    {
                        "name": "no-ceiling",
                        "expression": "!has(object.spec.maxReplicas) || "
                        "object.spec.maxReplicas == 0",
                    }
                ],
                "failurePolicy": "Fail",
                "reinvocationPolicy": "Never",
                "mutations": [{"patchType": "JSONPatch", "jsonPatch": {"expression": patch}}],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingAdmissionPolicyBinding",
            "metadata": {"name": MAP_NAME},
            "spec": {
                "policyName": MAP_NAME,
                "matchResources": not_exempt(policy),
            },
        },
    ]


CAPTURE_VAP_NAME = "gpu-selector-capture"


def _selects(selector: str, labels: str) -> str:
    """CEL: whether the label selector ``selector`` matches the label map ``labels``
    (``matchLabels`` and the four ``matchExpressions`` operators)."""
    return (
        f"((!has({selector}.matchLabels) || {selector}.matchLabels.all(k, k in {labels} && "
        f"{labels}[k] == {selector}.matchLabels[k])) && "
        f"(!has({selector}.matchExpressions) || {selector}.matchExpressions.all(e, "
        f"e.operator == 'In' ? "
        f"(e.key in {labels} && has(e.values) && {labels}[e.key] in e.values) : "
        f"e.operator == 'NotIn' ? (!(e.key in {labels}) || !has(e.values) || "
        f"!({labels}[e.key] in e.values)) : "
        f"e.operator == 'Exists' ? e.key in {labels} : !(e.key in {labels}))))"
    )


def capture_vap(policy: Policy) -> list[Obj]:
    """A ValidatingAdmissionPolicy refusing a GPU Deployment whose selector captures
    another Deployment's pods in its namespace, or whose pods another one's selector
    captures: the namespace's Deployments are its params (a binding ``paramRef`` with
    an empty selector: the API server evaluates the policy once per Deployment, from
    its own informer).  The scope is the webhooks' match condition
    (``gpumix.kube.scope.cel_expression``)."""
    from gpumix.kube.scope import cel_expression

    template = "object.spec.template.metadata"
    theirs = "params.spec.template.metadata"
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": CAPTURE_VAP_NAME},
            "spec": {
                "paramKind": {"apiVersion": "apps/v1", "kind": "Deployment"},
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": ["apps"],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE", "UPDATE"],
                            "resources": ["deployments"],
                        }
                    ]
                },
                "matchConditions": [{"name": "gpumix-scope", "expression": cel_expression(policy)}],
                "failurePolicy": "Fail",
                "variables": [
                    {
                        "name": "mine",
                        "expression": f"has({template}.labels) ? {template}.labels : {{}}",
                    },
                    {
                        "name": "theirs",
                        "expression": f"has({theirs}.labels) ? {theirs}.labels : {{}}",
                    },
                ],
                "validations": [
                    {
                        "expression": "params.metadata.name == object.metadata.name || !("
                        + _selects("object.spec.selector", "variables.theirs")
                        + " || "
                        + _selects("params.spec.selector", "variables.mine")
                        + ")",
                        "messageExpression": "'the selector of ' + object.metadata.name + "
                        "' or of ' + params.metadata.name + ' captures the pods of the other'",
                    }
                ],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": CAPTURE_VAP_NAME},
            "spec": {
                "policyName": CAPTURE_VAP_NAME,
                "validationActions": ["Deny"],
                "paramRef": {"selector": {}, "parameterNotFoundAction": "Allow"},
                "matchResources": not_exempt(policy),
            },
        },
    ]


def _pairs(path: str) -> str:
    """JMESPath: a label map as a list of ``key=value`` strings (``[]`` when absent)."""
    return f"items({path} || `{{}}`, 'k', 'v')[].join('=', [k, v])"


def kyverno_policies(policy: Policy) -> list[Obj]:
    """The nearest Kyverno ClusterPolicies to gpumix's admission rules (see
    docs/peers.md for what they leave out)."""
    exclude = {"any": [{"resources": {"namespaces": sorted(policy.exempt_namespaces)}}]}
    gpu_names = [n for n in policy.gpu_resource_names if not n.endswith("*")]
    requests_gpu = " || ".join(
        f'request.object.spec.template.spec.containers[?resources.limits."{n}"]' for n in gpu_names
    )
    overlap = {
        "apiVersion": "kyverno.io/v1",
        "kind": "ClusterPolicy",
        "metadata": {"name": "gpu-selector-overlap"},
        "spec": {
            "background": False,
            "rules": [
                {
                    "name": "selector-capture",
                    "match": {
                        "any": [
                            {
                                "resources": {
                                    "kinds": ["apps/v1/Deployment"],
                                    "operations": ["CREATE", "UPDATE"],
                                }
                            }
                        ]
                    },
                    "exclude": exclude,
                    "preconditions": {
                        "all": [
                            {
                                "key": f"{{{{ ({requests_gpu}) || `[]` | length(@) }}}}",
                                "operator": "GreaterThan",
                                "value": 0,
                            }
                        ]
                    },
                    "context": [
                        {
                            "name": "others",
                            "apiCall": {
                                "urlPath": "/apis/apps/v1/namespaces/{{ request.namespace }}"
                                "/deployments",
                                "jmesPath": "items[?metadata.name != "
                                "'{{ request.object.metadata.name }}'].{name: metadata.name, "
                                "selector: spec.selector.matchLabels, "
                                "labels: spec.template.metadata.labels}",
                            },
                        }
                    ],
                    "validate": {
                        "failureAction": "Enforce",
                        "message": "the selector of {{ request.object.metadata.name }} and "
                        "the selector of another Deployment in the namespace capture each "
                        "other's pods",
                        "foreach": [
                            {
                                "list": "others",
                                "deny": {
                                    "conditions": {
                                        "any": [
                                            {
                                                "key": "{{ "
                                                + _pairs("request.object.spec.selector.matchLabels")
                                                + " }}",
                                                "operator": "AllIn",
                                                "value": "{{ " + _pairs("element.labels") + " }}",
                                            },
                                            {
                                                "key": "{{ " + _pairs("element.selector") + " }}",
                                                "operator": "AllIn",
                                                "value": "{{ "
                                                + _pairs(
                                                    "request.object.spec.template.metadata.labels"
                                                )
                                                + " }}",
                                            },
                                        ]
                                    }
                                },
                            }
                        ],
                    },
                }
            ],
        },
    }
    hpa_match = {
        "any": [
            {
                "resources": {
                    "kinds": ["autoscaling/*/HorizontalPodAutoscaler"],
                    "operations": ["CREATE", "UPDATE"],
                }
            }
        ]
    }
    ceiling = {
        "apiVersion": "kyverno.io/v1",
        "kind": "ClusterPolicy",
        "metadata": {"name": "hpa-max-replicas"},
        "spec": {
            "background": False,
            "rules": [
                {
                    # the API server hands a left-out maxReplicas to admission as 0, so
                    # an add-if-absent anchor (+(maxReplicas)) never fires: a JSON patch
                    # under a precondition on 0 does
                    "name": "default-max-replicas",
                    "match": hpa_match,
                    "exclude": exclude,
                    "preconditions": {
                        "all": [
                            {
                                "key": "{{ request.object.spec.maxReplicas || `0` }}",
                                "operator": "Equals",
                                "value": 0,
                            }
                        ]
                    },
                    "mutate": {
                        "patchesJson6902": json.dumps(
                            [
                                {
                                    "op": "add",
                                    "path": "/spec/maxReplicas",
                                    "value": policy.default_max_replicas,
                                }
                            ]
                        )
                    },
                },
                {
                    "name": "hard-max-replicas",
                    "match": hpa_match,
                    "exclude": exclude,
                    "validate": {
                        "failureAction": "Enforce",
                        "message": f"maxReplicas must be at most {policy.hard_max_replicas}",
                        "deny": {
                            "conditions": {
                                "any": [
                                    {
                                        "key": "{{ request.object.spec.maxReplicas }}",
                                        "operator": "GreaterThan",
                                        "value": policy.hard_max_replicas,
                                    }
                                ]
                            }
                        },
                    },
                },
            ],
        },
    }
    return [overlap, ceiling]


# --------------------------------------------------------------------------- load


@dataclass
class Phase:
    peer: str
    kind: str
    rate: float
    sent: Sent = field(default_factory=Sent)  # the writes, their times and failures
    cpu_ms: float | None = None
    apiserver_ms: float = 0.0
    webhook_calls: float = 0.0
    peak_mb: float = 0.0

    def quantile(self, q: float) -> float:
        data = sorted(self.sent.times)
        if not data:
            return float("nan")
        return data[min(len(data) - 1, int(q * len(data)))] * 1e3


def admission_seconds(env: Envtest) -> tuple[float, float]:
    """(seconds spent in admission webhooks and in-process admission policies so far,
    webhook calls so far), from the API server's own metrics."""
    status, text = env.request("GET", "/metrics")
    if status != 200 or not isinstance(text, str):
        raise RuntimeError(f"GET /metrics: {status}")
    seconds = calls = 0.0
    for series, value in parse_metrics(text).items():
        if series.startswith("apiserver_admission_webhook_admission_duration_seconds_sum{"):
            seconds += value
        elif series.startswith("apiserver_admission_webhook_admission_duration_seconds_count{"):
            calls += value
        elif series.startswith(
            "apiserver_admission_controller_admission_duration_seconds_sum{"
        ) and (
            'name="MutatingAdmissionPolicy"' in series
            or 'name="ValidatingAdmissionPolicy"' in series
        ):
            seconds += value
    return seconds, calls


def make_objects(kind: str, tag: str, count: int, with_ceiling: bool) -> list[Obj]:
    if kind == "GPU Deployment":
        return [gpu_deployment(f"{tag}-{i}", NAMESPACES[i % 100]) for i in range(count)]
    ceiling = 4 if with_ceiling else None
    return [hpa(f"{tag}-{i}", NAMESPACES[i % 100], ceiling) for i in range(count)]


def measure(
    env: Envtest,
    peer: str,
    pid: int | None,
    rates: list[float],
    seconds: float,
    run: int,
    phases: list[Phase],
) -> None:
    """Append one phase per kind and rate to ``phases`` as each is measured."""
    client = Client(env)
    for kind in KINDS:
        for rate in rates:
            phase = Phase(peer, kind, rate)
            count = max(1, int(rate * seconds))
            objects = make_objects(kind, f"{peer}-r{run}-{int(rate)}", count, peer == "none")
            adm0, calls0 = admission_seconds(env)
            cpu0 = cpu_seconds(pid) if pid else 0.0
            phase.sent = open_loop(
                client, objects, rate, workers=CLIENT_WORKERS, limit_s=seconds * 3 + 10
            )
            died = pid is not None and not alive(pid)
            if pid and not died:
                phase.cpu_ms = (cpu_seconds(pid) - cpu0) / max(phase.sent.writes, 1) * 1e3
                phase.peak_mb = status_mb(pid, "VmHWM")
            adm1, calls1 = admission_seconds(env)
            phase.apiserver_ms = (adm1 - adm0) / max(phase.sent.writes, 1) * 1e3
            phase.webhook_calls = calls1 - calls0
            phases.append(phase)
            print(row(phase), flush=True)
            if phase.sent.first_error:
                print(f"  first failure: {phase.sent.first_error}", flush=True)
            if died:
                raise RuntimeError(f"{peer} exited during the {kind} writes at {rate:.0f}/s")


def row(p: Phase) -> str:
    cpu = "—" if p.cpu_ms is None else f"{p.cpu_ms:.2f}"
    return (
        f"| {p.peer} | {p.kind} | {p.rate:.0f} | {p.sent.writes} | {p.sent.failed} | "
        f"{p.quantile(0.5):.1f} | {p.quantile(0.99):.1f} | {p.quantile(0.999):.1f} | "
        f"{cpu} | {p.apiserver_ms:.2f} | {p.webhook_calls / max(p.sent.writes, 1):.1f} |"
    )


HEADER = (
    "| peer | write | rate/s | writes | failed | p50 ms | p99 ms | p99.9 ms | "
    "peer CPU ms/write | API server admission ms/write | webhook calls/write |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


# --------------------------------------------------------------------------- probes


def overlapping_deployment(namespace: str) -> Obj:
    """A GPU Deployment of another GPU type whose selector captures ``d-0``'s pods."""
    obj = gpu_deployment("probe-overlap", namespace)
    obj["spec"]["selector"] = {"matchLabels": {"app": "d-0"}}
    template = obj["spec"]["template"]
    template["metadata"]["labels"] = {"app": "d-0", "gpumix.io/gpu-type": "NVIDIA-H100"}
    template["spec"]["nodeSelector"] = {"nvidia.com/gpu.product": "NVIDIA-H100"}
    return obj


def _captures(selector: object, labels: object) -> bool:
    match = selector.get("matchLabels", {}) if isinstance(selector, dict) else {}
    have = labels if isinstance(labels, dict) else {}
    return bool(match) and all(have.get(k) == v for k, v in match.items())


def probe(env: Envtest, peer: str, policy: Policy, judges_deployments: bool) -> str:
    """Check that the peer does its work; returns '' or what is wrong.  A capturing
    selector must be refused, or fixed so that it captures nothing (gpumix's mutating
    step isolates a new Deployment when that removes the capture)."""
    status, body = create(env, hpa("probe-hpa", NAMESPACES[0]))
    got = body.get("spec", {}).get("maxReplicas") if isinstance(body, dict) else None
    if status != 201 or got != policy.default_max_replicas:
        return f"HPA without maxReplicas: {status}, maxReplicas={got} ({str(body)[:300]})"
    if judges_deployments:
        status, body = create(env, overlapping_deployment(NAMESPACES[0]))
        if status == 201:
            stored = gpu_deployment("d-0", NAMESPACES[0])["spec"]
            spec = body["spec"]
            if _captures(spec["selector"], stored["template"]["metadata"]["labels"]) or (
                _captures(stored["selector"], spec["template"]["metadata"]["labels"])
            ):
                return "a GPU Deployment capturing another's pods was admitted as it was"
    return ""


def wait_probe(env: Envtest, peer: str, policy: Policy, judges: bool, timeout_s: float) -> None:
    wait_until(
        lambda: probe(env, peer, policy, judges) == "",
        timeout_s=timeout_s,
        what=f"{peer} to default HPA ceilings"
        + (" and prevent a capturing selector" if judges else ""),
        interval_s=1.0,
    )


# --------------------------------------------------------------------------- peers


def apply(env: Envtest, objects: list[Obj], *args: str, timeout_s: float = 60) -> None:
    env.kubectl(
        "apply",
        *args,
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
        timeout_s=timeout_s,
    )


@contextmanager
def policy_peer(
    env: Envtest, name: str, objects: list[Obj], policy: Policy, capture: bool, timeout_s: float
) -> Iterator[int | None]:
    """Admission policies served by the API server itself (no process of their own)."""
    apply(env, objects)
    try:
        wait_probe(env, name, policy, capture, timeout_s=timeout_s)
        yield None
    finally:
        for obj in reversed(objects):
            env.kubectl("delete", obj["kind"].lower(), obj["metadata"]["name"], "--wait=false")


@contextmanager
def gpumix_peer(env: Envtest, objects: list[Obj], deployments: int) -> Iterator[int | None]:
    webhook = start_webhook(env, objects)
    try:
        wait_until(
            lambda: webhook.cached("Deployment") >= deployments,
            timeout_s=300,
            what="the webhook cache",
        )
        wait_probe(env, "gpumix", load_policy(), True, timeout_s=30)
        pid = webhook.process.proc.popen.pid  # type: ignore[union-attr]
        yield pid
    finally:
        stop_webhook(webhook)


def kyverno_binary() -> Path:
    """The Kyverno build directory (``tools/kyverno/build.sh --check``)."""
    proc = subprocess.run(
        ["bash", str(REPO / "tools" / "kyverno" / "build.sh"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip() or "tools/kyverno/build.sh --check failed")
    return Path(proc.stdout.strip().splitlines()[-1])


@contextmanager
def kyverno_peer(env: Envtest, policy: Policy, timeout_s: float) -> Iterator[int | None]:
    build = kyverno_binary()
    env.kubectl("create", "namespace", KYVERNO_NS)
    env.kubectl(
        "apply", "--server-side", "-f", str(build / "crds"), timeout_s=120
    )  # CRDs too large for the last-applied annotation
    env.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/clusterpolicies.kyverno.io",
        "crd/policies.kyverno.io",
        "crd/updaterequests.kyverno.io",
        timeout_s=70,
    )
    config_maps = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": KYVERNO_NS},
            "data": data,
        }
        for name, data in (("kyverno", {}), ("kyverno-metrics", {}))
    ]
    apply(env, config_maps)
    port = free_port()
    environment = {
        **os.environ,
        "KYVERNO_NAMESPACE": KYVERNO_NS,
        "KYVERNO_SERVICEACCOUNT_NAME": "kyverno-admission-controller",
        "KYVERNO_DEPLOYMENT": "kyverno-admission-controller",
        "KYVERNO_POD_NAME": "kyverno-admission-controller-0",
        "KYVERNO_SVC": "kyverno-svc",
        "INIT_CONFIG": "kyverno",
        "METRICS_CONFIG": "kyverno-metrics",
    }
    argv = [
        str(build / "kyverno"),
        f"--kubeconfig={env.kubeconfig}",
        f"--serverIP=127.0.0.1:{port}",
        "--webhookServerHost=127.0.0.1",
        f"--webhookServerPort={port}",
        f"--caSecretName={KYVERNO_CA_SECRET}",
        f"--tlsSecretName={KYVERNO_TLS_SECRET}",
        "--metricsHost=127.0.0.1",
        f"--metricsPort={free_port()}",
        "--controllerRuntimeMetricsAddress=0",
        "--disableLogColor",
        "--v=1",
    ]
    proc = _Proc("kyverno", argv, env.workdir / "kyverno.log")
    original_env = os.environ.copy()
    os.environ.update(environment)
    try:
        proc.start()
    finally:
        os.environ.clear()
        os.environ.update(original_env)
    try:
        apply(env, kyverno_policies(policy))
        wait_until(
            lambda: proc.running() and policies_ready(env),
            timeout_s=timeout_s,
            what="Kyverno to start and its ClusterPolicies to be ready",
            interval_s=1.0,
        )
        wait_probe(env, "kyverno", policy, True, timeout_s=timeout_s)
        assert proc.popen is not None
        yield proc.popen.pid
    except BaseException:
        print(f"--- kyverno log (last lines) ---\n{proc.log_tail(60)}", flush=True)
        raise
    finally:
        errors = [line for line in proc.log_tail(100000).splitlines() if " ERR " in line]
        if errors:
            print(f"kyverno logged {len(errors)} errors; the last:\n{errors[-1][:600]}", flush=True)
        for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
            env.kubectl("delete", kind, "-l", KYVERNO_WEBHOOKS, "--wait=false", check=False)
        proc.stop()
        for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
            env.kubectl("delete", kind, "-l", KYVERNO_WEBHOOKS, "--wait=false", check=False)
        env.kubectl("delete", "clusterpolicy", "--all", "--wait=false", check=False)


def policies_ready(env: Envtest) -> bool:
    status, body = env.request("GET", "/apis/kyverno.io/v1/clusterpolicies")
    if status != 200:
        return False
    items = body.get("items", [])
    return bool(items) and all(
        any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in item.get("status", {}).get("conditions", [])
        )
        for item in items
    )


# --------------------------------------------------------------------------- main


def store_deployments(env: Envtest, count: int) -> None:
    apply(
        env,
        [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in NAMESPACES],
    )
    stored = [gpu_deployment(f"d-{i}", NAMESPACES[i % 100]) for i in range(count)]
    t = time.monotonic()

    def one(obj: Obj) -> None:
        status, body = create(env, obj, dry_run=False)
        if status != 201:
            raise RuntimeError(f"store {obj['metadata']['name']}: {status} {body}")

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(one, stored))
    print(f"stored {count} GPU Deployments in {time.monotonic() - t:.0f} s", flush=True)


def run_peer(
    name: str,
    start: Callable[[], Any],
    env: Envtest,
    args: argparse.Namespace,
    results: list[Phase],
    memory: dict[str, tuple[float, float]],
    failures: dict[str, str],
) -> None:
    t = time.monotonic()
    try:
        with start() as pid:
            print(f"{name}: ready in {time.monotonic() - t:.0f} s", flush=True)
            steady = 0.0
            if pid:
                time.sleep(5)
                steady = status_mb(pid, "VmRSS")
            try:
                for run in range(args.runs):
                    measure(env, name, pid, args.rates, args.seconds, run, results)
            finally:
                if pid:
                    memory[name] = (
                        steady,
                        max((p.peak_mb for p in results if p.peer == name), default=steady),
                    )
    except Exception as exc:  # one peer failing must not hide the others' numbers
        failures[name] = f"{type(exc).__name__}: {exc}"
        print(f"{name}: FAILED: {failures[name]}", flush=True)
        traceback.print_exc()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, default=10000)
    parser.add_argument("--rates", default="25,100,200", help="writes/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="per kind and rate")
    parser.add_argument("--peers", default="none,map,vap,gpumix,kyverno")
    parser.add_argument("--runs", type=int, default=1, help="repeat the writes of each peer")
    parser.add_argument("--kyverno-timeout", type=float, default=180.0)
    args = parser.parse_args()
    args.rates = [float(r) for r in args.rates.split(",")]
    peers = args.peers.split(",")
    unknown = set(peers) - {"none", "map", "vap", "gpumix", "kyverno"}
    if unknown:
        parser.error(f"--peers: unknown {sorted(unknown)}")
    policy = load_policy()
    env = Envtest(ensure_binaries()).start()
    results: list[Phase] = []
    memory: dict[str, tuple[float, float]] = {}
    failures: dict[str, str] = {}
    try:
        objects = render_manifests()
        env.install_crds()
        install_prerequisites(env, objects)
        store_deployments(env, args.deployments)
        print(
            f"{args.deployments} GPU Deployments stored; open-loop dry-run creates for "
            f"{args.seconds:.0f} s at each rate, one peer registered at a time\n{HEADER}",
            flush=True,
        )

        @contextmanager
        def nothing() -> Iterator[int | None]:
            yield None

        starters: dict[str, Callable[[], Any]] = {
            "none": nothing,
            "map": lambda: policy_peer(env, "map", default_ceiling_map(policy), policy, False, 30),
            "vap": lambda: policy_peer(
                env, "vap", default_ceiling_map(policy) + capture_vap(policy), policy, True, 60
            ),
            "gpumix": lambda: gpumix_peer(env, objects, args.deployments),
            "kyverno": lambda: kyverno_peer(env, policy, args.kyverno_timeout),
        }
        for name in peers:
            run_peer(name, starters[name], env, args, results, memory, failures)
    finally:
        env.stop()
    print(f"\n{args.deployments} GPU Deployments stored\n{HEADER}")
    for phase in results:
        print(row(phase))
    for name, (steady, peak) in memory.items():
        print(f"{name} RSS: {steady:.0f} MB steady, {peak:.0f} MB peak")
    by = {(p.peer, p.kind, p.rate): p for p in results}
    for kind in KINDS:
        for rate in args.rates:
            base = by.get(("none", kind, rate))
            for name in peers:
                p = by.get((name, kind, rate))
                if base is None or p is None or name == "none" or not base.sent.times:
                    continue
                print(
                    f"{name} / none, {kind} at {rate:.0f}/s: p99 "
                    f"{p.quantile(0.99) / base.quantile(0.99):.1f}x, p99.9 "
                    f"{p.quantile(0.999) / base.quantile(0.999):.1f}x"
                )
    for name, why in failures.items():
        print(f"{name}: MISSING from the table: {why}")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
