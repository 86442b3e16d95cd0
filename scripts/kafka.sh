#!/usr/bin/env bash
# Throwaway single-node Apache Kafka (KRaft, broker+controller in one JVM) for tests.
# Jars come from Maven Central via tests/kafka/pom.xml; no Docker, no tarball.
#
#   scripts/kafka.sh fetch           download the jars into .cache/kafka/libs (once per version)
#   scripts/kafka.sh start           make test certificates, format + start a broker on free
#                                    127.0.0.1 ports, wait until ready, write
#                                    .cache/kafka/current.env, print the PLAINTEXT bootstrap address
#   scripts/kafka.sh stop            stop it (SIGTERM, SIGKILL after 20 s) and delete its data
#   scripts/kafka.sh restart-broker  stop and start the same broker again (same ports, certs, data)
#
# Listeners (each on its own free port; current.env exports the addresses):
#   PLAINTEXT  TOUCHSTREAM_TEST_BROKERS           no TLS, no auth (also the inter-broker listener)
#   SSL        TOUCHSTREAM_TEST_BROKERS_SSL       TLS, no client auth
#   SASL_SSL   TOUCHSTREAM_TEST_BROKERS_SASL_SSL  TLS + SASL SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN
#   MTLS       TOUCHSTREAM_TEST_BROKERS_MTLS      TLS, client certificate required (security protocol SSL)
# No authorizer: every authenticated client may do anything.
# Users (fixed; TOUCHSTREAM_TEST_{SCRAM,SCRAM512,PLAIN}_{USER,PASSWORD}):
#   alice/alice-secret (SCRAM-SHA-256), bob/bob-secret (SCRAM-SHA-512), carol/carol-secret (PLAIN).
# TLS material, made fresh by every `start` by scripts/test-certs.sh (openssl; EC P-256, PEM,
# keys unencrypted PKCS#8), in TOUCHSTREAM_TEST_TLS_DIR = .cache/kafka/<run>/tls:
#   ca.pem ca.key                  test CA; the broker certificate and client.pem are signed by it
#   server.pem server.key          broker certificate, SAN IP:127.0.0.1 and DNS:localhost
#   client.pem client.key          client certificate for MTLS (CN=touchstream-test-client)
#   other-ca.pem other-ca.key      an unrelated CA that the broker does not trust
#   other-client.pem other-client.key  client certificate signed by other-ca (must be rejected)
#
# Env: KAFKA_VERSION (default below), KAFKA_HEAP_OPTS (default -Xms256m -Xmx512m),
#      KAFKA_START_TIMEOUT seconds (default 90).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KAFKA_VERSION=${KAFKA_VERSION:-4.4.0}
CACHE=$ROOT/.cache/kafka
LIBS=$CACHE/libs
ENV_FILE=$CACHE/current.env
START_TIMEOUT=${KAFKA_START_TIMEOUT:-90}
# Test users, created at storage-format time (SCRAM) or in the listener's JAAS config (PLAIN).
SCRAM_USER=alice SCRAM_PASSWORD=alice-secret        # SCRAM-SHA-256
SCRAM512_USER=bob SCRAM512_PASSWORD=bob-secret      # SCRAM-SHA-512
PLAIN_USER=carol PLAIN_PASSWORD=carol-secret        # PLAIN

log() { echo "kafka.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# ---- fetch ------------------------------------------------------------------
fetch() {
  if [[ $(cat "$LIBS/.version" 2>/dev/null) == "$KAFKA_VERSION" ]]; then return; fi
  command -v mvn >/dev/null || die "mvn not found (needed to fetch Kafka from Maven Central)"
  log "fetching Kafka $KAFKA_VERSION jars from Maven Central..."
  local tmp=$LIBS.tmp
  rm -rf "$tmp" && mkdir -p "$CACHE"
  mvn -B -q -f "$ROOT/tests/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies -DoutputDirectory="$tmp" >"$CACHE/fetch.log" 2>&1 ||
    { cat "$CACHE/fetch.log" >&2; die "mvn could not fetch Kafka $KAFKA_VERSION"; }
  echo "$KAFKA_VERSION" >"$tmp/.version"   # marker, written only after a full copy
  rm -rf "$LIBS" && mv "$tmp" "$LIBS"
  log "jars in .cache/kafka/libs ($(ls "$LIBS" | wc -l) files)"
}

# ---- helpers ----------------------------------------------------------------
# $1 free loopback ports on one line (all bound at once so they differ).
free_ports() {
  python3 -c '
import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in ss))' "$1"
}

