"""A closed-loop HTTP load generator: C connections (keep-alive), each sending the next request as
soon as the previous answer arrives. Plain asyncio streams, so the generator costs little CPU next
to the server it measures. Run as its own process:

    python -m bench.loadgen URL PATH BODY_FILE --concurrency 32 --seconds 10  ->  JSON on stdout
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlparse

import numpy as np


async def _connection(host: str, port: int, request: bytes, until: float, latencies: list, statuses: dict) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < until:
            start = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            if not status_line:
                statuses["closed"] = statuses.get("closed", 0) + 1
                return
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:].strip())
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            code = status_line.split(b" ", 2)[1].decode()
            statuses[code] = statuses.get(code, 0) + 1
    finally:
        writer.close()


async def run(url: str, path: str, body: bytes, concurrency: int, seconds: float) -> dict:
    parsed = urlparse(url)
    host, port = parsed.hostname, parsed.port
    request = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    start = time.perf_counter()
    until = start + seconds
    await asyncio.gather(*[_connection(host, port, request, until, latencies, statuses) for _ in range(concurrency)])
    elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    ok = statuses.get("200", 0)
    return {"concurrency": concurrency, "seconds": elapsed, "requests": len(latencies), "ok": ok,
            "errors": len(latencies) - ok + statuses.get("closed", 0), "statuses": statuses,
            "rps": ok / elapsed, "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("path")
    parser.add_argument("body_file")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with open(args.body_file, "rb") as f:
        body = f.read()
    print(json.dumps(asyncio.run(run(args.url, args.path, body, args.concurrency, args.seconds))))


if __name__ == "__main__":
    main()
