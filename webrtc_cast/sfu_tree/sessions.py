"""Publisher (WHIP) and viewer (WHEP) sessions: the asyncio-side glue between a PeerTransport and a Broadcast."""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from webrtc_cast.metrics import NodeMetrics
from webrtc_cast.rtp import rtcp
from webrtc_cast.sdp.negotiation import MediaPlan
from webrtc_cast.sfu_tree.aiortc_glue import PeerTransport, RtpBatchSink, RtpSink
from webrtc_cast.sfu_tree.broadcast import Broadcast, PublishedTrack, SourceTrack
from webrtc_cast.sfu_tree.forwarder import Forwarder
from webrtc_cast.sfu_tree.layer_selector import LayerSelector

logger = logging.getLogger(__name__)

_NTP_EPOCH_OFFSET = 2_208_988_800
_RTP_HEADER = struct.Struct("!BBHII")


def new_session_id() -> str:
    """128 random bits, URL-safe (RFC 9725 §5: session URLs must not be guessable)."""
    return secrets.token_urlsafe(16)


def new_etag() -> str:
    return '"' + secrets.token_hex(8) + '"'


def random_ssrc() -> int:
    return secrets.randbelow(0xFFFFFFF0) + 1


@dataclass(eq=False)
class Session:
    id: str
    stream: str
    role: str  # "whip" | "whep"
    transport: PeerTransport
    broadcast: Broadcast
    metrics: NodeMetrics
    token: str | None
    ice_ufrag: str
    remote_ufrag: str
    etag: str = field(default_factory=new_etag)
    created: float = field(default_factory=time.monotonic)
    connected_at: float | None = None
    closed: bool = False
    rtcp_ssrc: int = field(default_factory=random_ssrc)
    malformed_rtcp: int = 0

    def on_connected(self) -> None:  # pragma: no cover - overridden
        pass

    def tick(self, now: float, wall: float) -> None:  # pragma: no cover - overridden
        pass

    def on_closed(self) -> None:  # pragma: no cover - overridden
        pass

    def _parse_rtcp(self, data: bytes) -> list[rtcp.RtcpPacket]:
        try:
            return rtcp.parse_compound(data)
        except rtcp.RtcpError:
            self.malformed_rtcp += 1
            self.metrics.dropped.labels("malformed_rtcp").inc()
            return []


