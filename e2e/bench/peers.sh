#!/usr/bin/env bash
# Ferry beside the other dual-write proxies, in one run (issue 16's first
# table): DataStax's ZDM proxy and Azure's cassandra-proxy, built from their
# public sources, measured by proxy-bench (`--peer`) with the same driver, the
# same load, the same rounds and the same /proc accounting as Ferry.
#
#   bash e2e/bench/peers.sh ZDM_SOURCE AZURE_SOURCE [proxy-bench options...]
#
# ZDM_SOURCE   a checkout of github.com/datastax/zdm-proxy (measured: tag v2.4.2)
# AZURE_SOURCE a checkout of github.com/Azure-Samples/cassandra-proxy
#              (measured: commit f184bca, the last upstream)
#
# Neither comes from a registry: ZDM's module path has no /v2, so the Go
# module proxy refuses its v2 tags, and the Azure proxy is not published.
# Their dependencies do (the Go module proxy, Maven Central). Each is built
# once per source tree, into $FERRY_CACHE/peers/.
#
# Ferry is the binary its published image ships: the `release` profile (thin
# LTO; the Dockerfile's), static musl when this machine has the target and
# musl-gcc, with the one runtime thread the operator gives it under the
# default 500m CPU limit.
# Azure runs with its default of one event-loop thread (--threads 1) and the
# JVM's default memory; ZDM twice, with Go's default of one thread per core
# (`zdm`) and with one (`zdm-1`, GOMAXPROCS=1). Both peers wait for both
# clusters before they answer a write, so Ferry runs in `--mode sync`
# unless the options say otherwise. Default options: --mode sync
# --proxy-threads 1 --seconds 8 --rounds 3 --open-fraction 0.25
# --drain-records 0. Options given here override those, except `--peer`,
# which adds a proxy to the three.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../testbed/lib.sh"
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

