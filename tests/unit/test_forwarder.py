"""Forwarder: keyframe gating, munging, payload-type mapping and NACK repair (webrtc_cast.sfu_tree.forwarder).

The property tests drive a Forwarder through a LayerBuffer exactly as webrtc_cast/sfu_tree/broadcast.py does
(push, then forward the returned Packet) and check the DESIGN.md §4 invariants.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from webrtc_cast.rtp.header import build, parse, payload, seq_delta, ts_delta
from webrtc_cast.sfu_tree.forwarder import Forwarder
from webrtc_cast.sfu_tree.layer_buffer import LayerBuffer

SRC_PT = 102  # the publisher's H264 payload type
OUT_PT = 96  # the viewer's H264 payload type
OUT_RTX_PT = 97
OUT_SSRC = 0xABCDEF01
RTX_SSRC = 0x0BADCAFE


def video_forwarder(rtx: bool = False) -> Forwarder:
    fwd = Forwarder(
        "video",
        90000,
        OUT_SSRC,
        {"H264": OUT_PT, "VP8": 98},
        {OUT_PT: OUT_RTX_PT} if rtx else None,
        RTX_SSRC if rtx else None,
    )
    assert fwd.set_source_codec("H264")
    return fwd


def push(buf: LayerBuffer, fwd: Forwarder, data: bytes, keyframe: bool, now: float) -> bytes | None:
    pkt = buf.push(data, parse(data), keyframe, now)
    return fwd.forward(pkt, keyframe, now)


def unpack(out: bytes) -> tuple[int, int, int, int, bool, bytes]:
    h = parse(out)
    return h.payload_type, h.sequence, h.timestamp, h.ssrc, h.marker, payload(out, h)


# --- plain unit tests ----------------------------------------------------------------------------------------
def test_video_waits_for_a_keyframe_then_rewrites() -> None:
    buf, fwd = LayerBuffer(), video_forwarder()
    assert fwd.waiting_keyframe
    assert push(buf, fwd, build(SRC_PT, 10, 1000, 5, b"p"), False, 0.0) is None
    out = push(buf, fwd, build(SRC_PT, 11, 4000, 5, b"k", marker=True), True, 0.1)
    assert out is not None
    pt, seq, ts, ssrc, marker, body = unpack(out)
    assert (pt, ssrc, marker, body) == (OUT_PT, OUT_SSRC, True, b"k")
    assert not fwd.waiting_keyframe
    out2 = push(buf, fwd, build(SRC_PT, 12, 7000, 5, b"p2"), False, 0.2)
    assert out2 is not None
    _, seq2, ts2, *_ = unpack(out2)
    assert seq2 == (seq + 1) & 0xFFFF
    assert ts_delta(ts2, ts) == 3000
    assert fwd.packets == 2
    assert fwd.octets == 1 + 2


def test_audio_needs_no_keyframe() -> None:
    buf = LayerBuffer()
    fwd = Forwarder("audio", 48000, 42, {"OPUS": 111})
    assert fwd.set_source_codec("OPUS")
    assert not fwd.waiting_keyframe
    out = push(buf, fwd, build(109, 3, 960, 8, b"opus"), False, 0.0)
    assert out is not None and unpack(out)[0] == 111 and unpack(out)[3] == 42


def test_codec_not_negotiated_is_dropped_and_counted() -> None:
    buf = LayerBuffer()
    fwd = Forwarder("video", 90000, 1, {"VP8": 96})
    assert not fwd.set_source_codec("H264")
    assert not fwd.set_source_codec("H264")  # cached answer
    assert push(buf, fwd, build(SRC_PT, 1, 0, 5, b"k"), True, 0.0) is None
    assert fwd.dropped_no_codec == 1
    assert fwd.retransmit(0, buf) is None


def test_codec_change_regates_on_keyframe_and_keeps_sequence_continuous() -> None:
    buf, fwd = LayerBuffer(), video_forwarder()
    outs = [push(buf, fwd, build(SRC_PT, s, s * 100, 5, b"x"), s == 0, s * 0.01) for s in range(3)]
    assert all(outs)
    last_seq = unpack(outs[-1])[1]
    assert fwd.set_source_codec("VP8")
    assert fwd.set_source_codec("VP8")  # unchanged: still gated, no state change
    assert fwd.waiting_keyframe
    assert push(buf, fwd, build(SRC_PT, 3, 300, 5, b"x"), False, 0.04) is None
    out = push(buf, fwd, build(SRC_PT, 4, 400, 5, b"k"), True, 0.05)
    assert out is not None
    pt, seq, *_ = unpack(out)
    assert pt == 98
    assert seq == (last_seq + 1) & 0xFFFF


def test_new_source_keeps_the_old_one_until_its_keyframe() -> None:
    """§4: a switch happens only at a keyframe of the target; until then the viewer keeps the old source."""
    buf_old, buf_new, fwd = LayerBuffer(), LayerBuffer(), video_forwarder()
    assert push(buf_old, fwd, build(SRC_PT, 100, 0, 1, b"k"), True, 0.0) is not None
    assert push(buf_new, fwd, build(SRC_PT, 7000, 55, 2, b"p"), False, 0.01) is None
    # the old source still flows while the new one has not sent a keyframe
    out = push(buf_old, fwd, build(SRC_PT, 101, 3000, 1, b"p"), False, 0.02)
    assert out is not None and unpack(out)[5] == b"p"
    out = push(buf_new, fwd, build(SRC_PT, 7001, 3055, 2, b"K"), True, 0.03)
    assert out is not None and unpack(out)[5] == b"K"
    assert fwd.munger.source_ssrc == 2
    assert push(buf_old, fwd, build(SRC_PT, 102, 6000, 1, b"p"), False, 0.04) is None


def test_start_burst_from_keyframe_cache() -> None:
    buf = LayerBuffer()
    early = Forwarder("video", 90000, 1, {"H264": OUT_PT})
    early.set_source_codec("H264")
    sent = []
    for s in range(20):
        key = s in (0, 10)
        data = build(SRC_PT, 60000 + s, (s // 2) * 3000, 5, bytes([s]))
        sent.append(data)
        push(buf, early, data, key, s * 0.01)
    late = video_forwarder()
    burst = late.start_burst(buf.keyframe_packets(), 0.3)
    assert [unpack(b)[5] for b in burst] == [bytes([s]) for s in range(10, 20)]
    seqs = [unpack(b)[1] for b in burst]
    assert all(seq_delta(b, a) == 1 for a, b in zip(seqs, seqs[1:], strict=False))
    # the live stream continues right after the burst
    out = push(buf, late, build(SRC_PT, 60020, 30000, 5, b"live"), False, 0.31)
    assert out is not None and unpack(out)[1] == (seqs[-1] + 1) & 0xFFFF
    assert late.start_burst([], 0.4) == []


def test_retransmit_plain_is_the_forwarded_packet() -> None:
    buf, fwd = LayerBuffer(), video_forwarder()
    outs = [push(buf, fwd, build(SRC_PT, s, s, 5, bytes([s]) * 5), s == 0, 0.0) for s in range(5)]
    for out in outs:
        assert out is not None
        assert fwd.retransmit(unpack(out)[1], buf) == out
    assert fwd.retransmitted == 5


def test_retransmit_rtx_framing_strips_padding() -> None:
    buf, fwd = LayerBuffer(), video_forwarder(rtx=True)
    padded = bytearray(build(SRC_PT, 40, 1234, 5, b"body" + b"\x00\x00\x03", marker=True))
    padded[0] |= 0x20
    out = push(buf, fwd, bytes(padded), True, 0.0)
    assert out is not None
    out_seq, out_ts = unpack(out)[1], unpack(out)[2]
    rtx = fwd.retransmit(out_seq, buf)
    assert rtx is not None
    h = parse(rtx)
    assert (h.payload_type, h.ssrc, h.timestamp, h.marker, h.padding) == (OUT_RTX_PT, RTX_SSRC, out_ts, True, False)
    body = payload(rtx, h)
    assert struct.unpack("!H", body[:2])[0] == out_seq
    assert body[2:] == b"body"
    rtx2 = fwd.retransmit(out_seq, buf)
    assert rtx2 is not None and parse(rtx2).sequence == (h.sequence + 1) & 0xFFFF


def test_retransmit_misses_are_counted() -> None:
    buf, fwd = LayerBuffer(ring_size=4), video_forwarder()
    assert fwd.retransmit(5, buf) is None  # nothing forwarded yet
    outs = [push(buf, fwd, build(SRC_PT, s, 0, 5, b"x"), s == 0, 0.0) for s in range(10)]
    first = unpack(outs[0])[1]  # type: ignore[arg-type]
    assert fwd.retransmit(first, buf) is None  # overwritten in the ring
    assert fwd.nack_misses == 2


def test_retransmit_never_sends_pre_switch_packets_of_the_new_source() -> None:
    """Regression: a NACK for an output sequence number of the *previous* source mapped, through the new epoch's
    offset, onto a packet of the new source that arrived before its keyframe (still in the ring) and was sent as
    that repair."""
    buf, fwd = LayerBuffer(), video_forwarder(rtx=True)
    old = [push(buf, fwd, build(SRC_PT, 500 + i, i, 1, b"old%d" % i), i == 0, 0.0) for i in range(3)]
    assert all(old)
    # reconnect: the new source's first two packets are not keyframes, the third is
    for i, key in enumerate((False, False, True)):
        push(buf, fwd, build(SRC_PT, 9000 + i, 0, 2, b"new%d" % i), key, 0.1)
    for out in old:
        assert fwd.retransmit(unpack(out)[1], buf) is None  # type: ignore[arg-type]


# --- property tests --------------------------------------------------------------------------------------------
@dataclass
class Source:
    ssrc: int
    seq: int  # next 16-bit sequence number
    ts: int
    in_frame: int = 0  # packets sent of the current frame


@dataclass
class Sent:
    """One packet as forwarded: what went in and what came out."""

    ssrc: int
    ext_seq: int
    src_seq: int
    src_ts: int
    keyframe: bool
    body: bytes
    out: bytes
    new: bool  # in order and new for its source (not a duplicate or a late reordered packet)


@dataclass
class Run:
    buf: LayerBuffer
    fwd: Forwarder
    sent: list[Sent] = field(default_factory=list)
    highest: dict[int, int] = field(default_factory=dict)  # ssrc -> highest ext seq seen
    forwarded_ssrcs: list[int] = field(default_factory=list)
    now: float = 0.0
    counter: int = 0


seq_start = st.one_of(st.integers(65500, 65535), st.integers(0, 65535))
events = st.lists(
    st.one_of(
        st.tuples(st.just("next"), st.booleans()),  # next packet; keyframe if it starts a frame and flag set
        st.tuples(st.just("loss"), st.integers(1, 4)),
        st.tuples(st.just("reorder"), st.just(0)),
        st.tuples(st.just("dup"), st.just(0)),
        st.tuples(st.just("switch"), st.tuples(seq_start, st.integers(0, 0xFFFFFFFF), st.booleans())),
        st.tuples(st.just("wait"), st.floats(0.0, 3.0)),
    ),
    min_size=1,
    max_size=120,
)


def make_packet(run: Run, src: Source, keyframe_flag: bool) -> tuple[bytes, bool]:
    """The source's next packet: frames of 1-3 packets, 3000 ticks apart; keyframes start a frame."""
    if src.in_frame >= 1 + (src.seq % 3):
        src.in_frame = 0
        src.ts = (src.ts + 3000) & 0xFFFFFFFF
    keyframe = keyframe_flag and src.in_frame == 0
    run.counter += 1
    data = build(SRC_PT, src.seq, src.ts, src.ssrc, b"%d" % run.counter, marker=False)
    src.seq = (src.seq + 1) & 0xFFFF
    src.in_frame += 1
    return data, keyframe


