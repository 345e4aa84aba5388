#!/usr/bin/env bash
# Upstream through the gRPC backend, batching off (--batch-size 1) and on (--batch-size 32),
# in one run. The gateway (its worker and control thread) runs on $SERVER_CPU; the load
# generator and the test backend share $LOAD_CPU.
# Usage: bench/grpc-upstream.sh [links] [seconds]
source "$(dirname "$0")/common.sh"
LINKS=${1:-200}
SECS=${2:-10}
BACKEND=127.0.0.1:15051

taskset -c "$LOAD_CPU" target/release/ringway-test-backend --listen "$BACKEND" >/dev/null &
BACKEND_PID=$!
trap 'stop_server; kill $BACKEND_PID 2>/dev/null || true' EXIT

for batch in 1 32; do
  start_server --backend "grpc://$BACKEND" --batch-size "$batch" --batch-delay-ms 2
  echo "--- batch size $batch"
  taskset -c "$LOAD_CPU" target/release/ringway-load echo --server "$WS" --jwt-secret "$SECRET" \
    --links "$LINKS" --duration "$SECS" --user-prefix "b$batch-" --server-pid "$SERVER_PID" \
    --json-out "$OUT/grpc-batch-$batch.json"
  curl -s "http://$ADMIN/metrics" | grep -E '^ringway_backend_(calls|messages)_total'
  stop_server
done
