"""Fixtures for the install manifests: every overlay and the monitoring objects, rendered
once per session with ``kubectl kustomize``."""

from __future__ import annotations

import pytest
from manifest_objects import MANIFESTS, OVERLAYS, Obj, render


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: takes tens of seconds (builds and installs gpumix into a fresh venv)"
    )


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[Obj]]:
    """Overlay name -> rendered objects, plus "monitoring"."""
    out = {name: render(MANIFESTS / "overlays" / name) for name in OVERLAYS}
    out["monitoring"] = render(MANIFESTS / "monitoring")
    return out
