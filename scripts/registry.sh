#!/usr/bin/env bash
# Throwaway Confluent-compatible schema registry for tests: Apicurio Registry with its
# in-memory (H2) storage, serving the Confluent API under /apis/ccompat/v7.
# The distribution is the `all` tar.gz that Apicurio attaches to io.apicurio:apicurio-registry-app
# on Maven Central; no Docker, no other download site. It does not need Kafka.
#
#   scripts/registry.sh fetch   download + unpack the distribution into .cache/registry/dist (once per version)
#   scripts/registry.sh start   start it on free 127.0.0.1 ports (http and https), wait until
#                               /subjects answers on both, write .cache/registry/current.env,
#                               print the Confluent base URL (http)
#   scripts/registry.sh stop    stop it (SIGTERM, SIGKILL after 20 s); all its data is gone with it
#
# current.env exports the Confluent base URLs TOUCHSTREAM_TEST_REGISTRY (http) and
# TOUCHSTREAM_TEST_REGISTRY_HTTPS (https, same registry), and TOUCHSTREAM_TEST_REGISTRY_CA: the
# test CA (PEM) of the https certificate (SAN IP:127.0.0.1, DNS:localhost), made fresh by every
# `start` by scripts/test-certs.sh in .cache/registry/<run>/tls.
#
# Env: APICURIO_VERSION (default below; 2.x and 3.0.x run on Java 17, 3.1 and later need Java 21+),
#      REGISTRY_JAVA   java binary to use (default: $JAVA_HOME/bin/java, else `java` on PATH),
#      REGISTRY_HEAP_OPTS (default -Xms64m -Xmx512m), REGISTRY_START_TIMEOUT seconds (default 90).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
APICURIO_VERSION=${APICURIO_VERSION:-3.0.9}
CACHE=$ROOT/.cache/registry
DIST=$CACHE/dist
ENV_FILE=$CACHE/current.env
START_TIMEOUT=${REGISTRY_START_TIMEOUT:-90}
CCOMPAT_PATH=/apis/ccompat/v7
# Marker on the JVM's command line, so a recycled pid is never taken for ours.
MARKER=touchstream.test.registry

log() { echo "registry.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# ---- fetch ------------------------------------------------------------------
fetch() {
  if [[ $(cat "$DIST/.version" 2>/dev/null) == "$APICURIO_VERSION" ]]; then return; fi
  command -v mvn >/dev/null || die "mvn not found (needed to fetch Apicurio Registry from Maven Central)"
  local coords=io.apicurio:apicurio-registry-app:$APICURIO_VERSION:tar.gz:all
  log "fetching $coords from Maven Central..."
  local tmp=$DIST.tmp dl=$CACHE/download
  rm -rf "$tmp" "$dl" && mkdir -p "$tmp" "$dl"
  mvn -B -q dependency:copy -Dartifact="$coords" -DoutputDirectory="$dl" \
    >"$CACHE/fetch.log" 2>&1 ||
    { cat "$CACHE/fetch.log" >&2; die "mvn could not fetch $coords"; }
  tar -xzf "$dl"/*.tar.gz -C "$tmp" || die "could not unpack $(ls "$dl")"
  rm -rf "$dl"
  echo "$APICURIO_VERSION" >"$tmp/.version"   # marker, written only after a full unpack
  rm -rf "$DIST" && mv "$tmp" "$DIST"
  log "Apicurio Registry $APICURIO_VERSION in .cache/registry/dist ($(du -sh "$DIST" | cut -f1))"
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

# The launcher jar: quarkus-run.jar (fast-jar layout, 3.1+) or *-runner.jar (legacy layout).
launcher_jar() {
  if [[ -f $DIST/quarkus-run.jar ]]; then echo quarkus-run.jar; return; fi
  local j
  for j in "$DIST"/*-runner.jar; do [[ -f $j ]] && { basename "$j"; return; }; done
  die "no quarkus-run.jar or *-runner.jar in .cache/registry/dist"
}

# Java feature version of binary $1 (8 for 1.8.x, 17 for 17.0.x, ...), empty if it does not run.
java_major() {
  "$1" -version 2>&1 | sed -nE '1s/.*version "(1\.)?([0-9]+).*/\2/p'
}

required_java() {
  case $APICURIO_VERSION in
    2.* | 3.0.*) echo 17 ;;
    *) echo 21 ;;
  esac
}

