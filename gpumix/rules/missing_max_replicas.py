"""Rule ``missing-max-replicas``: an autoscaler without a ceiling (absent or 0)."""

from __future__ import annotations

from gpumix.kube.objects import AutoscalerView, DeploymentView
from gpumix.kube.policy import DEFAULT_MAX_REPLICAS_ANNOTATION, Policy
from gpumix.kube.snapshot import Snapshot
from gpumix.rules.base import Finding

RULE = "missing-max-replicas"


def default_ceiling(scaler: AutoscalerView, snapshot: Snapshot, policy: Policy) -> int:
    """The ceiling to inject: namespace annotation, else the policy default,
    capped by the GPU capacity of the target's type when the Nodes are known."""
    ns = snapshot.namespace(scaler.namespace)
    value = (
        ns.default_max_replicas
        if ns is not None and ns.default_max_replicas is not None
        else policy.default_max_replicas
    )
    value = min(value, policy.hard_max_replicas)
    capacity = capacity_replicas(scaler, snapshot, policy)
    if capacity is not None:
        value = min(value, max(capacity, 1))
    if scaler.floor is not None and scaler.floor > value:
        value = scaler.floor
    return value


def pool_gpus(dep: DeploymentView, snapshot: Snapshot, policy: Policy) -> int | None:
    """GPUs the pool of the Deployment's type can hold, when known: the allocatable
    GPUs of its Nodes (cordoned ones too), or the policy's ``gpuPoolCapacity`` for the
    type when that is more (a pool that scales out, or from zero)."""
    if dep.gpus_per_replica <= 0 or dep.gpu_type.name is None:
        return None
    present = snapshot.type_capacity(dep.gpu_type)
    declared = _declared(dep, snapshot, policy)
    if declared is None:
        return present
    return declared if present is None else max(present, declared)


def _declared(dep: DeploymentView, snapshot: Snapshot, policy: Policy) -> int | None:
    pools = policy.gpu_pool_capacity
    if not pools:
        return None
    for name in (dep.gpu_type.name, snapshot.gpu_type_name(dep.gpu_type)):
        if name is not None and name in pools:
            return pools[name]
    return None


def capacity_replicas(scaler: AutoscalerView, snapshot: Snapshot, policy: Policy) -> int | None:
    """How many replicas of the target fit on the GPUs its type's pool holds, when known."""
    if scaler.target is None:
        return None
    dep = snapshot.deployment(scaler.target)
    if dep is None or not dep.gpus_known:
        return None  # unknown (an unreadable GPU request: see unreadable_gpus)
    gpus = pool_gpus(dep, snapshot, policy)
    if gpus is None:
        return None
    return gpus // dep.gpus_per_replica


def unreadable_gpus(scaler: AutoscalerView, snapshot: Snapshot) -> str:
    """When the target's GPU request cannot be read: a sentence saying so, naming the
    field, for the messages of the rules that need the capacity; else ""."""
    dep = snapshot.deployment(scaler.target) if scaler.target else None
    if dep is None or dep.gpus_known:
        return ""
    return (
        f"the GPU request of {dep.ref} cannot be read ({dep.unreadable[0]}), so the "
        "GPUs of the cluster could not be taken into account"
    )


def check(scaler: AutoscalerView, snapshot: Snapshot, policy: Policy) -> list[Finding]:
    if scaler.ceiling is not None:
        return []
    value = default_ceiling(scaler, snapshot, policy)
    unknown = unreadable_gpus(scaler, snapshot)
    ns = snapshot.namespace(scaler.namespace)
    if ns is not None and ns.unreadable:
        unknown = "; ".join(
            [*([unknown] if unknown else []), f"Namespace {ns.name}: {ns.unreadable[0]}"]
        )
    return [
        Finding(
            RULE,
            "error",
            scaler.ref,
            f"{scaler.ref} has no ceiling ({scaler.ceiling_field} is absent or 0): under a "
            f"ramping load it can create pods until the cluster runs out. Fix: set "
            f"{scaler.ceiling_field} (default {value}: the {DEFAULT_MAX_REPLICAS_ANNOTATION} "
            "namespace annotation, else the policy default, capped by the GPUs of the target's "
            "type)" + (f"; {unknown}" if unknown else ""),
            (scaler.target,) if scaler.target else (),
            fixable=True,
        )
    ]
