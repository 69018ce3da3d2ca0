"""``gpumix.lifecycle.Service``: start and stop around ``async with``."""

from __future__ import annotations

import pytest

from gpumix.lifecycle import Service


class Recorder(Service):
    def __init__(self, fail_start: bool = False) -> None:
        self.calls: list[str] = []
        self.fail_start = fail_start

    async def start(self) -> str:
        self.calls.append("start")
        if self.fail_start:
            raise RuntimeError("port in use")
        return "started"

    async def stop(self) -> None:
        self.calls.append("stop")


async def test_stops_after_the_block_also_when_it_raises() -> None:
    ok = Recorder()
    async with ok as entered:
        assert entered is ok and ok.calls == ["start"]
    assert ok.calls == ["start", "stop"]
    failing = Recorder()
    with pytest.raises(ValueError):
        async with failing:
            raise ValueError("in the block")
    assert failing.calls == ["start", "stop"]


async def test_a_failed_start_is_stopped_and_the_error_goes_on() -> None:
    service = Recorder(fail_start=True)
    with pytest.raises(RuntimeError, match="port in use"):
        async with service:
            pytest.fail("the block must not run")
    assert service.calls == ["start", "stop"]
