#!/usr/bin/env bash
# A real Kubernetes control plane on loopback: etcd, kube-apiserver and
# kube-controller-manager, built from the pinned Go modules (build-tools.sh).
#
#   k8s.sh up      start what is not running, wait until /readyz answers
#   k8s.sh down    stop it (state is kept for the next `up`)
#   k8s.sh purge   stop it and delete its state and certificates
#   k8s.sh status  exit 0 when the API server answers
#
# Writes $FERRY_RUN/kubeconfig (admin, system:masters).
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

K=$FERRY_RUN/k8s
PKI=$K/pki
APISERVER_PORT=${FERRY_APISERVER_PORT:-16443}
ETCD_CLIENT_PORT=12379
ETCD_PEER_PORT=12380
KUBECONFIG_FILE=$FERRY_RUN/kubeconfig
# Pods reach the API server through the `kubernetes` Service, whose endpoint
# is the advertise address: the local node's address on its pod bridge
# (node.sh). The API server never publishes a loopback endpoint, so it listens
# on every address and clients on this machine keep using 127.0.0.1.
ADVERTISE_ADDRESS=10.244.0.1

gen_pki() {
  [ -s "$PKI/apiserver.crt" ] && return 0
  log "generating certificates in $PKI"
  mkdir -p "$PKI"
  (
    cd "$PKI"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=ferry-testbed-ca \
      -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver \
      -keyout apiserver.key -out apiserver.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.96.0.1\nextendedKeyUsage=serverAuth\n' >san.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile san.ext -out apiserver.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    # Static bearer token for the admin user (system:masters); test bed only.
    token=$(openssl rand -hex 24)
    echo "$token,ferry-admin,ferry-admin,\"system:masters\"" >tokens.csv
    echo "$token" >admin.token
  )
}

write_kubeconfig() {
  cat >"$KUBECONFIG_FILE" <<KC
apiVersion: v1
kind: Config
clusters:
- name: ferry-testbed
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: ferry-admin
  user:
    token: $(cat "$PKI/admin.token")
contexts:
- name: ferry-testbed
  context: {cluster: ferry-testbed, user: ferry-admin, namespace: default}
current-context: ferry-testbed
KC
}

apiserver_ready() { "$FERRY_BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" get --raw /readyz >/dev/null 2>&1; }

start_etcd() {
  pid_alive "$K/etcd.pid" && return 0
  log "starting etcd v$ETCD_VERSION on 127.0.0.1:$ETCD_CLIENT_PORT"
  setsid "$FERRY_BIN/etcd" --name ferry0 --data-dir "$K/etcd" --unsafe-no-fsync \
    --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "ferry0=http://127.0.0.1:$ETCD_PEER_PORT" --auto-compaction-retention=1 \
    --quota-backend-bytes=$((2 * 1024 * 1024 * 1024)) --listen-metrics-urls= \
    >"$K/etcd.log" 2>&1 </dev/null 9>&- &
  echo $! >"$K/etcd.pid"
  wait_for "etcd" 30 tcp_open 127.0.0.1 "$ETCD_CLIENT_PORT"
}

start_apiserver() {
  pid_alive "$K/apiserver.pid" && return 0
  log "starting kube-apiserver v$K8S_VERSION on 127.0.0.1:$APISERVER_PORT"
  setsid "$FERRY_BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" --etcd-prefix=/registry \
    --bind-address=0.0.0.0 --advertise-address="$ADVERTISE_ADDRESS" --secure-port="$APISERVER_PORT" \
    --cert-dir="$PKI" --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" --token-auth-file="$PKI/tokens.csv" \
    --authorization-mode=Node,RBAC --allow-privileged=true \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 --kubelet-preferred-address-types=InternalIP \
    --enable-admission-plugins=NamespaceLifecycle,ServiceAccount,DefaultStorageClass,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy,ResourceQuota \
    --profiling=false \
    >"$K/apiserver.log" 2>&1 </dev/null 9>&- &
  echo $! >"$K/apiserver.pid"
  local i
  for ((i = 0; i < 120; i++)); do
    apiserver_ready && { log "kube-apiserver ready after ${i}s"; return 0; }
    pid_alive "$K/apiserver.pid" || die "kube-apiserver exited: $(tail -5 "$K/apiserver.log")"
    sleep 1
  done
  die "kube-apiserver not ready after 120s; see $K/apiserver.log"
}

start_controller_manager() {
  local args=(--kubeconfig="$KUBECONFIG_FILE"
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=20257
    --authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt"
    --use-service-account-credentials=false --controllers='*'
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key"
    # The node's default StorageClass provisions hostPath volumes (under
    # /tmp/hostpath_pv) with this built-in provisioner: a single node needs
    # no more, and StatefulSets keep their data when their pods are rolled.
    --enable-hostpath-provisioner)
  # A running controller-manager started with other flags (an older clone)
  # is restarted so the bed always matches this script.
  if pid_alive "$K/kcm.pid"; then
    [ "$(cat "$K/kcm.args" 2>/dev/null)" = "${args[*]}" ] && return 0
    stop_pidfile kube-controller-manager "$K/kcm.pid"
  fi
  log "starting kube-controller-manager v$K8S_VERSION"
  setsid "$FERRY_BIN/kube-controller-manager" "${args[@]}" \
    >"$K/kcm.log" 2>&1 </dev/null 9>&- &
  echo $! >"$K/kcm.pid"
  echo "${args[*]}" >"$K/kcm.args"
  # The default ServiceAccount appearing proves the controllers run.
  wait_for "kube-controller-manager (default ServiceAccount)" 90 \
    "$FERRY_BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" -n default get serviceaccount default
}

stop_pidfile() {
  local name=$1 file=$2 pid i
  pid_alive "$file" || { rm -f "$file"; return 0; }
  pid=$(cat "$file")
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 40; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$file"
}

up() {
  "$FERRY_ROOT/e2e/testbed/build-tools.sh" all
  mkdir -p "$K"
  gen_pki
  write_kubeconfig
  start_etcd
  start_apiserver
  start_controller_manager
  log "Kubernetes control plane up; export KUBECONFIG=$KUBECONFIG_FILE"
}

down() {
  stop_pidfile kube-controller-manager "$K/kcm.pid"
  stop_pidfile kube-apiserver "$K/apiserver.pid"
  stop_pidfile etcd "$K/etcd.pid"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  purge) down; rm -rf "$K" "$KUBECONFIG_FILE" ;;
  status) apiserver_ready ;;
  *) die "usage: $0 up|down|purge|status" ;;
esac
