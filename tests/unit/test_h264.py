"""H.264 payload inspection: real libx264 streams packetized per RFC 6184, hand-built edge cases, fuzz."""

from __future__ import annotations

import fractions
import functools
import re

import av
import pytest
from hypothesis import given
from hypothesis import strategies as st

from webrtc_cast.codecs import h264, keyframe_detector

MTU = 1200


@functools.cache
def encode(
    width: int, height: int, pix_fmt: str = "yuv420p", params: str = "", preset: str = "ultrafast"
) -> tuple[bytes, ...]:
    """Annex-B access units from libx264: the first is an IDR with SPS/PPS, the rest are P frames."""
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, pix_fmt
    ctx.time_base = fractions.Fraction(1, 30)
    ctx.framerate = 30
    ctx.options = {"x264-params": params or "keyint=100", "tune": "zerolatency", "preset": preset}
    units: list[bytes] = []
    for pts in range(3):
        frame = av.VideoFrame(width, height, "yuv420p").reformat(format=pix_fmt)
        frame.pts = pts
        units.extend(bytes(packet) for packet in ctx.encode(frame))
    units.extend(bytes(packet) for packet in ctx.encode(None))
    return tuple(units)


def split_annexb(stream: bytes) -> list[bytes]:
    """NAL units between 3- or 4-byte start codes."""
    return [nal for nal in re.split(b"\x00\x00\x00\x01|\x00\x00\x01", stream) if nal]


def by_type(nals: list[bytes], kind: int) -> bytes:
    return next(nal for nal in nals if nal[0] & 0x1F == kind)


def stap_a(*nals: bytes) -> bytes:
    nri = max(nal[0] & 0x60 for nal in nals)
    return bytes([nri | h264.NAL_STAP_A]) + b"".join(len(nal).to_bytes(2, "big") + nal for nal in nals)


def fu_a(nal: bytes, mtu: int = MTU) -> list[bytes]:
    indicator = (nal[0] & 0xE0) | h264.NAL_FU_A
    body = nal[1:]
    chunks = [body[i : i + mtu] for i in range(0, len(body), mtu)]
    out = []
    for index, chunk in enumerate(chunks):
        header = nal[0] & 0x1F
        if index == 0:
            header |= 0x80
        if index == len(chunks) - 1:
            header |= 0x40
        out.append(bytes([indicator, header]) + chunk)
    return out


def packetize(nal: bytes) -> list[bytes]:
    return [nal] if len(nal) <= MTU else fu_a(nal)


SIZES = [
    # (width, height, pix_fmt, x264 params, preset, expected profile_idc)
    (320, 180, "yuv420p", "", "ultrafast", 66),  # Constrained Baseline, bottom cropping (180 = 11.25 MBs)
    (1280, 720, "yuv420p", "", "ultrafast", 66),
    (320, 180, "yuv420p", "", "medium", 100),  # High: chroma_format_idc etc. present
    (1280, 720, "yuv420p", "", "medium", 100),
    (640, 360, "yuv420p", "cqm=jvt", "medium", 100),  # scaling matrices in the SPS
    (320, 180, "yuv420p", "interlaced=1", "medium", 100),  # frame_mbs_only_flag = 0
    (321, 179, "yuv444p", "", "medium", 244),  # High 4:4:4, chroma_format_idc 3, odd crop
    (322, 182, "yuv422p", "", "medium", 122),  # High 4:2:2
    (176, 144, "gray", "", "medium", 100),  # chroma_format_idc 0 (monochrome)
]


@pytest.mark.parametrize(("width", "height", "pix_fmt", "params", "preset", "profile"), SIZES)
def test_sps_resolution_of_real_streams(
    width: int, height: int, pix_fmt: str, params: str, preset: str, profile: int
) -> None:
    nals = split_annexb(encode(width, height, pix_fmt, params, preset)[0])
    sps, pps = by_type(nals, h264.NAL_SPS), by_type(nals, h264.NAL_PPS)
    assert sps[1] == profile
    assert h264.sps_resolution(sps) == (width, height)
    assert h264.sps_resolution(stap_a(sps, pps)) == (width, height)
    assert h264.sps_resolution(pps) is None
    assert h264.profile_level_id(sps) == sps[1:4].hex()
    assert h264.profile_level_id(stap_a(sps, pps)) == sps[1:4].hex()
    assert h264.profile_level_id(pps) is None


