"""Codec handling and join timing with aiortc peers on loopback."""

from __future__ import annotations

import asyncio
import re

import aiohttp

from tests.conftest import make_offer, run_node
from tests.integration.test_forwarding import FPS, wait_live
from webrtc_cast.clients import publish, watch


def only_codec(offer: str, kind: str, codec: str) -> str:
    """The offer with the ``kind`` m-line restricted to ``codec`` (and its RTX)."""
    lines = offer.strip().split("\r\n")
    keep = {m.group(1) for ln in lines if (m := re.match(rf"a=rtpmap:(\d+) {codec}/", ln))}
    keep |= {m.group(1) for ln in lines if (m := re.match(r"a=fmtp:(\d+) apt=(\d+)", ln)) and m.group(2) in keep}
    out = []
    for ln in lines:
        if ln.startswith(f"m={kind} "):
            head = ln.split()[:3]
            ln = " ".join(head + [pt for pt in ln.split()[3:] if pt in keep])
        out.append(ln)
    return "\r\n".join(out) + "\r\n"


async def test_vp8_publisher_reaches_viewers():
    async with run_node(preferred_video_codecs=("VP8", "H264")) as (base, node):
        pub = asyncio.create_task(publish(f"{base}/whip/v", width=320, height=180, duration=8.0, codec="VP8"))
        await wait_live(node, "v")
        assert node.broadcasts["v"].tracks["video"].codec.name == "VP8"
        report = await watch(f"{base}/whep/v", duration=4.0)
        await pub
        assert report.video_codec == "VP8" and (report.width, report.height) == (320, 180)
        assert report.frames_decoded >= 0.9 * FPS * (4.0 - report.join_time_ms / 1000), report.to_json()


async def test_viewer_without_the_live_codec_gets_422():
    async with run_node() as (base, node):
        pub = asyncio.create_task(publish(f"{base}/whip/c", width=320, height=180, duration=5.0, codec="H264"))
        await wait_live(node, "c")
        pc, offer = await make_offer("recvonly")
        await pc.close()
        async with aiohttp.ClientSession() as http, http.post(
            f"{base}/whep/c", data=only_codec(offer, "video", "VP8"), headers={"Content-Type": "application/sdp"}
        ) as r:
            status, text = r.status, await r.text()
        pub.cancel()
        assert status == 422 and "H264" in text, text
        assert all(s.role != "whep" for s in node.sessions.values())  # no half-made session left behind


async def test_viewer_joins_before_the_broadcast_and_plays_when_it_goes_live():
    async with run_node() as (base, node):
        viewer = asyncio.create_task(watch(f"{base}/whep/early", duration=7.0))
        await asyncio.sleep(2.0)
        assert not node.broadcasts["early"].live
        pub = asyncio.create_task(publish(f"{base}/whip/early", width=320, height=180, duration=5.5))
        report = await viewer
        await pub
        assert report.frames_decoded >= 0.8 * FPS * 4.0, report.to_json()
        assert report.video_codec in ("H264", "VP8")


async def test_viewer_leaving_and_publisher_leaving_free_everything():
    async with run_node() as (base, node):
        await asyncio.gather(
            publish(f"{base}/whip/gone", width=320, height=180, duration=3.0),
            watch(f"{base}/whep/gone", duration=2.0),
        )
        await asyncio.sleep(0.3)
        assert node.sessions == {}
        assert "gone" not in node.broadcasts
