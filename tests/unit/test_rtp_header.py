"""RTP header views, rewriting and serial-number arithmetic (webrtc_cast.rtp.header)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webrtc_cast.rtp.header import (
    MIN_HEADER,
    RtpError,
    SeqUnwrapper,
    build,
    one_byte_extensions,
    parse,
    payload,
    rewrite,
    seq_delta,
    seq_newer,
    ts_delta,
)


def raw_packet(
    *,
    pt: int = 96,
    seq: int = 1,
    ts: int = 1000,
    ssrc: int = 0x11223344,
    marker: bool = False,
    csrcs: tuple[int, ...] = (),
    ext_profile: int | None = None,
    ext_body: bytes = b"",
    body: bytes = b"payload",
    padding: int = 0,
) -> bytes:
    """An RTP packet with every optional part (CSRCs, header extension, padding) under control."""
    b0 = 0x80 | len(csrcs)
    if ext_profile is not None:
        b0 |= 0x10
    if padding:
        b0 |= 0x20
    out = struct.pack("!BBHII", b0, pt | (0x80 if marker else 0), seq, ts, ssrc)
    out += b"".join(struct.pack("!I", c) for c in csrcs)
    if ext_profile is not None:
        assert len(ext_body) % 4 == 0
        out += struct.pack("!HH", ext_profile, len(ext_body) // 4) + ext_body
    out += body
    if padding:
        out += b"\x00" * (padding - 1) + bytes([padding])
    return out


# --- parse ----------------------------------------------------------------------------------------------
def test_parse_plain_packet_from_build() -> None:
    data = build(111, 0xBEEF, 0xDEADBEEF, 0xCAFEBABE, b"\x01\x02\x03", marker=True)
    h = parse(data)
    assert (h.payload_type, h.marker, h.sequence, h.timestamp, h.ssrc) == (111, True, 0xBEEF, 0xDEADBEEF, 0xCAFEBABE)
    assert h.payload_offset == MIN_HEADER
    assert not h.padding
    assert h.extension_profile == 0
    assert payload(data, h) == b"\x01\x02\x03"


def test_parse_empty_payload_is_valid() -> None:
    h = parse(build(0, 0, 0, 0, b""))
    assert h.payload_offset == 12
    assert payload(build(0, 0, 0, 0, b""), h) == b""


def test_parse_csrcs_extension_and_padding() -> None:
    ext = bytes([0x10, 0xAA, 0x21, 0xBB, 0xCC, 0x00, 0x00, 0x00])  # id 1 len 1, id 2 len 2, padding
    data = raw_packet(csrcs=(1, 2), ext_profile=0xBEDE, ext_body=ext, body=b"media", padding=3)
    h = parse(data)
    assert h.payload_offset == 12 + 8 + 4 + 8
    assert h.extension_profile == 0xBEDE
    assert h.extension_offset == 12 + 8 + 4
    assert h.extension_end == h.payload_offset
    assert h.padding
    assert payload(data, h) == b"media"
    assert one_byte_extensions(data, h) == {1: b"\xaa", 2: b"\xbb\xcc"}


def test_extension_profile_zero_is_still_present() -> None:
    data = raw_packet(ext_profile=0, ext_body=b"\x00" * 4)
    h = parse(data)
    assert h.extension_profile == -1
    assert h.payload_offset == 12 + 4 + 4
    assert one_byte_extensions(data, h) == {}


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "short"),
        (b"\x80" * 11, "short"),
        (build(96, 1, 1, 1, b"x")[:0] + b"\x40" + build(96, 1, 1, 1, b"x")[1:], "version 1"),
        (b"\x00" * 12, "version 0"),
        (raw_packet(body=b"")[:0] + bytes([0x8F]) + raw_packet(body=b"")[1:], "15 CSRCs announced, none present"),
        (raw_packet(ext_profile=0xBEDE, ext_body=b"")[:14], "extension header truncated"),
        (raw_packet(ext_profile=0xBEDE, ext_body=b"\x00" * 8, body=b"")[:-4], "extension longer than packet"),
        (raw_packet(body=b"abc")[:0] + bytes([0xA0]) + raw_packet(body=b"abc")[1:-1] + b"\x00", "padding 0"),
        (bytes([0xA0]) + raw_packet(body=b"ab\xff")[1:], "padding longer than payload"),
    ],
)
def test_parse_rejects_malformed(data: bytes, why: str) -> None:
    with pytest.raises(RtpError):
        parse(data)


def test_rtp_error_is_a_value_error() -> None:
    assert issubclass(RtpError, ValueError)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=80))
def test_fuzz_parse_raises_only_rtp_error(data: bytes) -> None:
    try:
        h = parse(data)
    except RtpError:
        return
    assert MIN_HEADER <= h.payload_offset <= len(data)
    assert h.extension_end <= len(data)
    body = payload(data, h)
    assert len(body) <= len(data) - h.payload_offset
    exts = one_byte_extensions(data, h)
    assert all(isinstance(k, int) and isinstance(v, bytes) for k, v in exts.items())


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=12, max_size=12), st.binary(max_size=40))
def test_fuzz_structured_headers_raise_only_rtp_error(fixed: bytes, tail: bytes) -> None:
    """Version 2 headers with random flags, CSRC counts and extension lengths: parse never raises anything else."""
    data = bytes([0x80 | (fixed[0] & 0x3F)]) + fixed[1:] + tail
    try:
        h = parse(data)
    except RtpError:
        return
    payload(data, h)
    one_byte_extensions(data, h)


# --- one_byte_extensions ----------------------------------------------------------------------------------
def test_one_byte_extensions_stop_at_id_15() -> None:
    ext = bytes([0x10, 0x01, 0xF0, 0x20, 0x02, 0x00, 0x00, 0x00])
    data = raw_packet(ext_profile=0xBEDE, ext_body=ext)
    assert one_byte_extensions(data, parse(data)) == {1: b"\x01"}


def test_two_byte_extensions() -> None:
    # id 3 len 0, padding byte, id 200 len 3, padding to the word
    ext = bytes([3, 0, 0, 200, 3, 0x61, 0x62, 0x63])
    data = raw_packet(ext_profile=0x1000, ext_body=ext)
    assert one_byte_extensions(data, parse(data)) == {3: b"", 200: b"abc"}


def test_unknown_extension_profile_yields_nothing() -> None:
    data = raw_packet(ext_profile=0xABCD, ext_body=b"\x11\x22\x33\x44")
    assert one_byte_extensions(data, parse(data)) == {}


def test_no_extension_yields_nothing() -> None:
    data = build(96, 1, 2, 3, b"x")
    assert one_byte_extensions(data, parse(data)) == {}


def test_mid_and_rid_extensions() -> None:
    """A Chrome simulcast packet carries mid (id 4) and rid (id 10) as one-byte elements."""
    ext = bytes([0x40, ord("1"), 0xA0, ord("h")])
    data = raw_packet(ext_profile=0xBEDE, ext_body=ext)
    assert one_byte_extensions(data, parse(data)) == {4: b"1", 10: b"h"}


# --- rewrite ---------------------------------------------------------------------------------------------
def test_rewrite_replaces_fixed_header_and_drops_csrcs_and_extensions() -> None:
    ext = bytes([0x10, 0xAA, 0x00, 0x00])
    data = raw_packet(pt=100, seq=5, ts=6, ssrc=7, marker=True, csrcs=(9,), ext_profile=0xBEDE, ext_body=ext,
                      body=b"frame", padding=4)
    h = parse(data)
    out = rewrite(data, h, 96, 0xFFFF, 0xFFFFFFFF, 0x01020304)
    h2 = parse(out)
    assert (h2.payload_type, h2.marker, h2.sequence) == (96, True, 0xFFFF)
    assert (h2.timestamp, h2.ssrc) == (0xFFFFFFFF, 0x01020304)
    assert h2.payload_offset == 12
    assert h2.extension_profile == 0
    assert h2.padding
    assert payload(out, h2) == b"frame"
    assert out[12:] == data[h.payload_offset :]  # payload and padding byte for byte


@settings(max_examples=200, deadline=None)
@given(
    pt=st.integers(0, 127),
    seq=st.integers(0, 0xFFFF),
    ts=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    marker=st.booleans(),
    body=st.binary(max_size=50),
    new=st.tuples(st.integers(0, 127), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF)),
)
def test_build_parse_rewrite_roundtrip(
    pt: int, seq: int, ts: int, ssrc: int, marker: bool, body: bytes, new: tuple[int, int, int, int]
) -> None:
    data = build(pt, seq, ts, ssrc, body, marker=marker)
    h = parse(data)
    assert (h.payload_type, h.sequence, h.timestamp, h.ssrc, h.marker) == (pt, seq, ts, ssrc, marker)
    out = rewrite(data, h, *new)
    h2 = parse(out)
    assert (h2.payload_type, h2.sequence, h2.timestamp, h2.ssrc, h2.marker) == (*new, marker)
    assert payload(out, h2) == body


# --- serial-number arithmetic -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("a", "b", "delta"),
    [(1, 0, 1), (0, 1, -1), (0, 0xFFFF, 1), (0xFFFF, 0, -1), (0x7FFF, 0, 0x7FFF), (0x8000, 0, -0x8000), (5, 5, 0)],
)
def test_seq_delta(a: int, b: int, delta: int) -> None:
    assert seq_delta(a, b) == delta
    assert seq_newer(a, b) == (delta > 0)


@pytest.mark.parametrize(
    ("a", "b", "delta"),
    [(1, 0, 1), (0, 0xFFFFFFFF, 1), (0xFFFFFFFF, 0, -1), (0x7FFFFFFF, 0, 0x7FFFFFFF), (0x80000000, 0, -0x80000000)],
)
def test_ts_delta(a: int, b: int, delta: int) -> None:
    assert ts_delta(a, b) == delta


@given(st.integers(0, 0xFFFF), st.integers(-0x8000, 0x7FFF))
def test_seq_delta_inverts_addition(b: int, d: int) -> None:
    assert seq_delta((b + d) & 0xFFFF, b) == d


@given(st.integers(0, 0xFFFFFFFF), st.integers(-0x80000000, 0x7FFFFFFF))
def test_ts_delta_inverts_addition(b: int, d: int) -> None:
    assert ts_delta((b + d) & 0xFFFFFFFF, b) == d


# --- SeqUnwrapper --------------------------------------------------------------------------------------------
def test_unwrapper_across_wrap() -> None:
    u = SeqUnwrapper()
    assert [u.unwrap(s) for s in (65534, 65535, 0, 1)] == [65534, 65535, 65536, 65537]


def test_unwrapper_reordered_across_wrap() -> None:
    u = SeqUnwrapper()
    assert [u.unwrap(s) for s in (65535, 1, 0, 2)] == [65535, 65537, 65536, 65538]


def test_unwrapper_reset() -> None:
    u = SeqUnwrapper()
    for s in range(65530, 65536):
        u.unwrap(s)
    u.unwrap(3)
    u.reset()
    assert u.unwrap(100) == 100


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, 0xFFFF),
    st.lists(st.integers(-200, 3000), min_size=1, max_size=200),
)
def test_unwrapper_recovers_extended_numbers(start: int, steps: list[int]) -> None:
    """Any walk whose consecutive jumps stay within half the space (and never goes far below the maximum seen)
    is recovered exactly from the 16-bit numbers."""
    u = SeqUnwrapper()
    ext = start
    highest = start
    assert u.unwrap(start & 0xFFFF) == start
    for step in steps:
        nxt = ext + step
        if highest - nxt >= 0x8000 or nxt - highest >= 0x8000:
            continue
        ext = nxt
        highest = max(highest, ext)
        assert u.unwrap(ext & 0xFFFF) == ext


def test_unwrapper_long_run() -> None:
    u = SeqUnwrapper()
    for ext in range(40000, 40000 + 3 * 65536 + 17):
        assert u.unwrap(ext & 0xFFFF) == ext
