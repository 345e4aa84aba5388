#!/usr/bin/env bash
# The users' streams (DESIGN §2a): memory per stored push in the embedded store, appends per
# second per core with Redis (pipelined), and a resume storm (LINKS links, MISSED pushes each
# missed while away, all reconnecting at once with since=), embedded and with Redis.
# The gateway runs one worker pinned to CPU $SERVER_CPU; load and redis-server on $LOAD_CPU.
# Usage: bench/streams.sh [links] [missed]
source "$(dirname "$0")/common.sh"
LINKS=${1:-10000}
MISSED=${2:-10}
REDIS_PORT=16379
REDIS_PID=
stop_redis() {
  [ -n "$REDIS_PID" ] || return 0
  kill "$REDIS_PID" 2>/dev/null || true
  wait "$REDIS_PID" 2>/dev/null || true
  REDIS_PID=
}
start_redis() {
  stop_redis
  taskset -c "$LOAD_CPU" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" \
    --appendonly no >"$OUT/redis.log" 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "redis-server did not start" >&2
  exit 1
}
trap 'stop_server; stop_redis' EXIT
SOURCES=127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4
REDIS=(--redis "redis://127.0.0.1:$REDIS_PORT")

for store in embedded redis; do
  flags=()
  port=()
  if [ "$store" = redis ]; then start_redis; flags=("${REDIS[@]}"); port=("$REDIS_PORT"); fi
  start_server "${flags[@]}"
  echo "== $store: 20,000 offline users x 10 pushes of 64 bytes"
  taskset -c "$LOAD_CPU" bench/stream-fill.py "$ADMIN" "$SERVER_PID" 20000 10 64 "${port[@]}" \
    | tee "$OUT/stream-fill-$store.json"
  stop_server
  [ "$store" = redis ] && start_redis
  start_server --heartbeat-timeout-ms 600000 "${flags[@]}"
  echo "== $store: resume storm, $LINKS links x $MISSED missed pushes"
  taskset -c "$LOAD_CPU" target/release/ringway-load resume --server "$WS" --admin "$ADMIN" \
    --jwt-secret "$SECRET" --links "$LINKS" --missed "$MISSED" --sources "$SOURCES" \
    --server-pid "$SERVER_PID" --json-out "$OUT/resume-$store.json"
  stop_server
done
