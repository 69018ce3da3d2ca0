"""The controller process: watches, a coalescing work queue, reconcile passes, writes.

Level-based: a change to a GPUMix, a member Deployment, an autoscaler or a Node
(or a GPUMix's interval running out) only *queues* work.  Deployments, bound
Pods, Nodes and autoscalers are kept by a watch cache (``controller/cluster.py``,
on :mod:`gpumix.kubeio.informer`); a pass lists only the GPUMixes (one call),
reads the rest from the cache, plans every queued GPUMix with the pure
:func:`controller.plan.plan`, and applies the actions: ``/scale`` writes with
optimistic concurrency, the ``status`` subresource, Events.  Only the Lease
holder runs passes, and every write checks leadership right before it is sent.

Fail static while the cache is not synced (before its first complete list, after
a failed list or watch or a ``410`` until the relist completes, and while an
autoscaler CRD is served whose objects are not listed yet): no pass runs and no
``/scale`` is written; queued work waits, and replicas stay as they are.

``run_controller(settings, api_client, clock=..., stop_event=...)`` runs it all
in the caller's event loop (``gpumix controller`` and ``gpumix demo``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from gpumix.controller.audit import Auditor
from gpumix.controller.cluster import (
    ClusterState,
    ObjectStore,
    cluster_informer,
    labels_of,
    state_of,
)
from gpumix.controller.leader import AlwaysLeader, LeaderElector, LeaseSettings
from gpumix.controller.load import LoadReader
from gpumix.controller.metrics import ControllerMetrics, PublishedRecommendation, metrics_app
from gpumix.controller.optimize import profiles_from_config_map, resolve_inline, solve_mix
from gpumix.controller.plan import (
    Actions,
    EventAction,
    GpuPool,
    LoadUnavailable,
    Member,
    MixSnapshot,
    PlanPolicy,
    ProfileSet,
    ProfilesUnavailable,
    ScaleAction,
    Solver,
    format_time,
    plan,
)
from gpumix.controller.settings import ControllerSettings
from gpumix.controller.spec import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    GPUMixSpec,
    SpecError,
    parse_spec,
)
from gpumix.kube.objects import AUTOSCALER_KINDS, ObjectRef, node_view
from gpumix.kubeio.client import ApiError, KubeClient, resource_path
from gpumix.kubeio.informer import InformerSettings, Reflector, Resource
from gpumix.kubeio.informer import Key as ObjectKey

log = logging.getLogger("gpumix.controller")

Obj = dict[str, Any]
Clock = Callable[[], float]
Key = tuple[str, str | None]
ALL: Key = ("*", None)
VOLATILE_STATUS_KEYS = ("lastPlanTime", "solveSeconds")
STANDBY_READ_S = 2.0
"""How often a standby re-reads the leader's plan from the GPUMix status."""
COMPONENT = "gpumix-controller"
USER_AGENT = "gpumix-controller/0.1.0"
"""kube-apiserver names the field manager of non-apply writes after the user agent."""
FIELD_MANAGER = "gpumix-controller"
"""The field manager of gpumix's writes (so a replica count set by anyone else is seen)."""


class Leadership(Protocol):
    def is_leader(self) -> bool: ...

    async def run(self, stop: asyncio.Event) -> None: ...


class WorkQueue:
    """A set of pending keys: adding a key twice before it is taken queues it once."""

    def __init__(self) -> None:
        self._items: set[Key] = set()
        self._event = asyncio.Event()

    def add(self, key: Key) -> None:
        self._items.add(key)
        self._event.set()

    def __len__(self) -> int:
        return len(self._items)

    async def take(self, timeout: float, debounce: float) -> set[Key]:
        """Wait up to ``timeout`` for work, then ``debounce`` more; return all queued keys."""
        if not self._items:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), max(0.0, timeout))
        if self._items and debounce > 0:
            await asyncio.sleep(debounce)
        items, self._items = self._items, set()
        self._event.clear()
        return items


@dataclass
class PassStats:
    """What one reconcile pass did (for logs and the benchmark)."""

    gpumixes: int = 0
    scales: int = 0
    status_writes: int = 0
    events: int = 0
    errors: int = 0
    seconds: float = 0.0
    api_calls: dict[str, int] = field(default_factory=dict)