def test_profile_level_id_hex() -> None:
    assert h264.profile_level_id(b"\x67\x42\xe0\x1f\x00") == "42e01f"
    assert h264.profile_level_id(stap_a(b"\x09\xf0", b"\x67\x64\x00\x28\xac")) == "640028"


def test_keyframe_detection_over_a_real_stream() -> None:
    idr_unit, *p_units = encode(1280, 720)
    nals = split_annexb(idr_unit)
    sps, pps, idr = by_type(nals, 7), by_type(nals, 8), by_type(nals, 5)
    assert h264.is_keyframe(sps)
    assert h264.is_keyframe(stap_a(sps, pps))
    assert not h264.is_keyframe(pps)
    fragments = packetize(idr)
    assert len(fragments) > 1
    assert h264.is_keyframe(fragments[0])
    assert not any(h264.is_keyframe(fragment) for fragment in fragments[1:])
    for unit in p_units:
        for nal in split_annexb(unit):
            for payload in packetize(nal):
                assert not h264.is_keyframe(payload)
                assert h264.sps_resolution(payload) is None


def test_idr_slice_alone_is_a_keyframe() -> None:
    assert h264.is_keyframe(bytes([0x65, 0x88, 0x84]))
    assert not h264.is_keyframe(bytes([0x41, 0x9A, 0x02]))  # non-IDR slice
    assert not h264.is_keyframe(bytes([0x06, 0x05]))  # SEI


def test_stap_a_with_idr_deep_inside() -> None:
    aud, sei, idr = b"\x09\xf0", b"\x06\x05\x01\x80", b"\x65\x88\x84\x00"
    assert h264.is_keyframe(stap_a(aud, sei, idr))
    assert not h264.is_keyframe(stap_a(aud, sei))


def test_truncated_stap_a_counts_only_complete_units() -> None:
    payload = stap_a(b"\x09\xf0", b"\x65\x88\x84\x00")
    assert h264.is_keyframe(payload)
    assert not h264.is_keyframe(payload[:-1])
    assert not h264.is_keyframe(b"\x18\x00")
    assert not h264.is_keyframe(b"\x18\x00\x00\x65")  # zero-size entry ends the walk


def test_fu_a_start_bit_and_inner_type() -> None:
    assert h264.is_keyframe(bytes([0x7C, 0x85, 0x00]))  # S=1, type 5
    assert not h264.is_keyframe(bytes([0x7C, 0x05, 0x00]))  # continuation
    assert not h264.is_keyframe(bytes([0x7C, 0x45, 0x00]))  # end fragment
    assert not h264.is_keyframe(bytes([0x7C, 0x81, 0x00]))  # S=1, non-IDR slice
    assert h264.is_keyframe(bytes([0x7C, 0x87]))  # S=1, fragmented SPS
    assert not h264.is_keyframe(bytes([0x7C]))


def test_other_nal_types_and_empty() -> None:
    assert not h264.is_keyframe(b"")
    for kind in (0, 25, 26, 27, 29, 30, 31):
        assert not h264.is_keyframe(bytes([kind, 0x85, 0x67, 0x65]))
    assert h264.nal_type(b"") is None
    assert h264.nal_type(b"\x7c\x85") == 28


def ue(value: int) -> str:
    code = bin(value + 1)[2:]
    return "0" * (len(code) - 1) + code


def se(value: int) -> str:
    return ue(2 * value - 1 if value > 0 else -2 * value)


