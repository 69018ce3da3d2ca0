"""``gpumix controller`` as a process, against the emulator through a kubeconfig."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from controller_helpers import (
    bucket,
    condition,
    deployment,
    gmx_status,
    gpumix,
    node,
    replicas,
    wait_for,
)

from gpumix.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_bad_arguments_exit_2(capsys: Any, tmp_path: Path) -> None:
    assert main(["controller", "--policy", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read policy" in capsys.readouterr().err
    assert main(["controller", "--audit-interval", "-1"]) == 2
    bad = tmp_path / "kubeconfig"
    bad.write_text("not: [a kubeconfig")
    assert main(["controller", "--kubeconfig", str(bad), "--metrics-port", "0"]) == 2
    assert "kubeconfig" in capsys.readouterr().err


async def test_process_reconciles_and_stops_on_sigterm(emu: Any, tmp_path: Path) -> None:
    emu.create(node("a40-0", "A40", 8))
    emu.create(node("a100-0", "A100", 8))
    emu.create(deployment("llama-a100", "A100"))
    emu.create(deployment("llama-a40", "A40"))
    emu.create(gpumix(mode="recommend", load=[bucket(512, 128, 10.0)]))
    kubeconfig = emu.kubeconfig(tmp_path / "kubeconfig")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gpumix",
        "controller",
        "--kubeconfig",
        str(kubeconfig),
        "--no-leader-election",
        "--metrics-port",
        "0",
        "--audit-interval",
        "0",
        cwd=REPO,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_for(
            lambda: condition(gmx_status(emu), "Scaling").get("status") == "False",
            timeout=30,
            what="the process to reconcile",
        )
        assert condition(gmx_status(emu), "Ready")["status"] == "True"
        assert replicas(emu, "llama-a40") == 1  # recommend mode: not scaled
        plan = {e["deployment"]: e for e in gmx_status(emu)["plan"]}
        assert plan["llama-a40"]["recommendedReplicas"] >= 1
        await asyncio.sleep(0.5)  # let the pass finish and log
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()[-2000:]
    lines = [json.loads(x) for x in err.decode().splitlines() if x.startswith("{")]
    assert any(x["msg"] == "reconcile pass" for x in lines)