@dataclass(eq=False)
class PublisherSession(Session):
    plans: list[MediaPlan] = field(default_factory=list)
    remb_bitrate: int = 0
    _last_rr: float = 0.0

    def audio_payload_types(self) -> set[int]:
        """The payload types of the audio this publisher sends: the ingest pump delivers them ahead of video."""
        return {pt for p in self.plans if p.kind == "audio"
                for pt in (p.codec.payload_type, *p.payload_types.values())}

    def on_rtp(self, data: bytes, arrival: float) -> None:
        if self.broadcast.publisher_id != self.id:
            return  # a replaced publisher's last packets must not reach the viewers
        self.broadcast.on_rtp(data, time.monotonic())

    def on_rtp_run(self, datas: list[bytes], arrival: float) -> None:
        if self.broadcast.publisher_id != self.id:
            return
        self.broadcast.on_rtp_run(datas, time.monotonic())

    def on_rtcp(self, data: bytes) -> None:
        now = time.monotonic()
        for pkt in self._parse_rtcp(data):
            if isinstance(pkt, rtcp.SenderReport):
                ntp_seconds = (pkt.ntp_time >> 32) + (pkt.ntp_time & 0xFFFFFFFF) / 2**32 - _NTP_EPOCH_OFFSET
                self.broadcast.on_sender_report(pkt.ssrc, ntp_seconds, pkt.rtp_time, now)

    def on_connected(self) -> None:
        self.broadcast.request_upstream_keyframe = self._send_keyframe_request
        published = []
        for p in self.plans:
            sim = p.simulcast
            if sim is not None and sim.ignored:
                logger.warning("publisher %s: more than %d simulcast layers; ignoring %s",
                               self.id[:8], len(sim.rids), ", ".join(sim.ignored))
            published.append(PublishedTrack(
                p.kind, p.codec,
                rids=list(sim.rids) if sim else [],
                rid_ext_id=sim.rid_ext_id if sim else None,
                legacy_ssrcs=list(sim.legacy_ssrcs) if sim else [],
            ))
        self.broadcast.attach_publisher(self.id, published)
        self.metrics.publishers.labels(self.stream).inc()
        logger.info("publisher %s live on stream %r", self.id[:8], self.stream)

    def _send_keyframe_request(self, track: SourceTrack) -> None:
        ssrc = track.buffer.ssrc
        if ssrc is None:
            return
        self.transport.send_rtcp(rtcp.build_pli(self.rtcp_ssrc, ssrc))
        self.metrics.keyframe_requests_sent.inc()

    def tick(self, now: float, wall: float) -> None:
        if self.connected_at is None:
            return
        self.broadcast.poll_keyframes(now)
        if now - self._last_rr >= 1.0:
            self._last_rr = now
            self.transport.send_rtcp(rtcp.build_rr(self.rtcp_ssrc))
            if self.remb_bitrate and any("goog-remb" in p.feedback for p in self.plans):
                # REMB: "we take this much" — a browser's estimate ramps toward it and it encodes every layer
                ssrcs = [t.buffer.ssrc for t in self.broadcast.tracks.values()
                         if t.kind == "video" and t.buffer.ssrc is not None]
                if ssrcs:
                    self.transport.send_rtcp(rtcp.build_remb(self.rtcp_ssrc, self.remb_bitrate, ssrcs))

    def on_closed(self) -> None:
        if self.connected_at is not None:
            self.metrics.publishers.labels(self.stream).dec()
        if self.broadcast.request_upstream_keyframe == self._send_keyframe_request:
            self.broadcast.request_upstream_keyframe = None
        self.broadcast.detach_publisher(self.id)


