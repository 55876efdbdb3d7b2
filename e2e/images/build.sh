#!/usr/bin/env bash
# Builds Ferry's container images as OCI archives, without Docker, and imports
# them into the local node's containerd (namespace k8s.io) when it runs.
#
#   build.sh [--no-import] [--e2e-bin] [pause|cassandra|cassandra-4.1|cassandra-3.11|operator|sidecar|loadgen|redirect|all]...
#   build.sh --cached    import every cached archive containerd lacks; no build
#
# --e2e-bin also prints the path of the ferry-e2e driver, built with the
# images' binaries. Several build.sh may run at once (a lock per image).
#
# Images (tag $FERRY_IMAGE_TAG, default dev):
#   ferry.dev/pause       the pod sandbox: a static C binary that sleeps
#   ferry.dev/cassandra   Cassandra $CASSANDRA_VERSION: a jlink'ed Java 17 from
#                         Debian's JDK, the Maven-resolved jars, busybox
#   ferry.dev/cassandra:4.1-$TAG  (name cassandra-4.1) Cassandra
#                         $FERRY_OLDER_CASSANDRA_VERSION (4.1.10) on the Java 11
#                         runtime the test bed takes from PyPI, for the
#                         cross-version migration; not in `all`
#   ferry.dev/cassandra:3.11-$TAG (name cassandra-3.11) Cassandra
#                         $FERRY_OLDEST_CASSANDRA_VERSION (3.11.19) on Debian's
#                         OpenJDK 8 (3.11 runs on 8 only), its root of Debian
#                         packages from the `sid` suite (the only suite left
#                         with OpenJDK 8): libc6 and the JRE's few libraries;
#                         not in `all`
#   ferry.dev/ferry-operator, ferry.dev/ferry-sidecar, ferry.dev/ferry-loadgen
#                         static musl binaries on an empty root, uid 65532
#   ferry.dev/ferry-redirect  busybox sh + Debian's iptables, for the proxy's
#                         iptables redirect init container
#
# Archives are cached in $FERRY_CACHE/images/NAME-KEY.tar, KEY being a hash
# of everything that goes into the image; a rebuild with the same inputs is a
# no-op, and so is the import of an image containerd already has.
. "$(dirname "${BASH_SOURCE[0]}")/../testbed/lib.sh"
images_dir=$FERRY_ROOT/e2e/images
. "$images_dir/oci.sh"
shopt -s inherit_errexit # a failing step inside $(build_...) stops the build

OUT=$FERRY_CACHE/images
TAG=${FERRY_IMAGE_TAG:-dev}
REPO=${FERRY_IMAGE_REPO:-ferry.dev}
CTR_SOCK=$FERRY_RUN/node/containerd/containerd.sock
RUST_TARGET=x86_64-unknown-linux-musl
JDK=${FERRY_IMAGE_JDK:-/usr/lib/jvm/java-17-openjdk-amd64}
mkdir -p "$OUT"

