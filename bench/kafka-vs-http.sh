#!/usr/bin/env bash
# The two push ingresses side by side on one node and core: the same links, rate and fan-out
# posted to POST /v1/push and produced to the Kafka push topic (Tansu, memory storage, on
# loopback), in alternating rounds, with the broker's own floor (kafka-floor.py: produce to
# consume with no gateway, same record rate) beside each Kafka round. Prints push-to-client
# latency and deliveries for each. Tansu's fetch latency grows with the length of the
# partition it reads (seen: p50 5 ms on a fresh partition, 16 ms after 60k records), so every
# round reads a topic of its own and a gateway started for it: rounds stay comparable.
# Usage: bench/kafka-vs-http.sh [links] [pushes_per_s] [fanout] [seconds] [rounds]
# FETCH_WAIT=ms sets the gateway's --kafka-fetch-wait-ms and the floor's fetch wait (default 10).
# LOCATED=1 runs the node with Redis and etcd and located routing: every push from the topic is
# looked up in Redis (the fleet's location registry) before it is delivered.
source "$(dirname "$0")/common.sh"
LINKS=${1:-2000}
RATE=${2:-2000}
FANOUT=${3:-10}
SECS=${4:-10}
ROUNDS=${5:-3}
FETCH_WAIT=${FETCH_WAIT:-10}
trap 'stop_server; stop_pid BROKER_PID; stop_located' EXIT
start_tansu
[ "${LOCATED:-0}" = 1 ] && start_located
topic ringway.undelivered
summary() {
  python3 - "$@" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
l = d["latency_us"]
if "deliveries" in d:
    got = f"delivered {d['deliveries']}/{d['deliveries_expected']}  server core busy {100 * (d['server_cores_busy'] or 0):.0f}%"
else:
    got = f"received {d['received']}/{d['records']}"
print(f"round {sys.argv[3]} {sys.argv[2]:5}: p50 {l['p50']} us  p99 {l['p99']} us  {got}")
PY
}
for round in $(seq "$ROUNDS"); do
  topic "floor.$round"
  taskset -c "$LOAD_CPU" python3 bench/kafka-floor.py "$BROKER" "floor.$round" "$RATE" "$SECS" "$FETCH_WAIT" \
    --json "$OUT/ingress-floor-$round.json" >/dev/null
  summary "$OUT/ingress-floor-$round.json" floor "$round"
  for path in http kafka; do
    topic "ringway.push.$path$round"
    # A group of its own too: a new member of the last round's group waits out the old one's
    # session (6 s) before Tansu gives it the partition.
    start_server --heartbeat-timeout-ms 600000 --kafka "$BROKER" --push-topic "ringway.push.$path$round" \
      --kafka-group "bench.$path$round" --kafka-fetch-wait-ms "$FETCH_WAIT" "${LOCATED_ARGS[@]}"
    # Pushes start once the consumer holds the partition, as they would on a node long up.
    for _ in $(seq 300); do
      grep -q "partitions assigned.*ringway.push.$path$round" "$OUT/server.log" && break
      sleep 0.1
    done
    # Several HTTP senders, as in push-vs-sockudo.sh: one waits for each answer before the next
    # push, which caps its rate below the node's.
    ingress=(--senders 8)
    [ "$path" = kafka ] && ingress=(--kafka "$BROKER" --topic "ringway.push.$path$round" --senders 16)
    taskset -c "$LOAD_CPU" target/release/ringway-load push --server "$WS" --admin "$ADMIN" \
      --jwt-secret "$SECRET" --links "$LINKS" --rate "$RATE" --fanout "$FANOUT" \
      --duration "$SECS" --sources 127.0.0.1,127.0.0.2 --server-pid "$SERVER_PID" \
      --user-prefix "$path$round-" "${ingress[@]}" --json-out "$OUT/ingress-$path-$round.json" >/dev/null
    stop_server
    summary "$OUT/ingress-$path-$round.json" "$path" "$round"
  done
done
