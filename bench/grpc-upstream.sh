#!/usr/bin/env bash
# Upstream through the gRPC backend, batching off (--batch-size 1) and on (--batch-size 32),
# in one run. The gateway (its worker and control thread) runs on $SERVER_CPU; the load
# generator and the test backend share $LOAD_CPU.
# Usage: bench/grpc-upstream.sh [links] [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."

LINKS=${1:-200}
SECS=${2:-10}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
SECRET=bench-secret-0123456789
WS=127.0.0.1:18080
ADMIN=127.0.0.1:19090
BACKEND=127.0.0.1:15051
OUT=bench/out
mkdir -p "$OUT"

cargo build --release --locked -p ringway -p ringway-load
ulimit -n 20000
echo "machine: $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r), $(date -u +%F)"

taskset -c "$LOAD_CPU" target/release/ringway-test-backend --listen "$BACKEND" >/dev/null &
BACKEND_PID=$!
SERVER_PID=
cleanup() { kill $SERVER_PID $BACKEND_PID 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

for batch in 1 32; do
  taskset -c "$SERVER_CPU" target/release/ringway serve --workers 1 --listen "$WS" \
    --admin-listen "$ADMIN" --jwt-secret "$SECRET" --link-rate 0 \
    --backend "grpc://$BACKEND" --batch-size "$batch" --batch-delay-ms 2 >"$OUT/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 200); do curl -sf "http://$ADMIN/healthz" >/dev/null && break; sleep 0.05; done
  echo "--- batch size $batch"
  taskset -c "$LOAD_CPU" target/release/ringway-load echo --server "$WS" --jwt-secret "$SECRET" \
    --links "$LINKS" --duration "$SECS" --user-prefix "b$batch-" --server-pid "$SERVER_PID" \
    --json-out "$OUT/grpc-batch-$batch.json"
  curl -s "http://$ADMIN/metrics" | grep -E '^ringway_backend_(calls|messages)_total'
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
done
