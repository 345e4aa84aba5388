#!/usr/bin/env bash
# Two ringway builds against each other under the closed-loop echo: they take turns for ROUNDS
# rounds, so drift in the machine's background hits both alike. Prints each build's ACKs per
# server core-second per round, and B/A per round with its median. For a change too small
# for bench/echo-vs-baseline.sh's ratios to show (a few percent).
# Usage: bench/echo-ab.sh BIN_A BIN_B [rounds] [seconds] [links]
# LOAD_A and LOAD_B (default: target/release/ringway-load) swap the load generator as well, to
# measure a change to the generator against one gateway build (BIN_A = BIN_B).
source "$(dirname "$0")/common.sh"
BIN_A=$1
BIN_B=$2
ROUNDS=${3:-6}
SECS=${4:-10}
LINKS=${5:-100}
trap stop_server EXIT

one() { # binary generator out
  RINGWAY=$1 start_server
  taskset -c "$LOAD_CPU" "$2" echo --server "$WS" --jwt-secret "$SECRET" \
    --links "$LINKS" --duration "$SECS" --codec proto --server-pid "$SERVER_PID" \
    --json-out "$3" >/dev/null 2>&1
  stop_server
}

for r in $(seq "$ROUNDS"); do
  one "$BIN_A" "${LOAD_A:-target/release/ringway-load}" "$OUT/ab-a-$r.json"
  one "$BIN_B" "${LOAD_B:-target/release/ringway-load}" "$OUT/ab-b-$r.json"
done
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
out, n = sys.argv[1], int(sys.argv[2])
def per_core(side, r):
    d = json.load(open(f"{out}/ab-{side}-{r}.json"))
    return d["acks_per_second"] / (d["server_cores_busy"] or 1)
a = [per_core("a", r) for r in range(1, n + 1)]
b = [per_core("b", r) for r in range(1, n + 1)]
ratios = [y / x for x, y in zip(a, b)]
print("A per core-second (k):", [round(x / 1000, 1) for x in a])
print("B per core-second (k):", [round(x / 1000, 1) for x in b])
print("B/A per round:", [round(x, 3) for x in ratios], "median", round(statistics.median(ratios), 3))
PY
