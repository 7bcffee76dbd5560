"""Scripted WHIP publisher and WHEP viewer built on aiortc (ADAPTER: aiortc RTCPeerConnection + aiohttp).

* :func:`publish` sends a synthetic moving test pattern (with its send time burned in, see
  :mod:`webrtc_cast.timecode`) and a sine tone to a WHIP endpoint.
* :func:`watch` pulls a stream from a WHEP endpoint, decodes it, and measures frames, freezes, time to first
  frame and glass-to-glass latency (viewer clock at decode minus the burned-in send time; same machine).

Both do the whole HTTP exchange of RFC 9725 / WHEP: POST the offer, 201 with the answer and a ``Location``
(resolved against the request URL), DELETE on the way out, and close the peer connection on any failure.
ICE gathers only ``ice_hosts`` (loopback by default) through :mod:`webrtc_cast.sfu_tree.aiortc_glue`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import (
    AudioStreamTrack,
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError
from yarl import URL

from webrtc_cast import timecode
from webrtc_cast.sfu_tree import aiortc_glue

logger = logging.getLogger(__name__)

VIDEO_CLOCK_RATE = 90_000
AUDIO_SAMPLE_RATE = 48_000
AUDIO_FRAME_SAMPLES = 960  # 20 ms at 48 kHz
DEFAULT_ICE_HOSTS: tuple[str, ...] = ("127.0.0.1",)
CONNECT_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 10.0
SUPPORTED_CODECS = ("H264", "VP8")


class SignalingError(RuntimeError):
    """The WHIP/WHEP endpoint did not answer 201 Created."""

    def __init__(self, url: str, status: int, body: str) -> None:
        self.url = url
        self.status = status
        self.body = body
        super().__init__(f"POST {url} answered {status} (expected 201): {body.strip()[:500]}")


class PeerConnectionError(RuntimeError):
    """ICE/DTLS did not reach the connected state."""


# --------------------------------------------------------------------------------------------- media tracks
class SyntheticVideoTrack(VideoStreamTrack):
    """A moving test pattern with the wall-clock send time (ms) burned into every frame, yuv420p."""

    def __init__(self, width: int = 640, height: int = 360, fps: float = 30.0) -> None:
        super().__init__()
        if width % 2 or height % 2:
            raise ValueError("width and height must be even (yuv420p)")
        if width < timecode.MIN_WIDTH or timecode.band_height(width) > height:
            raise ValueError(f"{width}x{height} is too small for the burned-in timecode")
        if not 0 < fps <= 120:
            raise ValueError("fps must be in (0, 120]")
        self.width = width
        self.height = height
        self.fps = fps
        self.frames_sent = 0
        self._t0: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        n = self.frames_sent
        if self._t0 is None:
            self._t0 = time.monotonic()
        else:
            wait = self._t0 + n / self.fps - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        image = timecode.test_pattern(self.width, self.height, n)
        timecode.burn_timestamp(image, int(time.time() * 1000))
        frame = av.VideoFrame.from_ndarray(image, format="yuv420p")
        frame.pts = int(round(n * VIDEO_CLOCK_RATE / self.fps))
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK_RATE)
        self.frames_sent += 1
        return frame


class SineAudioTrack(AudioStreamTrack):
    """A continuous sine tone, 48 kHz mono s16, 20 ms frames (aiortc encodes it as Opus)."""

    def __init__(self, frequency: float = 440.0, amplitude: float = 0.2) -> None:
        super().__init__()
        self.frequency = frequency
        self.amplitude = amplitude
        self.frames_sent = 0
        self._t0: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        n = self.frames_sent
        if self._t0 is None:
            self._t0 = time.monotonic()
        else:
            wait = self._t0 + n * AUDIO_FRAME_SAMPLES / AUDIO_SAMPLE_RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        pts = n * AUDIO_FRAME_SAMPLES
        t = (pts + np.arange(AUDIO_FRAME_SAMPLES)) / AUDIO_SAMPLE_RATE
        samples = (self.amplitude * 32767 * np.sin(2 * math.pi * self.frequency * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_SAMPLE_RATE
        frame.pts = pts
        frame.time_base = fractions.Fraction(1, AUDIO_SAMPLE_RATE)
        self.frames_sent += 1
        return frame


# --------------------------------------------------------------------------------------------- reports
@dataclass(slots=True)
class PublishReport:
    whip_url: str
    status: int = 0
    location: str | None = None
    delete_status: int | None = None
    video_codec: str | None = None
    audio_codec: str | None = None
    width: int = 0
    height: int = 0
    fps: float = 0.0
    target_bitrate: int = 0
    bitrate_applied: bool = False
    connect_time_ms: float | None = None
    duration_s: float = 0.0
    frames_sent: int = 0
    audio_frames_sent: int = 0
    connection_state: str = "new"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


@dataclass(slots=True)
class WatchReport:
    whep_url: str
    status: int = 0
    location: str | None = None
    delete_status: int | None = None
    video_codec: str | None = None
    duration_s: float = 0.0
    frames_decoded: int = 0
    width: int = 0
    height: int = 0
    fps: float = 0.0
    freezes: int = 0
    max_gap_ms: float | None = None
    join_time_ms: float | None = None
    latency_samples: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_max_ms: float | None = None
    audio_frames: int = 0
    connection_state: str = "new"
    frame_times: list[float] = field(default_factory=list, repr=False)  # time.time() of each decoded frame

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("frame_times")
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


# --------------------------------------------------------------------------------------------- helpers
class _IceScope:
    """Reference-counted :func:`aiortc_glue.use_ice_hosts`, so concurrent clients in one loop don't undo each
    other's patch when their gathering overlaps."""

    def __init__(self) -> None:
        self._depth = 0
        self._stack: contextlib.ExitStack | None = None

    @contextlib.contextmanager
    def __call__(self, hosts: Sequence[str] | None) -> Iterator[None]:
        if hosts is None:
            yield
            return
        if self._depth == 0:
            self._stack = contextlib.ExitStack()
            self._stack.enter_context(aiortc_glue.use_ice_hosts(list(hosts)))
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0 and self._stack is not None:
                self._stack.close()
                self._stack = None


