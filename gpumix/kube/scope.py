"""Which writes reach the webhook: the scope rule, in Python and as the API server's CEL.

gpumix judges a Deployment when it *could* be in scope (``DeploymentView.in_scope``):
it names an accelerator resource in a container's requests or limits (any quantity,
so a quantity gpumix cannot read is still judged), carries a model-group label (on
itself or its pod template), or declares its GPU type with the ``gpumix.io/gpu-type``
pod label.  An UPDATE is judged when the object before it or after it is such a
Deployment, or when the stored selector holds ``gpumix.io/deployment`` (a re-apply
without it must get it back).  Every autoscaler write is judged.

The webhook configurations carry the same rule as a ``matchConditions`` CEL
expression (:func:`match_condition`, generated from the same :class:`Policy`), so
the API server decides every other write itself, without a webhook call;
:func:`judged` is the rule the webhook applies to what does reach it.  Both read only
the object's own fields, so they agree on any object (a test evaluates the CEL on a
real kube-apiserver against :func:`judged` over one corpus).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from gpumix.kube.fields import as_list, as_mapping
from gpumix.kube.policy import DEPLOYMENT_LABEL, GPU_TYPE_LABEL, Policy

MATCH_CONDITION_NAME = "gpumix-scope"
"""The name of the one match condition in both webhook configurations."""


def _has_value(labels: object, keys: tuple[str, ...]) -> bool:
    m = as_mapping(labels)
    return any(isinstance(m.get(k), str) and m[k] != "" for k in keys)


def _names_accelerator(pod_spec: Mapping[str, Any], policy: Policy) -> bool:
    for section in ("containers", "initContainers"):
        for container in as_list(pod_spec.get(section)):
            resources = as_mapping(as_mapping(container).get("resources"))
            for amounts in (resources.get("limits"), resources.get("requests")):
                for name in as_mapping(amounts):
                    if isinstance(name, str) and policy.is_accelerator(name):
                        return True
    return False


def could_be_in_scope(obj: Mapping[str, Any], policy: Policy) -> bool:
    """Whether a Deployment object may be in scope, read from its own fields only.

    True for every Deployment whose view is ``in_scope`` (and for a few more: one that
    names an accelerator with a zero or unreadable quantity)."""
    metadata = as_mapping(obj.get("metadata"))
    if _has_value(metadata.get("labels"), policy.model_label_keys):
        return True
    template = as_mapping(as_mapping(obj.get("spec")).get("template"))
    template_labels = as_mapping(template.get("metadata")).get("labels")
    if _has_value(template_labels, (*policy.model_label_keys, GPU_TYPE_LABEL)):
        return True
    return _names_accelerator(as_mapping(template.get("spec")), policy)


def _isolated(obj: Mapping[str, Any]) -> bool:
    selector = as_mapping(as_mapping(obj.get("spec")).get("selector"))
    return DEPLOYMENT_LABEL in as_mapping(selector.get("matchLabels"))


def judged(
    group: str, obj: Mapping[str, Any] | None, old: Mapping[str, Any] | None, policy: Policy
) -> bool:
    """Whether a CREATE or UPDATE of a resource of API group ``group`` is judged (the
    module's rule): only Deployments (group ``apps``) can be left out."""
    if group != "apps":
        return True
    if obj is not None and could_be_in_scope(obj, policy):
        return True
    return old is not None and (could_be_in_scope(old, policy) or _isolated(old))


def _cel_list(items: tuple[str, ...] | list[str]) -> str:
    # a JSON array of strings is a CEL list literal; compact, as Helm's toJson writes it
    return json.dumps(list(items), separators=(",", ":"))


def cel_expression(policy: Policy) -> str:
    """The CEL text of :func:`judged` for ``policy`` (variables ``request``,
    ``object``, ``oldObject`` of a webhook match condition).  The Helm chart builds the
    same text from its values; a test holds the two equal."""
    names = policy.gpu_resource_names
    return _CEL_TEMPLATE.format(
        model=_cel_list(policy.model_label_keys),
        template_keys=_cel_list([*policy.model_label_keys, GPU_TYPE_LABEL]),
        exact=_cel_list([n for n in names if not n.endswith("*")]),
        prefixes=_cel_list([n[:-1] for n in names if n.endswith("*")]),
        isolation=json.dumps(DEPLOYMENT_LABEL),
    )


# Every field below is optional in a Deployment except spec.template: has() guards each
# one, so no object makes the expression fail.
_CEL_TEMPLATE = """\
request.resource.group != "apps" ||
[object, oldObject].exists(o, o != null && (
  (has(o.metadata.labels) && {model}.exists(k,
    k in o.metadata.labels && o.metadata.labels[k] != "")) ||
  (has(o.spec.template.metadata) && has(o.spec.template.metadata.labels) &&
    {template_keys}.exists(k,
    k in o.spec.template.metadata.labels && o.spec.template.metadata.labels[k] != "")) ||
  (has(o.spec.template.spec) && (
    (has(o.spec.template.spec.containers) ? o.spec.template.spec.containers : []) +
    (has(o.spec.template.spec.initContainers) ? o.spec.template.spec.initContainers : [])
  ).exists(c, has(c.resources) && (
    (has(c.resources.limits) && c.resources.limits.exists(r,
      r in {exact} || {prefixes}.exists(p, r.startsWith(p)))) ||
    (has(c.resources.requests) && c.resources.requests.exists(r,
      r in {exact} || {prefixes}.exists(p, r.startsWith(p))))))))) ||
(oldObject != null && has(oldObject.spec.selector) && has(oldObject.spec.selector.matchLabels) &&
  {isolation} in oldObject.spec.selector.matchLabels)
"""


def match_condition(policy: Policy) -> dict[str, str]:
    """The ``matchConditions`` entry of both webhook configurations for ``policy``."""
    return {"name": MATCH_CONDITION_NAME, "expression": cel_expression(policy)}
