#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine, then runs
# the checks and the whole test suite. Safe to run again: installed parts are kept.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
if ((${#need_apt[@]})); then
  echo "== installing Debian packages: prometheus (server and promtool)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

echo "== installing gpumix with its development extras"
python3 -m pip install -q --disable-pip-version-check -e '.[dev]'

echo "== static checks"
ruff check .
mypy
lint-imports

echo "== real kube-apiserver and etcd for the end-to-end tests (cached after the first build)"
bash tools/envtest/build.sh

echo "== helm for the chart tests (cached after the first build)"
bash tools/helm/build.sh

echo "== tests"
python3 -m pytest "$@"
