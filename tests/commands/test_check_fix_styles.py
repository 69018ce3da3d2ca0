"""``--fix`` adds the lines a fix needs and leaves every other byte of the file as it
was, in the styles real repositories use."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import pytest
from check_repo_kit import run

Capsys = pytest.CaptureFixture[str]

# two Deployments of one model on two GPU types, selecting by the model alone (an
# error), and an HPA without a ceiling (an error), in many styles
MIXED_INDENT = """\
# engines, indented by 4 here
apiVersion: apps/v1
kind: Deployment
metadata:
    name: a100   # the big one
    labels: {gpumix.io/model: llama}
spec:
    selector:
        matchLabels:
            model: llama
    template:
        metadata:
            labels:
                model: llama
        spec:
            nodeSelector: {nvidia.com/gpu.product: A100}
            containers:
            -   name: e
                image: e:1
                args: ["--port", "8000",   # the port
                       "--tp", "1"]        # tensor parallel
                resources: {limits: {nvidia.com/gpu: 1}}
...
---
# and by 2 here, with the dash indented
apiVersion: apps/v1
kind: Deployment
metadata:
  name: a40
spec:
  selector:
    matchExpressions: [{key: model, operator: In, values: [llama]}]  # no matchLabels
  template:
    metadata:
      labels:
        model: llama
        gpumix.io/model: llama
    spec:
      nodeSelector:
        nvidia.com/gpu.product: A40
      containers:
        - name: e
          image: e:1
          resources:
            limits: {nvidia.com/gpu: 1}
...
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: h}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: a100}
  maxReplicas: 0     # no ceiling
"""


def fix(tmp_path: Path, capsys: Capsys, name: str, text: str | bytes) -> tuple[str, str]:
    f = tmp_path / name
    if isinstance(text, bytes):
        f.write_bytes(text)
    else:
        f.write_text(text, encoding="utf-8", newline="")
    code, report, err = run(capsys, "-f", str(f), "--fix", "--in-place")
    assert code == 0, report + err
    fixed = f.read_bytes().decode("utf-8")
    # the fixed file is clean and fixing it again changes nothing
    code, out, err = run(capsys, "-f", str(f), "--fix", "--in-place")
    assert code == 0 and "fixed 0 finding(s)" in out
    assert f.read_bytes().decode("utf-8") == fixed
    return fixed, report


def added_lines(original: str, fixed: str) -> list[str]:
    """The lines the fix added; fails when it removed or changed one."""
    a, b = original.splitlines(keepends=True), fixed.splitlines(keepends=True)
    added: list[str] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        assert tag in ("equal", "insert"), (tag, a[i1:i2], b[j1:j2])
        if tag == "insert":
            added += b[j1:j2]
    return added


def test_block_styles_mixed_indentation_comments_and_end_markers(
    tmp_path: Path, capsys: Capsys
) -> None:
    fixed, report = fix(tmp_path, capsys, "engines.yaml", MIXED_INDENT)
    # one line changed in place: the 0 ceiling (a scalar replaced, its comment kept)
    original = MIXED_INDENT.replace("maxReplicas: 0", "maxReplicas: 10")
    assert added_lines(original, fixed) == [
        "            gpumix.io/deployment: a100\n",  # matchLabels, at its indentation (12)
        "                gpumix.io/deployment: a100\n",  # pod template labels (16)
        "                gpumix.io/gpu-type: A100\n",
        "    matchLabels:\n",  # a40: created next to matchExpressions
        "      gpumix.io/deployment: a40\n",
        "        gpumix.io/deployment: a40\n",
        "        gpumix.io/gpu-type: A40\n",
    ]
    assert "maxReplicas: 10     # no ceiling\n" in fixed
    assert fixed.count("\n...\n") == 2
    assert "# selector changed: " in report and "Deployment default/a100" in report


def test_flow_documents_are_edited_inside_their_braces(tmp_path: Path, capsys: Capsys) -> None:
    a = (
        "--- {apiVersion: apps/v1, kind: Deployment, metadata: {name: a, labels: "
        "{gpumix.io/model: m}}, spec: {selector: {matchLabels: {model: m}}, template: "
        "{metadata: {labels: {model: m}}, spec: {nodeSelector: {nvidia.com/gpu.product: A100}, "
        "containers: [{name: e, image: e}]}}}}\n"
    )
    b = a.replace("name: a,", "name: b,").replace("A100", "A40")
    text = "# flow documents\n" + a + b + "...\n"
    fixed, _ = fix(tmp_path, capsys, "flow.yaml", text)
    expected = (
        "# flow documents\n"
        + a.replace(
            "{model: m}}, template", "{model: m, gpumix.io/deployment: a}}, template"
        ).replace(
            "labels: {model: m}}, spec",
            "labels: {model: m, gpumix.io/deployment: a, gpumix.io/gpu-type: A100}}, spec",
        )
        + b.replace(
            "{model: m}}, template", "{model: m, gpumix.io/deployment: b}}, template"
        ).replace(
            "labels: {model: m}}, spec",
            "labels: {model: m, gpumix.io/deployment: b, gpumix.io/gpu-type: A40}}, spec",
        )
        + "...\n"
    )
    assert fixed == expected


def test_flow_mapping_with_comments_over_several_lines(tmp_path: Path, capsys: Capsys) -> None:
    text = """\
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: h}
spec: {
  scaleTargetRef: {kind: Deployment, name: d},   # the engine
  minReplicas: 1,  # at least one
}
"""
    fixed, _ = fix(tmp_path, capsys, "h.yaml", text)
    assert fixed == text.replace("minReplicas: 1,", "minReplicas: 1, maxReplicas: 10,")


def test_crlf_line_endings_are_kept(tmp_path: Path, capsys: Capsys) -> None:
    text = MIXED_INDENT.replace("\n", "\r\n").encode()
    fixed, _ = fix(tmp_path, capsys, "crlf.yaml", text)
    assert "\n" not in fixed.replace("\r\n", "")
    assert fixed.count("\r\n") == MIXED_INDENT.count("\n") + 7


def test_a_byte_order_mark_is_kept(tmp_path: Path, capsys: Capsys) -> None:
    text = "\ufeffapiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: h}\n"
    text += "spec: {scaleTargetRef: {kind: Deployment, name: d}}\n"
    fixed, _ = fix(tmp_path, capsys, "bom.yaml", text)
    assert fixed == text.replace("name: d}}", "name: d}, maxReplicas: 10}")


def test_list_items_get_the_lines_after_their_mapping(tmp_path: Path, capsys: Capsys) -> None:
    text = """\
