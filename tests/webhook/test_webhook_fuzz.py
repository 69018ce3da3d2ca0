"""Fuzzing (hypothesis): random and malformed AdmissionReview bodies and random
objects/selectors never give a 500, an error in the log, or lose the request's uid."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from webhook_kit import deployment, hpa, node, snapshot

from gpumix.kube.objects import view_of
from gpumix.kube.policy import Policy
from gpumix.kube.snapshot import Snapshot
from webhook.metrics import WebhookMetrics
from webhook.review import AdmissionRequest, Phase, parse_review, review
from webhook.server import StaticSource, WebhookState, make_server

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --------------------------------------------------------------------------- strategies

label_keys = st.sampled_from(
    [
        "app",
        "model.aibrix.ai/name",
        "gpumix.io/deployment",
        "gpumix.io/gpu-type",
        "tier",
        "nvidia.com/gpu.product",
        "",
        "bad key!",
        "a/b/c",
    ]
)
label_values = st.one_of(
    st.sampled_from(["a", "b", "llama", "NVIDIA-A40", "", "x" * 70]), st.text(max_size=8)
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False),
    st.text(max_size=10),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The value, or (one time in four) something of the wrong type."""
    return st.one_of(strategy, strategy, strategy, json_values)


requirements = st.fixed_dictionaries(
    {
        "key": maybe(label_keys),
        "operator": maybe(st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist", "Gt", ""])),
    },
    optional={"values": maybe(st.lists(maybe(label_values), max_size=3))},
)
selectors = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "matchLabels": maybe(st.dictionaries(label_keys, maybe(label_values), max_size=3)),
            "matchExpressions": maybe(st.lists(maybe(requirements), max_size=3)),
        },
    ),
    json_values,
)
labels = maybe(st.dictionaries(label_keys, maybe(label_values), max_size=4))


@st.composite
def deployments(draw: st.DrawFn) -> dict[str, Any]:
    resources = draw(
        maybe(
            st.fixed_dictionaries(
                {},
                optional={
                    "limits": maybe(
                        st.dictionaries(
                            st.sampled_from(
                                ["nvidia.com/gpu", "amd.com/gpu", "cpu", "nvidia.com/mig-1g.10gb"]
                            ),
                            maybe(st.one_of(st.integers(-2, 9), st.sampled_from(["1", "x", "2"]))),
                            max_size=2,
                        )
                    )
                },
            )
        )
    )
    pod_spec = {
        "containers": draw(
            maybe(
                st.lists(
                    st.fixed_dictionaries(
                        {"name": st.just("c")}, optional={"resources": st.just(resources)}
                    ),
                    max_size=2,
                )
            )
        ),
        "nodeSelector": draw(labels),
    }
    return {
        "apiVersion": draw(st.sampled_from(["apps/v1", "apps/v1", "apps/v1beta1", "v1"])),
        "kind": "Deployment",
        "metadata": draw(
            maybe(
                st.fixed_dictionaries(
                    {
                        "name": maybe(st.sampled_from(["a", "b", "c", ""])),
                        "namespace": maybe(st.sampled_from(["default", "kube-system", "t", ""])),
                    },
                    optional={"labels": labels},
                )
            )
        ),
        "spec": draw(
            maybe(
                st.fixed_dictionaries(
                    {
                        "selector": selectors,
                        "template": maybe(
                            st.fixed_dictionaries(
                                {
                                    "metadata": maybe(st.fixed_dictionaries({"labels": labels})),
                                    "spec": maybe(st.just(pod_spec)),
                                }
                            )
                        ),
                    },
                    optional={"replicas": scalars},
                )
            )
        ),
    }


