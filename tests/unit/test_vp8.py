"""VP8 payload inspection: real libvpx frames wrapped in RFC 7741 descriptors, hand vectors, fuzz."""

from __future__ import annotations

import fractions
import functools

import av
import pytest
from hypothesis import given
from hypothesis import strategies as st

from webrtc_cast.codecs import keyframe_detector, vp8


@functools.cache
def encode(width: int, height: int, count: int = 4) -> tuple[bytes, ...]:
    """VP8 frames from libvpx: a keyframe, then interframes."""
    ctx = av.CodecContext.create("libvpx", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = fractions.Fraction(1, 30)
    ctx.framerate = 30
    ctx.gop_size = 100
    ctx.options = {"deadline": "realtime", "lag-in-frames": "0", "auto-alt-ref": "0", "kf-min-dist": "100"}
    frames: list[bytes] = []
    for pts in range(count):
        frame = av.VideoFrame(width, height, "yuv420p")
        frame.pts = pts
        frames.extend(bytes(packet) for packet in ctx.encode(frame))
    frames.extend(bytes(packet) for packet in ctx.encode(None))
    return tuple(frames)


def descriptor(
    *,
    start: bool = True,
    pid: int = 0,
    non_reference: bool = False,
    picture_id: int | None = None,
    long_picture_id: bool = False,
    tl0picidx: int | None = None,
    tid: int | None = None,
    keyidx: int | None = None,
) -> bytes:
    """An RFC 7741 payload descriptor with the requested optional fields."""
    extended = picture_id is not None or tl0picidx is not None or tid is not None or keyidx is not None
    first = (0x80 if extended else 0) | (0x20 if non_reference else 0) | (0x10 if start else 0) | pid
    out = bytearray([first])
    if extended:
        ext = (
            (0x80 if picture_id is not None else 0)
            | (0x40 if tl0picidx is not None else 0)
            | (0x20 if tid is not None else 0)
            | (0x10 if keyidx is not None else 0)
        )
        out.append(ext)
        if picture_id is not None:
            if long_picture_id:
                out += bytes([0x80 | (picture_id >> 8) & 0x7F, picture_id & 0xFF])
            else:
                out.append(picture_id & 0x7F)
        if tl0picidx is not None:
            out.append(tl0picidx)
        if tid is not None or keyidx is not None:
            out.append(((tid or 0) << 6) | (keyidx or 0))
    return bytes(out)


descriptors = st.builds(
    descriptor,
    non_reference=st.booleans(),
    picture_id=st.none() | st.integers(0, 0x7FFF),
    long_picture_id=st.booleans(),
    tl0picidx=st.none() | st.integers(0, 255),
    tid=st.none() | st.integers(0, 3),
    keyidx=st.none() | st.integers(0, 31),
)


@pytest.mark.parametrize(("width", "height"), [(320, 180), (1280, 720), (322, 178)])
def test_real_keyframe_and_interframes(width: int, height: int) -> None:
    frames = encode(width, height)
    inter = [frame for frame in frames if frame[0] & 0x01]  # frame tag P bit set (RFC 6386 9.1)
    assert not frames[0][0] & 0x01
    assert inter
    payload = descriptor(picture_id=5) + frames[0][:1200]
    assert vp8.is_keyframe(payload)
    assert vp8.keyframe_resolution(payload) == (width, height)
    for frame in inter:
        payload = descriptor(picture_id=6) + frame[:1200]
        assert not vp8.is_keyframe(payload)
        assert vp8.keyframe_resolution(payload) is None


@given(desc=descriptors)
def test_keyframe_behind_any_descriptor(desc: bytes) -> None:
    frames = encode(320, 180)
    key, inter = frames[0], next(frame for frame in frames if frame[0] & 0x01)
    assert vp8.descriptor_length(desc + key) == len(desc)
    assert vp8.is_keyframe(desc + key)
    assert vp8.keyframe_resolution(desc + key) == (320, 180)
    assert not vp8.is_keyframe(desc + inter)


def test_only_the_first_packet_of_a_partition_zero_counts() -> None:
    key = encode(320, 180)[0]
    assert not vp8.is_keyframe(descriptor(start=False) + key[1200:2400])
    assert not vp8.is_keyframe(descriptor(start=False) + key[:1200])  # S=0: middle of a partition
    assert not vp8.is_keyframe(descriptor(pid=1) + key[:1200])  # start of partition 1
    assert vp8.is_keyframe(descriptor() + key[:1200])


def test_descriptor_length_vectors() -> None:
    assert vp8.descriptor_length(b"\x10\x00") == 1
    assert vp8.descriptor_length(b"\x90\x00\x00") == 2  # X with no optional fields
    assert vp8.descriptor_length(b"\x90\x80\x05\x00") == 3  # 7-bit picture id
    assert vp8.descriptor_length(b"\x90\x80\x81\x23\x00") == 4  # 15-bit picture id
    assert vp8.descriptor_length(b"\x90\xf0\x81\x23\x07\x40\x00") == 6  # I L T K all set
    assert vp8.descriptor_length(b"\x90\x10\x1f") == 3  # K only
    assert vp8.descriptor_length(b"\x90\x80\x05") == 3  # descriptor with nothing after it


@pytest.mark.parametrize(
    "payload", [b"", b"\x90", b"\x90\x80", b"\x90\x80\x81", b"\x90\x40", b"\x90\x20", b"\x90\xf0\x81\x23\x07"]
)
def test_truncated_descriptor_raises(payload: bytes) -> None:
    with pytest.raises(vp8.VP8DescriptorError):
        vp8.descriptor_length(payload)
    assert not vp8.is_keyframe(payload)
    assert vp8.keyframe_resolution(payload) is None


def test_picture_id() -> None:
    assert vp8.picture_id(descriptor(picture_id=100)) == 100
    assert vp8.picture_id(descriptor(picture_id=0x1234, long_picture_id=True)) == 0x1234
    assert vp8.picture_id(descriptor(tl0picidx=3)) is None
    assert vp8.picture_id(b"\x10\x00") is None
    assert vp8.picture_id(b"\x90\x80\x81") is None


def test_hand_built_keyframe_header() -> None:
    # frame tag with P=0, start code, width 640 with scale bits set, height 480
    header = b"\x50\x02\x00" + b"\x9d\x01\x2a" + (640 | 0xC000).to_bytes(2, "little") + (480).to_bytes(2, "little")
    assert vp8.keyframe_resolution(b"\x10" + header) == (640, 480)
    assert vp8.keyframe_resolution(b"\x10" + header[:9]) is None  # truncated height
    assert vp8.is_keyframe(b"\x10" + header[:1])
    bad_start = header[:3] + b"\x9d\x01\x2b" + header[6:]
    assert vp8.is_keyframe(b"\x10" + bad_start)
    assert vp8.keyframe_resolution(b"\x10" + bad_start) is None
    assert not vp8.is_keyframe(b"\x10")  # descriptor but no payload header


def test_keyframe_detector_registry() -> None:
    assert keyframe_detector("VP8") is vp8.is_keyframe
    assert keyframe_detector("vp8") is vp8.is_keyframe


@given(st.binary(max_size=64))
def test_fuzz(payload: bytes) -> None:
    assert isinstance(vp8.is_keyframe(payload), bool)
    resolution = vp8.keyframe_resolution(payload)
    assert resolution is None or (0 < resolution[0] < 1 << 14 and 0 < resolution[1] < 1 << 14)
    try:
        length = vp8.descriptor_length(payload)
    except vp8.VP8DescriptorError:
        pass
    else:
        assert 1 <= length <= min(len(payload), 6)
    vp8.picture_id(payload)
