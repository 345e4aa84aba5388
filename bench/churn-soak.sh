#!/usr/bin/env bash
# Scale on one box: NODES gateways (each --workers 1 --pin-cores false) hold LINKS links each
# for MINUTES while CHURN of the links leave and come back every second (each resuming its
# stream after the last offset it had) and pushes flow at RATE per node (FANOUT users each).
# One load process per node, its links spread over 8 source addresses (127.0.0.1-8: churn
# leaves ports in TIME_WAIT). Every 10 s each node's RSS is sampled; at the end each load
# process reports pushes accepted, deliveries, duplicates and resumes not recovered.
# Passes when no push is missing and no node's RSS at the last sample with its links open is
# more than 5 % above its RSS one minute in (the streams reach their --stream-ttl-ms
# retention by then).
# Usage: bench/churn-soak.sh [nodes] [links_per_node] [minutes] [churn_per_s] [rate] [fanout]
source "$(dirname "$0")/common.sh"
NODES=${1:-3}
LINKS=${2:-10000}
MINUTES=${3:-5}
CHURN=${4:-0.005}
RATE=${5:-100}
FANOUT=${6:-10}
SOURCES=127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7,127.0.0.8
PIDS=()
LOADS=()
cleanup() {
  for p in "${LOADS[@]}" "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${LOADS[@]}" "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

for n in $(seq 0 $((NODES - 1))); do
  target/release/ringway serve --workers 1 --pin-cores false --listen "127.0.0.1:$((18180 + n))" \
    --admin-listen "127.0.0.1:$((19190 + n))" --jwt-secret "$SECRET" --link-rate 0 \
    --node-id "soak-$n" --heartbeat-timeout-ms 600000 --stream-ttl-ms 60000 \
    >"$OUT/soak-node-$n.log" 2>&1 &
  PIDS+=($!)
done
for n in $(seq 0 $((NODES - 1))); do
  for _ in $(seq 200); do
    curl -sf "http://127.0.0.1:$((19190 + n))/healthz" >/dev/null && break
    sleep 0.05
  done
done
echo "soak: $NODES nodes x $LINKS links, $MINUTES min, churn $CHURN/s, $RATE pushes/s x $FANOUT per node"
for n in $(seq 0 $((NODES - 1))); do
  target/release/ringway-load push --server "127.0.0.1:$((18180 + n))" \
    --admin "127.0.0.1:$((19190 + n))" --jwt-secret "$SECRET" --links "$LINKS" \
    --sources "$SOURCES" --connect-rate 2000 --rate "$RATE" --fanout "$FANOUT" \
    --duration "$((MINUTES * 60))" --churn "$CHURN" --server-pid "${PIDS[$n]}" \
    --json-out "$OUT/soak-load-$n.json" >"$OUT/soak-load-$n.log" 2>&1 &
  LOADS+=($!)
done
rss() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
echo "elapsed_s $(for n in $(seq 0 $((NODES - 1))); do printf 'rss_kib_%s links_%s ' "$n" "$n"; done)"
start=$SECONDS
declare -A AT_MINUTE LAST
while sleep 10 && kill -0 "${LOADS[0]}" 2>/dev/null; do
  line="$((SECONDS - start))"
  for n in $(seq 0 $((NODES - 1))); do
    r=$(rss "${PIDS[$n]}")
    l=$(curl -sf "http://127.0.0.1:$((19190 + n))/metrics" | awk '$1 == "ringway_links" {print $2}')
    line+=" $r $l"
    LAST[$n]=$r
    [ "$((SECONDS - start))" -ge 60 ] && [ -z "${AT_MINUTE[$n]:-}" ] && AT_MINUTE[$n]=$r
  done
  echo "$line"
done
fail=0
for n in $(seq 0 $((NODES - 1))); do
  wait "${LOADS[$n]}" || { echo "load $n failed: see $OUT/soak-load-$n.log"; fail=1; }
  python3 - "$OUT/soak-load-$n.json" "$n" "${AT_MINUTE[$n]:-0}" "${LAST[$n]:-0}" <<'EOF' || fail=1
import json, sys
d = json.load(open(sys.argv[1]))
n, first, last = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
missing = d["deliveries_expected"] - d["deliveries"]
drift = (last - first) / first if first else 0
print(f"node {n}: links {d['links']}, pushes {d['pushes_accepted']} (refused {d['pushes_refused']}), "
      f"deliveries {d['deliveries']}/{d['deliveries_expected']}, missing {missing}, "
      f"duplicates {d['duplicates']}, reconnects {d['reconnects']}, "
      f"not recovered {d['resumes_not_recovered']}, errors {d.get('errors', 0)}, "
      f"rss {first} -> {last} KiB ({drift:+.1%})")
sys.exit(0 if missing == 0 and drift <= 0.05 else 1)
EOF
done
[ "$fail" = 0 ] && echo "soak: passed" || { echo "soak: FAILED"; exit 1; }