def deliver(run: Run, data: bytes, keyframe: bool) -> None:
    run.now += 0.005
    hdr = parse(data)
    pkt = run.buf.push(data, hdr, keyframe, run.now)
    assert pkt[1] == hdr
    out = run.fwd.forward(pkt, keyframe, run.now)
    ext = pkt[2]
    new = ext > run.highest.get(hdr.ssrc, -(1 << 62))
    run.highest[hdr.ssrc] = max(ext, run.highest.get(hdr.ssrc, ext))
    if out is None:
        return
    if not run.forwarded_ssrcs or run.forwarded_ssrcs[-1] != hdr.ssrc:
        run.forwarded_ssrcs.append(hdr.ssrc)
    run.sent.append(Sent(hdr.ssrc, ext, hdr.sequence, hdr.timestamp, keyframe, payload(data, hdr), out, new))


def drive(initial_seq: int, initial_ts: int, script: list[tuple[str, object]], rtx: bool, ring: int = 1024) -> Run:
    run = Run(LayerBuffer(ring_size=ring), video_forwarder(rtx=rtx))
    src = Source(0x1000, initial_seq, initial_ts)
    held: tuple[bytes, bool] | None = None  # last delivered packet, for duplicates
    for kind, arg in script:
        if kind == "next":
            held = make_packet(run, src, bool(arg))
            deliver(run, *held)
        elif kind == "loss":
            for _ in range(int(arg)):  # type: ignore[call-overload]
                make_packet(run, src, False)
        elif kind == "reorder":
            a = make_packet(run, src, False)
            b = make_packet(run, src, False)
            deliver(run, *b)
            deliver(run, *a)
            held = a
        elif kind == "dup":
            if held is not None:
                deliver(run, *held)
        elif kind == "switch":
            seq, ts, first_key = arg  # type: ignore[misc]
            src = Source(src.ssrc + 1, seq, ts)
            held = make_packet(run, src, first_key)
            deliver(run, *held)
        elif kind == "wait":
            run.now += float(arg)  # type: ignore[arg-type]
    return run