@st.composite
def autoscalers(draw: st.DrawFn) -> dict[str, Any]:
    api, kind, field = draw(
        st.sampled_from(
            [
                ("autoscaling/v2", "HorizontalPodAutoscaler", "maxReplicas"),
                ("autoscaling/v1", "HorizontalPodAutoscaler", "maxReplicas"),
                ("keda.sh/v1alpha1", "ScaledObject", "maxReplicaCount"),
                ("autoscaling.aibrix.ai/v1alpha1", "PodAutoscaler", "maxReplicas"),
            ]
        )
    )
    spec = draw(
        maybe(
            st.fixed_dictionaries(
                {
                    "scaleTargetRef": maybe(
                        st.fixed_dictionaries(
                            {"name": maybe(st.sampled_from(["a", "b", ""]))},
                            optional={"kind": maybe(st.just("Deployment"))},
                        )
                    )
                },
                optional={field: maybe(st.integers(-5, 10**12)), "minReplicas": scalars},
            )
        )
    )
    return {
        "apiVersion": api,
        "kind": kind,
        "metadata": {"name": draw(st.sampled_from(["h", "", "x"])), "namespace": "t"},
        "spec": spec,
    }


objects = st.one_of(deployments(), autoscalers(), json_values)
uids = st.one_of(st.text(min_size=1, max_size=40), st.none(), st.integers(), st.just(""))


@st.composite
def mostly(draw: st.DrawFn, strategy: st.SearchStrategy[Any]) -> Any:
    """Usually the value, one time in eight something of the wrong type."""
    return draw(json_values) if draw(st.sampled_from(range(8))) == 7 else draw(strategy)


@st.composite
def reviews(draw: st.DrawFn) -> Any:
    """Mostly well-formed AdmissionReviews with some fields wrong or missing."""
    obj = draw(objects)
    kind_of = obj.get("kind", "Thing") if isinstance(obj, dict) else "Thing"
    request = {
        "uid": draw(uids) if draw(st.sampled_from(range(8))) == 7 else draw(st.text(min_size=1)),
        "kind": draw(
            mostly(
                st.fixed_dictionaries(
                    {
                        "group": st.sampled_from(["", "apps", "autoscaling", "keda.sh"]),
                        "version": st.sampled_from(["v1", "v2", "v1alpha1"]),
                        "kind": st.sampled_from([kind_of, kind_of, "Deployment", "Pod"]),
                    }
                )
            )
        ),
        "operation": draw(
            mostly(st.sampled_from(["CREATE", "UPDATE", "CREATE", "DELETE", "CONNECT", "X"]))
        ),
        "namespace": draw(mostly(st.sampled_from(["default", "t", "kube-system"]))),
        "name": draw(mostly(st.sampled_from(["a", "b"]))),
        "object": obj,
        "oldObject": draw(st.one_of(st.none(), objects)),
        "subResource": draw(st.sampled_from(["", "", "", "scale", "status"])),
        "dryRun": draw(st.one_of(st.booleans(), scalars)),
    }
    body = {
        "apiVersion": draw(
            mostly(st.sampled_from(["admission.k8s.io/v1"] * 6 + ["admission.k8s.io/v1beta1"]))
        ),
        "kind": draw(mostly(st.sampled_from(["AdmissionReview"] * 6 + ["Other"]))),
        "request": draw(mostly(st.just(request))),
    }
    if draw(st.sampled_from(range(6))) == 5:
        part, key = draw(
            st.sampled_from(
                [(body, "apiVersion"), (body, "kind"), (body, "request")]
                + [(request, k) for k in request]
            )
        )
        part.pop(key, None)
    return draw(json_values) if draw(st.sampled_from(range(10))) == 9 else body


# --------------------------------------------------------------------------- harness


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class WebhookTestServer(BaseTestServer):
    """aiohttp's test server around ``make_server``, the low-level server as deployed."""

    def __init__(self, state: WebhookState) -> None:
        super().__init__()
        self.state = state

    async def _make_runner(self, **kwargs: Any) -> web.ServerRunner:
        return web.ServerRunner(make_server(self.state, **kwargs))


class Harness:
    """One server and client on a private loop, shared by every example of a test."""

    def __init__(self, snap: Snapshot) -> None:
        self.loop = asyncio.new_event_loop()
        state = WebhookState(Policy(), StaticSource(snap), WebhookMetrics())
        self.client: TestClient[Any, Any] = self.loop.run_until_complete(self._start(state))

    async def _start(self, state: WebhookState) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = TestClient(WebhookTestServer(state))
        await client.start_server()
        return client

    def post(self, path: str, data: bytes, ctype: str = "application/json") -> tuple[int, Any]:
        async def go() -> tuple[int, Any]:
            resp = await self.client.post(path, data=data, headers={"Content-Type": ctype})
            return resp.status, json.loads(await resp.read())

        return self.loop.run_until_complete(go())

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


