"""A WHEP viewer that behaves like the /watch player in a relay tree (aiortc; used by the tree tests).

It POSTs to the origin and follows a 307 to the node chosen for it (aiohttp keeps method and body on 307). While
playing it watches its own decoded frames: when none arrived for ``stall`` seconds (or the peer connection
failed), it probes its session URL (``GET``, ``probe_timeout``); no answer or 404 means the serving node is
gone: it re-POSTs to the origin with ``?avoid=<that node>`` and plays on (web/js/watch.js does the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from yarl import URL

from webrtc_cast.clients import _ice_scope


@dataclass
class TreeViewerReport:
    entry: str
    served_by: list[str] = field(default_factory=list)  # base URL of the node of each session
    sessions: list[str] = field(default_factory=list)
    frame_times: list[float] = field(default_factory=list)  # time.monotonic() of each decoded video frame
    frames_per_session: list[int] = field(default_factory=list)
    packets_lost: list[int] = field(default_factory=list)  # RTCP-style cumulative loss per session (video)
    packets_received: list[int] = field(default_factory=list)
    failures: list[float] = field(default_factory=list)  # monotonic time a dead node was detected
    delete_status: int | None = None

    def max_gap(self, after: float | None = None) -> float:
        times = [t for t in self.frame_times if after is None or t >= after]
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=float("inf"))

    def first_frame_after(self, t: float) -> float | None:
        return next((x for x in self.frame_times if x > t), None)

    def last_frame_before(self, t: float) -> float | None:
        return next((x for x in reversed(self.frame_times) if x <= t), None)


async def watch_tree(
    entry_url: str, duration: float, ice_hosts: list[str], stall: float = 1.0, probe_timeout: float = 0.5
) -> TreeViewerReport:
    report = TreeViewerReport(entry=entry_url)
    end = time.monotonic() + duration
    avoid: list[str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        while time.monotonic() < end:
            url = entry_url
            if avoid:
                url += ("&" if "?" in url else "?") + urlencode([("avoid", a) for a in avoid])
            failed = await _one_session(http, url, end, ice_hosts, stall, probe_timeout, report)
            if failed is None:
                break
            report.failures.append(time.monotonic())
            avoid.append(failed)
    return report


async def _one_session(http, url, end, ice_hosts, stall, probe_timeout, report) -> str | None:  # noqa: ANN001
    """Play one session until ``end`` (None) or until its node is found dead (that node's base URL)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    frames_before = len(report.frame_times)
    tasks: list[asyncio.Task] = []

    async def consume(track) -> None:  # noqa: ANN001
        while True:
            try:
                await track.recv()
            except MediaStreamError:
                return
            if track.kind == "video":
                report.frame_times.append(time.monotonic())

    pc.on("track", lambda track: tasks.append(asyncio.ensure_future(consume(track))))
    pc.addTransceiver("audio", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    session_url = None
    dead: str | None = None
    try:
        with _ice_scope(ice_hosts):
            await pc.setLocalDescription(await pc.createOffer())
        async with http.post(url, data=pc.localDescription.sdp.encode(),
                             headers={"Content-Type": "application/sdp"}) as r:
            answer = await r.text()
            if r.status != 201:
                raise AssertionError(f"POST {url} -> {r.status}: {answer[:200]}")
            session_url = str(r.url.join(URL(r.headers["Location"])))
            base = str(r.url.origin())
        report.served_by.append(base)
        report.sessions.append(session_url)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        last_count, last_change = -1, time.monotonic()
        while time.monotonic() < end:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            count = len(report.frame_times)
            if pc.connectionState in ("failed", "closed"):
                dead = base
                break
            if count != last_count:
                last_count, last_change = count, now
            elif now - last_change > stall and count > frames_before:
                try:
                    async with http.get(session_url, timeout=aiohttp.ClientTimeout(total=probe_timeout)) as p:
                        alive = p.status < 400
                except (aiohttp.ClientError, OSError, TimeoutError):
                    alive = False
                if not alive:
                    dead = base
                    break
                last_change = time.monotonic()
        stats = await pc.getStats()
        video = [s for s in stats.values() if s.type == "inbound-rtp" and s.kind == "video"]
        report.packets_lost.append(video[0].packetsLost if video else -1)
        report.packets_received.append(video[0].packetsReceived if video else 0)
        report.frames_per_session.append(len(report.frame_times) - frames_before)
        if dead is None:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with http.delete(session_url) as d:
                    report.delete_status = d.status
    finally:
        for t in tasks:
            t.cancel()
        await pc.close()
    return dead
