#!/usr/bin/env bash
# A real Kubernetes node on this machine, joined to the control plane of
# k8s.sh: containerd (Debian) with its CRI plugin and runc, the CNI plugins
# from Debian's containernetworking-plugins on a private bridge, kubelet,
# kube-scheduler, kube-proxy (iptables) and CoreDNS (from its Go module, run
# on the host), so that pods actually run.
#
#   node.sh up      install what is missing, start what is not running, build
#                   and import the images, wait until the node is Ready
#   node.sh down    stop the node's daemons (containers are stopped too;
#                   images and state are kept for the next `up`)
#   node.sh purge   down, then delete the node's state, network and Node object
#   node.sh status  exit 0 when the node is Ready
#   node.sh packages  install the Debian packages the node needs, nothing else
#   node.sh ctr ... run ctr against the node's containerd
#
# Network: pods get 10.244.0.0/24 on the bridge ferry0, whose address
# 10.244.0.1 is the node's InternalIP (the kubelet refuses a loopback node IP)
# and the cluster DNS server. Pods may reach pods, Services and the node, and
# nothing else: FERRY-POD-EGRESS drops forwarded traffic to other addresses.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
here=$FERRY_ROOT/e2e/testbed

N=$FERRY_RUN/node
PKI=$FERRY_RUN/k8s/pki
KUBECONFIG_FILE=$FERRY_RUN/kubeconfig
KUBECTL=("$FERRY_BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE")
NODE_NAME=${FERRY_NODE_NAME:-ferry-node}
BRIDGE=ferry0
POD_CIDR=10.244.0.0/24
NODE_IP=10.244.0.1
CLUSTER_CIDR=10.244.0.0/16
SERVICE_CIDR=10.96.0.0/16
DNS_IP=$NODE_IP
CTR_SOCK=$N/containerd/containerd.sock
CNI_BIN=/usr/lib/cni

ctr_() { ctr --address "$CTR_SOCK" "$@"; }

install_packages() {
  local missing=()
  command -v containerd >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  [ -x "$CNI_BIN/bridge" ] || missing+=(containernetworking-plugins)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v conntrack >/dev/null || missing+=(conntrack)
  command -v ip >/dev/null || missing+=(iproute2)
  command -v jq >/dev/null || missing+=(jq)
  command -v gcc >/dev/null || missing+=(gcc libc6-dev)
  [[ $'\n'$(/bin/busybox --list 2>/dev/null)$'\n' == *$'\nsh\n'* ]] || missing+=(busybox-static)
  command -v musl-gcc >/dev/null || missing+=(musl-tools)
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]} from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# write_config FILE DAEMON: writes stdin to FILE; when that changes the file
# and DAEMON runs (its pid file), the daemon is stopped so that the next
# start_* picks the new configuration up. Unchanged files keep it running.
write_config() {
  local file=$1 daemon=$2 tmp
  tmp=$(mktemp "$file.XXXXXX")
  cat >"$tmp"
  if cmp -s "$tmp" "$file"; then rm -f "$tmp"; return 0; fi
  mv "$tmp" "$file"
  if pid_alive "$N/$daemon.pid"; then
    log "$(basename "$file") changed: restarting $daemon"
    stop_pidfile "$daemon" "$N/$daemon.pid"
  fi
}

stop_pidfile() {
  local name=$1 file=$2 pid i
  pid_alive "$file" || { rm -f "$file"; return 0; }
  pid=$(cat "$file")
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 60; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$file"
}

