#!/usr/bin/env bash
# Push fan-out on one server core: ringway (HTTP push API, per-link ack and retransmit) against
# sockudo (Pusher protocol: signed HTTP events to per-user channels, no acks), the same links,
# rate and fan-out, in one run. Prints deliveries/s, push-to-client latency and the ratios.
# sockudo is installed from crates.io into bench/.peers by bench/install-peers.sh.
# Usage: bench/push-vs-sockudo.sh [links] [pushes_per_s] [fanout] [seconds] [senders]
# senders: HTTP connections posting at once (a saturating run needs several: with one, each
# push waits for the answer to the one before, so the server's answer time caps the rate).
source "$(dirname "$0")/common.sh"
LINKS=${1:-2000}
RATE=${2:-2000}
FANOUT=${3:-50}
SECS=${4:-10}
SENDERS=${5:-1}
PEER=127.0.0.1:18092
bench/install-peers.sh
PEER_PID=
trap 'stop_server; kill $PEER_PID 2>/dev/null || true' EXIT

run_load() { # name target server admin pid
  taskset -c "$LOAD_CPU" target/release/ringway-load push --target "$2" --server "$3" \
    --admin "$4" --jwt-secret "$SECRET" --links "$LINKS" --rate "$RATE" --fanout "$FANOUT" \
    --senders "$SENDERS" --duration "$SECS" --sources 127.0.0.1,127.0.0.2 --server-pid "$5" \
    --user-prefix "$1-" \
    --json-out "$OUT/push-$1.json" --plot "$OUT/push-$1.svg" >/dev/null
}

start_server --heartbeat-timeout-ms 600000
echo "--- ringway (1 worker on CPU $SERVER_CPU)"
run_load ringway ringway "$WS" "$ADMIN" "$SERVER_PID"
stop_server

# sockudo from environment settings only: one app, no rate limits, local adapter, no metrics.
env HOST=127.0.0.1 PORT="${PEER#*:}" DEBUG=false METRICS_ENABLED=false RATE_LIMITER_ENABLED=false \
  ADAPTER_DRIVER=local APP_MANAGER_DRIVER=memory CACHE_DRIVER=memory QUEUE_DRIVER=none \
  SOCKUDO_DEFAULT_APP_ID=bench-app SOCKUDO_DEFAULT_APP_KEY=bench-key \
  SOCKUDO_DEFAULT_APP_SECRET=bench-secret SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS=1000000 \
  SOCKUDO_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SECOND=10000000 \
  SOCKUDO_DEFAULT_APP_MAX_EVENT_CHANNELS_AT_ONCE=100 \
  taskset -c "$SERVER_CPU" bench/.peers/bin/sockudo >"$OUT/sockudo.log" 2>&1 &
PEER_PID=$!
for _ in $(seq 200); do (exec 3<>/dev/tcp/${PEER%:*}/${PEER#*:}) 2>/dev/null && break; sleep 0.05; done
echo "--- sockudo $(bench/.peers/bin/sockudo --version 2>/dev/null | head -1) (CPU $SERVER_CPU)"
run_load sockudo pusher "$PEER" "$PEER" "$PEER_PID"

python3 - "$OUT/push-ringway.json" "$OUT/push-sockudo.json" <<'PY'
import json, sys
r, s = (json.load(open(p)) for p in sys.argv[1:3])
for name, d in (("ringway", r), ("sockudo", s)):
    l = d["latency_us"]
    print(f"{name:8} {d['deliveries_per_second']:>10.0f} deliveries/s  pushes {d['pushes_accepted']:>7} "
          f"(refused {d['pushes_refused']})  delivered {d['deliveries']}/{d['deliveries_expected']}  "
          f"p50 {l['p50']:>7} us  p99 {l['p99']:>7} us  server core busy {100 * (d['server_cores_busy'] or 0):.0f}%")
def per_core(d):
    return d["deliveries_per_second"] / max(d["server_cores_busy"] or 0, 1e-9)
for name, d in (("ringway", r), ("sockudo", s)):
    print(f"{name:8} {per_core(d):>10.0f} deliveries per server core-second")
print(f"ratios ringway/sockudo: deliveries/s {r['deliveries_per_second'] / s['deliveries_per_second']:.2f}x, "
      f"per core-second {per_core(r) / per_core(s):.2f}x, p99 {r['latency_us']['p99'] / max(1, s['latency_us']['p99']):.2f}x")
PY
