#!/usr/bin/env bash
# Handshakes on one server core: ringway (TCP accept, the upgrade, the JWT checked, CONNECTED
# sent) against the tokio-tungstenite echo server's bare accept (bench/peers/echo-baseline: the
# upgrade alone). The two take turns for ROUNDS rounds; each opens LINKS links as fast as the
# load generator starts them, over six source addresses (each round's closed links sit in
# TIME_WAIT). Prints handshakes/s, the server core's share, and handshakes per server
# core-second with the median ratio.
# Usage: bench/handshakes.sh [links] [rounds]
source "$(dirname "$0")/common.sh"
LINKS=${1:-5000}
ROUNDS=${2:-5}
PEER=127.0.0.1:18090
SOURCES=127.0.0.11,127.0.0.12,127.0.0.13,127.0.0.14,127.0.0.15,127.0.0.16
cargo build --release --locked -p echo-baseline
PEER_PID=
trap 'stop_server; stop_pid PEER_PID' EXIT

load() { # name server pid extra...
  local name=$1 server=$2 pid=$3; shift 3
  taskset -c "$LOAD_CPU" target/release/ringway-load connect --server "$server" \
    --jwt-secret "$SECRET" --links "$LINKS" --connect-rate 1000000 --sources "$SOURCES" \
    --server-pid "$pid" --user-prefix "$name$round-" "$@" \
    --json-out "$OUT/handshakes-$name-$round.json" >/dev/null 2>&1
}

for round in $(seq "$ROUNDS"); do
  echo "--- round $round: ringway (1 worker), tokio-tungstenite accept, each on CPU $SERVER_CPU"
  start_server --heartbeat-timeout-ms 600000
  load ringway "$WS" "$SERVER_PID"
  stop_server
  taskset -c "$SERVER_CPU" target/release/echo-baseline "$PEER" 2>/dev/null &
  PEER_PID=$!
  wait_port "$PEER"
  load baseline "$PEER" "$PEER_PID" --target plain
  stop_pid PEER_PID
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
ratios = []
for i in range(1, rounds + 1):
    per = {}
    for name in ("ringway", "baseline"):
        d = json.load(open(f"{out}/handshakes-{name}-{i}.json"))
        busy = d["server_cores_busy"] or 1
        per[name] = d["handshakes_per_second"] / busy
        l = d["latency_us"]
        print(f"round {i} {name:8} {d['handshakes_per_second']:>8.0f} handshakes/s  connect p50 {l['p50']:>6} us  "
              f"p99 {l['p99']:>6} us  server core busy {100 * busy:.0f}%  {per[name]:>8.0f} per core-second  "
              f"errors {d['errors']}")
    ratios.append(per["ringway"] / per["baseline"])
    print(f"round {i} ratio ringway/baseline per core-second {ratios[-1]:.2f}x")
print(f"median ratio ringway/baseline per core-second: {statistics.median(ratios):.2f}x "
      f"(range {min(ratios):.2f}-{max(ratios):.2f})")
PY