class Controller:
    def __init__(
        self,
        settings: ControllerSettings,
        kube: KubeClient,
        *,
        clock: Clock,
        session: aiohttp.ClientSession,
        solver: Solver = solve_mix,
        leadership: Leadership | None = None,
        metrics: ControllerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.clock = clock
        self.metrics = metrics or ControllerMetrics()
        self.policy = PlanPolicy(solver, settings.policy)
        self.loads = LoadReader(session)
        self.store = ObjectStore()
        self.informer = cluster_informer(
            kube,
            self.store,
            InformerSettings(watch_timeout_s=settings.watch_timeout_s),
            on_event=self._on_informer_event,
        )
        self._informer_started = False
        self._held = False
        self.queue = WorkQueue()
        self.leadership: Leadership = leadership or AlwaysLeader()
        self.recommendations: dict[tuple[str, str], PublishedRecommendation] = {}
        self.leader_plan: dict[tuple[str, str], PublishedRecommendation] = {}
        """The recommendations in the GPUMixes' status, as the leader last wrote them."""
        self.leader_plan_read = False
        self._led = False
        self._rec_owner: dict[tuple[str, str], tuple[str, str]] = {}
        self._due: dict[tuple[str, str], float] = {}
        self._backoff: dict[tuple[str, str], float] = {}
        self._own_rv: dict[tuple[str, str], str] = {}
        self._label_keys: set[str] = set(settings.policy.model_label_keys)
        self._signatures: dict[str, object] = {}
        self._gpumix_namespaces: set[str] | None = None
        self.synced = False
        self.metrics_url: str | None = None
        self.last_pass: PassStats | None = None
        self.passes = 0
        self.auditor = Auditor(
            kube, settings.policy, self.metrics, self.informer, self.store, self.can_write
        )

    # -- leadership ---------------------------------------------------------------------

    def can_write(self) -> bool:
        return self.leadership.is_leader()

    # -- the watch cache ------------------------------------------------------------------

    async def start_cache(self) -> None:
        """Start the watch cache (once); passes wait until it is synced."""
        if not self._informer_started:
            self._informer_started = True
            await self.informer.start()

    async def stop_cache(self) -> None:
        if self._informer_started:
            self._informer_started = False
            await self.informer.stop()

    def _cache_current(self) -> bool:
        """Is the watch cache synced?  Logged once per transition while it is not."""
        synced = self.informer.synced
        if synced == self._held:
            self._held = not synced
            if synced:
                log.info("cluster cache synced; reconciling")
            else:
                log.warning("cluster cache not synced; holding replicas")
        return synced

    # -- the reconcile pass -------------------------------------------------------------

    async def reconcile_pass(self, keys: set[Key]) -> PassStats:
        """Read the cluster once and reconcile every GPUMix that ``keys`` select."""
        started = time.perf_counter()
        before = dict(self.kube.calls)
        stats = PassStats()
        gpumixes, _ = await self.kube.list(
            resource_path(GROUP, VERSION, PLURAL, self.settings.namespace)
        )
        state = state_of(self.store, gpumixes, self.settings.policy)
        self.synced = True
        self._export_cluster_metrics(state)
        self.loads.new_cycle()
        self._gpumix_namespaces = set()
        seen: set[tuple[str, str]] = set()
        ledger = dict(state.free)
        config_maps: dict[tuple[str, str], Obj | None] = {}
        for obj in sorted(state.gpumixes, key=_key_of):
            ns, name = _key_of(obj)
            seen.add((ns, name))
            self._gpumix_namespaces.add(ns)
            spec_raw = obj.get("spec") or {}
            if isinstance(spec_raw, dict) and isinstance(spec_raw.get("modelLabelKey"), str):
                self._label_keys.add(spec_raw["modelLabelKey"])
            if not _selected(keys, ns, name):
                continue
            stats.gpumixes += 1
            try:
                await self._reconcile_one(obj, state, ledger, config_maps, stats)
                self._backoff.pop((ns, name), None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one bad GPUMix must not stop the others
                stats.errors += 1
                self.metrics.reconcile_errors.labels(ns, name).inc()
                delay = min(
                    self.settings.error_backoff_max_s, 2 * self._backoff.get((ns, name), 0.5)
                )
                self._backoff[(ns, name)] = delay
                self._due[(ns, name)] = self.clock() + delay
                log.exception(
                    "reconcile failed",
                    extra={"gpumix": f"{ns}/{name}", "retry_in_s": delay, "error": str(exc)},
                )
        for gone in set(self._due) - seen:
            self._forget(gone)
        stats.seconds = time.perf_counter() - started
        stats.api_calls = {
            k: v - before.get(k, 0) for k, v in self.kube.calls.items() if v - before.get(k, 0)
        }
        self.last_pass = stats
        self.passes += 1
        log.info(
            "reconcile pass",
            extra={
                "gpumixes": stats.gpumixes,
                "scales": stats.scales,
                "status_writes": stats.status_writes,
                "events": stats.events,
                "errors": stats.errors,
                "seconds": round(stats.seconds, 4),
                "api_calls": sum(stats.api_calls.values()),
            },
        )
        return stats

    async def _reconcile_one(
        self,
        obj: Obj,
        state: ClusterState,
        ledger: dict[str, int],
        config_maps: dict[tuple[str, str], Obj | None],
        stats: PassStats,
    ) -> None:
        ns, name = _key_of(obj)
        now = self.clock()
        meta = obj.get("metadata") or {}
        try:
            spec: GPUMixSpec | SpecError = parse_spec(obj)
        except SpecError as exc:
            spec = exc
        members: tuple[Member, ...] = ()
        profiles: ProfileSet | ProfilesUnavailable = ProfilesUnavailable("spec is invalid")
        if isinstance(spec, GPUMixSpec):
            members = self._members(spec, ns, state)
            profiles = await self._profiles(spec, ns, config_maps)
        pools = {t: GpuPool(p.capacity, ledger.get(t, p.free)) for t, p in state.pools().items()}
        snapshot = MixSnapshot(
            namespace=ns,
            name=name,
            generation=int(meta.get("generation") or 0),
            spec=spec,
            members=members,
            pools=pools,
            profiles=profiles,
            previous_status=obj.get("status") or {},
        )
        if isinstance(spec, GPUMixSpec):
            load = await self.loads.read(spec, now)
        else:
            load = LoadUnavailable("missing", "spec is invalid")
        # the solve is CPU-bound: a worker thread keeps the event loop (lease renewals,
        # probes, watches) responsive while it runs
        actions = await asyncio.to_thread(plan, snapshot, load, self.policy, now)
        if actions.solve_seconds is not None:
            self.metrics.solve_duration.observe(actions.solve_seconds)
        self._publish(ns, name, actions)
        await self._apply(obj, actions, state, ledger, stats)
        interval = spec.interval_seconds if isinstance(spec, GPUMixSpec) else 60
        self._due[(ns, name)] = now + min(
            actions.requeue_after, float(interval), self.settings.resync_interval_s
        )

    def _members(self, spec: GPUMixSpec, ns: str, state: ClusterState) -> tuple[Member, ...]:
        keys = (
            (spec.model_label_key,)
            if spec.model_label_key
            else tuple(self.settings.policy.model_label_keys)
        )
        out: list[Member] = []
        for ref, raw in state.deployments.items():
            if ref.namespace != ns:
                continue
            labels = labels_of(raw)
            if not any(labels.get(k) == spec.model for k in keys):
                continue
            view = state.snapshot.deployments[ref]
            scalers = tuple(state.snapshot.autoscalers_targeting(ref))
            out.append(
                Member(
                    view,
                    state.committed.get(ref, 0),
                    scalers,
                    follows_plan=bool(scalers)
                    and all(a.ref in state.follows_plan for a in scalers),
                    replicas_manager=replicas_manager(raw),
                )
            )
        return tuple(sorted(out, key=lambda m: m.name))

    async def _profiles(
        self, spec: GPUMixSpec, ns: str, cache: dict[tuple[str, str], Obj | None]
    ) -> ProfileSet | ProfilesUnavailable:
        inline = resolve_inline(spec)
        if inline is not None:
            return inline
        ref = spec.profiles.config_map
        if ref is None:
            return ProfilesUnavailable("no profiles given")
        if (ns, ref.name) not in cache:
            cache[(ns, ref.name)] = await self.kube.get_or_none(
                resource_path("", "v1", "configmaps", ns, ref.name)
            )
        return profiles_from_config_map(cache[(ns, ref.name)], ref.name, ref.key, spec.slo)

    # -- writes ---------------------------------------------------------------------------

    async def _apply(
        self,
        obj: Obj,
        actions: Actions,
        state: ClusterState,
        ledger: dict[str, int],
        stats: PassStats,
    ) -> None:
        ns, name = _key_of(obj)
        status: dict[str, Any] = copy.deepcopy(dict(actions.status))
        failed: list[tuple[ScaleAction, str]] = []
        for action in actions.scales:
            if not self.can_write():
                return
            if not self._cache_current():
                self._due[(ns, name)] = self.clock() + 0.5
                return  # fail static: the plan may rest on a view that is not current
            ok, why = await self.scale(action, state)
            if ok:
                stats.scales += 1
                self.metrics.scale_actions.labels(
                    action.namespace, action.deployment, action.direction
                ).inc()
                if action.to_replicas > action.from_replicas:
                    delta = (action.to_replicas - action.from_replicas) * action.gpus_per_replica
                    ledger[action.gpu_type] = ledger.get(action.gpu_type, 0) - delta
                log.info(
                    "scaled",
                    extra={
                        "gpumix": f"{ns}/{name}",
                        "deployment": action.deployment,
                        "from": action.from_replicas,
                        "to": action.to_replicas,
                        "reason": action.reason,
                    },
                )
            else:
                failed.append((action, why))
                for entry in status.get("plan") or []:
                    if entry.get("deployment") == action.deployment:
                        entry["decision"] = f"scale to {action.to_replicas} not applied: {why}"
                        entry.pop("lastScaleTime", None)
                        old = _old_entry(obj, action.deployment)
                        if old.get("lastScaleTime"):
                            entry["lastScaleTime"] = old["lastScaleTime"]
                self._due[(ns, name)] = self.clock() + 1.0
        not_scaled = {a.deployment for a, _ in failed}
        events = [e for e in actions.events if e.scaled is None or e.scaled not in not_scaled]
        for action, why in failed:
            events.append(
                EventAction(
                    ObjectRef(KIND, ns, name),
                    "Warning",
                    "ScaleFailed",
                    f"could not scale {action.deployment} to {action.to_replicas}: {why}",
                )
            )
        if not self.can_write():
            return
        if _status_changed(obj.get("status") or {}, status):
            written = await self._write_status(obj, status)
            if written:
                stats.status_writes += 1
        for event in events:
            if not self.can_write():
                return
            await self.emit(event, obj if event.regarding.kind == KIND else None)
            stats.events += 1

    async def scale(self, action: ScaleAction, state: ClusterState) -> tuple[bool, str]:
        """Set replicas through ``/scale`` with the resourceVersion we planned on.

        A 409 re-reads the scale; if someone else changed the replicas meanwhile
        the write is dropped and the GPUMix re-planned (level-based), otherwise
        it is retried, at most ``scale_attempts`` times.
        """
        path = (
            resource_path("apps", "v1", "deployments", action.namespace, action.deployment)
            + "/scale"
        )
        raw = state.deployments.get(ObjectRef("Deployment", action.namespace, action.deployment))
        rv = str(((raw or {}).get("metadata") or {}).get("resourceVersion") or "")
        for attempt in range(max(1, self.settings.scale_attempts)):
            if not self.can_write():
                return False, "not the leader any more"
            if not rv:
                current = await self.kube.get_or_none(path)
                if current is None:
                    return False, "the Deployment is gone"
                replicas = (current.get("spec") or {}).get("replicas", 0)
                if replicas != action.from_replicas:
                    return False, f"replicas changed to {replicas} meanwhile; re-planning"
                rv = str((current.get("metadata") or {}).get("resourceVersion") or "")
            body = {
                "apiVersion": "autoscaling/v1",
                "kind": "Scale",
                "metadata": {
                    "name": action.deployment,
                    "namespace": action.namespace,
                    "resourceVersion": rv,
                },
                "spec": {"replicas": action.to_replicas},
            }
            try:
                out = await self.kube.request(
                    "PUT", path, body=body, query={"fieldManager": FIELD_MANAGER}
                )
                new_rv = str((out.get("metadata") or {}).get("resourceVersion") or "")
                self.store.scaled(action.namespace, action.deployment, action.to_replicas, new_rv)
                return True, ""
            except ApiError as exc:
                if exc.code == 409:
                    log.info(
                        "scale conflict, re-reading",
                        extra={
                            "deployment": f"{action.namespace}/{action.deployment}",
                            "attempt": attempt + 1,
                        },
                    )
                    rv = ""
                    await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
                    continue
                if exc.code == 404:
                    return False, "the Deployment is gone"
                return False, str(exc)
        return False, f"still conflicting after {self.settings.scale_attempts} attempts"

    async def _write_status(self, obj: Obj, status: dict[str, Any]) -> bool:
        """JSON merge patch from the status as read to ``status``: keys that are gone are
        sent as null at every depth, so no stale field survives (lists are replaced whole)."""
        ns, name = _key_of(obj)
        patch_status = merge_patch(obj.get("status") or {}, status)
        if not patch_status:
            return False
        path = resource_path(GROUP, VERSION, PLURAL, ns, name) + "/status"
        try:
            out = await self.kube.request(
                "PATCH",
                path,
                body={"status": patch_status},
                query={"fieldManager": FIELD_MANAGER},
                content_type="application/merge-patch+json",
            )
        except ApiError as exc:
            if exc.code == 404:
                return False
            raise
        rv = ((out or {}).get("metadata") or {}).get("resourceVersion")
        if rv:
            self._own_rv[(ns, name)] = str(rv)
        return True

    async def emit(self, event: EventAction, regarding: Obj | None) -> None:
        """One core/v1 Event, as kubectl describe shows them."""
        now = format_time(self.clock())
        ref = event.regarding
        involved: dict[str, Any] = {
            "kind": ref.kind,
            "namespace": ref.namespace,
            "name": ref.name,
            "apiVersion": API_VERSION if ref.kind == KIND else _api_version_of(ref.kind),
        }
        if regarding is not None:
            meta = regarding.get("metadata") or {}
            if meta.get("uid"):
                involved["uid"] = meta["uid"]
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{ref.name}.{uuid.uuid4().hex[:16]}",
                "namespace": ref.namespace or "default",
            },
            "involvedObject": involved,
            "reason": event.reason,
            "message": event.message[:1024],
            "type": event.type,
            "source": {"component": COMPONENT},
            "reportingComponent": "gpumix.io/controller",
            "reportingInstance": self.settings.identity[:128],
            "action": event.reason,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.kube.request(
                "POST", resource_path("", "v1", "events", ref.namespace or "default"), body=body
            )
        except ApiError as exc:
            log.warning("event not recorded", extra={"reason": event.reason, "error": str(exc)})

    # -- metrics and recommendations ---------------------------------------------------

    def _publish(self, ns: str, name: str, actions: Actions) -> None:
        owner = (ns, name)
        for key in [k for k, o in self._rec_owner.items() if o == owner]:
            if key not in {(r.namespace, r.deployment) for r in actions.recommendations}:
                self.recommendations.pop(key, None)
                self._rec_owner.pop(key, None)
        for r in actions.recommendations:
            self.recommendations[(r.namespace, r.deployment)] = PublishedRecommendation(
                r.model, r.replicas
            )
            self._rec_owner[(r.namespace, r.deployment)] = owner
            self.metrics.recommended_replicas.labels(r.namespace, r.deployment, r.gpu_type).set(
                r.replicas
            )
        self.metrics.load_available.labels(ns, name).set(1 if actions.load_available else 0)
        if actions.cost_per_hour is not None:
            self.metrics.plan_cost.labels(ns, name).set(actions.cost_per_hour)
        status = actions.status
        best = status.get("bestSingleTypeCostPerHour")
        if best is not None:
            self.metrics.best_single_type_cost.labels(ns, name).set(best)
        solver = status.get("solverStatus")
        if solver:
            self.metrics.solver_status.set((ns, name), solver)
        held = None
        if not actions.load_available:
            held = next(
                (c["reason"] for c in status.get("conditions", []) if c["type"] == "LoadAvailable"),
                "LoadMissing",
            )
        self.metrics.fail_static.set((ns, name), held)

    def _forget(self, key: tuple[str, str]) -> None:
        self._due.pop(key, None)
        self._backoff.pop(key, None)
        self._own_rv.pop(key, None)
        for rec_key in [k for k, o in self._rec_owner.items() if o == key]:
            self.recommendations.pop(rec_key, None)
            self._rec_owner.pop(rec_key, None)
        with contextlib.suppress(KeyError):
            self.metrics.load_available.remove(*key)
        with contextlib.suppress(KeyError):
            self.metrics.plan_cost.remove(*key)
        with contextlib.suppress(KeyError):
            self.metrics.best_single_type_cost.remove(*key)
        self.metrics.solver_status.forget(key)
        self.metrics.fail_static.forget(key)

    def _export_cluster_metrics(self, state: ClusterState) -> None:
        m = self.metrics
        m.gpu_capacity.clear()
        m.gpu_free.clear()
        for gpu, cap in state.capacity.items():
            m.gpu_capacity.labels(gpu).set(cap)
            m.gpu_free.labels(gpu).set(state.free.get(gpu, 0))
        m.autoscaler_max_replicas.clear()
        m.autoscaler_current_replicas.clear()
        m.autoscaler_ceiling_gpus.clear()
        ceiling_gpus: dict[str, int] = {}
        for a in state.snapshot.autoscalers.values():
            target = state.snapshot.deployment(a.target) if a.target is not None else None
            gpu = target.gpu_type.label if target is not None else "unknown"
            if a.ceiling is not None:
                m.autoscaler_max_replicas.labels(a.namespace, a.kind, a.name, gpu).set(a.ceiling)
                if target is not None and target.gpu_type.name:
                    ceiling_gpus[gpu] = ceiling_gpus.get(gpu, 0) + a.ceiling * max(
                        1, target.gpus_per_replica
                    )
            if target is not None and target.replicas is not None:
                m.autoscaler_current_replicas.labels(a.namespace, a.kind, a.name, gpu).set(
                    target.replicas
                )
        for gpu, total in ceiling_gpus.items():
            m.autoscaler_ceiling_gpus.labels(gpu).set(total)

    def recommendation(self, ns: str, name: str) -> PublishedRecommendation | None:
        """What ``/metrics/<ns>/<deployment>`` serves: this replica's plan while it leads,
        else (standby, or a new leader before its first pass) the leader's last plan as
        written to the GPUMix status, so no replica answers 404 for a planned Deployment."""
        if self.can_write() and self.synced:
            return self.recommendations.get((ns, name))
        return self.leader_plan.get((ns, name))

    async def read_leader_plan(self) -> None:
        """Read the recommendations of every GPUMix's status (one list call)."""
        body = await self.kube.request(
            "GET", resource_path(GROUP, VERSION, PLURAL, self.settings.namespace)
        )
        plan: dict[tuple[str, str], PublishedRecommendation] = {}
        for obj in (body or {}).get("items") or []:
            ns, _ = _key_of(obj)
            model = (obj.get("spec") or {}).get("model")
            for entry in (obj.get("status") or {}).get("plan") or []:
                if not isinstance(entry, dict) or not isinstance(model, str):
                    continue
                dep, rec = entry.get("deployment"), entry.get("recommendedReplicas")
                if isinstance(dep, str) and isinstance(rec, int) and not isinstance(rec, bool):
                    plan[(ns, dep)] = PublishedRecommendation(model, rec)
        self.leader_plan = plan
        self.leader_plan_read = True

    def _stand_by(self) -> None:
        """Not leading: export no plan of our own (the leader's gauges are the truth)."""
        self._led = False
        self.synced = False
        self.recommendations.clear()
        self._rec_owner.clear()
        self.metrics.recommended_replicas.clear()
        self.metrics.plan_cost.clear()
        self.metrics.load_available.clear()
        self.metrics.best_single_type_cost.clear()
        self.metrics.solver_status.clear()
        self.metrics.fail_static.clear()

    # -- watches ---------------------------------------------------------------------------

    def _on_event(self, kind: str, event: Obj) -> None:
        """Queue work for a watch event, skipping changes that cannot affect a plan.

        Status-only updates (Node heartbeats, Deployment rollout progress, our own
        GPUMix status writes) are dropped: Nodes by a signature of their GPU fields,
        Deployments by ``metadata.generation`` and labels.
        """
        obj = event.get("object") or {}
        meta = obj.get("metadata") or {}
        ns = str(meta.get("namespace") or "")
        name = str(meta.get("name") or "")
        etype = event.get("type")
        if kind == "gpumix":
            if etype == "MODIFIED" and self._own_rv.get((ns, name)) == str(
                meta.get("resourceVersion")
            ):
                return  # our own status write
            self.queue.add((ns, name))
            return
        if kind == "deployment":
            labels = labels_of(obj)
            sig: object = (meta.get("generation"), tuple(sorted(labels.items())))
            key = f"{ns}/{name}"
            if etype == "DELETED":
                known = self._signatures.pop(key, None) is not None
            else:
                known = self._signatures.get(key) is not None
                if self._signatures.get(key) == sig:
                    return
                self._signatures[key] = sig
            if not any(k in labels for k in self._label_keys) and not known:
                return
            if self._gpumix_namespaces is not None and ns not in self._gpumix_namespaces:
                return
            self.queue.add((ns, None))
            return
        if kind == "autoscaler":
            # a new, changed or deleted autoscaler changes its target's ceiling
            sig = (meta.get("generation"), str(obj.get("spec")))
            key = f"{obj.get('kind')}/{ns}/{name}"
            if etype == "DELETED":
                self._signatures.pop(key, None)
            elif self._signatures.get(key) == sig:
                return
            else:
                self._signatures[key] = sig
            self.queue.add((ns, None))
            return
        view = node_view(obj, self.settings.policy)
        key = f"node/{name}"
        if etype == "DELETED":
            self._signatures.pop(key, None)
        else:
            sig = (view.gpu_names, view.allocatable_gpus, view.unschedulable)
            if self._signatures.get(key) == sig:
                return
            self._signatures[key] = sig
        self.queue.add(ALL)

    def _on_informer_event(self, resource: Resource, event: Obj | None) -> None:
        """A change seen by the watch cache: queue the work it may cause."""
        if not self.settings.watch:
            return  # the intervals alone drive reconciles
        if event is None:
            if resource.kind != "Pod":
                self.queue.add(ALL)  # relisted: changes in between were not seen one by one
            return
        if resource.kind == "Deployment":
            ns = str(((event.get("object") or {}).get("metadata") or {}).get("namespace") or "")
            if self.settings.namespace is None or ns == self.settings.namespace:
                self._on_event("deployment", event)
        elif resource.kind == "Node":
            self._on_event("node", event)
        elif resource.kind in AUTOSCALER_KINDS:
            self._on_event("autoscaler", event)

    def gpumix_watch(self) -> Reflector:
        """A watch of the GPUMixes that only queues work (a pass lists them afresh, so the
        status it patches is the one the API server holds)."""
        resource = Resource(KIND, API_VERSION, PLURAL, namespace=self.settings.namespace)

        def on_event(_: Resource, event: Obj | None) -> None:
            if event is None:
                self.queue.add(ALL)
            else:
                self._on_event("gpumix", event)

        return Reflector(
            resource,
            self.kube,
            _KeysOnly(),
            InformerSettings(watch_timeout_s=self.settings.watch_timeout_s, backoff_max_s=30.0),
            lambda: None,
            on_event=on_event,
        )

    # -- the main loop ---------------------------------------------------------------------

    async def work_loop(self, stop: asyncio.Event) -> None:
        """Passes while leading, the leader's plan while standing by; owns the watch cache."""
        await self.start_cache()
        try:
            await self._work(stop)
        finally:
            await self.stop_cache()

    async def _work(self, stop: asyncio.Event) -> None:
        backoff = 0.5
        next_resync = self.clock()
        next_standby_read = self.clock()
        while not stop.is_set():
            now = self.clock()
            if now >= next_resync:
                self.queue.add(ALL)
                next_resync = now + self.settings.resync_interval_s
            for due_key, due in list(self._due.items()):
                if due <= now:
                    self.queue.add(due_key)
                    self._due[due_key] = now + self.settings.resync_interval_s
            wait = min([next_resync, *self._due.values()]) - now
            take = asyncio.ensure_future(
                self.queue.take(min(max(wait, 0.05), 5.0), self.settings.debounce_s)
            )
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({take, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if take not in done:
                take.cancel()
                break
            keys = take.result()
            if not keys:
                continue
            if not self.can_write():
                for key in keys:  # keep them for when we lead
                    self.queue.add(key)
                if self._led or not self.leader_plan_read:
                    self._stand_by()
                if self.clock() >= next_standby_read:
                    next_standby_read = self.clock() + STANDBY_READ_S
                    try:
                        await self.read_leader_plan()
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        log.warning("reading the leader's plan failed", extra={"error": str(exc)})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
                continue
            self._led = True
            if not self._cache_current():
                # fail static: nothing is planned or written from a view that is not current
                for key in keys:
                    self.queue.add(key)
                self.synced = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.informer.wait_synced(0.5), 0.6)
                continue
            try:
                await self.reconcile_pass(keys)
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                for key in keys:
                    self.queue.add(key)
                log.warning(
                    "reconcile pass failed, retrying",
                    extra={"error": str(exc), "retry_in_s": backoff},
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, self.settings.error_backoff_max_s)

    async def audit_loop(self, stop: asyncio.Event) -> None:
        interval = self.settings.audit_interval_s
        if interval <= 0:
            return
        while not stop.is_set():
            try:
                await self.auditor.run_once(self.clock())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("audit failed", extra={"error": str(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    def ready(self) -> bool:
        """Leader: after its first cluster read; standby: once it has read the leader's plan
        (it then serves it, so a Service in front of both replicas never answers 404)."""
        if self.can_write():
            return self.synced or self.leader_plan_read
        return self.leader_plan_read


class _KeysOnly:
    """A store that keeps nothing (the GPUMix watch only queues work)."""

    def convert(self, resource: Resource, obj: Obj) -> object | None:
        return None

    def put(self, resource: Resource, key: ObjectKey, item: object | None) -> None:
        return None

    def remove(self, resource: Resource, key: ObjectKey) -> None:
        return None


def _key_of(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or "default"), str(meta.get("name") or "")


def _selected(keys: set[Key], ns: str, name: str) -> bool:
    return ALL in keys or (ns, None) in keys or (ns, name) in keys


def _status_changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Does the status differ in more than timestamps (so it is worth a write)?"""

    def strip(s: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in s.items() if k not in VOLATILE_STATUS_KEYS}
        if isinstance(out.get("load"), dict):
            out["load"] = {k: v for k, v in out["load"].items() if k != "observedTime"}
        return out

    return bool(merge_patch(strip(old), strip(new)))


def merge_patch(old: Any, new: Any) -> Any:
    """The RFC 7386 JSON merge patch that turns ``old`` into ``new`` ({} when equal).

    Keys of ``old`` missing from ``new`` become null, at every depth; lists and
    scalars are replaced whole.
    """
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {}
    for key in old:
        if key not in new:
            patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif isinstance(value, dict) and isinstance(old[key], dict):
            sub = merge_patch(old[key], value)
            if sub:
                patch[key] = sub
        elif value != old[key]:
            patch[key] = value
    return patch


def replicas_manager(deployment: Obj) -> str | None:
    """The field manager that last set ``spec.replicas`` (from managedFields), unless gpumix."""
    latest: tuple[str, str] | None = None
    for entry in (deployment.get("metadata") or {}).get("managedFields") or []:
        if not isinstance(entry, dict):
            continue
        fields = entry.get("fieldsV1") or {}
        spec = fields.get("f:spec") if isinstance(fields, dict) else None
        if not isinstance(spec, dict) or "f:replicas" not in spec:
            continue
        when = str(entry.get("time") or "")
        if latest is None or when >= latest[0]:
            latest = (when, str(entry.get("manager") or "unknown"))
    if latest is None or latest[1] == FIELD_MANAGER:
        return None
    return latest[1]


def _old_entry(obj: Obj, deployment: str) -> dict[str, Any]:
    for entry in (obj.get("status") or {}).get("plan") or []:
        if isinstance(entry, dict) and entry.get("deployment") == deployment:
            return entry
    return {}


def _api_version_of(kind: str) -> str:
    return {
        "Deployment": "apps/v1",
        "HorizontalPodAutoscaler": "autoscaling/v2",
        "ScaledObject": "keda.sh/v1alpha1",
        "PodAutoscaler": "autoscaling.aibrix.ai/v1alpha1",
    }.get(kind, "v1")


async def run_controller(
    settings: ControllerSettings,
    api_client: Any,
    *,
    clock: Clock = time.time,
    stop_event: asyncio.Event,
    solver: Solver | None = None,
    started: Callable[[Controller], None] | None = None,
) -> None:
    """Run the controller until ``stop_event`` is set.

    ``api_client`` is a kubernetes-asyncio ``ApiClient`` (the caller owns it).
    ``solver`` replaces the optimizer (tests); ``started`` receives the
    controller once its metrics server listens (``controller.metrics_url``).
    """
    kube = KubeClient(api_client, request_timeout_s=settings.api_timeout_s, user_agent=USER_AGENT)
    metrics = ControllerMetrics()
    leadership: Leadership
    if settings.leader_election:
        leadership = LeaderElector(
            kube,
            LeaseSettings(
                namespace=settings.lease_namespace,
                name=settings.lease_name,
                identity=settings.identity,
                lease_duration_s=settings.lease_duration_s,
                renew_deadline_s=settings.renew_deadline_s,
                retry_period_s=settings.retry_period_s,
            ),
            clock,
            on_change=lambda leader: metrics.leader.set(1 if leader else 0),
        )
    else:
        leadership = AlwaysLeader()
        metrics.leader.set(1)
    async with aiohttp.ClientSession() as session:
        controller = Controller(
            settings,
            kube,
            clock=clock,
            session=session,
            solver=solver or solve_mix,
            leadership=leadership,
            metrics=metrics,
        )
        runner: web.AppRunner | None = None
        if settings.metrics_port is not None:
            app = metrics_app(metrics, controller.recommendation, controller.ready)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, settings.metrics_host, settings.metrics_port)
            await site.start()
            sockets = getattr(site._server, "sockets", None) or []
            port = sockets[0].getsockname()[1] if sockets else settings.metrics_port
            controller.metrics_url = f"http://{settings.metrics_host}:{port}"
        if started is not None:
            started(controller)
        inner = asyncio.Event()
        tasks = [
            asyncio.create_task(leadership.run(inner), name="leader"),
            asyncio.create_task(controller.work_loop(inner), name="work"),
            asyncio.create_task(controller.audit_loop(inner), name="audit"),
        ]
        if settings.watch:
            tasks.append(asyncio.create_task(controller.gpumix_watch().run(), name="gpumix-watch"))
        stopper = asyncio.create_task(stop_event.wait())
        try:
            pending: set[asyncio.Task[Any]] = {stopper, *tasks}
            while stopper in pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    if t is not stopper and not t.cancelled() and t.exception() is not None:
                        log.error(
                            "controller task died",
                            extra={"task": t.get_name(), "error": repr(t.exception())},
                        )
                        raise RuntimeError(f"controller task {t.get_name()} died") from (
                            t.exception()
                        )
        finally:
            inner.set()
            for t in tasks:
                if t.get_name() != "leader":
                    t.cancel()
            leader_task = next(t for t in tasks if t.get_name() == "leader")
            with contextlib.suppress(asyncio.CancelledError, TimeoutError, Exception):
                await asyncio.wait_for(leader_task, 5.0)  # releases the lease
            await asyncio.gather(*tasks, return_exceptions=True)
            stopper.cancel()
            if runner is not None:
                await runner.cleanup()