_ice_scope = _IceScope()


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _first_codec(sdp: str, kind: str) -> str | None:
    """The first (chosen) codec name of the first ``kind`` m-section of an SDP, e.g. 'H264'."""
    section: list[str] | None = None
    fmts: list[str] = []
    rtpmap: dict[str, str] = {}
    for line in sdp.splitlines():
        if line.startswith("m="):
            if section is not None:
                break
            parts = line[2:].split()
            if parts and parts[0] == kind and len(parts) > 3 and parts[1] != "0":
                section = []
                fmts = parts[3:]
        elif section is not None:
            m = re.match(r"a=rtpmap:(\d+) ([^/]+)/", line)
            if m:
                rtpmap[m.group(1)] = m.group(2)
    for pt in fmts:
        if pt in rtpmap and rtpmap[pt].lower() not in ("rtx", "red", "ulpfec"):
            return rtpmap[pt]
    return None


def _prefer_codec(transceiver: Any, kind: str, codec: str) -> None:
    """Put ``codec`` (and its RTX) first in the transceiver's preferences; keep the rest after it."""
    capabilities = RTCRtpSender.getCapabilities(kind).codecs
    wanted = f"{kind}/{codec}".lower()
    chosen = [c for c in capabilities if c.mimeType.lower() == wanted]
    if not chosen:
        raise ValueError(f"aiortc has no {codec} {kind} codec")
    rest = [c for c in capabilities if c.mimeType.lower() != wanted]
    transceiver.setCodecPreferences(chosen + rest)


async def _post_offer(
    session: aiohttp.ClientSession, url: str, sdp: str, token: str | None
) -> tuple[int, str, str | None]:
    headers = {"Content-Type": "application/sdp", **_headers(token)}
    async with session.post(url, data=sdp.encode(), headers=headers) as resp:
        body = await resp.text()
        if resp.status != 201:
            raise SignalingError(url, resp.status, body)
        location = resp.headers.get("Location")
        resolved = str(resp.url.join(URL(location))) if location else None  # resp.url: after any 307
        return resp.status, body, resolved


async def _delete(session: aiohttp.ClientSession, location: str | None, token: str | None) -> int | None:
    if location is None:
        return None
    try:
        async with session.delete(location, headers=_headers(token)) as resp:
            await resp.read()
            return resp.status
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        logger.warning("DELETE %s failed: %s", location, exc)
        return None


async def _wait_connected(pc: RTCPeerConnection, timeout: float) -> None:
    done = asyncio.Event()

    @pc.on("connectionstatechange")
    def _changed() -> None:
        if pc.connectionState in ("connected", "failed", "closed"):
            done.set()

    if pc.connectionState not in ("connected", "failed", "closed"):
        try:
            await asyncio.wait_for(done.wait(), timeout)
        except TimeoutError:
            raise PeerConnectionError(f"not connected after {timeout:.0f} s ({pc.connectionState})") from None
    if pc.connectionState != "connected":
        raise PeerConnectionError(f"peer connection {pc.connectionState}")


