#!/usr/bin/env bash
# Brings the whole local test bed up, idempotently:
#   - a source Cassandra cluster (FERRY_SOURCE_NODES nodes, default 1, on
#     127.0.0.11..) and an independent target cluster (127.0.0.21),
#   - a Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager),
#   - with --node, a real node where pods run (node.sh: containerd, kubelet,
#     kube-scheduler, kube-proxy, CoreDNS) and the images it needs.
# A second run reuses every cache and every running process.
#
#   up.sh [--source-nodes N] [--no-k8s] [--no-cassandra] [--node] [--secure] [--older] [--fresh-if-full]
#
# --secure adds a third, single-node cluster on 127.0.0.23 with password
# authentication (cassandra/cassandra) and client TLS, for the tests of
# credentials and TLS.
# --older adds a single-node cluster of an older Cassandra on 127.0.0.24
# (FERRY_OLDER_CASSANDRA_VERSION, default 4.1.10, on a Java 11 from PyPI),
# a source for the cross-version tests (4.1 to the target's 5.0).
#
# Afterwards $FERRY_RUN/testbed.env describes the bed (sourced by tests and
# scripts): contact points, datacenters, kubeconfig.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
here=$FERRY_ROOT/e2e/testbed

source_nodes=${FERRY_SOURCE_NODES:-1}
# Migrations usually go from an old cluster to a new one: the source may run
# another Cassandra version (e.g. 4.1.10, on a Java 11 fetched from PyPI).
source_version=${FERRY_SOURCE_CASSANDRA_VERSION:-$CASSANDRA_VERSION}
want_k8s=1 want_cassandra=1 want_node=0 want_secure=0 want_older=0 fresh_if_full=0
while [ $# -gt 0 ]; do
  case $1 in
    --fresh-if-full) fresh_if_full=1; shift ;;
    --source-nodes) source_nodes=$2; shift 2 ;;
    --no-k8s) want_k8s=0; shift ;;
    --no-cassandra) want_cassandra=0; shift ;;
    --node) want_node=1; shift ;;
    --secure) want_secure=1; shift ;;
    --older) want_older=1; shift ;;
    *) die "unknown argument $1 (usage: up.sh [--source-nodes N] [--no-k8s] [--no-cassandra] [--node] [--secure] [--older] [--fresh-if-full])" ;;
  esac
done
[[ $source_nodes =~ ^[1-9]$ ]] || die "--source-nodes must be 1..9, got $source_nodes"

SOURCE_SEED=127.0.0.11
TARGET_IP=127.0.0.21
SECURE_IP=127.0.0.23
OLDER_IP=127.0.0.24
older_version=${FERRY_OLDER_CASSANDRA_VERSION:-4.1.10}

# One up.sh at a time: parallel test binaries may all ask for the bed. The
# daemons it starts close fd 9 (`9>&-`): an inherited lock would be held by a
# Cassandra JVM for its whole life and block every later up.sh.
exec 9>"$FERRY_RUN/up.lock"
flock 9

started=$(date +%s)
if [ "$want_cassandra" = 1 ]; then
  # Tests leave their keyspaces behind (a `make test` run adds about 40),
  # and they fill a node's heap (640 MB then): source3 died of OutOfMemoryError at
  # about 420 keyspaces once, and again at 165 in the middle of a run. With
  # --fresh-if-full (what `make testbed` passes, before any test runs),
  # past FERRY_BED_MAX_KEYSPACES (60) on any node the clusters' state is
  # deleted and they start empty; all they hold is test data. Never from a
  # test: a reset then would kill the nodes under the tests running beside it.
  max_keyspaces=${FERRY_BED_MAX_KEYSPACES:-60}
  most=0
  for data in "$FERRY_RUN"/cassandra/*/data; do
    [ -d "$data" ] || continue
    n=$(find "$data" -mindepth 1 -maxdepth 1 -type d | wc -l)
    [ "$n" -gt "$most" ] && most=$n
  done
  if [ "$fresh_if_full" = 1 ] && [ "$most" -gt "$max_keyspaces" ]; then
    log "a node holds $most keyspaces left by earlier runs (more than $max_keyspaces): starting the clusters afresh"
    for dir in "$FERRY_RUN"/cassandra/*/; do
      "$here/cassandra/cassandra.sh" stop "$(basename "$dir")"
    done
    rm -rf "$FERRY_RUN/cassandra"
  fi
  "$here/cassandra/cassandra.sh" fetch
  CASSANDRA_VERSION=$source_version "$here/cassandra/cassandra.sh" fetch
  # Seeds first: a node joins through them. The target is independent (its
  # own cluster name, its own seed), so the two clusters never gossip.
  CASSANDRA_VERSION=$source_version "$here/cassandra/cassandra.sh" start source1 "$SOURCE_SEED" ferry-source source-dc "$SOURCE_SEED"
  "$here/cassandra/cassandra.sh" start target1 "$TARGET_IP" ferry-target target-dc "$TARGET_IP"
