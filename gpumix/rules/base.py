"""What every rule returns: findings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypedDict

from gpumix.kube.objects import ObjectRef

Severity = Literal["error", "warning"]


class RefDict(TypedDict):
    kind: str
    namespace: str
    name: str


class FindingDict(TypedDict):
    rule: str
    severity: Severity
    kind: str
    namespace: str
    name: str
    message: str
    related: list[RefDict]
    fixable: bool


@dataclass(frozen=True, slots=True)
class Finding:
    rule: str
    severity: Severity
    subject: ObjectRef
    message: str
    related: tuple[ObjectRef, ...] = ()
    fixable: bool = False

    def as_dict(self) -> FindingDict:
        return {
            "rule": self.rule,
            "severity": self.severity,
            "kind": self.subject.kind,
            "namespace": self.subject.namespace,
            "name": self.subject.name,
            "message": self.message,
            "related": [
                {"kind": r.kind, "namespace": r.namespace, "name": r.name} for r in self.related
            ],
            "fixable": self.fixable,
        }


def sort_findings(findings: list[Finding]) -> list[Finding]:
    order = {"error": 0, "warning": 1}
    return sorted(findings, key=lambda f: (order[f.severity], f.subject, f.rule, f.message))
