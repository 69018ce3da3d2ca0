"""The HTTP layer over real TLS: happy paths, every bad-input class, probes, metrics."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import jsonpatch
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from webhook_kit import (
    client_context,
    decoded_patch,
    deployment,
    hpa,
    http_exchange,
    namespace,
    review_body,
    serve_app,
    snapshot,
)

from gpumix.kube.policy import Policy
from gpumix.kube.snapshot import Snapshot
from gpumix.webhook.metrics import WebhookMetrics
from gpumix.webhook.server import (
    MAX_BODY_BYTES,
    SERVER_NAME,
    StaticSource,
    WebhookState,
    make_server,
)
from gpumix.webhook.settings import TLSSettings
from gpumix.webhook.tls import CertHolder, EphemeralCerts


@dataclass
class Served:
    url: str
    http: aiohttp.ClientSession
    state: WebhookState
    source: StaticSource
    tls: ssl.SSLContext

    async def post(self, path: str, body: object) -> tuple[int, dict[str, Any]]:
        async with self.http.post(self.url + path, json=body) as resp:
            return resp.status, await resp.json()


A100 = "NVIDIA-A100-SXM4-80GB"
A40 = "NVIDIA-A40"


def cluster() -> Snapshot:
    return snapshot(
        namespace("default"),
        namespace("relaxed", labels={"gpumix.io/mode": "warn"}),
        namespace("capped", annotations={"gpumix.io/default-max-replicas": "7"}),
        deployment("llama-a100", gpu_product=A100),
        deployment(
            "llama-a100-iso",
            "iso",
            selector={
                "model.aibrix.ai/name": "llama2-7b",
                "gpumix.io/deployment": "llama-a100-iso",
            },
            gpu_product=A100,
        ),
    )


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    metrics = WebhookMetrics()
    holder = CertHolder(metrics)
    certs = EphemeralCerts(TLSSettings(extra_sans=("127.0.0.1",)), holder, time.time)
    await certs.start()
    source = StaticSource(cluster())
    state = WebhookState(Policy(), source, metrics, certs)
    assert certs.bundle is not None
    try:
        async with serve_app(make_server(state, lingering_time=0.5), holder.context) as url:
            tls = client_context(certs.bundle.ca_pem)
            connector = aiohttp.TCPConnector(ssl=tls)
            async with aiohttp.ClientSession(connector=connector) as http:
                yield Served(url, http, state, source, tls)
    finally:
        await certs.stop()


# --------------------------------------------------------------------------- happy paths


async def test_validate_denies_overlap_across_gpu_types_and_names_both(served: Served) -> None:
    body = review_body(deployment("llama-a40", gpu_product=A40), uid="u-1")
    status, out = await served.post("/validate", body)
    assert status == 200
    response = out["response"]
    assert response["uid"] == "u-1"
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    message = response["status"]["message"]
    assert "llama-a40" in message and "llama-a100" in message
    assert "model.aibrix.ai/name=llama2-7b" in message
    assert "gpumix.io/deployment" in message


async def test_mutate_fixes_when_the_fix_provably_removes_the_overlap(served: Served) -> None:
    obj = deployment("llama-a40-iso", "iso", gpu_product=A40)
    status, out = await served.post("/mutate", review_body(obj, uid="u-2"))
    assert status == 200 and out["response"]["uid"] == "u-2"
    assert out["response"]["allowed"] is True
    assert out["response"]["patchType"] == "JSONPatch"
    fixed = jsonpatch.apply_patch(obj, decoded_patch(out))
    assert fixed["spec"]["selector"]["matchLabels"]["gpumix.io/deployment"] == "llama-a40-iso"
    labels = fixed["spec"]["template"]["metadata"]["labels"]
    assert labels["gpumix.io/deployment"] == "llama-a40-iso"
    assert labels["gpumix.io/gpu-type"] == A40
    # the validating call then sees the fixed object and allows it
    status, out = await served.post("/validate", review_body(fixed, uid="u-3"))
    assert out["response"]["allowed"] is True and "status" not in out["response"]


async def test_mutate_leaves_an_unfixable_overlap_to_validation(served: Served) -> None:
    _, out = await served.post("/mutate", review_body(deployment("llama-a40", gpu_product=A40)))
    assert out["response"]["allowed"] is True and "patch" not in out["response"]


async def test_disjoint_deployment_is_admitted_untouched(served: Served) -> None:
    obj = deployment("other", selector={"app": "other"}, gpu_product=A40, model="mistral")
    for path in ("/mutate", "/validate"):
        _, out = await served.post(path, review_body(obj))
        assert out["response"]["allowed"] is True
        assert "patch" not in out["response"] and "warnings" not in out["response"]


@pytest.mark.parametrize(("ns", "expected"), [("default", 10), ("capped", 7)])
async def test_mutate_injects_default_ceiling(served: Served, ns: str, expected: int) -> None:
    obj = hpa("llama", "llama-a100", None, ns)
    _, out = await served.post("/mutate", review_body(obj))
    fixed = jsonpatch.apply_patch(obj, decoded_patch(out))
    assert fixed["spec"]["maxReplicas"] == expected
    obj_zero = hpa("llama", "llama-a100", 0, ns)  # HPA v2 sends 0 when the field is absent
    _, out = await served.post("/mutate", review_body(obj_zero))
    assert jsonpatch.apply_patch(obj_zero, decoded_patch(out))["spec"]["maxReplicas"] == expected


async def test_warn_mode_namespace_allows_with_warnings(served: Served) -> None:
    _, out = await served.post("/validate", review_body(hpa("x", "y", 500, "relaxed")))
    assert out["response"]["allowed"] is True
    assert any("max-replicas-above-ceiling" in w for w in out["response"]["warnings"])


async def test_exempt_namespace_is_untouched(served: Served) -> None:
    for path in ("/mutate", "/validate"):
        _, out = await served.post(path, review_body(hpa("x", "y", None, "kube-system")))
        assert out["response"] == {"uid": out["response"]["uid"], "allowed": True}


async def test_dry_run_gets_the_same_answer(served: Served) -> None:
    obj = deployment("llama-a40", gpu_product=A40)
    _, wet = await served.post("/validate", review_body(obj, uid="same"))
    _, dry = await served.post("/validate", review_body(obj, uid="same", dry_run=True))
    assert wet == dry


async def test_update_changing_the_selector_is_denied_with_how_to_recreate(
    served: Served,
) -> None:
    old = deployment("web", "iso", model=None, gpus=1, selector={"app": "web"})
    new = deployment("web", "iso", model=None, gpus=1, selector={"app": "web", "tier": "x"})
    _, out = await served.post("/validate", review_body(new, "UPDATE", old=old, uid="up"))
    response = out["response"]
    assert response["uid"] == "up" and response["allowed"] is False
    message = response["status"]["message"]
    assert "selector-immutable" in message and "recreate" in message


async def test_delete_and_subresources_are_allowed(served: Served) -> None:
    body = review_body(deployment("llama-a40", gpu_product=A40), "DELETE")
    body["request"]["object"] = None
    _, out = await served.post("/validate", body)
    assert out["response"]["allowed"] is True
    body = review_body(deployment("llama-a40", gpu_product=A40), "UPDATE")
    body["request"]["subResource"] = "scale"
    _, out = await served.post("/validate", body)
    assert out["response"]["allowed"] is True


# --------------------------------------------------------------------------- bad input


async def _raw(served: Served, path: str, data: bytes, ctype: str) -> tuple[int, dict[str, Any]]:
    async with served.http.post(
        served.url + path, data=data, headers={"Content-Type": ctype}
    ) as resp:
        return resp.status, json.loads(await resp.read())


BAD_BODIES = [
    pytest.param(
        b'{"a": 1}',
        "text/plain",
        400,
        "Content-Type must be application/json",
        id="wrong-content-type",
    ),
    pytest.param(b"", "application/json", 400, "empty", id="empty"),
    pytest.param(b"{not json", "application/json", 400, "not valid JSON", id="not-json"),
    pytest.param(b"\xff\xfe{}", "application/json", 400, "not valid JSON", id="not-utf8"),
    pytest.param(b"[1, 2]", "application/json", 400, "JSON object", id="array"),
    pytest.param(
        b"[" * 5000 + b"]" * 5000, "application/json", 400, "nests too deeply", id="deep-nesting"
    ),
    pytest.param(
        b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", '
        b'"request": {"operation": "CREATE", "object": {}}}',
        "application/json",
        400,
        "request.uid",
        id="no-uid",
    ),
    pytest.param(
        b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}',
        "application/json",
        400,
        "request is missing",
        id="no-request",
    ),
]


@pytest.mark.parametrize("path", ["/mutate", "/validate"])
@pytest.mark.parametrize(("data", "ctype", "code", "needle"), BAD_BODIES)
async def test_bad_body_without_uid_is_a_clear_400(
    served: Served,
    path: str,
    data: bytes,
    ctype: str,
    code: int,
    needle: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO):
        status, out = await _raw(served, path, data, ctype)
    assert status == code
    assert out["kind"] == "Status" and out["code"] == code and needle in out["message"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_oversized_body_is_413(served: Served) -> None:
    data = b'{"pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
    status, out = await _raw(served, "/validate", data, "application/json")
    assert status == 413 and "7 MiB" in out["message"]


async def test_oversized_chunked_body_is_413(served: Served) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b" " * (1024 * 1024)

    async with served.http.post(
        served.url + "/mutate", data=chunks(), headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 413
        assert "7 MiB" in (await resp.json())["message"]


async def test_body_over_aiohttps_default_cap_is_read(served: Served) -> None:
    """aiohttp reads at most 1 MiB of a body by default; admission bodies go up to 7 MiB."""
    for size in (1024 * 1024 + 1, 3 * 1024 * 1024, MAX_BODY_BYTES - 64 * 1024):
        body = review_body(deployment("big", "solo", model="solo"), uid=f"big-{size}")
        body["request"]["object"]["metadata"]["annotations"] = {"pad": "x" * size}
        data = json.dumps(body).encode()
        assert 1024 * 1024 < len(data) <= MAX_BODY_BYTES
        status, out = await _raw(served, "/validate", data, "application/json")
        assert status == 200 and out["response"]["uid"] == f"big-{size}"
        assert out["response"]["allowed"] is True


async def test_expect_100_continue_is_answered(served: Served) -> None:
    body = review_body(deployment("d"), uid="expect-1")
    async with served.http.post(served.url + "/validate", json=body, expect100=True) as resp:
        assert resp.status == 200
        assert (await resp.json())["response"]["uid"] == "expect-1"
    async with served.http.post(
        served.url + "/validate", json=body, headers={"Expect": "something-else"}
    ) as resp:
        assert resp.status == 417
        assert resp.headers["Content-Type"] == "application/json"
        out = await resp.json()
        assert out["kind"] == "Status" and out["code"] == 417
        assert out["reason"] == "ExpectationFailed" and "something-else" in out["message"]


def _review_with(uid: str, **changes: object) -> dict[str, Any]:
    body = review_body(deployment("d"), uid=uid)
    for key, value in changes.items():
        if key.startswith("request."):
            sub = key.removeprefix("request.")
            if value is None:
                body["request"].pop(sub)
            else:
                body["request"][sub] = value
        else:
            body[key] = value
    return body


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"apiVersion": "admission.k8s.io/v1beta1"}, "apiVersion must be admission.k8s.io/v1"),
        ({"kind": "Review"}, "kind must be AdmissionReview"),
        ({"request.object": None}, "request.object"),
        ({"request.object": "text"}, "request.object"),
        ({"request.operation": "PATCH"}, "operation"),
        ({"request.kind": None}, "request.kind"),
        ({"request.oldObject": [1]}, "oldObject"),
    ],
)
async def test_bad_review_with_uid_echoes_uid(
    served: Served, changes: dict[str, Any], needle: str
) -> None:
    body = _review_with("uid-42", **{k.replace("__", "."): v for k, v in changes.items()})
    status, out = await served.post("/validate", body)
    assert status == 200
    assert out["kind"] == "AdmissionReview"
    response = out["response"]
    assert response["uid"] == "uid-42"
    assert response["allowed"] is False
    assert response["status"]["code"] == 400 and needle in response["status"]["message"]


async def test_deeply_nested_object_with_uid_is_a_400_review(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    body = review_body(deployment("deep", "solo", model="solo"), uid="deep-1")
    nested: dict[str, Any] = {}
    body["request"]["object"]["spec"]["template"]["spec"]["extra"] = nested
    for _ in range(600):
        nested["x"] = {}
        nested = nested["x"]
    answers = []
    for path in ("/mutate", "/validate"):
        status, out = await served.post(path, body)
        assert status == 200 and out["response"]["uid"] == "deep-1"
        answers.append(out["response"])
    # reading it needs no recursion (validate allows); copying it for a fix does (mutate)
    assert answers[1]["allowed"] is True
    if not answers[0]["allowed"]:
        assert answers[0]["status"]["code"] == 400
        assert "nests too deeply" in answers[0]["status"]["message"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("literal", ['"inf"', '"1e400"', '"10e399"', "1e400", "Infinity", "NaN"])
async def test_gpu_amount_gpumix_cannot_read_is_a_denial_naming_the_field_not_a_500(
    served: Served, literal: str, caplog: pytest.LogCaptureFixture
) -> None:
    body = review_body(deployment("huge", "solo", model="solo"), uid="huge-1")
    container = body["request"]["object"]["spec"]["template"]["spec"]["containers"][0]
    container["resources"] = {"limits": {"nvidia.com/gpu": "PLACEHOLDER"}}
    raw = json.dumps(body).replace('"PLACEHOLDER"', literal).encode()
    for path in ("/mutate", "/validate"):
        async with served.http.post(
            served.url + path, data=raw, headers={"Content-Type": "application/json"}
        ) as resp:
            assert resp.status == 200
            answer = (await resp.json())["response"]
        assert answer["uid"] == "huge-1"
    assert answer["allowed"] is False and answer["status"]["code"] == 403
    assert (
        "spec.template.spec.containers[0].resources.limits[nvidia.com/gpu]"
        in answer["status"]["message"]
    )
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_error_messages_quoting_the_request_are_clipped(served: Served) -> None:
    body = review_body(deployment("d"), uid="big")
    body["apiVersion"] = "x" * 100_000
    status, out = await served.post("/validate", body)
    assert status == 200 and out["response"]["uid"] == "big"
    message = out["response"]["status"]["message"]
    assert message.startswith("apiVersion must be") and len(message) <= 1000


def _nested(depth: int) -> str:
    return '{"x":' * depth + "1" + "}" * depth


@pytest.mark.parametrize(
    "field", ["kind", "kind.kind", "kind.group", "name", "namespace", "operation"]
)
@pytest.mark.parametrize("path", ["/mutate", "/validate"])
async def test_field_nested_a_thousand_levels_is_a_400_review(
    served: Served, field: str, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A field the API server sends as a string, nested 1,000 levels deep instead (the
    fast decoder reads it): named by its type, never printed or copied."""
    body = review_body(deployment("d"), uid="nest-1")
    marker = '"NESTED"'
    parent, _, key = f"request.{field}".rpartition(".")
    target = body
    for part in parent.split("."):
        target = target[part]
    target[key] = "NESTED"
    data = json.dumps(body).replace(marker, _nested(1000)).encode()
    with caplog.at_level(logging.INFO):
        status, out = await _raw(served, path, data, "application/json")
    assert status == 200
    response = out["response"]
    assert response["uid"] == "nest-1" and response["allowed"] is False
    assert response["status"]["code"] == 400
    assert f"request.{field}" in response["status"]["message"]
    assert "an object" in response["status"]["message"] or field == "kind"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("compress", [False, True], ids=["not-gzip", "gzip"])
