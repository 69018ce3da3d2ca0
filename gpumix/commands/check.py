"""``gpumix check``: the admission rules, offline, on manifest files.

Exit codes: 0 no error findings, 1 error findings, 2 input unreadable or invalid
(the other files are still checked and reported).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, TextIO

from gpumix.check.output import FORMATS, render, summary
from gpumix.check.reading import STDIN, Note, prescan
from gpumix.check.run import (
    Options,
    Report,
    apply_plans,
    check,
    iter_printable,
    live_selector_notes,
    read_live,
    render_kustomize,
    sources,
)
from gpumix.check.yamlload import load_one
from gpumix.kube.objects import AutoscalerView, DeploymentView
from gpumix.kube.policy import Policy, PolicyError, policy_from_mapping
from gpumix.manifests import InputError, SourceFile, is_kubernetes_object

EXIT_OK, EXIT_FINDINGS, EXIT_INPUT = 0, 1, 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "check",
        help="check manifest files offline against the admission rules",
        description=(
            "Check Kubernetes manifests offline against gpumix's rules, as the webhook would. "
            "Exit 0: no error findings; 1: error findings; 2: an input unreadable or invalid."
        ),
    )
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        default=[],
        metavar="FILE|DIR|-",
        help="manifest file, directory (recursive) or - for stdin; repeatable",
    )
    p.add_argument(
        "-k",
        "--kustomize",
        action="append",
        default=[],
        metavar="DIR",
        help="render a kustomization directory with kubectl's built-in kustomize and check "
        "the result; repeatable",
    )
    p.add_argument("-o", "--output", choices=FORMATS, default="text")
    p.add_argument(
        "--fix",
        action="store_true",
        help="print the manifests with the error findings fixed (labels and ceilings only; "
        "only the lines a fix needs are added)",
    )
    p.add_argument(
        "--fix-warnings", action="store_true", help="with --fix: fix fixable warnings too"
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
    p.add_argument(
        "--exclude",
        metavar="GLOB",
        action="append",
        default=[],
        help="leave out paths matching GLOB (the path below a -f directory, the path as "
        "given, or the base name; * matches /); repeatable",
    )
    p.add_argument(
        "--group",
        choices=("all", "dir", "file"),
        default="all",
        help="which files are checked together: all inputs (default), each directory, or each file",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="documents that are not Kubernetes objects are input errors, not skipped",
    )
    p.add_argument(
        "-v", "--verbose", action="store_true", help="list the skipped documents on stderr"
    )
    p.set_defaults(func=run)


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
        doc = load_one(text)
    except Exception as exc:  # the YAML parser raises several unrelated types
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


def run(
    args: argparse.Namespace,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    problem = flag_problem(args)
    if problem:
        stderr.write(f"error: {problem}\n")
        return EXIT_INPUT
    try:
        policy = load_policy(args.policy)
    except InputError as exc:
        stderr.write(f"error: {exc}\n")
        return EXIT_INPUT
    stdin_text = stdin.read() if STDIN in args.filename or STDIN in args.cluster_state else None
    opts = Options(
        policy=policy,
        strict=args.strict,
        exclude=args.exclude,
        group=args.group,
        fix=args.fix,
        fix_warnings=args.fix_warnings,
    )
    errors: list[Note] = []
    skipped: list[Note] = []
    renders: list[tuple[str, str]] = []
    for directory in args.kustomize:
        text, error = render_kustomize(directory)
        if error is not None:
            errors.append(error)
        elif text is not None:
            renders.append((directory, text))
    srcs = sources(args.filename, stdin_text, renders, opts, errors, skipped)
    live = read_live(args.cluster_state, stdin_text, policy, errors)
    live_refs = {v.ref for v in live if isinstance(v, (DeploymentView, AutoscalerView))}
    kustomize = prescan(args.filename, args.exclude)
    report, plans = check(srcs, live, live_refs, opts, kustomize)
    report.errors[:0] = errors
    report.skipped[:0] = skipped

    if not args.fix:
        emit(args, report, stdout, stderr)
        return exit_code(report)

    applied = apply_plans(plans, report, live_refs)
    fixed, human = applied.fixed, applied.human
    after, _ = check(srcs, live, live_refs, opts, kustomize, overrides=fixed)
    after.errors[:0] = errors
    after.skipped[:0] = skipped
    human += live_selector_notes(after, live_refs)
    if args.in_place:
        for name in fixed:
            Path(name).write_text(fixed[name], encoding="utf-8", newline="")
            stderr.write(f"fixed {name}\n")
        out = stdout
    else:
        for i, (_, text) in enumerate(iter_printable(report, fixed)):
            if i:
                stdout.write("---\n")
            stdout.write(text if not text or text.endswith("\n") else text + "\n")
        out = stderr
    left = sum(1 for f in after.findings if f.finding.severity == "error" or args.fix_warnings)
    out.write(f"# fixed {applied.count} finding(s); {left} still need a human\n")
    for note in applied.isolated:
        out.write(f"# isolated {note}\n")
    for note in applied.notes:
        out.write(f"# selector changed: {note}\n")
    for note in human:
        out.write(f"# needs a human: {note}\n")
    emit(args, after, out, stderr)
    return exit_code(after)


def flag_problem(args: argparse.Namespace) -> str | None:
    if not args.filename and not args.kustomize:
        return "give the manifests: -f FILE|DIR|- or -k DIR"
    if args.in_place and not args.fix:
        return "--in-place needs --fix"
    if args.fix_warnings and not args.fix:
        return "--fix-warnings needs --fix"
    if STDIN in args.filename and STDIN in args.cluster_state:
        return "stdin (-) can be given to -f or to --cluster-state, not both"
    if args.in_place and STDIN in args.filename:
        return "--in-place cannot rewrite stdin (-f -)"
    if args.fix and args.kustomize:
        return (
            "--fix cannot edit kustomize output (-k): fix the files of the base or overlay "
            "(gpumix check -f DIR --fix)"
        )
    return None


def emit(args: argparse.Namespace, report: Report, out: TextIO, err: TextIO) -> None:
    for e in report.errors:
        err.write(f"error: {e}\n")
    if args.verbose:
        for s in report.skipped:
            err.write(f"note: skipped {s}\n")
    render(args.output, report, out)
    if args.output == "text":
        out.write(summary(report) + "\n")


def exit_code(report: Report) -> int:
    if report.errors:
        return EXIT_INPUT
    if any(f.finding.severity == "error" for f in report.findings):
        return EXIT_FINDINGS
    return EXIT_OK
