#!/usr/bin/env bash
# Makes sure the filesystem that holds $FERRY_CACHE has room for a run.
#
#   disk.sh
#
# Why: the node's kubelet marks itself DiskPressure when its filesystem is
# nearly full (evictionHard in node.sh: 1 % free) and then schedules no pod.
# A Cassandra pod evicted by the roll then never comes back, and the run
# fails as "did not come back Ready" (CI, 2026-12-03: 2.5 GiB free on a
# 252 GiB disk, the build outputs at 70 GiB). Cargo never deletes what it
# built: every fresh clone at another path and every profile add a set.
#
# Below FERRY_MIN_FREE_GIB (default 20) free, this removes build outputs
# that only cost a rebuild: first the incremental-compilation state, then
# the dev profile's outputs altogether. Below FERRY_HARD_MIN_FREE_GIB
# (default 8) after that, it stops with what holds the space.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

min=${FERRY_MIN_FREE_GIB:-20}
hard_min=${FERRY_HARD_MIN_FREE_GIB:-8}
target=${CARGO_TARGET_DIR:-$FERRY_CACHE/target}

free_gib() { df -Pk "$FERRY_CACHE" | awk 'NR == 2 { print int($4 / 1048576) }'; }

free=$(free_gib)
if [ "$free" -ge "$min" ]; then
  log "disk: $free GiB free (at least $min wanted)"
  exit 0
fi

log "disk: only $free GiB free (at least $min wanted; a nearly full disk makes the kubelet refuse pods): removing incremental-compilation state under $target"
find "$target" -maxdepth 3 -type d -name incremental -prune -exec rm -rf {} +
free=$(free_gib)

if [ "$free" -lt "$min" ] && [ -d "$target/debug" ]; then
  log "disk: $free GiB free: removing the dev profile's build outputs ($target/debug; the next build starts cold)"
  rm -rf "$target/debug"
  free=$(free_gib)
fi

if [ "$free" -lt "$hard_min" ]; then
  log "disk: what holds the space under $FERRY_CACHE:"
  du -sh "$FERRY_CACHE"/* 2>/dev/null | sort -h >&2 || true
  die "only $free GiB free on the filesystem of $FERRY_CACHE after pruning build outputs; a run needs at least $hard_min (FERRY_HARD_MIN_FREE_GIB). Free space elsewhere, or point FERRY_CACHE at a larger disk"
fi
log "disk: $free GiB free"
