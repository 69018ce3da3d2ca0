"""The controller tests' cluster on a real kube-apiserver: the small synchronous
interface the tests use on the emulator (``create``, ``get``, ``put``, ``delete``,
``list``, ``api_client``), over HTTPS with the admin client certificate of
``tests/e2e/envtest.py``.

One API server serves a whole pytest session; ``reset()`` empties what the tests write
(Nodes, and the namespaced kinds in ``default`` and ``gpumix-system``) before each test.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from e2e.envtest import Envtest

Obj = dict[str, Any]

# resource name (as the emulator takes it) -> (API prefix, plural, namespaced)
RESOURCES: dict[str, tuple[str, str, bool]] = {
    "nodes": ("/api/v1", "nodes", False),
    "namespaces": ("/api/v1", "namespaces", False),
    "events": ("/api/v1", "events", True),
    "configmaps": ("/api/v1", "configmaps", True),
    "deployments.apps": ("/apis/apps/v1", "deployments", True),
    "horizontalpodautoscalers.autoscaling": (
        "/apis/autoscaling/v2",
        "horizontalpodautoscalers",
        True,
    ),
    "leases.coordination.k8s.io": ("/apis/coordination.k8s.io/v1", "leases", True),
    "gpumixes.gpumix.io": ("/apis/gpumix.io/v1alpha1", "gpumixes", True),
}
KINDS = {
    "Node": "nodes",
    "Namespace": "namespaces",
    "Event": "events",
    "ConfigMap": "configmaps",
    "Deployment": "deployments.apps",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers.autoscaling",
    "Lease": "leases.coordination.k8s.io",
    "GPUMix": "gpumixes.gpumix.io",
}
# What reset() empties: the namespaced kinds in these namespaces, and every Node.
TEST_NAMESPACES = ("default", "gpumix-system")


class RealClusterError(AssertionError):
    """A request to the real API server got an answer the test did not expect."""


class Conflict(RealClusterError):
    """409 on a write: the object changed since it was read (``update`` reads again)."""


class RealCluster:
    """A real kube-apiserver behind the emulator's direct-access methods."""

    def __init__(self, env: Envtest) -> None:
        self.env = env

    # ----------------------------------------------------------------- paths

    def _path(self, resource: str, namespace: str = "", name: str = "") -> str:
        try:
            prefix, plural, namespaced = RESOURCES[resource]
        except KeyError:
            raise RealClusterError(f"resource {resource!r} is not in RESOURCES") from None
        path = prefix
        if namespaced and namespace:
            path += f"/namespaces/{quote(namespace)}"
        path += f"/{plural}"
        if name:
            path += f"/{quote(name)}"
        return path

    def _of(self, obj: Obj) -> tuple[str, str, str]:
        kind = str(obj.get("kind"))
        if kind not in KINDS:
            raise RealClusterError(f"kind {kind!r} is not in KINDS")
        resource = KINDS[kind]
        meta = obj.get("metadata") or {}
        namespace = str(meta.get("namespace") or "") if RESOURCES[resource][2] else ""
        if RESOURCES[resource][2] and not namespace:
            namespace = "default"
        return resource, namespace, str(meta.get("name") or "")

    def _call(self, method: str, path: str, body: Any = None, expect: tuple[int, ...] = ()) -> Any:
        status, answer = self.env.request(method, path, body)
        if expect and status not in expect:
            raise RealClusterError(f"{method} {path}: HTTP {status}: {answer}")
        return answer

    # ----------------------------------------------------------------- the interface

    def create(self, obj: Obj) -> Obj:
        """Create ``obj`` (a Node keeps the ``status`` it is created with: capacity and
        allocatable). A Namespace that exists already is kept (without
        kube-controller-manager a deleted Namespace never goes away)."""
        resource, namespace, name = self._of(obj)
        path = self._path(resource, namespace)
        status, created = self.env.request("POST", path, obj)
        if status == 409 and resource == "namespaces":
            return dict(self._call("GET", self._path(resource, "", name), expect=(200,)))
        if status != 201:
            raise RealClusterError(f"POST {path}: HTTP {status}: {created}")
        return dict(created)

    def get(self, resource: str, name: str, namespace: str = "") -> Obj | None:
        status, obj = self.env.request("GET", self._path(resource, namespace, name))
        if status == 404:
            return None
        if status != 200:
            raise RealClusterError(f"GET {resource} {namespace}/{name}: HTTP {status}: {obj}")
        return dict(obj)

    def list(self, resource: str, namespace: str | None = None) -> list[Obj]:
        body = self._call("GET", self._path(resource, namespace or ""), expect=(200,))
        return list(body["items"])

    def put(self, obj: Obj) -> Obj:
        """Replace ``obj`` (its ``metadata.resourceVersion`` makes it conditional)."""
        resource, namespace, name = self._of(obj)
        path = self._path(resource, namespace, name)
        status, answer = self.env.request("PUT", path, obj)
        if status == 409:
            raise Conflict(f"PUT {path}: HTTP 409: {answer}")
        if status != 200:
            raise RealClusterError(f"PUT {path}: HTTP {status}: {answer}")
        return dict(answer)

    def delete(self, resource: str, name: str, namespace: str = "") -> Obj:
        return dict(self._call("DELETE", self._path(resource, namespace, name), expect=(200,)))

    def api_client(self) -> Any:
        """A kubernetes-asyncio ``ApiClient`` as cluster-admin (close it after use)."""
        return self.env.api_client()

    def reset(self) -> None:
        """Delete every Node, and everything the tests write in ``TEST_NAMESPACES``."""
        self._call("DELETE", self._path("nodes"), expect=(200,))
        for resource, (_prefix, _plural, namespaced) in RESOURCES.items():
            if not namespaced:
                continue
            for namespace in TEST_NAMESPACES:
                self._call("DELETE", self._path(resource, namespace), expect=(200,))
        left = {
            r: self.list(r, ns)
            for r in ("nodes", "deployments.apps", "gpumixes.gpumix.io")
            for ns in ("default",)
        }
        if any(left.values()):
            raise RealClusterError(f"left after reset: {left}")
