#!/usr/bin/env bash
# Echo with ACK on one server core: ringway against the plain tokio-tungstenite echo server
# (bench/peers/echo-baseline), the same load, in one run. Prints ACKs/s, percentiles and the ratio.
# Usage: bench/echo-vs-baseline.sh [links] [seconds] [codec]
source "$(dirname "$0")/common.sh"
LINKS=${1:-100}
SECS=${2:-10}
CODEC=${3:-proto}
PEER=127.0.0.1:18090
cargo build --release --locked -p echo-baseline
trap 'stop_server; kill $PEER_PID 2>/dev/null || true' EXIT

start_server
echo "--- ringway (1 worker on CPU $SERVER_CPU)"
taskset -c "$LOAD_CPU" target/release/ringway-load echo --server "$WS" --jwt-secret "$SECRET" \
  --links "$LINKS" --duration "$SECS" --codec "$CODEC" --server-pid "$SERVER_PID" \
  --json-out "$OUT/echo-ringway.json" >/dev/null
stop_server

taskset -c "$SERVER_CPU" target/release/echo-baseline "$PEER" 2>/dev/null &
PEER_PID=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/${PEER%:*}/${PEER#*:}) 2>/dev/null && break; sleep 0.05; done
echo "--- tokio-tungstenite echo baseline (CPU $SERVER_CPU)"
taskset -c "$LOAD_CPU" target/release/ringway-load echo --server "$PEER" --jwt-secret "$SECRET" \
  --links "$LINKS" --duration "$SECS" --codec "$CODEC" --target plain --server-pid "$PEER_PID" \
  --json-out "$OUT/echo-baseline.json" >/dev/null

python3 - "$OUT/echo-ringway.json" "$OUT/echo-baseline.json" <<'PY'
import json, sys
r, b = (json.load(open(p)) for p in sys.argv[1:3])
for name, d in (("ringway", r), ("baseline", b)):
    l = d["latency_us"]
    print(f"{name:9} {d['acks_per_second']:>10.0f} acks/s  p50 {l['p50']:>6} us  p99 {l['p99']:>6} us  "
          f"server core busy {100 * (d['server_cores_busy'] or 0):.0f}%  errors {d['errors']}")
print(f"ratio ringway/baseline: {r['acks_per_second'] / b['acks_per_second']:.2f}x")
PY
