"""A real WHIP encoder: FFmpeg 8's ``whip`` muxer through PyAV, with default options.

Run as a separate process (FFmpeg's ICE/DTLS handshake blocks): ``python -m tests.peers.ffmpeg_whip URL
--seconds S [--token T] [--width W --height H --fps F --gop G]``. It encodes a moving test pattern with the send
time burned in (webrtc_cast.timecode) with libx264 (ultrafast, zerolatency, baseline, no B-frames) plus libopus,
paced in real time, and prints one JSON line with what it sent.
"""

from __future__ import annotations

import argparse
import fractions
import json
import sys
import time

import av
import numpy as np

from webrtc_cast.timecode import burn_timestamp, test_pattern


def run(url: str, seconds: float, token: str | None, width: int, height: int, fps: int, gop: int) -> dict:
    options = {"authorization": token} if token else {}
    out = av.open(url, mode="w", format="whip", options=options)
    audio = out.add_stream("libopus", rate=48000)
    audio.layout = "stereo"
    video = out.add_stream("libx264", rate=fps)
    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
    video.bit_rate = 1_000_000
    video.codec_context.options = {
        "preset": "ultrafast", "tune": "zerolatency", "profile": "baseline", "bf": "0", "g": str(gop),
    }
    video.codec_context.time_base = fractions.Fraction(1, fps)
    audio.codec_context.time_base = fractions.Fraction(1, 48000)
    for s in (audio, video):
        s.codec_context.flags |= av.codec.context.Flags.global_header
    start = time.monotonic()
    vi = ai = packets = 0
    tone = (np.sin(2 * np.pi * 440 * np.arange(48000) / 48000) * 6000).astype(np.int16)
    try:
        while True:
            now = time.monotonic() - start
            if now >= seconds:
                break
            next_v, next_a = vi / fps, ai * 960 / 48000
            due = min(next_v, next_a)
            if due > now:
                time.sleep(due - now)
            if next_v <= next_a:
                yuv = test_pattern(width, height, vi)
                burn_timestamp(yuv, int(time.time() * 1000))
                frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
                frame.pts, frame.time_base = vi, fractions.Fraction(1, fps)
                for p in video.encode(frame):
                    out.mux(p)
                    packets += 1
                vi += 1
            else:
                chunk = tone[(ai * 960) % 48000 : (ai * 960) % 48000 + 960]
                if len(chunk) < 960:
                    chunk = np.resize(chunk, 960)
                samples = np.ascontiguousarray(np.stack([chunk, chunk], 1).reshape(1, -1))
                af = av.AudioFrame.from_ndarray(samples, format="s16", layout="stereo")
                af.sample_rate, af.pts, af.time_base = 48000, ai * 960, fractions.Fraction(1, 48000)
                for p in audio.encode(af):
                    out.mux(p)
                    packets += 1
                ai += 1
    finally:
        out.close()
    return {"video_frames": vi, "audio_frames": ai, "packets": packets, "seconds": round(time.monotonic() - start, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--token")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--gop", type=int, default=30, help="keyframe interval in frames")
    a = p.parse_args(argv)
    print(json.dumps(run(a.url, a.seconds, a.token, a.width, a.height, a.fps, a.gop)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
