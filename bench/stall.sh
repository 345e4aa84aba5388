#!/usr/bin/env bash
# A worker core sharing its CPU: saturating pushes while a busy-loop holds the server's CPU for
# a few seconds of each run. Before the watchdog (src/control/watchdog.rs) most such runs lost
# the core for seconds and most of their pushes; now every push is delivered and the wake-ups
# are counted. Prints, per run, deliveries against those expected and the stall wake-ups.
# Usage: bench/stall.sh [runs] [hog_seconds]
source "$(dirname "$0")/common.sh"
RUNS=${1:-4}
HOG=${2:-3}
HOG_PID=
trap 'stop_server; [ -z "$HOG_PID" ] || kill "$HOG_PID" 2>/dev/null || true' EXIT

for run in $(seq "$RUNS"); do
  start_server --heartbeat-timeout-ms 600000
  taskset -c "$LOAD_CPU" target/release/ringway-load push --server "$WS" --admin "$ADMIN" \
    --jwt-secret "$SECRET" --links 2000 --rate 2000 --fanout 50 --duration 10 \
    --sources 127.0.0.1,127.0.0.2 --json-out "$OUT/stall-$run.json" >/dev/null 2>&1 &
  LOAD_PID=$!
  # The busy-loop starts once pushes flow (the links are up a few seconds in).
  for _ in $(seq 600); do
    sent=$(curl -s "http://$ADMIN/metrics" | awk '/^ringway_pushes_sent_total /{print $2}')
    [ "${sent:-0}" -gt 0 ] && break
    sleep 0.05
  done
  timeout "$HOG" taskset -c "$SERVER_CPU" sh -c 'while :; do :; done' &
  HOG_PID=$!
  wait "$LOAD_PID"
  wait "$HOG_PID" 2>/dev/null || true
  HOG_PID=
  wakeups=$(curl -s "http://$ADMIN/metrics" | awk '/^ringway_core_stall_wakeups_total/{n+=$2} END{print n+0}')
  stop_server
  python3 - "$OUT/stall-$run.json" "$run" "$wakeups" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"run {sys.argv[2]}: delivered {d['deliveries']}/{d['deliveries_expected']}  "
      f"{d['deliveries_per_second']:.0f} deliveries/s  stall wake-ups {sys.argv[3]}")
PY
done
