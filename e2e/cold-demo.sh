#!/usr/bin/env bash
# `make demo` as on a fresh machine: every cache the project fills (Go module
# and build caches, the crates.io registry, the Maven repository, the test
# bed's binaries, images and Rust target directory) is pointed at an empty
# DIR, so everything is downloaded and built again. The machine's Debian
# packages and Rust toolchain are used as they are. Stop the usual test bed
# first (`bash e2e/testbed/down.sh`): both would use the same ports.
#
#   bash e2e/cold-demo.sh DIR    (DIR must not exist; `make demo`'s exit status)
set -euo pipefail
dir=${1:?usage: $0 DIR (an empty or new folder for the caches)}
[ ! -e "$dir" ] || [ -z "$(ls -A "$dir")" ] || { echo "$dir is not empty" >&2; exit 2; }
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
export FERRY_CACHE=$dir/ferry GOCACHE=$dir/go-build GOMODCACHE=$dir/gomod \
  CARGO_HOME=$dir/cargo MAVEN_OPTS="-Dmaven.repo.local=$dir/m2"
unset CARGO_TARGET_DIR
cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$(date +%s)
rc=0
make demo || rc=$?
echo "cold make demo: exit $rc after $(($(date +%s) - started))s"
echo "afterwards: FERRY_CACHE=$dir/ferry bash e2e/testbed/down.sh; then umount anything under $dir and delete it"
exit "$rc"