async def _sleep_until(deadline: float | None, stop: asyncio.Event | None) -> None:
    """Sleep until the monotonic ``deadline`` (None: forever) or until ``stop`` is set."""
    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
    if stop is None:
        if timeout is None:
            await asyncio.Event().wait()
        else:
            await asyncio.sleep(timeout)
        return
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout)


def _apply_target_bitrate(sender: RTCRtpSender, bitrate: int) -> bool:
    """Set the sender's encoder target bitrate through the glue module, if it offers the hook.

    aiortc has no public API for this (its encoder is a private attribute of RTCRtpSender, created at the
    first frame, and retargeted by every REMB from the peer), so it belongs in aiortc_glue next to the other
    internals: ``set_sender_target_bitrate(sender, bitrate) -> bool`` (False while there is no encoder yet).
    """
    setter = getattr(aiortc_glue, "set_sender_target_bitrate", None)
    if setter is None:
        return False
    return bool(setter(sender, bitrate))


async def _hold_bitrate(sender: RTCRtpSender, bitrate: int, report: PublishReport) -> None:
    """Apply the target bitrate once the encoder exists, then re-apply it (a REMB from the peer resets it)."""
    if getattr(aiortc_glue, "set_sender_target_bitrate", None) is None:
        logger.warning("aiortc_glue has no set_sender_target_bitrate: encoder keeps aiortc's default bitrate")
        return
    while True:
        if _apply_target_bitrate(sender, bitrate):
            report.bitrate_applied = True
            await asyncio.sleep(1.0)
        else:
            await asyncio.sleep(0.05)


def _luma(frame: av.VideoFrame) -> np.ndarray:
    """The luma plane of a decoded frame as a 2-D uint8 array (no copy for planar YUV)."""
    if frame.format.name in ("yuv420p", "yuvj420p", "yuv422p", "yuv444p", "nv12"):
        plane = frame.planes[0]
        rows = np.frombuffer(plane, dtype=np.uint8).reshape(frame.height, plane.line_size)
        return rows[:, : frame.width]
    return frame.to_ndarray(format="gray")


