"""The forwarding core against real peers: FFmpeg's WHIP muxer and aiortc publishers, aiortc viewers that decode.

All media stays on 127.0.0.1. Figures use 320x180 at 30 fps so three decoding viewers fit on 2 cores.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tests.conftest import run_node
from webrtc_cast.clients import publish, watch

ROOT = Path(__file__).resolve().parents[2]
FPS = 30


def ffmpeg_publisher(url: str, seconds: float, token: str | None = None, gop: int = 30) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tests.peers.ffmpeg_whip", url, "--seconds", str(seconds),
           "--width", "320", "--height", "180", "--fps", str(FPS), "--gop", str(gop)]
    if token:
        cmd += ["--token", token]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


async def wait_live(node, stream: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        b = node.broadcasts.get(stream)
        if b is not None and b.live and all(t.buffer.packets > 0 for t in b.tracks.values()):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"stream {stream!r} did not go live within {timeout} s")


def expected_frames(report) -> float:
    return FPS * (report.duration_s - (report.join_time_ms or 0) / 1000.0)


async def test_ffmpeg_whip_to_three_viewers():
    """FFmpeg 8's WHIP muxer with its default options (a P-224 DTLS certificate) -> 3 decoding viewers."""
    async with run_node() as (base, node):
        proc = ffmpeg_publisher(f"{base}/whip/ff", seconds=16)
        try:
            await wait_live(node, "ff")
            reports = await asyncio.gather(*(watch(f"{base}/whep/ff", duration=8.0) for _ in range(3)))
            # FFmpeg's media is read by the ingest pump (audio ahead of queued video), not aiortc's receive loop
            publisher = next(s for s in node.sessions.values() if s.role == "whip")
            assert publisher.transport.pump is not None and publisher.transport.pump.delivered > 1000
            async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as r:
                metrics = await r.text()
            pumped = [ln for ln in metrics.splitlines() if ln.startswith("webrtc_cast_ingest_pump_packets_total")]
            assert pumped and float(pumped[0].split()[-1]) > 1000
        finally:
            out, err = await asyncio.to_thread(proc.communicate, timeout=30)
        assert proc.returncode == 0, err[-2000:]
        assert json.loads(out.strip().splitlines()[-1])["video_frames"] >= FPS * 14
        for r in reports:
            assert r.video_codec == "H264" and (r.width, r.height) == (320, 180)
            assert r.frames_decoded >= 0.95 * expected_frames(r), r.to_json()
            assert r.max_gap_ms is not None and r.max_gap_ms < 1000, r.to_json()
            assert r.latency_p50_ms is not None and r.latency_p50_ms < 400, r.to_json()
            assert r.audio_frames > 0


async def test_viewer_joining_mid_stream_sees_a_frame_within_500ms():
    async with run_node() as (base, node):
        proc = ffmpeg_publisher(f"{base}/whip/mid", seconds=14, gop=60)  # 2 s GOP: joins land mid-GOP
        try:
            await wait_live(node, "mid")
            joins = []
            for delay in (0.7, 1.3, 0.9):
                await asyncio.sleep(delay)
                r = await watch(f"{base}/whep/mid", duration=1.5)
                joins.append(r.join_time_ms)
        finally:
            await asyncio.to_thread(proc.communicate, timeout=30)
        assert all(j is not None and j < 500 for j in joins), joins
        assert node.metrics.join_time.collect()[0].samples  # the server records join times too


async def test_publisher_reconnect_continues_to_the_same_viewers():
    """A publisher drops and a new WHIP session arrives on the same stream: viewers keep their session."""
    async with run_node() as (base, node):
        stop_first = asyncio.Event()
        first = asyncio.create_task(publish(f"{base}/whip/re", width=320, height=180, stop=stop_first))
        await wait_live(node, "re")
        viewer = asyncio.create_task(watch(f"{base}/whep/re", duration=10.0))
        await asyncio.sleep(1.0)
        viewer_ids = {s.id for s in node.sessions.values() if s.role == "whep"}
        fwd = next(s for s in node.sessions.values() if s.role == "whep").forwarders["video"]
        seq_before = fwd.munger.last_seq
        await asyncio.sleep(3.0)
        stop_first.set()
        await first
        second = asyncio.create_task(publish(f"{base}/whip/re", width=320, height=180, duration=7.0))
        report = await viewer
        await second
        assert {s.id for s in node.sessions.values() if s.role == "whep"} <= viewer_ids  # no new viewer session
        # both publishers' frames reached the one viewer session: ~4 s before, ~5 s after the switch
        assert report.frames_decoded >= 0.8 * FPS * 8.0, report.to_json()
        assert fwd.packets > 0 and fwd.munger.last_seq != seq_before
        assert report.latency_p95_ms is not None and report.latency_p95_ms < 1000, report.to_json()


