"""Fixtures of the controller tests.

- ``emu``, ``api``: an in-process API emulator with the GPUMix CRD, and a
  kubernetes-asyncio client for it (one per test).
- ``backend``, ``backend_api``: the same for a test that runs on both backends,
  parametrized ``emulator`` and ``real``. ``real`` is kube-apiserver v1.36.3 + etcd of
  ``tests/e2e/envtest.py``, one per session, with the shipped GPUMix CRD; the tests'
  objects are deleted before each test (``RealCluster.reset``). The real variants carry
  the ``e2e`` mark, so ``-m "not e2e"`` runs without an API server.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from controller_helpers import CRD_PATH, crd
from e2e.envtest import Envtest, EnvtestError, ensure_binaries
from real_cluster import RealCluster

from gpumix.emulator.server import Emulator

_build_result: Path | EnvtestError | None = None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: runs against a real kube-apiserver (tests/e2e)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("backend") == "real":
            item.add_marker(pytest.mark.e2e)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build (or find) the API server's binaries before the first test, so a cold build
    does not count against a test's timeout."""
    if session.config.option.collectonly:
        return
    if any(item.get_closest_marker("e2e") for item in session.items):
        _binaries()


def _binaries() -> Path | EnvtestError:
    global _build_result
    if _build_result is None:
        try:
            _build_result = ensure_binaries()
        except EnvtestError as err:
            _build_result = err
    return _build_result


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator() as e:
        e.create(crd())
        yield e


@pytest.fixture
async def api(emu: Emulator) -> AsyncIterator[Any]:
    async with emu.api_client() as client:
        yield client


@pytest.fixture(scope="session")
def real_cluster() -> Iterator[RealCluster]:
    """kube-apiserver + etcd for the session, with the GPUMix CRD served. A failed build
    fails the tests that use it (never a skip)."""
    bin_dir = _binaries()
    if isinstance(bin_dir, EnvtestError):
        raise bin_dir
    env = Envtest(bin_dir, keep_workdir=bool(os.environ.get("GPUMIX_ENVTEST_KEEP")))
    env.start()
    try:
        env.install_crds([CRD_PATH])
        yield RealCluster(env)
    finally:
        env.stop()


@pytest.fixture(params=["emulator", "real"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """The cluster of a test that runs on both backends (same direct-access methods)."""
    if request.param == "emulator":
        async with Emulator() as e:
            e.create(crd())
            yield e
    else:
        cluster: RealCluster = request.getfixturevalue("real_cluster")
        cluster.reset()
        yield cluster


@pytest.fixture
async def backend_api(backend: Any) -> AsyncIterator[Any]:
    async with backend.api_client() as client:
        yield client
