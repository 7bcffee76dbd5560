"""Broadcast: one stream's source tracks and the viewers' forwarders — synchronous, no I/O.

The hot path is :meth:`Broadcast.on_rtp`: parse once, store once, then one synchronous pass over the
viewers' forwarders (rewrite, then the adapter's ``send`` protects and sends). No await per packet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from signaling.sdp import Codec
from webrtc_cast.codecs import keyframe_detector
from webrtc_cast.rtp import header as rtp_header
from webrtc_cast.rtp.header import RtpError
from webrtc_cast.sfu_tree.forwarder import Forwarder
from webrtc_cast.sfu_tree.keyframe_requests import KeyframeRequests
from webrtc_cast.sfu_tree.layer_buffer import LayerBuffer, Packet

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class SenderClock:
    """The publisher's latest sender report for a track: maps its RTP clock to wall-clock time."""

    ntp_seconds: float  # the publisher's NTP time in the SR, as Unix seconds
    rtp_time: int
    arrival: float


@dataclass(slots=True)
class SourceTrack:
    kind: str
    codec: Codec
    buffer: LayerBuffer
    keyframes: KeyframeRequests
    is_keyframe: Callable[[bytes], bool]
    sender_clock: SenderClock | None = None
    forwarders: list[Forwarder] = field(default_factory=list)
    window_bytes: int = 0  # bytes since the last bitrate sample
    bitrate: float = 0.0

    @property
    def clock_rate(self) -> int:
        return self.codec.clock_rate


