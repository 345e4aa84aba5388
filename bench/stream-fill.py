#!/usr/bin/env python3
"""Fills a gateway's users' streams through its push API and measures what that costs.

Posts PER_USER pushes to each of USERS users who are not connected (so every push is stored
and reported offline), 500 users a request, then waits until the gateway has appended them
all. Prints one JSON line: appends per second and per server core-second, the server's RSS
before and after and the growth per stored push, the store's own byte count
(ringway_stream_bytes), and with Redis the pipelines (round trips) the appends took.

With REDIS_PORT, also the memory Redis holds per stored push (its used_memory).

Usage: bench/stream-fill.py ADMIN PID USERS PER_USER BODY_BYTES [REDIS_PORT]
"""
import base64
import http.client
import json
import os
import socket
import sys
import time

admin, pid, users, per_user, body_bytes = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:6])
redis_port = int(sys.argv[6]) if len(sys.argv) > 6 else None
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds():
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_bytes():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def redis_memory():
    if redis_port is None:
        return 0
    with socket.create_connection(("127.0.0.1", redis_port)) as r:
        r.sendall(b"INFO memory\r\n")
        data = b""
        while b"used_memory:" not in data or not data.endswith(b"\r\n"):
            data += r.recv(65536)
    for line in data.decode().splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":")[1])
    return 0


def metric(conn, name):
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


host, port = admin.split(":")
conn = http.client.HTTPConnection(host, int(port))
names = [f"fill{i}" for i in range(users)]
body = base64.b64encode(b"x" * body_bytes).decode()
before = {
    "rss": rss_bytes(),
    "cpu": cpu_seconds(),
    "appends": metric(conn, "ringway_stream_appends_total"),
    "batches": metric(conn, "ringway_stream_append_batches_total"),
    "redis": redis_memory(),
}
target = before["appends"] + users * per_user
started = time.monotonic()
for k in range(per_user):
    for i in range(0, users, 500):
        req = {"biz_id": 1, "user_ids": names[i : i + 500], "key": f"fill-{k}", "body": body}
        conn.request("POST", "/v1/push", json.dumps(req), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 202:
            sys.exit(f"POST /v1/push answered {resp.status}")
while metric(conn, "ringway_stream_appends_total") < target:
    if time.monotonic() - started > 300:
        sys.exit("the appends did not finish within 300 s")
    time.sleep(0.01)
secs = time.monotonic() - started
cpu = cpu_seconds() - before["cpu"]
entries = users * per_user
time.sleep(1.2)  # the store's byte count is copied once a second
after_rss = rss_bytes()
print(json.dumps({
    "scenario": "stream-fill",
    "stored": entries,
    "body_bytes": body_bytes,
    "seconds": round(secs, 3),
    "appends_per_second": round(entries / secs),
    "server_cores_busy": round(cpu / secs, 3),
    "appends_per_server_core_second": round(entries / cpu) if cpu else None,
    "rss_before": before["rss"],
    "rss_after": after_rss,
    "rss_per_stored_push": round((after_rss - before["rss"]) / entries, 1),
    "store_bytes": metric(conn, "ringway_stream_bytes"),
    "append_round_trips": metric(conn, "ringway_stream_append_batches_total") - before["batches"],
    "redis_bytes_per_stored_push": round((redis_memory() - before["redis"]) / entries, 1)
    if redis_port
    else None,
}))
