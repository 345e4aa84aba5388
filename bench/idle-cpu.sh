#!/usr/bin/env bash
# What an idle node costs: a two-worker node holding N idle links (and then none) with no
# traffic, its CPU time read from every thread's /proc schedstat over a window. Prints the
# share of one core it used.
# Usage: bench/idle-cpu.sh [links] [seconds]
source "$(dirname "$0")/common.sh"
LINKS=${1:-1000}
SECS=${2:-60}
LOAD_PID=
trap 'kill $LOAD_PID 2>/dev/null || true; stop_server' EXIT

# Nanoseconds the process spent on a CPU, all threads together.
cpu_ns() {
  cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {print s + 0}'
}
# The share of one core process $1 used over the next $2 seconds, in percent.
measure() {
  local before after
  before=$(cpu_ns "$1")
  sleep "$2"
  after=$(cpu_ns "$1")
  python3 -c "print(f'{($after - $before) / ($2 * 1e9) * 100:.3f}')"
}
links_now() {
  curl -sf "http://$ADMIN/metrics" | awk '$1 == "ringway_links" {print $2}'
}

taskset -c 0,1 target/release/ringway serve --workers 2 --listen "$WS" --admin-listen "$ADMIN" \
  --jwt-secret "$SECRET" >"$OUT/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 200); do curl -sf "http://$ADMIN/healthz" >/dev/null && break; sleep 0.05; done
echo "no links: $(measure "$SERVER_PID" "$SECS") % of one core over ${SECS} s"
target/release/ringway-load idle --server "$WS" --jwt-secret "$SECRET" --links "$LINKS" \
  --server-pid "$SERVER_PID" --hold $((SECS * 2 + 30)) >"$OUT/idle-load.log" 2>&1 &
LOAD_PID=$!
for _ in $(seq 600); do [ "$(links_now)" = "$LINKS" ] && break; sleep 0.1; done
[ "$(links_now)" = "$LINKS" ] || { echo "only $(links_now) of $LINKS links opened" >&2; exit 1; }
sleep 2 # the handshakes' work is done
echo "$LINKS idle links: $(measure "$SERVER_PID" "$SECS") % of one core over ${SECS} s"
