"""Parts that run between ``start()`` and ``stop()``, used with ``async with``."""

from __future__ import annotations

from typing import Self


class Service:
    """``async with`` runs ``start()``, then ``stop()`` on the way out.

    A ``start()`` that fails half-way is followed by ``stop()`` before the error goes
    on, so ``stop()`` must cope with parts that never started (and may run twice).
    """

    async def start(self) -> object:  # (what it returns is not used here)
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
