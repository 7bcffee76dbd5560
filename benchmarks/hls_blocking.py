"""LL-HLS blocking playlist reload under load: N concurrent requests for a part that does not exist yet.

The origin (one node process, this one, pinned to CPU 0) packages real H.264 + Opus RTP replayed in real time; a
separate client process (pinned to CPU 1; no asyncio, one epoll loop, so it reads 1,000 answers in a few ms) opens
N keep-alive connections on loopback, sends N ``?_HLS_msn=M&_HLS_part=P`` requests for a part 0.5-0.75 s ahead,
and records when each full response has arrived. The figure is that time minus the moment the packager published
the part (one machine clock). Origin CPU: this process's CPU time over the round, and the part of it spent
answering the blocked requests once the part exists. ``--via nginx-lock|nginx-nolock`` puts nginx (the browser
test's cache settings, proxy_cache_lock on or off) between the clients and the origin.

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
from webrtc_cast.app import create_app
from webrtc_cast.node import Node
from webrtc_cast.settings import Settings

ROOT = Path(__file__).resolve().parents[1]

CLIENT = r"""
# The load generator: a separate process, no asyncio, one epoll loop over N blocking-free sockets, so that reading
# 1,000 answers costs a few microseconds each and the figure is the origin's, not the client's.
import json, os, select, socket, sys, time
port, n, cpu = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
if cpu >= 0:
    os.sched_setaffinity(0, {cpu})
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
for s in socks:
    s.setblocking(False)
by_fd = {s.fileno(): s for s in socks}
print("ready", flush=True)
path = sys.stdin.readline().strip()
req = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept-Encoding: gzip\r\n\r\n".encode()
ep = select.epoll(n)
for fd in by_fd:
    ep.register(fd, select.EPOLLIN)
bufs, need, done = {fd: b"" for fd in by_fd}, {}, []
sent = time.time()
for s in socks:
    s.send(req)
sent_end = time.time()
left, deadline = n, time.monotonic() + 20
while left and time.monotonic() < deadline:
    for fd, _ in ep.poll(1.0):
        data = by_fd[fd].recv(65536)
        now = time.time()
        buf = bufs[fd] = bufs[fd] + data
        if fd not in need:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if not data:
                    ep.unregister(fd); left -= 1; done.append((now, 0))
                continue
            length = 0
            for line in buf[:end].split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            need[fd] = (end + 4 + length, int(buf[9:12]))
        total, status = need[fd]
        if len(buf) >= total or not data:
            ep.unregister(fd)
            left -= 1
            done.append((now, status if len(buf) >= total else 0))
print(json.dumps({"sent": sent, "sent_end": sent_end, "done": done}), flush=True)
"""


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    proxy_temp_path {tmp}/proxy;
    client_body_temp_path {tmp}/body;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    proxy_cache_path {tmp}/cache levels=1:2 keys_zone=hls:10m max_size=64m inactive=60s use_temp_path=off;
    upstream origin {{ server 127.0.0.1:{origin}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location /hls/ {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache hls;
            proxy_cache_key $scheme$proxy_host$uri$is_args$args;
            proxy_cache_lock {lock};
            proxy_cache_lock_timeout 10s;
            proxy_read_timeout 30s;
        }}
    }}
}}
"""


def start_nginx(origin: int, lock: bool) -> tuple[subprocess.Popen, int, str]:
    """nginx as the CDN edge in front of the origin (the browser test's cache settings), on a free port."""
    import shutil
    import tempfile

    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    tmp = tempfile.mkdtemp(prefix="hls-bench-nginx-")
    os.chmod(tmp, 0o777)  # nginx workers may run as nobody
    port = free_port()
    conf = Path(tmp) / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, origin=origin, port=port, lock="on" if lock else "off"))
    proc = subprocess.Popen([nginx, "-p", tmp, "-c", str(conf)])
    return proc, port, tmp


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


