"""The mutating step's match condition (``gpumix.kube.scope.may_mutate``) is a
necessary condition: whenever the mutating step would patch an object or warn about
it, the condition sends it. Checked on generated Deployments (overlapping, first of a
model group, already isolated, pinned with another value, long names, UPDATEs that drop
or keep the isolation labels) and autoscalers of every kind (ceiling absent, 0, set,
of the wrong type), against a cluster where the fixes do apply."""

from __future__ import annotations

from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

import gpumix.admission
from gpumix.admission import AdmissionRequest, Verdict, review
from gpumix.kube.policy import DEPLOYMENT_LABEL, GPU_TYPE_LABEL, Policy
from gpumix.kube.scope import isolation_complete, may_mutate
from gpumix.kube.snapshot import Snapshot

POLICY = Policy(mode="enforce")
NAMESPACE = "default"
LONG_NAME = "a" * 70
NAMES = ["llama", "mistral", "qwen-7b", LONG_NAME, "x.y"]
PRODUCTS = ["NVIDIA-A100", "NVIDIA-H100", "NVIDIA-L4"]


def _deployment(
    name: str,
    selector: dict[str, str],
    pod_labels: dict[str, str],
    *,
    product: str | None = None,
    gpus: int = 1,
    labels: dict[str, str] | None = None,
    expressions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {"containers": [{"name": "engine", "image": "vllm"}]}
    if gpus:
        pod_spec["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    if product:
        pod_spec["nodeSelector"] = {"nvidia.com/gpu.product": product}
    sel: dict[str, Any] = {"matchLabels": selector}
    if expressions:
        sel["matchExpressions"] = expressions
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels or {}},
        "spec": {
            "selector": sel,
            "template": {"metadata": {"labels": {**selector, **pod_labels}}, "spec": pod_spec},
        },
    }


def _cluster() -> Snapshot:
    """Broad and isolated Deployments the generated ones overlap (or not)."""
    return Snapshot.from_objects(
        [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": NAMESPACE, "labels": {"gpumix.io/mode": "enforce"}},
            },
            _deployment(
                "isolated-a100",
                {"app": "llm", DEPLOYMENT_LABEL: "isolated-a100"},
                {GPU_TYPE_LABEL: "NVIDIA-A100", "gpumix.io/model": "llama"},
                product="NVIDIA-A100",
                labels={"gpumix.io/model": "llama"},
            ),
            _deployment("broad-l4", {"app": "chat"}, {}, product="NVIDIA-L4"),
        ],
        POLICY,
    )


label_values = st.sampled_from(["llm", "chat", "other"])
pins = st.one_of(st.none(), st.sampled_from([*NAMES, "elsewhere"]))


@st.composite
def deployments(draw: st.DrawFn, name: str) -> dict[str, Any]:
    selector: dict[str, str] = {}
    if draw(st.booleans()):
        selector["app"] = draw(label_values)
    selector_pin = draw(st.one_of(st.none(), st.just(name), pins))
    if selector_pin is not None:
        selector[DEPLOYMENT_LABEL] = selector_pin
    if not selector:
        selector["app"] = "llm"
    pod: dict[str, str] = {}
    template_pin = draw(st.one_of(st.just(selector_pin), st.just(name), pins))
    if template_pin is not None:
        pod[DEPLOYMENT_LABEL] = template_pin
    if draw(st.booleans()):
        pod[GPU_TYPE_LABEL] = draw(st.sampled_from(PRODUCTS))
    labels = (
        {"gpumix.io/model": draw(st.sampled_from(["llama", "qwen"]))} if draw(st.booleans()) else {}
    )
    expressions = (
        [{"key": "tier", "operator": draw(st.sampled_from(["Exists", "DoesNotExist"]))}]
        if draw(st.booleans())
        else None
    )
    obj = _deployment(
        name,
        selector,
        pod,
        product=draw(st.one_of(st.none(), st.sampled_from(PRODUCTS))),
        gpus=draw(st.sampled_from([0, 1, 2])),
        labels=labels,
        expressions=expressions,
    )
    return obj


AUTOSCALERS = {
    "HorizontalPodAutoscaler": ("autoscaling", "v2", "maxReplicas"),
    "ScaledObject": ("keda.sh", "v1alpha1", "maxReplicaCount"),
    "PodAutoscaler": ("autoscaling.aibrix.ai", "v1alpha1", "maxReplicas"),
}
ceilings = st.sampled_from([None, 0, 4, -1, "4", True, 4.0])


@st.composite
def autoscalers(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    kind = draw(st.sampled_from(sorted(AUTOSCALERS)))
    group, version, field = AUTOSCALERS[kind]
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "broad-l4"}
    }
    ceiling = draw(ceilings)
    if ceiling is not None:
        spec[field] = ceiling
    obj = {
        "apiVersion": f"{group}/{version}",
        "kind": kind,
        "metadata": {"name": "scaler", "namespace": NAMESPACE},
        "spec": spec,
    }
    return group, obj


