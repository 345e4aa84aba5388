#!/usr/bin/env bash
# Reproduces the figures in bench/RESULTS.md on this machine: installs the peers, then runs each
# benchmark with the server on CPU $SERVER_CPU (default 0) and the load on CPU $LOAD_CPU (1).
# Output and JSON summaries (plus latency plots as SVG) go to bench/out/. Takes ~75 minutes
# (the churn soaks alone are fifteen; the room runs about five). uWebSockets' echo server is
# the one peer not installed here: bench/peers/uws.sh takes a local snapshot's path and runs
# the echo rows with it. Entries of RESULTS.md that compare old builds or settings
# (tried, not kept) name their own commands.
set -euo pipefail
cd "$(dirname "$0")/.."
bench/install-peers.sh
scripts/services.sh install   # the Kafka-protocol broker, and Node's ws package for the deflate bench
bench/single-node.sh 15000 10
bench/grpc-upstream.sh 200 10
bench/echo-vs-baseline.sh 100 10 proto 5      # closed loop, against raw TCP and tokio-tungstenite
bench/echo-vs-baseline.sh 100 10 proto 5 16   # pipelined: 16 messages in flight per link
bench/handshakes.sh 5000 5                    # accept + upgrade + JWT, against tokio-tungstenite's accept
bench/push-vs-sockudo.sh 2000 4000 50 10 8 5  # saturating: 8 senders keep both servers busy
bench/push-vs-sockudo.sh 2000 300 50 10 1 5   # below both servers' capacity
bench/push-vs-sockudo.sh 2000 1000 50 10 2 5
bench/kafka-vs-http.sh 2000 4000 10 10 3      # the Kafka ingress against HTTP at saturation
LOCATED=1 bench/kafka-vs-http.sh 2000 500 10 10 1   # the same with located routing (a Redis lookup per push)
bench/push-vs-sockudo.sh 10000 300 50 10   # 10,000 links
bench/stall.sh 4 3                         # a busy-loop on the server's CPU: nothing lost
bench/streams.sh 10000 10                  # stored pushes: memory, appends/s, a resume storm
bench/room-vs-sockudo.sh 10000 40 10 4 3   # a room of 10,000, saturating
bench/room-vs-sockudo.sh 10000 4 10 1 3    # a room of 10,000 at a rate both sustain
bench/deflate-savings.sh
bench/soak.sh 10 2000
bench/churn-soak.sh 3 10000 5 0.005 100 10    # 3 nodes x 10,000 links, 0.5 % churn a second
