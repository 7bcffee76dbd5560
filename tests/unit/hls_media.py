"""Test media for the LL-HLS tests: real H.264 (libx264) and Opus (libopus) packetized into RTP (a helper).

``rtp_stream`` yields (track, packet, now) the way Broadcast taps see them, on a synthetic clock, so the packager
can be driven without a network and without real time.
"""

from __future__ import annotations

import fractions
import struct
from dataclasses import dataclass
from types import SimpleNamespace

import av
import numpy as np

from webrtc_cast.rtp.header import parse as parse_rtp
from webrtc_cast.timecode import burn_timestamp, test_pattern

MTU = 1200


def h264_access_units(frames: int, fps: int = 30, gop: int = 30, width: int = 320, height: int = 180) -> list[bytes]:
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base = fractions.Fraction(1, fps)
    enc.options = {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline", "bf": "0", "g": str(gop)}
    out = []
    for i in range(frames):
        yuv = test_pattern(width, height, i)
        burn_timestamp(yuv, 1_700_000_000_000 + i * 1000 // fps)
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = i
        out += [bytes(p) for p in enc.encode(frame)]
    return out


def split_annexb(au: bytes) -> list[bytes]:
    nals, i = [], 0
    starts = []
    while True:
        j = au.find(b"\x00\x00\x01", i)
        if j < 0:
            break
        starts.append(j + 3)
        i = j + 3
    for k, s in enumerate(starts):
        end = len(au) if k + 1 == len(starts) else starts[k + 1] - 3
        nal = au[s:end]
        while nal.endswith(b"\x00"):
            nal = nal[:-1]
        nals.append(nal)
    return nals


def packetize_h264(nals: list[bytes]) -> list[bytes]:
    """RFC 6184 mode 1 payloads: SPS+PPS in one STAP-A, small NALs single, large ones FU-A."""
    payloads = []
    params = [n for n in nals if n[0] & 0x1F in (7, 8)]
    if params:
        payloads.append(bytes([24]) + b"".join(len(n).to_bytes(2, "big") + n for n in params))
    for n in nals:
        kind = n[0] & 0x1F
        if kind in (7, 8, 9):
            continue
        if len(n) <= MTU:
            payloads.append(n)
            continue
        indicator = (n[0] & 0xE0) | 28
        body = n[1:]
        chunks = [body[i : i + MTU] for i in range(0, len(body), MTU)]
        for ci, chunk in enumerate(chunks):
            header = kind | (0x80 if ci == 0 else 0) | (0x40 if ci == len(chunks) - 1 else 0)
            payloads.append(bytes([indicator, header]) + chunk)
    return payloads


def opus_packets(count: int) -> list[bytes]:
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format = 48000, "stereo", "s16"
    enc.time_base = fractions.Fraction(1, 48000)
    out = []
    tone = (np.sin(2 * np.pi * 440 * np.arange(960 * count) / 48000) * 6000).astype(np.int16)
    for i in range(count):
        chunk = tone[i * 960 : (i + 1) * 960]
        frame = av.AudioFrame.from_ndarray(np.stack([chunk, chunk], 1).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate, frame.pts = 48000, i * 960
        out += [bytes(p) for p in enc.encode(frame)]
    return out


def rtp(payload: bytes, pt: int, seq: int, ts: int, ssrc: int, marker: bool) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


@dataclass
class Feed:
    video: SimpleNamespace
    audio: SimpleNamespace
    events: list[tuple[SimpleNamespace, tuple, float]]  # (track, (data, header, ext_seq), now) in time order


def track(kind: str, codec: str, clock: int, key: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(kind=kind, key=key or kind, rid=None, sender_clock=None,
                           codec=SimpleNamespace(name=codec, clock_rate=clock, fmtp={}))


def rtp_feed(seconds: float, fps: int = 30, gop: int = 30, start: float = 100.0, video_ssrc: int = 1111,
             audio_ssrc: int = 2222, seq0: int = 65000, ts0: int = 4_294_000_000, drop: set[int] | None = None,
             video: SimpleNamespace | None = None, audio: SimpleNamespace | None = None,
             aus: list[bytes] | None = None, opus: list[bytes] | None = None) -> Feed:
    """Interleaved video and audio RTP on a synthetic monotonic clock starting at ``start``. Sequence numbers
    and timestamps start near their wrap points. ``drop``: video packet indexes to lose."""
    video = video or track("video", "H264", 90000)
    audio = audio or track("audio", "opus", 48000)
    frames = int(seconds * fps)
    aus = aus if aus is not None else h264_access_units(frames, fps, gop)
    opus = opus if opus is not None else opus_packets(int(seconds * 50))
    events = []
    seq = seq0
    n = 0
    for i, au in enumerate(aus[:frames]):
        payloads = packetize_h264(split_annexb(au))
        for k, p in enumerate(payloads):
            data = rtp(p, 102, seq, ts0 + i * 90000 // fps, video_ssrc, k == len(payloads) - 1)
            if not drop or n not in drop:
                events.append((video, (data, parse_rtp(data), seq), start + i / fps + 0.002))
            seq += 1
            n += 1
    for i, p in enumerate(opus):
        data = rtp(p, 111, 100 + i, 1000 + i * 960, audio_ssrc, True)
        events.append((audio, (data, parse_rtp(data), 100 + i), start + i * 0.02 + 0.001))
    events.sort(key=lambda e: e[2])
    return Feed(video, audio, events)
