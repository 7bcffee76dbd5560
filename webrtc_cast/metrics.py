"""Prometheus metrics of one node (prometheus-client), on a registry per node so tests can run several."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ingest_bytes = Counter(
            "webrtc_cast_ingest_bytes", "RTP bytes received from publishers", ["stream", "kind"], registry=r
        )
        self.ingest_bitrate = Gauge(
            "webrtc_cast_ingest_bitrate_bps", "Ingest bitrate per track (1 s window)", ["stream", "kind"], registry=r
        )
        self.viewers = Gauge("webrtc_cast_viewers", "Connected WHEP viewers", ["stream"], registry=r)
        self.publishers = Gauge("webrtc_cast_publishers", "Connected WHIP publishers", ["stream"], registry=r)
        self.forwarded_packets = Counter(
            "webrtc_cast_forwarded_packets", "RTP packets sent to viewers", ["kind"], registry=r
        )
        self.forwarded_bytes = Counter(
            "webrtc_cast_forwarded_bytes", "RTP payload+header bytes sent to viewers", ["kind"], registry=r
        )
        self.nacks = Counter("webrtc_cast_nacks", "Sequence numbers NACKed by viewers", registry=r)
        self.retransmissions = Counter(
            "webrtc_cast_retransmissions", "Packets re-sent to repair viewer loss", registry=r
        )
        self.keyframe_requests = Counter(
            "webrtc_cast_keyframe_requests", "Keyframe requests (PLI/FIR) from viewers and joins", registry=r
        )
        self.keyframe_requests_sent = Counter(
            "webrtc_cast_keyframe_requests_sent", "Keyframe requests sent to publishers after merging", registry=r
        )
        self.dropped = Counter(
            "webrtc_cast_dropped", "Inputs dropped (malformed or unroutable)", ["reason"], registry=r
        )
        self.http_errors = Counter("webrtc_cast_http_errors", "4xx/5xx answers", ["status"], registry=r)
        self.join_time = Histogram(
            "webrtc_cast_join_seconds",
            "WHEP POST to first media packet sent",
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0),
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
