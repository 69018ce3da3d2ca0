"""Reports: text, JSON, SARIF 2.1.0, JUnit XML, GitHub Actions workflow commands."""

from __future__ import annotations

import json
import os
from typing import Any, TextIO
from xml.sax.saxutils import escape as xml_escape
from xml.sax.saxutils import quoteattr

from gpumix.check.reading import Note
from gpumix.check.run import DUPLICATE_RULE, Located, Report

FORMATS = ("text", "json", "sarif", "junit", "github")
INPUT_ERROR_RULE = "input-error"
RULE_HELP = {
    "selector-overlap": "Deployments whose selectors capture each other's pods",
    "invalid-selector": "a selector the API server would refuse",
    "missing-max-replicas": "an autoscaler without a ceiling",
    "max-replicas-above-ceiling": "a ceiling above the hard limit or the GPUs that exist",
    DUPLICATE_RULE: "the same kind/namespace/name defined twice",
    INPUT_ERROR_RULE: "an input that cannot be read, or an object gpumix cannot read",
}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def summary(report: Report) -> str:
    errors = sum(1 for f in report.findings if f.finding.severity == "error")
    warnings = len(report.findings) - errors
    fixable = sum(1 for f in report.findings if f.finding.fixable)
    parts = [
        f"{_plural(errors, 'error')}, {_plural(warnings, 'warning')}"
        + (f" ({fixable} fixable with --fix)" if fixable else ""),
        f"{_plural(report.objects, 'object')} in {_plural(report.files, 'file')}",
    ]
    if report.skipped:
        parts.append(f"{_plural(len(report.skipped), 'document')} skipped (-v lists them)")
    if report.errors:
        parts.append(_plural(len(report.errors), "input error"))
    return "gpumix check: " + "; ".join(parts)


def _related(f: Located) -> str:
    if not f.finding.related:
        return ""
    items = []
    for ref, at in zip(
        f.finding.related, f.related_at or ("",) * len(f.finding.related), strict=False
    ):
        items.append(f"{ref} at {at}" if at else str(ref))
    return f" [related: {', '.join(items)}]"


def _mirrors(findings: list[Located]) -> set[int]:
    """Indexes of the second finding of each overlapping pair (the first names both)."""
    skip: set[int] = set()
    first: dict[tuple[str, str, Any, Any], int] = {}
    for i, f in enumerate(findings):
        g = f.finding
        if g.rule == "selector-overlap" and len(g.related) == 1:
            key = (g.rule, g.severity, g.related[0], g.subject)
            if key in first:
                skip.add(i)
            else:
                first[(g.rule, g.severity, g.subject, g.related[0])] = i
    return skip


def render_text(report: Report, out: TextIO) -> None:
    mirrors = _mirrors(report.findings)
    for i, f in enumerate(report.findings):
        if i in mirrors:
            continue
        g = f.finding
        fixable = " (fixable with --fix)" if g.fixable else ""
        where = f"{f.file}:{f.line}" if f.line else f.file
        out.write(
            f"{where}: {g.severity.upper()} {g.rule} {g.subject}: {g.message}"
            f"{_related(f)}{fixable}\n"
        )


def finding_dict(f: Located) -> dict[str, Any]:
    d: dict[str, Any] = dict(f.finding.as_dict())
    d["file"] = f.file
    d["line"] = f.line
    for ref, at in zip(d["related"], f.related_at, strict=False):
        ref["at"] = at
    return d


def render_json(report: Report, out: TextIO) -> None:
    json.dump(
        {
            "findings": [finding_dict(f) for f in report.findings],
            "inputErrors": [e.as_dict() for e in report.errors],
            "skipped": [s.as_dict() for s in report.skipped],
            "summary": summary(report),
        },
        out,
        indent=2,
    )
    out.write("\n")


def _uri(path: str) -> str:
    if path.startswith("<") or path.endswith(")"):
        return path
    rel = os.path.relpath(path) if os.path.isabs(path) else path
    return rel.replace(os.sep, "/").removeprefix("./")


def _location(file: str, line: int) -> dict[str, Any]:
    physical: dict[str, Any] = {"artifactLocation": {"uri": _uri(file)}}
    if line:
        physical["region"] = {"startLine": line}
    return {"physicalLocation": physical}


