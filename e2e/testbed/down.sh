#!/usr/bin/env bash
# Stops the whole local test bed: every Cassandra node and the Kubernetes
# control plane. Data is kept for the next up.sh unless --purge is given.
#
#   down.sh [--purge]
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
here=$FERRY_ROOT/e2e/testbed

purge=0
[ "${1:-}" = --purge ] && purge=1

for dir in "$FERRY_RUN"/cassandra/*/; do
  [ -d "$dir" ] || continue
  "$here/cassandra/cassandra.sh" stop "$(basename "$dir")"
done
# The node first: its kubelet needs the API server to stop its pods cleanly.
if [ -d "$FERRY_RUN/node" ]; then
  if [ "$purge" = 1 ]; then "$here/node.sh" purge; else "$here/node.sh" down; fi
fi
if [ "$purge" = 1 ]; then
  "$here/k8s.sh" purge
  rm -rf "$FERRY_RUN/cassandra" "$FERRY_RUN/testbed.env"
  log "test bed stopped and its state deleted (caches kept in $FERRY_CACHE)"
else
  "$here/k8s.sh" down
  log "test bed stopped (state kept; down.sh --purge deletes it)"
fi