@dataclass(eq=False)
class ViewerSession(Session):
    forwarders: dict[str, Forwarder] = field(default_factory=dict)
    cname: str = field(default_factory=lambda: secrets.token_hex(8))
    posted_at: float = field(default_factory=time.monotonic)
    sender_report_interval: float = 1.0
    video_mline: int | None = None  # index of the video m-section in the offer (WHEP layer events)
    video_mid: str | None = None
    event_streams: dict = field(default_factory=dict)  # WHEP SSE streams by id
    selector: LayerSelector = field(default_factory=LayerSelector)
    loss: float = 0.0  # the viewer's latest reported video loss fraction
    burst_packets: int = 16
    burst_interval: float = 0.002
    _next_sr: float = 0.0  # the first report goes out at the first tick after connecting
    _joined: bool = False

    def on_rtp(self, data: bytes, arrival: float) -> None:
        pass  # viewers send no media; ignore anything that arrives

    def on_rtcp(self, data: bytes) -> None:
        now = time.monotonic()
        for pkt in self._parse_rtcp(data):
            if isinstance(pkt, rtcp.Nack):
                self._repair(pkt)
            elif isinstance(pkt, rtcp.ReceiverReport | rtcp.SenderReport):
                self._on_reports(pkt.reports, now)
            elif isinstance(pkt, rtcp.Remb):
                self._on_estimate(pkt, now)
            elif isinstance(pkt, rtcp.Pli | rtcp.Fir):
                self.metrics.keyframe_requests.inc()
                targets = [pkt.media_ssrc] if isinstance(pkt, rtcp.Pli) else [ssrc for ssrc, _ in pkt.entries]
                for fwd in self.forwarders.values():
                    if fwd.kind == "video" and fwd.ssrc in targets:
                        track = self.broadcast.track_of(fwd)
                        if track is not None:
                            self.broadcast.request_keyframe_on(track, now)

    def _on_reports(self, reports: tuple[rtcp.ReportBlock, ...], now: float) -> None:
        video = self.forwarders.get("video")
        if video is None:
            return
        for block in reports:
            if block.ssrc == video.ssrc:
                self.loss = block.fraction_lost / 256
                layers = len(self.broadcast.video_layers())
                before = self.selector.cap
                if self.selector.on_loss(self.loss, now, layers):
                    self._apply_cap(video, before, "loss", now)

    def _on_estimate(self, remb: rtcp.Remb, now: float) -> None:
        """A REMB from the viewer (its receive-side estimate for the SSRCs it lists): automatic selection."""
        self.metrics.remb_received.inc()
        video = self.forwarders.get("video")
        if video is None or (remb.ssrcs and video.ssrc not in remb.ssrcs):
            return
        layers = self.broadcast.automatic_layers(video)
        wanted = video.target_layer or video.current_layer
        current = next((i for i, t in enumerate(layers) if t.key == wanted), len(layers) - 1 - self.selector.cap)
        before = self.selector.cap
        if self.selector.on_estimate(remb.bitrate, now, [t.bitrate for t in layers], current):
            self._apply_cap(video, before, "remb", now)

    def _apply_cap(self, video: Forwarder, before: int, signal: str, now: float) -> None:
        direction = "down" if self.selector.cap > before else "up"
        self.metrics.automatic_layer_changes.labels(direction, signal).inc()
        logger.debug("viewer %s: layer cap %d -> %d (%s; estimate %s, loss %.3f)", self.id[:8], before,
                     self.selector.cap, signal, self.selector.estimate, self.loss)
        video.layer_cap = self.selector.cap
        if video.pinned_rid is None:
            self.broadcast.reselect(video, now)

    def _repair(self, nack: rtcp.Nack) -> None:
        fwd = next((f for f in self.forwarders.values() if f.ssrc == nack.media_ssrc), None)
        if fwd is None:
            return
        track = self.broadcast.track_of(fwd)
        if track is None:
            return
        self.metrics.nacks.inc(len(nack.lost))
        for seq in nack.lost[:64]:
            out = fwd.retransmit(seq, track.buffer)
            if out is not None and fwd.send(out):
                self.metrics.retransmissions.inc()

    def on_connected(self) -> None:
        now = time.monotonic()
        for fwd in self.forwarders.values():
            fwd.send = self._send_packet(fwd)
            fwd.sink = self._first_sink(fwd)
            burst = self.broadcast.add_forwarder(fwd, now)
            if burst:
                _PacedBurst(fwd, self._fast_sink(fwd), self.transport.rtp_batch_sink(), burst, self.burst_packets,
                            self.burst_interval).start()
        self.broadcast.viewer_count += 1
        self.metrics.viewers.labels(self.stream).inc()

    def _send_packet(self, fwd: Forwarder) -> Callable[[bytes], bool]:
        """Whole-packet sends (keyframe bursts, repairs), counted on the forwarder."""
        send_rtp = self.transport.send_rtp

        def send(data: bytes) -> bool:
            if not send_rtp(data):
                return False
            fwd.sent_packets += 1
            fwd.sent_octets += len(data)
            self._mark_joined()
            return True

        return send

    def _fast_sink(self, fwd: Forwarder) -> RtpSink:
        sink = self.transport.rtp_sink()
        if sink is not None:
            return sink
        send_rtp = self.transport.send_rtp  # not connected yet (cannot happen after on_connected): slow path
        return lambda payload, b0, b1, seq, ts, ssrc, ext: send_rtp(
            _RTP_HEADER.pack(b0, b1, seq, ts, ssrc) + ext + payload
        )

    def _first_sink(self, fwd: Forwarder) -> RtpSink:
        """The first forwarded packet records the join time, then the forwarder gets the bare fast sink."""
        fast = self._fast_sink(fwd)

        def first(payload: memoryview, b0: int, b1: int, seq: int, ts: int, ssrc: int, ext: bytes) -> bool:
            if not fast(payload, b0, b1, seq, ts, ssrc, ext):
                return False
            self._mark_joined()
            if fwd.sink is first:  # (not if a keyframe-cache burst took the sink over meanwhile)
                fwd.sink = fast
                fwd.batch_sink = self.transport.rtp_batch_sink()
            return True

        return first

    def _mark_joined(self) -> None:
        if not self._joined:
            self._joined = True
            self.metrics.join_time.observe(time.monotonic() - self.posted_at)

    def tick(self, now: float, wall: float) -> None:
        if self.connected_at is None or now < self._next_sr:
            return
        self._next_sr = now + rtcp.randomized_interval(self.sender_report_interval, random.random())
        for fwd in self.forwarders.values():
            sr = self._sender_report(fwd, now, wall)
            if sr is not None:
                self.transport.send_rtcp(sr + rtcp.build_sdes_cname(fwd.ssrc, self.cname))

    def _sender_report(self, fwd: Forwarder, now: float, wall: float) -> bytes | None:
        munger = fwd.munger
        if not munger.started or munger.last_time is None:
            return None
        track = self.broadcast.track_of(fwd)
        rate = munger.clock_rate
        clock = track.sender_clock if track is not None else None
        if clock is not None and track is not None and track.buffer.ssrc == munger.source_ssrc:
            # The publisher's own RTP/NTP mapping, carried through our timestamp offset: lip sync survives.
            elapsed = now - clock.arrival
            ntp_seconds = clock.ntp_seconds + elapsed
            rtp_time = munger.output_ts(clock.rtp_time) + int(elapsed * rate)
        else:
            ntp_seconds = wall
            rtp_time = munger.last_ts + int((now - munger.last_time) * rate)
        return rtcp.build_sr(
            fwd.ssrc, rtcp.ntp_from_unix(ntp_seconds), rtp_time & 0xFFFFFFFF, fwd.packets, fwd.octets
        )

    def on_closed(self) -> None:
        for stream in self.event_streams.values():
            stream.close()  # E15: event streams die with the session
        self.event_streams.clear()
        for fwd in self.forwarders.values():
            self.broadcast.remove_forwarder(fwd)
        if self.connected_at is not None:
            self.broadcast.viewer_count -= 1
            self.metrics.viewers.labels(self.stream).dec()


