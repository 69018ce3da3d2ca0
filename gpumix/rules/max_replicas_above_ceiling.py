"""Rule ``max-replicas-above-ceiling``: a ceiling above the hard limit or the GPU pool.

The pool of a GPU type is its Nodes (cordoned ones too) or, when more, the policy's
``gpuPoolCapacity`` for it. Admission judges a ceiling only when it is set or raised
(``gpumix.admission``); the audit judges every ceiling.
"""

from __future__ import annotations

from gpumix.kube.objects import AutoscalerView
from gpumix.kube.policy import Policy
from gpumix.kube.snapshot import Snapshot
from gpumix.rules.base import Finding
from gpumix.rules.missing_max_replicas import capacity_replicas, pool_gpus, unreadable_gpus

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
    capacity = capacity_replicas(scaler, snapshot, policy)
    if capacity is not None and scaler.ceiling > capacity:
        dep = snapshot.deployment(scaler.target) if scaler.target else None
        assert dep is not None and dep.gpu_type.name is not None
        gpus = pool_gpus(dep, snapshot, policy)
        return [
            Finding(
                RULE,
                "error",
                scaler.ref,
                f"{scaler.ref} sets {scaler.ceiling_field}={scaler.ceiling}, but the pool of "
                f"{dep.gpu_type.name} GPUs holds {gpus} (its Nodes' allocatable GPUs, cordoned "
                f"ones included, or the policy's gpuPoolCapacity), room for {capacity} replicas "
                f"of {dep.ref} at {dep.gpus_per_replica} GPU(s) each. Fix: lower it to at most "
                f"{capacity}, or declare a pool that scales out in the policy's "
                f"gpuPoolCapacity",
                related,
            )
        ]
    return []
