"""The controller's reconcile loop against an API server, through kubernetes-asyncio.

Every test runs twice: on the in-process emulator and on a real kube-apiserver
v1.36.3 + etcd (the ``backend`` fixture, see conftest.py). The 409s the tests need
are real ones on both: another client writes the object between the controller's
read and its write (``lose_scale_races``, and the Lease test), so no fault injection
of the emulator is needed here. Tests that need it (injected 500s, outages that drop
every watch) are in test_reconcile_cache.py, on the emulator only.
"""

from __future__ import annotations

from typing import Any

from controller_helpers import (
    GreedySolver,
    bucket,
    condition,
    deployment,
    gmx_status,
    gpumix,
    node,
    replicas,
    running,
    settings,
    update,
    wait_for,
)


def cluster(backend: Any, *, a100_nodes: int = 2, a40_nodes: int = 2) -> None:
    for i in range(a100_nodes):
        backend.create(node(f"a100-{i}", "A100", 8))
    for i in range(a40_nodes):
        backend.create(node(f"a40-{i}", "A40", 8))
    backend.create(deployment("llama-a100", "A100", replicas=1))
    backend.create(deployment("llama-a40", "A40", replicas=1))


async def test_static_load_ends_with_the_solvers_replicas(backend: Any, backend_api: Any) -> None:
    cluster(backend)
    backend.create(gpumix(load=[bucket(512, 128, 30.0), bucket(2048, 512, 3.0)]))
    solver = GreedySolver()
    async with running(backend_api, settings(), solver=solver):
        status = await wait_for(
            lambda: (
                condition(gmx_status(backend), "Scaling").get("reason") == "Scaled"
                or condition(gmx_status(backend), "Scaling").get("reason") == "Stable"
            ),
            what="a plan",
        )
        assert status
        _, sol = solver.calls[-1]
        await wait_for(
            lambda: (
                replicas(backend, "llama-a100") == sol.replicas["A100"]
                and replicas(backend, "llama-a40") == sol.replicas["A40"]
            ),
            what="replicas of the plan",
        )
        st = gmx_status(backend)
        assert condition(st, "Ready")["status"] == "True"
        assert condition(st, "LoadAvailable")["status"] == "True"
        assert st["solverStatus"] == "OPTIMAL"
        await wait_for(
            lambda: "ScaledUp" in {e["reason"] for e in backend.list("events", "default")},
            what="a ScaledUp Event",
        )


def set_load(backend: Any, buckets: list[dict[str, Any]], name: str = "llama") -> None:
    def change(obj: dict[str, Any]) -> None:
        obj["spec"]["loadSource"] = {"static": {"buckets": buckets}}

    update(backend, "gpumixes.gpumix.io", name, "default", change)


async def test_load_change_replans(backend: Any, backend_api: Any) -> None:
    cluster(backend)
    backend.create(gpumix(load=[bucket(512, 128, 10.0)]))
    solver = GreedySolver()
    async with running(backend_api, settings(), solver=solver):
        await wait_for(lambda: replicas(backend, "llama-a40") == 2, what="first plan")
        set_load(backend, [bucket(512, 128, 40.0), bucket(2048, 512, 4.0)])
        await wait_for(
            lambda: replicas(backend, "llama-a40") == 8 and replicas(backend, "llama-a100") == 2,
            what="re-plan after the load change",
        )
        await wait_for(
            lambda: gmx_status(backend)["load"]["requestsPerSecond"] == 44.0, what="load in status"
        )
        # the spec changed once: generation 2, and the status says it is for that spec
        gmx = backend.get("gpumixes.gpumix.io", "llama", "default")
        assert gmx["metadata"]["generation"] == 2
        await wait_for(
            lambda: gmx_status(backend).get("observedGeneration") == 2, what="observedGeneration"
        )


