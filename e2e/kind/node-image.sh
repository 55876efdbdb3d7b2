#!/usr/bin/env bash
# Builds a kind node image from packages alone, for machines that reach no
# container registry: ferry.dev/kind-node:v$K8S_VERSION in Ferry's Docker
# engine (engine.sh). Cached: a second run with the same inputs does nothing.
#
#   node-image.sh            build it unless the engine has it already
#   node-image.sh --force    build it again
#
# What it holds, as kind's own base and node images do (kind's
# images/base/Dockerfile and files/, read from kind's Go module):
# - a Debian root from mmdebstrap: systemd, containerd and runc (Debian's),
#   the CNI plugins, iptables/nftables, conntrack, mount tools; kind's
#   entrypoint, /kind/bin scripts, kubelet units and drop-ins, sysctls;
# - kubelet, kubeadm and kubectl, built by the bed from the Go modules at
#   v$K8S_VERSION (build-tools.sh k8s kind);
# - every image `kubeadm config images list` names (control plane, etcd,
#   kube-proxy, CoreDNS, pause), built here from the same binaries and tagged
#   exactly as kubeadm names them, plus the default StorageClass's
#   provisioner; imported into the node's containerd at boot
#   (ferry-import-images.service), so nothing is pulled;
# - a pod network without CNI pods (ferry-kind-net.service: ptp, a /24 per
#   node, static routes), and runc reached through runc-without-sys-resource.
. "$(dirname "${BASH_SOURCE[0]}")/../testbed/lib.sh"
. "$FERRY_ROOT/e2e/images/oci.sh"
shopt -s inherit_errexit

here=$FERRY_ROOT/e2e/kind
KIND_CACHE=$FERRY_CACHE/kind
NODE_IMAGE=${FERRY_KIND_NODE_IMAGE:-ferry.dev/kind-node:v$K8S_VERSION}
SUITE=bookworm
# kind's base image packages, less nfs-common/open-iscsi (no network storage
# here), plus Debian's containerd, runc and CNI plugins (kind builds those
# from source) and socat for port-forwarding.
NODE_PACKAGES=systemd,systemd-sysv,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,fuse-overlayfs,e2fsprogs,bash,ca-certificates,curl,jq,procps,containerd,runc,containernetworking-plugins,socat
# The root of kube-proxy's image and of the storage helper pod.
TOOLS_PACKAGES=iptables,conntrack,nftables,ipset,kmod
TOOLS_IMAGE=ferry.dev/kind-node-tools:v1
PROVISIONER_IMAGE=ferry.dev/kind-local-path-provisioner:v0.0.30
force=0
[ "${1:-}" = --force ] && force=1

eval "$("$here/engine.sh" env)"
"$here/engine.sh" up
command -v mmdebstrap >/dev/null || die "mmdebstrap is missing: run e2e/kind/setup.sh"
"$FERRY_ROOT/e2e/testbed/build-tools.sh" k8s etcd kind

# kind's base image files (entrypoint, units, scripts), from its Go module.
KIND_FILES=$(cd "$here/kind" && go list -m -f '{{.Dir}}' sigs.k8s.io/kind)/images/base/files
[ -d "$KIND_FILES" ] || die "kind's base image files are missing: $KIND_FILES"

# The images kubeadm names for this version, by name (kube-apiserver, etcd,
# pause...): read once, here, so that a name kubeadm does not print stops
# the build instead of tagging an image "".
declare -A KUBEADM_IMAGE
kubeadm_images=$("$FERRY_BIN/kubeadm" config images list --kubernetes-version "v$K8S_VERSION")
for name in kube-apiserver kube-controller-manager kube-scheduler kube-proxy etcd coredns pause; do
  KUBEADM_IMAGE[$name]=$(grep -E "/$name:" <<<"$kubeadm_images" | head -1 || true)
  [ -n "${KUBEADM_IMAGE[$name]}" ] || die "kubeadm v$K8S_VERSION names no $name image: $kubeadm_images"
done
image_ref() { echo "${KUBEADM_IMAGE[$1]}"; }

# stage NAME: a fresh folder, mode 755 (it becomes / of an image).
stage() {
  local d
  d=$(mktemp -d "$KIND_CACHE/.stage-$1.XXXXXX")
  chmod 755 "$d"
  echo "$d"
}

# minimal_root ROOT: /etc/passwd, /etc/group, /tmp for a root with one binary.
minimal_root() {
  mkdir -p "$1/etc" "$1/tmp" "$1/usr/local/bin"
  chmod 1777 "$1/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n' >"$1/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\n' >"$1/etc/group"
}

