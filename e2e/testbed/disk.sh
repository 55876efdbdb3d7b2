#!/usr/bin/env bash
# Makes sure the filesystem that holds $FERRY_CACHE has room for a run.
#
#   disk.sh
#
# Why: the node's kubelet marks itself DiskPressure when its filesystem is
# nearly full (evictionHard in node.sh, 1 % free until 2026-12-03, 512Mi
# now) and then schedules no pod.
# A Cassandra pod evicted by the roll then never comes back, and the run
# fails as "did not come back Ready" (CI, 2026-12-03: 2.5 GiB free on a
# 252 GiB disk, the build outputs at 70 GiB). Cargo never deletes what it
# built: every fresh clone at another path and every profile add a set.
#
# Below FERRY_MIN_FREE_GIB (default 20) free, this removes build outputs
# that only cost a rebuild: first the incremental-compilation state, then
# the dev profile's outputs altogether. Below FERRY_HARD_MIN_FREE_GIB
# (default 8) after that, it stops with what holds the space. It measures
# the filesystem of the build outputs, which by default is also that of the
# node's state ($FERRY_RUN, under $FERRY_CACHE). It never removes outputs
# while a cargo build holds their lock.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

min=${FERRY_MIN_FREE_GIB:-20}
hard_min=${FERRY_HARD_MIN_FREE_GIB:-8}
target=${CARGO_TARGET_DIR:-$FERRY_CACHE/target}

# The filesystem of the build outputs (their nearest existing directory).
measured=$target
while [ ! -d "$measured" ]; do measured=$(dirname "$measured"); done
free_gib() { df -Pk "$measured" | awk 'NR == 2 { print int($4 / 1048576) }'; }

# remove DIR PROFILE_DIR: removes DIR, part of the outputs of PROFILE_DIR,
# unless a cargo build holds that profile's lock.
remove() {
  local dir=$1 lock=$2/.cargo-lock
  [ -d "$dir" ] || return 0
  if [ -e "$lock" ] && ! flock -n "$lock" true; then
    log "disk: a cargo build is using $dir; left alone"
    return 0
  fi
  rm -rf "$dir"
}

free=$(free_gib)
if [ "$free" -ge "$min" ]; then
  log "disk: $free GiB free (at least $min wanted)"
  exit 0
fi

log "disk: only $free GiB free (at least $min wanted; a nearly full disk makes the kubelet refuse pods): removing incremental-compilation state under $target"
if [ -d "$target" ]; then
  while IFS= read -r dir; do
    remove "$dir" "$(dirname "$dir")"
  done < <(find "$target" -maxdepth 3 -type d -name incremental -prune)
fi
free=$(free_gib)

if [ "$free" -lt "$min" ] && [ -d "$target/debug" ]; then
  log "disk: $free GiB free: removing the dev profile's build outputs ($target/debug; the next build starts cold)"
  remove "$target/debug" "$target/debug"
  free=$(free_gib)
fi

if [ "$free" -lt "$hard_min" ]; then
  log "disk: what holds the space under $FERRY_CACHE:"
  du -sh "$FERRY_CACHE"/* 2>/dev/null | sort -h >&2 || true
  die "only $free GiB free on the filesystem of $measured after pruning build outputs; a run needs at least $hard_min (FERRY_HARD_MIN_FREE_GIB). Free space elsewhere, or point FERRY_CACHE at a larger disk"
fi
log "disk: $free GiB free"
