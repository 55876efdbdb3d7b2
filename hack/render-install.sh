#!/usr/bin/env bash
# Renders manifests/install.yaml from the Helm chart (default values, namespace
# ferry-system), for `kubectl apply -f`. A test fails when it is stale.
#   hack/render-install.sh            write it
#   hack/render-install.sh --stdout   print it
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
helm=${HELM:-${FERRY_CACHE:-$HOME/.cache/ferry}/bin/helm}
[ -x "$helm" ] || bash "$root/e2e/testbed/build-tools.sh" helm
render() {
  cat <<'HDR'
# Generated from charts/ferry by hack/render-install.sh (`make manifests`).
# Do not edit by hand. Install: kubectl apply --server-side -f manifests/install.yaml
apiVersion: v1
kind: Namespace
metadata:
  name: ferry-system
---
HDR
  "$helm" template ferry "$root/charts/ferry" --namespace ferry-system --include-crds
}
if [ "${1:-}" = --stdout ]; then render; else render >"$root/manifests/install.yaml"; fi