# binary_image OUT REF CONFIG BINARY...: an image of the static BINARYs in
# /usr/local/bin (the path kubeadm's static pods and kind's manifests run).
binary_image() {
  local out=$1 ref=$2 config=$3 root b; shift 3
  root=$(stage image)
  minimal_root "$root"
  for b in "$@"; do cp "$FERRY_BIN/$b" "$root/usr/local/bin/"; done
  oci_image "$out" "$ref" "$config" "$root"
  rm -rf "$root"
}

# tools_root: a Debian minbase root with iptables and conntrack (cached).
tools_root() {
  local root=$KIND_CACHE/tools-root
  if [ ! -f "$root/.done" ]; then
    rm -rf "$root"
    log "making the node tools root (mmdebstrap $SUITE: $TOOLS_PACKAGES)"
    mmdebstrap --quiet --variant=minbase --include="$TOOLS_PACKAGES" "$SUITE" "$root" >&2
    rm -rf "$root/var/lib/apt/lists"/* "$root/var/cache/apt"/*
    touch "$root/.done"
  fi
  echo "$root"
}

# node_images DIR: every image the node needs at boot, as OCI archives.
node_images() {
  local dir=$1 c root tools
  rm -rf "$dir"; mkdir -p "$dir"
  for c in kube-apiserver kube-controller-manager kube-scheduler; do
    binary_image "$dir/$c.tar" "$(image_ref "$c")" '{}' "$c"
  done
  binary_image "$dir/etcd.tar" "$(image_ref etcd)" '{}' etcd etcdctl
  # CoreDNS's own image runs /coredns; kubeadm's Deployment gives only args.
  root=$(stage coredns)
  minimal_root "$root"
  cp "$FERRY_BIN/coredns-kind" "$root/coredns"
  oci_image "$dir/coredns.tar" "$(image_ref coredns)" '{"Entrypoint":["/coredns"]}' "$root"
  rm -rf "$root"
  root=$(stage pause)
  gcc -static -Os -s -o "$root/pause" "$FERRY_ROOT/e2e/images/pause/pause.c"
  oci_image "$dir/pause.tar" "$(image_ref pause)" '{"Entrypoint":["/pause"],"User":"65535:65535"}' "$root"
  rm -rf "$root"
  binary_image "$dir/local-path-provisioner.tar" "$PROVISIONER_IMAGE" \
    '{"Entrypoint":["/usr/local/bin/local-path-provisioner"]}' local-path-provisioner
  # kube-proxy needs iptables; the storage helper pod needs sh, mkdir, rm.
  tools=$(tools_root)
  root=$(stage kube-proxy)
  mkdir -p "$root/usr/local/bin"
  cp "$FERRY_BIN/kube-proxy" "$root/usr/local/bin/"
  oci_image "$dir/kube-proxy.tar" "$(image_ref kube-proxy)" '{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}' "$tools" "$root"
  oci_image "$dir/node-tools.tar" "$TOOLS_IMAGE" '{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Entrypoint":["/bin/sh"]}' "$tools"
  rm -rf "$root"
  rm -f "$dir"/*.digest
  for c in "$dir"/*.tar; do
    [ -s "$c" ] || die "image archive $c is empty"
  done
}

# node_root ROOT: the node's root file system.
node_root() {
  local root=$1 files=$KIND_FILES
  rm -rf "$root"
  log "making the node root (mmdebstrap $SUITE, $(tr ',' ' ' <<<"$NODE_PACKAGES" | wc -w) packages)"
  mmdebstrap --quiet --variant=minbase --include="$NODE_PACKAGES" "$SUITE" "$root" >&2
  # kind's files: entrypoint, /kind, units and drop-ins, sysctls, crictl.
  install -m 0755 "$files"/usr/local/bin/entrypoint "$root/usr/local/bin/entrypoint"
  mkdir -p "$root/kind/bin" "$root/kind/manifests" "$root/kind/images"
  install -m 0755 "$files"/kind/bin/*.sh "$root/kind/bin/"
  install -m 0644 "$files"/etc/crictl.yaml "$root/etc/"
  install -m 0644 "$files"/etc/default/kubelet "$root/etc/default/"
  install -m 0644 "$files"/etc/sysctl.d/* "$root/etc/sysctl.d/"
  mkdir -p "$root/etc/systemd/system/kubelet.service.d"
  install -m 0644 "$files"/etc/systemd/system/*.service "$files"/etc/systemd/system/*.slice "$root/etc/systemd/system/"
  install -m 0644 "$files"/etc/systemd/system/kubelet.service.d/* "$root/etc/systemd/system/kubelet.service.d/"
  # kind's units run /usr/local/bin/containerd; Debian's is in /usr/bin.
  ln -sf /usr/bin/containerd "$root/usr/local/bin/containerd"
  mkdir -p "$root/etc/containerd"
  sed "s/@PAUSE_TAG@/$(image_ref pause | cut -d: -f2)/" "$here/node/containerd-config.toml" >"$root/etc/containerd/config.toml"
  ctr oci spec | jq '.hooks.createContainer += [{"path": "/kind/bin/mount-product-files.sh"}] | del(.process.rlimits)' \
    >"$root/etc/containerd/cri-base.json"
  install -m 0755 "$here/runc-without-sys-resource" "$root/usr/local/bin/"
  install -m 0755 "$here/node/ferry-kind-net" "$here/node/ferry-import-images" "$root/usr/local/bin/"
  install -m 0644 "$here/node/ferry-kind-net.service" "$here/node/ferry-import-images.service" "$root/etc/systemd/system/"
  # What kind's base Dockerfile does to systemd for a container.
  find "$root/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
  rm -f "$root"/lib/systemd/system/multi-user.target.wants/* "$root"/etc/systemd/system/*.wants/* \
    "$root"/lib/systemd/system/local-fs.target.wants/* "$root"/lib/systemd/system/sockets.target.wants/*udev* \
    "$root"/lib/systemd/system/sockets.target.wants/*initctl* "$root"/lib/systemd/system/basic.target.wants/*
  echo "ReadKMsg=no" >>"$root/etc/systemd/journald.conf"
  systemctl --root="$root" --quiet enable kubelet.service containerd.service undo-mount-hacks.service \
    ferry-kind-net.service ferry-import-images.service
  systemctl --root="$root" --quiet mask systemd-binfmt.service
  mkdir -p "$root/etc/kubernetes/manifests" "$root/opt/cni"
  ln -sfn /usr/lib/cni "$root/opt/cni/bin"
  install -m 0755 "$FERRY_BIN/kubelet" "$FERRY_BIN/kubeadm" "$FERRY_BIN/kubectl" "$root/usr/bin/"
  echo "v$K8S_VERSION" >"$root/kind/version"
  install -m 0644 "$here/node/default-cni.yaml" "$here/node/default-storage.yaml" "$root/kind/manifests/"
  node_images "$root/kind/images"
  rm -rf "$root/var/lib/apt/lists"/* "$root/var/cache/apt"/*
}

input_key() {
  { find "$here/node" "$here/node-image.sh" "$here/runc-without-sys-resource" "$KIND_FILES" "$FERRY_ROOT/e2e/images/pause" "$FERRY_ROOT/e2e/images/oci.sh" \
      -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sed "s#  $FERRY_ROOT/#  ./#"
    cat "$FERRY_BIN"/.{kube-apiserver,kube-controller-manager,kube-scheduler,kubelet,kube-proxy,kubectl,etcd,kubeadm,coredns-kind,local-path-provisioner}.stamp
    echo "$SUITE $NODE_PACKAGES $TOOLS_PACKAGES $NODE_IMAGE"; } | sha256sum | cut -c1-16
}

mkdir -p "$KIND_CACHE"
key=$(input_key)
have=$(docker image inspect --format '{{index .Config.Labels "dev.ferry.inputs"}}' "$NODE_IMAGE" 2>/dev/null || true)
if [ "$force" = 0 ] && [ "$have" = "$key" ]; then
  log "kind node image $NODE_IMAGE is up to date ($key)"
  exit 0
fi
started=$(date +%s)
root=$KIND_CACHE/node-root
# A failed build leaves no staging folders, root or half-made image behind.
trap 'rm -rf "$KIND_CACHE"/.stage-* "$root"; docker rmi "$NODE_IMAGE-rootfs" >/dev/null 2>&1 || true' EXIT
node_root "$root"
log "importing $NODE_IMAGE into the engine ($(du -sh "$root" | cut -f1))"
tar -C "$root" --numeric-owner -c . | docker import - "$NODE_IMAGE-rootfs" >/dev/null
# `docker import --change` takes no STOPSIGNAL: systemd stops cleanly on
# SIGRTMIN+3, so a build with no RUN step (nothing is pulled) sets it.
printf '%s\n' "FROM $NODE_IMAGE-rootfs" 'ENV container=docker' 'STOPSIGNAL SIGRTMIN+3' \
  'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' "LABEL dev.ferry.inputs=$key" |
  DOCKER_BUILDKIT=0 docker build --quiet -t "$NODE_IMAGE" - >"$KIND_CACHE/build.log" 2>&1 ||
  die "docker build of $NODE_IMAGE failed: $(cat "$KIND_CACHE/build.log")"
# The previous node image, now untagged, is 0.9 GB of nothing.
docker image prune --force >/dev/null
log "kind node image $NODE_IMAGE built in $(($(date +%s) - started)) s"
