#!/usr/bin/env bash
# The real services ringway talks to, on loopback.
#   scripts/services.sh install   install them (Debian packages; root or sudo)
#   scripts/services.sh start     start them for local runs: redis on 127.0.0.1:6379
#   scripts/services.sh stop      stop what `start` started
# Tests start their own instances on free ports and stop them when they end; they only need
# `install`.
set -euo pipefail
cd "$(dirname "$0")/.."
run_dir=.ringway-run

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

install() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || { echo "install ${missing[*]} with your package manager" >&2; exit 1; }
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

start() {
  install
  mkdir -p "$run_dir"
  if ! redis-cli -p 6379 ping >/dev/null 2>&1; then
    redis-server --bind 127.0.0.1 --port 6379 --save "" --appendonly no --daemonize yes \
      --pidfile "$PWD/$run_dir/redis.pid" --logfile "$PWD/$run_dir/redis.log"
    for _ in $(seq 100); do redis-cli -p 6379 ping >/dev/null 2>&1 && break; sleep 0.05; done
  fi
  echo "redis: redis://127.0.0.1:6379"
}

stop() {
  if [ -f "$run_dir/redis.pid" ]; then
    kill "$(cat "$run_dir/redis.pid")" 2>/dev/null || true
    rm -f "$run_dir/redis.pid"
  fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