fi
if [ "$want_node" = 1 ]; then
  # Every Go binary at once, CoreDNS included (k8s.sh and node.sh then find
  # them built): on a cold machine that overlaps their links and downloads.
  "$here/build-tools.sh" all coredns
fi
if [ "$want_k8s" = 1 ] || [ "$want_node" = 1 ]; then
  "$here/k8s.sh" up
fi
if [ "$want_node" = 1 ]; then
  "$here/node.sh" up
fi
if [ "$want_cassandra" = 1 ]; then
  "$here/cassandra/cassandra.sh" wait source1 "$SOURCE_SEED"
  # Further source nodes join one at a time: Cassandra refuses concurrent joins.
  for ((n = 2; n <= source_nodes; n++)); do
    CASSANDRA_VERSION=$source_version "$here/cassandra/cassandra.sh" start "source$n" "127.0.0.$((10 + n))" ferry-source source-dc "$SOURCE_SEED"
    "$here/cassandra/cassandra.sh" wait "source$n" "127.0.0.$((10 + n))"
  done
  "$here/cassandra/cassandra.sh" wait target1 "$TARGET_IP"
fi
if [ "$want_secure" = 1 ]; then
  FERRY_CASSANDRA_AUTH=1 FERRY_CASSANDRA_TLS=1 \
    "$here/cassandra/cassandra.sh" start secure1 "$SECURE_IP" ferry-secure secure-dc "$SECURE_IP"
  "$here/cassandra/cassandra.sh" wait secure1 "$SECURE_IP"
fi

if [ "$want_older" = 1 ]; then
  CASSANDRA_VERSION=$older_version "$here/cassandra/cassandra.sh" fetch
  pid_alive "$FERRY_RUN/cassandra/older1/pid" ||
    CASSANDRA_VERSION=$older_version "$here/cassandra/cassandra.sh" start older1 "$OLDER_IP" ferry-older older-dc "$OLDER_IP"
  CASSANDRA_VERSION=$older_version "$here/cassandra/cassandra.sh" wait older1 "$OLDER_IP"
  echo "$older_version" >"$FERRY_RUN/cassandra/older1/version"
fi

# Describe the bed for tests and scripts: every running source node, even
# ones an earlier `up.sh --source-nodes N` started.
contact=""
for dir in "$FERRY_RUN"/cassandra/source*/; do
  pid_alive "$dir/pid" && contact+="${contact:+,}$(cat "$dir/ip"):9042"
done
cat >"$FERRY_RUN/testbed.env" <<ENV
FERRY_SOURCE_CONTACT_POINTS=$contact
FERRY_SOURCE_DATACENTER=source-dc
FERRY_TARGET_CONTACT_POINTS=$TARGET_IP:9042
FERRY_TARGET_DATACENTER=target-dc
FERRY_KUBECONFIG=$FERRY_RUN/kubeconfig
FERRY_BIN=$FERRY_BIN
ENV
# The secure node, once some up.sh started it (later runs keep describing it).
if pid_alive "$FERRY_RUN/cassandra/secure1/pid"; then
  cat >>"$FERRY_RUN/testbed.env" <<ENV
FERRY_SECURE_CONTACT_POINTS=$SECURE_IP:9042
FERRY_SECURE_DATACENTER=secure-dc
FERRY_SECURE_CA_FILE=$FERRY_RUN/cassandra/secure1/tls/ca.pem
ENV
fi
if pid_alive "$FERRY_RUN/cassandra/older1/pid"; then
  cat >>"$FERRY_RUN/testbed.env" <<ENV
FERRY_OLDER_CONTACT_POINTS=$OLDER_IP:9042
FERRY_OLDER_DATACENTER=older-dc
FERRY_OLDER_VERSION=$(cat "$FERRY_RUN/cassandra/older1/version" 2>/dev/null || echo "$older_version")
ENV
fi
if "$here/node.sh" status; then
  echo "FERRY_NODE_NAME=$(bash "$here/node.sh" name)" >>"$FERRY_RUN/testbed.env"
fi
log "test bed up in $(($(date +%s) - started))s: source $contact, target $TARGET_IP:9042, KUBECONFIG=$FERRY_RUN/kubeconfig"
