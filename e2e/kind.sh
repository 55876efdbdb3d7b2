#!/usr/bin/env bash
# The end-to-end migration on kind: one control plane and three workers
# (e2e/kind/cluster.yaml), Ferry's chart installed with helm, the example
# source (3 pods over 3 nodes) and target, the example application writing,
# the migration to Ready and on through the cut-over, every acknowledged
# write checked on the target, then the migration deleted and the sidecars
# gone (ferry_e2e::migration::Outcome::problems, e2e/src/migration.rs).
#
#   e2e/kind.sh [--keep-cluster] [ferry-e2e migrate flags...]
#   e2e/kind.sh --cluster-only  make (or reuse) the cluster, load the images,
#                               print the kubeconfig's path; no scenario
#   e2e/kind.sh --delete        delete the kind cluster
#
# Two ways to get kind's parts:
# - this machine (the default): no registry is reachable, so everything is
#   built from packages (e2e/kind/setup.sh): Ferry's own Docker engine
#   (e2e/kind/engine.sh), a node image built by e2e/kind/node-image.sh, and
#   Ferry's images as the OCI archives e2e/images/build.sh makes, loaded
#   with `kind load image-archive`;
# - FERRY_KIND_PUBLISHED=1 (GitHub Actions, .github/workflows/e2e-kind.yml):
#   the machine's Docker, kind's published node image, images built from
#   the Dockerfile.
# On this machine the cluster is deleted at the end unless --keep-cluster is
# given; the hosted workflow keeps it for its failure report.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${FERRY_KIND_CLUSTER:-ferry}
keep_cluster=0 cluster_only=0
args=()
for a in "$@"; do
  case $a in
    --keep-cluster) keep_cluster=1 ;;
    --cluster-only) cluster_only=1 keep_cluster=1 ;;
    *) args+=("$a") ;;
  esac
done

if [ "${FERRY_KIND_PUBLISHED:-0}" = 1 ]; then
  export FERRY_E2E_IMAGE_PREFIX=${FERRY_E2E_IMAGE_PREFIX:-ghcr.io/ferry-dev}
  export FERRY_E2E_IMAGE_TAG=${FERRY_E2E_IMAGE_TAG:-e2e}
  CASSANDRA_IMAGE=${FERRY_E2E_CASSANDRA_IMAGE:-cassandra:5.0}
  if [ "${args[0]:-}" = --delete ]; then exec kind delete cluster --name "$CLUSTER"; fi
  for tool in docker kind kubectl helm cargo; do
    command -v "$tool" >/dev/null || { echo "kind.sh: $tool is required" >&2; exit 1; }
  done
  kind get clusters 2>/dev/null | grep -x "$CLUSTER" >/dev/null ||
    kind create cluster --name "$CLUSTER" --config e2e/kind/cluster.yaml --wait 180s
  export KUBECONFIG=${KUBECONFIG:-$HOME/.kube/config}
  kind export kubeconfig --name "$CLUSTER"
  for image in ferry-operator ferry-sidecar ferry-loadgen ferry-redirect; do
    ref=$FERRY_E2E_IMAGE_PREFIX/$image:$FERRY_E2E_IMAGE_TAG
    docker build --target "$image" -t "$ref" .
    kind load docker-image --name "$CLUSTER" "$ref"
  done
  docker image inspect "$CASSANDRA_IMAGE" >/dev/null 2>&1 || docker pull "$CASSANDRA_IMAGE"
  kind load docker-image --name "$CLUSTER" "$CASSANDRA_IMAGE"
  exec cargo run --release --locked -p ferry-e2e --bin ferry-e2e -- \
    migrate --cluster kubeconfig --namespace ferry-e2e "${args[@]}"
fi

. e2e/testbed/lib.sh
KIND_RUN=$FERRY_RUN/kind
mkdir -p "$KIND_RUN"
export KUBECONFIG=$KIND_RUN/kubeconfig
export PATH=$FERRY_BIN:$PATH
NETWORK_SUBNET=${FERRY_KIND_SUBNET:-172.30.0.0/24}

