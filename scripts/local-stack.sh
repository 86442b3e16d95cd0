#!/usr/bin/env bash
# The topology of docker-compose.yml with local processes, for machines without a container
# engine: Kafka (KRaft, scripts/kafka.sh), the schema registry (scripts/registry.sh), the input
# topic, N Touchstream replicas with distinct transactional ids (each a stable group member) and
# HTTP ports, Prometheus scraping them with deploy/prometheus/alerts.yml (when `prometheus` is
# installed: Debian package `prometheus`), and the journey simulator as load.
#
#   scripts/local-stack.sh [--replicas N] [--customers N] [--rate EVENTS_PER_S] [--seconds S]
#                          [--http-base PORT] [--prometheus-port PORT] [--no-load] [--no-prometheus]
#
# --seconds 0 (the default) runs until Ctrl-C. At the end it prints what each replica did (from
# its /metrics) and exits non-zero when a replica died or no conversion was written.
#
# Env: BROKERS=host:port uses a running broker (nothing is started or stopped then; the registry
#      is started only without BROKERS); TOPIC_PREFIX=p names every topic p.<name> (separate runs
#      on one broker);
#      TOUCHSTREAM_BIN, SIM_BIN: the binaries (default: target/release, built when missing).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPLICAS=2 CUSTOMERS=20000 RATE=2000 SECONDS_TO_RUN=0 HTTP_BASE=9464 PROM_PORT=9090 LOAD=1 PROM=1
while [[ $# -gt 0 ]]; do
  case $1 in
    --replicas) REPLICAS=$2; shift 2 ;;
    --customers) CUSTOMERS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --seconds) SECONDS_TO_RUN=$2; shift 2 ;;
    --http-base) HTTP_BASE=$2; shift 2 ;;
    --prometheus-port) PROM_PORT=$2; shift 2 ;;
    --no-load) LOAD=0; shift ;;
    --no-prometheus) PROM=0; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "local-stack.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

log() { echo "local-stack.sh: $*" >&2; }
RUN=$(mktemp -d "${TMPDIR:-/tmp}/touchstream-local.XXXXXX")
PIDS=()
STARTED_KAFKA=0 STARTED_REGISTRY=0

cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  [[ $STARTED_REGISTRY == 1 ]] && bash "$ROOT/scripts/registry.sh" stop >/dev/null 2>&1 || true
  [[ $STARTED_KAFKA == 1 ]] && bash "$ROOT/scripts/kafka.sh" stop >/dev/null 2>&1 || true
  log "logs kept in $RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- binaries
TOUCHSTREAM_BIN=${TOUCHSTREAM_BIN:-$ROOT/target/release/touchstream}
SIM_BIN=${SIM_BIN:-$ROOT/target/release/touchstream-sim}
if [[ ! -x $TOUCHSTREAM_BIN || ($LOAD == 1 && ! -x $SIM_BIN) ]]; then
  log "building the release binaries (once)..."
  (cd "$ROOT" && cargo build --release --locked -p touchstream -p touchstream-sim)
fi

# ---- Kafka and the registry
if [[ -z ${BROKERS:-} ]]; then
  BROKERS=$(bash "$ROOT/scripts/kafka.sh" start | tail -1)
  STARTED_KAFKA=1
  REGISTRY_URL=$(bash "$ROOT/scripts/registry.sh" start | tail -1)
  STARTED_REGISTRY=1
  log "Kafka at $BROKERS, schema registry at $REGISTRY_URL"
fi
GROUP=touchstream-local-$$
TOPIC_ENV=()
if [[ -n ${TOPIC_PREFIX:-} ]]; then
  for key in events conversions channels alerts dlq channel_partials changelog scores erasure erasure_audit; do
    TOPIC_ENV+=("TOUCHSTREAM__TOPICS__${key^^}=$TOPIC_PREFIX.$key")
  done
  TOPIC=$TOPIC_PREFIX.events
else
  TOPIC=touchstream.events
