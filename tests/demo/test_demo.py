"""`gpumix demo` end to end: exit code, the key lines, the plot, and clean-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "plots"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "gpumix", "demo", "--no-progress", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={
            "PATH": "/usr/bin:/bin",
            "COLUMNS": "200",
            "HOME": str(tmp_path),
            "TMPDIR": str(scratch),
            # the code under test, when it is not the installed checkout
            **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"},
        },
    )
    text = proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # 1. the AIBrix situation: both admitted and isolated on the first try, no recreate
    assert "01-llama-a100.yaml  →  created, isolated by the webhook" in text
    assert "02-llama-a40.yaml  →  created, isolated by the webhook" in text
    assert "'gpumix.io/deployment': 'llama2-7b-a100'" in text
    assert "'gpumix.io/deployment': 'llama2-7b-a40'" in text
    assert "denied" not in text.split("2. An autoscaler")[0]
    assert "selectors as stored" in text
    # 2. the ceiling is injected, an absurd one denied
    assert "created with spec.maxReplicas: 10 injected" in text
    assert "maxReplicas: 1000  →  denied" in text and "hard limit of 100" in text
    # 3. the controller's plan per phase, with the saving against the best single type
    for phase in ("night", "morning", "peak", "evening"):
        assert phase in text
    assert "saving" in text
    # 4. the summary and a real PNG
    assert "demo finished" in text
    png = out / "demo-mix.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as img:
        assert img.size[0] > 500 and img.size[1] > 200
    # clean-up: no kubeconfig, certificate or other scratch file left behind
    assert list(scratch.iterdir()) == []


def test_demo_outcome_in_process(tmp_path: Path) -> None:
    import asyncio

    from rich.console import Console

    from gpumix.demo import DemoOptions, run_demo

    console = Console(file=open(tmp_path / "out.txt", "w"), width=200)  # noqa: SIM115
    outcome = asyncio.run(run_demo(DemoOptions(out_dir=tmp_path, progress=False), console))
    console.file.close()
    assert outcome.overlap_fixed and outcome.resync_unchanged
    assert outcome.injected_ceiling == 10 and outcome.over_ceiling_denied
    assert [r.phase.name for r in outcome.phases] == ["night", "morning", "peak", "evening"]
    for r in outcome.phases:
        # the mix never costs more than the best single GPU type
        assert r.cost <= r.best_single_cost + 1e-9
        assert sum(r.replicas.values()) > 0
    peak = outcome.phases[2]
    assert peak.replicas["A100"] > 0 and peak.replicas["A40"] > 0
    assert peak.cost < peak.best_single_cost
