"""Fault injection: failing requests, forced conflicts and outages, for tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import ApiError, status


@dataclass
class FailRule:
    remaining: int
    code: int
    path_prefix: str
    methods: frozenset[str] | None

    def applies(self, method: str, path: str) -> bool:
        return (
            self.remaining > 0
            and path.startswith(self.path_prefix)
            and (self.methods is None or method in self.methods)
        )


@dataclass
class Faults:
    clock: Callable[[], float] = time.monotonic
    rules: list[FailRule] = field(default_factory=list)
    conflicts: dict[tuple[str, str, str], int] = field(default_factory=dict)
    outage_mode: str | None = None  # "503" | "refuse"
    outage_until: float | None = None
    injected: int = 0

    def fail_next(
        self, n: int, code: int = 500, path_prefix: str = "", methods: set[str] | None = None
    ) -> None:
        """The next `n` requests whose path starts with `path_prefix` fail with `code`."""
        self.rules.append(
            FailRule(
                n, code, path_prefix, frozenset(m.upper() for m in methods) if methods else None
            )
        )

    def conflict_next(self, resource_key: str, namespace: str, name: str, n: int = 1) -> None:
        """The next `n` writes to this object get 409 Conflict."""
        key = (resource_key, namespace, name)
        self.conflicts[key] = self.conflicts.get(key, 0) + n

    def take_conflict(self, resource_key: str, namespace: str, name: str) -> bool:
        key = (resource_key, namespace, name)
        left = self.conflicts.get(key, 0)
        if left <= 0:
            return False
        if left == 1:
            del self.conflicts[key]
        else:
            self.conflicts[key] = left - 1
        self.injected += 1
        return True

    def start_outage(self, mode: str = "503", seconds: float | None = None) -> None:
        if mode not in ("503", "refuse"):
            raise ValueError("outage mode is '503' or 'refuse'")
        self.outage_mode = mode
        self.outage_until = None if seconds is None else self.clock() + seconds

    def end_outage(self) -> None:
        self.outage_mode = None
        self.outage_until = None

    def outage(self) -> str | None:
        """The current outage mode, ending a timed outage whose time has passed."""
        if self.outage_mode and self.outage_until is not None and self.clock() >= self.outage_until:
            self.end_outage()
        return self.outage_mode

    def check(self, method: str, path: str) -> ApiError | None:
        mode = self.outage()
        if mode == "503":
            self.injected += 1
            return ApiError(
                status(
                    503,
                    "ServiceUnavailable",
                    "the server is currently unable to handle the request (injected outage)",
                )
            )
        for rule in self.rules:
            if rule.applies(method, path):
                rule.remaining -= 1
                self.injected += 1
                reason = {
                    500: "InternalError",
                    503: "ServiceUnavailable",
                    429: "TooManyRequests",
                    504: "Timeout",
                }.get(rule.code, "InternalError")
                self.rules = [r for r in self.rules if r.remaining > 0]
                return ApiError(status(rule.code, reason, f"injected fault ({rule.code})"))
        return None
