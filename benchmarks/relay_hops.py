"""Glass-to-glass latency through 0, 1 and 2 relay hops on loopback.

An origin node and two chained relays (``relay --parent``) run in this process on their own 127.0.0.1 ports;
a synthetic publisher (aiortc, send time burned into every frame) publishes to the origin, and one decoding
viewer per hop reads the burned-in time back. Prints one JSON object (also saved under benchmarks/results/) and
one summary line. Bounded: ``--seconds`` of watching, then everything stops.

    .venv/bin/python -m benchmarks.relay_hops [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

import webrtc_cast  # noqa: F401  (first: OpenSSL settings before cryptography loads)
from webrtc_cast.app import create_app
from webrtc_cast.clients import publish, watch
from webrtc_cast.node import Node
from webrtc_cast.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def node(parent: str | None = None) -> AsyncIterator[str]:
    settings = Settings(host="127.0.0.1", port=free_port(), ice_hosts=["127.0.0.1"], parent_url=parent)
    runner = web.AppRunner(create_app(Node(settings)), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    try:
        yield f"http://127.0.0.1:{settings.port}"
    finally:
        await runner.cleanup()


async def run(seconds: float) -> dict[str, object]:
    async with node() as origin, node(origin) as relay1, node(relay1) as relay2:
        stop = asyncio.Event()
        publisher = asyncio.create_task(publish(f"{origin}/whip/hops", width=320, height=180, stop=stop))
        await asyncio.sleep(2.0)
        viewers = (watch(f"{base}/whep/hops", duration=seconds) for base in (origin, relay1, relay2))
        reports = await asyncio.gather(*viewers)
        stop.set()
        await publisher
    hops = []
    for n, r in enumerate(reports):
        hops.append({"hops": n, "latency_p50_ms": r.latency_p50_ms, "latency_p95_ms": r.latency_p95_ms,
                     "frames_decoded": r.frames_decoded, "join_ms": r.join_time_ms, "freezes": r.freezes})
    base = hops[0]["latency_p50_ms"] or 0.0
    per_hop = [round(((h["latency_p50_ms"] or 0.0) - base) / h["hops"], 2) for h in hops[1:]]
    return {
        "benchmark": "relay_hops",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "seconds": seconds,
        "hops": hops,
        "added_p50_ms_per_hop": per_hop,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0, help="how long each viewer watches (default: 10)")
    args = p.parse_args()
    result = asyncio.run(run(args.seconds))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"relay-hops-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    p50 = [h["latency_p50_ms"] for h in result["hops"]]  # type: ignore[index]
    print(f"relay_hops: glass-to-glass p50 {p50[0]} / {p50[1]} / {p50[2]} ms at 0/1/2 hops, "
          f"added per hop {result['added_p50_ms_per_hop']} ms (target <= 5 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
