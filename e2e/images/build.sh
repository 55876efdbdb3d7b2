#!/usr/bin/env bash
# Builds Ferry's container images as OCI archives, without Docker, and imports
# them into the local node's containerd (namespace k8s.io) when it runs.
#
#   build.sh [--no-import] [pause|cassandra|operator|sidecar|all]...
#
# Images (tag $FERRY_IMAGE_TAG, default dev):
#   ferry.dev/pause       the pod sandbox: a static C binary that sleeps
#   ferry.dev/cassandra   Cassandra $CASSANDRA_VERSION: a jlink'ed Java 17 from
#                         Debian's JDK, the Maven-resolved jars, busybox
#   ferry.dev/ferry-operator, ferry.dev/ferry-sidecar
#                         static musl binaries on an empty root, uid 65532
#
# Archives are cached in $FERRY_CACHE/images/NAME-KEY.tar, KEY being a hash
# of everything that goes into the image; a rebuild with the same inputs is a
# no-op, and so is the import of an image containerd already has.
. "$(dirname "${BASH_SOURCE[0]}")/../testbed/lib.sh"
images_dir=$FERRY_ROOT/e2e/images
. "$images_dir/oci.sh"

OUT=$FERRY_CACHE/images
TAG=${FERRY_IMAGE_TAG:-dev}
REPO=${FERRY_IMAGE_REPO:-ferry.dev}
CTR_SOCK=$FERRY_RUN/node/containerd/containerd.sock
RUST_TARGET=x86_64-unknown-linux-musl
JDK=${FERRY_IMAGE_JDK:-/usr/lib/jvm/java-17-openjdk-amd64}
mkdir -p "$OUT"

# hash_inputs FILE_OR_DIR...: one hash over the contents of every file given
# (directories recursively, in name order) plus this script and oci.sh.
hash_inputs() {
  { find "$@" "$images_dir/build.sh" "$images_dir/oci.sh" -type f -print0 | LC_ALL=C sort -z |
    xargs -0 sha256sum; echo "$TAG $REPO"; } | sha256sum | cut -c1-16
}

# staging NAME: a fresh folder for one layer's files (mode 755: it becomes /).
staging() {
  local d
  d=$(mktemp -d "$OUT/.stage-$1.XXXXXX")
  chmod 755 "$d"
  echo "$d"
}

# base_files ROOT UID NAME: /etc/passwd, /etc/group, /tmp for a minimal root.
base_files() {
  local root=$1 uid=$2 name=$3
  mkdir -p "$root/etc" "$root/tmp"
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\n%s:x:%s:%s:%s:/home/%s:/sbin/nologin\n' \
    "$name" "$uid" "$uid" "$name" "$name" >"$root/etc/passwd"
  printf 'root:x:0:\n%s:x:%s:\n' "$name" "$uid" >"$root/etc/group"
  mkdir -p "$root/home/$name"
  chown "$uid:$uid" "$root/home/$name"
}

# --- pause -------------------------------------------------------------------
build_pause() {
  local key archive root
  key=$(hash_inputs "$images_dir/pause")
  archive=$OUT/pause-$key.tar
  if [ ! -s "$archive" ]; then
    log "building image $REPO/pause:$TAG"
    root=$(staging pause)
    gcc -static -Os -s -o "$root/pause" "$images_dir/pause/pause.c"
    oci_image "$archive" "$REPO/pause:$TAG" \
      '{"Entrypoint":["/pause"],"User":"65535:65535","Labels":{"org.opencontainers.image.title":"ferry pause"}}' \
      "$root"
    rm -rf "$root"
  fi
  echo "$archive"
}

# --- cassandra ---------------------------------------------------------------
build_cassandra() {
  :
}

# --- operator and sidecar ----------------------------------------------------
build_rust() {
  :
}

# import ARCHIVE REF: imports into containerd unless it already has that digest.
import() {
  local archive=$1 ref=$2 want have
  [ -S "$CTR_SOCK" ] || { log "no containerd at $CTR_SOCK: $ref not imported"; return 0; }
  want=$(cat "$archive.digest")
  have=$(ctr --address "$CTR_SOCK" -n k8s.io images ls "name==$ref" 2>/dev/null | awk 'NR > 1 {print $3}')
  [ "$have" = "$want" ] && return 0
  log "importing $ref ($(du -h "$archive" | cut -f1)) into containerd"
  ctr --address "$CTR_SOCK" -n k8s.io images import --all-platforms "$archive" >/dev/null
}

do_import=1
names=()
for a in "$@"; do
  case $a in
    --no-import) do_import=0 ;;
    all) names+=(pause cassandra operator sidecar) ;;
    pause | cassandra | operator | sidecar) names+=("$a") ;;
    *) die "usage: $0 [--no-import] [pause|cassandra|operator|sidecar|all]..." ;;
  esac
done
[ ${#names[@]} -eq 0 ] && names=(pause cassandra operator sidecar)

for name in "${names[@]}"; do
  case $name in
    pause) archive=$(build_pause); ref=$REPO/pause:$TAG ;;
    cassandra) archive=$(build_cassandra); ref=$REPO/cassandra:$TAG ;;
    operator) archive=$(build_rust operator); ref=$REPO/ferry-operator:$TAG ;;
    sidecar) archive=$(build_rust sidecar); ref=$REPO/ferry-sidecar:$TAG ;;
  esac
  [ "$do_import" = 1 ] && import "$archive" "$ref"
  log "image $ref: $archive ($(du -h "$archive" | cut -f1))"
done
