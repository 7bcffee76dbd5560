"""H.264 RTP (RFC 6184, packetization-mode 0/1) to access units — pure.

Packets come in as the SFU stores them: payload bytes, RTP timestamp, marker bit and the extended sequence
number. A frame (access unit) is every packet with one timestamp; it is complete at the marker bit, or when a
packet with a newer timestamp arrives. FU-A fragments are reassembled, STAP-A entries split. A sequence gap
inside a frame drops that frame, and after any loss the depacketizer waits for the next IDR: the frames in
between reference a picture we do not have, and a broken picture in a CMAF part is worse than a short gap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from webrtc_cast.codecs.h264 import NAL_FU_A, NAL_IDR, NAL_PPS, NAL_SPS, NAL_STAP_A, nal_units

START_CODE = b"\x00\x00\x00\x01"


@dataclass(slots=True)
class AccessUnit:
    """One complete frame: its NAL units (no start codes) and RTP timestamp (extended, 64-bit)."""

    timestamp: int
    nals: list[bytes]
    keyframe: bool  # holds an IDR slice

    def annexb(self) -> bytes:
        return b"".join(START_CODE + n for n in self.nals)


@dataclass(slots=True)
class _Frame:
    timestamp: int
    nals: list[bytes] = field(default_factory=list)
    fu: bytearray | None = None  # FU-A reassembly in progress
    broken: bool = False


class H264Depacketizer:
    """Feed packets with :meth:`push`; complete access units come back. Counts what it drops."""

    def __init__(self) -> None:
        self._frame: _Frame | None = None
        self._next_seq: int | None = None
        self._ts_high = 0  # RTP timestamp unwrapping
        self._last_ts: int | None = None
        self._need_idr = True
        self.sps: bytes | None = None
        self.pps: bytes | None = None
        self.frames = 0
        self.dropped_frames = 0
        self.lost_packets = 0

    def _unwrap_ts(self, ts: int) -> int:
        if self._last_ts is not None:
            delta = (ts - self._last_ts) & 0xFFFFFFFF
            if delta >= 0x80000000:  # backwards (reordered): same epoch, or the previous one
                return self._ts_high + ts - (0x100000000 if ts > self._last_ts else 0)
            if ts < self._last_ts:
                self._ts_high += 0x100000000
        self._last_ts = ts
        return self._ts_high + ts

    def push(self, payload: bytes, timestamp: int, marker: bool, ext_seq: int) -> list[AccessUnit]:
        """One RTP payload (after the header, padding removed). Returns 0, 1 or 2 complete access units."""
        out: list[AccessUnit] = []
        if self._next_seq is not None and ext_seq < self._next_seq:
            return out  # late or duplicate (e.g. a retransmission after we gave up on the frame)
        gap = self._next_seq is not None and ext_seq != self._next_seq
        if gap:
            self.lost_packets += ext_seq - self._next_seq  # type: ignore[operator]
        self._next_seq = ext_seq + 1
        ts = self._unwrap_ts(timestamp)
        frame = self._frame
        if frame is not None and frame.timestamp != ts:
            # A new timestamp: the previous frame lost its marker packet (or the sender sets none).
            self._finish(frame, out, complete=not gap)
            frame = None
        if frame is None:
            frame = self._frame = _Frame(ts)
        if gap:
            frame.broken = True
        self._add(frame, payload)
        if marker:
            self._finish(frame, out, complete=True)
        return out

    def _add(self, frame: _Frame, payload: bytes) -> None:
        if not payload:
            return
        kind = payload[0] & 0x1F
        if kind == NAL_FU_A:
            if len(payload) < 2:
                frame.broken = True
                return
            fu_header = payload[1]
            start, end = fu_header & 0x80, fu_header & 0x40
            if start:
                if frame.fu is not None:
                    frame.broken = True
                frame.fu = bytearray([(payload[0] & 0xE0) | (fu_header & 0x1F)])
            elif frame.fu is None:
                frame.broken = True
                return
            frame.fu += payload[2:]
            if end:
                frame.nals.append(bytes(frame.fu))
                frame.fu = None
        elif kind == NAL_STAP_A or 1 <= kind <= 23:
            frame.nals.extend(nal_units(payload))
        else:
            frame.broken = True  # STAP-B, MTAP, FU-B: not used by WebRTC senders (packetization-mode 1)

    def _finish(self, frame: _Frame, out: list[AccessUnit], complete: bool) -> None:
        self._frame = None
        if frame.fu is not None or not complete:
            frame.broken = True
        if frame.broken or not frame.nals:
            self.dropped_frames += 1
            self._need_idr = True
            return
        keyframe = False
        for nal in frame.nals:
            kind = nal[0] & 0x1F
            if kind == NAL_SPS:
                self.sps = nal
            elif kind == NAL_PPS:
                self.pps = nal
            elif kind == NAL_IDR:
                keyframe = True
        if self._need_idr and not (keyframe and self.sps and self.pps):
            self.dropped_frames += 1
            return
        self._need_idr = False
        self.frames += 1
        out.append(AccessUnit(frame.timestamp, frame.nals, keyframe))


def strip_padding(data: bytes, payload_offset: int, padding: bool) -> bytes:
    """The RTP payload without the padding bytes the P bit announces (RFC 3550 §5.1)."""
    end = len(data)
    if padding and end > payload_offset:
        end -= data[-1]
    return data[payload_offset:end] if end > payload_offset else b""