delete_cluster() {
  log "deleting the kind cluster $CLUSTER"
  kind delete cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG" >/dev/null 2>&1 || true
}

if [ "${args[0]:-}" = --delete ]; then
  eval "$(bash e2e/kind/engine.sh env)"
  bash e2e/kind/engine.sh up
  delete_cluster
  exit 0
fi
bash e2e/kind/setup.sh
eval "$(bash e2e/kind/engine.sh env)"
bash e2e/kind/engine.sh up
started=$(date +%s)
bash e2e/kind/node-image.sh
NODE_IMAGE=${FERRY_KIND_NODE_IMAGE:-ferry.dev/kind-node:v$K8S_VERSION}

# kind's docker network, made here with a fixed /24 (the node image routes
# pods by the nodes' last octet) and a bridge name of our own.
if ! docker network inspect kind >/dev/null 2>&1; then
  docker network create --driver bridge --subnet "$NETWORK_SUBNET" \
    -o com.docker.network.bridge.name=ferry-kind kind >/dev/null
fi
have_subnet=$(docker network inspect kind --format '{{range .IPAM.Config}}{{.Subnet}}{{end}}')
[[ $have_subnet == */24 ]] || die "docker network kind has subnet $have_subnet; the node image needs a /24 (docker network rm kind)"

# A cluster left by an earlier run (--keep-cluster) is reused only if every
# node runs the current node image; otherwise it is made again.
if kind get clusters 2>/dev/null | grep -x "$CLUSTER" >/dev/null; then
  want=$(docker image inspect --format '{{.Id}}' "$NODE_IMAGE")
  for node in $(kind get nodes --name "$CLUSTER"); do
    if [ "$(docker inspect --format '{{.Image}} {{.State.Running}}' "$node")" != "$want true" ]; then
      log "the kind node $node is stopped or runs an older node image: making the cluster again"
      delete_cluster
      break
    fi
  done
fi
if ! kind get clusters 2>/dev/null | grep -x "$CLUSTER" >/dev/null; then
  log "creating the kind cluster $CLUSTER (1 control plane, 3 workers) from $NODE_IMAGE"
  kind create cluster --name "$CLUSTER" --image "$NODE_IMAGE" --config e2e/kind/cluster.yaml \
    --kubeconfig "$KUBECONFIG" --wait 300s
fi
kind export kubeconfig --name "$CLUSTER" --kubeconfig "$KUBECONFIG" >/dev/null
[ "$keep_cluster" = 1 ] || trap delete_cluster EXIT
cluster_ready=$(date +%s)

# Ferry's images and Cassandra's, as build.sh makes them for the local node.
e2e_bin=$(bash e2e/images/build.sh --no-import --e2e-bin all | tail -1)
for name in cassandra operator sidecar loadgen redirect; do
  archive=$(ls -t "$FERRY_CACHE/images/$name"-*.tar | head -1)
  log "loading $(basename "$archive") into the kind nodes"
  kind load image-archive --name "$CLUSTER" "$archive"
done
images_loaded=$(date +%s)
if [ "$cluster_only" = 1 ]; then
  log "kind cluster $CLUSTER ready with Ferry's images after $((images_loaded - started)) s"
  echo "$KUBECONFIG"
  exit 0
fi

export FERRY_E2E_IMAGE_PREFIX=${FERRY_IMAGE_REPO:-ferry.dev}
export FERRY_E2E_IMAGE_TAG=${FERRY_IMAGE_TAG:-dev}
export FERRY_E2E_CASSANDRA_IMAGE=$FERRY_E2E_IMAGE_PREFIX/cassandra:$FERRY_E2E_IMAGE_TAG
set +e
"$e2e_bin" migrate --cluster kubeconfig --namespace ferry-e2e --fast-cassandra "${args[@]}"
rc=$?
set -e
log "kind-e2e: cluster ready after $((cluster_ready - started)) s, images loaded after $((images_loaded - started)) s, done after $(($(date +%s) - started)) s (exit $rc)"
exit $rc
