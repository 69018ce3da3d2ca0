#!/usr/bin/env bash
# Build the Kyverno binary the peer benchmark (benchmarks/bench_admission_peers.py)
# runs out of cluster, once per pinned Kyverno version, into a cache outside the work
# tree, with Kyverno's CRDs next to it:
#
#   ${GPUMIX_KYVERNO_CACHE:-$HOME/.cache/gpumix-kyverno}/<kyverno-version>/kyverno
#   ${GPUMIX_KYVERNO_CACHE:-$HOME/.cache/gpumix-kyverno}/<kyverno-version>/crds/*.yaml
#
# Built from the Go modules through the wrapper module here (go.mod repeats Kyverno's
# one `replace` directive, for k8s.io/pod-security-admission, since a dependency's
# replace directives do not apply to the module that requires it). About 4-5 minutes
# on 2 cores the first time.
#
# Idempotent: when the binary is present it prints the directory and exits.
# Prints the directory as the last line of stdout; progress goes to stderr.
# Fails (non-zero, one clear message) when Go or a module cannot be fetched.
#
#   build.sh --check   only look: print the directory if it is built, else fail
#
# Environment:
#   GPUMIX_KYVERNO_CACHE          cache root (default ~/.cache/gpumix-kyverno)
#   GO                            Go command (default: `go` on PATH, else /usr/local/go/bin/go)
#   GPUMIX_KYVERNO_BUILD_TIMEOUT  seconds allowed for the `go build` (default 1800)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${GPUMIX_KYVERNO_CACHE:-$HOME/.cache/gpumix-kyverno}"
build_timeout="${GPUMIX_KYVERNO_BUILD_TIMEOUT:-1800}"

label="kyverno build"
# shellcheck source=../gobuild.sh
. "$here/../gobuild.sh"

# The pinned version is the one in go.mod, so there is a single source of truth.
module=github.com/kyverno/kyverno
kyverno_version="$(module_version "$module")"

# Bump when the build recipe below changes, so a cached binary is rebuilt.
recipe=1
bin_dir="$cache_root/$kyverno_version"
stamp="$(build_stamp "$recipe")"
is_built() {
    [[ -x "$bin_dir/kyverno" && -d "$bin_dir/crds" ]] \
        && [[ "$(cat "$bin_dir/.stamp" 2>/dev/null)" == "$stamp" ]]
}
if is_built; then
    echo "$bin_dir"
    exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
    fail "kyverno $kyverno_version is not built in $bin_dir; run: bash tools/kyverno/build.sh"
fi

use_go 1.26
start_build

# Stamp the version as the release build does, so `kyverno version` reports it.
ldflags="-s -w -X github.com/kyverno/kyverno/pkg/version.BuildVersion=$kyverno_version"
go_build kyverno "$module/cmd/kyverno" "$ldflags"

# The CRDs ship in the module (config/crds/); the module cache holds it after the build.
module_dir="$(cd "$here" && "$go_cmd" list -m -f '{{.Dir}}' "$module")" \
    || fail "cannot find $module in the module cache"
[[ -d "$module_dir/config/crds" ]] || fail "$module_dir/config/crds is missing"
mkdir -p "$tmp_dir/crds"
find "$module_dir/config/crds" -name '*.yaml' ! -name 'kustomization.yaml' -exec cp {} "$tmp_dir/crds/" \;
compgen -G "$tmp_dir/crds/*.yaml" >/dev/null || fail "no CRDs found in $module_dir/config/crds"
chmod u+w "$tmp_dir/crds"/*.yaml

"$tmp_dir/kyverno" --help >/dev/null 2>&1 || fail "the built kyverno does not run"

rm -rf "$bin_dir/crds"
mv -f "$tmp_dir/crds" "$bin_dir/crds"
mv -f "$tmp_dir/kyverno" "$bin_dir/kyverno"
echo "$stamp" > "$bin_dir/.stamp"
echo "kyverno build: binary and CRDs are in $bin_dir" >&2
echo "$bin_dir"
