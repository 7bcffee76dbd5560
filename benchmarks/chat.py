"""Chat fan-out benchmark: N WebSocket clients in one room on 127.0.0.1, M messages per second.

The server is a real node (aiohttp, GET /chat/{stream}) in a subprocess pinned to one core; the load
(N lean raw-socket WebSocket clients plus a few senders) runs in this process on another core. For each rate M
it measures over a fixed window: deliveries (message frames received by all clients), the server's CPU
seconds, hence deliveries per second per core, and the delivery latency (sender's send time in the text ->
arrival at a sampled client, same clock) p50/p99/max. A step fails on loss or a p99 over 100 ms; the ramp
stops there or at --budget seconds.

Prints one JSON object (also saved under benchmarks/results/) and one summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MESSAGE_PREFIX = b'{"type":"message"'
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _serve(port: int, buffer_bytes: int) -> None:
    """The server process: a node with the chat limits lifted for one address (the load is all on 127.0.0.1)."""
    from aiohttp import web

    import webrtc_cast  # noqa: F401
    from webrtc_cast.app import create_app
    from webrtc_cast.node import Node
    from webrtc_cast.settings import Settings

    settings = Settings(
        host="127.0.0.1", port=port, chat_max_connections_per_address=100_000, chat_messages_per_second=10_000.0,
        chat_message_burst=10_000, chat_frames_per_second=10_000.0, chat_frame_burst=10_000,
        chat_client_buffer_bytes=buffer_bytes, http_requests_per_second=1e6, http_burst=1_000_000,
    )
    web.run_app(create_app(Node(settings)), host="127.0.0.1", port=port, access_log=None, print=None,
                backlog=4096)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _run_queue_wait(pid: int) -> float:
    """Seconds the server's threads waited for a CPU (another process had the core): contention."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def _masked_text(payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    head = bytes((0x81, 0x80 | n)) if n < 126 else bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i & 3] for i, b in enumerate(payload))


class LeanClient(asyncio.Protocol):
    """A raw WebSocket client: handshake, join, then count message frames; a sampled one records latency."""

    def __init__(self, name: str, sample: bool, latencies: list[float]) -> None:
        self.name = name
        self.sample = sample
        self.latencies = latencies
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.upgraded = asyncio.get_running_loop().create_future()
        self.joined = asyncio.get_running_loop().create_future()
        self.messages = 0
        self.closed_code: int | None = None
        self.recording = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(  # type: ignore[attr-defined]
            f"GET /chat/bench HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if not self.upgraded.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            self.upgraded.set_result(buf.startswith(b"HTTP/1.1 101"))
            buf = buf[end + 4:]
            self.transport.write(_masked_text(json.dumps({"type": "join", "name": self.name}).encode()))
        pos, size = 0, len(buf)
        while size - pos >= 2:
            opcode, n = buf[pos] & 0x0F, buf[pos + 1] & 0x7F
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n, head = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            elif n == 127:
                if size - pos < 10:
                    break
                n, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            if size - pos < head + n:
                break
            start = pos + head
            if opcode == 1:
                if buf.startswith(MESSAGE_PREFIX, start):
                    self.messages += 1
                    if self.sample and self.recording:
                        payload = json.loads(buf[start:start + n])
                        with contextlib.suppress(ValueError):
                            self.latencies.append(time.perf_counter() - float(payload["text"].split()[0]))
                elif not self.joined.done() and buf.startswith(b'{"type":"history"', start):
                    self.joined.set_result(True)
            elif opcode == 8:
                self.closed_code = int.from_bytes(buf[start:start + 2], "big") if n >= 2 else 1005
            elif opcode == 9:  # ping -> pong
                self.transport.write(_masked_pong(buf[start:start + n]))
            pos = start + n
        self.buf = buf[pos:]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_result(False)
        if not self.joined.done():
            self.joined.set_result(False)

    def send(self, text: str) -> None:
        self.transport.write(_masked_text(json.dumps({"type": "message", "text": text}).encode()))


def _masked_pong(payload: bytes) -> bytes:
    mask = os.urandom(4)
    return bytes((0x8A, 0x80 | len(payload))) + mask + bytes(b ^ mask[i & 3] for i, b in enumerate(payload))


async def _connect_all(port: int, n: int, sample_every: int, latencies: list[float], deadline: float) -> list:
    loop = asyncio.get_running_loop()
    clients: list[LeanClient] = []
    batch = 250
    for start in range(0, n, batch):
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(clients)} of {n} clients connected before the budget ran out")
        made = await asyncio.gather(*(
            loop.create_connection(lambda i=i: LeanClient(f"c{i}", i % sample_every == 0, latencies), "127.0.0.1", port)
            for i in range(start, min(n, start + batch))
        ))
        group = [proto for _, proto in made]
        await asyncio.wait_for(asyncio.gather(*(c.joined for c in group)), 30)
        clients.extend(group)
    return clients


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


