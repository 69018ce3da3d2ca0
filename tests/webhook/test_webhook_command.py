"""``gpumix webhook``: flags become settings; the process serves HTTPS and probes."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from webhook_kit import deployment, hpa, review_body

from gpumix.cli import build_parser, main
from gpumix.commands.webhook import settings_from_args
from gpumix.emulator import Emulator
from gpumix.webhook.runtime import loop_factory, serve
from gpumix.webhook.settings import DAY_S, WebhookSettings


def parse(*argv: str) -> WebhookSettings:
    return settings_from_args(build_parser().parse_args(["webhook", *argv]))


def test_defaults_follow_the_shared_names() -> None:
    s = parse()
    assert (s.port, s.metrics_port, s.host) == (8443, 8080, "0.0.0.0")
    assert s.tls.namespace == "gpumix-system" and s.tls.secret_name == "gpumix-webhook-tls"
    assert s.tls.webhook_config_name == "gpumix" and s.tls.service_name == "gpumix-webhook"
    assert "gpumix-webhook.gpumix-system.svc.cluster.local" in s.tls.dns_names()
    assert not s.tls.from_files and s.state_file is None and s.kubeconfig is None


def test_flags_are_read_into_settings(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("mode: warn\ndefaultMaxReplicas: 4\n")
    s = parse(
        "--kubeconfig",
        "kc",
        "--policy",
        str(policy),
        "--port",
        "9443",
        "--metrics-port",
        "-1",
        "--host",
        "127.0.0.1",
        "--namespace",
        "ops",
        "--service-name",
        "wh",
        "--secret-name",
        "wh-tls",
        "--webhook-config-name",
        "x",
        "--extra-san",
        "127.0.0.1",
        "--extra-san",
        "wh.example",
        "--cert-days",
        "30",
    )
    assert s.kubeconfig == "kc" and s.policy.mode == "warn"
    assert s.policy.default_max_replicas == 4
    assert (s.port, s.metrics_port, s.host) == (9443, None, "127.0.0.1")
    assert s.tls.dns_names()[2] == "wh.ops.svc" and s.tls.secret_name == "wh-tls"
    assert s.tls.extra_sans == ("127.0.0.1", "wh.example")
    assert s.tls.lifetime_s == 30 * DAY_S and s.tls.webhook_config_name == "x"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--tls-cert-file", "c.pem"], "give both"),
        (["--port", "70000"], "not a port"),
        (["--cert-days", "0"], "positive"),
        (["--policy", "/nonexistent/policy.yaml"], "cannot read policy"),
    ],
)
def test_bad_flags_are_exit_2_with_one_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["webhook", *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_state_and_kubeconfig_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["webhook", "--state", "a", "--kubeconfig", "b"])
    assert "not allowed with" in capsys.readouterr().err


def test_unreadable_state_file_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["webhook", "--state", "/nonexistent.yaml"]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize("value", ['"10e399"', '"inf"', "1e400", ".nan"])
def test_state_file_with_an_unreadable_value_is_exit_2_naming_file_document_and_field(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state.yaml"
    huge = json.dumps(deployment("huge")).replace('"nvidia.com/gpu": "1"', '"nvidia.com/gpu": 0')
    state.write_text(
        json.dumps(deployment("fine"))
        + "\n---\n"
        + huge.replace('"nvidia.com/gpu": 0', f'"nvidia.com/gpu": {value}')
        + "\n"
    )
    assert main(["webhook", "--state", str(state)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{state}: document 1: Deployment default/huge: field " in err
    assert "spec.template.spec.containers[0].resources.limits[nvidia.com/gpu]" in err


def test_bad_kubeconfig_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("apiVersion: v1\nkind: Config\n")
    assert main(["webhook", "--kubeconfig", str(bad), "--host", "127.0.0.1"]) == 2
    assert "cannot load" in capsys.readouterr().err


# Serve on loopback, on ports the OS picks, with a certificate valid for 127.0.0.1.
LOOPBACK = (
    "--host",
    "127.0.0.1",
    "--port",
    "0",
    "--metrics-port",
    "0",
    "--extra-san",
    "127.0.0.1",
)


async def _serve_and_probe(
    settings: WebhookSettings, objects: list[dict[str, Any]] | None, ca: Callable[[], bytes]
) -> dict[str, Any]:
    stop = asyncio.Event()
    ports: list[int] = []
    task = asyncio.create_task(
        serve(
            settings, state_objects=objects, stop=stop, on_ready=lambda a, b: ports.extend((a, b))
        )
    )
    try:
        for _ in range(200):
            if ports or task.done():
                break
            await asyncio.sleep(0.02)
        assert ports, task
        https, probes = ports
        out: dict[str, Any] = {}
        async with aiohttp.ClientSession() as http:
            for _ in range(250):
                async with http.get(f"http://127.0.0.1:{probes}/readyz") as r:
                    if r.status == 200:
                        break
                await asyncio.sleep(0.02)
            out["ready"] = r.status
            async with http.get(f"http://127.0.0.1:{probes}/metrics") as r:
                out["metrics"] = await r.text()
            ctx = ssl.create_default_context(cadata=ca().decode())
            body = review_body(hpa("h", "d", None, "default"), uid="cmd-1")
            async with http.post(f"https://127.0.0.1:{https}/mutate", json=body, ssl=ctx) as r:
                out["mutate"] = await r.json()
        return out
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_state_mode_serves_without_a_cluster(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    settings = parse(
        "--state",
        "x",
        *LOOPBACK,
        "--write-ca",
        str(ca),
    )
    objects = [deployment("d", gpu_product="NVIDIA-A40")]
    out = await _serve_and_probe(settings, objects, ca.read_bytes)
    assert out["ready"] == 200
    assert 'gpumix_cache_objects{kind="Deployment"} 1.0' in out["metrics"]
    response = out["mutate"]["response"]
    assert response["uid"] == "cmd-1" and response["patchType"] == "JSONPatch"


async def test_kubeconfig_mode_bootstraps_and_serves() -> None:
    async with Emulator() as emu:
        emu.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gpumix-system"}})
        settings = parse("--kubeconfig", str(emu.kubeconfig()), *LOOPBACK)

        def ca() -> bytes:  # the certificate is bootstrapped before serving starts
            secret = emu.get("secrets", "gpumix-webhook-tls", "gpumix-system")
            assert secret is not None
            return base64.b64decode(secret["data"]["ca.crt"])

        out = await _serve_and_probe(settings, None, ca)
        assert out["ready"] == 200
        assert "gpumix_cache_synced 1.0" in out["metrics"]
        assert out["mutate"]["response"]["uid"] == "cmd-1"


# --------------------------------------------------------------------------- event loop


def test_event_loop_flag() -> None:
    assert build_parser().parse_args(["webhook"]).event_loop == "uvloop"
    args = build_parser().parse_args(["webhook", "--event-loop", "asyncio"])
    assert args.event_loop == "asyncio"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["webhook", "--event-loop", "trio"])


def test_loop_factory_picks_uvloop_and_falls_back_without_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import uvloop

    factory = loop_factory("uvloop")
    assert factory is not None
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
    assert loop_factory("asyncio") is None
    with pytest.raises(ValueError, match="unknown event loop"):
        loop_factory("trio")
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    assert loop_factory("uvloop") is None
    assert "uvloop is not available" in caplog.text


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
async def test_command_serves_on_the_chosen_loop_and_stops_on_sigterm(
    tmp_path: Path, event_loop: str
) -> None:
    state = tmp_path / "state.json"
    state.write_text(json.dumps(deployment("d")))
    ca = tmp_path / "ca.pem"
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "gpumix", "webhook", "--state", str(state)),
        *LOOPBACK,
        *("--write-ca", str(ca), "--event-loop", event_loop),
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        lines: list[str] = []
        ports = None
        while ports is None:
            line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
            assert line, "".join(lines)
            lines.append(line)
            ports = re.search(r"serving HTTPS on [\d.]+:(\d+), probes on port (\d+)", line)
        assert any(f"event loop: {event_loop}" in x for x in lines)
        ctx = ssl.create_default_context(cadata=ca.read_text())
        body = review_body(hpa("h", "d"), uid="loop-1")
        async with aiohttp.ClientSession() as http:
            url = f"https://127.0.0.1:{ports.group(1)}/mutate"
            async with http.post(url, json=body, ssl=ctx) as r:
                out = await r.json()
        assert out["response"]["uid"] == "loop-1" and out["response"]["patchType"] == "JSONPatch"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
