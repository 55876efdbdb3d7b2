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
# sample count. `profile-summary.py` (next to this script) reads them.
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
lib=$FERRY_CACHE/async-profiler-$version/linux-x64/libasyncProfiler.so
if [ ! -f "$lib" ]; then
  command -v mvn >/dev/null || die "maven is needed to fetch async-profiler (e2e/testbed/deps.sh)"
  log "fetching async-profiler $version from Maven Central"
  mvn -B -q -Dstyle.color=never dependency:get \
    -Dartifact="tools.profiler:async-profiler:$version" -Dtransitive=false >/dev/null \
    || die "maven could not fetch tools.profiler:async-profiler:$version"
  jar=$HOME/.m2/repository/tools/profiler/async-profiler/$version/async-profiler-$version.jar
  mkdir -p "$FERRY_CACHE/async-profiler-$version"
  (cd "$FERRY_CACHE/async-profiler-$version" && unzip -qo "$jar" 'linux-x64/*') \
    || die "unpacking $jar"
fi

jcmd=$(dirname "$(bash "$FERRY_ROOT/e2e/testbed/cassandra/cassandra.sh" java)")/jcmd
out=$FERRY_RUN/profiles
mkdir -p "$out"

pid_of() {
  local f=$FERRY_RUN/cassandra/$1/pid
  [ -f "$f" ] || die "no pid file for node $1 ($f): is the bed up?"
  cat "$f"
}

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

for n in "${nodes[@]}"; do
  agent "$(pid_of "$n")" "start,event=$event,interval=$interval,threads" \
    || die "async-profiler did not start in $n"
done
status=0
"$@" || status=$?
for n in "${nodes[@]}"; do
  agent "$(pid_of "$n")" "stop,collapsed,file=$out/$name-$n.collapsed" \
    || die "async-profiler did not stop in $n"
  log "profile of $n: $out/$name-$n.collapsed"
done
exit "$status"
