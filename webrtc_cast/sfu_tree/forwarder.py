"""Forwarder: one outbound stream (one track) to one viewer — pure.

Keyframe gating, sequence/timestamp munging, payload-type mapping into the viewer's negotiated numbers,
NACK repair (plain or RTX, RFC 4588) and the counters a sender report needs. It returns the bytes to send;
the adapter protects and sends them.
"""

from __future__ import annotations

import struct

from webrtc_cast.rtp.header import rewrite
from webrtc_cast.sfu_tree.layer_buffer import LayerBuffer, Packet
from webrtc_cast.sfu_tree.munger import Munger

_RTX_HDR = struct.Struct("!BBHII")
_OSN = struct.Struct("!H")


class Forwarder:
    __slots__ = (
        "kind",
        "ssrc",
        "rtx_ssrc",
        "payload_types",
        "rtx_payload_types",
        "munger",
        "needs_keyframe",
        "waiting_keyframe",
        "_source_codec",
        "_out_pt",
        "_rtx_pt",
        "_rtx_seq",
        "packets",
        "octets",
        "dropped_no_codec",
        "retransmitted",
        "nack_misses",
        "send",
        "sink",
        "sent_packets",
        "sent_octets",
    )

    def __init__(
        self,
        kind: str,
        clock_rate: int,
        ssrc: int,
        payload_types: dict[str, int],
        rtx_payload_types: dict[int, int] | None = None,
        rtx_ssrc: int | None = None,
    ) -> None:
        self.kind = kind
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc
        self.payload_types = payload_types
        self.rtx_payload_types = rtx_payload_types or {}
        self.munger = Munger(clock_rate)
        self.needs_keyframe = kind == "video"
        self.waiting_keyframe = self.needs_keyframe
        self._source_codec: str | None = None
        self._out_pt: int | None = None
        self._rtx_pt: int | None = None
        self._rtx_seq = 0
        self.packets = 0
        self.octets = 0
        self.dropped_no_codec = 0
        self.retransmitted = 0
        self.nack_misses = 0
        self.send = None  # set by the adapter: Callable[[bytes], bool] for whole packets (bursts, repairs)
        # set by the adapter: the hot-path sender (payload view, b0, b1, seq, ts, ssrc) -> bool
        self.sink = None
        self.sent_packets = 0  # counted by whoever sends (the adapter), read by /metrics at scrape time
        self.sent_octets = 0

    def set_source_codec(self, codec_key: str) -> bool:
        """The publisher's codec for this track. False if this viewer did not negotiate it."""
        if codec_key == self._source_codec:
            return self._out_pt is not None
        self._source_codec = codec_key
        self._out_pt = self.payload_types.get(codec_key)
        self._rtx_pt = self.rtx_payload_types.get(self._out_pt) if self._out_pt is not None else None
        if self.needs_keyframe:
            self.waiting_keyframe = True
        return self._out_pt is not None

    @property
    def out_pt(self) -> int | None:
        """The viewer's payload type for the publisher's current codec."""
        return self._out_pt

    def source_restarted(self) -> None:
        """The publisher reconnected (possibly reusing its SSRC): start a new epoch at its next keyframe."""
        self.munger.forget_source()
        if self.needs_keyframe:
            self.waiting_keyframe = True

    def forward(self, pkt: Packet, keyframe: bool, now: float) -> bytes | None:
        """The packet rewritten for this viewer, or None when it is not forwarded."""
        mapped = self.map(pkt, keyframe, now)
        if mapped is None:
            return None
        return rewrite(pkt[0], pkt[1], self._out_pt, mapped[0], mapped[1], self.ssrc)  # type: ignore[arg-type]

    def map(self, pkt: Packet, keyframe: bool, now: float) -> tuple[int, int] | None:
        """The viewer's (sequence number, timestamp) for this packet, or None when it is not forwarded.

        The decision half of :meth:`forward`; the hot path writes the header itself (see Broadcast.on_rtp).
        """
        data, header, ext_seq = pkt
        if self._out_pt is None:
            self.dropped_no_codec += 1
            return None
        munger = self.munger
        if header.ssrc != munger.source_ssrc:
            if self.needs_keyframe and not keyframe:
                return None  # keep the current source until the new one's keyframe (DESIGN.md §4)
            munger.switch(header.ssrc, ext_seq, header.timestamp, now)
            self.waiting_keyframe = False
        elif self.waiting_keyframe:
            if not keyframe:
                return None
            munger.switch(header.ssrc, ext_seq, header.timestamp, now)
            self.waiting_keyframe = False
        mapped = munger.map(header.ssrc, ext_seq, header.timestamp, now)
        if mapped is None:
            return None
        self.packets += 1
        self.octets += len(data) - header.payload_offset
        return mapped

    def start_burst(self, packets: list[Packet], now: float) -> list[bytes]:
        """Join on the keyframe cache: the packets from the latest keyframe, rewritten, to send at once."""
        if not packets:
            return []
        if self.needs_keyframe:
            self.waiting_keyframe = True
        out = []
        for pkt in packets:
            rewritten = self.forward(pkt, pkt is packets[0], now)
            if rewritten is not None:
                out.append(rewritten)
        return out

    def retransmit(self, out_seq: int, buffer: LayerBuffer) -> bytes | None:
        """Repair one lost packet from the buffer: as RTX when negotiated, else as the original packet."""
        source_seq = self.munger.source_seq(out_seq)
        pkt = buffer.get(source_seq) if source_seq is not None else None
        # A packet from before this epoch's start (e.g. the new source's packets that came before its keyframe)
        # was never sent under this mapping: out_seq belonged to the previous source.
        if (
            pkt is None
            or pkt[1].ssrc != self.munger.source_ssrc
            or pkt[2] < self.munger.epoch_first_seq
            or self._out_pt is None
        ):
            self.nack_misses += 1
            return None
        data, header, _ = pkt
        out_ts = self.munger.output_ts(header.timestamp)
        self.retransmitted += 1
        if self._rtx_pt is not None and self.rtx_ssrc is not None:
            self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
            end = len(data) - (data[-1] if header.padding else 0)
            b1 = self._rtx_pt | (0x80 if header.marker else 0)
            return (
                _RTX_HDR.pack(0x80, b1, self._rtx_seq, out_ts, self.rtx_ssrc)
                + _OSN.pack(out_seq)
                + data[header.payload_offset : end]
            )
        return rewrite(data, header, self._out_pt, out_seq, out_ts, self.ssrc)
