"""Fixtures for the end-to-end tests on a real kube-apiserver (see envtest.py).

``apiserver`` (session scope) is an ``envtest.Envtest`` that is started:

    env.server                 "https://127.0.0.1:<port>"
    env.kubeconfig             kubeconfig path; contexts "admin" (current) and "unprivileged"
    env.ca_file / env.ca       CA of the API server and admin cert; env.ca.issue(...) signs more
    env.kubectl(*args, context="admin", input=None, check=True, timeout_s=60)
                               -> CompletedProcess[str]; raises KubectlError if check and rc != 0
    env.api_client(context="admin")
                               -> kubernetes_asyncio ApiClient (use inside a coroutine, close it)
    env.request(method, path, body=None, context="admin", content_type="application/json")
                               -> (status, parsed JSON); HTTP errors are returned, not raised
    env.install_crds(paths=None)   apply tests/e2e/crds/*.yaml (or paths), wait Established
    env.stop_apiserver(kill=False) / env.start_apiserver() / env.is_serving()
    env.restart_apiserver(downtime_s=0, kill=False)
                               etcd keeps running, so objects survive; the port stays the same;
                               blocking: from a coroutine use asyncio.to_thread(...)

``namespace`` (function scope): a fresh namespace name, created. Namespaces are not
deleted afterwards: without kube-controller-manager they would stay Terminating.

Binaries are built (or found in the cache) once, after collection and before the
first test, so the build does not count against a test's timeout. A build failure
fails every test that uses ``apiserver`` with the build output; nothing is skipped.
Set ``GPUMIX_ENVTEST_KEEP=1`` to keep the work directory (logs, certs) after the run.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .envtest import Envtest, EnvtestError, ensure_binaries, pinned_kubernetes_version
from .gpumix_env import (
    Obj,
    Webhook,
    install_prerequisites,
    render_manifests,
    start_webhook,
    stop_webhook,
)

_HERE = Path(__file__).resolve().parent
_build_result: Path | EnvtestError | None = None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: runs against a real kube-apiserver (tests/e2e)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    if any("apiserver" in getattr(item, "fixturenames", ()) for item in session.items):
        _build(session.config)


def _build(config: pytest.Config) -> Path | EnvtestError:
    """Build or find the binaries once per run; the outcome is kept for the fixture."""
    global _build_result
    if _build_result is None:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"envtest: ensuring kube-apiserver and etcd {pinned_kubernetes_version()} "
                "(a cold build takes several minutes)"
            )
        start = time.monotonic()
        try:
            _build_result = ensure_binaries()
        except EnvtestError as err:
            _build_result = err
        if reporter is not None:
            outcome = (
                f"binaries in {_build_result}"
                if isinstance(_build_result, Path)
                else "BUILD FAILED; the e2e tests will fail with the build output"
            )
            reporter.write_line(f"envtest: {outcome} ({time.monotonic() - start:.1f} s)")
    return _build_result


@pytest.fixture(scope="session")
def apiserver(pytestconfig: pytest.Config) -> Iterator[Envtest]:
    bin_dir = _build(pytestconfig)
    if isinstance(bin_dir, EnvtestError):
        raise bin_dir
    env = Envtest(bin_dir, keep_workdir=bool(os.environ.get("GPUMIX_ENVTEST_KEEP")))
    env.start()
    try:
        yield env
    finally:
        env.stop()


@pytest.fixture
def namespace(apiserver: Envtest) -> str:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    apiserver.kubectl("create", "namespace", name)
    return name


# --------------------------------------------------------------------------- gpumix installed


@pytest.fixture(scope="session")
def gpumix_manifests(apiserver: Envtest) -> list[Obj]:
    """The rendered ``manifests/overlays/enforce``, with its Namespace, CRD, ServiceAccounts
    and RBAC applied (and the test CRDs of KEDA and AIBrix installed)."""
    objects = render_manifests()
    apiserver.install_crds()
    install_prerequisites(apiserver, objects)
    return objects


@pytest.fixture(scope="module")
def gpumix_webhook(apiserver: Envtest, gpumix_manifests: list[Obj]) -> Iterator[Webhook]:
    """``gpumix webhook`` running and registered through the shipped configurations for
    the tests of one module; unregistered afterwards, so other modules see a bare server."""
    webhook = start_webhook(apiserver, gpumix_manifests)
    try:
        yield webhook
    finally:
        stop_webhook(webhook)
