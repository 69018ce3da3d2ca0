"""A Deployment whose selector selects its whole model group.

Serving one model on several GPU types takes one Deployment per type. When each
selects its pods by the model label alone (``model.aibrix.ai/name: llama``, as
AIBrix did before its fix), each selector takes the pods of the other, and the
autoscaler of one counts the other's. Whichever is created second cannot fix
the first, whose selector is immutable by then. So at CREATE, while its
selector can still change, admission isolates a Deployment that

- is of a model group (a ``modelLabelKeys`` label) and requests accelerators or
  is pinned to a GPU type, and
- selects by its model label (an ``In`` requirement holding its group), and
- names neither itself nor its GPU type in its selector: no ``gpumix.io/deployment``
  or ``gpumix.io/gpu-type`` key, and no selector value that contains the
  Deployment's name or its GPU type's name.

Such a selector would capture the pods of a Deployment of the same model on
another GPU type, whichever comes next. This is a defaulting decision of the
mutating step, not a finding of ``gpumix check``: a selector that captures
nothing yet is not reported (docs/design.md, "Isolating the first of a model group").
"""

from __future__ import annotations

from gpumix.kube.objects import DeploymentView
from gpumix.kube.policy import DEPLOYMENT_LABEL, GPU_TYPE_LABEL, Policy
from gpumix.rules.base import Finding
from gpumix.rules.selector_overlap import RULE


def selects_model_group(dep: DeploymentView, policy: Policy) -> bool:
    """Whether the selector would capture a sibling of the same model group (above)."""
    if dep.selector_error is not None or dep.model is None or dep.gpu_type.kind == "cpu":
        return False
    name = dep.name.lower()
    type_name = (dep.gpu_type.name or "").lower()
    by_model = False
    for req in dep.selector.requirements:
        if req.key in (DEPLOYMENT_LABEL, GPU_TYPE_LABEL):
            return False
        if req.operator != "In":
            continue
        if req.key in policy.model_label_keys and dep.model in req.values:
            by_model = True
        for value in req.values:
            low = value.lower()
            if _names(low, name) or _names(low, type_name):
                return False
    return by_model


def _names(value: str, word: str) -> bool:
    """Whether a selector value names ``word`` (contains it; a word of under four
    characters must be the whole value, or ``a`` would be found in ``llama``)."""
    if not word:
        return False
    return value == word if len(word) < 4 else word in value


def check(dep: DeploymentView, policy: Policy) -> list[Finding]:
    """The finding the mutating step fixes (and shows) when it isolates ``dep``."""
    if not selects_model_group(dep, policy):
        return []
    return [
        Finding(
            RULE,
            "warning",
            dep.ref,
            f"its selector ({dep.selector.describe()}) selects model group {dep.model} as a "
            "whole, so it would take the pods of a Deployment of the same model on another "
            f"GPU type; isolated with {DEPLOYMENT_LABEL}: {dep.name} in its selector and pod "
            "template while the selector can still change",
            fixable=True,
        )
    ]
