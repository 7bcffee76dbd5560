"""Munger: per-viewer rewriting of sequence numbers and timestamps — pure.

Output sequence numbers advance by one per forwarded packet across source switches (a publisher reconnect,
later a layer switch), and output timestamps never go backwards (DESIGN.md §4).
"""

from __future__ import annotations

import random


class Munger:
    __slots__ = (
        "clock_rate",
        "_ssrc",
        "_seq_offset",
        "_ts_offset",
        "_epoch_first_seq",
        "last_seq",
        "last_ts",
        "_last_time",
        "_started",
    )

    def __init__(self, clock_rate: int, initial_seq: int | None = None, initial_ts: int | None = None) -> None:
        self.clock_rate = clock_rate
        self._ssrc: int | None = None
        self._seq_offset = 0
        self._ts_offset = 0
        self._epoch_first_seq = 0
        rnd = random.Random()
        self.last_seq = (initial_seq if initial_seq is not None else rnd.randrange(0x10000)) & 0xFFFF
        self.last_ts = (initial_ts if initial_ts is not None else rnd.randrange(1 << 32)) & 0xFFFFFFFF
        self._last_time: float | None = None
        self._started = False

    @property
    def source_ssrc(self) -> int | None:
        return self._ssrc

    def switch(self, ssrc: int, first_seq: int, first_ts: int, now: float) -> None:
        """Start a new epoch: the packet (ssrc, first_seq, first_ts) will be output as last_seq + 1.

        Sequence numbers here are *extended* (unwrapped, see ``rtp.header.SeqUnwrapper``) so that an epoch
        can run for hours.

        Its timestamp continues from the last output timestamp plus the wall-clock time since then, so
        timestamps never go backwards and the receiver's clock keeps running.
        """
        if not self._started:
            advance = 0
        else:
            elapsed = 0.0 if self._last_time is None else max(0.0, now - self._last_time)
            advance = max(1, int(elapsed * self.clock_rate))
        out_seq = (self.last_seq + (1 if self._started else 0)) & 0xFFFF
        out_ts = (self.last_ts + advance) & 0xFFFFFFFF
        self._ssrc = ssrc
        self._seq_offset = (out_seq - first_seq) & 0xFFFF
        self._ts_offset = (out_ts - first_ts) & 0xFFFFFFFF
        self._epoch_first_seq = first_seq
        if not self._started:
            self.last_seq = (out_seq - 1) & 0xFFFF
        self._started = True

    def map(self, ssrc: int, seq: int, ts: int, now: float) -> tuple[int, int] | None:
        """Output (seq, ts) for a packet (extended ``seq``) of the current source, or None for packets to
        drop (another source, or older than the start of this epoch)."""
        if ssrc != self._ssrc or seq < self._epoch_first_seq:
            return None
        out_seq = (seq + self._seq_offset) & 0xFFFF
        out_ts = (ts + self._ts_offset) & 0xFFFFFFFF
        # seq_delta(out_seq, last_seq) > 0 and ts_delta(out_ts, last_ts) > 0, inlined: this runs once per packet
        # per viewer (the forwarding hot path; benchmarks/hot_path.py), where two function calls are measurable
        if 0 < ((out_seq - self.last_seq) & 0xFFFF) < 0x8000:
            self.last_seq = out_seq
            if 0 < ((out_ts - self.last_ts) & 0xFFFFFFFF) < 0x80000000:
                self.last_ts = out_ts
            self._last_time = now
        return out_seq, out_ts

    def source_seq(self, out_seq: int) -> int | None:
        """The source sequence number that produced ``out_seq`` in the current epoch (for NACKs)."""
        if self._ssrc is None:
            return None
        return (out_seq - self._seq_offset) & 0xFFFF

    def forget_source(self) -> None:
        """The next packet starts a new epoch even if its SSRC equals the current one (a source restart)."""
        self._ssrc = None

    @property
    def epoch_first_seq(self) -> int:
        """The extended source sequence number the current epoch started at."""
        return self._epoch_first_seq

    def output_ts(self, source_ts: int) -> int:
        return (source_ts + self._ts_offset) & 0xFFFFFFFF

    @property
    def started(self) -> bool:
        return self._started

    @property
    def last_time(self) -> float | None:
        return self._last_time
