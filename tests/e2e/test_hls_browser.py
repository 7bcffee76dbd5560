"""hls.js in headless Chromium plays LL-HLS through a real nginx cache (the CDN) in front of the origin, 60 s.

FFmpeg's WHIP muxer publishes H.264 + Opus with its send time burned into every frame; the /watch page in
forced LL-HLS mode (``?mode=hls``) plays it through nginx (proxy_cache, proxy_cache_lock on, the query string
in the cache key: conformance.md H46, H48). Over 60 s after a 3 s start it asserts zero stalls (hls.js
BUFFER_STALLED_ERROR and <video> 'waiting') and three latencies <= 2.0 s p50: glass-to-glass (the burned-in time of
the frame on screen), PDT (now minus hls.playingDate, which must agree with glass-to-glass: PROGRAM-DATE-TIME is the
capture clock) and hls.latency. On a stall it writes a timeline (hls.js events, nginx access log with timings, the
origin's part publications, RTP arrival gaps and event-loop lags; with CAST_HLS_DEBUG=1 also hls.js's debug log) to
benchmarks/results/hls-stall-*. Under CI=true a missing nginx, Chromium or hls.js fails the test.
"""

from __future__ import annotations

import asyncio
import base64
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

from signaling.hls_http import HLS_JS
from tests.conftest import run_node
from tests.integration.test_forwarding import ffmpeg_publisher, wait_live
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
    log_format timed '$msec $request_time $upstream_response_time $upstream_cache_status $status "$request"';
    access_log {tmp}/access.log timed;
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
  // the timecode band as one base64 string: a JSON array of ~30k numbers costs the test process (which is also
  // the origin) hundreds of ms to deserialize on a loaded machine, enough to starve the origin's event loop
  const v = document.getElementById('player');
  if (!v.videoWidth) return null;
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  const ctx = c.getContext('2d');
  ctx.drawImage(v, 0, 0);
  const now = Date.now();
  const h = Math.min(c.height, BAND);
  const px = ctx.getImageData(0, 0, c.width, h).data;
  let bin = '';
  for (let i = 0; i < px.length; i += 8192) bin += String.fromCharCode.apply(null, px.subarray(i, i + 8192));
  return {now, w: c.width, h, data: btoa(bin)};
}"""


async def glass_to_glass(page) -> float | None:
    got = await page.evaluate(READ_BAND.replace("BAND", str(band_height(320) + 2)))
    if not got:
        return None
    rgba = np.frombuffer(base64.b64decode(got["data"]), dtype=np.uint8).reshape(got["h"], got["w"], 4)
    t = read_timestamp(np.ascontiguousarray(rgba[:, :, :3]))
    return None if t is None else got["now"] - t


DIAG = """() => {
  // A timeline for the failure message: every hls.js error, every <video> 'waiting', and the load timing and
  // buffer ends of every part buffered, so a stall can be traced to a late part, a gap or a track.
  const hls = window.castHls.hls, v = document.getElementById('player'), t0 = performance.now();
  const ranges = (b) => { const out = []; for (let i = 0; i < b.length; i++) out.push([+b.start(i).toFixed(3),
    +b.end(i).toFixed(3)]); return out; };
  const at = () => ({t: +((performance.now() - t0) / 1000).toFixed(3), w: Date.now() / 1000,
    ct: +v.currentTime.toFixed(3),
    buf: ranges(v.buffered), rate: v.playbackRate});
  window.diag = {events: [], waits: 0, stalls: 0};
  const E = window.Hls.Events;
  hls.on(E.ERROR, (_, d) => { if (d.details === 'bufferStalledError') window.diag.stalls += 1;
    window.diag.events.push({...at(), error: d.details, fatal: d.fatal, buffer: d.buffer}); });
  v.addEventListener('waiting', () => { window.diag.waits += 1; window.diag.events.push({...at(), waiting: 1}); });
  hls.on(E.FRAG_BUFFERED, (_, d) => {
    const st = d.part ? d.part.stats : d.frag.stats;
    window.diag.events.push({...at(), type: d.frag.type, sn: d.frag.sn, part: d.part ? d.part.index : null,
      load_ms: Math.round(st.loading.end - st.loading.start),
      ttfb_ms: Math.round(st.loading.first - st.loading.start)});
    if (window.diag.events.length > 4000) window.diag.events.splice(0, 1000);
  });
}"""

PLAY_S = 60.0
# Parts are ~0.23 s apart; a publication gap this long eats most of PART-HOLD-BACK (0.75 s): the origin starved
STARVED_GAP = 0.6


async def _loop_lag(out: list) -> None:
    """The origin's event loop (this process) late by more than 50 ms: (wall time, lag)."""
    while True:
        t0 = time.monotonic()
        await asyncio.sleep(0.01)
        lag = time.monotonic() - t0 - 0.01
        if lag > 0.05:
            out.append(("loop-lag", round(time.time(), 3), round(lag, 3)))


