"""publish() and watch() against a tiny in-test WHIP/WHEP endpoint on loopback.

The endpoint is test scaffolding only: aiortc RTCPeerConnection answerers, with the published tracks handed
to WHEP viewers through aiortc's MediaRelay (which decodes and re-encodes; the real server forwards packets).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay

from webrtc_cast import clients
from webrtc_cast.clients import PeerConnectionError, SignalingError, publish, watch
from webrtc_cast.sfu_tree import aiortc_glue
from webrtc_cast.sfu_tree.aiortc_glue import use_ice_hosts

TOKEN = "s3cret"


@dataclass
class _Stream:
    tracks: dict[str, MediaStreamTrack] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Endpoint:
    base: str
    streams: dict[str, _Stream]
    deletes: list[str]
    offers: list[str]


def _build_app(streams: dict[str, _Stream], deletes: list[str], offers: list[str]) -> web.Application:
    relay = MediaRelay()
    sessions: dict[str, RTCPeerConnection] = {}
    drains: list[asyncio.Task[None]] = []

    async def drain(track: MediaStreamTrack) -> None:
        # Keep the relay's reader running while nobody watches, so no backlog builds up.
        with contextlib.suppress(Exception):
            while True:
                await track.recv()

    async def answer(pc: RTCPeerConnection, offer: str, resource: str) -> web.Response:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        sessions[f"/resource/{resource}"] = pc
        return web.Response(
            status=201,
            text=pc.localDescription.sdp,
            content_type="application/sdp",
            headers={"Location": f"../resource/{resource}"},  # relative, as the real server sends it
        )

    async def whip(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.Response(status=401, text="bad token")
        name = request.match_info["stream"]
        offer = await request.text()
        offers.append(offer)
        stream = streams.setdefault(name, _Stream())
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            stream.tracks[track.kind] = track
            drains.append(asyncio.ensure_future(drain(relay.subscribe(track, buffered=False))))
            if "video" in stream.tracks:
                stream.ready.set()

        return await answer(pc, offer, f"whip-{name}-{len(sessions)}")

    async def whep(request: web.Request) -> web.Response:
        name = request.match_info["stream"]
        stream = streams.get(name)
        if stream is None or not stream.ready.is_set():
            return web.Response(status=404, text=f"no stream {name}")
        offer = await request.text()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        for kind in ("audio", "video"):
            if kind in stream.tracks:
                pc.addTrack(relay.subscribe(stream.tracks[kind], buffered=False))
        await pc.setLocalDescription(await pc.createAnswer())
        resource = f"/resource/whep-{name}-{len(sessions)}"
        sessions[resource] = pc
        return web.Response(
            status=201,
            text=pc.localDescription.sdp,
            content_type="application/sdp",
            headers={"Location": resource},
        )

    async def delete(request: web.Request) -> web.Response:
        resource = request.path
        deletes.append(resource)
        pc = sessions.pop(resource, None)
        if pc is None:
            return web.Response(status=404)
        await pc.close()
        return web.Response(status=200)

    async def cleanup(app: web.Application) -> None:
        for task in drains:
            task.cancel()
        for pc in list(sessions.values()):
            await pc.close()

    app = web.Application()
    app.router.add_post("/whip/{stream}", whip)
    app.router.add_post("/whep/{stream}", whep)
    app.router.add_delete("/resource/{rid}", delete)
    app.on_shutdown.append(cleanup)
    return app


@pytest.fixture
def loopback_ice() -> Iterator[None]:
    with use_ice_hosts(["127.0.0.1"]):
        yield


@pytest.fixture
async def endpoint(loopback_ice: None) -> AsyncIterator[_Endpoint]:
    streams: dict[str, _Stream] = {}
    deletes: list[str] = []
    offers: list[str] = []
    runner = web.AppRunner(_build_app(streams, deletes, offers))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield _Endpoint(f"http://127.0.0.1:{port}", streams, deletes, offers)
    finally:
        await runner.cleanup()


async def _wait_ready(ep: _Endpoint, name: str, timeout: float = 5.0) -> None:
    async def ready() -> None:
        while name not in ep.streams:
            await asyncio.sleep(0.02)
        await ep.streams[name].ready.wait()

    await asyncio.wait_for(ready(), timeout)


async def test_publish_then_watch_h264(endpoint: _Endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    applied: list[int] = []

    def fake_setter(sender: object, bitrate: int) -> bool:  # stands in for the glue module's hook
        applied.append(bitrate)
        return True

    monkeypatch.setattr(aiortc_glue, "set_sender_target_bitrate", fake_setter, raising=False)
    fps = 30
    pub = asyncio.ensure_future(
        publish(
            f"{endpoint.base}/whip/live",
            token=TOKEN,
            duration=6.0,
            width=320,
            height=180,
            fps=fps,
            bitrate=600_000,
            codec="H264",
        )
    )
    await _wait_ready(endpoint, "live")
    await asyncio.sleep(0.3)
    report = await watch(f"{endpoint.base}/whep/live", duration=4.5)
    pub_report = await pub

    print("watch:", report.to_json())
    print("publish:", pub_report.to_json())
    assert pub_report.status == 201 and report.status == 201
    assert pub_report.video_codec == "H264"
    assert pub_report.bitrate_applied and applied and applied[0] == 600_000
    assert pub_report.frames_sent >= 5 * fps
    assert pub_report.delete_status == 200 and report.delete_status == 200
    assert any(d.startswith("/resource/whip-live") for d in endpoint.deletes)
    assert any(d.startswith("/resource/whep-live") for d in endpoint.deletes)
    assert "a=sendonly" in endpoint.offers[0]

    assert (report.width, report.height) == (320, 180)
    assert report.join_time_ms is not None and report.join_time_ms < 3000
    span_s = report.frame_times[-1] - report.frame_times[0]
    expected = span_s * fps + 1
    assert report.frames_decoded >= 0.9 * expected, f"{report.frames_decoded} of ~{expected:.0f} frames"
    assert report.latency_samples >= 0.9 * report.frames_decoded
    assert report.latency_p50_ms is not None and 0 < report.latency_p50_ms < 1000
    assert report.audio_frames > 0
    assert report.freezes <= 1
    assert '"latency_p95_ms"' in report.to_json()


async def test_publish_vp8_and_watch(endpoint: _Endpoint) -> None:
    pub = asyncio.ensure_future(
        publish(
            f"{endpoint.base}/whip/vp8",
            token=TOKEN,
            duration=3.0,
            width=320,
            height=180,
            fps=15,
            codec="VP8",
            audio=False,
        )
    )
    await _wait_ready(endpoint, "vp8")
    report = await watch(f"{endpoint.base}/whep/vp8", duration=2.0)
    pub_report = await pub
    assert pub_report.video_codec == "VP8"
    assert not pub_report.bitrate_applied or hasattr(aiortc_glue, "set_sender_target_bitrate")
    assert report.frames_decoded > 10
    assert report.latency_samples > 10


async def test_errors_are_clean(endpoint: _Endpoint) -> None:
    with pytest.raises(SignalingError) as bad_token:
        await publish(f"{endpoint.base}/whip/x", token="wrong", duration=1.0)
    assert bad_token.value.status == 401 and "bad token" in str(bad_token.value)
    with pytest.raises(SignalingError) as missing:
        await watch(f"{endpoint.base}/whep/nothing", duration=1.0)
    assert missing.value.status == 404
    with pytest.raises(ValueError):
        await publish(f"{endpoint.base}/whip/x", codec="AV1")
    assert not endpoint.deletes


async def test_unreachable_peer_fails_and_closes(monkeypatch: pytest.MonkeyPatch, loopback_ice: None) -> None:
    """An answer whose ICE candidate goes nowhere: PeerConnectionError, no hang."""
    monkeypatch.setattr(clients, "CONNECT_TIMEOUT_S", 2.0)

    async def whip(request: web.Request) -> web.Response:
        offer = await request.text()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        sdp = pc.localDescription.sdp
        await pc.close()  # the answerer is gone: its candidates never answer
        return web.Response(status=201, text=sdp, headers={"Location": "/gone"})

    app = web.Application()
    app.router.add_post("/whip/{stream}", whip)

    async def gone(request: web.Request) -> web.Response:
        return web.Response(status=200)

    app.router.add_delete("/gone", gone)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        with pytest.raises(PeerConnectionError):
            await publish(f"http://127.0.0.1:{port}/whip/a", duration=1.0)
    finally:
        await runner.cleanup()