# hash_inputs FILE_OR_DIR...: one hash over the contents of every file given
# (directories recursively, in name order) plus this script and oci.sh.
# Paths are made relative to the clone and the cache, so every clone on a
# machine shares the same archives.
hash_inputs() {
  { find "$@" "$images_dir/build.sh" "$images_dir/oci.sh" -type f -print0 | LC_ALL=C sort -z |
    xargs -0 sha256sum | sed -e "s#  $FERRY_ROOT/#  ./#" -e "s#  $FERRY_CACHE/#  cache/#" | LC_ALL=C sort -k2
    echo "$TAG $REPO"; } | sha256sum | cut -c1-16
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
# A Java 17 runtime cut by jlink from Debian's openjdk-17-jdk-headless: the
# Java SE modules plus the JDK ones Cassandra touches (Unsafe, management,
# attach, JFR, crypto). Cached per JDK build.
jre() {
  local key dir
  key=$(sha256sum "$JDK/release" "$JDK/lib/modules" | sha256sum | cut -c1-12)
  dir=$OUT/jre17-$key
  if [ ! -x "$dir/bin/java" ]; then
    [ -x "$JDK/bin/jlink" ] || die "no jlink in $JDK: install openjdk-17-jdk-headless (make deps) or set FERRY_IMAGE_JDK"
    log "jlink: Java 17 runtime from $JDK"
    rm -rf "$dir" "$dir.tmp"
    "$JDK/bin/jlink" --output "$dir.tmp" --strip-debug --no-man-pages --no-header-files --compress=2 \
      --add-modules java.se,jdk.unsupported,jdk.management,jdk.management.agent,jdk.attach,jdk.jfr,jdk.crypto.ec,jdk.crypto.cryptoki,jdk.naming.dns,jdk.naming.rmi,jdk.net,jdk.sctp,jdk.zipfs,jdk.jcmd,jdk.localedata \
      --include-locales=en >&2
    mv "$dir.tmp" "$dir"
  fi
  echo "$dir"
}

# java8_root: a root with Debian's OpenJDK 8 JRE and the C libraries it
# links, unpacked from `sid` packages (Debian 12 has no Java 8; `sid` still
# builds it). `apt-get download` with a private source list and state, so the
# machine's own apt setup is untouched; unpacked with `dpkg -x` (no
# maintainer scripts run: the JRE needs none to start). Cached by the
# packages' file names, which carry their versions.
JAVA8_PACKAGES=(libc6 libgcc-s1 libstdc++6 zlib1g openjdk-8-jre-headless)
java8_root() {
  local apt=$OUT/apt-sid debs key dir
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/sources" "$apt/debs"
  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: sid\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    >"$apt/sources/sid.sources"
  local opts=(-o Dir::Etc::sourcelist=/dev/null -o "Dir::Etc::sourceparts=$apt/sources"
    -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o Dir::State::status=/dev/null
    -o APT::Sandbox::User=root)
  if ! ls "$apt"/debs/openjdk-8-jre-headless_*.deb >/dev/null 2>&1; then
    log "downloading OpenJDK 8 and its C libraries from Debian sid: ${JAVA8_PACKAGES[*]}"
    apt-get -q "${opts[@]}" update >&2 || die "apt-get update of Debian sid failed"
    (cd "$apt/debs" && apt-get -q "${opts[@]}" download "${JAVA8_PACKAGES[@]}" >&2) ||
      die "downloading ${JAVA8_PACKAGES[*]} from Debian sid failed"
  fi
  debs=$(cd "$apt/debs" && ls ./*.deb)
  key=$(echo "$debs" | sha256sum | cut -c1-12)
  dir=$OUT/java8-root-$key
  if [ ! -x "$dir/usr/lib/jvm/java-8-openjdk-amd64/jre/bin/java" ]; then
    rm -rf "$dir" "$dir.tmp"
    mkdir -p "$dir.tmp"
    local d
    for d in "$apt"/debs/*.deb; do dpkg -x "$d" "$dir.tmp"; done
    # The merged /usr of current Debian: base-files makes these links.
    ln -s usr/lib "$dir.tmp/lib"
    ln -s usr/lib64 "$dir.tmp/lib64"
    # Documentation and the JRE's man pages are not needed in an image.
    rm -rf "$dir.tmp/usr/share/doc" "$dir.tmp/usr/share/man" "$dir.tmp/usr/share/lintian"
    echo "$debs" >"$dir.tmp/.ferry-debs" # what went in, for the image's cache key
    mv "$dir.tmp" "$dir"
  fi
  echo "$dir"
}

# copy_libs ROOT ELF...: copies the shared libraries the ELF files need (as
# ldd resolves them on this machine, Debian 12) into ROOT at the same paths.
copy_libs() {
  local root=$1 lib; shift
  for lib in $(ldd "$@" 2>/dev/null | awk '/=> \// {print $3} /^\t\/lib64/ {print $1}' | sort -u); do
    case $lib in "$root"/*) continue ;; esac # the JRE's own, found through $ORIGIN
    mkdir -p "$root$(dirname "$lib")"
    [ -e "$root$lib" ] || cp -L "$lib" "$root$lib"
  done
}

# build_cassandra [4.1|3.11]: the image of Cassandra $CASSANDRA_VERSION on
# the jlink'ed Java 17; with "4.1" of $FERRY_OLDER_CASSANDRA_VERSION on the
# Java 11 runtime from PyPI (4.1 does not run on 17). That runtime lacks
# jdk.naming.rmi, which nodetool's JMX client needs, so the 4.1 image also
# carries the Java 17 runtime for nodetool alone (/opt/java-tools). With
# "3.11", of $FERRY_OLDEST_CASSANDRA_VERSION on a root of Debian sid's
# OpenJDK 8 and C libraries (java8_root), its own yaml and JVM options.
build_cassandra() {
  local flavour=${1:-} key archive lib base jars conf jre_dir tools_jre='' uid=999 name=cassandra
  local java8='' yaml=cassandra.yaml.in jvm_options=jvm17.options
  if [ "$flavour" = 4.1 ]; then
    export CASSANDRA_VERSION=${FERRY_OLDER_CASSANDRA_VERSION:-4.1.10}
    name=cassandra41
    jre_dir=$("$FERRY_ROOT/e2e/testbed/cassandra/cassandra.sh" java)
    jre_dir=${jre_dir%/bin/java}
  elif [ "$flavour" = 3.11 ]; then
    export CASSANDRA_VERSION=${FERRY_OLDEST_CASSANDRA_VERSION:-3.11.19}
    name=cassandra311
    java8=$(java8_root)
    yaml=cassandra-3.11.yaml.in jvm_options=jvm8.options
  fi
  "$FERRY_ROOT/e2e/testbed/cassandra/cassandra.sh" fetch >&2
  lib=$FERRY_CACHE/cassandra-$CASSANDRA_VERSION/lib
  key=$(hash_inputs "$images_dir/cassandra" "$lib" "$JDK/release" /bin/busybox ${jre_dir:+"$jre_dir/release"} \
    ${java8:+"$java8/.ferry-debs"})
  archive=$OUT/$name-$key.tar
  if [ -s "$archive" ]; then echo "$archive"; return 0; fi
  log "building image $REPO/$(cassandra_ref "$flavour") (Cassandra $CASSANDRA_VERSION)"
  # The 3.11 image brings its Java in the sid root (java8_root).
  if [ -z "$java8" ]; then
    if [ -n "${jre_dir:-}" ]; then tools_jre=$(jre); else jre_dir=$(jre); fi
  fi
  # Layer 1: busybox, the C libraries, the Java runtime, a cassandra user.
  base=$(staging cassandra-base)
  base_files "$base" "$uid" cassandra
  printf 'hosts: files dns\n' >"$base/etc/nsswitch.conf"
  mkdir -p "$base/bin" "$base/opt"
  cp /bin/busybox "$base/bin/busybox"
  /bin/busybox --list | while read -r applet; do
    [ -e "$base/bin/$applet" ] || ln -s busybox "$base/bin/$applet"
  done
  if [ -n "$java8" ]; then
    # The sid root brings its own C libraries (newer than this host's), so
    # nothing is copied from the host but busybox, which is static.
    cp -a "$java8/." "$base/"
    ln -s /usr/lib/jvm/java-8-openjdk-amd64/jre "$base/opt/java"
  else
    cp -a "$jre_dir" "$base/opt/java"
    [ -z "$tools_jre" ] || cp -a "$tools_jre" "$base/opt/java-tools"
    # shellcheck disable=SC2046 # one word per file
    copy_libs "$base" $(find "$base/opt" -type f \( -name '*.so' -o -perm -u+x \) )
    # Native code unpacked from jars at run time (netty epoll, JNA, zstd, lz4,
    # snappy) links against these without the JRE needing them.
    local l
    for l in libdl.so.2 libpthread.so.0 librt.so.1 libm.so.6 libresolv.so.2 libgcc_s.so.1 libstdc++.so.6 libz.so.1; do
      [ -e "$base/lib/x86_64-linux-gnu/$l" ] || cp -L "/lib/x86_64-linux-gnu/$l" "$base/lib/x86_64-linux-gnu/$l"
    done
  fi
  # Layer 2: the jars Maven resolved. Layer 3: entrypoint and configuration.
  jars=$(staging cassandra-jars)
  mkdir -p "$jars/opt/cassandra/lib"
  cp "$lib"/*.jar "$jars/opt/cassandra/lib/"
  conf=$(staging cassandra-conf)
  mkdir -p "$conf/opt/cassandra/bin" "$conf/opt/cassandra/conf" "$conf/var/lib/cassandra"
  cp "$images_dir/cassandra/entrypoint.sh" "$images_dir/cassandra/nodetool" "$conf/opt/cassandra/bin/"
  cp "$images_dir/cassandra/logback.xml" "$images_dir/cassandra/logback-tools.xml" "$conf/opt/cassandra/conf/"
  cp "$images_dir/cassandra/$yaml" "$conf/opt/cassandra/conf/cassandra.yaml.in"
  cp "$images_dir/cassandra/$jvm_options" "$conf/opt/cassandra/conf/jvm.options"
  chmod 755 "$conf/opt/cassandra/bin/"*
  chown "$uid:$uid" "$conf/var/lib/cassandra"
  # Root by default, as the official image: the entrypoint drops to $uid.
  oci_image "$archive" "$REPO/$(cassandra_ref "$flavour")" "$(jq -nc --arg v "$CASSANDRA_VERSION" '{
      User: "0:0", WorkingDir: "/var/lib/cassandra",
      Env: ["PATH=/opt/java/bin:/opt/cassandra/bin:/bin", "JAVA_HOME=/opt/java", "CASSANDRA_HOME=/opt/cassandra"],
      Entrypoint: ["/opt/cassandra/bin/entrypoint.sh"],
      ExposedPorts: {"7000/tcp": {}, "9042/tcp": {}},
      Volumes: {"/var/lib/cassandra": {}},
      Labels: {"org.opencontainers.image.title": "Apache Cassandra (Ferry test image)",
               "org.apache.cassandra.version": $v}}')" \
    "$base" "$jars" "$conf"
  rm -rf "$base" "$jars" "$conf"
  echo "$archive"
}

# cassandra_ref [4.1|3.11]: the image's name and tag, without the repository.
cassandra_ref() {
  if [ -n "${1:-}" ]; then echo "cassandra:$1-$TAG"; else echo "cassandra:$TAG"; fi
}

# --- operator and sidecar ----------------------------------------------------
# rust_target: musl when rustup has (or can add) it, for a static binary;
# otherwise the host's glibc target, and the image gets the few shared
# libraries the binary links.
rust_target() {
  if [[ $'\n'$(rustup target list --installed 2>/dev/null)$'\n' == *$'\n'"$RUST_TARGET"$'\n'* ]] ||
    rustup target add "$RUST_TARGET" >&2 2>/dev/null; then
    command -v musl-gcc >/dev/null && { echo "$RUST_TARGET"; return 0; }
  fi
  rustc -vV | awk '/^host:/ {print $2}'
}

# RUST_BINS: every Rust binary the images and the demo need. They are built in
# one cargo invocation, so each dependency compiles once, with one feature
# set, for all of them (ferry-e2e, the demo's driver, runs on the host).
RUST_BINS=(ferry-operator ferry-sidecar ferry-loadgen ferry-e2e)
# The `image` profile (Cargo.toml): release without LTO, so a cold build on a
# small machine takes minutes less. Published images use `release` (Dockerfile).
RUST_PROFILE=${FERRY_IMAGE_PROFILE:-image}

# rust_bin_dir: where cargo puts the binaries of build_rust_bins.
rust_bin_dir() { echo "${CARGO_TARGET_DIR:-$FERRY_CACHE/target}/$(rust_target)/$RUST_PROFILE"; }

# build_rust_bins: builds RUST_BINS (incremental; a no-op when nothing changed).
build_rust_bins() {
  local target bin args=()
  target=$(rust_target)
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$FERRY_CACHE/target}
  for bin in "${RUST_BINS[@]}"; do args+=(--bin "$bin"); done
  log "cargo build --profile $RUST_PROFILE --target $target: ${RUST_BINS[*]}"
  (cd "$FERRY_ROOT" && CC_x86_64_unknown_linux_musl=musl-gcc \
    cargo build -q --locked --profile "$RUST_PROFILE" --target "$target" \
    -p ferry-operator -p ferry-sidecar -p ferry-e2e "${args[@]}") >&2
}

# build_rust COMPONENT: the image of operator, sidecar or loadgen (the example
# application) from the binary build_rust_bins made.
build_rust() {
  local comp=$1 target bin key archive root cmd='[]' uid=65532
  target=$(rust_target)
  bin=$(rust_bin_dir)/ferry-$comp
  [ -x "$bin" ] || die "$bin missing: build_rust_bins did not build it"
  key=$(hash_inputs "$bin")
  archive=$OUT/$comp-$key.tar
  if [ -s "$archive" ]; then echo "$archive"; return 0; fi
  log "building image $REPO/ferry-$comp:$TAG"
  root=$(staging "$comp")
  base_files "$root" "$uid" ferry
  install -m 0755 "$bin" "$root/ferry-$comp"
  [ "$target" = "$RUST_TARGET" ] || copy_libs "$root" "$bin"
  if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
    mkdir -p "$root/etc/ssl/certs"
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  fi
  [ "$comp" = operator ] && cmd='["run"]'
  oci_image "$archive" "$REPO/ferry-$comp:$TAG" "$(jq -nc --arg c "$comp" --argjson cmd "$cmd" --arg u "$uid:$uid" '{
      User: $u, Entrypoint: ["/ferry-\($c)"], Cmd: $cmd,
      Labels: {"org.opencontainers.image.title": "ferry-\($c)",
               "org.opencontainers.image.source": "https://github.com/ferry-dev/ferry",
               "org.opencontainers.image.licenses": "Apache-2.0"}}')" "$root"
  rm -rf "$root"
  echo "$archive"
}

# --- redirect ----------------------------------------------------------------
# The init container that installs the iptables redirect of
# `proxy.redirect: iptables` (operator/src/sidecar.rs): busybox `sh` and
# Debian's iptables (nf_tables backend) with its extensions. Runs as root with
# NET_ADMIN and NET_RAW, in the pod's network namespace only.
build_redirect() {
  local key archive root xt=/usr/lib/x86_64-linux-gnu/xtables multi=/usr/sbin/xtables-nft-multi t
  [ -x "$multi" ] || die "$multi missing: apt-get install iptables"
  key=$(hash_inputs "$multi" "$xt" /bin/busybox)
  archive=$OUT/redirect-$key.tar
  if [ -s "$archive" ]; then echo "$archive"; return 0; fi
  log "building image $REPO/ferry-redirect:$TAG"
  root=$(staging redirect)
  base_files "$root" 65532 ferry
  mkdir -p "$root/bin" "$root/usr/sbin" "$root$xt" "$root/run" "$root/var/lib"
  cp /bin/busybox "$root/bin/busybox"
  for t in sh ash cat echo grep sed ls sleep true false; do ln -s busybox "$root/bin/$t"; done
  cp "$multi" "$root/usr/sbin/"
  for t in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -s xtables-nft-multi "$root/usr/sbin/$t"
  done
  cp -a "$xt/." "$root$xt/"
  # shellcheck disable=SC2046 # one word per file
  copy_libs "$root" "$multi" $(find "$xt" -name '*.so')
  oci_image "$archive" "$REPO/ferry-redirect:$TAG" '{
      "User": "0:0", "Env": ["PATH=/usr/sbin:/bin"], "Entrypoint": ["/bin/sh", "-c"],
      "Labels": {"org.opencontainers.image.title": "ferry-redirect",
                 "org.opencontainers.image.description": "sh and iptables for the Ferry proxy redirect init container"}}' \
    "$root"
  rm -rf "$root"
  echo "$archive"
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

# import_cached: imports every archive already in the cache that containerd
# lacks (after `node.sh purge`, say), without building anything.
import_cached() {
  local archive ref
  for archive in "$OUT"/*.tar; do
    [ -s "$archive.digest" ] || continue
    ref=$(tar -xOf "$archive" index.json | jq -r '.manifests[0].annotations["io.containerd.image.name"]')
    import "$archive" "$ref"
  done
}

# locked NAME COMMAND...: runs COMMAND holding NAME's lock, so that two
# build.sh at once (demo.sh builds in the background while node.sh asks for
# pause and cassandra) never write the same archive together.
locked() {
  local name=$1; shift
  (flock 8; "$@") 8>"$OUT/.$name.lock"
}

do_import=1 print_e2e=0
names=()
for a in "$@"; do
  case $a in
    --cached) import_cached; exit 0 ;;
    --no-import) do_import=0 ;;
    --e2e-bin) print_e2e=1 ;;
    all) names+=(pause cassandra operator sidecar loadgen redirect) ;;
    pause | cassandra | cassandra-4.1 | cassandra-3.11 | operator | sidecar | loadgen | redirect) names+=("$a") ;;
    *) die "usage: $0 [--no-import] [--e2e-bin] [pause|cassandra|cassandra-4.1|cassandra-3.11|operator|sidecar|loadgen|redirect|all]... | --cached" ;;
  esac
done
[ ${#names[@]} -eq 0 ] && [ "$print_e2e" = 0 ] && names=(pause cassandra operator sidecar loadgen redirect)

if [ "$print_e2e" = 1 ] || [[ " ${names[*]} " =~ \ (operator|sidecar|loadgen)\  ]]; then
  locked rust build_rust_bins
fi
for name in "${names[@]}"; do
  case $name in
    pause) archive=$(locked "$name" build_pause); ref=$REPO/pause:$TAG ;;
    cassandra) archive=$(locked "$name" build_cassandra); ref=$REPO/$(cassandra_ref) ;;
    cassandra-4.1) archive=$(locked "$name" build_cassandra 4.1); ref=$REPO/$(cassandra_ref 4.1) ;;
    cassandra-3.11) archive=$(locked "$name" build_cassandra 3.11); ref=$REPO/$(cassandra_ref 3.11) ;;
    operator | sidecar | loadgen) archive=$(locked "$name" build_rust "$name"); ref=$REPO/ferry-$name:$TAG ;;
    redirect) archive=$(locked "$name" build_redirect); ref=$REPO/ferry-redirect:$TAG ;;
  esac
  # Keep only the newest archive of each image.
  find "$OUT" -maxdepth 1 -name "$(basename "${archive%-*}")-*.tar*" ! -name "${archive##*/}*" -delete
  [ "$do_import" = 1 ] && import "$archive" "$ref"
  log "image $ref: $archive ($(du -h "$archive" | cut -f1))"
done
if [ "$print_e2e" = 1 ]; then echo "$(rust_bin_dir)/ferry-e2e"; fi
