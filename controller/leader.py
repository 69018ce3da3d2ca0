"""Leader election on a ``coordination.k8s.io/v1`` Lease, with an injected clock.

The rules follow client-go's leader election:

- A free Lease (absent, no holder, or not renewed for ``leaseDurationSeconds``
  as measured on *our* clock since we first saw that record, so clock skew
  between nodes does not matter) is taken with an optimistic-concurrency
  write; a 409 means someone else won.
- The holder renews every ``retry_period_s``.  It counts as leader only while
  its last successful renewal is younger than ``renew_deadline_s`` (shorter
  than the lease duration), so a partitioned leader stops writing before
  anyone else may take over.
- Seeing another holder, or a 409 on renewal, ends leadership at once.

:meth:`LeaderElector.is_leader` is checked right before every write.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpumix.kubeio.client import ApiError, KubeClient, resource_path

log = logging.getLogger("gpumix.controller.leader")

Clock = Callable[[], float]


def micro_time(t: float) -> str:
    return dt.datetime.fromtimestamp(t, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaseSettings:
    namespace: str = "gpumix-system"
    name: str = "gpumix-controller"
    identity: str = "gpumix-controller"
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0


class LeaderElector:
    def __init__(
        self,
        kube: KubeClient,
        settings: LeaseSettings,
        clock: Clock,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._kube = kube
        self.settings = settings
        self._clock = clock
        self._on_change = on_change
        self._leader = False
        self._renewed_at = -1e18
        self._observed: tuple[str, str] | None = None
        self._observed_at = 0.0
        self.transitions = 0

    @property
    def path(self) -> str:
        s = self.settings
        return resource_path("coordination.k8s.io", "v1", "leases", s.namespace, s.name)

    def is_leader(self) -> bool:
        if not self._leader:
            return False
        if self._clock() - self._renewed_at > self.settings.renew_deadline_s:
            self._set(False, "renewal deadline passed")
            return False
        return True

    def _set(self, leader: bool, why: str) -> None:
        if leader != self._leader:
            self._leader = leader
            log.info(
                "leadership changed",
                extra={"leader": leader, "identity": self.settings.identity, "why": why},
            )
            if self._on_change is not None:
                self._on_change(leader)

    def _spec(self, now: float, acquire: str, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.settings.identity,
            "leaseDurationSeconds": max(1, round(self.settings.lease_duration_s)),
            "acquireTime": acquire,
            "renewTime": micro_time(now),
            "leaseTransitions": transitions,
        }

    async def try_acquire_or_renew(self) -> bool:
        """One round; returns whether we hold the lease afterwards."""
        now = self._clock()
        s = self.settings
        try:
            lease = await self._kube.get_or_none(self.path)
            if lease is None:
                body = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": s.name, "namespace": s.namespace},
                    "spec": self._spec(now, micro_time(now), 0),
                }
                await self._kube.request(
                    "POST",
                    resource_path("coordination.k8s.io", "v1", "leases", s.namespace),
                    body=body,
                )
                self._renewed_at = now
                self._set(True, "created the lease")
                return True
            spec = lease.get("spec") or {}
            holder = str(spec.get("holderIdentity") or "")
            record = (holder, str(spec.get("renewTime") or ""))
            if record != self._observed:
                self._observed, self._observed_at = record, now
            duration = float(spec.get("leaseDurationSeconds") or s.lease_duration_s)
            transitions = int(spec.get("leaseTransitions") or 0)
            if holder == s.identity:
                lease["spec"] = self._spec(
                    now, str(spec.get("acquireTime") or micro_time(now)), transitions
                )
            elif not holder or now - self._observed_at > duration:
                lease["spec"] = self._spec(now, micro_time(now), transitions + 1)
            else:
                self._set(False, f"held by {holder}")
                return False
            await self._kube.request("PUT", self.path, body=lease)
            self._renewed_at = now
            if holder != s.identity:
                self.transitions += 1
            self._set(True, "renewed" if holder == s.identity else f"took over from {holder!r}")
            return True
        except ApiError as exc:
            if exc.code == 409:
                self._set(False, "lost a concurrent lease update")
                return False
            log.warning("lease round failed", extra={"error": str(exc)})
            return self.is_leader()

    async def release(self) -> None:
        """Give the lease up (on shutdown) so another replica takes over without waiting."""
        if not self._leader:
            return
        self._set(False, "released")
        try:
            lease = await self._kube.get_or_none(self.path)
            if (
                lease is None
                or (lease.get("spec") or {}).get("holderIdentity") != self.settings.identity
            ):
                return
            lease["spec"]["holderIdentity"] = ""
            lease["spec"]["leaseDurationSeconds"] = 1
            await self._kube.request("PUT", self.path, body=lease)
        except ApiError as exc:
            log.warning("lease release failed", extra={"error": str(exc)})

    async def run(self, stop: asyncio.Event) -> None:
        """Acquire and renew until ``stop`` is set; then release."""
        try:
            while not stop.is_set():
                await self.try_acquire_or_renew()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.retry_period_s)
        finally:
            await self.release()


class AlwaysLeader:
    """Stand-in when leader election is disabled (one replica, or tests)."""

    transitions = 0

    def is_leader(self) -> bool:
        return True

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()
