#!/usr/bin/env bash
# Reproduces the figures in bench/RESULTS.md on this machine: installs the peers, then runs each
# benchmark with the server on CPU $SERVER_CPU (default 0) and the load on CPU $LOAD_CPU (1).
# Output and JSON summaries (plus latency plots as SVG) go to bench/out/. Takes ~30 minutes
# (the churn soak alone is ten; the two room runs about five). Entries of RESULTS.md that compare old builds or settings
# (tried, not kept) name their own commands.
set -euo pipefail
cd "$(dirname "$0")/.."
bench/install-peers.sh
bench/single-node.sh 15000 10
bench/grpc-upstream.sh 200 10
bench/echo-vs-baseline.sh 100 10 proto 3
bench/push-vs-sockudo.sh 2000 2000 50 10 8 # saturating: 8 senders keep both servers busy
bench/push-vs-sockudo.sh 2000 300 50 10    # below both servers' capacity
bench/push-vs-sockudo.sh 10000 300 50 10   # 10,000 links
bench/stall.sh 4 3                         # a busy-loop on the server's CPU: nothing lost
bench/streams.sh 10000 10                  # stored pushes: memory, appends/s, a resume storm
bench/room-vs-sockudo.sh 10000 40 10 4 3   # a room of 10,000, saturating
bench/room-vs-sockudo.sh 10000 4 10 1 3    # a room of 10,000 at a rate both sustain
scripts/services.sh install                # Node's ws package for the deflate bench
bench/deflate-savings.sh
bench/soak.sh 10 2000
