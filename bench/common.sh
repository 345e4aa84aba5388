# Shared set-up of the bench scripts (sourced, not run): release build, fd limit, the machine
# line every result starts with, and a gateway started on $SERVER_CPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
SECRET=bench-secret-0123456789
WS=127.0.0.1:18080
ADMIN=127.0.0.1:19090
OUT=bench/out
mkdir -p "$OUT"

# A fresh machine lacks protoc, which the etcd client's build needs.
scripts/services.sh build-deps
cargo build --release --locked -p ringway -p ringway-load
ulimit -n 20000
echo "machine: $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r), $(date -u +%F)"

SERVER_PID=
# start_server FLAGS...: one pinned worker, no rate limit, waits for /healthz.
start_server() {
  taskset -c "$SERVER_CPU" target/release/ringway serve --workers 1 --listen "$WS" \
    --admin-listen "$ADMIN" --jwt-secret "$SECRET" --link-rate 0 "$@" >"$OUT/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 200); do
    curl -sf "http://$ADMIN/healthz" >/dev/null && return 0
    sleep 0.05
  done
  echo "gateway did not start; see $OUT/server.log" >&2
  exit 1
}
stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}

PEER=127.0.0.1:18092
PEER_PID=
# start_sockudo: the Pusher-protocol peer on $SERVER_CPU from environment settings only: one
# app, no rate limits, local adapter, no metrics. Waits until its port answers.
start_sockudo() {
  env HOST=127.0.0.1 PORT="${PEER#*:}" DEBUG=false METRICS_ENABLED=false RATE_LIMITER_ENABLED=false \
    ADAPTER_DRIVER=local APP_MANAGER_DRIVER=memory CACHE_DRIVER=memory QUEUE_DRIVER=none \
    SOCKUDO_DEFAULT_APP_ID=bench-app SOCKUDO_DEFAULT_APP_KEY=bench-key \
    SOCKUDO_DEFAULT_APP_SECRET=bench-secret SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS=1000000 \
    SOCKUDO_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SECOND=10000000 \
    SOCKUDO_DEFAULT_APP_MAX_EVENT_CHANNELS_AT_ONCE=100 \
    taskset -c "$SERVER_CPU" bench/.peers/bin/sockudo >"$OUT/sockudo.log" 2>&1 &
  PEER_PID=$!
  for _ in $(seq 200); do (exec 3<>/dev/tcp/${PEER%:*}/${PEER#*:}) 2>/dev/null && return 0; sleep 0.05; done
  echo "sockudo did not start; see $OUT/sockudo.log" >&2
  exit 1
}
stop_sockudo() {
  [ -n "$PEER_PID" ] || return 0
  kill "$PEER_PID" 2>/dev/null || true
  wait "$PEER_PID" 2>/dev/null || true
  PEER_PID=
}
