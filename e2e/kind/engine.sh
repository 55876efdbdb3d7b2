#!/usr/bin/env bash
# A Docker engine of Ferry's own for kind, beside the local real node and
# never in its way: its own socket, data root and exec root, no iptables
# rules (--iptables=false, --ip-masq=false: the bed's forwarding and NAT stay
# as they are), no default bridge, and the runc wrapper as default runtime
# (this machine's capability bounding set lacks CAP_SYS_RESOURCE, which every
# privileged container asks for: see runc-without-sys-resource).
#
#   engine.sh up       start it if it is not running; prints nothing
#   engine.sh down     stop it (images and volumes are kept)
#   engine.sh env      prints `export DOCKER_HOST=...` for eval
#
# The engine is Debian's docker.io (setup.sh installs it).
. "$(dirname "${BASH_SOURCE[0]}")/../testbed/lib.sh"

ENGINE=$FERRY_RUN/docker
DATA_ROOT=$FERRY_CACHE/docker
SOCK=$ENGINE/docker.sock
export DOCKER_HOST=unix://$SOCK

engine_ready() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

up() {
  engine_ready && return 0
  command -v dockerd >/dev/null || die "dockerd is missing: run e2e/kind/setup.sh"
  mkdir -p "$ENGINE/exec" "$DATA_ROOT"
  local wrapper=$FERRY_BIN/runc-without-sys-resource
  install -m 0755 "$FERRY_ROOT/e2e/kind/runc-without-sys-resource" "$wrapper"
  # dockerd 20.10 adopts a containerd listening on the system's default
  # socket instead of starting its own; the bed's containerd listens
  # elsewhere, so one found there is somebody else's.
  [ -S /run/containerd/containerd.sock ] &&
    log "note: dockerd will use the containerd at /run/containerd/containerd.sock"
  log "starting the Docker engine on $SOCK (data in $DATA_ROOT)"
  # The engine's own containerd runs under its exec root; cgroupfs because
  # this machine's PID 1 is not systemd.
  setsid dockerd --host "$DOCKER_HOST" --data-root "$DATA_ROOT" --exec-root "$ENGINE/exec" \
    --pidfile "$ENGINE/dockerd.pid" --iptables=false --ip-masq=false --ip6tables=false \
    --bridge=none --exec-opt native.cgroupdriver=cgroupfs --storage-driver=overlay2 \
    --add-runtime "ferry-runc=$wrapper" --default-runtime ferry-runc \
    >"$ENGINE/dockerd.log" 2>&1 </dev/null 9>&- &
  wait_for "the Docker engine (see $ENGINE/dockerd.log)" 60 engine_ready
}

down() {
  pid_alive "$ENGINE/dockerd.pid" || return 0
  log "stopping the Docker engine"
  kill "$(cat "$ENGINE/dockerd.pid")"
  local i
  for ((i = 0; i < 30; i++)); do pid_alive "$ENGINE/dockerd.pid" || return 0; sleep 1; done
  kill -9 "$(cat "$ENGINE/dockerd.pid")" 2>/dev/null || true
}

case ${1:-up} in
  up) up ;;
  down) down ;;
  env) echo "export DOCKER_HOST=$DOCKER_HOST" ;;
  *) die "usage: $0 up|down|env" ;;
esac
