#!/usr/bin/env bash
# Push fan-out on one server core: ringway (HTTP push API, per-link ack and retransmit) against
# sockudo (Pusher protocol: signed HTTP events to per-user channels, no acks), the same links,
# rate and fan-out, in one run. Prints deliveries/s, push-to-client latency and the ratios.
# sockudo is installed from crates.io into bench/.peers by bench/install-peers.sh.
# Usage: bench/push-vs-sockudo.sh [links] [pushes_per_s] [fanout] [seconds] [senders] [rounds]
# senders: HTTP connections posting at once (a saturating run needs several: with one, each
# push waits for the answer to the one before, so the server's answer time caps the rate).
# rounds: the servers alternate which goes first; medians over the rounds.
source "$(dirname "$0")/common.sh"
LINKS=${1:-2000}
RATE=${2:-2000}
FANOUT=${3:-50}
SECS=${4:-10}
SENDERS=${5:-1}
ROUNDS=${6:-1}
bench/install-peers.sh
trap 'stop_server; stop_sockudo' EXIT

run_load() { # name target server admin pid round
  taskset -c "$LOAD_CPU" target/release/ringway-load push --target "$2" --server "$3" \
    --admin "$4" --jwt-secret "$SECRET" --links "$LINKS" --rate "$RATE" --fanout "$FANOUT" \
    --senders "$SENDERS" --duration "$SECS" --sources 127.0.0.1,127.0.0.2 --server-pid "$5" \
    --user-prefix "$1-" \
    --json-out "$OUT/push-$1-$6.json" --plot "$OUT/push-$1-$6.svg" >/dev/null
}

echo "push: $LINKS links, $RATE pushes/s x $FANOUT, $SECS s, $SENDERS sender(s), $ROUNDS round(s)"
against_sockudo push