# --- host network ------------------------------------------------------------
setup_network() {
  # The bridge exists before the kubelet starts so that the node IP is local;
  # the CNI bridge plugin then reuses it.
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    log "creating bridge $BRIDGE ($NODE_IP/24)"
    ip link add "$BRIDGE" type bridge
  fi
  [[ $(ip -4 addr show dev "$BRIDGE") == *"inet $NODE_IP/24"* ]] || ip addr add "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Service IPs are only meaningful to kube-proxy's rules: route them to the
  # bridge so that nothing addressed to them can ever leave the machine.
  ip route replace "$SERVICE_CIDR" dev "$BRIDGE" src "$NODE_IP"
  # Bridged pod-to-pod traffic must traverse iptables for Services to work
  # between pods on this bridge (kube-proxy's DNAT and its conntrack).
  [ -d /proc/sys/net/bridge ] || modprobe br_netfilter 2>/dev/null || true
  [ -d /proc/sys/net/bridge ] || die "br_netfilter is not available in this kernel (needed for Services between pods)"
  sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 \
    net.bridge.bridge-nf-call-ip6tables=1 >/dev/null
  # Pods may talk to pods, Services (DNAT happens before FORWARD) and the
  # node itself (INPUT, not FORWARD); anything else they send is dropped.
  iptables -N FERRY-POD-EGRESS 2>/dev/null || true
  iptables -F FERRY-POD-EGRESS
  iptables -A FERRY-POD-EGRESS -d "$CLUSTER_CIDR" -j RETURN
  iptables -A FERRY-POD-EGRESS -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
  iptables -A FERRY-POD-EGRESS -j DROP
  iptables -C FORWARD -s "$CLUSTER_CIDR" -j FERRY-POD-EGRESS 2>/dev/null ||
    iptables -I FORWARD 1 -s "$CLUSTER_CIDR" -j FERRY-POD-EGRESS
  # The kubelet's API trusts its callers (see write_kubelet_config): only the
  # host (the API server) may call it, not pods.
  iptables -C INPUT -i "$BRIDGE" -p tcp --dport 10250 -j DROP 2>/dev/null ||
    iptables -I INPUT 1 -i "$BRIDGE" -p tcp --dport 10250 -j DROP
}

write_cni_config() {
  mkdir -p "$N/cni/net.d" "$N/cni/ipam"
  cat >"$N/cni/net.d/10-ferry.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "ferry-pods",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$N/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
}

# --- containerd --------------------------------------------------------------
write_containerd_config() {
  mkdir -p "$N/containerd"
  write_config "$N/containerd/config.toml" containerd <<TOML
# Written by e2e/testbed/node.sh. containerd $(containerd --version | awk '{print $3}') from Debian.
version = 2
root = "$N/containerd/root"
state = "$N/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$CTR_SOCK"

[plugins."io.containerd.grpc.v1.cri"]
  # Built locally by e2e/images/build.sh and imported before the kubelet starts.
  sandbox_image = "ferry.dev/pause:dev"
  enable_unprivileged_ports = true
  # This machine withholds CAP_SYS_RESOURCE even from root, so no process may
  # lower its oom_score_adj (the sandbox asks for -998 and runc dies with
  # "failed to update /proc/self/oom_score_adj: Permission denied"): clamp
  # containers' scores to containerd's own instead.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN"
    conf_dir = "$N/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
TOML
}

start_containerd() {
  if pid_alive "$N/containerd.pid"; then return 0; fi
  log "starting containerd"
  mkdir -p "$N/containerd"
  # There is no registry here: every image is built locally and imported.
  # Pointing containerd's HTTP client at a closed loopback port makes a pull
  # of anything else fail at once instead of sending traffic off the machine.
  HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY= \
    http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 no_proxy= \
    setsid containerd --config "$N/containerd/config.toml" \
    >"$N/containerd.log" 2>&1 </dev/null 9>&- &
  echo $! >"$N/containerd.pid"
  wait_for "containerd" 30 ctr_ version
}

# --- certificates and kubeconfigs ------------------------------------------
# The kubelet authenticates with its own client certificate, signed by the
# cluster CA: CN=system:node:<name>, O=system:nodes (the Node authorizer's
# and the system:node ClusterRole's convention).
write_kubelet_credentials() {
  mkdir -p "$N/pki"
  if [ ! -s "$N/pki/kubelet.crt" ] || ! openssl verify -CAfile "$PKI/ca.crt" "$N/pki/kubelet.crt" >/dev/null 2>&1; then
    log "issuing the kubelet's client certificate (system:node:$NODE_NAME)"
    openssl req -newkey rsa:2048 -nodes -subj "/O=system:nodes/CN=system:node:$NODE_NAME" \
      -keyout "$N/pki/kubelet.key" -out "$N/pki/kubelet.csr" 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' >"$N/pki/client.ext"
    openssl x509 -req -in "$N/pki/kubelet.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
      -days 3650 -extfile "$N/pki/client.ext" -out "$N/pki/kubelet.crt" 2>/dev/null
  fi
  local server
  server=$(awk '/server:/ {print $2; exit}' "$KUBECONFIG_FILE")
  write_config "$N/kubelet.kubeconfig" kubelet <<KC
apiVersion: v1
kind: Config
clusters:
- name: ferry-testbed
  cluster: {server: "$server", certificate-authority: "$PKI/ca.crt"}
users:
- name: system:node:$NODE_NAME
  user: {client-certificate: "$N/pki/kubelet.crt", client-key: "$N/pki/kubelet.key"}
contexts:
- name: node
  context: {cluster: ferry-testbed, user: "system:node:$NODE_NAME"}
current-context: node
KC
}

