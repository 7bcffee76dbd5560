"""RTCP: byte-exact vectors from the RFC layouts, builder/parser round trips, malformed input, fuzz."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from webrtc_cast.rtp import rtcp
from webrtc_cast.rtp.rtcp import (
    Bye,
    Fir,
    Nack,
    Pli,
    ReceiverReport,
    Remb,
    ReportBlock,
    RtcpError,
    SenderReport,
    Unknown,
)

u32 = st.integers(0, 0xFFFF_FFFF)
seq16 = st.integers(0, 0xFFFF)
report_blocks = st.builds(
    ReportBlock,
    ssrc=u32,
    fraction_lost=st.integers(0, 255),
    packets_lost=st.integers(-(1 << 23), (1 << 23) - 1),
    highest_seq=u32,
    jitter=u32,
    lsr=u32,
    dlsr=u32,
)


# --- byte-exact vectors, laid out by hand from RFC 3550 / 4585 / 5104 / REMB draft ----------------------


def test_pli_bytes() -> None:
    # V=2 P=0 FMT=1 -> 0x81, PT=206 (0xce), length 2 words, sender SSRC, media SSRC
    expected = bytes.fromhex("81ce0002 11223344 55667788")
    assert rtcp.build_pli(0x11223344, 0x55667788) == expected
    assert rtcp.parse_compound(expected) == [Pli(0x11223344, 0x55667788)]


def test_nack_bytes() -> None:
    # FMT=1 PT=205 (0xcd), length 3; PID 100 (0x0064), BLP bit 0 = 101, bit 2 = 103 -> 0x0005
    expected = bytes.fromhex("81cd0003 00000001 00000002 00640005")
    assert rtcp.build_nack(1, 2, [100, 103, 101]) == expected
    assert rtcp.parse_compound(expected) == [Nack(1, 2, (100, 101, 103))]


def test_nack_bytes_across_wrap_and_two_pairs() -> None:
    # PID 65534 (0xfffe); 65535, 0, 1 are 1, 2, 3 ahead -> BLP 0b111; 40 is 42 ahead -> new pair 0x0028
    expected = bytes.fromhex("81cd0004 0000000a 0000000b fffe0007 00280000")
    assert rtcp.build_nack(10, 11, [0, 65535, 40, 1, 65534]) == expected
    assert rtcp.parse_compound(expected) == [Nack(10, 11, (65534, 65535, 0, 1, 40))]


def test_nack_parse_full_blp() -> None:
    packet = bytes.fromhex("81cd0003 00000001 00000002 fff0ffff")
    (nack,) = rtcp.parse_compound(packet)
    assert isinstance(nack, Nack)
    assert nack.lost == tuple((0xFFF0 + i) & 0xFFFF for i in range(17))


def test_sr_bytes() -> None:
    # RC=0 -> 0x80, PT=200 (0xc8), length 6 words; SSRC, NTP msw, NTP lsw, RTP ts, packets, octets
    expected = bytes.fromhex("80c80006 01020304 e1a2b3c4 80000000 11223344 00000005 000003e8")
    assert rtcp.build_sr(0x01020304, 0xE1A2B3C4_80000000, 0x11223344, 5, 1000) == expected
    assert rtcp.parse_compound(expected) == [SenderReport(0x01020304, 0xE1A2B3C4_80000000, 0x11223344, 5, 1000)]


def test_rr_with_block_bytes() -> None:
    # RC=1 -> 0x81, PT=201 (0xc9), length 7; block: SSRC, fraction 0x40, lost -1 (ffffff), ext seq,
    # jitter, LSR, DLSR
    expected = bytes.fromhex("81c90007 0000000a 0000000b 40ffffff 00010005 00000020 b3c48000 00010000")
    block = ReportBlock(11, 0x40, -1, 0x10005, 0x20, 0xB3C48000, 0x10000)
    assert rtcp.build_rr(10, [block]) == expected
    assert rtcp.parse_compound(expected) == [ReceiverReport(10, (block,))]


def test_fir_bytes() -> None:
    # FMT=4 -> 0x84, PT=206, length 4; header media SSRC 0; FCI: SSRC, seq nr, 3 reserved bytes
    expected = bytes.fromhex("84ce0004 00000001 00000000 00000002 07000000")
    assert rtcp.build_fir(1, 2, 7) == expected
    assert rtcp.parse_compound(expected) == [Fir(1, ((2, 7),))]
    assert rtcp.build_fir(1, 2, 263)[-4] == 7  # sequence number is 8 bits


def test_remb_bytes() -> None:
    # 1_000_000 bps = 250000 << 2: exponent 2, mantissa 0x3d090 -> bytes 0b000010|11, 0xd0, 0x90
    expected = bytes.fromhex("8fce0005 00000001 00000000 52454d42 010bd090 00001234")
    assert rtcp.build_remb(1, 1_000_000, [0x1234]) == expected
    assert rtcp.parse_compound(expected) == [Remb(1, 1_000_000, (0x1234,))]


def test_sdes_cname_bytes() -> None:
    # SC=1 -> 0x81, PT=202 (0xca), length 3; chunk: SSRC, CNAME=1, len 2, "ab", END, 3 bytes padding
    expected = bytes.fromhex("81ca0003 00000001 01026162 00000000")
    assert rtcp.build_sdes_cname(1, "ab") == expected
    assert rtcp.parse_compound(expected) == [Unknown(202, 1)]


def test_sdes_chunk_is_null_terminated_even_when_aligned() -> None:
    packet = rtcp.build_sdes_cname(1, "abcdef")  # 4 + 2 + 6 = 12 bytes: still needs an END octet
    assert len(packet) % 4 == 0
    assert packet[4 + 12] == 0
    assert len(packet) == 4 + 16


def test_bye_bytes() -> None:
    expected = bytes.fromhex("82cb0002 00000001 00000002")
    assert rtcp.build_bye([1, 2]) == expected
    assert rtcp.parse_compound(expected) == [Bye((1, 2))]


# --- parsing details -------------------------------------------------------------------------------------


def test_compound_order_and_unknowns() -> None:
    twcc = bytes.fromhex("8fcd0004 00000001 00000002 00010001 20010000")
    app = bytes.fromhex("80cc0003 00000001") + b"name" + bytes(4)
    afb_not_remb = bytes.fromhex("8fce0003 00000001 00000000 41424344")
    data = (
        rtcp.build_rr(5)
        + rtcp.build_sdes_cname(5, "viewer")
        + twcc
        + app
        + afb_not_remb
        + rtcp.build_pli(5, 6)
        + rtcp.build_bye([5])
    )
    assert rtcp.parse_compound(data) == [
        ReceiverReport(5),
        Unknown(202, 1),
        Unknown(205, 15),
        Unknown(204, 0),
        Unknown(206, 15),
        Pli(5, 6),
        Bye((5,)),
    ]


def test_bye_with_reason_and_padding() -> None:
    # BYE SC=1 with reason "go" (len 2) padded to a word, then P bit with 4 bytes of padding.
    body = struct.pack("!I", 7) + b"\x02go\x00" + b"\x00\x00\x00\x04"
    packet = struct.pack("!BBH", 0xA1, 203, len(body) // 4) + body
    assert rtcp.parse_compound(packet) == [Bye((7,))]


def test_padding_is_excluded_from_fci() -> None:
    pli = rtcp.build_pli(1, 2)
    padded = bytes([pli[0] | 0x20, pli[1]]) + struct.pack("!H", 3) + pli[4:] + b"\x00\x00\x00\x04"
    assert rtcp.parse_compound(padded) == [Pli(1, 2)]
    nack = rtcp.build_nack(1, 2, [9])
    padded = bytes([nack[0] | 0x20, nack[1]]) + struct.pack("!H", 4) + nack[4:] + b"\x00\x00\x00\x04"
    assert rtcp.parse_compound(padded) == [Nack(1, 2, (9,))]


def test_sr_profile_extension_is_ignored() -> None:
    sr = rtcp.build_sr(1, 2, 3, 4, 5)
    extended = sr[:2] + struct.pack("!H", 7) + sr[4:] + b"\xde\xad\xbe\xef"
    assert rtcp.parse_compound(extended) == [SenderReport(1, 2, 3, 4, 5)]


def test_duplicate_sequence_numbers_across_pairs_are_reported_once() -> None:
    packet = bytes.fromhex("81cd0004 00000001 00000002 00050001 00060000")
    assert rtcp.parse_compound(packet) == [Nack(1, 2, (5, 6))]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"\x80\xc9\x00", "shorter than a header"),
        (bytes.fromhex("40c90001 00000001"), "version 1"),
        (bytes.fromhex("c0c90001 00000001"), "version 3"),
        (bytes.fromhex("80c90002 00000001"), "length overruns"),
        (rtcp.build_rr(1) + b"\x80\xc9", "trailing partial header"),
        (bytes.fromhex("81c90001 00000001"), "RC claims a block that is not there"),
        (bytes.fromhex("80c80001 00000001"), "SR too short"),
        (bytes.fromhex("80c90000"), "RR without SSRC"),
        (bytes.fromhex("81ce0001 00000001"), "PLI without media SSRC"),
        (bytes.fromhex("81cd0002 00000001 00000002"), "NACK without FCI"),
        (bytes.fromhex("84ce0002 00000001 00000000"), "FIR without FCI"),
        (bytes.fromhex("84ce0003 00000001 00000000 00000002"), "FIR with half an entry"),
        (bytes.fromhex("8fce0004 00000001 00000000 52454d42 020bd090"), "REMB SSRCs missing"),
        (bytes.fromhex("82cb0001 00000001"), "BYE SC overruns"),
        (bytes.fromhex("a1ce0002 00000001 00000000"), "padding count 0"),
        (bytes.fromhex("a1ce0002 00000001 000000ff"), "padding larger than the packet"),
        (bytes.fromhex("a0c90000"), "padding bit on an empty body"),
    ],
)
def test_malformed_raises_rtcp_error(data: bytes, reason: str) -> None:
    with pytest.raises(RtcpError):
        rtcp.parse_compound(data)


def test_rtcp_error_is_value_error() -> None:
    assert issubclass(RtcpError, ValueError)


def test_is_rtcp() -> None:
    assert rtcp.is_rtcp(rtcp.build_pli(1, 2))
    assert rtcp.is_rtcp(rtcp.build_sr(1, 2, 3, 4, 5))
    assert rtcp.is_rtcp(bytes([0x80, 192]))
    assert rtcp.is_rtcp(bytes([0x80, 223]))
    assert not rtcp.is_rtcp(bytes([0x80, 96, 0, 1]))  # RTP, PT 96, no marker
    assert not rtcp.is_rtcp(bytes([0x80, 0x80 | 111, 0, 1]))  # RTP, PT 111 with marker = 239
    assert not rtcp.is_rtcp(bytes([0x80, 0x80 | 63]))  # 191
    assert not rtcp.is_rtcp(b"\x80")


def test_ntp_from_unix() -> None:
    assert rtcp.ntp_from_unix(0) == 2_208_988_800 << 32
    assert rtcp.ntp_from_unix(1.5) == (2_208_988_801 << 32) | 0x8000_0000
    assert rtcp.ntp_from_unix(1.25) == (2_208_988_801 << 32) | 0x4000_0000
    ntp = rtcp.ntp_from_unix(1_700_000_000.75)
    assert ntp >> 32 == 1_700_000_000 + 2_208_988_800
    assert abs((ntp & 0xFFFF_FFFF) - 0xC000_0000) < 1 << 12
    assert rtcp.ntp_middle32(0x1122_3344_5566_7788) == 0x3344_5566


# --- builder constraints ---------------------------------------------------------------------------------


def test_builder_limits() -> None:
    with pytest.raises(ValueError):
        rtcp.build_nack(1, 2, [])
    with pytest.raises(ValueError):
        rtcp.build_nack(1, 2, [65536])
    with pytest.raises(ValueError):
        rtcp.build_rr(1, [ReportBlock(1, 0, 0, 0, 0, 0, 0)] * 32)
    with pytest.raises(ValueError):
        rtcp.build_remb(1, -1, [])
    with pytest.raises(ValueError):
        rtcp.build_remb(1, 1 << 82, [])
    with pytest.raises(ValueError):
        rtcp.build_sdes_cname(1, "x" * 256)
    with pytest.raises(ValueError):
        rtcp.build_bye(range(32))


def test_report_block_lost_is_clamped_to_24_bits() -> None:
    packet = rtcp.build_rr(1, [ReportBlock(2, 0, 1 << 30, 0, 0, 0, 0), ReportBlock(3, 0, -(1 << 30), 0, 0, 0, 0)])
    (rr,) = rtcp.parse_compound(packet)
    assert isinstance(rr, ReceiverReport)
    assert [block.packets_lost for block in rr.reports] == [(1 << 23) - 1, -(1 << 23)]


# --- round trips (property based) ------------------------------------------------------------------------


@given(u32, st.integers(0, (1 << 64) - 1), u32, u32, u32, st.lists(report_blocks, max_size=31))
def test_sr_round_trip(ssrc: int, ntp: int, rtp_time: int, packets: int, octets: int, blocks: list) -> None:
    packet = rtcp.build_sr(ssrc, ntp, rtp_time, packets, octets, blocks)
    assert len(packet) == 28 + 24 * len(blocks)
    assert rtcp.parse_compound(packet) == [SenderReport(ssrc, ntp, rtp_time, packets, octets, tuple(blocks))]


@given(u32, st.lists(report_blocks, max_size=31))
def test_rr_round_trip(ssrc: int, blocks: list) -> None:
    assert rtcp.parse_compound(rtcp.build_rr(ssrc, blocks)) == [ReceiverReport(ssrc, tuple(blocks))]


@given(u32, u32)
def test_pli_round_trip(sender: int, media: int) -> None:
    assert rtcp.parse_compound(rtcp.build_pli(sender, media)) == [Pli(sender, media)]


@given(u32, u32, st.integers(0, 255))
def test_fir_round_trip(sender: int, media: int, seq: int) -> None:
    assert rtcp.parse_compound(rtcp.build_fir(sender, media, seq)) == [Fir(sender, ((media, seq),))]


@given(u32, u32, st.lists(seq16, min_size=1, max_size=200))
def test_nack_round_trip(sender: int, media: int, lost: list[int]) -> None:
    packet = rtcp.build_nack(sender, media, lost)
    (nack,) = rtcp.parse_compound(packet)
    assert isinstance(nack, Nack)
    assert (nack.sender_ssrc, nack.media_ssrc) == (sender, media)
    assert sorted(nack.lost) == sorted(set(lost))
    assert (len(packet) - 12) // 4 <= len(set(lost))


@given(seq16, st.lists(st.integers(0, 300), min_size=1, max_size=100))
def test_nack_run_near_wrap_packs_tightly(start: int, offsets: list[int]) -> None:
    lost = [(start + offset) & 0xFFFF for offset in offsets]
    span = max(offsets) - min(offsets)
    packet = rtcp.build_nack(1, 2, lost)
    pairs = (len(packet) - 12) // 4
    assert pairs <= (span + 17) // 17  # one pair per 17 consecutive numbers, as greedy packing gives
    (nack,) = rtcp.parse_compound(packet)
    assert isinstance(nack, Nack)
    assert set(nack.lost) == set(lost)


@given(u32, st.integers(0, (1 << 18) - 1), st.integers(0, 63), st.lists(u32, max_size=255))
def test_remb_round_trip(sender: int, mantissa: int, exponent: int, ssrcs: list[int]) -> None:
    bitrate = mantissa << exponent
    assert rtcp.parse_compound(rtcp.build_remb(sender, bitrate, ssrcs)) == [Remb(sender, bitrate, tuple(ssrcs))]


@given(st.integers(0, 1 << 40))
def test_remb_rounds_down_within_mantissa_precision(bitrate: int) -> None:
    (remb,) = rtcp.parse_compound(rtcp.build_remb(1, bitrate, []))
    assert isinstance(remb, Remb)
    assert remb.bitrate <= bitrate
    assert bitrate - remb.bitrate < max(1, bitrate >> 17)


@given(u32, st.text(max_size=80).filter(lambda text: len(text.encode()) <= 255))
def test_sdes_is_well_formed(ssrc: int, cname: str) -> None:
    packet = rtcp.build_sdes_cname(ssrc, cname)
    assert len(packet) % 4 == 0
    assert rtcp.parse_compound(packet) == [Unknown(202, 1)]
    assert packet[10 : 10 + packet[9]].decode() == cname


@given(st.lists(u32, max_size=31))
def test_bye_round_trip(ssrcs: list[int]) -> None:
    assert rtcp.parse_compound(rtcp.build_bye(ssrcs)) == [Bye(tuple(ssrcs))]


# --- fuzz ------------------------------------------------------------------------------------------------


def _parse_or_error(data: bytes) -> list | None:
    try:
        return rtcp.parse_compound(data)
    except RtcpError:
        return None


@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    _parse_or_error(data)
    assert isinstance(rtcp.is_rtcp(data), bool)


@given(
    st.integers(0, 31),
    st.sampled_from([200, 201, 202, 203, 204, 205, 206, 207]),
    st.booleans(),
    st.binary(max_size=120).map(lambda body: body[: len(body) // 4 * 4]),
)
def test_fuzz_well_framed_packets(count: int, pt: int, padded: bool, body: bytes) -> None:
    first = 0x80 | (0x20 if padded else 0) | count
    packet = struct.pack("!BBH", first, pt, len(body) // 4) + body
    result = _parse_or_error(packet + rtcp.build_pli(1, 2))
    if result is not None:
        assert len(result) == 2
        assert result[-1] == Pli(1, 2)


@given(
    st.lists(st.sampled_from([rtcp.build_pli(1, 2), rtcp.build_rr(3), rtcp.build_nack(4, 5, [6])]), min_size=1),
    st.integers(0, 400),
    st.integers(0, 255),
)
def test_fuzz_corrupted_compound(parts: list[bytes], position: int, value: int) -> None:
    data = bytearray(b"".join(parts))
    data[position % len(data)] = value
    _parse_or_error(bytes(data))
    _parse_or_error(bytes(data[: position % len(data)]))


def test_report_intervals_are_randomized_so_a_batch_of_viewers_spreads_out():
    """RFC 3550 §6.3.1: 150 viewers that joined in the same tick must not send their sender reports in the same
    tick every second (each report blocks the forwarding loop for a few tens of µs)."""
    import random

    rng = random.Random(7)
    assert all(0.5 <= rtcp.randomized_interval(1.0, rng.random()) < 1.5 for _ in range(1000))
    assert rtcp.randomized_interval(2.0, 0.0) == 1.0 and rtcp.randomized_interval(2.0, 0.999) < 3.0
    tick = 0.1
    due = [0.0] * 150
    per_tick = []
    for step in range(100):  # 10 s of node ticks
        now = step * tick
        reporting = [i for i, t in enumerate(due) if now >= t]
        for i in reporting:
            due[i] = now + rtcp.randomized_interval(1.0, rng.random())
        per_tick.append(len(reporting))
    assert per_tick[0] == 150  # everyone reports at once after joining...
    assert max(per_tick[30:]) <= 40  # ...and after a few seconds ~15 per tick, not 150 every 10th tick
