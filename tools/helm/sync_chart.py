"""Copy the files the Helm chart shares with the kustomize manifests into the chart.

A chart can only read files inside its own directory, so the chart holds copies of:

    manifests/crds/*.yaml               -> manifests/helm/gpumix/crds/
    manifests/monitoring/rules.yaml     -> manifests/helm/gpumix/files/rules.yaml
    manifests/dashboards/*.json         -> manifests/helm/gpumix/files/dashboards/

manifests/ is the source; tests/manifests/test_helm_chart.py fails when a copy differs.
After changing one of those files run:

    python tools/helm/sync_chart.py
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = REPO_ROOT / "manifests"
CHART = MANIFESTS / "helm" / "gpumix"


def copies() -> dict[Path, Path]:
    """Chart file -> the manifests file it is a copy of."""
    out: dict[Path, Path] = {}
    for crd in sorted((MANIFESTS / "crds").glob("*.yaml")):
        if crd.name != "kustomization.yaml":
            out[CHART / "crds" / crd.name] = crd
    out[CHART / "files" / "rules.yaml"] = MANIFESTS / "monitoring" / "rules.yaml"
    for dashboard in sorted((MANIFESTS / "dashboards").glob("*.json")):
        out[CHART / "files" / "dashboards" / dashboard.name] = dashboard
    return out


def stale() -> list[Path]:
    """Chart files that are missing, differ from their source, or have no source."""
    wanted = copies()
    out = [t for t, s in wanted.items() if not t.is_file() or t.read_bytes() != s.read_bytes()]
    for folder, pattern in (("crds", "*.yaml"), ("files/dashboards", "*.json")):
        out += [p for p in sorted((CHART / folder).glob(pattern)) if p not in wanted]
    return out


def main() -> int:
    wanted = copies()
    for target in stale():
        if target in wanted:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(wanted[target].read_bytes())
            print(f"wrote {target.relative_to(REPO_ROOT)}")
        else:
            target.unlink()
            print(f"removed {target.relative_to(REPO_ROOT)} (no source in manifests/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
