"""The Grafana dashboards' queries, a real Prometheus to run them in, and a matplotlib
rendering of a dashboard from the same queries (for docs/dashboards.md).

- ``panels(name)``: the panels of ``manifests/dashboards/<name>.json``.
- ``promql(expr, rate_interval)``: a target's expression with Grafana's variables
  replaced the way Grafana does for one query.
- ``Prometheus``: ``prometheus`` (Debian package) on a loopback port with a scrape
  configuration written by the test; ``query`` / ``query_range`` return the API's answer.
- ``render_png(...)``: the dashboard laid out by its ``gridPos``, each panel drawn from
  ``query_range`` results (stat panels show the last value).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .envtest import REPO_ROOT, _Proc, free_port
from .gpumix_env import E2EError, wait_until

DASHBOARDS = REPO_ROOT / "manifests" / "dashboards"

Obj = dict[str, Any]


def load(name: str) -> Obj:
    doc: Obj = json.loads((DASHBOARDS / f"{name}.json").read_text())
    return doc


def panels(name: str) -> list[Obj]:
    return list(load(name)["panels"])


def promql(expr: str, *, rate_interval: str, range_: str = "5m") -> str:
    """The expression Grafana sends: its interval variables filled in, every multi-value
    variable at "All" (allValue ``.*``)."""
    return (
        expr.replace("$__rate_interval", rate_interval)
        .replace("$__range", range_)
        .replace("$namespace", ".*")
    )


def legend(fmt: str, labels: dict[str, str]) -> str:
    out = fmt
    for k, v in labels.items():
        out = out.replace("{{" + k + "}}", v)
    return out


class PrometheusError(AssertionError):
    """Prometheus refused a query (status error); carries its message."""


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None
    )
    if found is None:
        raise E2EError(
            "the prometheus binary is missing: install the Debian package "
            "(apt-get install -y prometheus; tools/test.sh does)"
        )
    return found


@dataclass
class Prometheus:
    """A real Prometheus scraping ``scrape_configs`` every second."""

    workdir: Path
    scrape_configs: list[Obj]
    port: int = field(default_factory=free_port)
    proc: _Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        directory = self.workdir / f"prometheus-{self.port}"
        directory.mkdir(parents=True)
        config = directory / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": self.scrape_configs,
                }
            )
        )
        self.proc = _Proc(
            "prometheus",
            [
                prometheus_binary(),
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            directory / "prometheus.log",
        )
        self.proc.start()
        try:
            wait_until(self._ready, timeout_s=30, what="prometheus /-/ready")
        except E2EError as err:
            raise E2EError(f"{err}\n{self.proc.log_tail()}") from None
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if not self.proc.running():
            raise E2EError(f"prometheus exited:\n{self.proc.log_tail()}")
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
            return bool(resp.status == 200)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def _api(self, path: str, params: dict[str, str]) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as err:
            body = json.loads(err.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[Obj]:
        data = self._api("query", {"query": expr})
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Obj]:
        data = self._api(
            "query_range", {"query": expr, "start": str(start), "end": str(end), "step": str(step)}
        )
        return list(data["result"])

    def targets_up(self, jobs: Sequence[str]) -> bool:
        up = {r["metric"]["job"]: r["value"][1] for r in self.query("up")}
        return all(up.get(job) == "1" for job in jobs)


def finite(result: list[Obj]) -> bool:
    """Whether an instant query's result holds at least one finite number."""
    return any(math.isfinite(float(r["value"][1])) for r in result)


# --------------------------------------------------------------------------- rendering


def render_png(
    name: str,
    prometheus: Prometheus,
    start: float,
    end: float,
    out: Path,
    *,
    rate_interval: str,
) -> None:
    """Draw dashboard ``name`` as Grafana lays it out, from ``query_range`` of its queries."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    board = load(name)
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in board["panels"])
    fig = plt.figure(figsize=(16, rows * 0.4), dpi=100)
    grid = fig.add_gridspec(rows, 24, hspace=0.0, wspace=0.8, top=0.96, bottom=0.03)
    step = max(1.0, (end - start) / 240)
    for panel in board["panels"]:
        g = panel["gridPos"]
        # The last grid row of each panel is left for its title and tick labels.
        ax = fig.add_subplot(grid[g["y"] + 1 : g["y"] + g["h"] - 1, g["x"] : g["x"] + g["w"]])
        ax.set_title(panel["title"], fontsize=9, loc="left")
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        series = []
        for target in panel["targets"]:
            expr = promql(target["expr"], rate_interval=rate_interval)
            for r in prometheus.query_range(expr, start, end, step):
                xs = [float(t) - end for t, _ in r["values"]]
                ys = [float(v) for _, v in r["values"]]
                series.append((legend(target.get("legendFormat", ""), r["metric"]), xs, ys))
        if panel["type"] == "stat":
            ax.axis("off")
            last = [s[2][-1] for s in series if s[2] and math.isfinite(s[2][-1])]
            text = _format(last[-1], unit) if last else "No data"
            ax.text(0.5, 0.4, text, ha="center", va="center", fontsize=16, weight="bold")
            continue
        for label, xs, ys in series:
            ax.plot(xs, ys, label=label, linewidth=1.2)
        if not series:
            ax.text(0.5, 0.5, "No data", ha="center", va="center", transform=ax.transAxes)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("seconds before the end of the run", fontsize=7, labelpad=1)
        if unit:
            ax.set_ylabel(unit, fontsize=7)
        if series:
            ax.legend(fontsize=6, loc="upper left", frameon=False, ncol=2)
        ax.grid(alpha=0.3)
    fig.suptitle(board["title"], fontsize=12, x=0.01, y=0.995, ha="left")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)


def _format(value: float, unit: str) -> str:
    if unit == "s" and value > 86400:
        return f"{value / 86400:.0f} days"
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.1f} s"
    if unit == "percentunit":
        return f"{value * 100:.1f}%"
    if unit == "currencyUSD":
        return f"${value:.2f}/h"
    if unit == "reqps":
        return f"{value:.2f} req/s"
    return f"{value:g}"
