"""Write manifests/monitoring/rules.yaml from the PrometheusRule's spec.

The PrometheusRule is what gets installed; rules.yaml holds the same groups in
Prometheus' own format so that ``promtool check rules`` and ``promtool test rules``
can read them. ``test_prometheus_rules.py`` fails when the two differ.

    python tests/manifests/sync_rules.py
"""

from __future__ import annotations

import sys
from pathlib import Path

MONITORING = Path(__file__).resolve().parents[2] / "manifests" / "monitoring"
SOURCE = MONITORING / "prometheusrule.yaml"
TARGET = MONITORING / "rules.yaml"
HEADER = (
    "# Generated from prometheusrule.yaml (its spec) by tests/manifests/sync_rules.py.\n"
    "# Do not edit: change prometheusrule.yaml and run that script.\n"
)


def rules_text(source: str) -> str:
    """The ``spec:`` block of the PrometheusRule, moved left by one level."""
    lines = source.splitlines(keepends=True)
    try:
        start = lines.index("spec:\n") + 1
    except ValueError:
        raise SystemExit(f"{SOURCE}: no top-level 'spec:' line") from None
    body = []
    for line in lines[start:]:
        if line.strip() and not line.startswith("  "):
            break  # the next top-level key (none today)
        body.append(line[2:] if line.startswith("  ") else line)
    return HEADER + "".join(body)


def main() -> int:
    TARGET.write_text(rules_text(SOURCE.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
