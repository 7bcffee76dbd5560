"""Broadcast: one stream's source layers and the viewers' forwarders — synchronous, no I/O.

A *track* here is one incoming RTP stream with its own LayerBuffer: "audio", "video", or one simulcast layer
"video/<rid>". A viewer's video Forwarder is subscribed to the layer it forwards, and during a layer switch also
to the target layer, whose keyframe completes the switch (then it leaves the old layer's list).

The hot path is :meth:`Broadcast.on_rtp`: parse once, store once, then one synchronous pass over the layer's
forwarders (map, then the adapter's sink writes, protects and sends). No await per packet.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from webrtc_cast.codecs import h264, keyframe_detector, vp8
from webrtc_cast.rtp import header as rtp_header
from webrtc_cast.rtp.header import RtpError
from webrtc_cast.sdp.description import Codec
from webrtc_cast.sdp.simulcast import rank_hint
from webrtc_cast.sfu_tree.forwarder import Forwarder
from webrtc_cast.sfu_tree.keyframe_requests import KeyframeRequests
from webrtc_cast.sfu_tree.layer_buffer import LayerBuffer, Packet

logger = logging.getLogger(__name__)

_ABS_SEND_TIME_BLOCK = struct.Struct("!II").pack  # 0xBEDE, length 1 word; id << 4 | (3 - 1), 24-bit time

# Ingest runs (Broadcast.on_rtp_run): one run's fan-out should take about RUN_BUDGET seconds at most, estimated
# at RUN_COST_PER_VIEWER per packet and viewer (this machine: ~5 µs batched, benchmarks/hot_path.py).
RUN_BUDGET = 0.003
RUN_COST_PER_VIEWER = 5e-6
MAX_RUN = 16

SWITCH_RETRY = 1.0  # seconds a layer switch waits for the target's keyframe before asking again


@dataclass(slots=True)
class SenderClock:
    """The publisher's latest sender report for a track: maps its RTP clock to wall-clock time."""

    ntp_seconds: float  # the publisher's NTP time in the SR, as Unix seconds
    rtp_time: int
    arrival: float


@dataclass(slots=True)
class PublishedTrack:
    """What a publisher's session sends for one kind (from the negotiated offer)."""

    kind: str
    codec: Codec
    rids: list[str] = field(default_factory=list)  # simulcast layers, empty for one layer
    rid_ext_id: int | None = None  # header extension carrying the rid
    legacy_ssrcs: list[int] = field(default_factory=list)  # ssrc-group:SIM simulcast, low to high


@dataclass(slots=True, eq=False)
class SourceTrack:
    key: str  # "audio", "video" or "video/<rid>"
    kind: str
    codec: Codec
    buffer: LayerBuffer
    keyframes: KeyframeRequests
    is_keyframe: Callable[[bytes], bool]
    rid: str | None = None
    sender_clock: SenderClock | None = None
    forwarders: list[Forwarder] = field(default_factory=list)
    window_bytes: int = 0  # bytes since the last bitrate sample
    bitrate: float = 0.0
    width: int | None = None  # from the latest keyframe
    height: int | None = None
    active: bool = False  # packets arrived in the last bitrate window

    @property
    def clock_rate(self) -> int:
        return self.codec.clock_rate

    def quality(self) -> tuple[int, float, int]:
        """Sort key, small to large: resolution when known, then bitrate, then the rid's name."""
        return ((self.width or 0) * (self.height or 0), self.bitrate, rank_hint(self.rid or ""))


def _layer_key(kind: str, rid: str | None) -> str:
    return kind if not rid else f"{kind}/{rid}"


