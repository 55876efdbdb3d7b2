#!/usr/bin/env bash
# Builds the Go parts of the test bed from the Go module proxy: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy,
# kubectl, helm, (for the node) CoreDNS and (for `make kind-e2e`) kind,
# kubeadm, a CoreDNS with kubeadm's plugins and local-path-provisioner. Idempotent: a binary already in
# $FERRY_BIN with a matching stamp is kept. Cold on 2 cores this is the
# slowest step of the test bed.
#
#   build-tools.sh [all|etcd|k8s|helm|coredns|kind]...   (all = etcd helm k8s)
#
# The builds named run at once: each `go build` leaves a core idle while it
# links or waits on a large package, and they share one build cache.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
here=$FERRY_ROOT/e2e/testbed
export CGO_ENABLED=0

# stamp_ok NAME KEY: the binary exists and was built from the same inputs.
stamp_ok() { [ -x "$FERRY_BIN/$1" ] && [ "$(cat "$FERRY_BIN/.$1.stamp" 2>/dev/null)" = "$2" ]; }
# stamp_key DIR: a hash of DIR's Go sources, the same from any clone's path.
stamp_key() { (cd "$here/$1" && shopt -s nullglob && sha256sum go.mod go.sum ./*.go) | sha256sum | cut -c1-16; }

# k8s_ldflags: stamps the version kubeadm and `--version` report.
k8s_ldflags() {
  local minor ldf="-s -w" p
  minor=${K8S_VERSION#1.}; minor=${minor%%.*}
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf="$ldf -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ldf="$ldf -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$ldf"
}

build_k8s() {
  local key cmds=() c
  key=$(stamp_key k8s)
  for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    stamp_ok "$c" "$key" || cmds+=("$c")
  done
  [ ${#cmds[@]} -eq 0 ] && return 0
  log "building Kubernetes v$K8S_VERSION: ${cmds[*]} (cold: 15-30 min on 2 cores)"
  (cd "$here/k8s" && go build -trimpath -ldflags "$(k8s_ldflags)" -o "$FERRY_BIN/" \
    "${cmds[@]/#/k8s.io/kubernetes/cmd/}")
  for c in "${cmds[@]}"; do echo "$key" >"$FERRY_BIN/.$c.stamp"; done
}

# go_tool NAME DIR PACKAGE [LDFLAGS]: builds PACKAGE from the module in DIR
# (relative to e2e/testbed) into $FERRY_BIN/NAME unless its stamp matches.
go_tool() {
  local name=$1 dir=$2 pkg=$3 ldf=${4:--s -w} key
  key=$(stamp_key "$dir")
  stamp_ok "$name" "$key" && return 0
  log "building $name from its Go module"
  (cd "$here/$dir" && go build -trimpath -ldflags "$ldf" -o "$FERRY_BIN/$name" "$pkg")
  echo "$key" >"$FERRY_BIN/.$name.stamp"
}

# What `make kind-e2e` needs beyond the bed (e2e/kind/): kind itself,
# kubeadm at the bed's Kubernetes version, CoreDNS with kubeadm's plugins,
# and the provisioner behind kind's default StorageClass.
build_kind() {
  go_tool kind ../kind/kind sigs.k8s.io/kind
  go_tool kubeadm ../kind/kubeadm k8s.io/kubernetes/cmd/kubeadm "$(k8s_ldflags)"
  go_tool coredns-kind ../kind/coredns .
  go_tool local-path-provisioner ../kind/local-path github.com/rancher/local-path-provisioner
}

build_etcd() {
  local key
  key=$(stamp_key etcd)
  stamp_ok etcd "$key" && stamp_ok etcdctl "$key" && return 0
  log "building etcd v$ETCD_VERSION"
  (cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$FERRY_BIN/etcd" go.etcd.io/etcd/server/v3 &&
    go build -trimpath -ldflags "-s -w" -o "$FERRY_BIN/etcdctl" go.etcd.io/etcd/etcdctl/v3)
  echo "$key" >"$FERRY_BIN/.etcd.stamp"; echo "$key" >"$FERRY_BIN/.etcdctl.stamp"
}

build_helm() {
  local v=helm.sh/helm/v3
  # Without these stamps helm reports v3.x and templates against Kubernetes 1.20.
  go_tool helm helm $v/cmd/helm "-s -w \
    -X $v/internal/version.version=v$HELM_VERSION -X $v/internal/version.gitTreeState=clean \
    -X $v/pkg/chartutil.k8sVersionMajor=1 -X $v/pkg/chartutil.k8sVersionMinor=36 \
    -X $v/pkg/lint/rules.k8sVersionMajor=1 -X $v/pkg/lint/rules.k8sVersionMinor=36"
}

# Built from its Go module with only the plugins used here (coredns/main.go).
build_coredns() { go_tool coredns coredns .; }

names=()
for a in "${@:-all}"; do
  case $a in
    all) names+=(etcd helm k8s) ;;
    etcd | k8s | helm | coredns | kind) names+=("$a") ;;
    *) die "usage: $0 [all|etcd|k8s|helm|coredns|kind]..." ;;
  esac
done
pids=()
for name in "${names[@]}"; do
  "build_$name" &
  pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
[ "$failed" = 0 ] || die "a Go build failed (see above)"
