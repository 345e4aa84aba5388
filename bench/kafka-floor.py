"""The broker's own latency floor: records produced at a steady rate and read back by one
consumer, timed from produce to consume, with no gateway in between. Run beside a gateway's
Kafka round, on the same broker and at the same record rate, it tells what the broker adds
from what the gateway adds. Producer and consumer use the gateway's defaults (linger 1 ms,
fetch wait 10 ms unless given).

Usage: kafka-floor.py BROKER TOPIC RECORDS_PER_S SECONDS [FETCH_WAIT_MS] [--json FILE]
"""
import json
import struct
import sys
import threading
import time
import uuid

from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

MAGIC = b"FLR1"


def main():
    args = sys.argv[1:]
    out = None
    if "--json" in args:
        i = args.index("--json")
        out = args[i + 1]
        del args[i : i + 2]
    broker, topic, rate, secs = args[0], args[1], int(args[2]), float(args[3])
    wait = args[4] if len(args) > 4 else "10"
    consumer = Consumer(
        {
            "bootstrap.servers": broker,
            "group.id": "floor-" + uuid.uuid4().hex,
            "enable.auto.commit": False,
            "fetch.wait.max.ms": wait,
        }
    )
    consumer.assign([TopicPartition(topic, 0, OFFSET_END)])
    latencies = []
    done = threading.Event()
    reading = threading.Event()

    def consume():
        while not done.is_set():
            m = consumer.poll(0.05)
            reading.set()
            if m is None or m.error():
                continue
            v = m.value()
            if v[:4] == MAGIC:
                latencies.append(time.time() - struct.unpack("<d", v[4:12])[0])

    reader = threading.Thread(target=consume)
    reader.start()
    reading.wait(10)
    time.sleep(1)  # the first fetch positions the consumer at the log's end
    producer = Producer({"bootstrap.servers": broker, "linger.ms": "1"})
    n = int(rate * secs)
    start = time.time()
    for i in range(n):
        ahead = start + i / rate - time.time()
        if ahead > 0:
            time.sleep(ahead)
        producer.produce(topic, MAGIC + struct.pack("<d", time.time()))
        producer.poll(0)
    producer.flush(10)
    deadline = time.time() + 10
    while len(latencies) < n and time.time() < deadline:
        time.sleep(0.05)
    done.set()
    reader.join()
    consumer.close()
    latencies.sort()

    def pct(f):
        return round(latencies[min(len(latencies) - 1, int(f * len(latencies)))] * 1e6) if latencies else None

    summary = {"records": n, "received": len(latencies), "fetch_wait_ms": int(wait),
               "latency_us": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)}}
    if out:
        with open(out, "w") as f:
            json.dump(summary, f)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
