"""Rule ``invalid-selector``: a selector the API server would refuse."""

from __future__ import annotations

from gpumix.kube.objects import DeploymentView
from gpumix.rules.base import Finding

RULE = "invalid-selector"


def check(dep: DeploymentView) -> list[Finding]:
    if dep.selector_error is not None:
        return [
            Finding(
                RULE,
                "error",
                dep.ref,
                f"{dep.ref} has an invalid selector: {dep.selector_error}",
            )
        ]
    if not dep.selector.matches(dep.template_labels):
        return [
            Finding(
                RULE,
                "error",
                dep.ref,
                f"{dep.ref} has an invalid selector: spec.selector ({dep.selector.describe()}) "
                "does not match the pod template's labels (spec.template.metadata.labels); "
                "the API server refuses such a Deployment",
            )
        ]
    return []
