#!/usr/bin/env bash
# Installs the machine packages the test bed needs, when missing: a JDK 17 and
# Maven (Cassandra), openssl (certificates), Go (the Kubernetes build), and the
# Rust components the lint step uses. Idempotent and quick when all is there.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

missing=()
command -v java >/dev/null && java -version 2>&1 | grep -q '"17\.' || missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v openssl >/dev/null || missing+=(openssl)
command -v flock >/dev/null || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v go >/dev/null || die "Go (>= 1.26) is needed to build Kubernetes; it ships with this machine image at /usr/local/go"
if command -v rustup >/dev/null; then
  for c in clippy rustfmt; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
  done
fi
