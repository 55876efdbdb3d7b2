#!/usr/bin/env bash
# The operator's memory and CPU with N migrations in the cluster (issue 16):
# the release binary runs against the test bed's API server, watching one
# namespace that holds N CassandraMigrations, and /proc gives its CPU time
# and resident memory.
#
#   bash e2e/bench/operator-idle.sh [N] [ROUNDS]     (defaults: 50 and 3)
#
# Each round: a fresh namespace with N migrations (each of its own
# StatefulSet, which does not exist: the operator reads it, reports
# `Failed/SourceNotFound` and checks again every 120 s; a migration in
# `Ready` also reads its proxies every 30 s, which this does not count),
# a fresh operator,
# WARMUP seconds to take them all in (CPU reported as "taking in"), then
# WINDOW seconds of idling (CPU and RSS reported). Medians over the rounds.
# Environment: WINDOW (120), WARMUP (60).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../testbed/lib.sh"
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

count=${1:-50}
rounds=${2:-3}
window=${WINDOW:-120}
warmup=${WARMUP:-60}
ns=ferry-idle-bench
kubectl=$FERRY_CACHE/bin/kubectl

bash e2e/testbed/up.sh --no-cassandra >/dev/null
export KUBECONFIG=$FERRY_RUN/kubeconfig
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$FERRY_CACHE/target}
cargo build -q --release --locked -p ferry-operator
bin=$CARGO_TARGET_DIR/release/ferry-operator
"$bin" crd | "$kubectl" apply -f - >/dev/null

work=$(mktemp -d)
pid=
# The migrations carry the operator's finalizer and no operator runs
# between rounds: take it off, or the namespace never goes.
clear_namespace() {
  local m
  for m in $("$kubectl" get cassandramigrations -n "$ns" -o name 2>/dev/null); do
    "$kubectl" patch -n "$ns" "$m" --type merge -p '{"metadata":{"finalizers":null}}' >/dev/null 2>&1 || true
  done
  "$kubectl" delete namespace "$ns" --wait=true --timeout=120s >/dev/null 2>&1 || true
}
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  clear_namespace
  rm -rf "$work"
}
trap cleanup EXIT
# The webhook serves a certificate of its own from files: no Secret, no
# webhook configuration to patch.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=ferry-idle-bench \
  -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null
cp "$work/tls.crt" "$work/ca.crt"

ticks=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

migrations() {
  for i in $(seq 1 "$count"); do
    cat <<EOF
---
apiVersion: ferry.dev/v1alpha1
kind: CassandraMigration
metadata:
  name: idle-$i
  namespace: $ns
spec:
  source:
    statefulSet: cassandra-$i
  target:
    contactPoints: ["10.0.0.$((i % 250 + 1)):9042"]
    localDatacenter: dc1
EOF
  done
}

: >"$work/rounds"
for round in $(seq 1 "$rounds"); do
  clear_namespace
  "$kubectl" create namespace "$ns" >/dev/null
  migrations | "$kubectl" apply -f - >/dev/null
  "$bin" run --namespace "$ns" --watch-namespace "$ns" --pod-name idle-bench \
    --leader-election false --webhook-cert-dir "$work" \
    --metrics-addr 127.0.0.1:18091 --webhook-addr 127.0.0.1:18454 \
    >"$work/operator-$round.log" 2>&1 &
  pid=$!
  sleep "$warmup"
  kill -0 "$pid" || { tail -20 "$work/operator-$round.log"; die "the operator exited"; }
  taking_in=$(cpu_ticks "$pid")
  statuses=$("$kubectl" get cassandramigrations -n "$ns" -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | grep -c . || true)
  sleep "$window"
  idle=$(( $(cpu_ticks "$pid") - taking_in ))
  rss=$(rss_kib "$pid")
  hwm=$(hwm_kib "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  # CPU as a share of one core, in per mille; milliseconds over the warm-up.
  idle_pm=$(( idle * 1000 * 1000 / ticks / (window * 1000) ))
  taking_in_ms=$(( taking_in * 1000 / ticks ))
  echo "$idle_pm $rss $hwm $taking_in_ms $statuses" >>"$work/rounds"
  log "round $round: idle CPU ${idle_pm}‰ of a core, RSS ${rss} KiB (peak ${hwm} KiB), ${taking_in_ms} ms CPU taking in $count migrations ($statuses with a phase)"
done

idle_pm=$(awk '{print $1}' "$work/rounds" | median)
rss=$(awk '{print $2}' "$work/rounds" | median)
hwm=$(awk '{print $3}' "$work/rounds" | median)
taking_in_ms=$(awk '{print $4}' "$work/rounds" | median)
echo "operator with $count migrations, median of $rounds rounds:"
echo "  idle CPU: $(awk -v v="$idle_pm" 'BEGIN {printf "%.1f", v / 10}') % of one core (over ${window} s)"
echo "  RSS: $(( rss / 1024 )) MiB (peak $(( hwm / 1024 )) MiB)"
echo "  CPU taking them in: ${taking_in_ms} ms (first ${warmup} s)"