def sps_from_bits(profile: int, level: int, bits: str) -> bytes:
    bits += "1"  # rbsp_stop_one_bit
    bits += "0" * (-len(bits) % 8)
    return bytes([0x67, profile, 0xC0, level]) + int(bits, 2).to_bytes(len(bits) // 8, "big")


def escape(rbsp: bytes) -> bytes:
    """RBSP to NAL payload: insert 03 wherever 00 00 is followed by a byte <= 3."""
    out = bytearray()
    zeros = 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def test_hand_built_baseline_sps() -> None:
    # id 0, log2_max_frame_num-4 0, poc type 2, 1 ref, no gaps, 40x30 MBs, frame_mbs_only, direct8x8, no crop
    bits = ue(0) + ue(0) + ue(2) + ue(1) + "0" + ue(39) + ue(29) + "1" + "1" + "0"
    sps = sps_from_bits(66, 30, bits)
    assert h264.sps_resolution(sps) == (640, 480)
    assert h264.profile_level_id(sps) == "42c01e"
    assert h264.sps_resolution(sps[:-2]) is None  # cut before the dimensions end


def test_hand_built_cropping_and_poc_type_1() -> None:
    # poc type 1 with a 3-entry cycle; 1920x1088 coded, cropped by 8 rows (4 units of 2) to 1080.
    bits = ue(0) + ue(0) + ue(1) + "0" + se(-2) + se(3) + ue(3) + se(1) + se(-1) + se(0)
    bits += ue(4) + "0" + ue(119) + ue(67) + "1" + "1" + "1" + ue(0) + ue(0) + ue(0) + ue(4)
    assert h264.sps_resolution(sps_from_bits(77, 40, bits)) == (1920, 1080)


def test_emulation_prevention_bytes_are_removed() -> None:
    # A huge offset_for_non_ref_pic puts 24-zero-bit runs in the RBSP, which need escaping.
    bits = ue(0) + ue(0) + ue(1) + "0" + se(1 << 23) + se(0) + ue(0)
    bits += ue(1) + "0" + ue(79) + ue(44) + "1" + "1" + "0"
    rbsp = sps_from_bits(77, 31, bits)
    nal = escape(rbsp)
    assert b"\x00\x00\x03" in nal and nal != rbsp
    assert h264.sps_resolution(nal) == (1280, 720)
    assert h264._unescape(b"\x67\x00\x00\x03\x01\x00\x00\x03\x00") == b"\x67\x00\x00\x01\x00\x00\x00"


def test_high_profile_scaling_lists_are_skipped() -> None:
    # High profile, 4:2:0, 8-bit, scaling matrix with list 0 (16 deltas) and list 6 (8x8, ends early with 0).
    list0 = "".join(se(1) for _ in range(16))
    list6 = se(-8)  # next_scale becomes 0: the rest of the list repeats, no more deltas
    flags = "1" + list0 + "0" * 5 + "1" + list6 + "0"
    bits = ue(0) + ue(1) + ue(0) + ue(0) + "0" + "1" + flags
    bits += ue(0) + ue(0) + ue(0) + ue(2) + "0" + ue(19) + ue(14) + "1" + "1" + "0"
    assert h264.sps_resolution(sps_from_bits(100, 31, bits)) == (320, 240)


def test_garbage_dimensions_rejected() -> None:
    # Exp-Golomb code with 40 leading zeros: unparseable, not a huge number.
    assert h264.sps_resolution(bytes([0x67, 66, 0, 30]) + b"\x00" * 6 + b"\xff") is None
    assert h264.sps_resolution(b"\x67") is None
    assert h264.profile_level_id(b"\x67\x42") is None
    assert h264.profile_level_id(b"\x41\x9a") is None


def test_keyframe_detector_registry() -> None:
    assert keyframe_detector("H264") is h264.is_keyframe
    assert keyframe_detector("opus")(b"\xff" * 10) is False
    with pytest.raises(ValueError):
        keyframe_detector("AV1")


@given(st.binary(max_size=300))
def test_fuzz_never_raises(payload: bytes) -> None:
    assert isinstance(h264.is_keyframe(payload), bool)
    resolution = h264.sps_resolution(payload)
    assert resolution is None or (resolution[0] > 0 and resolution[1] > 0)
    level = h264.profile_level_id(payload)
    assert level is None or len(level) == 6


@given(st.binary(max_size=64))
def test_fuzz_sps_body(body: bytes) -> None:
    for profile in (66, 100, 244):
        payload = bytes([0x67, profile, 0, 31]) + body
        assert h264.is_keyframe(payload)
        h264.sps_resolution(payload)
        h264.sps_resolution(stap_a(payload, b"\x68\xce"))
