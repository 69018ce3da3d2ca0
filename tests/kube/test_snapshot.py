"""The snapshot's overlap index against brute force, and its bookkeeping."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gpumix.kube.objects import AutoscalerView, DeploymentView, ObjectRef, view_of
from gpumix.kube.policy import Policy
from gpumix.kube.selectors import overlaps, parse_selector
from gpumix.kube.snapshot import Snapshot

POLICY = Policy()
KEYS = ("app", "model", "gpu", "tier")
VALUES = ("x", "y", "z")
NAMESPACES = ("ns1", "ns2")

value_lists = st.lists(st.sampled_from(VALUES), min_size=1, max_size=2, unique=True)


@st.composite
def raw_selectors(draw: st.DrawFn) -> dict[str, Any]:
    labels = draw(st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=3))
    exprs = []
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(KEYS))
        op = draw(st.sampled_from(("In", "NotIn", "Exists", "DoesNotExist")))
        expr: dict[str, Any] = {"key": key, "operator": op}
        if op in ("In", "NotIn"):
            expr["values"] = draw(value_lists)
        exprs.append(expr)
    raw: dict[str, Any] = {"matchLabels": labels}
    if exprs:
        raw["matchExpressions"] = exprs
    if not labels and not exprs:
        raw["matchLabels"] = {"app": "x"}  # a Deployment selector is never empty
    return raw


def deployment(name: str, ns: str, selector: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": selector, "template": {"metadata": {"labels": {}}}},
    }


def dep_view(name: str, ns: str, selector: dict[str, Any]) -> DeploymentView:
    v = view_of(deployment(name, ns, selector), POLICY)
    assert isinstance(v, DeploymentView)
    return v


deployments = st.lists(
    st.tuples(st.sampled_from(NAMESPACES), raw_selectors()), min_size=1, max_size=40
)


def check_superset(snap: Snapshot) -> None:
    for query in snap.deployments.values():
        for ns in NAMESPACES:
            got = {d.ref for d in snap.overlap_candidates(query.selector, ns)}
            exact = {
                d.ref
                for d in snap.deployments.values()
                if d.namespace == ns and overlaps(query.selector, d.selector)
            }
            assert exact <= got
            assert all(r.namespace == ns for r in got)


@settings(max_examples=60, deadline=None)
@given(deployments)
def test_index_returns_a_superset_of_the_exact_overlaps(items: list[tuple[str, Any]]) -> None:
    snap = Snapshot()
    for i, (ns, sel) in enumerate(items):
        snap.put(dep_view(f"d{i}", ns, sel))
    check_superset(snap)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(0, 9), st.sampled_from(NAMESPACES), raw_selectors()),
        max_size=40,
    )
)
def test_put_and_remove_keep_the_index_consistent(ops: list[tuple[bool, int, str, Any]]) -> None:
    snap = Snapshot()
    live: dict[tuple[str, str], Any] = {}
    for is_put, i, ns, sel in ops:
        name = f"d{i}"
        if is_put:
            snap.put(dep_view(name, ns, sel))
            live[(ns, name)] = sel
        else:
            snap.remove("Deployment", ns, name)
            live.pop((ns, name), None)
    fresh = Snapshot()
    for (ns, name), sel in live.items():
        fresh.put(dep_view(name, ns, sel))
    assert snap.deployments == fresh.deployments
    assert snap._index == fresh._index  # no stale members, postings or groups
    check_superset(snap)


def test_candidates_are_pruned() -> None:
    snap = Snapshot()
    for i in range(50):
        snap.put(dep_view(f"d{i}", "ns1", {"matchLabels": {"app": f"a{i}", "model": "m"}}))
    query = parse_selector({"matchLabels": {"app": "a7"}})
    assert [d.name for d in snap.overlap_candidates(query, "ns1")] == ["d7"]
    assert list(snap.overlap_candidates(query, "ns2")) == []
    broad = parse_selector({"matchLabels": {"model": "m"}})
    assert len(list(snap.overlap_candidates(broad, "ns1"))) == 50


def scaler(name: str, target: dict[str, Any] | None, ceiling: int = 5) -> AutoscalerView:
    spec: dict[str, Any] = {"maxReplicas": ceiling}
    if target is not None:
        spec["scaleTargetRef"] = target
    obj = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": "ns1"},
        "spec": spec,
    }
    v = view_of(obj, POLICY)
    assert isinstance(v, AutoscalerView)
    return v


def test_autoscaler_targets() -> None:
    snap = Snapshot()
    dep = dep_view("engine", "ns1", {"matchLabels": {"app": "x"}})
    snap.put(dep)
    snap.put(scaler("h1", {"kind": "Deployment", "name": "engine"}))
    snap.put(scaler("h2", {"kind": "Deployment", "name": "engine"}))
    snap.put(scaler("h3", None))
    assert [s.name for s in snap.autoscalers_targeting(dep.ref)] == ["h1", "h2"]
    # re-put with a new target moves it
    snap.put(scaler("h2", {"kind": "Deployment", "name": "other"}))
    assert [s.name for s in snap.autoscalers_targeting(dep.ref)] == ["h1"]
    snap.remove("HorizontalPodAutoscaler", "ns1", "h1")
    assert snap.autoscalers_targeting(dep.ref) == []
    assert set(snap._targets) == {ObjectRef("Deployment", "ns1", "other")}


def test_autoscaler_of_another_kind_does_not_target_a_same_named_deployment() -> None:
    snap = Snapshot()
    dep = dep_view("engine", "ns1", {"matchLabels": {"app": "x"}})
    snap.put(dep)
    sts = scaler("h1", {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "engine"})
    snap.put(sts)
    assert snap.autoscalers_targeting(dep.ref) == []
    assert sts.target is not None and snap.deployment(sts.target) is None
    assert snap.deployment(dep.ref) is dep


def node(name: str, gpu: str, count: int, unschedulable: bool = False) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": gpu}},
        "spec": {"unschedulable": unschedulable},
        "status": {"allocatable": {"nvidia.com/gpu": str(count)}},
    }


def from_objects_nodes() -> Snapshot:
    return Snapshot.from_objects(
        [
            node("n1", "A100", 8),
            node("n2", "A100", 8),
            node("n3", "A100", 8, unschedulable=True),
            node("n4", "A40", 4),
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ml"}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc"}},
        ],
        POLICY,
    )


def test_gpu_capacity_and_namespaces() -> None:
    snap = from_objects_nodes()
    assert snap.gpu_capacity("A100") == 24  # the cordoned n3 counts: a drain is temporary
    assert snap.gpu_capacity("A40") == 4
    assert snap.gpu_capacity("L20") is None
    ns = snap.namespace("ml")
    assert ns is not None and ns.name == "ml"
    assert snap.namespace("other") is None
    snap.remove("Node", "", "n4")
    snap.remove("Namespace", "", "ml")
    assert snap.gpu_capacity("A40") is None
    assert snap.namespace("ml") is None


def test_gpu_capacity_follows_node_changes_after_it_was_asked() -> None:
    """Capacity is remembered between questions, and forgotten when a Node changes."""
    snap = from_objects_nodes()
    assert snap.gpu_capacity("A100") == 24 and snap.gpu_capacity("L20") is None
    for obj in (node("n5", "L20", 2), node("n1", "A100", 4)):
        view = view_of(obj, POLICY)
        assert view is not None
        snap.put(view)
    assert snap.gpu_capacity("A100") == 20  # n1 now has 4
    assert snap.gpu_capacity("L20") == 2  # a new Node of a type not seen before


def test_two_label_keys_on_the_same_nodes_are_one_gpu_type() -> None:
    from gpumix.kube.gputype import GpuType

    def a100_node(name: str, cordoned: bool = False) -> dict[str, Any]:
        labels = {
            "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
            "node.kubernetes.io/instance-type": "p4d.24xlarge",
        }
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": labels},
            "spec": {"unschedulable": cordoned},
            "status": {"allocatable": {"nvidia.com/gpu": "8"}},
        }

    by_machine = GpuType("pinned", "p4d.24xlarge", "", "node.kubernetes.io/instance-type")
    by_product = GpuType("pinned", "NVIDIA-A100-SXM4-80GB", "", "nvidia.com/gpu.product")
    l4 = GpuType("pinned", "NVIDIA-L4", "", "nvidia.com/gpu.product")
    snap = Snapshot()
    assert not snap.same_gpu_type(by_machine, by_product)  # no Nodes say so (yet)
    for obj in (a100_node("n1"), a100_node("n2", cordoned=True)):
        view = view_of(obj, POLICY)
        assert view is not None
        snap.put(view)
    assert snap.same_gpu_type(by_machine, by_product)
    assert snap.gpu_type_name(by_machine) == "NVIDIA-A100-SXM4-80GB"
    assert not snap.same_gpu_type(by_machine, l4)
    assert snap.type_capacity(by_machine) == 16 and snap.type_capacity(by_product) == 16
    assert snap.type_capacity(l4) is None
