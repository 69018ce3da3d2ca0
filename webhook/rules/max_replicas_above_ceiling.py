"""Rule ``max-replicas-above-ceiling``: a ceiling above the hard limit or the GPUs that exist."""

from __future__ import annotations

from gpumix.kube.objects import AutoscalerView
from gpumix.kube.policy import Policy
from gpumix.kube.snapshot import Snapshot
from webhook.rules.base import Finding
from webhook.rules.missing_max_replicas import capacity_replicas, unreadable_gpus

RULE = "max-replicas-above-ceiling"


def check(scaler: AutoscalerView, snapshot: Snapshot, policy: Policy) -> list[Finding]:
    if scaler.ceiling is None:
        return []
    related = (scaler.target,) if scaler.target else ()
    if scaler.ceiling > policy.hard_max_replicas:
        return [
            Finding(
                RULE,
                "error",
                scaler.ref,
                f"{scaler.ref} sets {scaler.ceiling_field}={scaler.ceiling}, above the policy's "
                f"hard limit of {policy.hard_max_replicas}. Fix: lower it to at most "
                f"{policy.hard_max_replicas}",
                related,
            )
        ]
    unknown = unreadable_gpus(scaler, snapshot)
    if unknown:
        return [
            Finding(
                RULE,
                "warning",
                scaler.ref,
                f"{scaler.ref} sets {scaler.ceiling_field}={scaler.ceiling}, which gpumix could "
                f"check only against the hard limit: {unknown}",
                related,
            )
        ]
    capacity = capacity_replicas(scaler, snapshot)
    if capacity is not None and scaler.ceiling > capacity:
        dep = snapshot.deployment(scaler.target) if scaler.target else None
        assert dep is not None and dep.gpu_type.name is not None
        gpus = snapshot.gpu_capacity(dep.gpu_type.name)
        return [
            Finding(
                RULE,
                "error",
                scaler.ref,
                f"{scaler.ref} sets {scaler.ceiling_field}={scaler.ceiling}, but the cluster "
                f"has {gpus} allocatable {dep.gpu_type.name} GPUs, room for {capacity} replicas "
                f"of {dep.ref} at {dep.gpus_per_replica} GPU(s) each. Fix: lower it to at most "
                f"{capacity}",
                related,
            )
        ]
    return []