fi
# the input topic, as docker-compose's kafka-init job creates it (the changelog gets its partition count)
java -cp "$ROOT/.cache/kafka/libs/*" org.apache.kafka.tools.TopicCommand --bootstrap-server "$BROKERS" \
  --create --if-not-exists --topic "$TOPIC" --partitions 6 --replication-factor 1 >"$RUN/topic.log" 2>&1 ||
  { cat "$RUN/topic.log" >&2; exit 1; }

# ---- replicas: the same settings docker-compose.yml gives them
for ((i = 0; i < REPLICAS; i++)); do
  port=$((HTTP_BASE + i))
  env "${TOPIC_ENV[@]}" \
  TOUCHSTREAM__KAFKA__BROKERS=$BROKERS \
  TOUCHSTREAM__KAFKA__GROUP_ID=$GROUP \
  TOUCHSTREAM__KAFKA__TRANSACTIONAL_ID=$GROUP-$i \
  TOUCHSTREAM__LOG__FORMAT=json \
  TOUCHSTREAM__TOPICS__PARTITIONS=6 \
  TOUCHSTREAM__HTTP__LISTEN=127.0.0.1:$port \
    "$TOUCHSTREAM_BIN" run >"$RUN/touchstream-$i.log" 2>&1 &
  PIDS+=($!)
  log "replica $i: pid $!, http://127.0.0.1:$port (/metrics, /readyz), log $RUN/touchstream-$i.log"
done

# ---- Prometheus with the alert rules, scraping the replicas
if [[ $PROM == 1 ]] && command -v prometheus >/dev/null; then
  targets=$(for ((i = 0; i < REPLICAS; i++)); do printf '"127.0.0.1:%d",' $((HTTP_BASE + i)); done)
  cp "$ROOT/deploy/prometheus/alerts.yml" "$RUN/alerts.yml"
  cat >"$RUN/prometheus.yml" <<EOF
global: {scrape_interval: 2s, evaluation_interval: 2s}
rule_files: [alerts.yml]
scrape_configs:
  - job_name: touchstream
    static_configs: [{targets: [${targets%,}]}]
EOF
  prometheus --config.file="$RUN/prometheus.yml" --storage.tsdb.path="$RUN/prometheus-data" \
    --web.listen-address="127.0.0.1:$PROM_PORT" >"$RUN/prometheus.log" 2>&1 &
  PIDS+=($!)
  log "Prometheus: http://127.0.0.1:$PROM_PORT (rules from deploy/prometheus/alerts.yml)"
elif [[ $PROM == 1 ]]; then
  log "prometheus not installed (Debian package \`prometheus\`): no scraping"
fi

# ---- load: the journey simulator, paced
if [[ $LOAD == 1 ]]; then
  "$SIM_BIN" --customers "$CUSTOMERS" --kafka-brokers "$BROKERS" --kafka-topic "$TOPIC" --rate "$RATE" --quiet \
    >"$RUN/simulator.log" 2>&1 &
  PIDS+=($!)
  log "simulator: $CUSTOMERS customers at $RATE events/s into $TOPIC"
fi

# ---- run, then report
started=$(date +%s)
while [[ $SECONDS_TO_RUN == 0 || $(($(date +%s) - started)) -lt $SECONDS_TO_RUN ]]; do
  sleep 1
  for ((i = 0; i < REPLICAS; i++)); do
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
      log "replica $i exited; its log:"; tail -20 "$RUN/touchstream-$i.log" >&2; exit 1
    fi
  done
done
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m || index($1, m "{") == 1 { s += $2 } END { print s + 0 }'; }
total=0
for ((i = 0; i < REPLICAS; i++)); do
  port=$((HTTP_BASE + i))
  events=$(metric "$port" touchstream_events_total)
  conversions=$(metric "$port" touchstream_conversions_total)
  alerts=$(metric "$port" touchstream_alerts_total)
  echo "replica $i: events $events, conversions $conversions, alerts $alerts"
  total=$((total + ${conversions%.*}))
done
[[ $total -gt 0 ]] || { log "no conversion written"; exit 1; }
