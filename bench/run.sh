#!/usr/bin/env bash
# Reproduces every figure in bench/RESULTS.md on this machine: installs the peers, then runs each
# benchmark with the server on CPU $SERVER_CPU (default 0) and the load on CPU $LOAD_CPU (1).
# Output and JSON summaries (plus latency plots as SVG) go to bench/out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bench/install-peers.sh
bench/single-node.sh 15000 10
bench/grpc-upstream.sh 200 10
bench/echo-vs-baseline.sh 100 10 proto 5
bench/push-vs-sockudo.sh 2000 2000 50 10 8 # saturating: 8 senders keep both servers busy
bench/push-vs-sockudo.sh 2000 500 50 10    # below both servers' capacity