# The PEM file $1 as one properties value: newlines written as \n escapes.
pem_value() { awk '{ printf "%s\\n", $0 }' "$1"; }

# A random Kafka cluster id: 16 random bytes, base64url without padding, not starting with "-".
cluster_id() {
  python3 -c '
import base64, uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    if not s.startswith("-"): print(s); break'
}

# True if $1 is a live process running kafka.Kafka (guards against recycled pids).
is_kafka_pid() { [[ -n ${1:-} ]] && grep -qa 'kafka\.Kafka' "/proc/$1/cmdline" 2>/dev/null; }

# Runs a Kafka class with the jars and our log4j2 config, with the run dir as cwd
# (all paths in the config files are relative to it).
java_in_rundir() {
  (cd "$CACHE/$KAFKA_RUN_DIR" && exec java -cp "$LIBS/*" -Dlog4j2.configurationFile=log4j2.properties "$@")
}

# Writes server.properties and log4j2.properties into the run dir (TLS material made already).
write_configs() {
  local dir=$CACHE/$KAFKA_RUN_DIR
  local p=127.0.0.1
  local secured="SSL://$p:$KAFKA_SSL_PORT,SASL_SSL://$p:$KAFKA_SASL_SSL_PORT,MTLS://$p:$KAFKA_MTLS_PORT"
  cat >"$dir/server.properties" <<EOF
# Single-node KRaft test cluster written by scripts/kafka.sh
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://$p:$KAFKA_BROKER_PORT,$secured,CONTROLLER://$p:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$p:$KAFKA_BROKER_PORT,$secured
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL,MTLS:SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
# TLS of the SSL, SASL_SSL and MTLS listeners: PEM given inline (no Java keystore files).
ssl.keystore.type=PEM
ssl.keystore.certificate.chain=$(pem_value "$dir/tls/server.pem")
ssl.keystore.key=$(pem_value "$dir/tls/server.key")
ssl.truststore.type=PEM
ssl.truststore.certificates=$(pem_value "$dir/tls/ca.pem")
listener.name.mtls.ssl.client.auth=required
# SASL on SASL_SSL: SCRAM users are created by the storage format (--add-scram), PLAIN users here.
sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512,PLAIN
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$PLAIN_USER="$PLAIN_PASSWORD";
controller.listener.names=CONTROLLER
# Static one-voter quorum: no dynamic-quorum bootstrap (--standalone) needed.
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
log.dirs=data
num.partitions=1
auto.create.topics.enable=true
# One replica of everything, and small internal topics so they are created fast.
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
  cat >"$dir/log4j2.properties" <<'EOF'
# INFO to server.log in the run dir, nothing on the console.
appender.file.type = File
appender.file.name = file
appender.file.fileName = server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
# Per-request/state-change chatter is noise for tests.
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
EOF
}

