"""LL-HLS blocking playlist reload under load: N concurrent requests for a part that does not exist yet.

The origin (one node process, this one) packages real H.264 + Opus RTP replayed in real time; a separate client
process opens N keep-alive connections on loopback, sends N ``?_HLS_msn=M&_HLS_part=P`` requests for a part two
ahead of the newest, and records when each full response has arrived. The figure is that time minus the moment
the part was published (both on this machine's wall clock). Origin CPU is this process's CPU time per round.

    .venv/bin/python -m benchmarks.hls_blocking --clients 1000 --rounds 5

Prints JSON and a one-line summary; writes benchmarks/results/hls-blocking-<time>.json. Loopback only, bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from aiohttp import web

import webrtc_cast  # noqa: F401
from signaling.http_api import create_app
from webrtc_cast.node import Node
from webrtc_cast.settings import Settings

ROOT = Path(__file__).resolve().parents[1]

CLIENT = r"""
import asyncio, json, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
async def one(reader, writer, go, out, path):
    await go.wait()
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept-Encoding: gzip\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    out.append((time.time(), int(head[9:12])))
    writer.close()
async def main():
    conns = []
    for i in range(0, n, 100):
        conns += await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(min(100, n - i))))
    print("ready", flush=True)
    path = sys.stdin.readline().strip()
    go, out = asyncio.Event(), []
    tasks = [asyncio.create_task(one(r, w, go, out, path)) for r, w in conns]
    sent = time.time()
    go.set()
    await asyncio.gather(*tasks)
    print(json.dumps({"sent": sent, "done": out}), flush=True)
asyncio.run(main())
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def replay(packager, seconds: float) -> None:
    from tests.unit.hls_media import rtp_feed

    feed = rtp_feed(seconds, start=0.0)
    t0 = time.monotonic()
    for trk, pkt, at in feed.events:
        delay = t0 + at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        packager.tap(trk, pkt, False, time.monotonic(), "bench")


async def run(clients: int, rounds: int) -> dict:
    settings = Settings(host="127.0.0.1", port=free_port(), http_requests_per_second=1e9, http_burst=10**9)
    node = Node(settings)
    app = create_app(node)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", settings.port, backlog=4096).start()
    node.broadcast("bench")
    service = node.on_broadcast_created[0].__self__
    packager = service.packagers["bench"]
    feeder = asyncio.create_task(replay(packager, 6.0 + rounds * 4.0))
    results = []
    try:
        while "video" not in packager.renditions() or packager.renditions()["video"].last_part is None:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)
        video = packager.renditions()["video"]
        for _ in range(rounds):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", CLIENT, str(settings.port), str(clients),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
            )
            assert (await proc.stdout.readline()).strip() == b"ready"  # type: ignore[union-attr]
            # the part after the next one: about 0.25-0.5 s ahead when the requests go out
            msn, part = video.next_part()
            part += 1
            path = f"/hls/bench/video.m3u8?_HLS_msn={msn}&_HLS_part={part}"
            published: list[float] = []
            previous = packager.on_change

            def on_change(prev=previous, m=msn, p=part, out=published) -> None:  # noqa: ANN001
                if not out and video.has_part(m, p):
                    out.append(time.time())
                prev()

            packager.on_change = on_change
            cpu0 = time.process_time()
            wall0 = time.monotonic()
            proc.stdin.write(path.encode() + b"\n")  # type: ignore[union-attr]
            await proc.stdin.drain()  # type: ignore[union-attr]
            out = json.loads(await proc.stdout.readline())  # type: ignore[union-attr]
            await proc.wait()
            cpu = time.process_time() - cpu0
            wall = time.monotonic() - wall0
            packager.on_change = previous
            done = [t for t, status in out["done"] if status == 200]
            pub = published[0] if published else float("nan")
            lat = sorted((t - pub) * 1000 for t in done)
            results.append({
                "ok": len(done), "errors": len(out["done"]) - len(done), "blocked_ms": (pub - out["sent"]) * 1000,
                "after_publish_p50_ms": statistics.median(lat), "p95_ms": lat[int(0.95 * (len(lat) - 1))],
                "max_ms": lat[-1], "origin_cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
            })
            await asyncio.sleep(0.6)
    finally:
        feeder.cancel()
        await runner.cleanup()
    return {"clients": clients, "rounds": results, "cpu_count": os.cpu_count()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args(argv)
    if not 1 <= a.clients <= 5000:
        raise SystemExit("--clients must be 1..5000 (loopback, bounded)")
    res = asyncio.run(run(a.clients, a.rounds))
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"hls-blocking-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res))
    p50 = statistics.median(r["after_publish_p50_ms"] for r in res["rounds"])
    worst = max(r["max_ms"] for r in res["rounds"])
    cpu = statistics.median(r["origin_cpu_s"] for r in res["rounds"])
    print(f"hls_blocking: {a.clients} blocked requests/round, answered p50 {p50:.1f} ms / max {worst:.1f} ms after "
          f"the part's publication, origin CPU {cpu:.2f} s per round")
    return 0


if __name__ == "__main__":
    sys.exit(main())