async def run(clients: int, rounds: int, pin: bool, via: str | None = None) -> dict:
    settings = Settings(host="127.0.0.1", port=free_port(), http_requests_per_second=1e9, http_burst=10**9)
    origin_cpu, client_cpu = (0, 1) if pin and os.cpu_count() and os.cpu_count() >= 2 else (-1, -1)
    if origin_cpu >= 0:
        os.sched_setaffinity(0, {origin_cpu})
    node = Node(settings)
    app = create_app(node)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", settings.port, backlog=4096).start()
    target, edge = settings.port, None
    if via is not None:
        edge, target, edge_dir = start_nginx(settings.port, lock=via == "nginx-lock")
        await asyncio.sleep(0.5)
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
                sys.executable,
                "-c",
                CLIENT,
                str(target),
                str(clients),
                str(client_cpu),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                cwd=ROOT,
            )
            assert (await proc.stdout.readline()).strip() == b"ready"  # type: ignore[union-attr]
            # two parts after the next one: 0.5-0.75 s ahead when the requests go out, so that all of them are
            # parsed and waiting when it is published (taking in 1,000 requests costs the origin ~0.2 CPU-s)
            msn, part = video.next_part()
            part += 2
            path = f"/hls/bench/video.m3u8?_HLS_msn={msn}&_HLS_part={part}"
            published: list[float] = []
            waiting: list[int] = []
            release_cpu: list[float] = []
            previous = packager.on_change
            release = service._release

            def on_change(prev=previous, m=msn, p=part, out=published, waiting=waiting) -> None:  # noqa: ANN001
                if not out and video.has_part(m, p):
                    out.append(time.time())  # the part is published: the origin answers from here on
                    waiting.append(sum(len(g.waiters) for g in service._groups.get("bench", {}).values()))
                prev()

            def timed_release(stream: str, cpu=release_cpu, out=published, release=release) -> None:  # noqa: ANN001
                c0 = time.process_time()
                release(stream)
                if out and not cpu:
                    cpu.append(time.process_time() - c0)  # answering the blocked requests: CPU of the origin

            packager.on_change = on_change
            service._release = timed_release
            cpu0 = time.process_time()
            wall0 = time.monotonic()
            proc.stdin.write(path.encode() + b"\n")  # type: ignore[union-attr]
            await proc.stdin.drain()  # type: ignore[union-attr]
            out = json.loads(await proc.stdout.readline())  # type: ignore[union-attr]
            await proc.wait()
            cpu = time.process_time() - cpu0
            wall = time.monotonic() - wall0
            packager.on_change = previous
            service._release = release
            done = [t for t, status in out["done"] if status == 200]
            pub = published[0] if published else float("nan")
            lat = sorted((t - pub) * 1000 for t in done)
            results.append(
                {
                    "ok": len(done),
                    "errors": clients - len(done),
                    "blocked_ms": round((pub - out["sent"]) * 1000, 1),
                    "waiting_at_publication": waiting[0] if waiting else None,
                    "send_spread_ms": round((out["sent_end"] - out["sent"]) * 1000, 1),
                    "after_publish_p50_ms": round(statistics.median(lat), 2),
                    "p95_ms": round(lat[int(0.95 * (len(lat) - 1))], 2),
                    "max_ms": round(lat[-1], 2),
                    "within_50ms": sum(x <= 50 for x in lat),
                    "release_cpu_ms": round(release_cpu[0] * 1000, 2) if release_cpu else None,
                    "origin_cpu_s": round(cpu, 3),
                    "wall_s": round(wall, 3),
                }
            )
            await asyncio.sleep(0.6)
    finally:
        feeder.cancel()
        await runner.cleanup()
        if edge is not None:
            import shutil

            edge.terminate()
            edge.wait(timeout=5)
            shutil.rmtree(edge_dir, ignore_errors=True)
    load = os.getloadavg()
    return {
        "clients": clients,
        "rounds": results,
        "cpu_count": os.cpu_count(),
        "pinned": origin_cpu >= 0,
        "via": via or "origin",
        "loadavg_after": [round(x, 2) for x in load],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument(
        "--no-pin", action="store_true", help="do not pin the origin to CPU 0 and the load generator to CPU 1"
    )
    p.add_argument(
        "--via",
        choices=["nginx-lock", "nginx-nolock"],
        help="the clients go through nginx (proxy_cache; proxy_cache_lock on or off) instead of the origin",
    )
    a = p.parse_args(argv)
    if not 1 <= a.clients <= 5000:
        raise SystemExit("--clients must be 1..5000 (loopback, bounded)")
    res = asyncio.run(run(a.clients, a.rounds, not a.no_pin, a.via))
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"hls-blocking-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res))
    p50 = statistics.median(r["after_publish_p50_ms"] for r in res["rounds"])
    worst = max(r["max_ms"] for r in res["rounds"])
    cpu = statistics.median(r["origin_cpu_s"] for r in res["rounds"])
    release = statistics.median(r["release_cpu_ms"] or 0 for r in res["rounds"])
    ok = sum(r["within_50ms"] for r in res["rounds"])
    print(
        f"hls_blocking: {a.clients} blocked requests/round x {len(res['rounds'])}, answered p50 {p50:.1f} ms / "
        f"max {worst:.1f} ms after the part's publication ({ok}/{a.clients * len(res['rounds'])} within 50 ms); "
        f"origin CPU {cpu:.2f} s per round, of which {release:.1f} ms to answer them; "
        f"load average after {res['loadavg_after'][0]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
