"""LL-HLS origin over HTTP on loopback: FFmpeg's WHIP muxer publishes H.264 + Opus; playlists and media are
fetched, checked with PyPI m3u8, npm hls-parser (strict mode) and PyAV. H-numbers: ../shared/conformance.md §3.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import aiohttp
import av
import m3u8

from signaling.hls_http import TRANSCODE_NICE
from tests.conftest import missing_peer, run_node
from tests.integration.test_forwarding import ffmpeg_publisher, wait_live
from tests.unit.hls_media import rtp_feed
from webrtc_cast.timecode import read_timestamp

ROOT = Path(__file__).resolve().parents[2]
HLS_PARSER = ROOT / "node_modules" / "hls-parser"


def hls_parser_strict(texts: list[str]) -> list[dict]:
    """Each playlist through npm hls-parser in strict mode (tests/peers/hls_parser_strict.js): a summary, or
    {ok: False, error} when the parser refuses it."""
    node = shutil.which("node")
    if node is None or not HLS_PARSER.is_dir():
        missing_peer("node and npm hls-parser are needed (scripts/install.sh --test runs npm ci)")
    out = subprocess.run([node, str(ROOT / "tests" / "peers" / "hls_parser_strict.js")], input=json.dumps(texts),
                         capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


async def check_with_hls_parser(http: aiohttp.ClientSession, base: str, stream: str, seconds: float = 3.0) -> None:
    """The multivariant and media playlists of a live stream, plain, blocking and delta, over a few seconds:
    all accepted by hls-parser's strict mode (its LL-HLS rules: PART-INF with parts, PART-HOLD-BACK >= PART-TARGET,
    parts <= PART-TARGET and >= 0.85 x of it but the last, a PART preload hint, rendition reports, CAN-SKIP-UNTIL
    >= 6 x TD, parts only on the last three parents)."""
    hls = f"{base}/hls/{stream}"
    texts: list[tuple[str, str]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for name in ("index.m3u8", "video.m3u8", "audio.m3u8", "video.m3u8?_HLS_skip=YES"):
            status, _, body, _ = await get(http, f"{hls}/{name}")
            assert status == 200, name
            texts.append((name, body.decode()))
        last = m3u8.loads(texts[-3][1])
        msn = last.media_sequence + len([x for x in last.segments if x.uri])
        status, _, body, _ = await get(http, f"{hls}/video.m3u8?_HLS_msn={msn}&_HLS_part=1")  # blocks
        assert status == 200
        texts.append(("blocking", body.decode()))
        await asyncio.sleep(0.3)
    results = await asyncio.to_thread(hls_parser_strict, [t for _, t in texts])
    refused = [(name, r["error"]) for (name, _), r in zip(texts, results, strict=True) if not r["ok"]]
    assert not refused, refused
    media = [r for r in results if not r["master"]]
    assert all(r["partTargetDuration"] == 0.25 and r["segments"][-1]["parts"] for r in media)
    assert all(r["renditionReports"] for r in media)  # H44
    master = next(r for r in results if r["master"])
    assert master["variants"][0]["codecs"].startswith("avc1.") and master["variants"][0]["audio"] == ["aac"]


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
    transcoders: list[threading.Thread] = []
    async with run_node() as (base, node):
        proc = ffmpeg_publisher(f"{base}/whip/ll", seconds=14)
        try:
            await wait_live(node, "ll")
            async with aiohttp.ClientSession() as http:
                await wait_hls(http, base, "ll")
                await check_origin(http, base, "ll")
                await check_with_hls_parser(http, base, "ll")
            # the audio transcode ran on its own thread, niced so that the forwarding loop preempts it
            transcoders += [t for t in threading.enumerate() if t.name.startswith("hls-transcode")]
            assert transcoders and os.getpriority(os.PRIO_PROCESS, transcoders[0].native_id) == TRANSCODE_NICE
        finally:
            await asyncio.to_thread(proc.communicate, timeout=30)
        assert node.broadcasts.get("ll") is None or node.broadcasts["ll"].tap_errors == 0
    # a node that shuts down lets its transcode thread go
    for t in transcoders:
        await asyncio.to_thread(t.join, 5)
    assert not any(t.is_alive() for t in transcoders)


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
            # PROGRAM-DATE-TIME is the capture time: the publisher burned its send time into every frame. FFmpeg's
            # WHIP muxer bursts its first ~1 s of frames after the handshake; PDT must not inherit that delay. (The
            # publisher's own catch-up frames carry creation times off their pts, so its first 2 s are not compared.)
            if int(seg.uri.rsplit("/", 1)[1].split(".")[0]) >= 2:
                burned = read_timestamp(frames[0].to_ndarray(format="gray"))
                assert burned is not None
                assert abs(seg.program_date_time.timestamp() * 1000 - burned) < 100, (seg.uri, burned)
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
        from webrtc_cast.app import create_app  # noqa: F401  (the app is already running)

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


async def _replay(packager, seconds: float) -> None:
    t0 = time.monotonic()
    for trk, pkt, at in rtp_feed(seconds, start=0.0).events:
        delay = t0 + at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        packager.tap(trk, pkt, False, time.monotonic(), "pub")


async def test_many_blocked_requests_share_one_prebuilt_answer():
    """The blocked-request fast path (http.py): 100 waiters, gzip and identity, answered with the same bytes and
    the same headers as aiohttp's path (H15, H47, CORS); keep-alive reused after it; a client that goes away while
    blocked and an HTTP/1.0 client (slow path) do not disturb it."""
    async with run_node() as (base, node):
        node.broadcast("many")
        service = next(iter(_services(node)))
        packager = service.packagers["many"]
        feeder = asyncio.create_task(_replay(packager, 8.0))
        try:
            video = None
            while video is None or video.last_part is None:
                await asyncio.sleep(0.05)
                video = packager.renditions().get("video")
            msn, part = video.next_part()
            part += 3  # ~0.75-1 s ahead: every request below is blocked before it exists
            url = f"{base}/hls/many/video.m3u8?_HLS_msn={msn}&_HLS_part={part}"
            host, port = base.rsplit("/", 1)[1].split(":")
            # a client that disconnects while blocked, and an HTTP/1.0 one
            _, gone = await asyncio.open_connection(host, int(port))
            gone.write(f"GET {url[len(base):]} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            r10, w10 = await asyncio.open_connection(host, int(port))
            w10.write(f"GET {url[len(base):]} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
            conn = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=conn, auto_decompress=False) as http:
                async def one(i: int):  # noqa: ANN202
                    enc = {"Accept-Encoding": "gzip"} if i % 2 else {"Accept-Encoding": "identity"}
                    async with http.get(url, headers=enc) as r:
                        return r.status, r.headers, await r.read()

                tasks = [asyncio.create_task(one(i)) for i in range(100)]  # under the listen backlog (128)
                while sum(len(g.waiters) for g in service._groups.get("many", {}).values()) < 101:
                    assert not video.has_part(msn, part), "the requests were not all blocked in time"
                    await asyncio.sleep(0.01)
                gone.close()
                got = await asyncio.gather(*tasks)
                assert {s for s, _, _ in got} == {200}
                for gz in (0, 1):
                    bodies = {b for i, (_, _, b) in enumerate(got) if i % 2 == gz}
                    assert len(bodies) == 1, "every waiter of a group gets the same bytes"
                _, h, b = got[1]
                assert h["Content-Encoding"] == "gzip" and h["Vary"] == "Accept-Encoding"  # H15
                assert h["Cache-Control"] == f"public, max-age={6 * node.settings.hls_target_duration}"  # H47
                assert h["Access-Control-Allow-Origin"] == "*"
                assert h["Content-Type"].startswith("application/vnd.apple.mpegurl")
                assert int(h["Content-Length"]) == len(b)
                text = got[0][2].decode()
                assert f"{msn}.{part}.m4s" in text or f"{msn + 1}.0.m4s" in text, text
                # the same connections serve the next (blocking) request
                msn2, part2 = video.next_part()
                s, _, _, _ = await get(http, f"{base}/hls/many/video.m3u8?_HLS_msn={msn2}&_HLS_part={part2}")
                assert s == 200
            head = (await asyncio.wait_for(r10.read(), 5)).decode("latin-1")
            assert head.startswith("HTTP/1.") and " 200 " in head.split("\r\n")[0], head[:200]
            w10.close()
            assert not service._groups.get("many"), "no waiter left behind"
        finally:
            feeder.cancel()


def test_pdt_is_the_capture_time_when_the_first_second_arrives_in_one_burst():
    """A publisher that holds its first frames while it connects (FFmpeg's WHIP muxer: ~1 s, sent in one burst
    after the handshake) must not make every PROGRAM-DATE-TIME late by that much: PDT follows the arrivals that
    are on time, restamps the segments since the anchor (PDT(n+1) = PDT(n) + EXTINF(n)) and is the same function
    of media time for video and audio (H36)."""
    from webrtc_cast.hls_fallback.packager import HlsConfig, Packager

    feed = rtp_feed(6.0, start=100.0)  # frame i captured (and, on time, arriving) at 100 + i/30 (+2 ms)
    epoch_wall, wall_offset = 1_700_000_000.0, 1_700_000_000.0 - 90.0  # monotonic 100.0 = epoch_wall + 10 s
    packager = Packager("burst", HlsConfig(), epoch_wall, wall_offset)
    for trk, pkt, at in feed.events:
        packager.tap(trk, pkt, False, max(at, 101.1), "pub")  # the first 1.1 s arrive together at 101.1
    video = packager.renditions()["video"]
    audio = packager.renditions()["audio"]
    assert abs(packager.lateness - 1.1) < 0.01, packager.lateness
    for seg in video.segments:
        capture = wall_offset + 100.0 + round((seg.start - video.segments[0].start) * 30) / 30
        assert abs(seg.pdt - capture) < 0.01, (seg.msn, seg.pdt - capture)
    done = [s for s in video.segments if s.complete]
    for a, b in zip(done, done[1:], strict=False):
        assert abs(a.pdt + a.duration - b.pdt) < 1e-6  # consistent with EXTINF
    for seg in audio.segments:
        assert abs(seg.pdt - packager.pdt(seg.start)) < 1e-6  # one clock for every rendition (H36)