save_env() {
  cat >"$ENV_FILE" <<EOF
export TOUCHSTREAM_TEST_BROKERS=127.0.0.1:$KAFKA_BROKER_PORT
export TOUCHSTREAM_TEST_BROKERS_SSL=127.0.0.1:$KAFKA_SSL_PORT
export TOUCHSTREAM_TEST_BROKERS_SASL_SSL=127.0.0.1:$KAFKA_SASL_SSL_PORT
export TOUCHSTREAM_TEST_BROKERS_MTLS=127.0.0.1:$KAFKA_MTLS_PORT
export TOUCHSTREAM_TEST_TLS_DIR=$(printf %q "$CACHE/$KAFKA_RUN_DIR/tls")
export TOUCHSTREAM_TEST_SCRAM_USER=$SCRAM_USER
export TOUCHSTREAM_TEST_SCRAM_PASSWORD=$SCRAM_PASSWORD
export TOUCHSTREAM_TEST_SCRAM512_USER=$SCRAM512_USER
export TOUCHSTREAM_TEST_SCRAM512_PASSWORD=$SCRAM512_PASSWORD
export TOUCHSTREAM_TEST_PLAIN_USER=$PLAIN_USER
export TOUCHSTREAM_TEST_PLAIN_PASSWORD=$PLAIN_PASSWORD
KAFKA_PID=$KAFKA_PID
KAFKA_BROKER_PORT=$KAFKA_BROKER_PORT
KAFKA_SSL_PORT=$KAFKA_SSL_PORT
KAFKA_SASL_SSL_PORT=$KAFKA_SASL_SSL_PORT
KAFKA_MTLS_PORT=$KAFKA_MTLS_PORT
KAFKA_CONTROLLER_PORT=$KAFKA_CONTROLLER_PORT
KAFKA_RUN_DIR=$KAFKA_RUN_DIR
EOF
}

load_env() { [[ -f $ENV_FILE ]] && source "$ENV_FILE"; }

# Launch the broker JVM in the background (config already written, storage formatted).
launch() {
  local opts=(${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m} -XX:+UseG1GC -XX:MaxGCPauseMillis=20
              -Djava.awt.headless=true)
  # Not via java_in_rundir: the backgrounded command must be the JVM itself so $! is its pid.
  # log4j2's own shutdown hook would stop logging halfway through Kafka's graceful shutdown.
  (cd "$CACHE/$KAFKA_RUN_DIR" &&
    exec java "${opts[@]}" -cp "$LIBS/*" -Dlog4j2.configurationFile=log4j2.properties \
      -Dlog4j2.shutdownHookEnabled=false \
      kafka.Kafka server.properties >stdout.log 2>&1 </dev/null) &
  KAFKA_PID=$!
  save_env   # right away, so `stop` can clean up even if waiting fails
  # Until the subshell has exec'd the JVM, is_kafka_pid would take it for a dead broker.
  local i
  for ((i = 0; i < 500; i++)); do is_kafka_pid "$KAFKA_PID" && break; sleep 0.01; done
}

# Wait for "Kafka Server started" (logged once the broker is unfenced and has caught up
# on metadata) and for all broker ports to accept connections.
wait_ready() {
  local dir=$CACHE/$KAFKA_RUN_DIR deadline=$((SECONDS + START_TIMEOUT)) since=$1
  while ((SECONDS < deadline)); do
    if ! is_kafka_pid "$KAFKA_PID"; then
      log "broker process exited during startup"; tail_logs; return 1
    fi
    if tail -n "+$since" "$dir/server.log" 2>/dev/null | grep -q 'Kafka Server started' &&
       ports_open "$KAFKA_BROKER_PORT" "$KAFKA_SSL_PORT" "$KAFKA_SASL_SSL_PORT" "$KAFKA_MTLS_PORT"; then
      return 0
    fi
    sleep 0.2
  done
  local port closed=""
  for port in "$KAFKA_BROKER_PORT" "$KAFKA_SSL_PORT" "$KAFKA_SASL_SSL_PORT" "$KAFKA_MTLS_PORT"; do
    ports_open "$port" || closed="$closed $port"
  done
  log "broker not ready after ${START_TIMEOUT}s (ports not accepting:${closed:- none})"; tail_logs; return 1
}

ports_open() {
  local port
  for port; do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || return 1; done
}

tail_logs() {
  local dir=$CACHE/$KAFKA_RUN_DIR
  log "---- tail of $KAFKA_RUN_DIR/server.log ----"; tail -n 60 "$dir/server.log" >&2 2>/dev/null || true
  log "---- tail of $KAFKA_RUN_DIR/stdout.log ----"; tail -n 30 "$dir/stdout.log" >&2 2>/dev/null || true
}

