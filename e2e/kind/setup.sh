#!/usr/bin/env bash
# What `make kind-e2e` installs, from Debian's packages and the Go module
# proxy only: the Docker engine (docker.io), mmdebstrap (the node image's
# root), jq; then kind, kubeadm, CoreDNS and local-path-provisioner
# (build-tools.sh kind) and the bed's Kubernetes binaries. Idempotent.
. "$(dirname "${BASH_SOURCE[0]}")/../testbed/lib.sh"
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v jq >/dev/null || missing+=(jq)
command -v ctr >/dev/null || missing+=(containerd)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's docker.io starts nothing here (no systemd); engine.sh runs the
# engine with its own socket. The CLI may be a newer one: it talks to the
# 20.10 engine at that engine's API version.
"$FERRY_ROOT/e2e/testbed/build-tools.sh" all kind
