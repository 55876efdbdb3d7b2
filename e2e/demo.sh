#!/usr/bin/env bash
# `make demo`: a whole live migration on the local real node.
#
# Brings up the control plane and the node, builds and imports the images,
# installs Ferry with Helm, starts the example source (3 nodes) and target
# clusters and the example application, applies the example migration and
# follows `kubectl get cassandramigrations -w` until Ready, then checks that
# every write the application was told succeeded is on the target and prints
# a summary. Leaves everything running; `bash e2e/demo.sh --clean` removes it.
. "$(dirname "${BASH_SOURCE[0]}")/testbed/lib.sh"
NS=${FERRY_DEMO_NAMESPACE:-ferry-demo}
TIMEOUT=${FERRY_DEMO_TIMEOUT:-1500}
ex=$FERRY_ROOT/manifests/examples
KUBECTL=("$FERRY_BIN/kubectl" --kubeconfig "$FERRY_RUN/kubeconfig")
k() { "${KUBECTL[@]}" "$@"; }

if [ "${1:-}" = --clean ]; then
  k delete cassandramigration --all -n "$NS" --wait=true --timeout=300s || true
  k delete namespace "$NS" --wait=false || true
  "$FERRY_BIN/helm" --kubeconfig "$FERRY_RUN/kubeconfig" uninstall ferry -n ferry-system || true
  exit 0
fi

started=$(date +%s)
bash "$FERRY_ROOT/e2e/testbed/up.sh" --no-cassandra --node
bash "$FERRY_ROOT/e2e/images/build.sh"

log "installing Ferry with Helm"
"$FERRY_BIN/helm" --kubeconfig "$FERRY_RUN/kubeconfig" upgrade --install ferry "$FERRY_ROOT/charts/ferry" \
  --namespace ferry-system --create-namespace --wait --timeout 5m \
  --set image.registry= --set image.repository=ferry.dev/ferry-operator --set image.tag=dev --set image.pullPolicy=Never \
  --set sidecarImage.registry= --set sidecarImage.repository=ferry.dev/ferry-sidecar --set sidecarImage.tag=dev \
  --set redirectImage.reference=ferry.dev/ferry-redirect:dev

# The examples name public images; here they run from the local archives.
local_images() {
  sed -e 's#image: cassandra:5.0#image: ferry.dev/cassandra:dev\n          imagePullPolicy: Never#' \
    -e 's#image: ghcr.io/ferry-dev/ferry-loadgen:0.1.0#image: ferry.dev/ferry-loadgen:dev\n          imagePullPolicy: Never#' \
    -e 's#- {name: HEAP_NEWSIZE, value: 128M}#- {name: HEAP_NEWSIZE, value: 128M}\n            - {name: JVM_EXTRA_OPTS, value: "-Dcassandra.skip_wait_for_gossip_to_settle=0 -Dcassandra.ring_delay_ms=2000"}#' "$1"
}

k get namespace "$NS" >/dev/null 2>&1 || k create namespace "$NS"
log "starting the source (3 nodes) and target clusters"
local_images "$ex/source-cluster.yaml" | k -n "$NS" apply -f -
local_images "$ex/target-cluster.yaml" | k -n "$NS" apply -f -
k -n "$NS" rollout status statefulset/cassandra --timeout=900s
k -n "$NS" rollout status statefulset/cassandra-target --timeout=600s

log "creating the schema on the target, then starting the application"
k -n "$NS" delete pod target-schema --ignore-not-found >/dev/null
k -n "$NS" run target-schema --restart=Never --image=ferry.dev/ferry-loadgen:dev --image-pull-policy=Never -- \
  --contact-points cassandra-target-0.cassandra-target:9042 --keyspace ferry_demo \
  --replication "{'class': 'NetworkTopologyStrategy', 'dc1': 1}" --schema-only
k -n "$NS" wait --for=jsonpath='{.status.phase}'=Succeeded pod/target-schema --timeout=300s
local_images "$ex/load-app.yaml" | k -n "$NS" apply -f -
k -n "$NS" rollout status deployment/load-app --timeout=300s
sleep 20

log "applying the migration"
k -n "$NS" apply -f "$ex/cassandramigration.yaml"
k -n "$NS" get cassandramigrations -w &
watcher=$!
deadline=$(($(date +%s) + TIMEOUT))
phase=""
while [ "$(date +%s)" -lt "$deadline" ]; do
  phase=$(k -n "$NS" get cassandramigration demo -o jsonpath='{.status.phase}' 2>/dev/null || true)
  [ "$phase" = Ready ] || [ "$phase" = Failed ] && break
  sleep 5
done
kill "$watcher" 2>/dev/null || true
[ "$phase" = Ready ] || die "the migration ended in '$phase'; see kubectl -n $NS describe cassandramigration demo"

log "stopping the application and checking its acknowledged writes on the target"
k -n "$NS" scale deployment/load-app --replicas=0
k -n "$NS" wait --for=delete pod -l app=load-app --timeout=120s || true
final=$(k -n "$NS" logs deployment/load-app --tail=1 2>/dev/null || true)
[ -n "$final" ] || final=$(k -n "$NS" logs -l app=load-app --tail=1 2>/dev/null || true)
issued=$(jq -r '.issued' <<<"$final")
failed=$(jq -r '.failedIds | join(",")' <<<"$final")
k -n "$NS" delete pod verify --ignore-not-found >/dev/null
k -n "$NS" run verify --restart=Never --image=ferry.dev/ferry-loadgen:dev --image-pull-policy=Never -- \
  --contact-points cassandra-target-0.cassandra-target:9042 --keyspace ferry_demo \
  --replication "{'class': 'NetworkTopologyStrategy', 'dc1': 1}" --consistency one \
  --verify-upto "$issued" ${failed:+--skip-ids "$failed"}
k -n "$NS" wait --for=jsonpath='{.status.phase}'=Succeeded pod/verify --timeout=300s ||
  die "acknowledged writes are missing on the target: $(k -n "$NS" logs verify | tail -1)"

status=$(k -n "$NS" get cassandramigration demo -o json)
echo
echo "== Ferry demo: migration 'demo' is Ready in $(($(date +%s) - started))s =="
echo "application: $(jq -c '{acked, writeFailures, readFailures, readMissing}' <<<"$final")"
echo "on the target: $(k -n "$NS" logs verify | tail -1)"
jq -r '"backfill: \(.status.backfill.rowsCopied) rows, \(.status.backfill.bytesCopied) bytes, \(.status.backfill.rowsPerSecond) rows/s",
       "validation: \(.status.validation.rowsCompared) rows compared, \(.status.validation.unresolved) unresolved differences",
       "phases:", (.status.phaseHistory[] | "  \(.startedAt)  \(.phase)")' <<<"$status"
