"""Fixtures of the controller tests: an in-process API emulator with the GPUMix CRD."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from controller_helpers import crd

from gpumix.emulator.server import Emulator


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator() as e:
        e.create(crd())
        yield e


@pytest.fixture
async def api(emu: Emulator) -> AsyncIterator[Any]:
    async with emu.api_client() as client:
        yield client
