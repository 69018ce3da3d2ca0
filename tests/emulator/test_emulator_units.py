"""Pure pieces: selectors, patches, schema pruning/validation; and a fuzz of the API."""

from __future__ import annotations

import json
from typing import Any

import pytest
from emulator_helpers import deployment
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpumix.emulator import Emulator
from gpumix.emulator.errors import ApiError
from gpumix.emulator.patch import STRATEGIC_PATCH, apply_patch
from gpumix.emulator.schema import prune, unknown_fields, validate
from gpumix.emulator.selectors import (
    label_selector_matches,
    label_selector_string,
    matches_all,
    parse_label_selector,
)


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("app=web", {"app": "web"}, True),
        ("app==web,tier!=db", {"app": "web", "tier": "db"}, False),
        ("tier!=db", {}, True),
        ("env in (a, b),!canary", {"env": "b"}, True),
        ("env notin (a,b)", {"env": "a"}, False),
        ("env", {}, False),
        ("", {"x": "y"}, True),
    ],
)
def test_label_selector_strings(text: str, labels: dict[str, str], expected: bool) -> None:
    assert matches_all(parse_label_selector(text), labels) is expected


def test_bad_selector_is_400() -> None:
    with pytest.raises(ApiError) as err:
        parse_label_selector("a in b")
    assert err.value.code == 400


def test_structured_selectors() -> None:
    sel = {
        "matchLabels": {"app": "x"},
        "matchExpressions": [{"key": "gpu", "operator": "In", "values": ["a100", "a40"]}],
    }
    assert label_selector_matches(sel, {"app": "x", "gpu": "a40"})
    assert not label_selector_matches(sel, {"app": "x"})
    assert label_selector_matches({}, {})
    assert label_selector_string(sel) == "app=x,gpu in (a100,a40)"


def test_strategic_merge_directives() -> None:
    live = {
        "spec": {
            "containers": [
                {"name": "a", "image": "1", "env": [{"name": "X"}]},
                {"name": "b", "image": "2"},
            ],
            "finalizers": ["one"],
            "args": ["x", "y"],
        }
    }
    patch = {
        "spec": {
            "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
            "containers": [
                {"name": "a", "env": [{"name": "Y", "value": "1"}]},
                {"name": "b", "$patch": "delete"},
            ],
            "finalizers": ["two"],
            "args": ["z"],
        }
    }
    out = apply_patch(STRATEGIC_PATCH, live, patch)
    assert out["spec"]["containers"] == [
        {"name": "a", "image": "1", "env": [{"name": "X"}, {"name": "Y", "value": "1"}]}
    ]
    assert out["spec"]["finalizers"] == ["one", "two"]
    assert out["spec"]["args"] == ["z"]
    assert live["spec"]["args"] == ["x", "y"]  # the input is not changed


SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "required": ["size"],
            "properties": {
                "size": {"type": "integer", "minimum": 1, "maximum": 8},
                "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
                "port": {"x-kubernetes-int-or-string": True},
                "tags": {"type": "array", "maxItems": 1, "items": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
        },
    },
}


def test_schema_validation_and_pruning() -> None:
    obj = {
        "apiVersion": "x/v1",
        "kind": "X",
        "metadata": {"name": "n"},
        "spec": {
            "size": 9,
            "name": "Abcdefg",
            "port": "http",
            "tags": ["a", 1],
            "free": {"any": {"thing": 1}},
            "junk": True,
        },
    }
    causes = {c["field"]: c["message"] for c in validate(obj, SCHEMA)}
    assert "less than or equal to 8" in causes["spec.size"]
    assert "should match" in causes["spec.name"] or "Too long" in causes["spec.name"]
    assert "must be of type string" in causes["spec.tags[1]"]
    assert "Too many" in causes["spec.tags"]
    assert unknown_fields(obj, SCHEMA) == ["spec.junk"]
    pruned = prune(obj, SCHEMA)
    assert "junk" not in pruned["spec"] and pruned["spec"]["free"] == {"any": {"thing": 1}}
    assert pruned["metadata"] == {"name": "n"}
    missing = validate({"spec": {}}, SCHEMA)
    assert missing == [
        {"reason": "FieldValueRequired", "field": "spec.size", "message": "Required value"}
    ]