async def test_compressed_body_is_415(
    served: Served, compress: bool, caplog: pytest.LogCaptureFixture
) -> None:
    data = json.dumps(review_body(deployment("d"), uid="gz")).encode()
    if compress:
        data = gzip.compress(data)
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with served.http.post(served.url + "/validate", data=data, headers=headers) as resp:
        assert resp.status == 415
        out = json.loads(await resp.read())
    assert out["kind"] == "Status" and out["reason"] == "UnsupportedMediaType"
    assert "Content-Encoding 'gzip' is not supported" in out["message"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_identity_content_encoding_is_read(served: Served) -> None:
    data = json.dumps(review_body(deployment("d", "solo", model="solo"), uid="id")).encode()
    headers = {"Content-Type": "application/json", "Content-Encoding": "identity"}
    async with served.http.post(served.url + "/validate", data=data, headers=headers) as resp:
        assert resp.status == 200 and (await resp.json())["response"]["uid"] == "id"


def _post_head(path: str, length: int | None, extra: str = "") -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST {path} HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\n"
        f"{framing}\r\n{extra}\r\n"
    ).encode()


async def _metric(served: Served, line_start: str) -> float:
    text = served.state.metrics.render()[0].decode()
    return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(line_start))


async def test_client_hanging_up_mid_body_is_no_error(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    refused = 'gpumix_webhook_requests_refused_total{reason="body-incomplete"}'
    before = await _metric(served, refused)
    host, port = served.url.split("://")[1].rsplit(":", 1)
    with caplog.at_level(logging.DEBUG):
        for sent in (0, 1000, 200_000):
            _, writer = await asyncio.open_connection(host, int(port), ssl=served.tls)
            writer.write(_post_head("/validate", 1_000_000) + b" " * sent)
            await writer.drain()
            await asyncio.sleep(0.05)  # the handler is reading the body
            writer.transport.abort()
        for _ in range(100):
            if await _metric(served, refused) >= before + 3:
                break
            await asyncio.sleep(0.02)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [r for r in caplog.records if r.exc_info]
    assert await _metric(served, refused) == before + 3
    _, out = await served.post("/validate", review_body(deployment("d"), uid="after"))
    assert out["response"]["uid"] == "after"


@pytest.mark.parametrize(
    "chunks",
    [b"zz\r\n{}\r\n0\r\n\r\n", b"5\r\n{}\r\n0\r\n\r\n"],
    ids=["bad-size", "size-mismatch"],
)
async def test_broken_chunked_body_is_a_400_status(
    served: Served, chunks: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    status, headers, raw = await http_exchange(
        served.url, _post_head("/validate", None) + chunks, served.tls
    )
    assert status == 400 and headers["content-type"] == "application/json"
    assert json.loads(raw)["kind"] == "Status"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /validate HTTP/1.1\r\nHost: w\r\nBad Header\r\n\r\n",
        b"POST /validate HTTP/1.1\r\nHost: w\r\nX: " + b"a" * 9000 + b"\r\n\r\n",
        b"POST /validate HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n{}",
        b"\x16\x03\x01garbage\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\n\r\n",
    ],
    ids=["no-colon", "long-header", "two-lengths", "not-http", "bad-version"],
)
async def test_requests_aiohttp_refuses_get_a_status_body(
    served: Served, request_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    status, headers, raw = await http_exchange(served.url, request_bytes, served.tls)
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert headers["server"] == SERVER_NAME
    out = json.loads(raw)
    assert out["kind"] == "Status" and out["code"] == 400 and out["reason"] == "BadRequest"
    assert out["message"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_no_response_discloses_software_versions(served: Served) -> None:
    answers = []
    for method, path in (("POST", "/validate"), ("GET", "/nope"), ("PUT", "/mutate")):
        async with served.http.request(method, served.url + path, json={}) as resp:
            answers.append(resp.headers.get("Server"))
    body = review_body(deployment("d"))
    async with served.http.post(served.url + "/validate", json=body) as resp:
        answers.append(resp.headers.get("Server"))
    for path in ("/healthz", "/readyz", "/metrics"):
        async with served.http.get(served.url + path) as resp:
            answers.append(resp.headers.get("Server"))
    _, headers, _ = await http_exchange(served.url, b"BAD\r\n\r\n", served.tls)
    answers.append(headers.get("server"))
    assert answers == [SERVER_NAME] * len(answers)


# --------------------------------------------------------------------------- probes, metrics


async def test_readyz_needs_sync_and_certificate(served: Served) -> None:
    served.source.synced = False
    async with served.http.get(served.url + "/readyz") as resp:
        assert resp.status == 503 and "not synced" in await resp.text()
    served.source.synced = True
    async with served.http.get(served.url + "/readyz") as resp:
        assert resp.status == 200
    async with served.http.get(served.url + "/healthz") as resp:
        assert resp.status == 200


async def test_readyz_false_without_certificate() -> None:
    holder = CertHolder()
    state = WebhookState(Policy(), StaticSource(), WebhookMetrics(), holder)
    async with (
        serve_app(make_server(state, admission=False, lingering_time=0.5)) as url,
        aiohttp.ClientSession() as s,
    ):
        async with s.get(url + "/readyz") as resp:
            assert resp.status == 503 and "certificate" in await resp.text()
        async with s.post(url + "/validate", json={}) as resp:
            assert resp.status in (404, 405)  # the probe server has no admission routes


# --------------------------------------------------------------------------- routing


async def test_unknown_path_is_404(served: Served) -> None:
    for method, path in (("GET", "/"), ("POST", "/mutate/"), ("POST", "/admit"), ("GET", "/x")):
        async with served.http.request(method, served.url + path, json={}) as resp:
            assert resp.status == 404, (method, path)
            assert await resp.text() == "404: Not Found"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/mutate", "POST"),
        ("PUT", "/validate", "POST"),
        ("HEAD", "/validate", "POST"),
        ("POST", "/healthz", "GET,HEAD"),
        ("DELETE", "/readyz", "GET,HEAD"),
        ("POST", "/metrics", "GET,HEAD"),
    ],
)
async def test_wrong_method_is_405_with_allow(
    served: Served, method: str, path: str, allow: str
) -> None:
    async with served.http.request(method, served.url + path) as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == allow


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_head_is_served_where_get_is(served: Served, path: str) -> None:
    async with served.http.get(served.url + path) as got:
        assert got.status == 200
        content_type = got.headers["Content-Type"]
    async with served.http.head(served.url + path) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == content_type
        assert await resp.read() == b""


