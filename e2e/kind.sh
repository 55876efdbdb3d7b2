#!/usr/bin/env bash
# The end-to-end migration on kind, where a Docker engine exists (a laptop,
# GitHub Actions: .github/workflows/e2e-kind.yml). The development machines
# have no Docker engine, so this script does not run there; the same Rust
# scenario runs on the local real node instead (`make demo`, `make e2e`).
#
#   e2e/kind.sh            create (or reuse) the kind cluster "ferry", build and
#                          load the images, run the migration, check it
#   e2e/kind.sh --delete   delete the kind cluster
#
# Needs: docker, kind, kubectl, helm, cargo. What it checks is
# ferry_e2e::migration::Outcome::problems (e2e/src/migration.rs): phases
# Pending → Mirroring → Backfilling → Validating → Ready, at most one source
# pod down at a time, no failed request at QUORUM, every acknowledged write on
# the target, zero unresolved differences, sidecars gone and data kept after
# the migration is deleted.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${FERRY_KIND_CLUSTER:-ferry}
export FERRY_E2E_IMAGE_PREFIX=${FERRY_E2E_IMAGE_PREFIX:-ghcr.io/ferry-dev}
export FERRY_E2E_IMAGE_TAG=${FERRY_E2E_IMAGE_TAG:-e2e}
CASSANDRA_IMAGE=${FERRY_E2E_CASSANDRA_IMAGE:-cassandra:5.0}

if [ "${1:-}" = --delete ]; then
  exec kind delete cluster --name "$CLUSTER"
fi
for tool in docker kind kubectl helm cargo; do
  command -v "$tool" >/dev/null || { echo "kind.sh: $tool is required" >&2; exit 1; }
done

if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --wait 180s
fi
export KUBECONFIG=${KUBECONFIG:-$HOME/.kube/config}
kind export kubeconfig --name "$CLUSTER"

for image in ferry-operator ferry-sidecar ferry-loadgen ferry-redirect; do
  ref=$FERRY_E2E_IMAGE_PREFIX/$image:$FERRY_E2E_IMAGE_TAG
  docker build --target "$image" -t "$ref" .
  kind load docker-image --name "$CLUSTER" "$ref"
done
# The examples' Cassandra image: pulled once on the host, then loaded, so
# the three source pods and the target do not each pull it.
docker image inspect "$CASSANDRA_IMAGE" >/dev/null 2>&1 || docker pull "$CASSANDRA_IMAGE"
kind load docker-image --name "$CLUSTER" "$CASSANDRA_IMAGE"

cargo run --release --locked -p ferry-e2e --bin ferry-e2e -- \
  migrate --cluster kubeconfig --namespace ferry-e2e "$@"