class Broadcast:
    """One live stream: its publisher's tracks (which survive a publisher reconnect) and its viewers."""

    def __init__(
        self,
        name: str,
        nack_buffer_packets: int = 1024,
        keyframe_cache_packets: int = 3000,
        keyframe_request_interval: float = 0.5,
        keyframe_cache_max_age: float = 1.5,
    ) -> None:
        self.name = name
        self.tracks: dict[str, SourceTrack] = {}
        self._by_pt: dict[int, SourceTrack] = {}
        self._nack_buffer_packets = nack_buffer_packets
        self._keyframe_cache_packets = keyframe_cache_packets
        self._keyframe_request_interval = keyframe_request_interval
        self._keyframe_cache_max_age = keyframe_cache_max_age
        self.publisher_id: str | None = None
        self.live = False
        # set by the publisher session: send a keyframe request upstream for the track's media SSRC
        self.request_upstream_keyframe: Callable[[SourceTrack], None] | None = None
        self.on_live_change: Callable[[bool], None] | None = None
        self.viewer_count = 0
        # Packet taps beside the viewers (the LL-HLS packager, recorders): called once per stored packet with
        # (track, packet, keyframe, now). A tap must not raise; it is isolated and counted if it does.
        self.taps: list[Callable[[SourceTrack, Packet, bool, float], None]] = []
        self.tap_errors = 0
        self.malformed = 0
        self.unroutable = 0

    # -- publisher side ---------------------------------------------------------------------------------
    def attach_publisher(self, publisher_id: str, codecs: dict[str, Codec]) -> None:
        """A publisher's session is up (new or reconnecting): its codec per kind and payload types."""
        self.publisher_id = publisher_id
        self._by_pt = {}
        for kind, codec in codecs.items():
            track = self.tracks.get(kind)
            if track is None:
                track = SourceTrack(
                    kind=kind,
                    codec=codec,
                    buffer=LayerBuffer(self._nack_buffer_packets, self._keyframe_cache_packets),
                    keyframes=KeyframeRequests(self._keyframe_request_interval),
                    is_keyframe=keyframe_detector(codec.name),
                )
                self.tracks[kind] = track
            else:
                track.codec = codec
                track.is_keyframe = keyframe_detector(codec.name)
                track.buffer.reset()
                track.sender_clock = None
            for fwd in track.forwarders:
                fwd.set_source_codec(codec.key)
                fwd.source_restarted()
            self._by_pt[codec.payload_type] = track
        self.live = True
        if self.on_live_change is not None:
            self.on_live_change(True)

    def detach_publisher(self, publisher_id: str) -> None:
        if self.publisher_id != publisher_id:
            return  # an older session of a publisher that has already reconnected
        self.publisher_id = None
        self._by_pt = {}
        self.live = False
        if self.on_live_change is not None:
            self.on_live_change(False)

    def live_codecs(self) -> dict[str, Codec | None]:
        if not self.live:
            return {}
        return {kind: t.codec for kind, t in self.tracks.items()}

    def on_rtp(self, data: bytes, now: float) -> int:
        """One RTP packet from the publisher. Returns how many viewers it was sent to."""
        try:
            hdr = rtp_header.parse(data)
        except RtpError:
            self.malformed += 1
            return 0
        track = self._by_pt.get(hdr.payload_type)
        if track is None:
            self.unroutable += 1
            return 0
        keyframe = track.is_keyframe(data[hdr.payload_offset :]) if track.kind == "video" else False
        pkt = track.buffer.push(data, hdr, keyframe, now)
        track.window_bytes += len(data)
        if keyframe:
            track.keyframes.keyframe_arrived()
        for tap in self.taps:
            try:
                tap(track, pkt, keyframe, now)
            except Exception:  # a broken packager must not stop the viewers
                self.tap_errors += 1
                logger.exception("broadcast %s: tap failed", self.name)
        # The hot loop: per viewer only the mapping decision and one sink call (header write, SRTP, sendto).
        payload = memoryview(data)[hdr.payload_offset :]
        size = len(payload) + 12
        b0 = 0xA0 if hdr.padding else 0x80
        marker = 0x80 if hdr.marker else 0
        sent = 0
        for fwd in track.forwarders:
            mapped = fwd.map(pkt, keyframe, now)
            if mapped is not None and fwd.sink(payload, b0, fwd.out_pt | marker, mapped[0], mapped[1], fwd.ssrc):
                fwd.sent_packets += 1
                fwd.sent_octets += size
                sent += 1
        return sent

    def on_sender_report(self, ssrc: int, ntp_seconds: float, rtp_time: int, now: float) -> None:
        for track in self.tracks.values():
            if track.buffer.ssrc == ssrc:
                track.sender_clock = SenderClock(ntp_seconds, rtp_time, now)

    def sample_bitrates(self, interval: float) -> dict[str, float]:
        out = {}
        for kind, track in self.tracks.items():
            track.bitrate = track.window_bytes * 8 / interval if interval > 0 else 0.0
            track.window_bytes = 0
            out[kind] = track.bitrate
        return out

    # -- viewer side ------------------------------------------------------------------------------------
    def add_forwarder(self, fwd: Forwarder, now: float) -> list[bytes]:
        """Attach a viewer's forwarder; returns the keyframe-cache burst to send at once (video)."""
        track = self.tracks.get(fwd.kind)
        if track is None:
            # Not live yet: create the track slot so the viewer is attached when the publisher arrives.
            track = self._empty_track(fwd.kind)
        track.forwarders.append(fwd)
        if not self.live:
            return []
        fwd.set_source_codec(track.codec.key)
        if fwd.kind != "video":
            return []
        burst = fwd.start_burst(track.buffer.keyframe_packets(now, self._keyframe_cache_max_age), now)
        if not burst:
            self.request_keyframe(fwd.kind, now)
        return burst

    def _empty_track(self, kind: str) -> SourceTrack:
        placeholder = Codec(0, "opus" if kind == "audio" else "VP8", 48000 if kind == "audio" else 90000)
        track = SourceTrack(
            kind=kind,
            codec=placeholder,
            buffer=LayerBuffer(self._nack_buffer_packets, self._keyframe_cache_packets),
            keyframes=KeyframeRequests(self._keyframe_request_interval),
            is_keyframe=keyframe_detector(placeholder.name),
        )
        self.tracks[kind] = track
        return track

    def remove_forwarder(self, fwd: Forwarder) -> None:
        track = self.tracks.get(fwd.kind)
        if track is not None and fwd in track.forwarders:
            track.forwarders.remove(fwd)

    def request_keyframe(self, kind: str, now: float) -> bool:
        """A viewer asked for a keyframe (PLI/FIR or join): merged and throttled upstream."""
        track = self.tracks.get(kind)
        if track is None or not self.live:
            return False
        if track.keyframes.request(now):
            if self.request_upstream_keyframe is not None:
                self.request_upstream_keyframe(track)
            return True
        return False

    def poll_keyframes(self, now: float) -> None:
        for track in self.tracks.values():
            if self.live and track.keyframes.poll(now) and self.request_upstream_keyframe is not None:
                self.request_upstream_keyframe(track)

    @property
    def idle(self) -> bool:
        return not self.live and not any(t.forwarders for t in self.tracks.values())
