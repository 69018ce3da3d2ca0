"""gpumix's one Kubernetes I/O layer: a raw-JSON client (:mod:`.client`) and the
informer that keeps watched resources in local stores (:mod:`.informer`).

The webhook's cluster cache, the controller and the audit all use these; nothing
else in gpumix talks to the API server.
"""
