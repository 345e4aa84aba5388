#!/usr/bin/env bash
# Echo with ACK on one server core: ringway against the plain tokio-tungstenite echo server
# (bench/peers/echo-baseline), with raw TCP echo (bench/peers tcp-echo) as the physical
# reference. The three servers take turns for ROUNDS rounds, so drift in the machine's
# background hits them alike; prints each round's figures and the median ratios, of ACKs/s
# and of ACKs per server core-second (the load generator, on one core, cannot saturate the
# fastest server). PIPELINE > 1 keeps that many messages in flight per link. With UWS_ECHO set
# to a built uWebSockets echo server (bench/peers/uws.sh builds one from a local snapshot), it
# takes its turn too, on its fixed port 9001.
# Usage: bench/echo-vs-baseline.sh [links] [seconds] [codec] [rounds] [pipeline]
source "$(dirname "$0")/common.sh"
LINKS=${1:-100}
SECS=${2:-10}
CODEC=${3:-proto}
ROUNDS=${4:-3}
PIPELINE=${5:-1}
PEER=127.0.0.1:18090
TCP=127.0.0.1:18091
cargo build --release --locked -p echo-baseline
PEER_PID=
trap 'stop_server; kill $PEER_PID 2>/dev/null || true' EXIT

load() { # name server pid extra...
  local name=$1 server=$2 pid=$3; shift 3
  taskset -c "$LOAD_CPU" target/release/ringway-load echo --server "$server" --jwt-secret "$SECRET" \
    --links "$LINKS" --duration "$SECS" --codec "$CODEC" --pipeline "$PIPELINE" --server-pid "$pid" "$@" \
    --json-out "$OUT/echo-$name-$round.json" --plot "$OUT/echo-$name-$round.svg" >/dev/null 2>&1
}
peer() { # binary addr name extra...
  local bin=$1 addr=$2 name=$3; shift 3
  taskset -c "$SERVER_CPU" "target/release/$bin" "$addr" 2>/dev/null &
  PEER_PID=$!
  wait_port "$addr"
  load "$name" "$addr" "$PEER_PID" "$@"
  kill "$PEER_PID"; wait "$PEER_PID" 2>/dev/null || true; PEER_PID=
}

for round in $(seq "$ROUNDS"); do
  echo "--- round $round: ringway (1 worker), tokio-tungstenite echo, raw TCP echo, each on CPU $SERVER_CPU"
  start_server
  load ringway "$WS" "$SERVER_PID"
  stop_server
  peer echo-baseline "$PEER" baseline --target plain
  peer tcp-echo "$TCP" tcp --target tcp --size 80
  if [ -n "${UWS_ECHO:-}" ]; then
    taskset -c "$SERVER_CPU" "$UWS_ECHO" >/dev/null 2>&1 &
    PEER_PID=$!
    wait_port 127.0.0.1:9001
    load uws 127.0.0.1:9001 "$PEER_PID" --target plain
    kill "$PEER_PID"; wait "$PEER_PID" 2>/dev/null || true; PEER_PID=
  fi
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
vs_base, vs_tcp, core_base, core_tcp = [], [], [], []
per_core = lambda d: d["acks_per_second"] / (d["server_cores_busy"] or 1)
for i in range(1, rounds + 1):
    r, b, t = (json.load(open(f"{out}/echo-{n}-{i}.json")) for n in ("ringway", "baseline", "tcp"))
    for name, d in (("ringway", r), ("baseline", b), ("raw tcp", t)):
        l = d["latency_us"]
        print(f"round {i} {name:9} {d['acks_per_second']:>10.0f} acks/s  p50 {l['p50']:>6} us  p99 {l['p99']:>6} us  "
              f"server core busy {100 * (d['server_cores_busy'] or 0):.0f}%  {per_core(d):>8.0f} per core-second  "
              f"errors {d['errors']}")
    vs_base.append(r["acks_per_second"] / b["acks_per_second"])
    vs_tcp.append(r["acks_per_second"] / t["acks_per_second"])
    core_base.append(per_core(r) / per_core(b))
    core_tcp.append(per_core(r) / per_core(t))
    print(f"round {i} ratio ringway/baseline {vs_base[-1]:.2f}x, ringway/raw tcp {vs_tcp[-1]:.2f}x; "
          f"per core-second {core_base[-1]:.2f}x, {core_tcp[-1]:.2f}x")
m = statistics.median
print(f"median ratio ringway/baseline: {m(vs_base):.2f}x "
      f"(range {min(vs_base):.2f}-{max(vs_base):.2f}); ringway/raw tcp: {m(vs_tcp):.2f}x")
import os
if os.path.exists(f"{out}/echo-uws-1.json") and os.environ.get("UWS_ECHO"):
    u = [json.load(open(f"{out}/echo-uws-{i}.json")) for i in range(1, rounds + 1)]
    t = [json.load(open(f"{out}/echo-tcp-{i}.json")) for i in range(1, rounds + 1)]
    for i, d in enumerate(u, 1):
        l = d["latency_us"]
        print(f"round {i} uws       {d['acks_per_second']:>10.0f} acks/s  p50 {l['p50']:>6} us  p99 {l['p99']:>6} us  "
              f"server core busy {100 * (d['server_cores_busy'] or 0):.0f}%  {per_core(d):>8.0f} per core-second")
    print(f"median per server core-second: uws/raw tcp "
          f"{m(per_core(a) / per_core(b) for a, b in zip(u, t)):.2f}x")
print(f"median per server core-second: ringway/baseline {m(core_base):.2f}x "
      f"(range {min(core_base):.2f}-{max(core_base):.2f}); ringway/raw tcp {m(core_tcp):.2f}x "
      f"(range {min(core_tcp):.2f}-{max(core_tcp):.2f})")
PY
