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


template_labels = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=3)
related_items = st.lists(
    st.tuples(st.sampled_from(NAMESPACES), raw_selectors(), template_labels),
    min_size=1,
    max_size=40,
)


def reportable(a: DeploymentView, b: DeploymentView) -> bool:
    """What the overlap rule can report: overlapping, and sharing a selector key or one
    selecting the other's template (the rule then judges scope and severity)."""
    return overlaps(a.selector, b.selector) and (
        bool(a.selector.keys & b.selector.keys)
        or a.selector.matches(b.template_labels)
        or b.selector.matches(a.template_labels)
    )


@settings(max_examples=80, deadline=None)
@given(related_items)
def test_related_candidates_are_a_superset_of_every_reportable_pair(
    items: list[tuple[str, Any, dict[str, str]]],
) -> None:
    snap = Snapshot()
    for i, (ns, sel, labels) in enumerate(items):
        obj = deployment(f"d{i}", ns, sel)
        obj["spec"]["template"]["metadata"]["labels"] = labels
        view = view_of(obj, POLICY)
        assert isinstance(view, DeploymentView)
        snap.put(view)
    for query in snap.deployments.values():
        got = {d.ref for d in snap.related_candidates(query)}
        exact = {
            d.ref
            for d in snap.deployments.values()
            if d.namespace == query.namespace and reportable(query, d)
        }
        assert exact <= got
        assert all(r.namespace == query.namespace for r in got)


def test_related_candidates_do_not_grow_with_the_namespace() -> None:
    """A selector that pins a value is answered from postings: Deployments that pin
    other keys are not taken whole (what made admission cost grow with the namespace)."""
    snap = Snapshot()
    for i in range(300):
        obj = deployment(f"d{i}", "ns1", {"matchLabels": {"app": f"a{i}"}})
        obj["spec"]["template"]["metadata"]["labels"] = {"app": f"a{i}", "model": f"m{i % 3}"}
        snap.put(dep_view_of(obj))
    query = deployment("q", "ns1", {"matchLabels": {"model": "fresh"}})
    query["spec"]["template"]["metadata"]["labels"] = {"model": "fresh"}
    assert list(snap.related_candidates(dep_view_of(query))) == []
    assert len(list(snap.overlap_candidates(dep_view_of(query).selector, "ns1"))) == 300
    # a selector that does select some templates finds exactly those
    query["spec"]["selector"] = {"matchLabels": {"model": "m1"}}
    found = [d.name for d in snap.related_candidates(dep_view_of(query))]
    assert len(found) == 100 and all(int(n[1:]) % 3 == 1 for n in found)


def dep_view_of(obj: dict[str, Any]) -> DeploymentView:
    view = view_of(obj, POLICY)
    assert isinstance(view, DeploymentView)
    return view


def test_unreadable_objects_are_recorded_and_the_rest_read() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(5000):  # past the recursion limit for anything that would recurse
        node["x"] = {}
        node = node["x"]
    objs = [
        deployment("d0", "ns1", {"matchLabels": {"app": "x"}}),
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "odd"}, "spec": deep},
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "n"},
            "status": {"allocatable": {"nvidia.com/gpu": "1e400"}},
        },
    ]
    snap = Snapshot.from_objects(objs, POLICY)
    assert ObjectRef("Deployment", "ns1", "d0") in snap.deployments
    assert ObjectRef("Deployment", "default", "odd") in snap.deployments
    assert [u.field for u in snap.nodes["n"].unreadable] == ["status.allocatable[nvidia.com/gpu]"]
    snap.mark_unreadable(ObjectRef("Deployment", "ns1", "d0"), "why")
    assert ObjectRef("Deployment", "ns1", "d0") not in snap.deployments
    assert snap.unreadable == {ObjectRef("Deployment", "ns1", "d0"): "why"}
    snap.put(dep_view("d0", "ns1", {"matchLabels": {"app": "x"}}))
    assert not snap.unreadable  # read again: no longer unreadable
    snap.mark_unreadable(ObjectRef("Deployment", "ns1", "d0"), "why")
    snap.remove("Deployment", "ns1", "d0")
    assert not snap.unreadable


def test_gpu_capacity_is_unknown_when_a_nodes_allocatable_cannot_be_read() -> None:
    def node(name: str, gpus: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": "A100"}},
            "status": {"allocatable": {"nvidia.com/gpu": gpus}},
        }

    assert (
        Snapshot.from_objects([node("a", "8"), node("b", "8")], POLICY).gpu_capacity("A100") == 16
    )
    snap = Snapshot.from_objects([node("a", "8"), node("b", "10e399")], POLICY)
    assert snap.gpu_capacity("A100") is None


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
