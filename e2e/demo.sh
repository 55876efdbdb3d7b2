#!/usr/bin/env bash
# `make demo`: a whole live migration on the local real node.
#
# Brings up the control plane and the node, builds and imports the images,
# then runs `ferry-e2e migrate` (e2e/src/migration.rs, the same scenario the
# e2e test and e2e/kind.sh run): it installs Ferry with Helm, starts the
# example source (3 nodes) and target clusters and the example application,
# applies the example migration (the target starts empty: the operator copies
# the schema), follows it to Ready (the phases also stream below, from
# `kubectl get cassandramigrations -w`), then cuts over with the application
# writing (shadowReads, targetPrimary, back to mirror, targetPrimary), stops
# the application, checks that every write it was told succeeded is on the
# target and that both clusters hold, cell by cell, what its acknowledged
# mixed operations must have left (e2e/src/ledger.rs), finishes the cut-over
# (done: the proxies are taken out, Complete) and prints a summary with each
# stage's time. `bash e2e/demo.sh --stop-at-ready` stops at Ready instead.
#
# The migration is left in place for you to look at:
#   export KUBECONFIG=~/.cache/ferry/run/kubeconfig PATH=~/.cache/ferry/bin:$PATH
#   kubectl -n ferry-demo get cassandramigrations
# `bash e2e/demo.sh --clean` removes it (and the example clusters);
# `FERRY_DEMO_TEARDOWN=1` makes the demo delete the migration itself and check
# that the sidecars go and the data stays.
. "$(dirname "${BASH_SOURCE[0]}")/testbed/lib.sh"
NS=${FERRY_DEMO_NAMESPACE:-ferry-demo}
KUBECTL=("$FERRY_BIN/kubectl" --kubeconfig "$FERRY_RUN/kubeconfig")

if [ "${1:-}" = --clean ]; then
  "${KUBECTL[@]}" delete cassandramigration --all -n "$NS" --wait=true --timeout=600s || true
  "${KUBECTL[@]}" delete namespace "$NS" --wait=true --timeout=300s || true
  "$FERRY_BIN/helm" --kubeconfig "$FERRY_RUN/kubeconfig" uninstall ferry -n ferry-system --wait || true
  exit 0
fi

started=$(date +%s)
bash "$FERRY_ROOT/e2e/testbed/deps.sh"
bash "$FERRY_ROOT/e2e/testbed/node.sh" packages
# The images (Rust and Java) build while up.sh builds the Go binaries: on a
# cold machine neither keeps both cores busy all the time on its own.
build=$FERRY_ROOT/e2e/images/build.sh
log "building the images in the background (logs: $FERRY_RUN/demo-build-*.log)"
bash "$build" --no-import cassandra pause redirect >"$FERRY_RUN/demo-build-java.log" 2>&1 &
java_build=$!
bash "$build" --no-import --e2e-bin operator sidecar loadgen >"$FERRY_RUN/demo-build-rust.log" 2>&1 &
rust_build=$!
bash "$FERRY_ROOT/e2e/testbed/up.sh" --no-cassandra --node
log "test bed up after $(($(date +%s) - started))s; waiting for the image builds"
wait "$java_build" || { tail -20 "$FERRY_RUN/demo-build-java.log"; die "the Cassandra image build failed"; }
wait "$rust_build" || { tail -40 "$FERRY_RUN/demo-build-rust.log"; die "the Rust build failed"; }
e2e_bin=$(bash "$build" --e2e-bin all) # imports what containerd lacks
ready_at=$(date +%s)

"${KUBECTL[@]}" get namespace "$NS" >/dev/null 2>&1 || "${KUBECTL[@]}" create namespace "$NS" >/dev/null
"${KUBECTL[@]}" -n "$NS" get cassandramigrations -w 2>/dev/null &
watcher=$!
trap 'kill $watcher 2>/dev/null || true' EXIT

args=(migrate --cluster local --namespace "$NS")
[ "${FERRY_DEMO_TEARDOWN:-0}" = 1 ] || args+=(--keep)
"$e2e_bin" "${args[@]}" "$@"

log "demo done in $(($(date +%s) - started))s ($((ready_at - started))s of it to bring up the bed and build)"
