#!/usr/bin/env bash
# First single-node figures: idle memory per link and closed-loop echo/ACK throughput.
# The gateway runs one worker pinned to CPU $SERVER_CPU; the load generator runs on $LOAD_CPU.
# Usage: bench/single-node.sh [links_idle] [echo_seconds]
set -euo pipefail
cd "$(dirname "$0")/.."

LINKS_IDLE=${1:-10000}
ECHO_SECS=${2:-10}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
SECRET=bench-secret-0123456789
WS=127.0.0.1:18080
ADMIN=127.0.0.1:19090
OUT=bench/out
mkdir -p "$OUT"

cargo build --release --locked -p ringway -p ringway-load
ulimit -n 20000

echo "machine: $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r), $(date -u +%F)"

start_server() {
  taskset -c "$SERVER_CPU" target/release/ringway serve --workers 1 --listen "$WS" \
    --admin-listen "$ADMIN" --jwt-secret "$SECRET" --link-rate 0 \
    --heartbeat-timeout-ms 600000 >"$OUT/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 200); do
    curl -sf "http://$ADMIN/healthz" >/dev/null && return 0
    sleep 0.05
  done
  echo "gateway did not start" >&2; exit 1
}
stop_server() { kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null || true; }
trap stop_server EXIT

start_server
taskset -c "$LOAD_CPU" target/release/ringway-load idle --server "$WS" --jwt-secret "$SECRET" \
  --links "$LINKS_IDLE" --sources 127.0.0.1,127.0.0.2 --server-pid "$SERVER_PID" \
  --json-out "$OUT/idle.json"
stop_server

start_server
for codec in proto json; do
  taskset -c "$LOAD_CPU" target/release/ringway-load echo --server "$WS" --jwt-secret "$SECRET" \
    --links 100 --duration "$ECHO_SECS" --codec "$codec" --user-prefix "$codec" \
    --server-pid "$SERVER_PID" --json-out "$OUT/echo-$codec.json"
done
