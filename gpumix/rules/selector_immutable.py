"""Rule ``selector-immutable``: an UPDATE that changes a Deployment's selector."""

from __future__ import annotations

from gpumix.kube.objects import DeploymentView
from gpumix.kube.selectors import canonical_selector
from gpumix.rules.base import Finding

RULE = "selector-immutable"


def check(
    old: DeploymentView, new: DeploymentView, *, old_selector: object, new_selector: object
) -> list[Finding]:
    """``old_selector``/``new_selector`` are the raw ``spec.selector`` values: the API
    server compares them as written (``matchLabels`` rewritten as an equivalent
    ``In`` expression, or reordered expressions, are changes too)."""
    if canonical_selector(old_selector) == canonical_selector(new_selector):
        return []
    return [
        Finding(
            RULE,
            "error",
            new.ref,
            f"{new.ref}: spec.selector is immutable (was {old.selector.describe()}, now "
            f"{new.selector.describe()}). To change it, recreate the Deployment: create a "
            "new Deployment with the new selector and a new name, wait for it to be ready, "
            f"then delete {new.name} (or `kubectl delete deployment {new.name} -n "
            f"{new.namespace}` followed by `kubectl apply`, accepting downtime)",
        )
    ]