def check_continuity(run: Run) -> None:
    new = [s for s in run.sent if s.new]
    # a source's first forwarded packet is a keyframe, and sources never come back once left
    assert len(run.forwarded_ssrcs) == len(set(run.forwarded_ssrcs))
    seen: set[int] = set()
    for s in run.sent:
        if s.ssrc not in seen:
            assert s.keyframe, "a source was forwarded before its keyframe"
            seen.add(s.ssrc)
    for prev, cur in zip(new, new[1:], strict=False):
        ph, ch = parse(prev.out), parse(cur.out)
        gap = seq_delta(ch.sequence, ph.sequence)
        if cur.ssrc == prev.ssrc:
            assert gap == cur.ext_seq - prev.ext_seq, "output gap differs from the source's gap"
        else:
            assert gap == 1, "a source switch left a gap"
        assert ts_delta(ch.timestamp, ph.timestamp) >= 0, "output timestamp went backwards"
        if cur.ssrc != prev.ssrc:
            assert ts_delta(ch.timestamp, ph.timestamp) >= 1
    for s in run.sent:
        h = parse(s.out)
        assert (h.payload_type, h.ssrc) == (OUT_PT, OUT_SSRC)
        assert payload(s.out, h) == s.body


@settings(max_examples=400, deadline=None)
@given(
    initial_seq=seq_start,
    initial_ts=st.integers(0, 0xFFFFFFFF),
    script=events,
)
def test_output_sequence_continuous_and_timestamps_monotonic(
    initial_seq: int, initial_ts: int, script: list[tuple[str, object]]
) -> None:
    """§4: +1 per forwarded packet across source switches (a source loss shows as the same gap), timestamps
    never go backwards, and a new source is forwarded only from its keyframe on."""
    check_continuity(drive(initial_seq, initial_ts, script, rtx=False))