apiVersion: v1
kind: List
items:
- apiVersion: autoscaling/v2
  kind: HorizontalPodAutoscaler
  metadata: {name: h}
  spec:
    scaleTargetRef: {kind: Deployment, name: d}
- apiVersion: keda.sh/v1alpha1   # KEDA
  kind: ScaledObject
  metadata:
    name: k
  spec:
    scaleTargetRef:
      name: d2
"""
    fixed, _ = fix(tmp_path, capsys, "list.yaml", text)
    assert added_lines(text, fixed) == ["    maxReplicas: 10\n", "    maxReplicaCount: 10\n"]


def test_json_gets_one_member_more(tmp_path: Path, capsys: Capsys) -> None:
    obj = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "h"},
        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}, "minReplicas": 1},
    }
    text = json.dumps(obj, indent=4) + "\n"
    fixed, _ = fix(tmp_path, capsys, "h.json", text)
    assert fixed == text.replace('"minReplicas": 1', '"minReplicas": 1, "maxReplicas": 10')
    assert json.loads(fixed)["spec"]["maxReplicas"] == 10


def test_warnings_are_not_fixed_by_default(tmp_path: Path, capsys: Capsys) -> None:
    # same GPU type, not autoscaled: an overlap warning; fixing it would change the
    # selectors (a recreate), so only --fix-warnings does
    one = MIXED_INDENT.split("...\n---\n")[0] + "...\n"
    text = one + "---\n" + one.replace("name: a100 ", "name: b100 ")
    f = tmp_path / "w.yaml"
    f.write_text(text, encoding="utf-8")
    code, out, _ = run(capsys, "-f", str(f))
    assert code == 0 and "WARNING selector-overlap" in out
    code, out, err = run(capsys, "-f", str(f), "--fix")
    assert code == 0 and out == text
    assert "# fixed 0 finding(s)" in err
    code, out, err = run(capsys, "-f", str(f), "--fix", "--fix-warnings")
    assert out.count("gpumix.io/deployment:") == 4
    assert err.count("# selector changed: ") == 2


def test_an_unfixable_layout_leaves_the_file_alone(tmp_path: Path, capsys: Capsys) -> None:
    # the second HPA's ceiling comes from a merge key: no edit can change it there
    # alone, so the file is not touched and a human is asked
    text = """\
apiVersion: v1
kind: List
items:
- apiVersion: autoscaling/v2
  kind: HorizontalPodAutoscaler
  metadata: {name: h1}
  spec: &base
    scaleTargetRef: {kind: Deployment, name: d}
    maxReplicas: 0
- apiVersion: autoscaling/v2
  kind: HorizontalPodAutoscaler
  metadata: {name: h2}
  spec:
    <<: *base
"""
    f = tmp_path / "alias.yaml"
    f.write_text(text, encoding="utf-8")
    code, out, _ = run(capsys, "-f", str(f), "--fix", "--in-place")
    assert code == 1
    assert f.read_text(encoding="utf-8") == text
    assert f"# needs a human: {f}:4: not fixed" in out