class Broadcast:
    """One live stream: its publisher's layers (which survive a publisher reconnect) and its viewers."""

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
        self.forwarders: dict[str, list[Forwarder]] = {"audio": [], "video": []}  # every viewer's, by kind
        self._by_pt: dict[int, SourceTrack] = {}  # one-layer tracks
        self._by_ssrc: dict[int, SourceTrack] = {}  # learned (rid simulcast) or announced (legacy SIM)
        self._rid_routes: dict[int, tuple[int, dict[str, SourceTrack]]] = {}  # pt -> (rid ext id, rid -> track)
        self._nack_buffer_packets = nack_buffer_packets
        self._keyframe_cache_packets = keyframe_cache_packets
        self._keyframe_request_interval = keyframe_request_interval
        self._keyframe_cache_max_age = keyframe_cache_max_age
        self.publisher_id: str | None = None
        self.live = False
        # set by the publisher session: send a keyframe request upstream for the track's media SSRC
        self.request_upstream_keyframe: Callable[[SourceTrack], None] | None = None
        self.on_live_change: Callable[[bool], None] | None = None
        self.on_layers_change: Callable[[], None] | None = None
        self.viewer_count = 0
        # Packet taps beside the viewers (the LL-HLS packager, recorders): called once per stored packet with
        # (track, packet, keyframe, now). A tap must not raise; it is isolated and counted if it does.
        self.taps: list[Callable[[SourceTrack, Packet, bool, float], None]] = []
        self.tap_errors = 0
        self.malformed = 0
        self.unroutable = 0
        self._now = 0.0  # the latest packet time, for decisions made outside a packet (publisher attach)

    # -- publisher side ---------------------------------------------------------------------------------
    def attach_publisher(self, publisher_id: str, published: list[PublishedTrack] | dict[str, Codec]) -> None:
        """A publisher's session is up (new or reconnecting): its codec and layers per kind."""
        if isinstance(published, dict):
            published = [PublishedTrack(kind, codec) for kind, codec in published.items()]
        self.publisher_id = publisher_id
        self._by_pt, self._by_ssrc, self._rid_routes = {}, {}, {}
        wanted: dict[str, SourceTrack] = {}
        for pub in published:
            rids = pub.rids or [None]
            routes: dict[str, SourceTrack] = {}
            for i, rid in enumerate(rids):
                track = self._track(_layer_key(pub.kind, rid), pub.kind, pub.codec, rid)
                wanted[track.key] = track
                if rid is None:
                    self._by_pt[pub.codec.payload_type] = track
                elif pub.rid_ext_id is not None:
                    routes[rid] = track
                elif i < len(pub.legacy_ssrcs):
                    self._by_ssrc[pub.legacy_ssrcs[i]] = track
            if routes:
                self._rid_routes[pub.codec.payload_type] = (pub.rid_ext_id, routes)  # type: ignore[assignment]
        # layers the new publisher does not send are gone; their viewers move to a layer that exists
        for key in [k for k in self.tracks if k not in wanted]:
            del self.tracks[key]
        self.live = True
        for fwds in self.forwarders.values():
            for fwd in fwds:
                self._resubscribe(fwd, self._now, publisher_restart=True)
        if self.on_live_change is not None:
            self.on_live_change(True)
        self._layers_changed()

    def _track(self, key: str, kind: str, codec: Codec, rid: str | None) -> SourceTrack:
        track = self.tracks.get(key)
        if track is None:
            track = SourceTrack(
                key=key,
                kind=kind,
                codec=codec,
                buffer=LayerBuffer(self._nack_buffer_packets, self._keyframe_cache_packets),
                keyframes=KeyframeRequests(self._keyframe_request_interval),
                is_keyframe=keyframe_detector(codec.name),
                rid=rid,
            )
            self.tracks[key] = track
        else:
            track.codec = codec
            track.is_keyframe = keyframe_detector(codec.name)
            track.buffer.reset()
            track.sender_clock = None
        return track

    def detach_publisher(self, publisher_id: str) -> None:
        if self.publisher_id != publisher_id:
            return  # an older session of a publisher that has already reconnected
        self.publisher_id = None
        self._by_pt, self._by_ssrc, self._rid_routes = {}, {}, {}
        self.live = False
        if self.on_live_change is not None:
            self.on_live_change(False)

    def live_codecs(self) -> dict[str, Codec | None]:
        if not self.live:
            return {}
        return {t.kind: t.codec for t in self.tracks.values()}

    def _route(self, data: bytes, hdr: rtp_header.RtpHeader) -> SourceTrack | None:
        track = self._by_ssrc.get(hdr.ssrc)
        if track is not None:
            return track
        track = self._by_pt.get(hdr.payload_type)
        if track is not None:
            return track
        rid_route = self._rid_routes.get(hdr.payload_type)
        if rid_route is None:
            return None
        ext_id, by_rid = rid_route
        rid = rtp_header.one_byte_extensions(data, hdr).get(ext_id)
        track = by_rid.get(rid.decode("ascii", "replace")) if rid else None
        if track is not None:
            self._by_ssrc[hdr.ssrc] = track  # later packets may omit the rid
        return track

    def _ingest(self, data: bytes, now: float) -> tuple[SourceTrack, Packet, bool, rtp_header.RtpHeader] | None:
        """Parse, route, store and tap one packet (None: malformed or unroutable, counted)."""
        try:
            hdr = rtp_header.parse(data)
        except RtpError:
            self.malformed += 1
            return None
        self._now = now
        track = self._route(data, hdr)
        if track is None:
            self.unroutable += 1
            return None
        keyframe = track.is_keyframe(data[hdr.payload_offset :]) if track.kind == "video" else False
        pkt = track.buffer.push(data, hdr, keyframe, now)
        track.window_bytes += len(data)
        if keyframe:
            track.keyframes.keyframe_arrived()
            self._note_resolution(track, data[hdr.payload_offset :])
        for tap in self.taps:
            try:
                tap(track, pkt, keyframe, now)
            except Exception:  # a broken packager must not stop the viewers
                self.tap_errors += 1
                logger.exception("broadcast %s: tap failed", self.name)
        return track, pkt, keyframe, hdr

    def run_limit(self) -> int:
        """How many packets of one layer the ingest pump may hand over at once: as many as fit in RUN_BUDGET
        of fan-out at this node's viewer count (audio behind a run waits for the whole run's pass)."""
        viewers = max((len(t.forwarders) for t in self.tracks.values() if t.kind == "video"), default=0)
        return max(1, min(MAX_RUN, int(RUN_BUDGET / (max(viewers, 1) * RUN_COST_PER_VIEWER))))

    def on_rtp_run(self, datas: list[bytes], now: float) -> int:
        """Several packets read together (the ingest pump's run of one SSRC): each is ingested in order, then
        every viewer gets the run in one batch — one UDP GSO send where its sink has one. Returns packets sent."""
        sent = 0
        group: list[tuple[Packet, bool, rtp_header.RtpHeader, bytes]] = []
        group_track: SourceTrack | None = None
        for data in datas:
            ingested = self._ingest(data, now)
            if ingested is None:
                continue
            track, pkt, keyframe, hdr = ingested
            if track is not group_track and group:
                sent += self._fan_out_run(group_track, group, now)  # type: ignore[arg-type]
                group = []
            group_track = track
            group.append((pkt, keyframe, hdr, data))
        if group:
            sent += self._fan_out_run(group_track, group, now)  # type: ignore[arg-type]
        return sent

    def _fan_out_run(
        self, track: SourceTrack, group: list[tuple[Packet, bool, rtp_header.RtpHeader, bytes]], now: float
    ) -> int:
        # The batched twin of the per-packet loop in on_rtp (kept separate so that loop builds nothing per
        # viewer): a change to what a viewer is sent (header bits, extension block, counters) goes in both.
        key = track.key
        entries = [
            (pkt, keyframe, memoryview(data)[hdr.payload_offset :], 0xA0 if hdr.padding else 0x80,
             0x80 if hdr.marker else 0)
            for pkt, keyframe, hdr, data in group
        ]
        send_time = (int(now * 262144) & 0xFFFFFF) | 0x02000000
        block_id, block = 0, b""
        sent = 0
        for fwd in track.forwarders:
            ext_id = fwd.abs_send_time_id
            if ext_id:
                if ext_id != block_id:
                    block_id, block = ext_id, _ABS_SEND_TIME_BLOCK(0xBEDE0001, (ext_id << 28) | send_time)
                ext, x = block, 0x10
            else:
                ext, x = b"", 0
            batch = fwd.batch_sink
            items = []
            octets = 0
            for pkt, keyframe, payload, b0, marker in entries:
                mapped = fwd.map(pkt, keyframe, now, key)
                if mapped is None:
                    continue
                if batch is None:  # joining or draining a burst: the packet-by-packet sink decides
                    if fwd.sink(payload, b0 | x, fwd.out_pt | marker, mapped[0], mapped[1], fwd.ssrc, ext):
                        fwd.sent_packets += 1
                        fwd.sent_octets += len(payload) + 12
                        sent += 1
                    continue
                items.append((payload, b0 | x, fwd.out_pt | marker, mapped[0], mapped[1]))
                octets += len(payload) + 12
            if items:
                n = batch(items, fwd.ssrc, ext)
                fwd.sent_packets += n
                fwd.sent_octets += octets if n == len(items) else octets * n // len(items)
                sent += n
        return sent

    def on_rtp(self, data: bytes, now: float) -> int:
        """One RTP packet from the publisher. Returns how many viewers it was sent to."""
        ingested = self._ingest(data, now)
        if ingested is None:
            return 0
        track, pkt, keyframe, hdr = ingested
        # The hot loop: per viewer only the mapping decision and one sink call (header write, SRTP, sendto).
        payload = memoryview(data)[hdr.payload_offset :]
        size = len(payload) + 12
        b0 = 0xA0 if hdr.padding else 0x80
        marker = 0x80 if hdr.marker else 0
        key = track.key
        # abs-send-time (6.18 fixed-point seconds, 24 bits): one value per packet, stamped for viewers that
        # negotiated it, as a one-byte-header extension block (RFC 8285) whose id is the viewer's own
        send_time = (int(now * 262144) & 0xFFFFFF) | 0x02000000
        block_id, block = 0, b""  # the block is built once per packet per extension id, not per viewer
        sent = 0
        for fwd in track.forwarders:
            mapped = fwd.map(pkt, keyframe, now, key)
            if mapped is None:
                continue
            ext_id = fwd.abs_send_time_id
            if ext_id:
                if ext_id != block_id:
                    block_id, block = ext_id, _ABS_SEND_TIME_BLOCK(0xBEDE0001, (ext_id << 28) | send_time)
                ok = fwd.sink(payload, b0 | 0x10, fwd.out_pt | marker, mapped[0], mapped[1], fwd.ssrc, block)
            else:
                ok = fwd.sink(payload, b0, fwd.out_pt | marker, mapped[0], mapped[1], fwd.ssrc, b"")
            if ok:
                fwd.sent_packets += 1
                fwd.sent_octets += size
                sent += 1
        return sent

    def _note_resolution(self, track: SourceTrack, payload: bytes) -> None:
        size = h264.sps_resolution(payload) if track.codec.key == "H264" else vp8.keyframe_resolution(payload)
        if size is not None and size != (track.width, track.height):
            track.width, track.height = size
            self._layers_changed()

    def on_sender_report(self, ssrc: int, ntp_seconds: float, rtp_time: int, now: float) -> None:
        for track in self.tracks.values():
            if track.buffer.ssrc == ssrc:
                track.sender_clock = SenderClock(ntp_seconds, rtp_time, now)

    def sample_bitrates(self, interval: float) -> dict[str, float]:
        out = {}
        changed = False
        for key, track in self.tracks.items():
            track.bitrate = track.window_bytes * 8 / interval if interval > 0 else 0.0
            active = track.window_bytes > 0
            changed |= active != track.active
            track.active = active
            track.window_bytes = 0
            out[key] = track.bitrate
        if changed:
            self._layers_changed()
        return out

    def _layers_changed(self) -> None:
        if self.on_layers_change is not None:
            self.on_layers_change()

    # -- layers -------------------------------------------------------------------------------------------
    def video_layers(self) -> list[SourceTrack]:
        """The video layers, smallest first."""
        return sorted((t for t in self.tracks.values() if t.kind == "video"), key=SourceTrack.quality)

    def layer_for(self, fwd: Forwarder) -> SourceTrack | None:
        """The layer a forwarder should take: its pinned rid if that layer exists, else the best one allowed."""
        if fwd.kind != "video":
            return self.tracks.get(fwd.kind)
        layers = self._live_video_layers()
        if fwd.pinned_rid is not None:
            for t in layers:
                if t.rid == fwd.pinned_rid:
                    return t
        allowed = self._allowed(fwd, layers)
        if not allowed:
            return None
        return allowed[max(0, len(allowed) - 1 - fwd.layer_cap)]

    def automatic_layers(self, fwd: Forwarder) -> list[SourceTrack]:
        """The layers automatic selection chooses among for this viewer (smallest first; ``layer_cap`` counts
        down from the last)."""
        return self._allowed(fwd, self._live_video_layers())

    def _live_video_layers(self) -> list[SourceTrack]:
        layers = [t for t in self.video_layers() if t.active or not any(x.active for x in self.tracks.values())]
        return layers or self.video_layers()

    @staticmethod
    def _allowed(fwd: Forwarder, layers: list[SourceTrack]) -> list[SourceTrack]:
        allowed = [t for t in layers if fwd.max_height is None or t.height is None or t.height <= fwd.max_height]
        return allowed or layers[:1]

    def _resubscribe(self, fwd: Forwarder, now: float, publisher_restart: bool = False) -> None:
        """Point the forwarder at the layer it should take (a switch completes at that layer's keyframe)."""
        track = self.layer_for(fwd)
        if track is None:
            return
        fwd.set_source_codec(track.codec.key)
        if publisher_restart:
            fwd.source_restarted()
        if fwd not in track.forwarders:
            track.forwarders.append(fwd)
        if fwd.target_layer != track.key:
            fwd.target_layer = track.key
            if fwd.current_layer != track.key and self.live:
                fwd.switch_since = now
                self.request_keyframe_on(track, now)
        # drop subscriptions that are neither current nor target
        for t in self.tracks.values():
            if t.kind == fwd.kind and fwd in t.forwarders and t.key not in (fwd.current_layer, fwd.target_layer):
                t.forwarders.remove(fwd)

    def _switched(self, fwd: Forwarder, old: str | None, new: str) -> None:
        if old is not None and old != new:
            track = self.tracks.get(old)
            if track is not None and fwd in track.forwarders:
                track.forwarders.remove(fwd)

    def reselect(self, fwd: Forwarder, now: float) -> None:
        """The viewer's limits or choice changed (or the layers did): move it if needed.

        A forwarder not attached yet (its viewer's DTLS is still coming up) only keeps the new choice; it is
        subscribed when it is attached (add_forwarder) — never before it can send.
        """
        if fwd in self.forwarders.get(fwd.kind, ()):
            self._resubscribe(fwd, now)

    def reselect_all(self, now: float) -> None:
        for fwd in self.forwarders["video"]:
            self._resubscribe(fwd, now)

    # -- viewer side ------------------------------------------------------------------------------------
    def add_forwarder(self, fwd: Forwarder, now: float) -> list[bytes]:
        """Attach a viewer's forwarder; returns the keyframe-cache burst to send at once (video)."""
        fwd.on_switch = self._switched
        self.forwarders.setdefault(fwd.kind, []).append(fwd)
        if not self.live:
            return []
        self._resubscribe(fwd, now)
        track = self.tracks.get(fwd.target_layer or "")
        if track is None or fwd.kind != "video":
            return []
        burst = fwd.start_burst(track.buffer.keyframe_packets(now, self._keyframe_cache_max_age), now, track.key)
        if not burst:
            self.request_keyframe_on(track, now)
        return burst

    def remove_forwarder(self, fwd: Forwarder) -> None:
        fwds = self.forwarders.get(fwd.kind, [])
        if fwd in fwds:
            fwds.remove(fwd)
        for track in self.tracks.values():
            if fwd in track.forwarders:
                track.forwarders.remove(fwd)

    def track_of(self, fwd: Forwarder) -> SourceTrack | None:
        """The layer the forwarder sends now (for NACK repair and sender reports)."""
        return self.tracks.get(fwd.current_layer or fwd.target_layer or fwd.kind)

    def request_keyframe_on(self, track: SourceTrack, now: float) -> bool:
        """A viewer asked for a keyframe of this layer (PLI/FIR, join, switch): merged and throttled upstream."""
        if not self.live:
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
        # a switch still waiting after SWITCH_RETRY seconds asks again (a lost or unanswered keyframe request)
        for fwd in self.forwarders.get("video", ()):
            since = fwd.switch_since
            if fwd.target_layer != fwd.current_layer and since is not None and now - since >= SWITCH_RETRY:
                fwd.switch_since = now
                target = self.tracks.get(fwd.target_layer or "")
                if target is not None:
                    self.request_keyframe_on(target, now)

    @property
    def idle(self) -> bool:
        return not self.live and not any(self.forwarders.values())
