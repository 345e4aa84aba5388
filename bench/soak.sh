#!/usr/bin/env bash
# Memory under connection churn. For MINUTES, rounds of: LINKS links opened by new users and
# dropped (every link through the upgrade, CONNECTED, and a close), then a short echo burst on
# 50 more; after each round, once the gateway counts no link, its RSS is sampled. A gateway
# that keeps anything per closed link or per departed user grows round after round. Upstream
# replies are kept for 5 s only (--idem-ttl-ms), so the idempotency store is in its steady state
# instead of filling for the ten minutes of its default TTL.
# Usage: bench/soak.sh [minutes] [links_per_round]
source "$(dirname "$0")/common.sh"
MINUTES=${1:-10}
LINKS=${2:-2000}
trap stop_server EXIT

start_server --heartbeat-timeout-ms 600000 --idem-ttl-ms 5000
rss() { awk '/VmRSS/{print $2}' "/proc/$SERVER_PID/status"; }
metric() { curl -sf "http://$ADMIN/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
load() { taskset -c "$LOAD_CPU" target/release/ringway-load "$@" --server "$WS" --jwt-secret "$SECRET" >>"$OUT/soak-load.log" 2>&1; }

echo "soak: $MINUTES min, $LINKS new links per round"
echo "round elapsed_s rss_kib links_opened_total"
end=$((SECONDS + MINUTES * 60))
round=0
first=
while [ "$SECONDS" -lt "$end" ]; do
  round=$((round + 1))
  load connect --links "$LINKS" --sources 127.0.0.1,127.0.0.2 --user-prefix "r$round-"
  load echo --links 50 --duration 2 --user-prefix "e$round-"
  for _ in $(seq 100); do [ "$(metric ringway_links)" = 0 ] && break; sleep 0.1; done
  now=$(rss)
  first=${first:-$now}
  echo "$round $SECONDS $now $(metric ringway_links_opened_total)"
done
echo "rss after round 1: $first KiB; after round $round: $now KiB; drift $((now - first)) KiB"