# SIGTERM the broker (graceful, flushes data), SIGKILL if it is still up after 20 s.
terminate() {
  is_kafka_pid "${KAFKA_PID:-}" || return 0
  kill -TERM "$KAFKA_PID" 2>/dev/null || true
  for _ in $(seq 100); do is_kafka_pid "$KAFKA_PID" || return 0; sleep 0.2; done
  log "broker $KAFKA_PID ignored SIGTERM for 20 s; sending SIGKILL"
  kill -KILL "$KAFKA_PID" 2>/dev/null || true
  while is_kafka_pid "$KAFKA_PID"; do sleep 0.1; done
}

# ---- subcommands ------------------------------------------------------------
start() {
  if load_env; then
    is_kafka_pid "$KAFKA_PID" && die "already running (pid $KAFKA_PID, $TOUCHSTREAM_TEST_BROKERS); run '$0 stop' first"
    rm -rf "${CACHE:?}/$KAFKA_RUN_DIR" "$ENV_FILE"   # stale leftovers of a dead broker
  fi
  command -v java >/dev/null || die "java not found (Kafka needs Java 17+)"
  command -v openssl >/dev/null || die "openssl not found (makes the test certificates)"
  fetch
  read -r KAFKA_BROKER_PORT KAFKA_CONTROLLER_PORT KAFKA_SSL_PORT KAFKA_SASL_SSL_PORT KAFKA_MTLS_PORT \
    < <(free_ports 5)
  KAFKA_RUN_DIR=run-$KAFKA_BROKER_PORT
  mkdir -p "$CACHE/$KAFKA_RUN_DIR"
  local t0=$SECONDS
  bash "$ROOT/scripts/test-certs.sh" "$CACHE/$KAFKA_RUN_DIR/tls" --clients ||
    die "could not make the test certificates with openssl"
  write_configs
  java_in_rundir kafka.tools.StorageTool format -t "$(cluster_id)" -c server.properties \
    --add-scram "SCRAM-SHA-256=[name=$SCRAM_USER,password=$SCRAM_PASSWORD]" \
    --add-scram "SCRAM-SHA-512=[name=$SCRAM512_USER,password=$SCRAM512_PASSWORD]" \
    >"$CACHE/$KAFKA_RUN_DIR/format.log" 2>&1 ||
    { cat "$CACHE/$KAFKA_RUN_DIR/format.log" >&2; die "storage format failed"; }
  launch
  wait_ready 1 || { stop; die "Kafka failed to start"; }
  log "Kafka $KAFKA_VERSION ready in $((SECONDS - t0))s: pid $KAFKA_PID, brokers 127.0.0.1:$KAFKA_BROKER_PORT" \
    "(SSL :$KAFKA_SSL_PORT, SASL_SSL :$KAFKA_SASL_SSL_PORT, MTLS :$KAFKA_MTLS_PORT), logs .cache/kafka/$KAFKA_RUN_DIR"
  echo "127.0.0.1:$KAFKA_BROKER_PORT"
}

stop() {
  if ! load_env; then log "not running"; return 0; fi
  terminate
  rm -rf "${CACHE:?}/$KAFKA_RUN_DIR" "$ENV_FILE"
  log "stopped"
}

restart_broker() {
  load_env || die "not running"
  terminate
  # Only look at log lines written after this restart.
  local since=$(($(wc -l <"$CACHE/$KAFKA_RUN_DIR/server.log") + 1))
  launch
  wait_ready "$since" || { terminate; die "Kafka failed to restart (logs kept in $CACHE/$KAFKA_RUN_DIR)"; }
  log "restarted: pid $KAFKA_PID, brokers 127.0.0.1:$KAFKA_BROKER_PORT"
  echo "127.0.0.1:$KAFKA_BROKER_PORT"
}

case ${1:-} in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  restart-broker) restart_broker ;;
  *) echo "usage: $0 fetch|start|stop|restart-broker" >&2; exit 2 ;;
esac
