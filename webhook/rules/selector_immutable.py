"""Rule ``selector-immutable``: an UPDATE that changes a Deployment's selector."""

from __future__ import annotations

from gpumix.kube.objects import DeploymentView
from webhook.rules.base import Finding

RULE = "selector-immutable"


def check(old: DeploymentView, new: DeploymentView) -> list[Finding]:
    if old.selector == new.selector and old.selector_error is None:
        return []
    if set(old.selector.requirements) == set(new.selector.requirements):
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
