"""The AdmissionReview wire format: ``parse_review`` reads a request, ``to_response``
writes the answer to a decision (``gpumix.webhook.wire``)."""

from __future__ import annotations

import base64
import json

import pytest
from webhook_kit import hpa, pod_autoscaler, review_body, snapshot

from gpumix.admission import Verdict, review
from gpumix.kube.policy import Policy
from gpumix.webhook.wire import ReviewError, parse_review, to_response

POLICY = Policy()


def decide(obj: dict, phase: str) -> Verdict:
    return review(parse_review(review_body(obj)), snapshot(), POLICY, phase)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ([], "JSON object"),
        ({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}, "apiVersion"),
        ({"apiVersion": "admission.k8s.io/v1", "kind": "Review"}, "kind"),
        ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}, "request"),
        (
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {"operation": "CREATE"},
            },
            "uid",
        ),
    ],
)
def test_bad_reviews_raise_a_clear_error(body: object, needle: str) -> None:
    with pytest.raises(ReviewError, match=needle):
        parse_review(body)


def test_missing_object_keeps_the_uid() -> None:
    body = review_body(hpa("h", "d"), uid="abc")
    del body["request"]["object"]
    with pytest.raises(ReviewError) as info:
        parse_review(body)
    assert info.value.uid == "abc"


def test_response_shapes_echo_the_uid() -> None:
    verdict = decide(hpa("h", "d"), "mutate")
    out = to_response("u-1", verdict)
    assert out["response"]["uid"] == "u-1" and out["response"]["allowed"] is True
    assert out["response"]["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(out["response"]["patch"])) == list(verdict.patch)
    denied = to_response("u-2", decide(pod_autoscaler("p", "d", 1000), "validate"))
    assert denied["response"]["allowed"] is False
    assert denied["response"]["status"]["code"] == 403


def test_repeated_warnings_are_sent_once_in_their_order() -> None:
    verdict = Verdict("allowed", warnings=("b", "a", "b", "a", "c"))
    assert to_response("u", verdict)["response"]["warnings"] == ["b", "a", "c"]
