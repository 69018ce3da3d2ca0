#!/usr/bin/env bash
# Build kube-apiserver and etcd for the end-to-end tests, once per pinned
# Kubernetes version, into a cache outside the work tree:
#
#   ${GPUMIX_ENVTEST_CACHE:-$HOME/.cache/gpumix-envtest}/<k8s-version>/{kube-apiserver,etcd}
#
# Idempotent: when both binaries are present it prints the directory and exits.
# Prints the binary directory as the last line of stdout; progress goes to stderr.
# Fails (non-zero, one clear message) when Go or a module cannot be fetched.
#
# Environment:
#   GPUMIX_ENVTEST_CACHE  cache root (default ~/.cache/gpumix-envtest)
#   GO                    Go command (default: `go` on PATH, else /usr/local/go/bin/go)
#   GPUMIX_ENVTEST_BUILD_TIMEOUT  seconds allowed for each `go build` (default 1800)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${GPUMIX_ENVTEST_CACHE:-$HOME/.cache/gpumix-envtest}"
build_timeout="${GPUMIX_ENVTEST_BUILD_TIMEOUT:-1800}"

label="envtest build"
# shellcheck source=../gobuild.sh
. "$here/../gobuild.sh"

# The pinned version is the one in go.mod, so there is a single source of truth.
k8s_version="$(module_version k8s.io/kubernetes)"

# Bump when the build recipe below changes, so cached binaries are rebuilt.
recipe=2
bin_dir="$cache_root/$k8s_version"
stamp="$(build_stamp "$recipe")"
is_built() {
    [[ -x "$bin_dir/kube-apiserver" && -x "$bin_dir/etcd" ]] \
        && [[ "$(cat "$bin_dir/.stamp" 2>/dev/null)" == "$stamp" ]]
}
if is_built; then
    echo "$bin_dir"
    exit 0
fi

use_go 1.24
start_build

go_build etcd go.etcd.io/etcd/server/v3 "-s -w" -tags providerless
# Stamp the version as the release build does, so /version reports it.
k8s_minor="$(echo "$k8s_version" | cut -d. -f2)"
version_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    version_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1"
    version_ldflags+=" -X $pkg.gitMinor=$k8s_minor -X $pkg.gitTreeState=clean"
done
go_build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "-s -w $version_ldflags" -tags providerless

"$tmp_dir/etcd" --version >/dev/null || fail "the built etcd does not run"
"$tmp_dir/kube-apiserver" --version >/dev/null || fail "the built kube-apiserver does not run"

mv -f "$tmp_dir/etcd" "$bin_dir/etcd"
mv -f "$tmp_dir/kube-apiserver" "$bin_dir/kube-apiserver"
echo "$stamp" > "$bin_dir/.stamp"
echo "envtest build: binaries are in $bin_dir" >&2
echo "$bin_dir"
