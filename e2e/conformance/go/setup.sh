#!/usr/bin/env bash
# Builds (once) the gocql conformance program into
# ${FERRY_CACHE:-~/.cache/ferry}/conformance/go/<hash of go.mod, go.sum, main.go
# and the Go version>/conformance and prints that path on the last line of
# stdout. A second run with the same sources reuses the binary. Modules come
# from the Go module proxy through `go`. Runs are serialised by a lock.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${FERRY_CACHE:-$HOME/.cache/ferry}/conformance/go"
go="${FERRY_CONFORMANCE_GO:-go}"

hash="$( (cat "$here/go.mod" "$here/go.sum" "$here/main.go"; "$go" version) | sha256sum | cut -c1-16)"
out="$cache/build-$hash"
mkdir -p "$cache"

exec 9>"$cache/.lock"
flock 9

if [[ ! -x "$out/conformance" ]]; then
    echo "conformance/go: building $out/conformance" >&2
    mkdir -p "$out"
    (cd "$here" && GOFLAGS=-buildvcs=false "$go" build -mod=readonly -o "$out/conformance.tmp" .) >&2
    mv "$out/conformance.tmp" "$out/conformance"
else
    echo "conformance/go: reusing $out/conformance" >&2
fi
echo "$out/conformance"
