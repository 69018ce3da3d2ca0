"""The ``gpumix`` command line: each command imports only what it needs, so the base
install (no extras) runs ``gpumix webhook`` and ``gpumix check``, and a command whose
extra is missing says which extra to install."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

# Python refuses to import a module whose sys.modules entry is None: this stands for a
# base install, in which the extras' packages are absent.
WITHOUT_EXTRAS = """
import sys
for name in ("ortools", "numpy", "matplotlib", "rich"):
    sys.modules[name] = None
from gpumix.cli import main
sys.exit(main(sys.argv[1:]))
"""


def gpumix_without_extras(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRAS, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_help_lists_every_command_without_importing_them() -> None:
    proc = gpumix_without_extras("--help")
    assert proc.returncode == 0, proc.stderr
    for name in ("check", "plan", "webhook", "controller", "demo", "simulate"):
        assert f"    {name}" in proc.stdout


def test_webhook_and_check_run_on_the_base_install(tmp_path: Path) -> None:
    assert gpumix_without_extras("webhook", "--help").returncode == 0
    manifest = tmp_path / "hpa.yaml"
    manifest.write_text(
        textwrap.dedent(
            """\
            apiVersion: autoscaling/v2
            kind: HorizontalPodAutoscaler
            metadata: {name: h, namespace: team}
            spec:
              scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
              maxReplicas: 0
            """
        )
    )
    proc = gpumix_without_extras("check", "-f", str(manifest))
    assert proc.returncode == 1, proc.stderr  # a finding, not a crash
    assert "missing-max-replicas" in proc.stdout


def test_a_command_whose_extra_is_missing_names_the_extra() -> None:
    for command, extra in (("plan", "controller"), ("demo", "demo")):
        proc = gpumix_without_extras(command, "--help")
        assert proc.returncode == 2, proc.stdout
        assert "Traceback" not in proc.stderr
        assert f"pip install 'gpumix[{extra}]'" in proc.stderr, proc.stderr


# The webhook and controller images install gpumix without these parts (Dockerfile,
# stage wheel-runtime); hiding them stands for such an installation.
WITHOUT_DEMO_PARTS = """
import sys
for name in ("gpumix.demo", "gpumix.simulate", "gpumix.emulator"):
    sys.modules[name] = None
from gpumix.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_demo_and_simulate_say_they_are_not_in_a_runtime_image() -> None:
    for argv in (("demo", "--help"), ("simulate", "--list"), ("demo",)):
        proc = subprocess.run(
            [sys.executable, "-c", WITHOUT_DEMO_PARTS, *argv],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 2, (argv, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        [line] = proc.stderr.splitlines()
        assert line.startswith(f"gpumix {argv[0]}: gpumix.{argv[0]} is not installed in this image")
        assert "ghcr.io/gpumix/gpumix or pip install 'gpumix[demo]'" in line
    # The commands that the runtime images serve do not need those parts.
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_DEMO_PARTS, "webhook", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
