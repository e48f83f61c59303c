#!/usr/bin/env python3
"""Closed-loop put load against etcd's HTTP/JSON gateway (POST /v3/kv/put), for
benches/compare.sh: `--outstanding` requests in flight, each on its own keep-alive connection
to the leader (etcd's gateway answers one request at a time per HTTP/1.1 connection), values
of `--size` bytes over `--keys` keys, as `rsl-kv cluster` writes. Prints one JSON line with the
throughput and latency percentiles.

The standard library only: etcd's own `benchmark` tool is not packaged in Debian, and
`etcdctl check perf` has fixed loads.
"""

import argparse
import asyncio
import base64
import json
import time
import urllib.request


def leader(endpoints):
    """The endpoint whose member is the leader (a follower would forward every put)."""
    for ep in endpoints:
        req = urllib.request.Request(ep + "/v3/maintenance/status", data=b"{}", method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            status = json.load(r)
        if status.get("leader") == status.get("header", {}).get("member_id"):
            return ep
    raise SystemExit("no etcd member says it is the leader")


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    status = head.split(b" ", 2)[1]
    headers = head.lower()
    if b"transfer-encoding: chunked" in headers:
        body = b""
        while True:
            size = int((await reader.readline()).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            body += chunk[:-2]
            if size == 0:
                break
    else:
        length = int(headers.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        body = await reader.readexactly(length)
    if status != b"200":
        raise RuntimeError(f"put answered {status!r}: {body[:200]!r}")
    return body


async def worker(host, port, size, keys, start, stop_at, latencies, index):
    reader, writer = await asyncio.open_connection(host, port)
    value = base64.b64encode(bytes([index % 251]) * size).decode()
    i = index
    while time.monotonic() < stop_at:
        key = base64.b64encode(b"k%d" % (i % keys)).decode()
        body = json.dumps({"key": key, "value": value}).encode()
        request = (
            b"POST /v3/kv/put HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (host.encode(), len(body))
        ) + body
        sent = time.monotonic()
        writer.write(request)
        await read_response(reader)
        if sent >= start:
            latencies.append(time.monotonic() - sent)
        i += 7919
    writer.close()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoints", required=True, help="comma-separated http://host:port")
    p.add_argument("--outstanding", type=int, default=256)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--warmup", type=float, default=1)
    a = p.parse_args()
    ep = leader(a.endpoints.split(","))
    host, port = ep.split("//", 1)[1].rsplit(":", 1)
    now = time.monotonic()
    start, stop_at = now + a.warmup, now + a.warmup + a.duration
    latencies = []
    await asyncio.gather(*(worker(host, int(port), a.size, a.keys, start, stop_at, latencies, i) for i in range(a.outstanding)))
    elapsed = time.monotonic() - start
    latencies.sort()
    pct = lambda q: int(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e6) if latencies else 0
    print(json.dumps({"requests": len(latencies), "seconds": round(elapsed, 3), "ops_per_sec": round(len(latencies) / elapsed),
                      "p50_us": pct(0.5), "p99_us": pct(0.99), "size": a.size, "outstanding": a.outstanding, "leader": ep}, separators=(",", ":")))


asyncio.run(main())