async def _cancel(tasks: Sequence[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


# --------------------------------------------------------------------------------------------- publish
async def publish(
    whip_url: str,
    *,
    token: str | None = None,
    duration: float | None = None,
    width: int = 640,
    height: int = 360,
    fps: float = 30,
    bitrate: int = 1_000_000,
    codec: str = "H264",
    audio: bool = True,
    ice_hosts: Sequence[str] | None = DEFAULT_ICE_HOSTS,
    stop: asyncio.Event | None = None,
) -> PublishReport:
    """Publish a synthetic stream over WHIP for ``duration`` seconds (None: until ``stop`` is set or the task
    is cancelled) and return a :class:`PublishReport`.

    Raises :class:`SignalingError` on a non-201 answer and :class:`PeerConnectionError` if ICE/DTLS fails.
    """
    codec = codec.upper()
    if codec not in SUPPORTED_CODECS:
        raise ValueError(f"codec must be one of {SUPPORTED_CODECS}")
    report = PublishReport(whip_url=whip_url, width=width, height=height, fps=fps, target_bitrate=bitrate)
    video = SyntheticVideoTrack(width, height, fps)
    tone = SineAudioTrack() if audio else None
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    tasks: list[asyncio.Task[Any]] = []
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        try:
            if tone is not None:
                pc.addTransceiver(tone, direction="sendonly")
            video_tx = pc.addTransceiver(video, direction="sendonly")
            _prefer_codec(video_tx, "video", codec)
            with _ice_scope(ice_hosts):
                await pc.setLocalDescription(await pc.createOffer())
            posted = time.monotonic()
            report.status, answer, report.location = await _post_offer(
                session, whip_url, pc.localDescription.sdp, token
            )
            report.video_codec = _first_codec(answer, "video")
            report.audio_codec = _first_codec(answer, "audio")
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            await _wait_connected(pc, CONNECT_TIMEOUT_S)
            report.connect_time_ms = round((time.monotonic() - posted) * 1000, 1)
            tasks.append(asyncio.ensure_future(_hold_bitrate(video_tx.sender, bitrate, report)))
            deadline = None if duration is None else time.monotonic() + duration
            await _sleep_until(deadline, stop)
        finally:
            report.connection_state = pc.connectionState
            await _cancel(tasks)
            report.delete_status = await _delete(session, report.location, token)
            await pc.close()
            video.stop()
            if tone is not None:
                tone.stop()
            report.duration_s = round(time.monotonic() - started, 3)
            report.frames_sent = video.frames_sent
            report.audio_frames_sent = tone.frames_sent if tone is not None else 0
    return report


# --------------------------------------------------------------------------------------------- watch
class _ViewerStats:
    def __init__(self, report: WatchReport, posted_wall: float) -> None:
        self.report = report
        self.posted_wall = posted_wall
        self.latencies: list[float] = []

    async def consume_video(self, track: MediaStreamTrack) -> None:
        report = self.report
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.time()
            if report.frames_decoded == 0:
                report.join_time_ms = (now - self.posted_wall) * 1000
            report.frames_decoded += 1
            report.frame_times.append(now)
            report.width, report.height = frame.width, frame.height
            burned = timecode.read_timestamp(_luma(frame))
            if burned is not None:
                self.latencies.append(now * 1000 - burned)

    async def consume_audio(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                await track.recv()
            except MediaStreamError:
                return
            self.report.audio_frames += 1

    def finish(self) -> None:
        report = self.report
        times = report.frame_times
        if len(times) >= 2:
            gaps = np.diff(np.asarray(times))
            span = times[-1] - times[0]
            report.fps = round((len(times) - 1) / span, 2) if span > 0 else 0.0
            interval = float(np.median(gaps))
            limit = max(3 * interval, 0.150)
            report.freezes = int(np.count_nonzero(gaps > limit))
            report.max_gap_ms = round(float(gaps.max()) * 1000, 1)
        if self.latencies:
            lat = np.asarray(self.latencies)
            report.latency_samples = len(lat)
            report.latency_p50_ms = round(float(np.percentile(lat, 50)), 1)
            report.latency_p95_ms = round(float(np.percentile(lat, 95)), 1)
            report.latency_max_ms = round(float(lat.max()), 1)
        if report.join_time_ms is not None:
            report.join_time_ms = round(report.join_time_ms, 1)


async def watch(
    whep_url: str,
    *,
    duration: float = 10.0,
    token: str | None = None,
    ice_hosts: Sequence[str] | None = DEFAULT_ICE_HOSTS,
    stop: asyncio.Event | None = None,
    layer: str | None = None,
    on_session: Callable[[str], None] | None = None,
) -> WatchReport:
    """Watch a WHEP stream for ``duration`` seconds (counted from the POST) and return a :class:`WatchReport`.

    ``layer``: a simulcast rid to pin through the WHEP layer extension (``POST {session}/layer``).
    ``on_session``: called with the absolute session URL once the server answered.

    Raises :class:`SignalingError` on a non-201 answer and :class:`PeerConnectionError` if ICE/DTLS fails.
    """
    report = WatchReport(whep_url=whep_url)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    tasks: list[asyncio.Task[Any]] = []
    started = time.monotonic()
    stats = _ViewerStats(report, time.time())

    @pc.on("track")
    def _on_track(track: MediaStreamTrack) -> None:
        consumer = stats.consume_video if track.kind == "video" else stats.consume_audio
        tasks.append(asyncio.ensure_future(consumer(track)))

    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        try:
            pc.addTransceiver("audio", direction="recvonly")
            pc.addTransceiver("video", direction="recvonly")
            with _ice_scope(ice_hosts):
                await pc.setLocalDescription(await pc.createOffer())
            deadline = time.monotonic() + duration
            stats.posted_wall = time.time()
            report.status, answer, report.location = await _post_offer(
                session, whep_url, pc.localDescription.sdp, token
            )
            report.video_codec = _first_codec(answer, "video")
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            if report.location and on_session is not None:
                on_session(report.location)
            if layer is not None and report.location:
                async with session.post(
                    report.location + "/layer", json={"rid": layer}, headers=_headers(token)
                ) as r:
                    if r.status != 200:
                        raise SignalingError(report.location + "/layer", r.status, await r.text())
            await _wait_connected(pc, min(CONNECT_TIMEOUT_S, max(duration, 1.0)))
            await _sleep_until(deadline, stop)
        finally:
            report.connection_state = pc.connectionState
            await _cancel(tasks)
            report.delete_status = await _delete(session, report.location, token)
            await pc.close()
            report.duration_s = round(time.monotonic() - started, 3)
            stats.finish()
    return report


__all__ = [
    "PeerConnectionError",
    "PublishReport",
    "SignalingError",
    "SineAudioTrack",
    "SyntheticVideoTrack",
    "WatchReport",
    "publish",
    "watch",
]
