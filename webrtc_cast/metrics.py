"""Prometheus metrics of one node (prometheus-client), on a registry per node so tests can run several."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

# Per-packet counts stay plain ints on the forwarding objects (no lock, no call on the hot path); these
# callbacks read them when /metrics is scraped.
ForwardingTotals = Callable[[], dict[str, tuple[int, int]]]  # kind -> (packets, bytes)
IngestTotals = Callable[[], dict[tuple[str, str], tuple[int, int]]]  # (stream, kind) -> (packets, bytes)
PumpTotals = Callable[[], tuple[int, int, int]]  # ingest pump: packets delivered, runs, audio overtakes


def _no_pump() -> tuple[int, int, int]:
    return 0, 0, 0


class _ScrapeTimeCounters(Collector):
    def __init__(self, forwarding: ForwardingTotals, ingest: IngestTotals, pump: PumpTotals) -> None:
        self._forwarding = forwarding
        self._ingest = ingest
        self._pump = pump

    def collect(self) -> Iterator[CounterMetricFamily]:
        packets = CounterMetricFamily(
            "webrtc_cast_forwarded_packets", "RTP packets sent to viewers (repairs included)", labels=["kind"]
        )
        octets = CounterMetricFamily(
            "webrtc_cast_forwarded_bytes", "RTP bytes sent to viewers before SRTP", labels=["kind"]
        )
        for kind, (n, b) in sorted(self._forwarding().items()):
            packets.add_metric([kind], n)
            octets.add_metric([kind], b)
        in_packets = CounterMetricFamily(
            "webrtc_cast_ingest_packets", "RTP packets received from publishers", labels=["stream", "kind"]
        )
        in_bytes = CounterMetricFamily(
            "webrtc_cast_ingest_bytes", "RTP bytes received from publishers", labels=["stream", "kind"]
        )
        for (stream, kind), (n, b) in sorted(self._ingest().items()):
            in_packets.add_metric([stream, kind], n)
            in_bytes.add_metric([stream, kind], b)
        pumped, runs, overtakes = self._pump()
        yield from (packets, octets, in_packets, in_bytes)
        yield CounterMetricFamily(
            "webrtc_cast_ingest_pump_packets", "RTP packets read off publishers' sockets by the ingest pump",
            value=pumped,
        )
        yield CounterMetricFamily(
            "webrtc_cast_ingest_pump_runs",
            "Deliveries of several queued video packets at once (one UDP GSO send per viewer): the loop fell behind",
            value=runs,
        )
        yield CounterMetricFamily(
            "webrtc_cast_ingest_pump_audio_overtakes",
            "Audio packets forwarded ahead of video that was already waiting in the publisher's socket",
            value=overtakes,
        )


class NodeMetrics:
    def __init__(
        self, forwarding: ForwardingTotals | None = None, ingest: IngestTotals | None = None,
        pump: PumpTotals | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        r.register(_ScrapeTimeCounters(forwarding or dict, ingest or dict, pump or _no_pump))
        self.ingest_bitrate = Gauge(
            "webrtc_cast_ingest_bitrate_bps", "Ingest bitrate per track (1 s window)", ["stream", "kind"], registry=r
        )
        self.viewers = Gauge("webrtc_cast_viewers", "Connected WHEP viewers", ["stream"], registry=r)
        self.publishers = Gauge("webrtc_cast_publishers", "Connected WHIP publishers", ["stream"], registry=r)
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
        self.remb_received = Counter(
            "webrtc_cast_remb_received", "Bandwidth estimates (RTCP REMB) received from viewers", registry=r
        )
        self.automatic_layer_changes = Counter(
            "webrtc_cast_automatic_layer_changes", "Automatic layer-cap changes per viewer, by direction (down, up) "
            "and the signal that decided it (remb, loss)", ["direction", "signal"], registry=r,
        )

        self.chat_connections = Gauge("webrtc_cast_chat_connections", "Open chat WebSockets", registry=r)
        self.chat_messages = Counter(
            "webrtc_cast_chat_messages", "Chat messages accepted from this node's clients", registry=r
        )
        self.chat_reactions = Counter(
            "webrtc_cast_chat_reactions", "Reactions accepted from this node's clients", registry=r
        )
        self.chat_deliveries = Counter(
            "webrtc_cast_chat_deliveries", "Chat frames fanned out to clients (messages, moderation, reactions, "
            "viewers)", registry=r,
        )
        self.chat_skipped_frames = Counter(
            "webrtc_cast_chat_skipped_frames", "Reaction/viewer frames not sent to a client with a full buffer",
            registry=r,
        )
        self.chat_rejected = Counter(
            "webrtc_cast_chat_rejected", "Client chat frames refused, by error code", ["code"], registry=r
        )
        self.chat_closed = Counter(
            "webrtc_cast_chat_closed", "Chat WebSockets closed by the server, by close code", ["code"], registry=r
        )
        self.chat_bus_errors = Counter("webrtc_cast_chat_bus_errors", "Failed chat bus (Redis) calls", registry=r)

        # the relay tree (docs/scaling.md)
        self.tree_nodes = Gauge(
            "webrtc_cast_tree_nodes", "Nodes with a fresh load report in this origin's registry (itself included)",
            registry=r,
        )
        self.placements = Counter(
            "webrtc_cast_placements", "WHEP POSTs placed by this origin: served here (self), sent elsewhere with "
            "307 (redirect), or refused because the whole tree is full (full)", ["result"], registry=r,
        )
        self.tree_report_errors = Counter(
            "webrtc_cast_tree_report_errors", "Load reports to the origin / registry that failed", registry=r
        )
        self.relay_reattach = Counter(
            "webrtc_cast_relay_reattach", "Relay links re-established, by cause: the link failed (link), its "
            "parent went silent and did not answer (parent_gone)", ["reason"], registry=r,
        )
        self.relay_heal_seconds = Histogram(
            "webrtc_cast_relay_heal_seconds", "Last packet from the old parent to first packet from the new link",
            buckets=(0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0), registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
