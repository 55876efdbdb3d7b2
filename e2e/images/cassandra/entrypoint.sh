#!/bin/sh
# Starts Cassandra in the foreground from the environment, with the variables
# the usual Cassandra images honour:
#   CASSANDRA_CLUSTER_NAME   cluster_name                  (Test Cluster)
#   CASSANDRA_SEEDS          comma-separated seeds, names or IPs (own address)
#   CASSANDRA_DC, CASSANDRA_RACK   GossipingPropertyFileSnitch (dc1, rack1)
#   CASSANDRA_LISTEN_ADDRESS listen_address; "auto" (default) = the pod IP
#                            ($POD_IP if set, else this host name's address)
#   CASSANDRA_BROADCAST_ADDRESS, CASSANDRA_RPC_ADDRESS (0.0.0.0),
#   CASSANDRA_BROADCAST_RPC_ADDRESS                (the listen address)
#   CASSANDRA_NUM_TOKENS     num_tokens                    (16)
#   CASSANDRA_ENDPOINT_SNITCH                             (GossipingPropertyFileSnitch)
#   CASSANDRA_AUTHENTICATOR, CASSANDRA_AUTHORIZER          (AllowAll*)
#   CASSANDRA_AUTO_BOOTSTRAP                               (true)
#   CASSANDRA_WRITE_REQUEST_TIMEOUT_MS  write_request_timeout (2000, Cassandra's own)
#   MAX_HEAP_SIZE, HEAP_NEWSIZE  -Xmx/-Xms and -Xmn       (512M, 128M)
#   JVM_EXTRA_OPTS           appended to the JVM's options
# Extra arguments are passed to the JVM before the main class.
#
# Like the official image, it starts as root by default: it makes the data
# directory the cassandra user's (a fresh volume may be root-owned, as the
# hostPath volumes of the local test bed are) and then drops to that user.
# Started as any other user (runAsUser), it runs as that user.
set -eu

if [ "$(id -u)" = 0 ]; then
  chown cassandra:cassandra /var/lib/cassandra
  find /var/lib/cassandra -xdev ! -user cassandra -exec chown cassandra:cassandra {} +
  exec su -p -s /bin/sh cassandra -c 'exec "$0" "$@"' "$0" "$@"
fi

CASSANDRA_HOME=/opt/cassandra
CONF=/var/lib/cassandra/conf

listen=${CASSANDRA_LISTEN_ADDRESS:-auto}
if [ "$listen" = auto ]; then
  listen=${POD_IP:-}
  [ -n "$listen" ] || listen=$(hostname -i 2>/dev/null | awk '{print $1}')
  [ -n "$listen" ] || { echo "entrypoint: cannot find this pod's IP; set CASSANDRA_LISTEN_ADDRESS" >&2; exit 1; }
fi
broadcast=${CASSANDRA_BROADCAST_ADDRESS:-$listen}
rpc=${CASSANDRA_RPC_ADDRESS:-0.0.0.0}
broadcast_rpc=${CASSANDRA_BROADCAST_RPC_ADDRESS:-$broadcast}
seeds=${CASSANDRA_SEEDS:-$broadcast}

# A seed given by name (a StatefulSet pod's DNS record) may not resolve for
# the first seconds of the pod's life; Cassandra exits if no seed resolves.
for seed in $(echo "$seeds" | tr ',' ' '); do
  case $seed in *[!0-9.:]*) ;; *) continue ;; esac
  i=0
  until nslookup "${seed%:*}" >/dev/null 2>&1 || [ $i -ge 60 ]; do i=$((i + 1)); sleep 1; done
done

mkdir -p "$CONF" /var/lib/cassandra/data /var/lib/cassandra/commitlog \
  /var/lib/cassandra/saved_caches /var/lib/cassandra/hints /var/lib/cassandra/cdc_raw
sed -e "s#@CLUSTER_NAME@#${CASSANDRA_CLUSTER_NAME:-Test Cluster}#" \
  -e "s#@NUM_TOKENS@#${CASSANDRA_NUM_TOKENS:-16}#" \
  -e "s#@ENDPOINT_SNITCH@#${CASSANDRA_ENDPOINT_SNITCH:-GossipingPropertyFileSnitch}#" \
  -e "s#@LISTEN_ADDRESS@#$listen#" -e "s#@BROADCAST_ADDRESS@#$broadcast#" \
  -e "s#@RPC_ADDRESS@#$rpc#" -e "s#@BROADCAST_RPC_ADDRESS@#$broadcast_rpc#" \
  -e "s#@SEEDS@#$seeds#" -e "s#@AUTO_BOOTSTRAP@#${CASSANDRA_AUTO_BOOTSTRAP:-true}#" \
  -e "s#@AUTHENTICATOR@#${CASSANDRA_AUTHENTICATOR:-AllowAllAuthenticator}#" \
  -e "s#@AUTHORIZER@#${CASSANDRA_AUTHORIZER:-AllowAllAuthorizer}#" \
  -e "s#@WRITE_REQUEST_TIMEOUT_MS@#${CASSANDRA_WRITE_REQUEST_TIMEOUT_MS:-2000}#" \
  "$CASSANDRA_HOME/conf/cassandra.yaml.in" >"$CONF/cassandra.yaml"
printf 'dc=%s\nrack=%s\nprefer_local=true\n' "${CASSANDRA_DC:-dc1}" "${CASSANDRA_RACK:-rack1}" \
  >"$CONF/cassandra-rackdc.properties"
cp "$CASSANDRA_HOME/conf/logback.xml" "$CONF/logback.xml"

heap=${MAX_HEAP_SIZE:-512M}
newsize=${HEAP_NEWSIZE:-128M}
echo "entrypoint: cluster '${CASSANDRA_CLUSTER_NAME:-Test Cluster}' dc ${CASSANDRA_DC:-dc1} rack ${CASSANDRA_RACK:-rack1}," \
  "listen $listen, seeds $seeds, heap $heap/$newsize"

# shellcheck disable=SC2086 # JVM_OPTS and JVM_EXTRA_OPTS are word lists
exec java -Xms"$heap" -Xmx"$heap" -Xmn"$newsize" -Xss256k -XX:+UseG1GC -XX:+ParallelRefProcEnabled \
  -XX:MaxTenuringThreshold=1 -XX:+PerfDisableSharedMem -XX:+ExitOnOutOfMemoryError \
  -Djava.net.preferIPv4Stack=true -javaagent:"$(ls $CASSANDRA_HOME/lib/jamm-*.jar | head -1)" \
  $(cat "$CASSANDRA_HOME/conf/jvm.options") ${JVM_EXTRA_OPTS:-} \
  -Dcassandra-foreground=yes -Dcassandra.config="file://$CONF/cassandra.yaml" \
  -Dcassandra.storagedir=/var/lib/cassandra -Dcassandra.logdir=/var/lib/cassandra/logs \
  -Dlogback.configurationFile="$CONF/logback.xml" -Dcassandra.jmx.local.port=7199 \
  "$@" -cp "$CONF:$CASSANDRA_HOME/lib/*" org.apache.cassandra.service.CassandraDaemon