@pytest.fixture(scope="module")
def harness() -> Iterator[tuple[Harness, _Errors]]:
    snap = snapshot(
        deployment("a", "t", gpu_product="NVIDIA-A100"),
        deployment("b", "t", selector={"app": "b"}, model=None, gpus=0),
        deployment("c", "default"),
        hpa("h", "a", 3, "t"),
        node("n", "NVIDIA-A100", 8),
    )
    errors = _Errors()
    loggers = [logging.getLogger(n) for n in ("gpumix", "aiohttp", "webhook", "")]
    for lg in loggers:
        lg.addHandler(errors)
    h = Harness(snap)
    try:
        yield h, errors
    finally:
        h.close()
        for lg in loggers:
            lg.removeHandler(errors)


def _request_uid(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("request"), dict):
        uid = body["request"].get("uid")
        if isinstance(uid, str):
            return uid
    return ""


def check_answer(status: int, out: Any, uid: str) -> None:
    assert status in (200, 400, 413), status
    if uid:
        assert status == 200, out
    if status == 200:
        assert out["kind"] == "AdmissionReview"
        response = out["response"]
        assert response["uid"] == uid
        assert isinstance(response["allowed"], bool)
        assert response.get("status", {}).get("code", 200) != 500, response
    else:
        assert out["kind"] == "Status" and out["message"]


@settings(FUZZ, max_examples=300)
@given(body=reviews(), path=st.sampled_from(["/mutate", "/validate"]))
def test_random_reviews_never_fail(harness: tuple[Harness, _Errors], body: Any, path: str) -> None:
    h, errors = harness
    status, out = h.post(path, json.dumps(body).encode())
    check_answer(status, out, _request_uid(body))
    assert not errors.records, errors.records[0].getMessage()


@FUZZ
@given(data=st.binary(max_size=300), path=st.sampled_from(["/mutate", "/validate"]))
def test_random_bytes_get_a_clear_400(
    harness: tuple[Harness, _Errors], data: bytes, path: str
) -> None:
    h, errors = harness
    status, out = h.post(path, data)
    if status == 200:  # the bytes happened to be JSON carrying a uid
        check_answer(status, out, _request_uid(json.loads(data)))
    else:
        assert status == 400 and out["kind"] == "Status"
    assert not errors.records


@settings(FUZZ, max_examples=40)
@given(body=reviews(), ctype=st.sampled_from(["text/plain", "", "application/yaml"]))
def test_wrong_content_type_is_400(harness: tuple[Harness, _Errors], body: Any, ctype: str) -> None:
    h, errors = harness
    status, out = h.post("/validate", json.dumps(body).encode(), ctype)
    assert status == 400 and "Content-Type" in out["message"]
    assert not errors.records


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cluster=st.lists(st.one_of(deployments(), autoscalers()), max_size=12),
    request_obj=st.one_of(deployments(), autoscalers()),
    old=st.one_of(st.none(), deployments()),
    operation=st.sampled_from(["CREATE", "UPDATE"]),
)
def test_review_of_random_objects_against_random_clusters_never_raises(
    cluster: list[dict[str, Any]],
    request_obj: dict[str, Any],
    old: dict[str, Any] | None,
    operation: str,
) -> None:
    policy = Policy()
    snap = Snapshot()
    for obj in cluster:
        view = view_of(obj, policy)
        if view is not None:
            snap.put(view)
    body = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u",
            "operation": operation,
            "object": request_obj,
            "oldObject": old,
            "namespace": "t",
            "kind": {"group": "", "version": "v1", "kind": request_obj["kind"]},
        },
    }
    request: AdmissionRequest = parse_review(body)
    phases: tuple[Phase, ...] = ("mutate", "validate")
    for phase in phases:
        verdict = review(request, snap, policy, phase)
        assert verdict.shape in ("allowed", "denied", "patched")