def _record_publications(node, stream: str) -> list:  # noqa: ANN001
    """(wall time, rendition, msn, part) of every part the origin publishes, and RTP arrival gaps over 100 ms:
    a stall's timeline needs them."""
    service = node.on_broadcast_created[0].__self__
    packager = service.packagers[stream]
    out: list = []
    arrivals: dict[str, float] = {}

    def tap(track, pkt, keyframe, now):  # noqa: ANN001, ANN202
        gap = now - arrivals.get(track.kind, now)
        arrivals[track.kind] = now
        if gap > 0.1:
            out.append(("rtp-gap", round(time.time(), 3), track.kind, round(gap, 3)))

    node.broadcasts[stream].taps.append(tap)
    last: dict[str, tuple] = {}
    previous = packager.on_change

    def on_change() -> None:
        for name, r in packager.renditions().items():
            now = (r.last_msn, r.last_part)
            if last.get(name) != now:
                last[name] = now
                out.append((round(time.time(), 3), name, *now))
        previous()

    packager.on_change = on_change
    return out


def _max_part_gap(published: list, rendition: str, start: float, end: float) -> float:
    """The longest time the origin published no part of ``rendition`` between ``start`` and ``end`` (wall)."""
    times = [r[0] for r in published if isinstance(r[0], float) and r[1] == rendition and start <= r[0] <= end]
    return round(max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0), 3)


def _skipped_closing_parts(events: list, published: list) -> list:
    """Segments hls.js buffered parts of, but never the last one, while it went on to later segments: the stall of
    issue 5 (docs/hls.md, "The stall that was left"). A chained load reports only its last part, so a part missing
    from the events means nothing by itself; the last part of a segment always shows (alone or ending a chain)."""
    last: dict[tuple[str, int], int] = {}
    for rec in published:
        if isinstance(rec[0], float) and rec[3] is not None:
            last[(rec[1], rec[2])] = max(last.get((rec[1], rec[2]), -1), rec[3])
    got: dict[tuple[str, int], set] = {}
    for e in events:
        if "sn" in e and e.get("type") in ("main", "audio"):
            got.setdefault(("video" if e["type"] == "main" else "audio", e["sn"]), set()).add(e["part"])
    skipped = []
    for (name, sn), parts in got.items():
        later = any(n == name and s > sn for n, s in got)
        if later and None not in parts and (name, sn) in last and last[(name, sn)] not in parts:
            skipped.append((name, sn, sorted(parts), last[(name, sn)]))
    return sorted(skipped)


