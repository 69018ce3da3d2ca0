"""Fixtures for the emulator tests: a running emulator and a kubernetes-asyncio client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from gpumix.emulator import Emulator


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    emulator = Emulator(bookmark_interval_s=0.2)
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.stop()


@pytest.fixture
async def api(emu: Emulator) -> AsyncIterator[Any]:
    async with emu.api_client() as client:
        yield client
