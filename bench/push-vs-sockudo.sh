#!/usr/bin/env bash
# Push fan-out on one server core: ringway (HTTP push API, per-link ack and retransmit) against
# sockudo (Pusher protocol: signed HTTP events to per-user channels, no acks), the same links,
# rate and fan-out, in one run. Prints deliveries/s, push-to-client latency and the ratios.
# sockudo is installed from crates.io into bench/.peers by bench/install-peers.sh.
# Usage: bench/push-vs-sockudo.sh [links] [pushes_per_s] [fanout] [seconds] [senders]
# senders: HTTP connections posting at once (a saturating run needs several: with one, each
# push waits for the answer to the one before, so the server's answer time caps the rate).
source "$(dirname "$0")/common.sh"
LINKS=${1:-2000}
RATE=${2:-2000}
FANOUT=${3:-50}
SECS=${4:-10}
SENDERS=${5:-1}
bench/install-peers.sh
trap 'stop_server; stop_sockudo' EXIT

run_load() { # name target server admin pid
  taskset -c "$LOAD_CPU" target/release/ringway-load push --target "$2" --server "$3" \
    --admin "$4" --jwt-secret "$SECRET" --links "$LINKS" --rate "$RATE" --fanout "$FANOUT" \
    --senders "$SENDERS" --duration "$SECS" --sources 127.0.0.1,127.0.0.2 --server-pid "$5" \
    --user-prefix "$1-" \
    --json-out "$OUT/push-$1.json" --plot "$OUT/push-$1.svg" >/dev/null
}

start_server --heartbeat-timeout-ms 600000
echo "--- ringway (1 worker on CPU $SERVER_CPU)"
run_load ringway ringway "$WS" "$ADMIN" "$SERVER_PID"
stop_server

start_sockudo
echo "--- sockudo $(bench/.peers/bin/sockudo --version 2>/dev/null | head -1) (CPU $SERVER_CPU)"
run_load sockudo pusher "$PEER" "$PEER" "$PEER_PID"

python3 bench/fanout-compare.py "$OUT/push-ringway.json" "$OUT/push-sockudo.json"
