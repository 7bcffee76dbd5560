"""hls.js in headless Chromium plays LL-HLS through a real nginx cache (the CDN) in front of the origin.

FFmpeg's WHIP muxer publishes H.264 + Opus with its send time burned into every frame; the /watch page in
forced LL-HLS mode (``?mode=hls``) plays it through nginx (proxy_cache, proxy_cache_lock on, the query string
in the cache key: conformance.md H46, H48). The test records two latencies: the page's own figure (now minus
hls.latency, live edge minus playback position) and the glass-to-glass figure read from the burned-in timecode of
the frame on screen. Under CI=true a missing nginx, Chromium or hls.js fails the test.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from browser import chromium_context, collect_console, free_port, screenshot, unavailable

from tests.conftest import run_node
from tests.integration.test_forwarding import ffmpeg_publisher, wait_live
from webrtc_cast.hls_fallback.http import HLS_JS
from webrtc_cast.timecode import band_height, read_timestamp

pytestmark = pytest.mark.e2e

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    proxy_cache_path {tmp}/cache levels=1:2 keys_zone=hls:10m max_size=256m inactive=60s use_temp_path=off;
    upstream origin {{ server 127.0.0.1:{origin}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location /hls/ {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache hls;
            proxy_cache_key $scheme$proxy_host$uri$is_args$args;  # H48: _HLS_msn/_HLS_part/_HLS_skip in the key
            proxy_cache_lock on;                                  # H46: request collapsing
            proxy_cache_lock_timeout 10s;
            proxy_cache_lock_age 10s;
            proxy_read_timeout 30s;
            add_header X-Cache $upstream_cache_status always;
        }}
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;  # the chat WebSocket on the same page
            proxy_set_header Connection $http_connection;
        }}
    }}
}}
"""


class Nginx:
    def __init__(self, origin_port: int) -> None:
        if not os.access(NGINX, os.X_OK):
            unavailable(f"nginx not found at {NGINX} (apt-get install -y nginx-light)")
        self.tmp = tempfile.mkdtemp(prefix="cast-nginx-")
        os.chmod(self.tmp, 0o777)  # workers may run as nobody
        self.port = free_port()
        conf = Path(self.tmp) / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=self.tmp, origin=origin_port, port=self.port))
        self.proc = subprocess.Popen([NGINX, "-p", self.tmp, "-c", str(conf)], stderr=subprocess.PIPE)
        self.url = f"http://127.0.0.1:{self.port}"

    async def ready(self) -> None:
        async with aiohttp.ClientSession() as http:
            for _ in range(50):
                try:
                    async with http.get(self.url + "/healthz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError("nginx did not start: " + (Path(self.tmp) / "error.log").read_text()[-2000:])

    def cache_statuses(self) -> str:
        return (Path(self.tmp) / "access.log").read_text()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


READ_BAND = """() => {
  const v = document.getElementById('player');
  if (!v.videoWidth) return null;
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  const ctx = c.getContext('2d');
  ctx.drawImage(v, 0, 0);
  const now = Date.now();
  const h = Math.min(c.height, BAND);
  return {now, w: c.width, h, data: Array.from(ctx.getImageData(0, 0, c.width, h).data)};
}"""


async def glass_to_glass(page) -> float | None:
    got = await page.evaluate(READ_BAND.replace("BAND", str(band_height(320) + 2)))
    if not got:
        return None
    rgba = np.array(got["data"], dtype=np.uint8).reshape(got["h"], got["w"], 4)
    t = read_timestamp(np.ascontiguousarray(rgba[:, :, :3]))
    return None if t is None else got["now"] - t


async def test_hlsjs_plays_ll_hls_through_nginx_without_stalls():
    if not HLS_JS.is_file():
        unavailable("hls.js is not installed (npm ci)")
    async with run_node() as (base, node):
        origin_port = int(base.rsplit(":", 1)[1])
        cdn = Nginx(origin_port)
        proc = ffmpeg_publisher(f"{base}/whip/cdn", seconds=34)
        console: list[str] = []
        try:
            await cdn.ready()
            await wait_live(node, "cdn")
            await asyncio.sleep(2.5)  # a couple of segments
            async with chromium_context() as context:
                page = await context.new_page()
                collect_console(page, console)
                await page.goto(f"{cdn.url}/watch/cdn?mode=hls")
                await page.wait_for_function("window.castHls && window.castHls.state === 'playing'", timeout=15000)
                await page.evaluate("""() => { window.waits = 0; const v = document.getElementById('player');
                    v.addEventListener('waiting', () => { window.waits += 1; }); }""")
                await asyncio.sleep(3.0)  # let hls.js settle on its live edge
                await page.evaluate("() => { window.waits = 0; window.castHls.stalls = 0; "
                                    "window.castHls.latencies.length = 0; }")
                g2g: list[float] = []
                t_end = time.monotonic() + 15.0
                while time.monotonic() < t_end:
                    value = await glass_to_glass(page)
                    if value is not None:
                        g2g.append(value)
                    await asyncio.sleep(0.5)
                state = await page.evaluate("""() => ({latencies: window.castHls.latencies, stalls:
                    window.castHls.stalls, waits: window.waits, t: document.getElementById('player').currentTime,
                    status: document.getElementById('status').textContent,
                    stats: document.getElementById('stats').textContent})""")
                await screenshot(page, "hls-watch")
        finally:
            await asyncio.to_thread(proc.communicate, timeout=60)
            log = cdn.cache_statuses() if os.path.exists(Path(cdn.tmp) / "access.log") else ""
            cdn.stop()
        service = node.on_broadcast_created[0].__self__
        dep = [(p.video.depack.lost_packets, p.video.depack.dropped_frames) for p in service.packagers.values()
               if p.video is not None]
        print("DEPACK", dep, "late/reordered packets are dropped")
        pdt = state["latencies"]
        assert len(pdt) >= 20, (state, console[-20:])
        # Known weak (docs/hls.md, issue 5 open): about one run in three shows one short bufferStalledError (and
        # a few <video> "waiting" events while hls.js nudges over it), with no packet lost and no gap in the
        # segment timeline. More than one hls.js stall is a failure.
        assert state["stalls"] <= 1, (state, [c for c in console if "hls.js" in c][-20:])
        assert len(g2g) >= 10, (g2g, console[-20:])
        result = {
            "hlsjs_latency_p50_ms": statistics.median(pdt), "hlsjs_latency_max_ms": max(pdt),
            "g2g_latency_p50_ms": statistics.median(g2g), "g2g_latency_max_ms": max(g2g),
            "samples": len(g2g), "stalls": state["stalls"], "part_target_s": node.settings.hls_part_target,
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"hls-latency-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(result, indent=2))
        print("LL-HLS latency via nginx + hls.js:", json.dumps(result))
        assert result["g2g_latency_p50_ms"] <= 2000, result  # the target: <= 2.0 s p50
        assert "live latency" in state["stats"]  # the page shows it
        assert " 200 " in log  # requests went through nginx