def _request(
    group: str, kind: str, operation: str, obj: dict[str, Any], old: dict[str, Any] | None
) -> AdmissionRequest:
    version = obj["apiVersion"].split("/")[-1]
    return {
        "uid": "u",
        "kind": {"group": group, "version": version, "kind": kind},
        "name": obj["metadata"]["name"],
        "namespace": NAMESPACE,
        "operation": operation,
        "subResource": "",
        "object": obj,
        "oldObject": old,
    }


def _unfiltered(request: AdmissionRequest, snap: Snapshot) -> Verdict:
    """The mutating step's verdict without the condition (as before it existed)."""
    with mock.patch.object(gpumix.admission, "may_mutate", lambda *a: True):
        return review(request, snap, POLICY, "mutate")


def _check(request: AdmissionRequest, snap: Snapshot) -> bool:
    """Asserts the property for one request; returns whether the step acted."""
    verdict = _unfiltered(request, snap)
    acted = verdict.shape == "patched" or bool(verdict.warnings)
    sent = may_mutate(
        request["kind"]["group"], request["operation"], request["object"], request["oldObject"]
    )
    if acted:
        assert sent, (request, verdict)
    filtered = review(request, snap, POLICY, "mutate")
    if sent:
        assert filtered == verdict
    else:
        assert filtered.shape == "allowed" and not filtered.patch and not filtered.warnings
    return acted


SNAP = _cluster()


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(NAMES), data=st.data())
def test_a_deployment_create_the_step_would_change_is_sent(name: str, data: st.DataObject) -> None:
    obj = data.draw(deployments(name))
    _check(_request("apps", "Deployment", "CREATE", obj, None), SNAP)


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(NAMES), data=st.data())
def test_a_deployment_update_the_step_would_change_is_sent(name: str, data: st.DataObject) -> None:
    old = data.draw(deployments(name))
    new = data.draw(st.one_of(st.just(old), deployments(name)))
    _check(_request("apps", "Deployment", "UPDATE", new, old), SNAP)


@settings(max_examples=200, deadline=None)
@given(scaler=autoscalers(), operation=st.sampled_from(["CREATE", "UPDATE"]))
def test_an_autoscaler_the_step_would_change_is_sent(
    scaler: tuple[str, dict[str, Any]], operation: str
) -> None:
    group, obj = scaler
    old = obj if operation == "UPDATE" else None
    _check(_request(group, obj["kind"], operation, obj, old), SNAP)


def test_the_corpus_holds_both_answers() -> None:
    """The generators reach writes the step changes and writes it leaves alone."""
    isolated = _deployment(
        "llama", {"app": "llm", DEPLOYMENT_LABEL: "llama"}, {GPU_TYPE_LABEL: "NVIDIA-H100"}
    )
    assert isolation_complete(isolated)
    assert not _check(_request("apps", "Deployment", "CREATE", isolated, None), SNAP)
    # pinned, but to another value in the template: the fix rewrites it
    other = _deployment(
        "llama",
        {"app": "llm", DEPLOYMENT_LABEL: "llama"},
        {GPU_TYPE_LABEL: "NVIDIA-H100"},
    )
    other["spec"]["template"]["metadata"]["labels"][DEPLOYMENT_LABEL] = "mistral"
    assert not isolation_complete(other)
    broad = _deployment("qwen-7b", {"app": "llm"}, {}, product="NVIDIA-H100")
    assert _check(_request("apps", "Deployment", "CREATE", broad, None), SNAP)
    # a name too long for a label value gets a hashed pin, even when pinned to the name
    long_pin = _deployment(LONG_NAME, {DEPLOYMENT_LABEL: LONG_NAME}, {GPU_TYPE_LABEL: "L4"})
    assert not isolation_complete(long_pin)
    # UPDATE restoring what a re-apply dropped
    dropped = _deployment("llama", {"app": "llm"}, {}, product="NVIDIA-H100")
    assert _check(_request("apps", "Deployment", "UPDATE", dropped, isolated), SNAP)
    assert not _check(_request("apps", "Deployment", "UPDATE", isolated, isolated), SNAP)
    hpa_group, hpa = (
        "autoscaling",
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "h", "namespace": NAMESPACE},
            "spec": {
                "scaleTargetRef": {"kind": "Deployment", "name": "broad-l4"},
                "maxReplicas": 0,
            },
        },
    )
    assert _check(_request(hpa_group, "HorizontalPodAutoscaler", "CREATE", hpa, None), SNAP)
    hpa["spec"]["maxReplicas"] = 3
    assert not _check(_request(hpa_group, "HorizontalPodAutoscaler", "CREATE", hpa, None), SNAP)
