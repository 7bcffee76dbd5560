"""Burned-in timecode: exact round trip, survival through real low-bitrate encoders, noise rejection."""

from __future__ import annotations

import fractions

import av
import numpy as np
import pytest

from webrtc_cast.timecode import (
    band_height,
    burn_timestamp,
    encode_bits,
    read_timestamp,
    test_pattern,
)

T0 = 1_767_225_600_123  # 2026-01-01, in ms


@pytest.mark.parametrize(("width", "height"), [(320, 180), (640, 360), (1280, 720), (1920, 1080)])
@pytest.mark.parametrize("t_ms", [0, 1, T0, (1 << 48) - 1])
def test_burn_then_read_exact_on_yuv420p(width: int, height: int, t_ms: int) -> None:
    frame = test_pattern(width, height, 7)
    burn_timestamp(frame, t_ms)
    assert read_timestamp(frame) == t_ms
    assert read_timestamp(frame[:height]) == t_ms  # the luma plane alone


def test_burn_then_read_rgb() -> None:
    rgb = np.full((360, 640, 3), 90, dtype=np.uint8)
    burn_timestamp(rgb, T0)
    assert read_timestamp(rgb) == T0


def test_burn_touches_only_the_top_band() -> None:
    frame = test_pattern(640, 360, 0)
    before = frame.copy()
    burn_timestamp(frame, T0)
    band = band_height(640)
    assert np.array_equal(frame[band:], before[band:])
    assert not np.array_equal(frame[:band], before[:band])


def test_survives_scaling() -> None:
    frame = test_pattern(1280, 720, 3)
    burn_timestamp(frame, T0)
    video = av.VideoFrame.from_ndarray(frame, format="yuv420p")
    small = video.reformat(width=320, height=180)
    assert read_timestamp(small.to_ndarray()) == T0


def test_out_of_range_and_bad_input() -> None:
    frame = test_pattern(320, 180, 0)
    with pytest.raises(ValueError):
        burn_timestamp(frame, 1 << 48)
    with pytest.raises(ValueError):
        burn_timestamp(frame, -1)
    with pytest.raises(ValueError):
        burn_timestamp(np.zeros((10, 64), dtype=np.uint8), 5)
    assert read_timestamp(np.zeros((10, 64), dtype=np.uint8)) is None
    assert len(encode_bits(T0)) == 72


def test_noise_and_plain_frames_read_as_none() -> None:
    rng = np.random.default_rng(1234)
    for _ in range(200):
        noise = rng.integers(0, 256, size=(180, 320), dtype=np.uint8)
        assert read_timestamp(noise) is None
    # Blocky noise with full contrast: the markers or the CRC reject it.
    hits = 0
    for _ in range(500):
        cells = rng.integers(0, 2, size=(3, 24), dtype=np.uint8) * 219 + 16
        blocky = np.kron(cells, np.ones((40, 40), dtype=np.uint8))
        if read_timestamp(blocky) is not None:
            hits += 1
    assert hits == 0
    assert read_timestamp(test_pattern(640, 360, 5)) is None
    assert read_timestamp(np.zeros((360, 640), dtype=np.uint8)) is None


def test_one_flipped_bit_is_rejected() -> None:
    frame = np.full((180, 320), 128, dtype=np.uint8)
    burn_timestamp(frame, T0)
    cell = 320 / 24
    assert read_timestamp(frame) == T0
    value = frame[int(cell / 2), int(10.5 * cell)]
    frame[0 : int(cell), int(10 * cell) + 1 : int(11 * cell)] = 251 - value
    # Flipping one data cell breaks the CRC.
    assert read_timestamp(frame) is None


def _round_trip(codec_name: str, width: int, height: int, bitrate: int, n: int) -> tuple[int, int]:
    """Encode ``n`` timecoded test-pattern frames, decode them, count frames read back exactly."""
    encoder = av.CodecContext.create(codec_name, "w")
    encoder.width = width
    encoder.height = height
    encoder.pix_fmt = "yuv420p"
    encoder.bit_rate = bitrate
    encoder.framerate = fractions.Fraction(30, 1)
    encoder.time_base = fractions.Fraction(1, 30)
    encoder.gop_size = 60
    if codec_name == "libx264":
        encoder.options = {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline"}
    else:
        encoder.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "end-usage": "cbr"}
    decoder = av.CodecContext.create("h264" if codec_name == "libx264" else "vp8", "r")
    sent: dict[int, int] = {}
    decoded: list[np.ndarray] = []
    for i in range(n):
        img = test_pattern(width, height, i)
        t_ms = T0 + i * 33
        burn_timestamp(img, t_ms)
        sent[i] = t_ms
        frame = av.VideoFrame.from_ndarray(img, format="yuv420p")
        frame.pts = i
        for packet in encoder.encode(frame):
            for out in decoder.decode(packet):
                decoded.append(out.to_ndarray(format="gray"))
    for packet in encoder.encode(None):
        for out in decoder.decode(packet):
            decoded.append(out.to_ndarray(format="gray"))
    expected = [sent[i] for i in range(len(decoded))]
    # A starved encoder may repeat an old band (a stale but genuine timestamp); a value that was never sent,
    # or one from the future, would be a misread that passed the checks.
    reads = [read_timestamp(img) for img in decoded]
    sent_values = set(sent.values())
    pairs = zip(reads, expected, strict=True)
    bogus = [r for r, t in pairs if r is not None and (r not in sent_values or r > t)]
    assert not bogus, f"misread timestamps passed the checks: {bogus}"
    good = sum(1 for r, t in zip(reads, expected, strict=True) if r == t)
    return good, len(decoded)


@pytest.mark.parametrize(
    ("codec_name", "width", "height", "bitrate"),
    [
        ("libx264", 320, 180, 300_000),
        ("libx264", 1280, 720, 300_000),
        ("libvpx", 320, 180, 300_000),
        ("libvpx", 1280, 720, 300_000),
    ],
)
def test_survives_low_bitrate_encode(codec_name: str, width: int, height: int, bitrate: int) -> None:
    good, total = _round_trip(codec_name, width, height, bitrate, 60)
    assert total >= 50
    assert good >= 0.95 * total, f"{good}/{total} frames read back"
