#!/usr/bin/env bash
# One room on one server core: ringway (every link joins the room by its token's claim, best-effort
# POST /v1/rooms/publish) against sockudo (every link subscribed to one Pusher channel, signed HTTP
# events to it), the same links, message rate and size, alternating rounds. Prints deliveries/s,
# publish-to-client latency, the server core's busy share, and medians with their ratios.
# Usage: bench/room-vs-sockudo.sh [links] [messages_per_s] [seconds] [senders] [rounds]
source "$(dirname "$0")/common.sh"
LINKS=${1:-10000}
RATE=${2:-10}
SECS=${3:-10}
SENDERS=${4:-1}
ROUNDS=${5:-3}
bench/install-peers.sh
trap 'stop_server; stop_sockudo' EXIT
echo "room of $LINKS members, $RATE messages/s for $SECS s, $SENDERS sender(s), $ROUNDS rounds"

run_load() { # name target server admin pid round
  taskset -c "$LOAD_CPU" target/release/ringway-load room --target "$2" --server "$3" \
    --admin "$4" --jwt-secret "$SECRET" --links "$LINKS" --rate "$RATE" --senders "$SENDERS" \
    --duration "$SECS" --sources 127.0.0.1,127.0.0.2 --server-pid "$5" --room bench-room \
    --user-prefix "$1-" --json-out "$OUT/room-$1-$6.json" >/dev/null
}

against_sockudo room
