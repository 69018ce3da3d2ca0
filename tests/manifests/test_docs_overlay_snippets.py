"""The kustomize snippets in docs/install.md and docs/gitops.md render and do what the
text says, on top of the real overlays."""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml
from manifest_objects import MANIFESTS, REPO_ROOT, find, render

DOCS = REPO_ROOT / "docs"
ENFORCE = MANIFESTS / "overlays" / "enforce"


def yaml_blocks(doc: str) -> list[str]:
    text = (DOCS / doc).read_text(encoding="utf-8")
    return re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)


def overlay(tmp_path: Path, body: dict[str, object]) -> Path:
    body.setdefault("apiVersion", "kustomize.config.k8s.io/v1beta1")
    body.setdefault("kind", "Kustomization")
    body["resources"] = [os.path.relpath(ENFORCE, tmp_path)]  # kustomize wants it relative
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(body), encoding="utf-8")
    return tmp_path


def test_install_md_failure_policy_patch(tmp_path: Path) -> None:
    [block] = [b for b in yaml_blocks("install.md") if b.startswith("patches:")]
    objects = render(overlay(tmp_path, yaml.safe_load(block)))
    hook = find(objects, "ValidatingWebhookConfiguration", "gpumix")["webhooks"][0]
    assert (hook["failurePolicy"], hook["timeoutSeconds"]) == ("Ignore", 3)
    hook = find(objects, "MutatingWebhookConfiguration", "gpumix")["webhooks"][0]
    assert (hook["failurePolicy"], hook["timeoutSeconds"]) == ("Fail", 5)


def test_gitops_md_sync_wave_overlay(tmp_path: Path) -> None:
    [block] = [b for b in yaml_blocks("gitops.md") if 'sync-wave: "1"' in b]
    body = yaml.safe_load(block)
    assert body["resources"] == ["<path or URL of gpumix>/manifests/overlays/enforce"]
    objects = render(overlay(tmp_path, body))
    for obj in objects:
        annotations = obj["metadata"].get("annotations", {})
        wave = annotations.get("argocd.argoproj.io/sync-wave")
        if obj["kind"].endswith("WebhookConfiguration"):
            assert wave == "1", obj["kind"]
        else:
            assert wave is None, obj["kind"]
