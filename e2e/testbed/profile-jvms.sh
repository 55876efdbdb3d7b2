#!/usr/bin/env bash
# CPU profiles of the test bed's Cassandra JVMs while a command runs, taken
# with async-profiler (from Maven Central, cached under ~/.cache/ferry):
# it samples CPU time (perf events, else an interval timer) in every thread,
# the JVM's own included (JIT compilers, GC, native code), which JDK Flight
# Recorder's execution samples do not.
#
#   profile-jvms.sh NAME NODES -- COMMAND...
#
# NAME names the output; NODES is a comma-separated list of the bed's nodes
# (source1,source2,source3). For each node it writes
# $FERRY_RUN/profiles/NAME-NODE.collapsed: one line per distinct stack,
# thread first (`[thread name tid=N]`), frames separated by `;`, then the
# sample count, and NAME-NODE.collapsed.interval-ns, the CPU time a sample
# stands for. `profile-summary.py` (next to this script) reads them.
#
# Environment: FERRY_PROFILE_INTERVAL (CPU time between samples, default
# 1ms = 1000000 ns), ASYNC_PROFILER_VERSION (3.0).
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ $# -ge 3 ] && [ "$3" = "--" ] || die "usage: profile-jvms.sh NAME NODES -- COMMAND..."
name=$1
IFS=, read -r -a nodes <<<"$2"
shift 3

version=${ASYNC_PROFILER_VERSION:-3.0}
interval=${FERRY_PROFILE_INTERVAL:-1000000}
case $(uname -m) in
  x86_64) platform=linux-x64 ;;
  aarch64) platform=linux-arm64 ;;
  *) die "async-profiler's jar has no library for $(uname -m)" ;;
esac
lib=$FERRY_CACHE/async-profiler-$version/$platform/libasyncProfiler.so
if [ ! -f "$lib" ]; then
  command -v mvn >/dev/null || die "maven is needed to fetch async-profiler (e2e/testbed/deps.sh)"
  log "fetching async-profiler $version from Maven Central"
  mvn -B -q -Dstyle.color=never dependency:get \
    -Dartifact="tools.profiler:async-profiler:$version" -Dtransitive=false >/dev/null \
    || die "maven could not fetch tools.profiler:async-profiler:$version"
  jar=$HOME/.m2/repository/tools/profiler/async-profiler/$version/async-profiler-$version.jar
  python3 -m zipfile -e "$jar" "$FERRY_CACHE/async-profiler-$version" || die "unpacking $jar"
  [ -f "$lib" ] || die "$jar holds no $platform/libasyncProfiler.so"
fi

java=$(bash "$FERRY_ROOT/e2e/testbed/cassandra/cassandra.sh" java) || die "no Java for the bed's Cassandra"
jcmd=$(dirname "$java")/jcmd
[ -x "$jcmd" ] || die "no jcmd beside $java (a full JDK is needed, not a runtime)"
out=$FERRY_RUN/profiles
mkdir -p "$out"

pids=()
for n in "${nodes[@]}"; do
  f=$FERRY_RUN/cassandra/$n/pid
  [ -f "$f" ] || die "no pid file for node $n ($f): is the bed up?"
  pids+=("$(cat "$f")")
done

# The options are quoted for jcmd's own parser, which would read
# `start,event=cpu` as an option of jcmd's named `start,event`; and jcmd
# exits 0 whatever the agent answers, so its "return code" is checked.
agent() {
  local answer
  answer=$("$jcmd" "$1" JVMTI.agent_load "$lib" "\"$2\"") || return 1
  grep -q 'return code: 0' <<<"$answer" || { log "$answer"; return 1; }
}

# perf events need kernel.perf_event_paranoid <= 1 (or root); else the
# interval timer, which samples CPU time too but not inside the kernel.
event=cpu
if [ "$(cat /proc/sys/kernel/perf_event_paranoid 2>/dev/null || echo 2)" -gt 1 ] && [ "$(id -u)" != 0 ]; then
  event=itimer
fi

# Every profiler started is stopped, whatever happens to the command (a
# profiler left running would tax every later run, and refuse the next
# start), and writes its stacks if it can.
started=()
stop_all() {
  local i n
  for i in "${!started[@]}"; do
    n=${nodes[$i]}
    if agent "${started[$i]}" "stop,collapsed,file=$out/$name-$n.collapsed"; then
      echo "$interval" >"$out/$name-$n.collapsed.interval-ns"
      log "profile of $n: $out/$name-$n.collapsed ($event, a sample every $interval ns of CPU)"
    else
      log "async-profiler did not stop cleanly in $n"
    fi
  done
  started=()
}
trap stop_all EXIT
trap 'exit 130' INT TERM

for i in "${!nodes[@]}"; do
  agent "${pids[$i]}" "start,event=$event,interval=$interval,threads" \
    || die "async-profiler did not start in ${nodes[$i]}"
  started[$i]=${pids[$i]}
done
status=0
"$@" || status=$?
stop_all
exit "$status"