@settings(max_examples=250, deadline=None)
@given(
    initial_seq=seq_start,
    initial_ts=st.integers(0, 0xFFFFFFFF),
    script=events,
    rtx=st.booleans(),
    ring=st.sampled_from([16, 64, 1024]),
    stray=st.lists(st.integers(0, 0xFFFF), max_size=20),
)
def test_nack_repair(
    initial_seq: int, initial_ts: int, script: list[tuple[str, object]], rtx: bool, ring: int, stray: list[int]
) -> None:
    """§4 NACK repair: any forwarded packet still in the ring comes back with the same payload (RTX-framed with
    OSN = out_seq when RTX is negotiated); no NACK ever returns a payload other than the one sent as out_seq."""
    run = drive(initial_seq, initial_ts, script, rtx=rtx, ring=ring)
    fwd, buf = run.fwd, run.buf
    by_out: dict[int, bytes] = {}
    for s in run.sent:
        by_out[parse(s.out).sequence] = s.body
    rtx_seqs = []
    for s in run.sent:
        out_seq = parse(s.out).sequence
        stored = buf.get(s.src_seq)
        repaired = fwd.retransmit(out_seq, buf)
        current = s.ssrc == fwd.munger.source_ssrc
        if current and stored is not None and stored[1].ssrc == s.ssrc and stored[2] == s.ext_seq:
            assert repaired is not None
        if repaired is None:
            continue
        h = parse(repaired)
        body = payload(repaired, h)
        if rtx:
            assert (h.payload_type, h.ssrc) == (OUT_RTX_PT, RTX_SSRC)
            assert struct.unpack("!H", body[:2])[0] == out_seq
            body = body[2:]
            rtx_seqs.append(h.sequence)
        else:
            assert (h.payload_type, h.ssrc, h.sequence) == (OUT_PT, OUT_SSRC, out_seq)
            assert repaired == s.out or by_out[out_seq] != s.body  # same bytes, unless out_seq was reused
        assert h.timestamp == parse(s.out).timestamp or by_out[out_seq] != s.body
        assert body == by_out[out_seq]
    for a, b in zip(rtx_seqs, rtx_seqs[1:], strict=False):
        assert b == (a + 1) & 0xFFFF
    # NACKs for sequence numbers never sent get nothing, or only what was sent under that number
    for out_seq in stray:
        repaired = fwd.retransmit(out_seq, buf)
        if repaired is not None:
            h = parse(repaired)
            body = payload(repaired, h)[2:] if rtx else payload(repaired, h)
            assert by_out.get(out_seq) == body


def test_long_epoch_through_forwarder_wraps_several_times() -> None:
    """§4: a single source running for more than 65536 packets keeps exact +1 output and NACK repair."""
    buf, fwd = LayerBuffer(ring_size=1024), video_forwarder(rtx=True)
    start = 65000
    prev = None
    n = 2 * 65536 + 500
    for i in range(n):
        data = build(SRC_PT, (start + i) & 0xFFFF, (i // 3) * 3000, 77, b"%d" % i)
        pkt = buf.push(data, parse(data), i == 0, i / 100)
        assert pkt[2] == start + i
        out = fwd.forward(pkt, i == 0, i / 100)
        assert out is not None
        seq = parse(out).sequence
        if prev is not None:
            assert seq == (prev + 1) & 0xFFFF
        prev = seq
    assert prev is not None
    for back in (0, 1, 500, 1023):
        out_seq = (prev - back) & 0xFFFF
        rtx = fwd.retransmit(out_seq, buf)
        assert rtx is not None
        assert payload(rtx, parse(rtx))[2:] == b"%d" % (n - 1 - back)