async def test_hlsjs_plays_ll_hls_through_nginx_60s_without_stalls():
    """60 s of hls.js through nginx, after a 3 s start: no BUFFER_STALLED_ERROR, no <video> 'waiting', glass-to-
    glass latency <= 2.0 s p50 (the issue's target), hls.latency reported by the page."""
    if not HLS_JS.is_file():
        unavailable("hls.js is not installed (npm ci)")
    # 80 s of FFmpeg publishing: FFmpeg never answers ICE consent checks; its media counts as consent (the glue;
    # tests/integration/test_forwarding.py::test_ffmpeg_publisher_outlives_its_unanswered_consent_checks).
    async with run_node() as (base, node):
        origin_port = int(base.rsplit(":", 1)[1])
        cdn = Nginx(origin_port)
        proc = ffmpeg_publisher(f"{base}/whip/cdn", seconds=PLAY_S + 20)
        # drain its stdout/stderr from the start: a full pipe would block the publisher mid-test
        publisher = asyncio.ensure_future(asyncio.to_thread(proc.communicate, timeout=PLAY_S + 60))
        console: list[str] = []
        try:
            await cdn.ready()
            await wait_live(node, "cdn")
            published = _record_publications(node, "cdn")
            lagger = asyncio.ensure_future(_loop_lag(published))
            await asyncio.sleep(2.5)  # a couple of segments
            async with chromium_context() as context:
                page = await context.new_page()
                collect_console(page, console)
                debug = "&hlsdebug" if os.environ.get("CAST_HLS_DEBUG") else ""  # hls.js's log, kept on a stall
                await page.goto(f"{cdn.url}/watch/cdn?mode=hls{debug}")
                await page.wait_for_function("window.castHls && window.castHls.state === 'playing'", timeout=15000)
                await asyncio.sleep(3.0)  # startup: hls.js settles on its live edge
                await page.evaluate(DIAG)
                await page.evaluate("() => { window.castHls.stalls = 0; window.castHls.latencies.length = 0; }")
                window_start = time.time()
                g2g: list[float] = []
                pdt: list[float] = []
                playback: list = []
                t_end = time.monotonic() + PLAY_S
                while time.monotonic() < t_end:
                    value = await glass_to_glass(page)
                    if value is not None:
                        g2g.append(value)
                    p, play = await page.evaluate("""() => { const v = document.getElementById('player');
                        return [window.castHls.pdtLatencyMs, [+v.currentTime.toFixed(2), v.paused, v.readyState,
                        window.castHls.latencyMs, window.castHls.hls.liveSyncPosition]]; }""")
                    if p is not None:
                        pdt.append(p)
                    playback.append(play)
                    await asyncio.sleep(0.5)
                state = await page.evaluate("""() => ({latencies: window.castHls.latencies, stalls:
                    window.castHls.stalls, diag: window.diag, t: document.getElementById('player').currentTime,
                    ranges: document.getElementById('player').buffered.length,
                    status: document.getElementById('status').textContent,
                    stats: document.getElementById('stats').textContent})""")
                await screenshot(page, "hls-watch")
        finally:
            out, err = await publisher
            print("PUBLISHER", out.strip()[-300:], err.strip()[-500:])
            if "lagger" in locals():
                lagger.cancel()
            log = cdn.cache_statuses() if os.path.exists(Path(cdn.tmp) / "access.log") else ""
            cdn.stop()
        service = node.on_broadcast_created[0].__self__
        dep = [(p.video.depack.lost_packets, p.video.depack.dropped_frames) for p in service.packagers.values()
               if p.video is not None]
        diag = state.pop("diag")
        trouble = [e for e in diag["events"] if "error" in e or "waiting" in e]
        result = {
            "play_s": PLAY_S, "stalls": diag["stalls"], "waiting": diag["waits"],
            "hlsjs_latency_p50_ms": statistics.median(state["latencies"]) if state["latencies"] else None,
            "hlsjs_latency_max_ms": max(state["latencies"], default=None),
            "pdt_latency_p50_ms": statistics.median(pdt) if pdt else None,
            "g2g_latency_p50_ms": statistics.median(g2g) if g2g else None, "g2g_latency_max_ms": max(g2g, default=None),
            "samples": len(g2g), "part_target_s": node.settings.hls_part_target, "buffered_ranges": state["ranges"],
            "part_hold_back": node.settings.hls_part_hold_back, "depacketizer_lost_dropped": dep,
            "origin_loop_lag_max_ms": round(1000 * max((e[2] for e in published if e[0] == "loop-lag"), default=0)),
            "loadavg": os.getloadavg()[0],
            "closing_parts_skipped": _skipped_closing_parts(diag["events"], published),
            "origin_part_gap_max_s": _max_part_gap(published, "video", window_start - 1.0, window_start + PLAY_S),
            "parsing_errors": [e for e in diag["events"] if e.get("error") == "fragParsingError"],
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime('%Y%m%d-%H%M%S')
        (RESULTS / f"hls-latency-{stamp}.json").write_text(json.dumps(result, indent=2))
        if trouble:
            (RESULTS / f"hls-stall-timeline-{stamp}.json").write_text(json.dumps(diag["events"], indent=1))
            (RESULTS / f"hls-stall-nginx-{stamp}.log").write_text(log)
            (RESULTS / f"hls-stall-origin-{stamp}.json").write_text(json.dumps(published))
            (RESULTS / f"hls-stall-console-{stamp}.log").write_text("\n".join(console))
        print("LL-HLS 60 s via nginx + hls.js:", json.dumps(result))
        context_for_failure = (result, state["status"], playback[::4], trouble[:10],
                               [c for c in console if "hls.js" in c][-10:], console[-5:])
        assert len(state["latencies"]) >= 0.8 * PLAY_S * 2, context_for_failure  # sampled every 0.5 s
        assert len(g2g) >= 0.8 * PLAY_S, context_for_failure
        # issue 5's stall: hls.js never loading a segment's closing part (docs/hls.md, "The stall that was left")
        assert not result["closing_parts_skipped"], context_for_failure
        # hls.js's worker race ("Found no media": a back-buffer remove between a part's parse and its flush drops
        # the fragment; docs/hls.md) is avoided by enableWorker: false in web/js/hls-fallback.js
        assert not result["parsing_errors"], context_for_failure
        # The target: zero stalls after startup (neither hls.js's BUFFER_STALLED_ERROR nor a <video>
        # 'waiting'). One episode is tolerated only when the origin itself was starved: no video part published for
        # longer than STARVED_GAP in the window (a 2-core machine loaded by other work, load average > 8, makes
        # the origin's event loop late by more than PART-HOLD-BACK; docs/hls.md, "Measured"). Two always fail.
        allowed = 1 if result["origin_part_gap_max_s"] > STARVED_GAP else 0
        assert diag["stalls"] <= allowed and state["stalls"] <= allowed, context_for_failure
        assert diag["waits"] <= allowed, context_for_failure
        if diag["stalls"] == 0 and diag["waits"] == 0:
            # no part was skipped: the last 30 s (backBufferLength) are one buffered range, without holes
            assert state["ranges"] == 1, context_for_failure
        assert result["g2g_latency_p50_ms"] <= 2000, context_for_failure  # the target: <= 2.0 s p50
        assert result["hlsjs_latency_p50_ms"] <= 2000, context_for_failure
        # PROGRAM-DATE-TIME is the capture clock: now - hls.playingDate agrees with the burned-in figure
        assert result["pdt_latency_p50_ms"] <= 2000, context_for_failure
        assert abs(result["pdt_latency_p50_ms"] - result["g2g_latency_p50_ms"]) < 400, context_for_failure
        assert "live latency" in state["stats"]  # the page shows it
        assert " 200 " in log  # requests went through nginx
