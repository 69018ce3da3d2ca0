#!/usr/bin/env bash
# Build the helm binary the chart tests use, once per pinned Helm version, into a
# cache outside the work tree:
#
#   ${GPUMIX_HELM_CACHE:-$HOME/.cache/gpumix-helm}/<helm-version>/helm
#
# Idempotent: when the binary is present it prints the directory and exits.
# Prints the binary directory as the last line of stdout; progress goes to stderr.
# Fails (non-zero, one clear message) when Go or a module cannot be fetched.
#
#   build.sh --check   only look: print the directory if the binary is built, else fail
#                      (the tests use this, so a build never runs inside a timed test)
#
# Environment:
#   GPUMIX_HELM_CACHE          cache root (default ~/.cache/gpumix-helm)
#   GO                         Go command (default: `go` on PATH, else /usr/local/go/bin/go)
#   GPUMIX_HELM_BUILD_TIMEOUT  seconds allowed for the `go build` (default 1800)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${GPUMIX_HELM_CACHE:-$HOME/.cache/gpumix-helm}"
build_timeout="${GPUMIX_HELM_BUILD_TIMEOUT:-1800}"

label="helm build"
# shellcheck source=../gobuild.sh
. "$here/../gobuild.sh"

# The pinned version is the one in go.mod, so there is a single source of truth.
helm_version="$(module_version helm.sh/helm/v4)"

# Bump when the build recipe below changes, so a cached binary is rebuilt.
recipe=1
bin_dir="$cache_root/$helm_version"
stamp="$(build_stamp "$recipe")"
is_built() {
    [[ -x "$bin_dir/helm" ]] && [[ "$(cat "$bin_dir/.stamp" 2>/dev/null)" == "$stamp" ]]
}
if is_built; then
    echo "$bin_dir"
    exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
    fail "helm $helm_version is not built in $bin_dir; run: bash tools/helm/build.sh (tools/test.sh does)"
fi

use_go 1.25
start_build

# Stamp the version as the release build does, so `helm version` reports it.
ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$helm_version"
ldflags+=" -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
go_build helm helm.sh/helm/v4/cmd/helm "$ldflags"

"$tmp_dir/helm" version --short >/dev/null || fail "the built helm does not run"

mv -f "$tmp_dir/helm" "$bin_dir/helm"
echo "$stamp" > "$bin_dir/.stamp"
echo "helm build: binary is in $bin_dir" >&2
echo "$bin_dir"
