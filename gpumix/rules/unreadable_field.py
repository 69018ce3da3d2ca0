"""Rule ``unreadable-field``: a Deployment whose GPU request gpumix cannot read.

The API server accepts quantities gpumix cannot count with (``nvidia.com/gpu:
1e400``, which it stores as ``10e399``; or, in manifest files, ``inf`` and
fractions).  Without the GPU request the capacity checks cannot be made, so the
object is reported, naming the field; the mode decides what that means (enforce:
denied, warn: a warning, audit: a metric).  Its type and selector are still read,
so the overlap rule keeps judging it.
"""

from __future__ import annotations

from gpumix.kube.objects import DeploymentView
from gpumix.rules.base import Finding

RULE = "unreadable-field"
SHOWN = 3
"""How many unreadable fields a message names; the rest are counted."""


def check(dep: DeploymentView) -> list[Finding]:
    if not dep.unreadable:
        return []
    shown = "; ".join(str(u) for u in dep.unreadable[:SHOWN])
    more = len(dep.unreadable) - SHOWN
    if more > 0:
        shown += f"; and {more} more"
    return [
        Finding(
            RULE,
            "error",
            dep.ref,
            f"{dep.ref}: {shown}. gpumix cannot tell how many GPUs a replica requests, so "
            "it cannot check ceilings or capacity for it. Fix: request a whole number of "
            'GPUs (such as "1")',
        )
    ]