pick_java() {
  local need j major
  need=$(required_java)
  j=${REGISTRY_JAVA:-}
  if [[ -z $j && -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then j=$JAVA_HOME/bin/java; fi
  if [[ -z $j ]]; then j=$(command -v java) || die "java not found (Apicurio $APICURIO_VERSION needs Java $need+)"; fi
  major=$(java_major "$j")
  [[ -n $major ]] || die "could not run $j"
  ((major >= need)) ||
    die "Apicurio $APICURIO_VERSION needs Java $need+, $j is Java $major; set REGISTRY_JAVA or JAVA_HOME to a newer JDK"
  echo "$j"
}

# True if $1 is a live process carrying our marker.
is_registry_pid() { [[ -n ${1:-} ]] && grep -qa "$MARKER" "/proc/$1/cmdline" 2>/dev/null; }

save_env() {
  cat >"$ENV_FILE" <<EOF
export TOUCHSTREAM_TEST_REGISTRY=http://127.0.0.1:$REGISTRY_PORT$CCOMPAT_PATH
export TOUCHSTREAM_TEST_REGISTRY_HTTPS=https://127.0.0.1:$REGISTRY_HTTPS_PORT$CCOMPAT_PATH
export TOUCHSTREAM_TEST_REGISTRY_CA=$(printf %q "$CACHE/$REGISTRY_RUN_DIR/tls/ca.pem")
REGISTRY_PID=$REGISTRY_PID
REGISTRY_PORT=$REGISTRY_PORT
REGISTRY_HTTPS_PORT=$REGISTRY_HTTPS_PORT
REGISTRY_RUN_DIR=$REGISTRY_RUN_DIR
APICURIO_VERSION=$APICURIO_VERSION
EOF
}

load_env() { [[ -f $ENV_FILE ]] && source "$ENV_FILE"; }

launch() {
  local java=$1 jar opts
  jar=$(launcher_jar)
  opts=(${REGISTRY_HEAP_OPTS:--Xms64m -Xmx512m} -XX:+UseSerialGC -XX:TieredStopAtLevel=1
        -Djava.awt.headless=true "-D$MARKER=$REGISTRY_PORT"
        -Dquarkus.http.host=127.0.0.1 "-Dquarkus.http.port=$REGISTRY_PORT"
        # https on a second port with the test certificate (paths relative to the run dir);
        # plain http stays enabled on the first.
        "-Dquarkus.http.ssl-port=$REGISTRY_HTTPS_PORT" -Dquarkus.http.insecure-requests=enabled
        -Dquarkus.http.ssl.certificate.files=tls/server.pem
        -Dquarkus.http.ssl.certificate.key-files=tls/server.key
        # 3.x also opens a management interface, by default on 0.0.0.0:9000: keep it on
        # loopback and on a random port so that parallel registries do not collide.
        -Dquarkus.management.host=127.0.0.1 -Dquarkus.management.port=0
        -Dquarkus.log.console.color=false)
  # The backgrounded command must be the JVM itself so that $! is its pid.
  (cd "$CACHE/$REGISTRY_RUN_DIR" &&
    exec "$java" "${opts[@]}" -jar "$DIST/$jar" >registry.log 2>&1 </dev/null) &
  REGISTRY_PID=$!
  save_env   # right away, so `stop` can clean up even if waiting fails
}

wait_ready() {
  local deadline=$((SECONDS + START_TIMEOUT))
  local url=http://127.0.0.1:$REGISTRY_PORT$CCOMPAT_PATH/subjects
  local https_url=https://127.0.0.1:$REGISTRY_HTTPS_PORT$CCOMPAT_PATH/subjects
  local ca=$CACHE/$REGISTRY_RUN_DIR/tls/ca.pem
  while ((SECONDS < deadline)); do
    if ! is_registry_pid "$REGISTRY_PID"; then
      log "registry process exited during startup"; tail_log; return 1
    fi
    if curl -sf -o /dev/null --max-time 2 "$url" &&
       curl -sf -o /dev/null --max-time 2 --cacert "$ca" "$https_url"; then
      return 0
    fi
    sleep 0.2
  done
  log "registry not ready after ${START_TIMEOUT}s"; tail_log; return 1
}

tail_log() {
  log "---- tail of $REGISTRY_RUN_DIR/registry.log ----"
  tail -n 60 "$CACHE/$REGISTRY_RUN_DIR/registry.log" >&2 2>/dev/null || true
}

# SIGTERM (Quarkus shuts down in about a second), SIGKILL if still up after 20 s.
terminate() {
  is_registry_pid "${REGISTRY_PID:-}" || return 0
  kill -TERM "$REGISTRY_PID" 2>/dev/null || true
  for _ in $(seq 100); do is_registry_pid "$REGISTRY_PID" || return 0; sleep 0.2; done
  log "registry $REGISTRY_PID ignored SIGTERM for 20 s; sending SIGKILL"
  kill -KILL "$REGISTRY_PID" 2>/dev/null || true
  while is_registry_pid "$REGISTRY_PID"; do sleep 0.1; done
}

# ---- subcommands ------------------------------------------------------------
start() {
  if load_env; then
    is_registry_pid "$REGISTRY_PID" &&
      die "already running (pid $REGISTRY_PID, $TOUCHSTREAM_TEST_REGISTRY); run '$0 stop' first"
    rm -rf "${CACHE:?}/$REGISTRY_RUN_DIR" "$ENV_FILE"   # stale leftovers of a dead registry
  fi
  command -v curl >/dev/null || die "curl not found (used to wait for the registry)"
  command -v openssl >/dev/null || die "openssl not found (makes the test certificate)"
  local java
  java=$(pick_java)
  fetch
  read -r REGISTRY_PORT REGISTRY_HTTPS_PORT < <(free_ports 2)
  REGISTRY_RUN_DIR=run-$REGISTRY_PORT
  mkdir -p "$CACHE/$REGISTRY_RUN_DIR"
  local t0=$SECONDS
  bash "$ROOT/scripts/test-certs.sh" "$CACHE/$REGISTRY_RUN_DIR/tls" ||
    die "could not make the test certificate with openssl"
  launch "$java"
  wait_ready || { stop; die "registry failed to start"; }
  log "Apicurio Registry $APICURIO_VERSION ready in $((SECONDS - t0))s: pid $REGISTRY_PID," \
    "https on port $REGISTRY_HTTPS_PORT, logs .cache/registry/$REGISTRY_RUN_DIR/registry.log"
  echo "http://127.0.0.1:$REGISTRY_PORT$CCOMPAT_PATH"
}

stop() {
  if ! load_env; then log "not running"; return 0; fi
  terminate
  # Keep the last log for post-mortems; everything else (in-memory data) is gone anyway.
  cp "$CACHE/$REGISTRY_RUN_DIR/registry.log" "$CACHE/last-run.log" 2>/dev/null || true
  rm -rf "${CACHE:?}/$REGISTRY_RUN_DIR" "$ENV_FILE"
  log "stopped"
}

case ${1:-} in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 fetch|start|stop" >&2; exit 2 ;;
esac