async def test_probe_server_has_no_admission_routes() -> None:
    state = WebhookState(Policy(), StaticSource(), WebhookMetrics())
    async with (
        serve_app(make_server(state, admission=False, lingering_time=0.5)) as url,
        aiohttp.ClientSession() as s,
    ):
        for path in ("/mutate", "/validate"):
            async with s.post(url + path, json={}) as resp:
                assert resp.status == 404
        async with s.head(url + "/healthz") as resp:
            assert resp.status == 200
        async with s.post(url + "/healthz") as resp:
            assert resp.status == 405 and resp.headers["Allow"] == "GET,HEAD"


async def test_unrouted_requests_are_answered_as_aiohttps_router_does() -> None:
    """The same routes on a ``web.Application``: same status, ``Allow`` and body."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.add_routes([web.get(p, ok) for p in ("/healthz", "/readyz", "/metrics")])
    app.add_routes([web.post(p, ok) for p in ("/mutate", "/validate")])
    reference = TestServer(app)
    await reference.start_server()
    state = WebhookState(Policy(), StaticSource(), WebhookMetrics())
    cases = [
        (method, path)
        for method in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")
        for path in ("/", "/nope", "/healthz/", "/mutate/", "/mutate", "/validate", "/metrics")
    ] + [("HEAD", "/healthz"), ("HEAD", "/readyz")]
    try:
        async with (
            serve_app(make_server(state, lingering_time=0.5)) as url,
            aiohttp.ClientSession() as s,
        ):
            for method, path in cases:
                answers = []
                for base in (url, str(reference.make_url("/"))):
                    async with s.request(method, base.rstrip("/") + path) as resp:
                        answers.append((resp.status, resp.headers.get("Allow"), await resp.read()))
                ours, theirs = answers
                if theirs[0] in (404, 405):
                    assert ours == theirs, (method, path)
                else:  # routed: the handlers differ, the routing does not
                    assert ours[0] not in (404, 405), (method, path, ours)
    finally:
        await reference.close()


async def test_metrics_content(served: Served) -> None:
    await served.post("/validate", review_body(deployment("llama-a40", gpu_product=A40)))
    await served.post("/mutate", review_body(hpa("h", "llama-a100")))
    await _raw(served, "/validate", b"nope", "application/json")
    async with served.http.get(served.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    assert (
        'gpumix_admission_requests_total{kind="Deployment",operation="CREATE",'
        'path="/validate",verdict="denied"} 1.0'
    ) in text
    assert (
        'gpumix_admission_requests_total{kind="HorizontalPodAutoscaler",operation="CREATE",'
        'path="/mutate",verdict="patched"} 1.0'
    ) in text
    assert (
        'gpumix_admission_requests_total{kind="unknown",operation="unknown",'
        'path="/validate",verdict="errored"} 1.0'
    ) in text
    assert 'gpumix_admission_findings_total{mode="enforce",rule="selector-overlap",' in text
    assert 'gpumix_admission_findings_total{mode="enforce",rule="missing-max-replicas",' in text
    assert 'gpumix_admission_duration_seconds_bucket{kind="Deployment",le="0.01",' in text
    expiry = [
        line
        for line in text.splitlines()
        if line.startswith("gpumix_webhook_cert_expiry_timestamp_seconds ")
    ]
    assert expiry and float(expiry[0].split()[1]) > time.time()


async def test_metrics_registries_are_per_app() -> None:
    a, b = WebhookMetrics(), WebhookMetrics()
    a.observe("/validate", "Deployment", "CREATE", "allowed", 0.001)
    assert b'verdict="allowed"' in a.render()[0]
    assert b'verdict="allowed"' not in b.render()[0]


def test_review_does_not_block_the_loop_long() -> None:
    """Review of a Deployment against 2,000 cached ones stays far below a millisecond budget."""
    from gpumix.admission import review
    from gpumix.webhook.wire import parse_review

    objs = [
        deployment(f"m{i}-{t}", f"ns{i % 20}", model=f"m{i}", gpu_product=t)
        for i in range(1000)
        for t in (A100, A40)
    ]
    snap = snapshot(*objs)
    request = parse_review(review_body(deployment("m5-new", "ns5", model="m5")))
    policy = Policy()
    start = time.perf_counter()
    for _ in range(200):
        review(request, snap, policy, "validate")
        review(request, snap, policy, "mutate")
    per_call = (time.perf_counter() - start) / 400
    assert per_call < 0.005, f"{per_call * 1000:.2f} ms per review"


# --------------------------------------------------------------------------- JSON edge cases


async def test_json_the_fast_decoder_refuses_is_read_as_before(served: Served) -> None:
    """orjson refuses a lone surrogate escape and NaN, which the standard library reads:
    such a body is still reviewed, and an answer that quotes it is valid JSON."""
    obj = deployment(
        "odd", "odd", selector={"model.aibrix.ai/name": "x\ud800"}, template={"app": "y"}
    )
    obj["spec"]["replicas"] = float("nan")
    data = json.dumps(review_body(obj, uid="odd-1")).encode()
    assert b"\\ud800" in data and b"NaN" in data
    status, out = await _raw(served, "/mutate", data, "application/json")
    assert status == 200 and out["response"]["uid"] == "odd-1"
    assert out["response"]["allowed"] is True
    status, out = await _raw(served, "/validate", data, "application/json")
    assert status == 200 and out["response"]["uid"] == "odd-1"
    assert out["response"]["allowed"] is False
    assert "x\ud800" in out["response"]["status"]["message"]


async def test_answers_are_compact_json_with_utf8_text(served: Served) -> None:
    body = review_body(deployment("llama-a40", gpu_product=A40), uid="u-ü")
    data = json.dumps(body).encode()
    async with served.http.post(
        served.url + "/validate", data=data, headers={"Content-Type": "application/json"}
    ) as resp:
        raw = await resp.read()
    out = json.loads(raw)
    assert out["response"]["uid"] == "u-ü" and out["response"]["allowed"] is False
    assert raw == json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode()
