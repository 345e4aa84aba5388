#!/usr/bin/env bash
# A local cluster for trying ringway out: Redis, etcd, a Kafka-protocol broker (Tansu) and the
# test gRPC backend (scripts/services.sh), plus N gateway nodes on loopback.
#   scripts/cluster.sh start [N]   build and start N nodes (default 3): node i takes clients on
#                                  127.0.0.1:808i and serves admin on 127.0.0.1:910i
#   scripts/cluster.sh status      each node's links and view of the fleet
#   scripts/cluster.sh drain I     drain node I (its links move to the others), as SIGTERM does
#   scripts/cluster.sh stop        drain every node, then stop the services
# Environment: RINGWAY_JWT_SECRET (default change-me-0123456789), RINGWAY_ADMIN_TOKEN (default
# dev-admin-token), and any other RINGWAY_* flag, which every node inherits.
set -euo pipefail
cd "$(dirname "$0")/.."
run_dir=.ringway-run
export RINGWAY_JWT_SECRET=${RINGWAY_JWT_SECRET:-change-me-0123456789}
export RINGWAY_ADMIN_TOKEN=${RINGWAY_ADMIN_TOKEN:-dev-admin-token}

start() {
  local n=${1:-3}
  scripts/services.sh start
  cargo build --release --bin ringway
  for i in $(seq 0 $((n - 1))); do
    if [ -f "$run_dir/node-$i.pid" ] && kill -0 "$(cat "$run_dir/node-$i.pid")" 2>/dev/null; then
      echo "node-$i already running"; continue
    fi
    # setsid: the node outlives the shell that started it.
    setsid target/release/ringway serve --node-id "node-$i" \
      --listen "127.0.0.1:$((8080 + i))" --admin-listen "127.0.0.1:$((9100 + i))" \
      --etcd http://127.0.0.1:2379 --redis redis://127.0.0.1:6379 --kafka 127.0.0.1:9092 \
      --backend grpc://127.0.0.1:50051 --pin-cores false \
      >"$run_dir/node-$i.log" 2>&1 &
    echo $! > "$run_dir/node-$i.pid"
  done
  for i in $(seq 0 $((n - 1))); do
    for _ in $(seq 200); do
      curl -fs "127.0.0.1:$((9100 + i))/healthz" >/dev/null && break
      sleep 0.05
    done
    echo "node-$i: ws://127.0.0.1:$((8080 + i))/ws  admin http://127.0.0.1:$((9100 + i))  log $run_dir/node-$i.log"
  done
  echo "token: target/release/ringway token --user alice   (secret from RINGWAY_JWT_SECRET)"
}

nodes() { ls "$run_dir"/node-*.pid 2>/dev/null | sed 's/.*node-\([0-9]*\)\.pid/\1/' | sort -n; }

status() {
  for i in $(nodes); do
    local m
    m=$(curl -fs "127.0.0.1:$((9100 + i))/metrics" 2>/dev/null) || { echo "node-$i: down"; continue; }
    echo "node-$i: links $(echo "$m" | awk '$1=="ringway_links"{print $2}')," \
      "fleet $(echo "$m" | awk '$1=="ringway_fleet_nodes"{print $2}') nodes," \
      "draining $(echo "$m" | awk '$1=="ringway_draining"{print $2}')"
  done
}

drain() {
  local i=$1
  curl -fs -XPOST -H "Authorization: Bearer $RINGWAY_ADMIN_TOKEN" "127.0.0.1:$((9100 + i))/admin/drain"
  echo
}

stop() {
  for i in $(nodes); do
    kill "$(cat "$run_dir/node-$i.pid")" 2>/dev/null || true
  done
  for i in $(nodes); do
    local pid; pid=$(cat "$run_dir/node-$i.pid")
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$run_dir/node-$i.pid"
  done
  scripts/services.sh stop
}

case "${1:-}" in
  start) start "${2:-3}" ;;
  status) status ;;
  drain) drain "${2:?node index}" ;;
  stop) stop ;;
  *) echo "usage: $0 start [N]|status|drain I|stop" >&2; exit 2 ;;
esac
