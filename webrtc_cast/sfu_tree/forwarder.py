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
        "out_pt",
        "_rtx_pt",
        "_rtx_seq",
        "packets",
        "octets",
        "dropped_no_codec",
        "retransmitted",
        "nack_misses",
        "send",
        "sink",
        "batch_sink",
        "sent_packets",
        "sent_octets",
        "current_layer",
        "target_layer",
        "pinned_rid",
        "max_height",
        "layer_cap",
        "switch_since",
        "on_switch",
        "abs_send_time_id",
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
        # the viewer's payload type for the publisher's current codec (None: not negotiated). A plain attribute,
        # not a property: the hot loop (Broadcast.on_rtp) reads it once per packet per viewer. Set it only
        # through set_source_codec.
        self.out_pt: int | None = None
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
        # set by the adapter while ``sink`` is the bare fast sink (None otherwise): RtpBatchSink for ingest runs
        self.batch_sink = None
        self.sent_packets = 0  # counted by whoever sends (the adapter), read by /metrics at scrape time
        self.sent_octets = 0
        # layers (simulcast): what is forwarded now, and what a switch is waiting for (a keyframe of it)
        self.current_layer: str | None = None
        self.target_layer: str | None = None
        self.pinned_rid: str | None = None  # the viewer's manual choice; None = automatic
        self.max_height: int | None = None  # automatic selection never goes above this
        self.switch_since: float | None = None  # when the pending switch asked for its keyframe
        self.layer_cap = 0  # ... and stays this many layers below the top (LayerSelector: loss and REMB)
        self.on_switch = None  # Callable[[Forwarder, old layer, new layer], None], set by the Broadcast
        # the viewer's abs-send-time extension id (0: not negotiated): video packets then carry our send time,
        # from which the viewer's receive-side estimator computes the REMB that drives automatic layer choice
        self.abs_send_time_id = 0

    def set_source_codec(self, codec_key: str) -> bool:
        """The publisher's codec for this track. False if this viewer did not negotiate it."""
        if codec_key == self._source_codec:
            return self.out_pt is not None
        self._source_codec = codec_key
        self.out_pt = self.payload_types.get(codec_key)
        self._rtx_pt = self.rtx_payload_types.get(self.out_pt) if self.out_pt is not None else None
        if self.needs_keyframe:
            self.waiting_keyframe = True
        return self.out_pt is not None

    def source_restarted(self) -> None:
        """The publisher reconnected (possibly reusing its SSRC): start a new epoch at its next keyframe."""
        self.munger.forget_source()
        if self.needs_keyframe:
            self.waiting_keyframe = True

    def forward(self, pkt: Packet, keyframe: bool, now: float, layer: str | None = None) -> bytes | None:
        """The packet rewritten for this viewer, or None when it is not forwarded."""
        mapped = self.map(pkt, keyframe, now, layer)
        if mapped is None:
            return None
        return rewrite(pkt[0], pkt[1], self.out_pt, mapped[0], mapped[1], self.ssrc)  # type: ignore[arg-type]

    def map(self, pkt: Packet, keyframe: bool, now: float, layer: str | None = None) -> tuple[int, int] | None:
        """The viewer's (sequence number, timestamp) for this packet, or None when it is not forwarded.

        ``layer`` names the incoming stream the packet belongs to (None: the target layer). The current layer is
        forwarded until a keyframe of the target layer arrives; that packet starts a new munger epoch, so
        sequence numbers stay continuous and timestamps keep running across switches (DESIGN.md §4).
        The decision half of :meth:`forward`; the hot path writes the header itself (see Broadcast.on_rtp).
        """
        data, header, ext_seq = pkt
        if self.out_pt is None:
            self.dropped_no_codec += 1
            return None
        munger = self.munger
        if layer is None:
            layer = self.target_layer
        # munger._ssrc is Munger.source_ssrc without the property call (once per packet per viewer)
        if layer != self.current_layer or header.ssrc != munger._ssrc or self.waiting_keyframe:
            # not what is being forwarded now: only the target layer's keyframe (any packet for audio) switches
            if layer != self.target_layer or (self.needs_keyframe and not keyframe):
                return None
            munger.switch(header.ssrc, ext_seq, header.timestamp, now)
            self.waiting_keyframe = False
            old, self.current_layer = self.current_layer, layer
            if old != layer and self.on_switch is not None:
                self.on_switch(self, old, layer)
        mapped = munger.map(header.ssrc, ext_seq, header.timestamp, now)
        if mapped is None:
            return None
        self.packets += 1
        self.octets += len(data) - header.payload_offset
        return mapped

    def start_burst(self, packets: list[Packet], now: float, layer: str | None = None) -> list[bytes]:
        """Join on the keyframe cache: the packets from the latest keyframe, rewritten, to send at once."""
        if not packets:
            return []
        if self.needs_keyframe:
            self.waiting_keyframe = True
        out = []
        for pkt in packets:
            rewritten = self.forward(pkt, pkt is packets[0], now, layer)
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
            or self.out_pt is None
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
        return rewrite(data, header, self.out_pt, out_seq, out_ts, self.ssrc)