async def test_in_process_requests_and_deletecollection() -> None:
    emu = Emulator()
    for i in range(3):
        resp = await emu.request(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            {"metadata": {"name": f"c{i}", "labels": {"n": str(i)}}},
        )
        assert resp.status == 201
    resp = await emu.request(
        "DELETE", "/api/v1/namespaces/default/configmaps", query={"labelSelector": "n in (0,1)"}
    )
    assert resp.status == 200 and len(resp.body["items"]) == 2
    assert [c["metadata"]["name"] for c in emu.list("configmaps", "default")] == ["c2"]
    resp = await emu.request("GET", "/api/v1/namespaces/default/configmaps/c2")
    assert resp.body["metadata"]["name"] == "c2"
    resp = await emu.request(
        "POST",
        "/apis/apps/v1/namespaces/default/deployments",
        deployment("web"),
        query={"dryRun": "All"},
    )
    assert resp.status == 201 and emu.get("deployments", "web", "default") is None
    await emu.stop()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
PATHS = st.sampled_from(
    [
        "/apis/apps/v1/namespaces/default/deployments",
        "/apis/apps/v1/namespaces/default/deployments/web",
        "/apis/apps/v1/namespaces/default/deployments/web/scale",
        "/apis/apps/v1/namespaces/default/deployments/web/status",
        "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers",
        "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers/h",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
        "/api/v1/namespaces",
        "/api/v1/namespaces/default/configmaps/c",
        "/api/v1/nodes",
    ]
)
METHODS = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"])
CTYPES = st.sampled_from(
    [
        "application/json",
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/apply-patch+yaml",
        "application/strategic-merge-patch+json",
    ]
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=METHODS,
    path=PATHS,
    ctype=CTYPES,
    body=JSON
    | st.fixed_dictionaries(
        {
            "metadata": st.fixed_dictionaries({"name": st.sampled_from(["web", "h", "c", "x"])}),
            "spec": JSON,
        }
    ),
)
async def test_random_requests_never_500(method: str, path: str, ctype: str, body: Any) -> None:
    emu = Emulator()
    emu.create(deployment("web", namespace="default"))
    resp = await emu.request(method, path, json.dumps(body).encode(), content_type=ctype)
    assert resp.status < 500, resp.body
    if resp.status >= 400:
        assert resp.body["kind"] == "Status" and resp.body["code"] == resp.status


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64))
async def test_random_protobuf_bodies_never_500(data: bytes) -> None:
    emu = Emulator()
    for body in (data, b"k8s\x00" + data):
        resp = await emu.request(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            body,
            content_type="application/vnd.kubernetes.protobuf",
        )
        assert resp.status < 500, resp.body


def test_printer_column_paths_support_index_and_filter() -> None:
    from gpumix.emulator.tables import _path

    obj = {
        "spec": {"mode": "scale"},
        "status": {
            "conditions": [
                {"type": "LoadAvailable", "status": "False"},
                {"type": "Ready", "status": "True"},
            ],
            "plan": [{"deployment": "a100"}],
        },
    }
    assert _path(obj, '.status.conditions[?(@.type=="Ready")].status') == "True"
    assert _path(obj, ".status.conditions[?(@.type=='LoadAvailable')].status") == "False"
    assert _path(obj, '.status.conditions[?(@.type=="Scaling")].status') is None
    assert _path(obj, ".status.plan[0].deployment") == "a100"
    assert _path(obj, ".status.plan[3].deployment") is None
    assert _path(obj, ".spec.mode") == "scale"
    assert _path(obj, ".spec.mode.deeper") is None