# --- kubelet -----------------------------------------------------------------
write_kubelet_config() {
  mkdir -p "$N/kubelet" "$N/pod-logs"
  write_config "$N/kubelet.yaml" kubelet <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine has cgroup v1 (hybrid) and no systemd.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$CTR_SOCK
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 20248
podCIDR: $POD_CIDR
clusterDomain: cluster.local
clusterDNS: [$DNS_IP]
resolvConf: $N/resolv.conf
podLogsDir: $N/pod-logs
# The API server has no kubelet client certificate, so the kubelet trusts
# its callers (kubectl logs/exec go through it); pods are kept off its port.
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: AlwaysAllow}
serverTLSBootstrap: false
rotateCertificates: false
registerNode: true
# Test bed: evict for disk or memory pressure only at the very end of a
# shared dev machine's room. Absolute floors: a percentage of a large disk is gigabytes (1 % of 252 GiB
# left the node DiskPressure-tainted, refusing pods, with 2.5 GiB free).
# e2e/testbed/disk.sh keeps far more than this free before a run.
evictionHard: {memory.available: "100Mi", nodefs.available: "512Mi", imagefs.available: "512Mi", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
maxPods: 200
serializeImagePulls: false
YAML
  # Pods get cluster DNS; the node's resolver is only the fallback for
  # dnsPolicy Default, and this machine has nothing to resolve outside.
  printf 'nameserver %s\n' "$DNS_IP" >"$N/resolv.conf"
}

start_kubelet() {
  if pid_alive "$N/kubelet.pid"; then return 0; fi
  log "starting kubelet v$K8S_VERSION as node $NODE_NAME ($NODE_IP)"
  setsid "$FERRY_BIN/kubelet" --config="$N/kubelet.yaml" --kubeconfig="$N/kubelet.kubeconfig" \
    --root-dir="$N/kubelet" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" \
    --cert-dir="$N/kubelet/pki" \
    >"$N/kubelet.log" 2>&1 </dev/null 9>&- &
  echo $! >"$N/kubelet.pid"
}

# --- scheduler, proxy ------------------------------------------------------
start_scheduler() {
  if pid_alive "$N/scheduler.pid"; then return 0; fi
  log "starting kube-scheduler v$K8S_VERSION"
  setsid "$FERRY_BIN/kube-scheduler" --kubeconfig="$KUBECONFIG_FILE" --leader-elect=false \
    --bind-address=127.0.0.1 --secure-port=20259 \
    --authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics \
    >"$N/scheduler.log" 2>&1 </dev/null 9>&- &
  echo $! >"$N/scheduler.pid"
}

start_proxy() {
  write_config "$N/kube-proxy.yaml" proxy <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $KUBECONFIG_FILE}
hostnameOverride: $NODE_NAME
clusterCIDR: $CLUSTER_CIDR
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:20256
metricsBindAddress: 127.0.0.1:20249
nodePortAddresses: ["$NODE_IP/32"]
# Leave the machine's conntrack table settings alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
  if pid_alive "$N/proxy.pid"; then return 0; fi
  log "starting kube-proxy v$K8S_VERSION (iptables)"
  setsid "$FERRY_BIN/kube-proxy" --config="$N/kube-proxy.yaml" \
    >"$N/proxy.log" 2>&1 </dev/null 9>&- &
  echo $! >"$N/proxy.pid"
}

# --- CoreDNS -----------------------------------------------------------------
start_dns() {
  write_config "$N/Corefile" coredns <<COREFILE
cluster.local:53 in-addr.arpa:53 {
    bind $DNS_IP
    ready 127.0.0.1:20281
    errors
    kubernetes cluster.local in-addr.arpa {
        kubeconfig $KUBECONFIG_FILE
        pods insecure
        ttl 5
    }
    cache 5
}
.:53 {
    bind $DNS_IP
    errors
    # No upstream: this machine resolves nothing outside the cluster.
    template ANY ANY {
        rcode NXDOMAIN
    }
}
COREFILE
  if pid_alive "$N/coredns.pid"; then return 0; fi
  log "starting CoreDNS on $DNS_IP:53"
  setsid "$FERRY_BIN/coredns" -conf "$N/Corefile" \
    >"$N/coredns.log" 2>&1 </dev/null 9>&- &
  echo $! >"$N/coredns.pid"
  # Ready once the kubernetes plugin has synced with the API server.
  wait_for "CoreDNS" 60 curl -sf http://127.0.0.1:20281/ready
}

