# Shared steps of the cached Go builds (tools/envtest/build.sh, tools/helm/build.sh,
# tools/kyverno/build.sh);
# sourced, not run. The sourcing script sets `label` (the message prefix), `here` (its
# folder, holding go.mod and go.sum), `cache_root`, `bin_dir`, `build_timeout`, and
# defines `is_built`; `fail`, `module_version` and `build_stamp` are defined here.

fail() {
    echo "$label: FAILED: $*" >&2
    exit 1
}

# The version the wrapper module's go.mod (in `here`) requires of <module>: the one
# source of truth for what is built.
module_version() {  # <module>
    local version
    version="$(awk -v m="$1" '$1 == "require" && $2 == m {print $3} $1 == m && $2 ~ /^v/ {print $2}' "$here/go.mod")"
    [[ -n "$version" ]] || fail "cannot read the $1 version from $here/go.mod"
    echo "$version"
}

# What a cached build was made from: the recipe number (bumped when the build steps
# change) and the wrapper module's go.mod and go.sum.
build_stamp() {  # <recipe>
    echo "recipe=$1 $(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-16)"
}

# Finds the Go command (GO, else `go` on PATH, else /usr/local/go/bin/go) into go_cmd
# and fixes the build environment: never switch toolchains behind the caller's back,
# and build with the modules named in go.mod/go.sum (the go.sum in the repository
# keeps this reproducible).
use_go() {  # <minimum Go version, for the message>
    go_cmd="${GO:-}"
    if [[ -z "$go_cmd" ]]; then
        if command -v go >/dev/null 2>&1; then
            go_cmd="$(command -v go)"
        elif [[ -x /usr/local/go/bin/go ]]; then
            go_cmd=/usr/local/go/bin/go
        else
            fail "no Go toolchain found (install Go >= $1 or set GO=/path/to/go)"
        fi
    fi
    export GOTOOLCHAIN=local
    export GOFLAGS="-mod=mod ${GOFLAGS:-}"
    export CGO_ENABLED=0
    "$go_cmd" version >&2 || fail "'$go_cmd version' does not run"
}

# One build at a time per cache (parallel test runs wait for the first one); a build
# that finished meanwhile is taken as it is. The build goes into a scratch directory
# (tmp_dir) next to the cache and is renamed at the end, so an interrupted build never
# leaves a half-written binary that looks complete.
start_build() {
    mkdir -p "$bin_dir"
    exec 9>"$cache_root/.lock"
    flock -w "$build_timeout" 9 || fail "timed out waiting for another build to finish ($cache_root/.lock)"
    if is_built; then
        echo "$bin_dir"
        exit 0
    fi
    tmp_dir="$(mktemp -d "$cache_root/.build.XXXXXX")"
    trap 'rm -rf "$tmp_dir"' EXIT
}

# go build of one package into tmp_dir, with one clear message when it fails: a
# time-out, modules that could not be fetched, or the build itself.
go_build() {  # <output name> <package> <ldflags> [go build flags...]
    local out="$1" pkg="$2" ldflags="$3" start=$SECONDS log="$tmp_dir/$1.log" rc=0
    shift 3
    echo "$label: building $pkg (modules are fetched on first use)" >&2
    (cd "$here" && timeout "$build_timeout" "$go_cmd" build -trimpath "$@" \
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
    echo "$label: $out built in $((SECONDS - start)) s" >&2
}
