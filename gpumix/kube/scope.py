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

The mutating webhook carries a second condition, :func:`mutation_condition`: of the
writes in scope, only those its step could change or warn about (:func:`may_mutate`,
a necessary condition; :func:`mutation_expression` is its CEL). The validating
webhook sees every write in scope.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from gpumix.kube.fields import LABEL_VALUE_PATTERN, as_list, as_mapping, is_label_value
from gpumix.kube.objects import AUTOSCALER_KINDS
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


_SELECTOR_LABELS = ("spec", "selector", "matchLabels")
_TEMPLATE_LABELS = ("spec", "template", "metadata", "labels")


def _labels_at(obj: Mapping[str, Any], *path: str) -> Mapping[str, Any]:
    node = obj
    for key in path:
        node = as_mapping(node.get(key))
    return node


def selector_labels(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """A Deployment's ``spec.selector.matchLabels`` as found ({} when absent or not a map)."""
    return _labels_at(obj, *_SELECTOR_LABELS)


def template_labels(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """A Deployment's pod template labels as found ({} when absent or not a map)."""
    return _labels_at(obj, *_TEMPLATE_LABELS)


def _isolated(obj: Mapping[str, Any]) -> bool:
    return DEPLOYMENT_LABEL in selector_labels(obj)


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


# -- the mutating step: which writes it could change ----------------------------------

MUTATION_CONDITION_NAME = "gpumix-may-mutate"
"""The name of the mutating webhook's second match condition."""


def isolation_complete(obj: Mapping[str, Any]) -> bool:
    """Whether a Deployment already carries all the isolation fix could add: its selector
    and pod template pin ``gpumix.io/deployment`` to its name (a label value, so the fix
    would write that same value) and the template has a ``gpumix.io/gpu-type`` label."""
    name = _labels_at(obj, "metadata").get("name")
    if not isinstance(name, str) or not name or not is_label_value(name):
        return False
    template = template_labels(obj)
    return (
        selector_labels(obj).get(DEPLOYMENT_LABEL) == name
        and template.get(DEPLOYMENT_LABEL) == name
        and GPU_TYPE_LABEL in template
    )


def _drops_isolation(obj: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    """Whether an UPDATE drops a label an earlier fix added (the mutating step puts it
    back) or changes the selector (the mutating step warns how to recreate)."""
    if DEPLOYMENT_LABEL in selector_labels(old) and DEPLOYMENT_LABEL not in selector_labels(obj):
        return True
    if GPU_TYPE_LABEL in template_labels(old) and GPU_TYPE_LABEL not in template_labels(obj):
        return True
    old_spec, spec = as_mapping(old.get("spec")), as_mapping(obj.get("spec"))
    return old_spec.get("selector") != spec.get("selector")


def _has_ceiling(obj: Mapping[str, Any], ceiling_key: str) -> bool:
    value = as_mapping(obj.get("spec")).get(ceiling_key)
    return isinstance(value, int) and not isinstance(value, bool) and value != 0


def may_mutate(
    group: str, operation: str, obj: Mapping[str, Any] | None, old: Mapping[str, Any] | None
) -> bool:
    """Whether the mutating step could change a write of a resource of API group
    ``group`` (or warn about it): a necessary condition, read from the objects alone.

    - A Deployment CREATE, unless it is already isolated (:func:`isolation_complete`):
      the fix of an overlap or of the first of a model group adds exactly those labels.
    - A Deployment UPDATE that drops ``gpumix.io/deployment`` from the selector or
      ``gpumix.io/gpu-type`` from the pod template, or changes the selector.
    - An autoscaler without a ceiling: its ceiling field absent, 0 (the API server sends
      a left-out HPA ``maxReplicas`` as 0) or not an integer.
    - A write of any other group (the shipped configurations send none).

    Everything else is allowed unchanged by the mutating step in every mode, so the
    mutating webhook's configuration carries this as a second match condition
    (:func:`mutation_condition`) and :func:`gpumix.admission.review` applies it too."""
    if group == "apps":
        if old:
            return obj is None or _drops_isolation(obj, old)
        return operation == "CREATE" and (obj is None or not isolation_complete(obj))
    for info in AUTOSCALER_KINDS.values():
        if group in info.groups:
            return obj is None or not _has_ceiling(obj, info.ceiling_field)
    return True


def _cel_has(root: str, path: tuple[str, ...]) -> str:
    """``has()`` of every step of ``root.path`` (no object makes it fail)."""
    return " && ".join(f"has({'.'.join((root, *path[: i + 1]))})" for i in range(len(path)))


def _cel_map_has(root: str, path: tuple[str, ...], key: str) -> str:
    return f"({_cel_has(root, path)} && {json.dumps(key)} in {'.'.join((root, *path))})"


def mutation_expression() -> str:
    """The CEL text of :func:`may_mutate` (variables ``request``, ``object``,
    ``oldObject`` of a webhook match condition). It reads only gpumix's own labels and
    the autoscalers' ceiling fields, so it does not depend on the policy."""
    deployment, gpu_type = DEPLOYMENT_LABEL, GPU_TYPE_LABEL
    pin = json.dumps(deployment)
    complete = " && ".join(
        (
            "has(object.metadata.name)",
            f"object.metadata.name.matches({json.dumps(LABEL_VALUE_PATTERN)})",
            "size(object.metadata.name) <= 63",
            _cel_map_has("object", _SELECTOR_LABELS, deployment),
            f"object.spec.selector.matchLabels[{pin}] == object.metadata.name",
            _cel_map_has("object", _TEMPLATE_LABELS, deployment),
            f"object.spec.template.metadata.labels[{pin}] == object.metadata.name",
            f"{json.dumps(gpu_type)} in object.spec.template.metadata.labels",
        )
    )
    drops = " ||\n    ".join(
        (
            f"({_cel_map_has('oldObject', _SELECTOR_LABELS, deployment)} && "
            f"!{_cel_map_has('object', _SELECTOR_LABELS, deployment)})",
            f"({_cel_map_has('oldObject', _TEMPLATE_LABELS, gpu_type)} && "
            f"!{_cel_map_has('object', _TEMPLATE_LABELS, gpu_type)})",
            "(has(oldObject.spec) && has(oldObject.spec.selector) ? "
            "!(has(object.spec) && has(object.spec.selector)) || "
            "object.spec.selector != oldObject.spec.selector : "
            "has(object.spec) && has(object.spec.selector))",
        )
    )
    clauses = [
        f'(request.resource.group == "apps" && (oldObject != null ?\n    {drops} :\n'
        f'    request.operation == "CREATE" && !({complete})))'
    ]
    groups: list[str] = ["apps"]
    for info in AUTOSCALER_KINDS.values():
        field = info.ceiling_field
        ceiling = f"object.spec.{field}"
        clauses.append(
            f"(request.resource.group in {_cel_list(info.groups)} && "
            f"!(has(object.spec) && has({ceiling}) && type({ceiling}) == int && {ceiling} != 0))"
        )
        groups.extend(info.groups)
    clauses.append(f"!(request.resource.group in {_cel_list(groups)})")
    return " ||\n".join(clauses) + "\n"


def mutation_condition() -> dict[str, str]:
    """The mutating webhook's second ``matchConditions`` entry."""
    return {"name": MUTATION_CONDITION_NAME, "expression": mutation_expression()}
