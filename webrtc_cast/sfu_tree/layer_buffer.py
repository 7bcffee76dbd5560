"""LayerBuffer: the receive side of one incoming track (layer) — pure.

Keeps a ring of recent packets by sequence number (the NACK store) and the packets of the current GOP from
its first keyframe packet (the keyframe cache), so a joining viewer starts on a keyframe at once.
"""

from __future__ import annotations

from webrtc_cast.rtp.header import RtpHeader, SeqUnwrapper

# (packet bytes, parsed header, extended sequence number)
Packet = tuple[bytes, RtpHeader, int]


class LayerBuffer:
    """Recent packets of one SSRC stream. Capacities are settings (see webrtc_cast.settings)."""

    __slots__ = (
        "_ring",
        "_size",
        "_gop",
        "_gop_limit",
        "_frame_start",
        "_frame_ts",
        "ssrc",
        "highest_seq",
        "keyframes",
        "gop_overflows",
        "packets",
        "octets",
        "_unwrap",
        "gop_started_at",
    )

    def __init__(self, ring_size: int = 1024, gop_limit: int = 3000) -> None:
        if ring_size & (ring_size - 1):
            raise ValueError("ring_size must be a power of two")
        self._ring: list[Packet | None] = [None] * ring_size
        self._size = ring_size
        self._gop: list[Packet] | None = None
        self._gop_limit = gop_limit
        self._frame_start: list[Packet] = []  # packets of the newest frame (same timestamp) so far
        self._frame_ts: int | None = None
        self.ssrc: int | None = None
        self.highest_seq: int | None = None  # extended
        self.keyframes = 0
        self.gop_overflows = 0
        self.packets = 0
        self.octets = 0
        self._unwrap = SeqUnwrapper()
        self.gop_started_at: float | None = None

    def push(self, data: bytes, header: RtpHeader, keyframe: bool, now: float = 0.0) -> Packet:
        """Store one packet. ``keyframe``: the payload carries (the start of) a keyframe.

        Returns the stored entry, whose third item is the extended sequence number.
        """
        if header.ssrc != self.ssrc:
            self.reset()
            self.ssrc = header.ssrc
        self.packets += 1
        self.octets += len(data)
        ext = self._unwrap.unwrap(header.sequence)
        pkt = (data, header, ext)
        self._ring[header.sequence & (self._size - 1)] = pkt
        if self.highest_seq is None or ext > self.highest_seq:
            self.highest_seq = ext
            in_order = True
        else:
            in_order = False
        if header.timestamp != self._frame_ts and in_order:
            self._frame_ts = header.timestamp
            self._frame_start = []
        if in_order:
            self._frame_start.append(pkt)
        if keyframe and in_order and header.timestamp == self._frame_ts and (
            self._gop is None or self._gop[0][1].timestamp != header.timestamp
        ):
            # New GOP: starts with the first packet of this keyframe's frame (e.g. the SPS/PPS STAP-A).
            self._gop = list(self._frame_start)
            self.gop_started_at = now
            self.keyframes += 1
            return pkt
        if self._gop is not None and in_order:
            if self._gop[-1] is not pkt:
                self._gop.append(pkt)
            if len(self._gop) > self._gop_limit:
                self._gop = None
                self.gop_overflows += 1
        return pkt

    def get(self, sequence: int) -> Packet | None:
        """The stored packet with this sequence number, if still in the ring."""
        pkt = self._ring[sequence & (self._size - 1)]
        if pkt is not None and pkt[1].sequence == sequence:
            return pkt
        return None

    def keyframe_packets(self, now: float | None = None, max_age: float | None = None) -> list[Packet]:
        """Packets from the latest keyframe to now; empty when none is cached, or when it arrived more than
        ``max_age`` seconds before ``now`` (a burst of many seconds of old media would start the viewer late)."""
        if not self._gop:
            return []
        started = self.gop_started_at
        if max_age is not None and now is not None and started is not None and now - started > max_age:
            return []
        return list(self._gop)

    @property
    def has_keyframe(self) -> bool:
        return bool(self._gop)

    def reset(self) -> None:
        self._ring = [None] * self._size
        self._gop = None
        self._frame_start = []
        self._frame_ts = None
        self.highest_seq = None
        self._unwrap = SeqUnwrapper()
        self.gop_started_at = None
