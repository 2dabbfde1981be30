#!/usr/bin/env bash
# Installs, starts and stops the services the tests talk to, on loopback:
#   Kafka protocol: Tansu 0.6.0 broker with SQLite storage   (127.0.0.1:${KAFKA_PORT:-9092})
#   MongoDB wire:   SecantusDB secantusd-rs 0.5.3-beta.196    (127.0.0.1:${MONGODB_PORT:-27017})
# It also installs headless Chromium + chromedriver for the dashboard's browser test, Debian's
# prometheus (with promtool) and tmux for the operator-tool tests (tests/ops.rs), Debian's
# prometheus-alertmanager for the Alertmanager alert channel's test (tests/alerting.rs), and the
# aiosmtpd SMTP server (PyPI, in a venv under .services/venv) that the email alert test runs,
# with the real Avro / Protobuf / Kafka clients (fastavro, protobuf, confluent-kafka) and Debian's
# protoc that write the format tests' records.
# Both services are separate processes; the runner only speaks the Kafka protocol and the MongoDB wire
# protocol to them, so real Kafka / Redpanda / MongoDB work the same.
#
# Usage: scripts/services.sh install | up | down | status
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
state="${RUNNER_SERVICES_DIR:-$root/.services}"
kafka_port="${KAFKA_PORT:-9092}"
mongo_port="${MONGODB_PORT:-27017}"
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '[services] %s\n' "$*" >&2; }

install() {
  # Headless Chromium and its WebDriver, for the dashboard's browser test.
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    log "installing chromium and chromium-driver (Debian packages)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    log "chromium and chromedriver already installed"
  fi
  # Prometheus (server and promtool) and tmux, for tests/ops.rs: a real scrape and query round
  # trip, and `runner top` in a real terminal.
  if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null || ! command -v tmux >/dev/null; then
    log "installing prometheus and tmux (Debian packages)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus tmux >/dev/null
  else
    log "prometheus, promtool and tmux already installed"
  fi
  # Alertmanager, for the alert channel that hands alerts to it (tests/alerting.rs starts its own
  # on a free port; the package's own service is not used).
  if ! command -v prometheus-alertmanager >/dev/null; then
    log "installing prometheus-alertmanager (Debian package)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus-alertmanager >/dev/null
  else
    log "prometheus-alertmanager already installed"
  fi
  # protoc, for the Python classes of the Protobuf format test (tests/formats.rs), with the
  # well-known types the shipped .proto imports (google/protobuf/timestamp.proto, in
  # libprotobuf-dev: only recommended by protobuf-compiler, so not there without it).
  if ! command -v protoc >/dev/null || [ ! -f /usr/include/google/protobuf/timestamp.proto ]; then
    log "installing protobuf-compiler and libprotobuf-dev (Debian packages)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends protobuf-compiler libprotobuf-dev >/dev/null
  else
    log "protoc and the well-known .proto types already installed"
  fi
  # Python clients: the SMTP server of the email alert test, and the real Avro / Protobuf / Kafka
  # clients that write the format tests' records (tests/clients/produce.py); protobuf 7.36
  # reads the classes Debian's protoc 3.21 generates.
  local venv="$state/venv"
  if "$venv/bin/python" -c 'import aiosmtpd, fastavro, confluent_kafka, google.protobuf' 2>/dev/null; then
    log "aiosmtpd, fastavro, confluent-kafka and protobuf already installed in $venv"
  else
    log "installing aiosmtpd, fastavro, confluent-kafka and protobuf (PyPI) into $venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check 'aiosmtpd==1.4.6' \
      'fastavro==1.13.1' 'confluent-kafka==2.16.2' 'protobuf==7.36.2'
  fi
  if tansu --version 2>/dev/null | grep -q '0\.6\.0'; then
    log "tansu 0.6.0 already installed"
  else
    log "installing tansu 0.6.0 (about 17 minutes on a cold 2-core machine)"
    cargo install tansu@0.6.0 --locked --features libsql
  fi
  if cargo install --list | grep -q '^secantus-mdb v0\.5\.3-beta\.196'; then
    log "secantus-mdb 0.5.3-beta.196 already installed"
  else
    if ! command -v cmake >/dev/null; then
      log "installing cmake (needed to build secantus-mdb)"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake >/dev/null
    fi
    log "installing secantus-mdb 0.5.3-beta.196 (about 9 minutes cold)"
    cargo install secantus-mdb --version 0.5.3-beta.196 --ignore-rust-version --locked
  fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_port NAME PORT LOG PID: polls until the port accepts connections, at most 60 s.
wait_port() {
  local name=$1 port=$2 logfile=$3 pid=$4
  for _ in $(seq 1 600); do
    if port_open "$port"; then log "$name is up on 127.0.0.1:$port"; return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.1
  done
  log "$name did not come up on port $port; its log:"
  tail -n 50 "$logfile" >&2 || true
  return 1
}

start_kafka() {
  if port_open "$kafka_port"; then log "port $kafka_port already in use; assuming a broker runs there"; return; fi
  # Tansu wants a relative sqlite path, so it starts inside a fresh data folder.
  rm -rf "$state/kafka" && mkdir -p "$state/kafka"
  (cd "$state/kafka" && exec tansu broker \
      --listener-url "tcp://127.0.0.1:$kafka_port" \
      --advertised-listener-url "tcp://127.0.0.1:$kafka_port" \
      --storage-engine sqlite://tansu.db >tansu.log 2>&1) &
  echo $! >"$state/kafka.pid"
  wait_port kafka "$kafka_port" "$state/kafka/tansu.log" "$(cat "$state/kafka.pid")"
}

start_mongo() {
  if port_open "$mongo_port"; then log "port $mongo_port already in use; assuming a MongoDB server runs there"; return; fi
  rm -rf "$state/mongo" && mkdir -p "$state/mongo/data"
  secantusd-rs --host 127.0.0.1 --port "$mongo_port" --storage-path "$state/mongo/data" \
      --log-file-max 16MB --cache-size 512M >"$state/mongo/secantus.log" 2>&1 &
  echo $! >"$state/mongo.pid"
  wait_port mongodb "$mongo_port" "$state/mongo/secantus.log" "$(cat "$state/mongo.pid")"
}

stop() {
  for name in kafka mongo; do
    local pidfile="$state/$name.pid"
    [ -f "$pidfile" ] || continue
    local pid; pid=$(cat "$pidfile")
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      log "stopped $name (pid $pid)"
    fi
    rm -f "$pidfile"
  done
}

mkdir -p "$state"
case "${1:-}" in
  install) install ;;
  up) start_kafka; start_mongo ;;
  down) stop ;;
  status)
    port_open "$kafka_port" && log "kafka: up on $kafka_port" || log "kafka: down"
    port_open "$mongo_port" && log "mongodb: up on $mongo_port" || log "mongodb: down" ;;
  *) echo "usage: $0 install|up|down|status" >&2; exit 2 ;;
esac