async def _run(args: argparse.Namespace, port: int, server_pid: int) -> dict:
    started = time.monotonic()
    deadline = started + args.budget
    latencies: list[float] = []
    t0 = time.monotonic()
    clients = await _connect_all(port, args.clients, max(1, args.clients // args.sampled), latencies, deadline)
    connect_seconds = time.monotonic() - t0
    senders = clients[: args.senders]
    steps = []
    for rate in args.rates:
        if time.monotonic() + args.window + 5 > deadline:
            break
        latencies.clear()
        for c in clients:
            c.recording = True
        before_msgs = sum(c.messages for c in clients)
        cpu0, wall0, wait0 = _cpu_seconds(server_pid), time.monotonic(), _run_queue_wait(server_pid)
        load0 = time.process_time()
        sent = 0
        interval = 1.0 / rate
        next_at = time.perf_counter()
        end = next_at + args.window
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            while next_at <= now:
                senders[sent % len(senders)].send(f"{time.perf_counter():.6f} {'x' * args.text_bytes}")
                sent += 1
                next_at += interval
            await asyncio.sleep(max(0.0, min(next_at, end) - time.perf_counter()))
        expected = sent * len(clients)
        settle = time.monotonic() + 5
        while sum(c.messages for c in clients) - before_msgs < expected and time.monotonic() < settle:
            await asyncio.sleep(0.05)
        wall = time.monotonic() - wall0
        cpu = _cpu_seconds(server_pid) - cpu0
        load_cpu = time.process_time() - load0
        delivered = sum(c.messages for c in clients) - before_msgs
        closed = sum(1 for c in clients if c.closed_code is not None)
        p99 = _pct(latencies, 0.99)
        step = {
            "rate": rate, "sent": sent, "clients": len(clients), "expected": expected, "delivered": delivered,
            "server_cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
            "server_core_util": round(cpu / wall, 3) if wall else None,
            "server_run_queue_wait": round((_run_queue_wait(server_pid) - wait0) / wall, 3) if wall else None,
            "deliveries_per_s": round(delivered / args.window),
            "deliveries_per_cpu_s": round(delivered / cpu) if cpu > 0 else None,
            "latency_samples": len(latencies),
            "latency_p50_ms": round(_pct(latencies, 0.5) * 1000, 2) if latencies else None,
            "latency_p99_ms": round(p99 * 1000, 2) if p99 is not None else None,
            "latency_max_ms": round(max(latencies) * 1000, 2) if latencies else None,
            "load_cpu_util": round(load_cpu / wall, 3) if wall else None,
            "closed_clients": closed,
        }
        step["ok"] = delivered == expected and closed == 0 and p99 is not None and p99 < 0.1
        steps.append(step)
        print(json.dumps(step), file=sys.stderr, flush=True)
        if not step["ok"] and not args.keep_going:
            break
    for c in clients:
        c.transport.close()
    return {"connect_seconds": round(connect_seconds, 2), "steps": steps}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=5000, help="WebSocket clients in the room (default 5000)")
    p.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[5, 10, 20, 40, 80],
                   help="messages per second, ramped in order (default 5,10,20,40,80)")
    p.add_argument("--window", type=float, default=10.0, help="seconds per step (default 10)")
    p.add_argument("--senders", type=int, default=10, help="clients that send (round robin)")
    p.add_argument("--sampled", type=int, default=100, help="clients that record latency")
    p.add_argument("--text-bytes", type=int, default=60, help="padding per message text")
    p.add_argument("--buffer-bytes", type=int, default=256 * 1024, help="server chat_client_buffer_bytes")
    p.add_argument("--budget", type=float, default=180.0, help="stop after this many seconds (default 180)")
    p.add_argument("--server-core", type=int, default=0)
    p.add_argument("--load-core", type=int, default=1)
    p.add_argument("--keep-going", action="store_true", help="run every rate even after a failing step")
    p.add_argument("--quick", action="store_true", help="smoke test: 300 clients, rates 5,20, 3 s windows")
    p.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/chat-*.json")
    p.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.rates, args.window, args.sampled = 300, [5.0, 20.0], 3.0, 30
    return args


def run(args: argparse.Namespace) -> dict:
    from tests.conftest import free_port  # noqa: PLC0415 - the same helper as the tests

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cores = os.sched_getaffinity(0)
    server_core = args.server_core if args.server_core in cores else None
    if args.load_core in cores and len(cores) > 1:
        os.sched_setaffinity(0, {args.load_core})
    port = free_port()
    preexec = (lambda: os.sched_setaffinity(0, {server_core})) if server_core is not None else None
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.chat", "--serve", str(port), "--buffer-bytes", str(args.buffer_bytes)],
        preexec_fn=preexec, stdout=subprocess.DEVNULL,
    )
    try:
        import socket

        for _ in range(200):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        result = asyncio.run(_run(args, port, server.pid))
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    passing = [s for s in result["steps"] if s["ok"]]
    return {
        "benchmark": "chat", "clients": args.clients, "window_s": args.window, "senders": args.senders,
        "cores": len(cores), "server_core": server_core, "python": sys.version.split()[0],
        "best_ok_rate": passing[-1]["rate"] if passing else None, **result,
    }


def summary_line(report: dict) -> str:
    best = [s for s in report["steps"] if s["ok"]] or report["steps"][-1:]
    if not best:
        return f"chat: {report['clients']} clients: no step ran"
    s = best[-1]
    return (f"chat: {report['clients']} clients, {s['rate']:g} msg/s -> {s['deliveries_per_s']} deliveries/s, "
            f"{s['deliveries_per_cpu_s']} per server CPU-second, p99 {s['latency_p99_ms']} ms "
            f"(server core {s['server_core_util'] * 100:.0f} % busy, {'ok' if s['ok'] else 'FAILED'})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        _serve(args.serve, args.buffer_bytes)
        return 0
    report = run(args)
    text = json.dumps(report, indent=2)
    if not args.no_save:
        RESULTS_DIR.mkdir(exist_ok=True)
        (RESULTS_DIR / f"chat-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(text + "\n")
    print(text)
    print(summary_line(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
