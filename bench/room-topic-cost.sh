#!/usr/bin/env bash
# What a room message costs a node that has none of the room's members: every node reads the
# whole room topic (a consumer group of its own), so in a fleet of N nodes each message is read
# N times. Produces RoomMessage records to the room topic of one idle node (Tansu on loopback)
# at a steady rate and prints the node's CPU per record, the figure that says when a fleet is
# large enough for a per-room node set to pay (README, "Rooms, broadcast and presence").
# Usage: bench/room-topic-cost.sh [records_per_s] [seconds]
source "$(dirname "$0")/common.sh"
RATE=${1:-2000}
SECS=${2:-10}
trap 'stop_server; stop_pid BROKER_PID' EXIT
start_tansu
for t in ringway.rooms ringway.push ringway.undelivered; do topic "$t"; done
start_server --kafka "$BROKER"
for _ in $(seq 300); do
  grep -q "partitions assigned.*ringway.rooms" "$OUT/server.log" && break
  sleep 0.1
done
cpu() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }
idle_before=$(cpu)
sleep "$SECS"
idle=$(( $(cpu) - idle_before ))
before=$(cpu)
taskset -c "$LOAD_CPU" python3 - "$BROKER" "$RATE" "$SECS" <<'PY'
import sys, time
from confluent_kafka import Producer
broker, rate, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def field(n, b):  # a length-delimited protobuf field
    return bytes([n << 3 | 2, len(b)]) + b
p = Producer({"bootstrap.servers": broker, "linger.ms": 1})
start, n = time.monotonic(), 0
while time.monotonic() - start < secs:
    due = start + n / rate
    time.sleep(max(0, due - time.monotonic()))
    msg = bytes([1 << 3, 1]) + field(2, b"nobody-here") + field(3, b"k%d" % n) + field(4, b"x" * 64)
    p.produce("ringway.rooms", msg)
    p.poll(0)
    n += 1
p.flush(10)
print(f"produced {n} room messages in {time.monotonic() - start:.1f} s")
PY
sleep 2 # the node reads what is left
busy=$(( $(cpu) - before - idle ))
hz=$(getconf CLK_TCK)
python3 -c "
busy, hz, rate, secs = $busy, $hz, $RATE, $SECS
s = busy / hz
print(f'node CPU for {rate * secs} room messages with no member here: {s:.2f} s (idle subtracted), {1e6 * s / (rate * secs):.1f} us per message')
"