if [[ $# -lt 2 ]]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
  exit 2
fi
zdm_source=$(cd "$1" && pwd)
azure_source=$(cd "$2" && pwd)
shift 2
[[ -f $zdm_source/proxy/main.go ]] || { echo "$zdm_source is not a zdm-proxy checkout (no proxy/main.go)" >&2; exit 2; }
[[ -f $azure_source/pom.xml ]] || { echo "$azure_source is not a cassandra-proxy checkout (no pom.xml)" >&2; exit 2; }
command -v go >/dev/null || { echo "peers.sh needs go on PATH (ZDM is written in Go)" >&2; exit 2; }
command -v mvn >/dev/null || { echo "peers.sh needs mvn on PATH (the Azure proxy is built with Maven)" >&2; exit 2; }
command -v java >/dev/null || { echo "peers.sh needs java on PATH" >&2; exit 2; }

# A source tree's fingerprint: its files, whatever their version control.
fingerprint() {
  (cd "$1" && find . -type f -not -path './.git/*' -not -path './target/*' -print0 \
    | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16
}

peers_cache=$FERRY_CACHE/peers
mkdir -p "$peers_cache"
exec 9>"$peers_cache/.lock"
flock 9

# ZDM: a static Go binary. Built in a copy, since -mod=mod may touch go.sum.
zdm_dir=$peers_cache/zdm-$(fingerprint "$zdm_source")
zdm_bin=$zdm_dir/zdm-proxy
if [[ ! -x $zdm_bin ]]; then
  log "building ZDM proxy from $zdm_source into $zdm_dir"
  rm -rf "$zdm_dir" && mkdir -p "$zdm_dir"
  cp -r "$zdm_source" "$zdm_dir/src"
  (cd "$zdm_dir/src" && CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false" go build -o "$zdm_bin.tmp" ./proxy)
  mv "$zdm_bin.tmp" "$zdm_bin"
fi

# Azure: a fat jar (maven-shade), tests skipped.
azure_dir=$peers_cache/azure-$(fingerprint "$azure_source")
azure_jar=$azure_dir/cassandra-proxy.jar
if [[ ! -f $azure_jar ]]; then
  log "building Azure cassandra-proxy from $azure_source into $azure_dir"
  rm -rf "$azure_dir" && mkdir -p "$azure_dir"
  cp -r "$azure_source" "$azure_dir/src"
  rm -rf "$azure_dir/src/target" # a checkout's own build, which the fingerprint leaves out
  (cd "$azure_dir/src" && mvn -q -B -DskipTests package)
  cp "$azure_dir"/src/target/*-fat.jar "$azure_jar"
fi

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$FERRY_CACHE/target}
cargo build -q --locked --profile image -p ferry-sidecar --bin proxy-bench
musl=x86_64-unknown-linux-musl
if [[ $'\n'$(rustup target list --installed 2>/dev/null)$'\n' == *$'\n'"$musl"$'\n'* ]] &&
  command -v musl-gcc >/dev/null; then
  CC_x86_64_unknown_linux_musl=musl-gcc \
    cargo build -q --locked --release --target "$musl" -p ferry-sidecar --bin ferry-sidecar
  ferry_bin=$CARGO_TARGET_DIR/$musl/release/ferry-sidecar
else
  log "WARNING: no $musl target or no musl-gcc here: measuring a glibc release build; the published image's is musl"
  cargo build -q --locked --release -p ferry-sidecar --bin ferry-sidecar
  ferry_bin=$CARGO_TARGET_DIR/release/ferry-sidecar
fi
log "Ferry: $ferry_bin"
bash e2e/testbed/up.sh --source-nodes 3 --no-k8s >/dev/null

# ZDM: origin = the source, one node (host assignment off, so that it talks
# to the node the direct path talks to), reads from the origin only, no
# auth on the bed's clusters (ZDM wants a user name all the same).
zdm="zdm=env ZDM_PROXY_LISTEN_ADDRESS={ip} ZDM_PROXY_LISTEN_PORT={port}"
zdm+=" ZDM_ORIGIN_CONTACT_POINTS={source_ip} ZDM_ORIGIN_PORT={source_port}"
zdm+=" ZDM_TARGET_CONTACT_POINTS={target_ip} ZDM_TARGET_PORT={target_port}"
zdm+=" ZDM_ORIGIN_USERNAME=cassandra ZDM_ORIGIN_PASSWORD=cassandra"
zdm+=" ZDM_TARGET_USERNAME=cassandra ZDM_TARGET_PASSWORD=cassandra"
zdm+=" ZDM_ORIGIN_ENABLE_HOST_ASSIGNMENT=false ZDM_TARGET_ENABLE_HOST_ASSIGNMENT=false"
zdm+=" ZDM_PRIMARY_CLUSTER=ORIGIN ZDM_READ_MODE=PRIMARY_ONLY"
zdm+=" ZDM_METRICS_ADDRESS={ip} ZDM_METRICS_PORT={admin_port} ZDM_LOG_LEVEL=WARN"
zdm_one="zdm-1=${zdm#zdm=} GOMAXPROCS=1 '$zdm_bin'"
zdm+=" '$zdm_bin'"
# Azure: plain connections to both (it defaults to TLS), its metrics off
# Ferry's admin port (28000, its default too). It binds 0.0.0.0.
azure="azure=java -jar '$azure_jar' {source_ip} {target_ip}"
azure+=" --source-port {source_port} --target-port {target_port} --proxy-port {port}"
azure+=" --disable-source-tls true --disable-target-tls true --metrics-port {admin_port}"

"$CARGO_TARGET_DIR/image/proxy-bench" \
  --proxy-bin "$ferry_bin" --mode sync --proxy-threads 1 --seconds 8 --rounds 3 \
  --open-fraction 0.25 --drain-records 0 \
  --peer "$zdm" --peer "$zdm_one" --peer "$azure" "$@"
