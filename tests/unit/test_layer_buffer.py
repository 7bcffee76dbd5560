"""LayerBuffer: NACK ring and keyframe cache of one incoming layer (webrtc_cast.sfu_tree.layer_buffer)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webrtc_cast.codecs import h264
from webrtc_cast.rtp.header import build, parse
from webrtc_cast.sfu_tree.layer_buffer import LayerBuffer

PT = 102
SPS = bytes([0x67, 0x42, 0xC0, 0x1F, 0xDA, 0x01, 0x40, 0x16, 0xEC, 0x04, 0x40])
PPS = bytes([0x68, 0xCE, 0x3C, 0x80])
STAP_A_SPS_PPS = bytes([24]) + len(SPS).to_bytes(2, "big") + SPS + len(PPS).to_bytes(2, "big") + PPS
SEI = bytes([0x06, 0x05, 0x01, 0x00, 0x80])
P_SLICE = bytes([0x41, 0x9A, 0x00, 0x11])


def fu_a(nal_type: int, start: bool, end: bool, body: bytes = b"\x88\x84") -> bytes:
    return bytes([0x60 | 28, (0x80 if start else 0) | (0x40 if end else 0) | nal_type]) + body


def frame_payloads(keyframe: bool, packets: int, sei_first: bool = False) -> list[bytes]:
    """RTP payloads of one H.264 access unit, as an RFC 6184 packetizer would send them."""
    out: list[bytes] = [SEI] if sei_first else []
    if keyframe:
        out.append(STAP_A_SPS_PPS)
        for i in range(max(1, packets - len(out))):
            out.append(fu_a(5, i == 0, False))
    else:
        while len(out) < packets:
            out.append(P_SLICE)
    return out


class Feeder:
    """Pushes H.264 packets into a LayerBuffer with keyframe detection as broadcast.py does."""

    def __init__(self, buf: LayerBuffer, ssrc: int = 0x1234, seq: int = 0, ts: int = 0) -> None:
        self.buf = buf
        self.ssrc = ssrc
        self.seq = seq
        self.ts = ts
        self.sent: list[tuple[bytes, int]] = []  # (data, extended seq)

    def frame(self, keyframe: bool, packets: int = 3, now: float = 0.0, sei_first: bool = False) -> list[bytes]:
        datas = []
        payloads = frame_payloads(keyframe, packets, sei_first)
        for i, body in enumerate(payloads):
            data = build(PT, self.seq & 0xFFFF, self.ts & 0xFFFFFFFF, self.ssrc, body, marker=i == len(payloads) - 1)
            hdr = parse(data)
            pkt = self.buf.push(data, hdr, h264.is_keyframe(data[hdr.payload_offset :]), now)
            assert pkt[0] is data and pkt[1] == hdr
            self.sent.append((data, pkt[2]))
            datas.append(data)
            self.seq += 1
        self.ts += 3000
        return datas


def datas(packets: list) -> list[bytes]:
    return [p[0] for p in packets]


def test_ring_size_must_be_power_of_two() -> None:
    with pytest.raises(ValueError):
        LayerBuffer(ring_size=1000)
    LayerBuffer(ring_size=1)


def test_push_returns_extended_sequence_across_wrap() -> None:
    buf = LayerBuffer()
    exts = []
    for seq in (65534, 65535, 0, 1):
        data = build(PT, seq, 0, 7, b"x")
        exts.append(buf.push(data, parse(data), False)[2])
    assert exts == [65534, 65535, 65536, 65537]
    assert buf.highest_seq == 65537
    assert buf.packets == 4
    assert buf.octets == 4 * 13


def test_get_returns_stored_packets_and_forgets_overwritten_ones() -> None:
    buf = LayerBuffer(ring_size=8)
    stored = {}
    for seq in range(100, 120):
        data = build(PT, seq, seq * 10, 7, bytes([seq]))
        stored[seq] = buf.push(data, parse(data), False)
    for seq in range(112, 120):
        assert buf.get(seq) == stored[seq]
    for seq in range(100, 112):
        assert buf.get(seq) is None
    assert buf.get(200) is None


def test_get_of_reordered_packet() -> None:
    buf = LayerBuffer()
    for seq in (1, 3, 2):
        data = build(PT, seq, 0, 7, bytes([seq]))
        buf.push(data, parse(data), False)
    got = buf.get(2)
    assert got is not None and got[0][12:] == b"\x02" and got[2] == 2
    assert buf.highest_seq == 3


def test_new_ssrc_resets_the_buffer() -> None:
    buf = LayerBuffer()
    f = Feeder(buf, ssrc=1, seq=500)
    f.frame(True)
    assert buf.has_keyframe and buf.get(500) is not None
    g = Feeder(buf, ssrc=2, seq=10)
    g.frame(False)
    assert buf.ssrc == 2
    assert not buf.has_keyframe
    assert buf.keyframe_packets() == []
    assert buf.get(500) is None
    assert buf.highest_seq == 12


def test_no_keyframe_no_cache() -> None:
    buf = LayerBuffer()
    f = Feeder(buf)
    for _ in range(5):
        f.frame(False)
    assert not buf.has_keyframe
    assert buf.keyframe_packets() == []
    assert buf.keyframe_packets(now=0.0, max_age=10.0) == []


def test_cache_starts_at_sps_pps_stap_a_before_idr() -> None:
    buf = LayerBuffer()
    f = Feeder(buf, seq=65530)
    f.frame(False)
    key = f.frame(True, packets=4)
    p1 = f.frame(False)
    p2 = f.frame(False)
    got = buf.keyframe_packets()
    assert datas(got) == key + p1 + p2
    assert got[0][0][12:] == STAP_A_SPS_PPS
    assert [p[2] for p in got] == list(range(65533, 65533 + len(got)))  # extended, across the wrap
    assert buf.keyframes == 1


def test_cache_starts_at_first_packet_of_the_keyframes_frame() -> None:
    """A SEI (not a keyframe packet itself) that opens the IDR access unit belongs to the cache."""
    buf = LayerBuffer()
    f = Feeder(buf)
    f.frame(False)
    key = f.frame(True, packets=4, sei_first=True)
    assert datas(buf.keyframe_packets()) == key
    assert buf.keyframe_packets()[0][0][12:] == SEI


def test_newer_keyframe_replaces_the_cache() -> None:
    buf = LayerBuffer()
    f = Feeder(buf)
    f.frame(True)
    f.frame(False)
    key2 = f.frame(True)
    p = f.frame(False)
    assert datas(buf.keyframe_packets()) == key2 + p
    assert buf.keyframes == 2


def test_max_age() -> None:
    buf = LayerBuffer()
    f = Feeder(buf)
    f.frame(True, now=10.0)
    f.frame(False, now=10.5)
    assert len(buf.keyframe_packets(now=11.0, max_age=1.5)) == 6
    assert len(buf.keyframe_packets(now=11.5, max_age=1.5)) == 6
    assert buf.keyframe_packets(now=11.6, max_age=1.5) == []
    assert len(buf.keyframe_packets(now=100.0)) == 6  # no max_age: no limit
    assert buf.has_keyframe


def test_gop_longer_than_limit_empties_the_cache_until_the_next_keyframe() -> None:
    buf = LayerBuffer(gop_limit=10)
    f = Feeder(buf)
    f.frame(True, packets=3)
    f.frame(False, packets=3)
    f.frame(False, packets=3)
    assert len(buf.keyframe_packets()) == 9
    f.frame(False, packets=1)
    assert len(buf.keyframe_packets()) == 10
    f.frame(False, packets=1)
    assert buf.keyframe_packets() == []
    assert not buf.has_keyframe
    assert buf.gop_overflows == 1
    f.frame(False)
    assert buf.keyframe_packets() == []
    key = f.frame(True)
    assert datas(buf.keyframe_packets()) == key


def test_reordered_and_duplicate_packets_do_not_disturb_the_cache_order() -> None:
    buf = LayerBuffer()
    pkts = []
    for seq in range(10):
        body = STAP_A_SPS_PPS if seq == 2 else P_SLICE
        pkts.append(build(PT, seq, (seq // 2) * 3000, 9, body))
    order = [0, 1, 2, 3, 5, 4, 6, 6, 7, 9, 8]
    for i in order:
        hdr = parse(pkts[i])
        buf.push(pkts[i], hdr, h264.is_keyframe(pkts[i][12:]))
    got = [p[2] for p in buf.keyframe_packets()]
    assert got == sorted(set(got))
    assert got[0] == 2
    assert {2, 3, 5, 6, 7, 9} <= set(got)


@settings(max_examples=80, deadline=None)
@given(
    start_seq=st.integers(0, 0xFFFF),
    gop_limit=st.integers(4, 40),
    frames=st.lists(
        st.tuples(st.booleans(), st.integers(1, 6), st.booleans(), st.floats(0.0, 0.2)),
        min_size=1,
        max_size=40,
    ),
    max_age=st.floats(0.1, 2.0),
)
def test_keyframe_cache_property(
    start_seq: int, gop_limit: int, frames: list[tuple[bool, int, bool, float]], max_age: float
) -> None:
    """§4 keyframe cache: the cache is exactly the packets since the first packet of the latest keyframe's frame,
    in order, unless that run is longer than the limit or older than max_age."""
    buf = LayerBuffer(ring_size=256, gop_limit=gop_limit)
    f = Feeder(buf, seq=start_seq)
    now = 0.0
    key_start: int | None = None  # index into f.sent of the latest keyframe frame's first packet
    key_time: float | None = None
    for keyframe, packets, sei_first, dt in frames:
        now += dt
        first = len(f.sent)
        f.frame(keyframe, packets, now=now, sei_first=sei_first)
        if keyframe:
            key_start, key_time = first, now
    if key_start is None:
        expected: list[bytes] = []
    else:
        expected = [d for d, _ in f.sent[key_start:]]
        if len(expected) > gop_limit:
            expected = []
    got = buf.keyframe_packets()
    assert datas(got) == expected
    exts = [p[2] for p in got]
    assert exts == list(range(exts[0], exts[0] + len(exts))) if exts else True
    assert buf.has_keyframe == bool(expected)
    if expected:
        assert key_time is not None
        later = key_time + max_age + 0.01
        assert buf.keyframe_packets(now=later, max_age=max_age) == []
        assert datas(buf.keyframe_packets(now=key_time + max_age / 2, max_age=max_age)) == expected
