"""Load generator for benchmarks/fanout.py: one synthetic publisher and many lean WHEP viewers in one process.

Both sides are built on :class:`webrtc_cast.sfu_tree.aiortc_glue.PeerTransport` (real ICE, DTLS and SRTP),
with hand-written SDP offers; nothing is decoded.

* :class:`LeanPublisher` sends a pre-encoded H.264 clip (libx264 via PyAV, encoded once, packetized here with
  STAP-A / FU-A, looped with rewritten sequence numbers and timestamps) plus 20 ms Opus-sized audio packets whose
  first 8 payload bytes carry the send time (``time.monotonic_ns()``). Video is paced like a browser's pacer
  (at most ``pacing_factor`` times the target bitrate), so a keyframe is not one burst.
* :class:`LeanViewer` posts a recvonly offer, completes ICE and DTLS, then counts SRTP datagrams straight from the
  socket (the RTP header is in clear text) and decrypts a sample: every audio packet while recording (its
  embedded send time gives the forwarding delay) and one video packet in ``VIDEO_SAMPLE_EVERY``.

Counting without decrypting everything is what lets one core receive hundreds of 2.5 Mbit/s streams; the
glue's :meth:`PeerTransport.tap_datagrams` hands it the raw datagrams (the aiortc internals stay in the glue).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import os
import random
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pylibsrtp

from webrtc_cast.rtp.header import build as build_rtp
from webrtc_cast.sdp import description as sdp
from webrtc_cast.sfu_tree.aiortc_glue import LocalParameters, PeerTransport

AUDIO_PT = 111
VIDEO_PT = 102
AUDIO_CLOCK = 48_000
VIDEO_CLOCK = 90_000
AUDIO_FRAME_S = 0.020
AUDIO_PAYLOAD_BYTES = 160  # 64 kbit/s Opus at 20 ms
VIDEO_MTU_PAYLOAD = 1200
VIDEO_SAMPLE_EVERY = 32
AUDIO_TRACK_EVERY = 64  # outside measurement windows: keeps libsrtp's rollover-counter estimate in step
CONNECT_TIMEOUT_S = 15.0
HTTP_TIMEOUT_S = 15.0
H264_FMTP = "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"

_SEND_TIME = struct.Struct("!Q")


# --- the synthetic H.264 clip ---------------------------------------------------------------------------------
@dataclass(slots=True)
class H264Clip:
    fps: int
    frames: list[tuple[bool, list[bytes]]]  # (keyframe, NAL units without start codes)
    width: int
    height: int

    @property
    def duration(self) -> float:
        return len(self.frames) / self.fps

    @property
    def bitrate(self) -> float:
        return sum(len(n) for _, nals in self.frames for n in nals) * 8 / self.duration


def split_annexb(data: bytes) -> list[bytes]:
    """NAL units of an Annex B byte stream (start codes 00 00 01 / 00 00 00 01 removed)."""
    out: list[bytes] = []
    starts: list[tuple[int, int]] = []  # (start code position, first NAL byte)
    i = data.find(b"\x00\x00\x01")
    while i != -1:
        pos = i - 1 if i > 0 and data[i - 1] == 0 else i
        starts.append((pos, i + 3))
        i = data.find(b"\x00\x00\x01", i + 3)
    for k, (_, begin) in enumerate(starts):
        end = starts[k + 1][0] if k + 1 < len(starts) else len(data)
        if end > begin:
            out.append(data[begin:end])
    return out


def encode_clip(
    seconds: float = 4.0, fps: int = 30, width: int = 1280, height: int = 720, bitrate: int = 2_500_000
) -> H264Clip:
    """Encode a moving, noisy test pattern once with libx264 (CBR, baseline, 2 s GOP, zero latency)."""
    import av
    import numpy as np

    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height = width, height
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = fractions.Fraction(1, fps)
    ctx.framerate = fractions.Fraction(fps, 1)
    ctx.bit_rate = bitrate
    kbps = bitrate // 1000
    ctx.options = {
        "preset": "veryfast",
        "tune": "zerolatency",
        "profile": "baseline",
        "x264-params": (
            f"keyint={2 * fps}:min-keyint={2 * fps}:scenecut=0:bframes=0:nal-hrd=cbr:force-cfr=1:"
            f"vbv-maxrate={kbps}:vbv-bufsize={kbps // 2}:aud=0:repeat-headers=1"
        ),
    }
    rng = np.random.default_rng(1234)
    yy, xx = np.mgrid[0:height, 0:width]
    frames: list[tuple[bool, list[bytes]]] = []
    count = int(round(seconds * fps))

    def collect(packets) -> None:  # noqa: ANN001
        for pkt in packets:
            nals = [n for n in split_annexb(bytes(pkt)) if n and (n[0] & 0x1F) != 9]
            frames.append((bool(pkt.is_keyframe), nals))

    for i in range(count):
        y = ((xx + 4 * i) ^ (yy + 2 * i)) & 0xFF
        y = (y + rng.integers(0, 48, size=y.shape)) & 0xFF
        uv_h, uv_w = height // 2, width // 2
        u = np.full((uv_h, uv_w), (64 + 3 * i) & 0xFF)
        v = np.full((uv_h, uv_w), (192 - 2 * i) & 0xFF)
        planes = np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).astype(np.uint8)
        frame = av.VideoFrame.from_ndarray(planes.reshape(height * 3 // 2, width), format="yuv420p")
        frame.pts = i
        collect(ctx.encode(frame))
    collect(ctx.encode(None))
    if not frames or not frames[0][0]:
        raise RuntimeError("libx264 produced no leading keyframe")
    return H264Clip(fps=fps, frames=frames[:count], width=width, height=height)


def encode_clip_at(total_bitrate: int, seconds: float = 4.0, fps: int = 30, attempts: int = 3) -> H264Clip:
    """A clip whose video plus the synthetic audio comes within 2 % of ``total_bitrate`` (x264's rate control
    adds SEI and slice overhead, so the target is corrected from the measured rate; at most ``attempts``)."""
    audio_bps = AUDIO_PAYLOAD_BYTES * 8 / AUDIO_FRAME_S
    want = total_bitrate - audio_bps
    target = want
    clip = encode_clip(seconds, fps, bitrate=int(target))
    for _ in range(attempts - 1):
        if abs(clip.bitrate - want) <= 0.02 * want:
            break
        target *= want / clip.bitrate
        clip = encode_clip(seconds, fps, bitrate=int(target))
    return clip


def packetize_h264(nals: list[bytes], mtu: int = VIDEO_MTU_PAYLOAD) -> list[bytes]:
    """RFC 6184 packetization-mode 1 payloads for one access unit: STAP-A for runs of small NAL units that
    fit together, single NAL unit packets, and FU-A fragments for NAL units larger than ``mtu``."""
    out: list[bytes] = []
    group: list[bytes] = []

    def flush() -> None:
        if len(group) == 1:
            out.append(group[0])
        elif group:
            nri = max(n[0] & 0x60 for n in group)
            out.append(bytes([nri | 24]) + b"".join(len(n).to_bytes(2, "big") + n for n in group))
        group.clear()

    for nal in nals:
        if len(nal) > mtu:
            flush()
            header = nal[0]
            fu_indicator = (header & 0xE0) | 28
            body = nal[1:]
            chunk = mtu - 2
            for pos in range(0, len(body), chunk):
                start = 0x80 if pos == 0 else 0
                end = 0x40 if pos + chunk >= len(body) else 0
                out.append(bytes([fu_indicator, start | end | (header & 0x1F)]) + body[pos : pos + chunk])
            continue
        size = 1 + sum(2 + len(n) for n in group) + 2 + len(nal)
        if group and size > mtu:
            flush()
        group.append(nal)
    flush()
    return out


@dataclass(slots=True)
class _Event:
    at: float  # seconds from the start of the loop
    audio: bool
    payload: bytes
    marker: bool
    ts: int  # RTP timestamp offset within the loop


def build_schedule(clip: H264Clip, pacing_factor: float = 2.5) -> tuple[list[_Event], float, int, int]:
    """One loop of the clip as timed packets. Returns (events, loop seconds, video ts per loop, audio ts per loop)."""
    events: list[_Event] = []
    rate = clip.bitrate * pacing_factor
    t_free = 0.0
    vclock = VIDEO_CLOCK // clip.fps
    for i, (_key, nals) in enumerate(clip.frames):
        t = max(i / clip.fps, t_free)
        payloads = packetize_h264(nals)
        for k, p in enumerate(payloads):
            events.append(_Event(t, False, p, k == len(payloads) - 1, i * vclock))
            t += len(p) * 8 / rate
        t_free = t
    duration = clip.duration
    n_audio = int(round(duration / AUDIO_FRAME_S))
    aclock = int(AUDIO_CLOCK * AUDIO_FRAME_S)
    for j in range(n_audio):
        events.append(_Event(j * AUDIO_FRAME_S, True, b"", False, j * aclock))
    events.sort(key=lambda e: (e.at, not e.audio))
    return events, duration, len(clip.frames) * vclock, n_audio * aclock


# --- SDP --------------------------------------------------------------------------------------------------------
def build_offer(local: LocalParameters, direction: str, ssrcs: dict[str, int] | None = None) -> str:
    """A BUNDLEd audio+video offer (Opus PT 111, H.264 packetization-mode 1 PT 102), setup:actpass."""
    return _build_sdp(local, direction, ssrcs, ("0", "1"), "actpass")


def build_answer(local: LocalParameters, offer_text: str) -> str:
    """A recvonly answer to a server's audio+video offer (Janus's streaming plugin): the offer's mids, our
    Opus PT 111 / H.264 PT 102 (the offer must use them), setup:active (we are the DTLS client)."""
    offer = sdp.parse(offer_text)
    mids: dict[str, str] = {}
    for section in offer.media:
        if section.kind in ("audio", "video") and section.port != 0 and section.kind not in mids:
            mids[section.kind] = section.mid or str(len(mids))
    if set(mids) != {"audio", "video"}:
        raise RuntimeError(f"offer without audio and video: {sorted(mids)}")
    return _build_sdp(local, "recvonly", None, (mids["audio"], mids["video"]), "active")


def _build_sdp(
    local: LocalParameters, direction: str, ssrcs: dict[str, int] | None, mids: tuple[str, str], setup: str
) -> str:
    ssrcs = ssrcs or {}
    lines = [
        "v=0",
        f"o=- {random.getrandbits(62)} 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        f"a=group:BUNDLE {mids[0]} {mids[1]}",
        "a=msid-semantic: WMS bench",
    ]
    for i, (kind, pt, rtpmap, extra) in enumerate(
        [
            ("audio", AUDIO_PT, "opus/48000/2", ["a=fmtp:111 minptime=10;useinbandfec=1"]),
            (
                "video",
                VIDEO_PT,
                "H264/90000",
                [f"a=fmtp:{VIDEO_PT} {H264_FMTP}", f"a=rtcp-fb:{VIDEO_PT} nack", f"a=rtcp-fb:{VIDEO_PT} nack pli"],
            ),
        ]
    ):
        lines += [
            f"m={kind} 9 UDP/TLS/RTP/SAVPF {pt}",
            "c=IN IP4 0.0.0.0",
            "a=rtcp:9 IN IP4 0.0.0.0",
            f"a=ice-ufrag:{local.ice_ufrag}",
            f"a=ice-pwd:{local.ice_pwd}",
            f"a=fingerprint:sha-256 {local.fingerprint}",
            f"a=setup:{setup}",
            f"a=mid:{mids[i]}",
            f"a={direction}",
            "a=rtcp-mux",
            f"a=rtpmap:{pt} {rtpmap}",
            *extra,
        ]
        if kind in ssrcs:
            lines += [f"a=msid:bench bench-{kind}", f"a=ssrc:{ssrcs[kind]} cname:bench"]
        if i == 0:
            lines += [f"a=candidate:{c}" for c in local.candidates]
            lines.append("a=end-of-candidates")
    return "\r\n".join(lines) + "\r\n"


@dataclass(slots=True)
class RemoteParameters:
    ufrag: str
    pwd: str
    fingerprints: list[tuple[str, str]]
    dtls_role: str  # ours
    candidates: list[str]


def parse_answer(text: str) -> RemoteParameters:
    answer = sdp.parse(text)
    first = next(s for s in answer.media if s.port != 0)
    setup = (answer.media_or_session(first, "setup") or "passive").lower()
    candidates = [v for s in answer.media for k, v in s.attributes if k == "candidate"]
    return RemoteParameters(
        ufrag=answer.media_or_session(first, "ice-ufrag") or "",
        pwd=answer.media_or_session(first, "ice-pwd") or "",
        fingerprints=answer.fingerprints(first),
        dtls_role="client" if setup == "passive" else "server",
        candidates=candidates,
    )


async def _negotiate(
    http: aiohttp.ClientSession, url: str, transport: PeerTransport, direction: str, ssrcs: dict[str, int] | None
) -> str:
    """POST the offer, start the transport on the answer, wait for DTLS. Returns the session URL."""
    local = await transport.gather()
    offer = build_offer(local, direction, ssrcs)
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
    async with http.post(url, data=offer, headers={"Content-Type": "application/sdp"}, timeout=timeout) as resp:
        body = await resp.text()
        if resp.status != 201:
            raise RuntimeError(f"POST {url}: {resp.status} {body.strip()[:200]}")
        location = resp.headers.get("Location", "")
    remote = parse_answer(body)
    transport.start(remote.ufrag, remote.pwd, remote.fingerprints, remote.dtls_role, remote.candidates)
    await _wait_connected(transport, direction)
    return location


async def answer_offer(
    transport: PeerTransport, offer_text: str, send_answer: Callable[[str], Awaitable[None]]
) -> None:
    """The other way round (Janus): answer the server's offer through ``send_answer``, then start ICE (we are
    ICE-controlled) and DTLS as client, and wait until DTLS is up."""
    local = await transport.gather()
    remote = parse_answer(offer_text)
    await send_answer(build_answer(local, offer_text))
    transport.start(remote.ufrag, remote.pwd, remote.fingerprints, "client", remote.candidates)
    await _wait_connected(transport, "recvonly")


async def _wait_connected(transport: PeerTransport, direction: str) -> None:
    connected = asyncio.ensure_future(transport.connected.wait())
    failed = asyncio.ensure_future(transport.failed.wait())
    try:
        await asyncio.wait({connected, failed}, timeout=CONNECT_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
    finally:
        connected.cancel()
        failed.cancel()
    if not transport.connected.is_set():
        raise RuntimeError(
            f"{direction} transport did not connect (ICE {transport.ice_state}, DTLS {transport.dtls_state})"
        )


# --- publisher --------------------------------------------------------------------------------------------------
class LeanPublisher:
    """Loops the pre-encoded clip in real time over one PeerTransport (WHIP)."""

    def __init__(self, transport: PeerTransport, clip: H264Clip, pacing_factor: float = 2.5) -> None:
        self.transport = transport
        self.events, self.loop_s, self.video_ts_loop, self.audio_ts_loop = build_schedule(clip, pacing_factor)
        self.ssrcs = {"audio": random.getrandbits(31) + 1, "video": random.getrandbits(31) + 1}
        self._seq = {True: random.getrandbits(16), False: random.getrandbits(16)}
        self._ts0 = {True: random.getrandbits(32), False: random.getrandbits(32)}
        self._filler = os.urandom(AUDIO_PAYLOAD_BYTES - _SEND_TIME.size)
        self.sent_audio = 0
        self.sent_video = 0
        self.sent_bytes = 0
        self.send_failures = 0
        self.paused = False
        self._pause_started = 0.0
        self._base = 0.0
        self._stop = asyncio.Event()

    async def connect(self, http: aiohttp.ClientSession, url: str) -> str:
        return await _negotiate(http, url, self.transport, "sendonly", self.ssrcs)

    @property
    def sent(self) -> int:
        return self.sent_audio + self.sent_video

    def pause(self) -> None:
        if not self.paused:
            self.paused = True
            self._pause_started = time.monotonic()

    def resume(self) -> None:
        if self.paused:
            self._base += time.monotonic() - self._pause_started
            self.paused = False

    def stop(self) -> None:
        self._stop.set()

    async def run(self, max_seconds: float) -> None:
        """Send in real time until :meth:`stop` or ``max_seconds`` (a hard bound)."""
        send = self.transport.send_rtp
        events = self.events
        n = len(events)
        idx = loop = 0
        self._base = time.monotonic()
        deadline = self._base + max_seconds
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                break
            if self.paused:
                await asyncio.sleep(0.005)
                continue
            start = self._base + loop * self.loop_s
            while start + events[idx].at <= now:
                ev = events[idx]
                audio = ev.audio
                seq = self._seq[audio] = (self._seq[audio] + 1) & 0xFFFF
                if audio:
                    ts = (self._ts0[True] + loop * self.audio_ts_loop + ev.ts) & 0xFFFFFFFF
                    body = _SEND_TIME.pack(time.monotonic_ns()) + self._filler
                    pkt = build_rtp(AUDIO_PT, seq, ts, self.ssrcs["audio"], body, False)
                else:
                    ts = (self._ts0[False] + loop * self.video_ts_loop + ev.ts) & 0xFFFFFFFF
                    pkt = build_rtp(VIDEO_PT, seq, ts, self.ssrcs["video"], ev.payload, ev.marker)
                if send(pkt):
                    if audio:
                        self.sent_audio += 1
                    else:
                        self.sent_video += 1
                    self.sent_bytes += len(pkt)
                else:
                    self.send_failures += 1
                idx += 1
                if idx == n:
                    idx = 0
                    loop += 1
                    start = self._base + loop * self.loop_s
            wait = start + events[idx].at - time.monotonic()
            await asyncio.sleep(min(max(wait, 0.0005), 0.02))


# --- viewers ----------------------------------------------------------------------------------------------------
@dataclass
class Recorder:
    """Shared by all viewers: forwarding-delay samples while ``active``, sample-decryption results."""

    active: bool = False
    delays_ns: list[int] = field(default_factory=list)
    decrypt_ok: int = 0
    decrypt_failures: int = 0


class LeanViewer:
    """One WHEP viewer that counts what it receives and decrypts a sample."""

    __slots__ = (
        "transport",
        "recorder",
        "audio",
        "video",
        "rtcp",
        "bytes",
        "early",
        "_srtp",
        "location",
        "t_start",
        "t_connected",
        "t_first",
    )

    def __init__(self, transport: PeerTransport, recorder: Recorder) -> None:
        self.transport = transport
        self.recorder = recorder
        self.audio = 0
        self.video = 0
        self.rtcp = 0
        self.bytes = 0
        self.early = 0  # packets that arrived through aiortc before the raw tap was installed
        self._srtp: pylibsrtp.Session | None = None
        self.location = ""
        # join timing (time.monotonic()): signaling started, DTLS up, first RTP packet arrived
        self.t_start = 0.0
        self.t_connected = 0.0
        self.t_first = 0.0
        transport.set_handlers(self._on_early_rtp, None)

    @property
    def received(self) -> int:
        return self.audio + self.video

    def _on_early_rtp(self, data: bytes, arrival: float) -> None:
        self.early += 1
        if not self.t_first:
            self.t_first = time.monotonic()
        if (data[1] & 0x7F) == AUDIO_PT:
            self.audio += 1
        else:
            self.video += 1
        self.bytes += len(data)

    async def connect(self, http: aiohttp.ClientSession, url: str) -> None:
        """WHEP: we offer, the server answers."""
        self.t_start = self.t_start or time.monotonic()
        self.location = await _negotiate(http, url, self.transport, "recvonly", None)
        self.t_connected = time.monotonic()
        self._srtp = self.transport.tap_datagrams(self._datagram)

    async def accept_offer(self, offer_text: str, send_answer: Callable[[str], Awaitable[None]]) -> None:
        """The server offers (Janus's streaming plugin), we answer through ``send_answer``."""
        self.t_start = self.t_start or time.monotonic()
        await answer_offer(self.transport, offer_text, send_answer)
        self.t_connected = time.monotonic()
        self._srtp = self.transport.tap_datagrams(self._datagram)

    def _datagram(self, data: bytes, addr: tuple) -> bool:
        b0 = data[0]
        if b0 < 128 or b0 > 191 or len(data) < 12:
            return False  # STUN, DTLS: aioice and aiortc handle them
        b1 = data[1]
        if 191 < b1 < 224:
            self.rtcp += 1  # sender reports
            return True
        self.bytes += len(data)
        if not self.t_first:
            self.t_first = time.monotonic()
        if (b1 & 0x7F) == AUDIO_PT:
            self.audio += 1
            rec = self.recorder
            # Outside the windows every AUDIO_TRACK_EVERY-th packet (the first one included) is decrypted too:
            # libsrtp infers the rollover counter from the packets it has seen, so a stream whose first decrypted
            # packet came after its 16-bit sequence number wrapped would fail every decryption from then on.
            if rec.active or self.audio % AUDIO_TRACK_EVERY == 1:
                arrival = time.monotonic_ns()
                try:
                    plain = self._srtp.unprotect(data)  # type: ignore[union-attr]
                except pylibsrtp.Error:
                    rec.decrypt_failures += 1
                    return True
                rec.decrypt_ok += 1
                if not rec.active:
                    return True
                off = 12 + 4 * (plain[0] & 0x0F)
                if plain[0] & 0x10:
                    off += 4 + 4 * int.from_bytes(plain[off + 2 : off + 4], "big")
                rec.delays_ns.append(arrival - _SEND_TIME.unpack_from(plain, off)[0])
            return True
        self.video += 1
        if self.video % VIDEO_SAMPLE_EVERY == 1:  # the first packet included (see AUDIO_TRACK_EVERY)
            try:
                self._srtp.unprotect(data)  # type: ignore[union-attr]
                self.recorder.decrypt_ok += 1
            except pylibsrtp.Error:
                self.recorder.decrypt_failures += 1
        return True

    async def close(self, http: aiohttp.ClientSession | None = None, base: str = "") -> None:
        if http is not None and self.location:
            with contextlib.suppress(Exception):
                async with http.delete(base + self.location, timeout=aiohttp.ClientTimeout(total=5)):
                    pass
        await self.transport.close()
