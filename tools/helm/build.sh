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

fail() {
    echo "helm build: FAILED: $*" >&2
    exit 1
}

# The pinned version is the one in go.mod, so there is a single source of truth.
helm_version="$(sed -nE 's/^[[:space:]]*(require[[:space:]]+)?helm\.sh\/helm\/v4[[:space:]]+(v[^[:space:]]+).*/\2/p' "$here/go.mod")"
[[ -n "$helm_version" ]] || fail "cannot read the helm.sh/helm/v4 version from $here/go.mod"

# Bump when the build recipe below changes, so a cached binary is rebuilt.
recipe=1
bin_dir="$cache_root/$helm_version"
stamp="recipe=$recipe $(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-16)"
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

go_cmd="${GO:-}"
if [[ -z "$go_cmd" ]]; then
    if command -v go >/dev/null 2>&1; then
        go_cmd="$(command -v go)"
    elif [[ -x /usr/local/go/bin/go ]]; then
        go_cmd=/usr/local/go/bin/go
    else
        fail "no Go toolchain found (install Go >= 1.25 or set GO=/path/to/go)"
    fi
fi

# Never switch toolchains behind the caller's back; build with the modules named in
# go.mod/go.sum (the go.sum in the repository keeps this reproducible).
export GOTOOLCHAIN=local
export GOFLAGS="-mod=mod ${GOFLAGS:-}"
export CGO_ENABLED=0

"$go_cmd" version >&2 || fail "'$go_cmd version' does not run"

mkdir -p "$bin_dir"
# One build at a time per cache (parallel test runs wait for the first one).
exec 9>"$cache_root/.lock"
flock -w "$build_timeout" 9 || fail "timed out waiting for another build to finish ($cache_root/.lock)"
if is_built; then
    echo "$bin_dir"
    exit 0
fi
# Build into a scratch directory and rename at the end, so an interrupted build
# never leaves a half-written binary that looks complete.
tmp_dir="$(mktemp -d "$cache_root/.build.XXXXXX")"
trap 'rm -rf "$tmp_dir"' EXIT

pkg=helm.sh/helm/v4/cmd/helm
log="$tmp_dir/build.log"
start=$SECONDS
echo "helm build: building $pkg $helm_version (modules are fetched on first use)" >&2
# Stamp the version as the release build does, so `helm version` reports it.
ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$helm_version"
ldflags+=" -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
rc=0
(cd "$here" && timeout "$build_timeout" "$go_cmd" build -trimpath -ldflags "$ldflags" \
    -o "$tmp_dir/helm" "$pkg") 2> >(tee "$log" >&2) || rc=$?
if ((rc != 0)); then
    sleep 0.2  # let tee drain
    ((rc == 124)) && fail "go build $pkg timed out after ${build_timeout}s"
    if grep -v '^go: downloading' "$log" | grep -qE \
        'reading https?://|dial tcp|no such host|module lookup disabled|checksum mismatch|Forbidden|Not Found|unrecognized import path'; then
        fail "could not fetch the Go modules for $pkg (GOPROXY=$("$go_cmd" env GOPROXY)); see the lines above"
    fi
    fail "go build $pkg did not succeed (exit $rc); see the lines above"
fi
echo "helm build: built in $((SECONDS - start)) s" >&2

"$tmp_dir/helm" version --short >/dev/null || fail "the built helm does not run"

mv -f "$tmp_dir/helm" "$bin_dir/helm"
echo "$stamp" > "$bin_dir/.stamp"
echo "helm build: binary is in $bin_dir" >&2
echo "$bin_dir"
