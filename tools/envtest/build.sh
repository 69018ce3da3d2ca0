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

fail() {
    echo "envtest build: FAILED: $*" >&2
    exit 1
}

# The pinned version is the one in go.mod, so there is a single source of truth.
k8s_version="$(sed -nE 's/^[[:space:]]*(require[[:space:]]+)?k8s\.io\/kubernetes[[:space:]]+(v[^[:space:]]+).*/\2/p' "$here/go.mod")"
[[ -n "$k8s_version" ]] || fail "cannot read the k8s.io/kubernetes version from $here/go.mod"

# Bump when the build recipe below changes, so cached binaries are rebuilt.
recipe=2
bin_dir="$cache_root/$k8s_version"
stamp="recipe=$recipe $(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-16)"
is_built() {
    [[ -x "$bin_dir/kube-apiserver" && -x "$bin_dir/etcd" ]] \
        && [[ "$(cat "$bin_dir/.stamp" 2>/dev/null)" == "$stamp" ]]
}
if is_built; then
    echo "$bin_dir"
    exit 0
fi

go_cmd="${GO:-}"
if [[ -z "$go_cmd" ]]; then
    if command -v go >/dev/null 2>&1; then
        go_cmd="$(command -v go)"
    elif [[ -x /usr/local/go/bin/go ]]; then
        go_cmd=/usr/local/go/bin/go
    else
        fail "no Go toolchain found (install Go >= 1.24 or set GO=/path/to/go)"
    fi
fi

# Never switch toolchains behind the caller's back; build with the modules
# named in go.mod/go.sum (the go.sum in the repository keeps this reproducible).
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
# Build into a scratch directory next to the cache and rename at the end, so
# an interrupted build never leaves a half-written binary that looks complete.
tmp_dir="$(mktemp -d "$cache_root/.build.XXXXXX")"
trap 'rm -rf "$tmp_dir"' EXIT

build() {  # <output name> <package> [extra -ldflags]
    local out="$1" pkg="$2" ldflags="-s -w ${3:-}" start=$SECONDS log="$tmp_dir/$1.log"
    echo "envtest build: building $pkg (modules are fetched on first use)" >&2
    local rc=0
    (cd "$here" && timeout "$build_timeout" "$go_cmd" build -trimpath -tags providerless \
        -ldflags "$ldflags" -o "$tmp_dir/$out" "$pkg") 2> >(tee "$log" >&2) || rc=$?
    if ((rc != 0)); then
        sleep 0.2  # let tee drain
        ((rc == 124)) && fail "go build $pkg timed out after ${build_timeout}s"
        if grep -v '^go: downloading' "$log" | grep -qE \
            'reading https?://|dial tcp|no such host|module lookup disabled|checksum mismatch|Forbidden|Not Found|unrecognized import path'; then
            fail "could not fetch the Go modules for $pkg (GOPROXY=$("$go_cmd" env GOPROXY)); see the lines above"
        fi
        fail "go build $pkg did not succeed (exit $rc); see the lines above"
    fi
    echo "envtest build: $out built in $((SECONDS - start)) s" >&2
}

build etcd go.etcd.io/etcd/server/v3
# Stamp the version as the release build does, so /version reports it.
k8s_minor="$(echo "$k8s_version" | cut -d. -f2)"
version_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    version_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1"
    version_ldflags+=" -X $pkg.gitMinor=$k8s_minor -X $pkg.gitTreeState=clean"
done
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$version_ldflags"

"$tmp_dir/etcd" --version >/dev/null || fail "the built etcd does not run"
"$tmp_dir/kube-apiserver" --version >/dev/null || fail "the built kube-apiserver does not run"

mv -f "$tmp_dir/etcd" "$bin_dir/etcd"
mv -f "$tmp_dir/kube-apiserver" "$bin_dir/kube-apiserver"
echo "$stamp" > "$bin_dir/.stamp"
echo "envtest build: binaries are in $bin_dir" >&2
echo "$bin_dir"
