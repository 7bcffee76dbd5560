"""LL-HLS origin over HTTP on loopback: FFmpeg's WHIP muxer publishes H.264 + Opus; playlists and media are
fetched, checked with PyPI m3u8 and PyAV. H-numbers: ../shared/conformance.md §3.
"""

from __future__ import annotations

import asyncio
import io
import time

import aiohttp
import av
import m3u8

from tests.conftest import run_node
from tests.integration.test_forwarding import ffmpeg_publisher, wait_live
from tests.unit.hls_media import rtp_feed


async def get(http: aiohttp.ClientSession, url: str, **kw) -> tuple[int, dict, bytes, float]:
    t0 = time.monotonic()
    async with http.get(url, **kw) as r:
        body = await r.read()
        return r.status, dict(r.headers), body, time.monotonic() - t0


async def wait_hls(http, base: str, stream: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _, body, _ = await get(http, f"{base}/hls/{stream}/video.m3u8")
        if status == 200 and len([s for s in m3u8.loads(body.decode()).segments if s.uri]) >= 2:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("no HLS segments in time")


async def test_ll_hls_from_an_ffmpeg_whip_publisher():
    async with run_node() as (base, node):
        proc = ffmpeg_publisher(f"{base}/whip/ll", seconds=14)
        try:
            await wait_live(node, "ll")
            async with aiohttp.ClientSession() as http:
                await wait_hls(http, base, "ll")
                await check_origin(http, base, "ll")
        finally:
            await asyncio.to_thread(proc.communicate, timeout=30)
        assert node.broadcasts.get("ll") is None or node.broadcasts["ll"].tap_errors == 0


async def check_origin(http: aiohttp.ClientSession, base: str, stream: str) -> None:
    hls = f"{base}/hls/{stream}"
    # multivariant: H14, H33, H34, H47 (non-blocking 0.5 TD), H15 (gzip), CORS
    status, headers, body, _ = await get(http, f"{hls}/index.m3u8", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Type"].startswith("application/vnd.apple.mpegurl")
    assert headers["Content-Encoding"] == "gzip" and headers["Access-Control-Allow-Origin"] == "*"
    assert headers["Cache-Control"] == "public, max-age=1"
    mv = m3u8.loads(body.decode())  # aiohttp decompressed it
    info = mv.playlists[0].stream_info
    assert info.bandwidth > 0 and info.codecs.startswith("avc1.42") and info.resolution == (320, 180)
    assert info.audio == "aac" and mv.media[0].uri == "audio.m3u8"
    # media playlist: validated by m3u8, every listed part/segment servable and opening with PyAV (H20, H38-H40)
    status, headers, body, _ = await get(http, f"{hls}/video.m3u8")
    assert status == 200 and headers["Cache-Control"] == "public, max-age=1"  # H47 non-blocking
    text = body.decode()
    pl = m3u8.loads(text, uri=f"{hls}/video.m3u8")
    td = pl.target_duration
    init_uri = pl.segment_map[0].uri
    s, h, init, _ = await get(http, f"{hls}/{init_uri}")
    assert s == 200 and "immutable" in h["Cache-Control"] and f"max-age={6 * td}" in h["Cache-Control"]  # H47/H48
    for seg in pl.segments:
        for part in seg.parts:
            s, h, data, _ = await get(http, f"{hls}/{part.uri}")
            assert s == 200 and data[4:8] == b"moof"  # H39
            with av.open(io.BytesIO(init + data)) as c:
                packets = [p for p in c.demux(c.streams[0]) if p.size]
            assert packets and packets[0].is_keyframe == (part.independent == "YES")
        if seg.uri:
            s, _, data, _ = await get(http, f"{hls}/{seg.uri}")
            with av.open(io.BytesIO(init + data)) as c:
                frames = list(c.decode(video=0))
            assert frames[0].key_frame and abs(len(frames) / 30 - seg.duration) < 0.05  # H40, H09
    # H21: the hinted part blocks, then arrives whole
    s, _, data, took = await get(http, f"{hls}/{pl.preload_hint.uri}")
    assert s == 200 and data[4:8] == b"moof" and took < 1.0
    # blocking reload (H22, H23): the next part arrives within about one part duration
    status, _, body, _ = await get(http, f"{hls}/video.m3u8")
    pl = m3u8.loads(body.decode())
    last = pl.segments[-1]
    msn = pl.media_sequence + len(pl.segments) - 1
    nxt = len(last.parts)
    s, h, body, took = await get(http, f"{hls}/video.m3u8?_HLS_msn={msn}&_HLS_part={nxt}")
    assert s == 200 and took < 0.6 and h["Cache-Control"] == f"public, max-age={6 * td}"  # H47 blocking 6 TD
    newer = m3u8.loads(body.decode())
    uris = [p.uri for sg in newer.segments for p in sg.parts]
    assert any(u.endswith(f"/{msn}.{nxt}.m4s") or u.endswith(f"/{msn + 1}.0.m4s") for u in uris)
    # H22: msn only = the whole next segment
    s, _, body, took = await get(http, f"{hls}/video.m3u8?_HLS_msn={msn}")
    assert s == 200 and any(sg.uri and sg.uri.endswith(f"/{msn}.m4s") for sg in m3u8.loads(body.decode()).segments)
    # H25: an old MSN answers at once
    s, _, _, took = await get(http, f"{hls}/video.m3u8?_HLS_msn=0")
    assert s == 200 and took < 0.2
    # H26, H27: 400 at once, cached 4 TD
    for q in ("_HLS_part=1", f"_HLS_msn={msn + 3}", f"_HLS_msn={msn}&_HLS_part={nxt + 40}", "_HLS_msn=abc"):
        s, h, _, took = await get(http, f"{hls}/video.m3u8?{q}")
        assert s == 400 and took < 0.2 and h["Cache-Control"] == f"public, max-age={4 * td}", q
    # H30: delta update keeps every non-skipped tag (the window is short here: nothing to skip yet, still valid)
    s, _, body, _ = await get(http, f"{hls}/video.m3u8?_HLS_skip=YES")
    assert s == 200 and m3u8.loads(body.decode()).segments
    # rendition reports (H44) and audio playlist
    s, _, body, _ = await get(http, f"{hls}/audio.m3u8")
    apl = m3u8.loads(body.decode())
    assert [r.uri for r in apl.rendition_reports] == ["video.m3u8"]
    assert apl.server_control.part_hold_back == pl.server_control.part_hold_back  # H36
    # H21 [SHOULD]: unknown resources 404
    s, h, _, _ = await get(http, f"{hls}/video/deadbeef/1.m4s")
    assert s == 404 and h["Cache-Control"] == f"public, max-age={td}"


async def test_blocked_request_gets_503_when_the_encoder_stops_and_unknown_streams_404():
    async with run_node(hls_target_duration=1, hls_segment_min=0.5) as (base, node):
        node.broadcast("stall")  # the node's hook creates the packager; feed it 2 s of real media, then nothing
        from signaling.http_api import create_app  # noqa: F401  (the app is already running)

        service = next(iter(_services(node)))
        packager = service.packagers["stall"]
        for trk, pkt, now in rtp_feed(2.0).events:
            packager.tap(trk, pkt, False, now, "pub")
        async with aiohttp.ClientSession() as http:
            status, _, body, _ = await get(http, f"{base}/hls/stall/video.m3u8")
            assert status == 200
            pl = m3u8.loads(body.decode())
            msn = pl.media_sequence + len(pl.segments)
            s, h, _, took = await get(http, f"{base}/hls/stall/video.m3u8?_HLS_msn={msn}")
            assert s == 503 and 2.9 < took < 4.0, (s, took)  # H28: 3 x TD
            assert h["Retry-After"] == "1"
            s, _, _, _ = await get(http, f"{base}/hls/nope/index.m3u8")
            assert s == 404
            packager.end()  # H29: after EXT-X-ENDLIST directives are ignored
            s, _, body, took = await get(http, f"{base}/hls/stall/video.m3u8?_HLS_msn={msn + 1}&_HLS_part=3")
            assert s == 200 and took < 0.2 and "\n#EXT-X-ENDLIST\n" in body.decode()


def _services(node):
    # the HlsService registered itself as the node's broadcast listener
    return [getattr(f, "__self__", None) for f in node.on_broadcast_created if hasattr(f, "__self__")]


async def test_vp8_publisher_gets_hls_unavailable():
    from tests.unit.hls_media import track
    from webrtc_cast.rtp.header import parse

    async with run_node() as (base, node):
        node.broadcast("vp8")
        service = _services(node)[0]
        data = bytes([0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]) + b"\x10\x00\x00"
        service.packagers["vp8"].tap(track("video", "VP8", 90000), (data, parse(data), 1), True, 1.0, "p")
        async with aiohttp.ClientSession() as http:
            s, h, body, _ = await get(http, f"{base}/hls/vp8/index.m3u8")
        assert s == 409 and h["X-HLS-Unavailable"] == "codec" and b"HLS unavailable" in body