node_ready() {
  [ "$("${KUBECTL[@]}" get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

up() {
  local started i
  started=$(date +%s)
  install_packages
  "$here/build-tools.sh" all coredns
  "$here/k8s.sh" status || die "the control plane is not running (run k8s.sh up first)"
  setup_network
  write_cni_config
  write_containerd_config
  start_containerd
  "$FERRY_ROOT/e2e/images/build.sh" pause cassandra
  # Images built earlier (operator, sidecar...) that this containerd lacks.
  "$FERRY_ROOT/e2e/images/build.sh" --cached
  write_kubelet_credentials
  write_kubelet_config
  start_scheduler
  start_proxy
  start_kubelet
  start_dns
  # The kubelet answers its health check before the node's status is fresh.
  for ((i = 0; i < 120; i++)); do
    curl -sf http://127.0.0.1:20248/healthz >/dev/null && node_ready && break
    pid_alive "$N/kubelet.pid" || die "kubelet exited: $(tail -5 "$N/kubelet.log")"
    sleep 1
  done
  node_ready || die "node $NODE_NAME not Ready after 120s; see $N/kubelet.log"
  # The default StorageClass, named as kind names its own so manifests with
  # volumeClaimTemplates run unchanged: the controller-manager's built-in
  # hostPath provisioner (k8s.sh enables it) makes a directory per claim
  # under /tmp/hostpath_pv and deletes it with the claim.
  "${KUBECTL[@]}" apply -f - >/dev/null <<'SC'
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/host-path
reclaimPolicy: Delete
volumeBindingMode: Immediate
SC
  log "node $NODE_NAME Ready after $(($(date +%s) - started))s"
}

down() {
  stop_pidfile coredns "$N/coredns.pid"
  stop_pidfile kubelet "$N/kubelet.pid"
  # Stop the pods' containers too: their shims outlive containerd otherwise.
  if pid_alive "$N/containerd.pid"; then
    local c
    for c in $(ctr_ -n k8s.io tasks ls -q 2>/dev/null); do
      ctr_ -n k8s.io tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true
    done
  fi
  stop_pidfile kube-proxy "$N/proxy.pid"
  stop_pidfile kube-scheduler "$N/scheduler.pid"
  stop_pidfile containerd "$N/containerd.pid"
}

# purge: down, then remove every trace of the node from this machine: its
# mounts, the pods' network namespaces, state, bridge, iptables rules, and
# the Node object. Caches (binaries, image archives) are kept.
purge() {
  local m ns
  down
  if [ -d "$N" ]; then
    awk -v d="$N/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
      umount -l "$m" 2>/dev/null || true
    done
  fi
  for ns in $(ip netns list 2>/dev/null | awk '/^cni-/ {print $1}'); do ip netns delete "$ns" 2>/dev/null || true; done
  [ -x "$FERRY_BIN/kube-proxy" ] && "$FERRY_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  iptables -D FORWARD -s "$CLUSTER_CIDR" -j FERRY-POD-EGRESS 2>/dev/null || true
  iptables -F FERRY-POD-EGRESS 2>/dev/null && iptables -X FERRY-POD-EGRESS 2>/dev/null || true
  iptables -D INPUT -i "$BRIDGE" -p tcp --dport 10250 -j DROP 2>/dev/null || true
  ip route del "$SERVICE_CIDR" dev "$BRIDGE" 2>/dev/null || true
  ip link del "$BRIDGE" 2>/dev/null || true
  rm -rf "$N"
  "$here/k8s.sh" status && "${KUBECTL[@]}" delete node "$NODE_NAME" --ignore-not-found >/dev/null
  log "node $NODE_NAME purged (caches kept in $FERRY_CACHE)"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  purge) purge ;;
  status) node_ready ;;
  packages) install_packages ;;
  name) echo "$NODE_NAME" ;;
  ctr) shift; ctr_ "$@" ;;
  *) die "usage: $0 up|down|purge|status|name|ctr ARGS..." ;;
esac
