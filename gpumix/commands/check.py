"""``gpumix check``: the admission rules, offline, on manifest files.

Exit codes: 0 no error findings, 1 error findings, 2 input unreadable or invalid
(the other files are still checked and reported).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from gpumix.kube.objects import AutoscalerView, DeploymentView, ObjectRef, view_of
from gpumix.kube.policy import DEPLOYMENT_LABEL, Policy, PolicyError, policy_from_mapping
from gpumix.kube.snapshot import Snapshot
from gpumix.manifests import (
    InputError,
    SourceFile,
    _yaml,
    is_kubernetes_object,
    load_sources,
)
from webhook.rules import missing_max_replicas, model_selector, selector_overlap
from webhook.rules.base import Finding
from webhook.rules.engine import evaluate_snapshot
from webhook.rules.fixes import isolate_deployment, set_ceiling

EXIT_OK, EXIT_FINDINGS, EXIT_INPUT = 0, 1, 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "check",
        help="check manifest files offline against the admission rules",
        description=(
            "Check Kubernetes manifests offline against gpumix's rules, as the webhook would. "
            "Exit 0: no error findings; 1: error findings; 2: input unreadable or invalid."
        ),
    )
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE|DIR|-",
        help="manifest file, directory (recursive) or - for stdin; repeatable",
    )
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.add_argument(
        "--fix",
        action="store_true",
        help="print the manifests with fixes applied (labels and ceilings only)",
    )
    p.add_argument("--in-place", action="store_true", help="with --fix: rewrite the files")
    p.add_argument("--policy", metavar="FILE", help="policy file (YAML)")
    p.add_argument(
        "--cluster-state",
        metavar="FILE",
        action="append",
        default=[],
        help="objects that already exist in the cluster (e.g. kubectl get -o yaml output)",
    )
    p.set_defaults(func=run)


@dataclass
class Loaded:
    sources: list[SourceFile]
    live: list[MutableMapping[str, Any]]
    errors: list[InputError]


def load_policy(path: str | None) -> Policy:
    if path is None:
        return Policy()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(path, f"cannot read policy: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(path, f"cannot read policy: {exc}") from exc
    try:
        doc = _yaml().load(text)
    except Exception as exc:  # ruamel raises several unrelated types
        raise InputError(path, f"invalid YAML: {str(exc).splitlines()[0]}") from exc
    try:
        return policy_from_mapping(doc)
    except PolicyError as exc:
        raise InputError(path, f"field {exc}") from exc


def file_objects(sources: list[SourceFile]) -> list[MutableMapping[str, Any]]:
    return [
        obj
        for src in sources
        for doc in src.documents
        for obj in doc.objects()
        if is_kubernetes_object(obj)
    ]


def build_snapshot(
    live: list[MutableMapping[str, Any]], files: list[MutableMapping[str, Any]], policy: Policy
) -> tuple[Snapshot, set[ObjectRef]]:
    """Live objects first, file objects over them (as ``kubectl apply`` would)."""
    snapshot = Snapshot.from_objects(live, policy)
    subjects: set[ObjectRef] = set()
    for obj in files:
        view = view_of(obj, policy)
        if view is None:
            continue
        snapshot.put(view)
        if isinstance(view, (DeploymentView, AutoscalerView)):
            subjects.add(view.ref)
    return snapshot, subjects


def apply_fixes(
    sources: list[SourceFile],
    findings: list[Finding],
    snapshot: Snapshot,
    live_refs: set[ObjectRef],
    policy: Policy,
    isolated: list[str] | None = None,
) -> list[str]:
    """Fix the documents in place; return what still needs a human. ``isolated`` gets
    the Deployments isolated as the first of a model group (what the webhook does at
    CREATE, so Git and the cluster agree)."""
    notes: list[str] = []
    wanted = {(f.rule, f.subject) for f in findings if f.fixable}
    for src in sources:
        for doc in src.documents:
            for obj in doc.objects():
                if not is_kubernetes_object(obj):
                    continue
                view = view_of(obj, policy)
                if (
                    isinstance(view, DeploymentView)
                    and (selector_overlap.RULE, view.ref) not in wanted
                    and view.ref not in live_refs
                    and model_selector.selects_model_group(view, policy)
                ):
                    isolate_deployment(obj, view.gpu_type)
                    doc.changed = True
                    if isolated is not None:
                        isolated.append(
                            f"{view.ref}: its selector ({view.selector.describe()}) selects "
                            f"model group {view.model} as a whole; isolated as the webhook "
                            "does at CREATE"
                        )
                elif (
                    isinstance(view, DeploymentView) and (selector_overlap.RULE, view.ref) in wanted
                ):
                    if view.ref in live_refs:
                        notes.append(
                            f"{view.ref} exists in the cluster and spec.selector is immutable: "
                            "the fixed manifest must be applied by recreating the Deployment "
                            "(delete it, then apply), or under a new name"
                        )
                    isolate_deployment(obj, view.gpu_type)
                    doc.changed = True
                elif (
                    isinstance(view, AutoscalerView)
                    and (missing_max_replicas.RULE, view.ref) in wanted
                ):
                    value = missing_max_replicas.default_ceiling(view, snapshot, policy)
                    set_ceiling(obj, view.ceiling_field, value)
                    doc.changed = True
    return notes


def live_selector_notes(
    remaining: list[Finding],
    snapshot: Snapshot,
    live_refs: set[ObjectRef],
    subjects: set[ObjectRef],
) -> list[str]:
    """Overlaps that remain because a Deployment that only exists in the cluster is broad."""
    notes: list[str] = []
    seen: set[ObjectRef] = set()
    for f in remaining:
        if f.rule != selector_overlap.RULE:
            continue
        for ref in f.related:
            if ref in seen or ref not in live_refs or ref in subjects:
                continue
            seen.add(ref)
            dep = snapshot.deployment(ref)
            selector = f" ({dep.selector.describe()})" if dep is not None else ""
            notes.append(
                f"{ref} exists in the cluster and its selector{selector} still overlaps "
                f"{f.subject}; spec.selector is immutable, so it must be recreated with a "
                f"distinct selector label (such as {DEPLOYMENT_LABEL}: {ref.name}): delete it "
                "and apply the fixed manifest, or roll out a copy under a new name first"
            )
    return notes


def render_text(findings: list[Finding], out: TextIO) -> None:
    for f in findings:
        related = ", ".join(str(r) for r in f.related)
        extra = f" [related: {related}]" if related else ""
        fixable = " (fixable with --fix)" if f.fixable else ""
        out.write(f"{f.severity.upper()} {f.rule} {f.subject}: {f.message}{extra}{fixable}\n")


def render_json(findings: list[Finding], out: TextIO) -> None:
    json.dump({"findings": [f.as_dict() for f in findings]}, out, indent=2)
    out.write("\n")


def run(
    args: argparse.Namespace,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    if args.in_place and not args.fix:
        stderr.write("error: --in-place needs --fix\n")
        return EXIT_INPUT
    if "-" in args.filename and "-" in args.cluster_state:
        stderr.write("error: stdin (-) can be given to -f or to --cluster-state, not both\n")
        return EXIT_INPUT
    if args.in_place and "-" in args.filename:
        stderr.write("error: --in-place cannot rewrite stdin (-f -)\n")
        return EXIT_INPUT
    try:
        policy = load_policy(args.policy)
    except InputError as exc:
        stderr.write(f"error: {exc}\n")
        return EXIT_INPUT
    sources, errors = load_sources(args.filename, stdin)
    live_sources, live_errors = load_sources(args.cluster_state, stdin)
    errors += live_errors
    for err in errors:
        stderr.write(f"error: {err}\n")
    live = file_objects(live_sources)
    live_refs = {
        v.ref
        for v in (view_of(o, policy) for o in live)
        if isinstance(v, (DeploymentView, AutoscalerView))
    }
    snapshot, subjects = build_snapshot(live, file_objects(sources), policy)
    findings = evaluate_snapshot(snapshot, policy, subjects)

    if args.fix:
        isolated: list[str] = []
        notes = apply_fixes(sources, findings, snapshot, live_refs, policy, isolated)
        snapshot, subjects = build_snapshot(live, file_objects(sources), policy)
        remaining = evaluate_snapshot(snapshot, policy, subjects)
        notes += live_selector_notes(remaining, snapshot, live_refs, subjects)
        if args.in_place:
            for src in sources:
                if src.changed:
                    Path(src.path).write_text(src.render(), encoding="utf-8")
                    stderr.write(f"fixed {src.path}\n")
        else:
            for i, src in enumerate(sources):
                text = src.render()
                if i:
                    stdout.write("---\n")
                stdout.write(text if not text or text.endswith("\n") else text + "\n")
        report = stderr if not args.in_place else stdout
        fixed = max(len(findings) - len(remaining), 0)
        report.write(f"# fixed {fixed} finding(s); {len(remaining)} still need a human\n")
        for note in isolated:
            report.write(f"# isolated {note}\n")
        for note in notes:
            report.write(f"# needs a human: {note}\n")
        if args.output == "json":
            render_json(remaining, report)
        else:
            render_text(remaining, report)
        findings = remaining
    elif args.output == "json":
        render_json(findings, stdout)
    else:
        render_text(findings, stdout)
        if not findings and not errors:
            stdout.write("no findings\n")

    if errors:
        return EXIT_INPUT
    return EXIT_FINDINGS if any(f.severity == "error" for f in findings) else EXIT_OK
