#!/usr/bin/env bash
# First single-node figures: idle memory per link and closed-loop echo/ACK throughput.
# The gateway runs one worker pinned to CPU $SERVER_CPU; the load generator runs on $LOAD_CPU.
# Usage: bench/single-node.sh [links_idle] [echo_seconds]
source "$(dirname "$0")/common.sh"
LINKS_IDLE=${1:-10000}
ECHO_SECS=${2:-10}
trap stop_server EXIT

start_server --heartbeat-timeout-ms 600000
taskset -c "$LOAD_CPU" target/release/ringway-load idle --server "$WS" --jwt-secret "$SECRET" \
  --links "$LINKS_IDLE" --sources 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4 --server-pid "$SERVER_PID" \
  --json-out "$OUT/idle.json"
stop_server

start_server
for codec in proto json; do
  taskset -c "$LOAD_CPU" target/release/ringway-load echo --server "$WS" --jwt-secret "$SECRET" \
    --links 100 --duration "$ECHO_SECS" --codec "$codec" --user-prefix "$codec" \
    --server-pid "$SERVER_PID" --json-out "$OUT/echo-$codec.json"
done
