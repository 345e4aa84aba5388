#!/usr/bin/env bash
# Echo with ACK on one server core: ringway against the plain tokio-tungstenite echo server
# (bench/peers/echo-baseline), the same load, in one run, and raw TCP echo (bench/peers tcp-echo)
# as the physical reference. Prints ACKs/s, percentiles and the ratios.
# Usage: bench/echo-vs-baseline.sh [links] [seconds] [codec]
source "$(dirname "$0")/common.sh"
LINKS=${1:-100}
SECS=${2:-10}
CODEC=${3:-proto}
PEER=127.0.0.1:18090
TCP=127.0.0.1:18091
cargo build --release --locked -p echo-baseline
PEER_PID=
TCP_PID=
trap 'stop_server; kill $PEER_PID $TCP_PID 2>/dev/null || true' EXIT

start_server
echo "--- ringway (1 worker on CPU $SERVER_CPU)"
taskset -c "$LOAD_CPU" target/release/ringway-load echo --server "$WS" --jwt-secret "$SECRET" \
  --links "$LINKS" --duration "$SECS" --codec "$CODEC" --server-pid "$SERVER_PID" \
  --json-out "$OUT/echo-ringway.json" --plot "$OUT/echo-ringway.svg" >/dev/null
stop_server

taskset -c "$SERVER_CPU" target/release/echo-baseline "$PEER" 2>/dev/null &
PEER_PID=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/${PEER%:*}/${PEER#*:}) 2>/dev/null && break; sleep 0.05; done
echo "--- tokio-tungstenite echo baseline (CPU $SERVER_CPU)"
taskset -c "$LOAD_CPU" target/release/ringway-load echo --server "$PEER" --jwt-secret "$SECRET" \
  --links "$LINKS" --duration "$SECS" --codec "$CODEC" --target plain --server-pid "$PEER_PID" \
  --json-out "$OUT/echo-baseline.json" --plot "$OUT/echo-baseline.svg" >/dev/null
kill $PEER_PID

taskset -c "$SERVER_CPU" target/release/tcp-echo "$TCP" 2>/dev/null &
TCP_PID=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/${TCP%:*}/${TCP#*:}) 2>/dev/null && break; sleep 0.05; done
echo "--- raw TCP echo, the physical reference (CPU $SERVER_CPU)"
taskset -c "$LOAD_CPU" target/release/ringway-load echo --server "$TCP" --jwt-secret "$SECRET" \
  --links "$LINKS" --duration "$SECS" --target tcp --size 80 --server-pid "$TCP_PID" \
  --json-out "$OUT/echo-tcp.json" >/dev/null

python3 - "$OUT/echo-ringway.json" "$OUT/echo-baseline.json" "$OUT/echo-tcp.json" <<'PY'
import json, sys
r, b, t = (json.load(open(p)) for p in sys.argv[1:4])
for name, d in (("ringway", r), ("baseline", b), ("raw tcp", t)):
    l = d["latency_us"]
    print(f"{name:9} {d['acks_per_second']:>10.0f} acks/s  p50 {l['p50']:>6} us  p99 {l['p99']:>6} us  "
          f"server core busy {100 * (d['server_cores_busy'] or 0):.0f}%  errors {d['errors']}")
print(f"ratio ringway/baseline: {r['acks_per_second'] / b['acks_per_second']:.2f}x; "
      f"ringway/raw tcp: {r['acks_per_second'] / t['acks_per_second']:.2f}x")
PY
