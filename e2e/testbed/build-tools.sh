#!/usr/bin/env bash
# Builds the Go parts of the test bed from the Go module proxy: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy,
# kubectl, helm and (for the node) CoreDNS. Idempotent: a binary already in
# $FERRY_BIN with a matching stamp is kept. Cold on 2 cores this is the
# slowest step of the test bed.
#
#   build-tools.sh [all|etcd|k8s|helm|coredns]...   (all = etcd helm k8s)
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

build_k8s() {
  local key minor ldf p cmds=() c
  key=$(stamp_key k8s)
  for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    stamp_ok "$c" "$key" || cmds+=("$c")
  done
  [ ${#cmds[@]} -eq 0 ] && return 0
  log "building Kubernetes v$K8S_VERSION: ${cmds[*]} (cold: 15-30 min on 2 cores)"
  minor=${K8S_VERSION#1.}; minor=${minor%%.*}
  ldf="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf="$ldf -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ldf="$ldf -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  (cd "$here/k8s" && go build -trimpath -ldflags "$ldf" -o "$FERRY_BIN/" \
    "${cmds[@]/#/k8s.io/kubernetes/cmd/}")
  for c in "${cmds[@]}"; do echo "$key" >"$FERRY_BIN/.$c.stamp"; done
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
  local key v=helm.sh/helm/v3
  key=$(stamp_key helm)
  stamp_ok helm "$key" && return 0
  log "building helm v$HELM_VERSION"
  # Without these stamps helm reports v3.x and templates against Kubernetes 1.20.
  (cd "$here/helm" && go build -trimpath -ldflags "-s -w \
    -X $v/internal/version.version=v$HELM_VERSION -X $v/internal/version.gitTreeState=clean \
    -X $v/pkg/chartutil.k8sVersionMajor=1 -X $v/pkg/chartutil.k8sVersionMinor=36 \
    -X $v/pkg/lint/rules.k8sVersionMajor=1 -X $v/pkg/lint/rules.k8sVersionMinor=36" \
    -o "$FERRY_BIN/helm" $v/cmd/helm)
  echo "$key" >"$FERRY_BIN/.helm.stamp"
}

# Built from its Go module with only the plugins used here (coredns/main.go).
build_coredns() {
  local key
  key=$(stamp_key coredns)
  stamp_ok coredns "$key" && return 0
  log "building CoreDNS from its Go module (cold: a few minutes)"
  (cd "$here/coredns" && go build -trimpath -ldflags "-s -w" -o "$FERRY_BIN/coredns" .)
  echo "$key" >"$FERRY_BIN/.coredns.stamp"
}

names=()
for a in "${@:-all}"; do
  case $a in
    all) names+=(etcd helm k8s) ;;
    etcd | k8s | helm | coredns) names+=("$a") ;;
    *) die "usage: $0 [all|etcd|k8s|helm|coredns]..." ;;
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