def render_sarif(report: Report, out: TextIO) -> None:
    results: list[dict[str, Any]] = []
    for f in report.findings:
        g = f.finding
        result: dict[str, Any] = {
            "ruleId": g.rule,
            "level": g.severity,
            "message": {"text": f"{g.subject}: {g.message}"},
            "locations": [_location(f.file, f.line)],
        }
        related = []
        for ref, at in zip(g.related, f.related_at, strict=False):
            if ":" in at and not at.startswith("the "):
                file, _, line = at.rpartition(":")
                loc = _location(file, int(line) if line.isdigit() else 0)
                loc["message"] = {"text": str(ref)}
                related.append(loc)
        if related:
            result["relatedLocations"] = related
        results.append(result)
    for e in report.errors:
        results.append(
            {
                "ruleId": INPUT_ERROR_RULE,
                "level": "error",
                "message": {"text": e.message},
                "locations": [_location(e.file, e.line)],
            }
        )
    used = sorted({r["ruleId"] for r in results})
    doc = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "gpumix",
                        "informationUri": "https://github.com/gpumix/gpumix",
                        "rules": [
                            {"id": r, "shortDescription": {"text": RULE_HELP.get(r, r)}}
                            for r in used
                        ],
                    }
                },
                "results": results,
            }
        ],
    }
    json.dump(doc, out, indent=2)
    out.write("\n")


def render_junit(report: Report, out: TextIO) -> None:
    cases: list[str] = []
    failures = errors = 0
    for f in report.findings:
        g = f.finding
        name = quoteattr(f"{g.rule} {g.subject}")
        attrs = f"classname={quoteattr(f.file)} name={name} file={quoteattr(f.file)}"
        attrs += f' line="{f.line}"'
        text = xml_escape(f"{f.file}:{f.line}: {g.message}{_related(f)}")
        if g.severity == "error":
            failures += 1
            cases.append(
                f"    <testcase {attrs}>\n      <failure message={quoteattr(g.message)} "
                f"type={quoteattr(g.rule)}>{text}</failure>\n    </testcase>\n"
            )
        else:
            cases.append(
                f"    <testcase {attrs}>\n      <system-out>WARNING {text}</system-out>\n"
                "    </testcase>\n"
            )
    for e in report.errors:
        errors += 1
        attrs = f"classname={quoteattr(e.file)} name={quoteattr('input ' + e.file)}"
        cases.append(
            f"    <testcase {attrs}>\n      <error message={quoteattr(e.message)} "
            f'type="{INPUT_ERROR_RULE}">{xml_escape(str(e))}</error>\n    </testcase>\n'
        )
    if not cases:
        cases.append('    <testcase classname="gpumix" name="gpumix check"/>\n')
    tests = len(cases)
    out.write('<?xml version="1.0" encoding="UTF-8"?>\n')
    out.write(
        f'<testsuites name="gpumix check" tests="{tests}" failures="{failures}" '
        f'errors="{errors}">\n'
        f'  <testsuite name="gpumix check" tests="{tests}" failures="{failures}" '
        f'errors="{errors}" skipped="0">\n'
    )
    out.write("".join(cases))
    out.write("  </testsuite>\n</testsuites>\n")


def _gh_data(s: str) -> str:
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_prop(s: str) -> str:
    return _gh_data(s).replace(":", "%3A").replace(",", "%2C")


def _gh_line(level: str, file: str, line: int, title: str, message: str) -> str:
    props = f"file={_gh_prop(_uri(file))}"
    if line:
        props += f",line={line}"
    return f"::{level} {props},title={_gh_prop(title)}::{_gh_data(message)}\n"


def render_github(report: Report, out: TextIO) -> None:
    for f in report.findings:
        g = f.finding
        out.write(
            _gh_line(
                g.severity, f.file, f.line, f"{g.rule} {g.subject}", f"{g.message}{_related(f)}"
            )
        )
    for e in report.errors:
        out.write(_gh_line("error", e.file, e.line, INPUT_ERROR_RULE, e.message))
    out.write(summary(report) + "\n")


def render(fmt: str, report: Report, out: TextIO) -> None:
    {
        "text": render_text,
        "json": render_json,
        "sarif": render_sarif,
        "junit": render_junit,
        "github": render_github,
    }[fmt](report, out)


def note_lines(notes: list[Note]) -> list[str]:
    return [str(n) for n in notes]
