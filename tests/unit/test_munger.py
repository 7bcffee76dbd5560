"""Munger: per-viewer sequence-number and timestamp rewriting (webrtc_cast.sfu_tree.munger)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from webrtc_cast.rtp.header import seq_delta, ts_delta
from webrtc_cast.sfu_tree.munger import Munger


def test_first_epoch_starts_at_initial_values() -> None:
    m = Munger(90000, initial_seq=1000, initial_ts=5000)
    assert not m.started
    assert m.source_ssrc is None
    m.switch(0xAAAA, 40000, 123456, now=1.0)
    assert m.started
    assert m.source_ssrc == 0xAAAA
    assert m.map(0xAAAA, 40000, 123456, 1.0) == (1000, 5000)
    assert m.map(0xAAAA, 40001, 126456, 1.033) == (1001, 8000)
    assert m.last_seq == 1001
    assert m.last_ts == 8000
    assert m.last_time == 1.033


def test_random_initial_values_are_in_range() -> None:
    for _ in range(20):
        m = Munger(48000)
        assert 0 <= m.last_seq <= 0xFFFF
        assert 0 <= m.last_ts <= 0xFFFFFFFF


def test_initial_values_wrap() -> None:
    m = Munger(90000, initial_seq=0x1FFFF, initial_ts=0x1FFFFFFFF)
    m.switch(1, 0, 0, 0.0)
    assert m.map(1, 0, 0, 0.0) == (0xFFFF, 0xFFFFFFFF)
    assert m.map(1, 1, 10, 0.0) == (0, 9)


def test_other_ssrc_and_pre_epoch_packets_are_dropped() -> None:
    m = Munger(90000, initial_seq=0, initial_ts=0)
    assert m.map(1, 10, 0, 0.0) is None  # not started
    m.switch(1, 10, 0, 0.0)
    assert m.map(2, 10, 0, 0.0) is None
    assert m.map(1, 9, 0, 0.0) is None  # older than the epoch's first packet
    assert m.map(1, 10, 0, 0.0) == (0, 0)


def test_switch_continues_sequence_and_advances_timestamp_by_wall_clock() -> None:
    m = Munger(90000, initial_seq=65534, initial_ts=0xFFFFFF00)
    m.switch(1, 100, 0, now=10.0)
    assert m.map(1, 100, 0, 10.0) == (65534, 0xFFFFFF00)
    assert m.map(1, 101, 3000, 10.033) == (65535, (0xFFFFFF00 + 3000) & 0xFFFFFFFF)
    # reconnect: new ssrc, arbitrary seq and ts; 0.5 s later
    m.switch(2, 7, 999_999, now=10.533)
    out = m.map(2, 7, 999_999, 10.533)
    assert out is not None
    assert out[0] == 0  # 65535 + 1, wrapped
    assert ts_delta(out[1], (0xFFFFFF00 + 3000) & 0xFFFFFFFF) == int(0.5 * 90000)
    assert m.map(1, 102, 6000, 10.6) is None  # the old source is gone


def test_switch_advances_timestamp_at_least_one_tick() -> None:
    m = Munger(90000, initial_seq=0, initial_ts=100)
    m.switch(1, 0, 0, now=5.0)
    m.map(1, 0, 0, 5.0)
    m.switch(2, 0, 0, now=5.0)  # same instant
    assert m.map(2, 0, 0, 5.0) == (1, 101)
    m.switch(3, 0, 0, now=4.0)  # clock went backwards: still at least one tick
    assert m.map(3, 0, 0, 4.0) == (2, 102)


def test_reordered_packet_keeps_its_place_without_moving_last_seq() -> None:
    m = Munger(90000, initial_seq=10, initial_ts=0)
    m.switch(1, 100, 1000, 0.0)
    for s in (100, 102, 103):
        m.map(1, s, s * 10, 0.0)
    assert m.last_seq == 13
    assert m.map(1, 101, 1010, 0.1) == (11, 1010 - 1000)
    assert m.last_seq == 13
    assert m.last_ts == 1030 - 1000


def test_source_seq_and_output_ts_invert_the_mapping() -> None:
    m = Munger(90000, initial_seq=65000, initial_ts=7)
    assert m.source_seq(1) is None
    m.switch(9, 70000, 4_000_000_000, 0.0)  # extended source seq beyond 16 bits
    for ext in range(70000, 71000, 37):
        out = m.map(9, ext, 4_000_000_000 + ext, 0.0)
        assert out is not None
        assert m.source_seq(out[0]) == ext & 0xFFFF
        assert m.output_ts(4_000_000_000 + ext) == out[1]


def test_long_epoch_keeps_mapping_across_many_wraps() -> None:
    """More than 65536 packets in one epoch: extended source numbers keep the mapping exact (§4)."""
    m = Munger(90000, initial_seq=12345, initial_ts=0)
    start = 65530
    m.switch(5, start, 0, 0.0)
    n = 3 * 65536 + 100
    prev: tuple[int, int] | None = None
    for i in range(n):
        ext = start + i
        out = m.map(5, ext, (i * 3000) & 0xFFFFFFFF, i / 30)
        assert out is not None
        if prev is not None:
            assert out[0] == (prev[0] + 1) & 0xFFFF
            assert ts_delta(out[1], prev[1]) == 3000
        prev = out
        if i % 5000 == 0:
            assert m.source_seq(out[0]) == ext & 0xFFFF
    assert prev is not None and prev[0] == (12345 + n - 1) & 0xFFFF
    # and a reordered packet from deep into the epoch still maps to its own place
    late = start + n - 3
    assert m.map(5, late, 0, 0.0) == ((12345 + n - 3) & 0xFFFF, 0)


@settings(max_examples=60, deadline=None)
@given(
    initial_seq=st.integers(0, 0xFFFF),
    initial_ts=st.integers(0, 0xFFFFFFFF),
    epochs=st.lists(
        st.tuples(
            st.integers(0, 0xFFFFFFFF),  # ssrc
            st.integers(0, 200_000),  # first extended seq
            st.integers(0, 0xFFFFFFFF),  # first ts
            st.integers(1, 300),  # packets
            st.integers(0, 6000),  # ts step per packet
            st.floats(0, 5),  # gap before the switch, seconds
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_output_continuous_across_switches(
    initial_seq: int, initial_ts: int, epochs: list[tuple[int, int, int, int, int, float]]
) -> None:
    m = Munger(90000, initial_seq=initial_seq, initial_ts=initial_ts)
    now = 0.0
    outputs: list[tuple[int, int]] = []
    for ssrc, first_seq, first_ts, count, step, gap in epochs:
        now += gap
        m.switch(ssrc, first_seq, first_ts, now)
        for i in range(count):
            out = m.map(ssrc, first_seq + i, (first_ts + i * step) & 0xFFFFFFFF, now)
            assert out is not None
            outputs.append(out)
            now += 0.01
    assert outputs[0] == (initial_seq, initial_ts)
    for (s0, t0), (s1, t1) in zip(outputs, outputs[1:], strict=False):
        assert seq_delta(s1, s0) == 1
        assert ts_delta(t1, t0) >= 0