class _PacedBurst:
    """Sends a joining viewer's keyframe-cache burst in small paced chunks.

    A whole GOP sent in one go overflows the viewer's socket buffer (hundreds of packets in microseconds),
    so the start would depend on NACK repair. While the burst drains, live packets queue behind it so the
    viewer sees them in order; once drained, the forwarder's sink is the fast path again.
    """

    def __init__(
        self, fwd: Forwarder, fast: RtpSink, batch: RtpBatchSink | None, burst: list[bytes], chunk: int,
        interval: float,
    ) -> None:
        self._fwd = fwd
        self._fast = fast
        self._batch = batch
        self._queue: deque[bytes] = deque(burst)
        self._chunk = chunk
        self._interval = interval

    def start(self) -> None:
        self._fwd.sink = self._enqueue
        self._fwd.batch_sink = None  # live packets queue behind the burst, one by one
        self._drain()

    def _enqueue(self, payload: memoryview, b0: int, b1: int, seq: int, ts: int, ssrc: int, ext: bytes) -> bool:
        self._queue.append(_RTP_HEADER.pack(b0, b1, seq, ts, ssrc) + ext + payload)
        return False  # counted when the drain sends it

    def _drain(self) -> None:
        send = self._fwd.send
        for _ in range(min(self._chunk, len(self._queue))):
            send(self._queue.popleft())
        if self._queue:
            asyncio.get_running_loop().call_later(self._interval, self._drain)
        else:
            self._fwd.sink = self._fast
            self._fwd.batch_sink = self._batch