async def test_bad_input_gets_4xx_and_other_viewers_keep_playing():
    async with run_node(publish_tokens=["secret"]) as (base, node):
        proc = ffmpeg_publisher(f"{base}/whip/safe", seconds=14, token="secret")
        try:
            await wait_live(node, "safe")
            viewer = asyncio.create_task(watch(f"{base}/whep/safe", duration=8.0))
            await asyncio.sleep(1.5)
            statuses = await hostile_client(base, node)
            report = await viewer
        finally:
            await asyncio.to_thread(proc.communicate, timeout=30)
        assert all(400 <= s < 500 for s in statuses), statuses
        assert report.frames_decoded >= 0.95 * expected_frames(report), report.to_json()
        assert report.freezes == 0, report.to_json()
        dropped = node.metrics.dropped.labels("malformed_rtcp")._value.get()
        assert dropped >= 0  # counted, not raised


async def hostile_client(base: str, node) -> list[int]:
    """Malformed SDP, wrong types, bad tokens, unknown sessions, oversized bodies, and junk UDP datagrams."""
    statuses = []
    sdp_h = {"Content-Type": "application/sdp", "Authorization": "Bearer secret"}
    async with aiohttp.ClientSession() as http:
        requests = [
            ("POST", "/whip/safe", {"Content-Type": "application/sdp", "Authorization": "Bearer nope"}, "v=0"),
            ("POST", "/whip/safe", {"Content-Type": "application/sdp"}, "v=0"),
            ("POST", "/whip/safe", sdp_h, "v=0\r\nnonsense"),
            ("POST", "/whip/safe", {**sdp_h, "Content-Type": "text/plain"}, "v=0"),
            ("POST", "/whip/safe", sdp_h, "v=0\r\n" + "a=x\r\n" * 50000),
            ("POST", "/whep/safe", {"Content-Type": "application/sdp"}, "v=0\r\no=- 0 0 IN IP4 0\r\nm=video 9 X"),
            ("POST", "/whep/bad%20name", {"Content-Type": "application/sdp"}, "v=0"),
            ("PATCH", "/whep/safe/doesnotexist", {"Content-Type": "application/trickle-ice-sdpfrag"}, ""),
            ("DELETE", "/whep/safe/doesnotexist", {}, ""),
        ]
        for method, path, headers, body in requests:
            async with http.request(method, base + path, headers=headers, data=body) as r:
                statuses.append(r.status)
    # junk straight at the publisher's and viewers' ICE sockets
    ports = {port for s in node.sessions.values() for port in s.transport.local_ports}
    junk = [b"", b"\x00" * 20, b"\x80" * 3, b"\x80\x60" + os.urandom(200), b"\x81\xc8" + os.urandom(60)]
    junk.append(os.urandom(1400))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for port in ports:
            for payload in junk * 20:
                sock.sendto(payload, ("127.0.0.1", port))
    assert len(ports) >= 2  # the publisher's and the viewer's
    return statuses


async def test_ffmpeg_publisher_outlives_its_unanswered_consent_checks(monkeypatch):
    """FFmpeg 8's WHIP muxer never answers ICE consent checks (RFC 7675); aioice alone closed such a publisher
    after 6 unanswered checks (~30 s). Its authenticated media counts as consent instead. The check interval is
    shortened to 0.5 s here, so the old behaviour would have dropped the publisher after ~3 s."""
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.5)
    async with run_node() as (base, node):
        proc = ffmpeg_publisher(f"{base}/whip/consent", seconds=11)
        try:
            await wait_live(node, "consent")
            await asyncio.sleep(4.5)  # > 6 x 0.5 s x 1.2 of unanswered checks
            report = await watch(f"{base}/whep/consent", duration=4.0)
            publishers = [s for s in node.sessions.values() if s.role == "whip"]
        finally:
            await asyncio.to_thread(proc.communicate, timeout=30)
        assert len(publishers) == 1, "the publisher session was closed"
        assert publishers[0].transport.consent_by_traffic >= 6, "FFmpeg answered its consent checks after all?"
        assert report.frames_decoded >= 0.9 * expected_frames(report), report.to_json()
