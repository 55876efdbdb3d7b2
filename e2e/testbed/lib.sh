# shellcheck shell=bash
# Shared settings for the Ferry test-bed scripts. Sourced, never run.
#
# Everything the test bed downloads or builds lives under $FERRY_CACHE, which
# is outside the git tree by default so that a fresh clone on the same machine
# (which is what CI is) reuses it. Runtime state (data dirs, logs, pids,
# certificates) lives under $FERRY_RUN.

set -euo pipefail

FERRY_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export FERRY_ROOT
export FERRY_CACHE=${FERRY_CACHE:-$HOME/.cache/ferry}
export FERRY_RUN=${FERRY_RUN:-$FERRY_CACHE/run}
export FERRY_BIN=$FERRY_CACHE/bin

# Pinned versions. The Go modules under e2e/testbed/{k8s,etcd,helm} lock the
# exact dependency graph; these strings only stamp the binaries' --version.
export K8S_VERSION=1.36.3
export ETCD_VERSION=3.6.16
export HELM_VERSION=3.21.4
export CASSANDRA_VERSION=${CASSANDRA_VERSION:-5.0.9}

export GOTOOLCHAIN=local
export GOFLAGS=-mod=mod

mkdir -p "$FERRY_CACHE" "$FERRY_RUN" "$FERRY_BIN"

log() { printf '[testbed %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# wait_for DESCRIPTION SECONDS COMMAND...: polls COMMAND once a second.
wait_for() {
  local what=$1 secs=$2; shift 2
  local i
  for ((i = 0; i < secs; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  die "timed out after ${secs}s waiting for $what"
}

# tcp_open HOST PORT: true when something accepts connections there.
tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# pid_alive FILE: true when the pid in FILE is a running process.
pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