async def test_capacity_drop_scales_within_what_exists(backend: Any, backend_api: Any) -> None:
    cluster(backend, a100_nodes=1, a40_nodes=2)
    backend.create(gpumix(load=[bucket(512, 128, 60.0)]))
    async with running(backend_api, settings(), solver=GreedySolver()):
        await wait_for(lambda: replicas(backend, "llama-a40") == 12, what="12 A40 replicas")
        backend.delete("nodes", "a40-1")  # 8 A40 GPUs left
        await wait_for(lambda: replicas(backend, "llama-a40") == 8, what="A40 within 8 GPUs")

        def a40_entry() -> dict[str, Any]:
            return next(e for e in gmx_status(backend)["plan"] if e["deployment"] == "llama-a40")

        await wait_for(lambda: a40_entry()["ceiling"] == 8, what="the ceiling in the status")
        assert "free A40 GPUs" in a40_entry()["ceilingReason"]
        assert replicas(backend, "llama-a100") <= 8


def lose_scale_races(run: Any, backend: Any, name: str, n: int) -> None:
    """The controller's next ``n`` ``/scale`` writes to Deployment ``name`` each lose a
    race: just before each, another client changes the Deployment (an annotation), so
    the resourceVersion the controller sends is stale and the API server answers 409."""
    kube = run.controller.kube
    request = kube.request
    left = [n]

    async def racing(method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        if method == "PUT" and path.endswith(f"/deployments/{name}/scale") and left[0] > 0:
            left[0] -= 1
            other = backend.get("deployments.apps", name, "default")
            other["metadata"].setdefault("annotations", {})["example.com/race"] = str(left[0])
            backend.put(other)
        return await request(method, path, *args, **kwargs)

    kube.request = racing


async def test_conflicting_scale_write_is_retried(backend: Any, backend_api: Any) -> None:
    cluster(backend)
    backend.create(gpumix(load=[bucket(512, 128, 10.0)]))
    async with running(backend_api, settings(), solver=GreedySolver()) as run:
        await wait_for(lambda: replicas(backend, "llama-a40") == 2, what="first plan")
        puts = run.controller.kube.calls["put"]
        lose_scale_races(run, backend, "llama-a40", 2)
        set_load(backend, [bucket(512, 128, 20.0)])
        await wait_for(lambda: replicas(backend, "llama-a40") == 4, what="scale after two 409s")
        assert run.controller.kube.calls["put"] - puts == 3  # 2 conflicts + the write
        events = backend.list("events", "default")
        assert not [e for e in events if e["reason"] == "ScaleFailed"]


async def test_failed_scale_reports_scale_failed_instead_of_scaled(
    backend: Any, backend_api: Any
) -> None:
    cluster(backend)
    backend.create(gpumix(load=[bucket(512, 128, 10.0)]))
    async with running(backend_api, settings(), solver=GreedySolver()) as run:
        await wait_for(lambda: replicas(backend, "llama-a40") == 2, what="first plan")
        lose_scale_races(run, backend, "llama-a40", 1000)
        set_load(backend, [bucket(512, 128, 20.0)])

        def events(reason: str) -> list[str]:
            return [
                e["message"] for e in backend.list("events", "default") if e["reason"] == reason
            ]

        await wait_for(lambda: events("ScaleFailed"), what="a ScaleFailed Event")
        assert all("llama-a40 to 4" in m for m in events("ScaleFailed")), events("ScaleFailed")
        # The plan's ScaledUp Event for the write that failed is not recorded.
        assert not [m for m in events("ScaledUp") if "llama-a40 (A40) from 2 to 4" in m]
        assert replicas(backend, "llama-a40") == 2


async def test_autoscaled_member_is_not_scaled(backend: Any, backend_api: Any) -> None:
    from controller_helpers import hpa

    cluster(backend)
    backend.create(hpa("llama-a40", "llama-a40", 5))
    backend.create(gpumix(load=[bucket(512, 128, 40.0)]))
    async with running(backend_api, settings(metrics_port=0), solver=GreedySolver()) as run:
        await wait_for(
            lambda: condition(gmx_status(backend), "Scaling").get("reason") == "MembersAutoscaled",
            what="the autoscaled condition",
        )
        assert replicas(backend, "llama-a40") == 1  # untouched
        entry = next(e for e in gmx_status(backend)["plan"] if e["deployment"] == "llama-a40")
        # planned with the replicas its HPA chose; the other member takes the rest
        assert entry["recommendedReplicas"] == 1
        assert entry["ceiling"] == 5
        assert "HorizontalPodAutoscaler default/llama-a40" in entry["autoscaledBy"]
        import aiohttp

        async with aiohttp.ClientSession() as http:
            url = f"{run.controller.metrics_url}/metrics/default/llama-a40"
            async with http.get(url) as resp:
                text = await resp.text()
            assert resp.status == 200
            assert 'vllm:deployment_replicas{model_name="llama"} 1' in text
            async with http.get(f"{run.controller.metrics_url}/metrics/default/nope") as resp:
                assert resp.status == 404
            async with http.get(f"{run.controller.metrics_url}/metrics") as resp:
                body = await resp.text()
            assert 'gpumix_recommended_replicas{deployment="llama-a40"' in body
            assert 'gpumix_autoscaler_max_replicas{gpu_type="A40"' in body
            async with http.get(f"{run.controller.metrics_url}/readyz") as resp:
                assert resp.status == 200


async def test_bad_specs_become_conditions_and_events(backend: Any, backend_api: Any) -> None:
    cluster(backend)
    backend.create(deployment("other-a100", "A100", model="shared", isolated=False))
    backend.create(deployment("other-a40", "A40", model="shared", isolated=False))
    backend.create(gpumix("unknown-price", prices={"A100": 2.0, "A40": 0.8, "H200": 9.0}))
    backend.create(gpumix("overlap", model="shared"))
    backend.create(gpumix("no-profiles", profiles={"configMapRef": {"name": "missing-profiles"}}))
    # valid for the CRD schema, not for the parser: minReplicas above maxReplicas
    backend.create(
        gpumix("bad-field", extra={"gpuTypes": {"A100": {"minReplicas": 5, "maxReplicas": 2}}})
    )
    async with running(backend_api, settings(), solver=GreedySolver()) as run:
        expected = {
            "unknown-price": "UnknownGpuType",
            "overlap": "OverlappingMembers",
            "no-profiles": "ProfilesUnavailable",
            "bad-field": "InvalidSpec",
        }

        def all_reported() -> bool:
            return all(
                condition(gmx_status(backend, n), "Ready").get("reason") == r
                for n, r in expected.items()
            )

        await wait_for(all_reported, what="Ready=False on every bad GPUMix")
        msg = condition(gmx_status(backend, "overlap"), "Ready")["message"]
        assert "other-a100" in msg and "other-a40" in msg
        assert (
            "missing-profiles" in condition(gmx_status(backend, "no-profiles"), "Ready")["message"]
        )
        await wait_for(
            lambda: (
                {e["reason"] for e in backend.list("events", "default")} >= set(expected.values())
            ),
            what="one Warning Event per bad GPUMix",
        )
        warnings = [e for e in backend.list("events", "default") if e["type"] == "Warning"]
        assert len(warnings) == 4
        passes = run.controller.passes
        set_load(backend, [bucket(512, 128, 3.0)], name="overlap")
        await wait_for(lambda: run.controller.passes > passes, what="another pass")
        assert run.controller.last_pass is not None and run.controller.last_pass.errors == 0
        assert replicas(backend, "other-a100") == 1 and replicas(backend, "other-a40") == 1
        # no repeated Events for unchanged conditions
        assert len([e for e in backend.list("events", "default") if e["type"] == "Warning"]) == 4


async def test_two_controllers_only_the_leader_writes(backend: Any) -> None:
    cluster(backend)
    backend.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gpumix-system"}})
    backend.create(gpumix(load=[bucket(512, 128, 10.0)]))
    lease = dict(
        leader_election=True, lease_duration_s=2.0, renew_deadline_s=1.5, retry_period_s=0.2
    )
    async with backend.api_client() as api_a, backend.api_client() as api_b:
        async with running(api_a, settings(identity="a", **lease), solver=GreedySolver()) as a:
            await wait_for(lambda: a.controller.can_write(), what="a leads")
            async with running(api_b, settings(identity="b", **lease), solver=GreedySolver()) as b:
                await wait_for(lambda: replicas(backend, "llama-a40") == 2, what="a scales")
                set_load(backend, [bucket(512, 128, 20.0)])
                await wait_for(lambda: replicas(backend, "llama-a40") == 4, what="a re-plans")
                assert not b.controller.can_write()
                assert b.controller.passes == 0
                assert b.controller.kube.calls["put"] == 0
                assert b.controller.kube.calls["patch"] == 0
                assert b.controller.kube.calls["post"] == 0
                holder = backend.get(
                    "leases.coordination.k8s.io", "gpumix-controller", "gpumix-system"
                )
                assert holder["spec"]["holderIdentity"] == "a"
                reporters = {e.get("reportingInstance") for e in backend.list("events", "default")}
                assert reporters == {"a"}
            # a keeps leading after b stopped
            assert a.controller.can_write()
        # a released the lease on shutdown; a new contender takes it at once
        async with running(api_b, settings(identity="b", **lease), solver=GreedySolver()) as b:
            await wait_for(lambda: b.controller.can_write(), timeout=3, what="b leads")
            set_load(backend, [bucket(512, 128, 30.0)])
            await wait_for(lambda: replicas(backend, "llama-a40") == 6, what="b re-plans")


async def test_losing_the_lease_stops_writes_at_once(backend: Any, backend_api: Any) -> None:
    from gpumix.controller.leader import LeaderElector, LeaseSettings
    from gpumix.kubeio.client import KubeClient

    backend.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gpumix-system"}})
    now = [1000.0]
    kube = KubeClient(backend_api)
    cfg = LeaseSettings(identity="a", lease_duration_s=10, renew_deadline_s=8)
    a = LeaderElector(kube, cfg, lambda: now[0])
    b = LeaderElector(kube, LeaseSettings(identity="b", lease_duration_s=10), lambda: now[0])
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    now[0] += 5
    assert await a.try_acquire_or_renew()  # renewed
    assert not await b.try_acquire_or_renew()
    now[0] += 9  # a stops renewing: past its renew deadline it no longer counts as leader
    assert not a.is_leader()
    assert not await b.try_acquire_or_renew()  # b saw this record only 9 s ago
    now[0] += 2
    assert await b.try_acquire_or_renew()  # not renewed for > lease duration: taken over
    assert not await a.try_acquire_or_renew()  # a sees b: stays out
    assert not a.is_leader() and b.is_leader()
    lease = backend.get("leases.coordination.k8s.io", "gpumix-controller", "gpumix-system")
    assert lease["spec"]["holderIdentity"] == "b"
    assert lease["spec"]["leaseTransitions"] == 1

    # A concurrent write between b's read and its renewal: the API server answers 409,
    # and that ends b's leadership immediately.
    read = kube.get_or_none

    async def read_then_someone_writes(path: str) -> Any:
        seen = await read(path)
        other = backend.get("leases.coordination.k8s.io", "gpumix-controller", "gpumix-system")
        other["metadata"].setdefault("annotations", {})["example.com/touched"] = "yes"
        backend.put(other)
        return seen

    kube.get_or_none = read_then_someone_writes  # type: ignore[method-assign]
    now[0] += 1
    assert not await b.try_acquire_or_renew()
    assert not b.is_leader()


async def test_optimizer_plan_is_applied(backend: Any, backend_api: Any) -> None:
    """With the real optimizer (OR-Tools), the members end at the optimizer's replicas."""
    from gpumix.controller.optimize import solve_mix
    from gpumix.controller.plan import MixProblem, MixSolution

    calls: list[tuple[MixProblem, MixSolution]] = []

    def recording(problem: MixProblem) -> MixSolution:
        solution = solve_mix(problem)
        calls.append((problem, solution))
        return solution

    cluster(backend)
    backend.create(gpumix(load=[bucket(512, 128, 30.0), bucket(2048, 512, 3.0)]))
    async with running(backend_api, settings(), solver=recording):
        await wait_for(lambda: gmx_status(backend).get("solverStatus"), what="a solve")
        _problem, solution = calls[-1]
        assert solution.status == "OPTIMAL", solution.message
        await wait_for(
            lambda: (
                replicas(backend, "llama-a100") == solution.replicas["A100"]
                and replicas(backend, "llama-a40") == solution.replicas["A40"]
            ),
            what="the optimizer's replicas",
        )
        st = gmx_status(backend)
        assert st["costPerHour"] == round(solution.cost_per_hour or 0, 4)
        assert st["bestSingleTypeCostPerHour"] >= st["costPerHour"]
        # capacity check against the profiles: every bucket is served
        capacity = 10.0 * solution.replicas["A100"] + 5.0 * solution.replicas["A40"]
        assert capacity >= 30.0
