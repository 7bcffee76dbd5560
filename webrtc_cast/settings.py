"""Every limit and knob of a node, with its documented default (docs/configuration.md lists them all)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

PUBLISH_TOKEN_ENV = "WEBRTC_CAST_PUBLISH_TOKENS"  # comma-separated Bearer tokens for WHIP
VIEW_TOKEN_ENV = "WEBRTC_CAST_VIEW_TOKENS"  # comma-separated Bearer tokens for WHEP (empty: open)
CLUSTER_TOKEN_ENV = "WEBRTC_CAST_CLUSTER_TOKENS"  # comma-separated Bearer tokens relays register with (empty: closed)


@dataclass(slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    ice_hosts: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    publish_tokens: list[str] = field(default_factory=list)  # empty: ingest is open (logged loudly)
    view_tokens: list[str] = field(default_factory=list)  # empty: viewing is open
    max_viewers: int = 2000  # WHEP sessions per node; beyond it 503 + Retry-After
    max_sdp_bytes: int = 64 * 1024  # larger bodies: 413
    session_setup_timeout: float = 20.0  # seconds from POST to DTLS connected, else the session is dropped
    keyframe_request_interval: float = 0.5  # seconds between PLIs toward a publisher (merged, throttled)
    nack_buffer_packets: int = 1024  # per track, power of two: how far back NACKs can be repaired
    keyframe_cache_max_age: float = 1.5  # seconds: an older cached keyframe is not burst; a fresh one is asked for
    keyframe_cache_packets: int = 3000  # per track: GOP longer than this disables the keyframe cache
    sender_report_interval: float = 1.0  # seconds between RTCP sender reports per outbound stream
    whep_retry_after: int = 5  # seconds, in 409 (not live, when required) and 503 (full) answers
    require_live_for_whep: bool = False  # False: viewers may join before the broadcast goes live
    ingest_max_bitrate: int = 6_000_000  # bit/s announced to publishers by REMB (all layers together)
    preferred_video_codecs: tuple[str, ...] = ("H264", "VP8")
    http_requests_per_second: float = 20.0  # POST/PATCH/DELETE per client address; beyond it 429
    http_burst: int = 40  # requests a client address may make at once before the rate applies
    tls_cert: str | None = None  # PEM certificate: serve HTTPS (RFC 9725 §5 wants TLS in production)
    tls_key: str | None = None
    hls_part_target: float = 0.25  # LL-HLS PART-TARGET, seconds (0.2-0.333 suits 30 fps)
    hls_part_hold_back: float = 3.0  # PART-HOLD-BACK in part targets (>= 3, H02): the player's buffer at the edge
    hls_segment_min: float = 1.0  # seconds: a segment is cut at the first keyframe after this much media
    hls_target_duration: int = 2  # EXT-X-TARGETDURATION, seconds; a longer GOP is cut without a keyframe
    hls_window: float = 30.0  # seconds of segments listed per media playlist (>= 3 x hls_target_duration)
    hls_linger: float = 60.0  # seconds an ended broadcast's playlists (with EXT-X-ENDLIST) stay served
    hls_audio_bitrate: int = 128_000  # AAC-LC bits per second (Opus is transcoded once per broadcast)
    parent_url: str | None = None  # relay mode: the node to take streams from (POST {parent}/relay/{stream})
    parent_token: str | None = None  # Bearer token for the parent (one of its view tokens)
    relay_linger: float = 10.0  # seconds a relay keeps a link to its parent after its last viewer left
    # The relay tree: registry, load reports, placement, healing (docs/scaling.md).
    fallback_parents: list[str] = field(default_factory=list)  # relay: more parents to try when the parent is gone
    origin_url: str | None = None  # relay: where to register and ask for a new parent (default: parent_url)
    public_url: str | None = None  # this node's base URL for viewers and children (default: http(s)://host:port)
    locality: str | None = None  # optional label (region, rack); viewers asking ?locality=X prefer such nodes
    max_egress_bps: float = 0.0  # bit/s to viewers and child relays; at it, placement sends viewers elsewhere; 0: none
    max_cpu: float = 0.0  # process CPU (1.0 = one core) at which placement sends viewers elsewhere; 0: no CPU limit
    cluster_tokens: list[str] = field(default_factory=list)  # Bearer tokens for /nodes; empty: registration closed
    open_cluster: bool = False  # lab only: no cluster token, yet anyone may join (WARNING)
    placement: bool = True  # an origin with registered relays answers POST /whep with 307 to the best node
    node_report_interval: float = 1.0  # seconds between load reports of each node
    node_report_ttl: float = 4.0  # seconds without a report after which a node is out of the tree
    relay_link_timeout: float = 0.6  # seconds of silence on a live relay link before the parent is probed
    relay_probe_timeout: float = 0.4  # seconds the probe (GET of the link's URL at the parent) may take
    tree_redis_prefix: str = "webrtc-cast:tree"  # Redis key prefix of the registry (with --redis)
    web_root: str | None = None  # folder of the browser pages; None: the packaged web/ folder
    redis_url: str | None = None  # --redis: chat rooms span nodes via Redis pub/sub, history kept there; None: memory
    # Chat (GET /chat/{stream}, docs/chat.md).
    chat_moderator_tokens: list[str] = field(default_factory=list)  # join tokens of moderators (publish tokens too)
    chat_history: int = 100  # messages kept per room (in Redis when --redis) and sent on join
    chat_max_text_chars: int = 500  # code points per message
    chat_max_name_chars: int = 32  # code points per display name
    chat_max_frame_bytes: int = 4096  # larger client frames: error frame; over 4x this the socket closes (1009)
    chat_frames_per_second: float = 20.0  # any client frame, per connection (token bucket)
    chat_frame_burst: int = 40
    chat_messages_per_second: float = 1.0  # chat messages per connection (token bucket)
    chat_message_burst: int = 5
    chat_reactions_per_second: float = 5.0  # reactions per connection (token bucket)
    chat_reaction_burst: int = 20
    chat_max_violations: int = 10  # limit violations within the window before a close with 1008
    chat_violation_window: float = 10.0  # seconds
    chat_max_slow_mode: float = 3600.0  # the largest slow-mode interval a moderator may set, seconds
    chat_max_connections_per_address: int = 20  # WebSockets per client address per node; beyond: close 4029
    chat_client_buffer_bytes: int = 256 * 1024  # outgoing buffer per connection; a message past it: close 4008
    chat_reaction_interval: float = 0.25  # seconds: reactions are counted and sent as one frame per interval
    chat_viewers_interval: float = 2.0  # seconds between viewer-count updates (sent only when changed)
    chat_join_timeout: float = 10.0  # seconds from the upgrade to the join frame, else close 4000
    chat_heartbeat: float = 30.0  # seconds between WebSocket pings; a missed pong closes the socket
    chat_max_rooms: int = 10_000  # rooms per node; idle ones are forgotten first (memory: their history too)
    chat_ban_addresses: bool = True  # a ban also bans the client address (all its connections)
    chat_redis_prefix: str = "webrtc-cast:chat"  # Redis key and channel prefix
    chat_redis_ttl: int = 7 * 86400  # seconds a room's Redis keys live after its last change
    # -- tree, relay and signaling limits
    tick_interval: float = 0.1  # seconds between a node's housekeeping ticks (session ticks, bitrate samples)
    registry_max_nodes: int = 10_000  # nodes a registry holds; a new node beyond it: 503 (fake ids cannot grow it)
    tree_max_report_bytes: int = 64 * 1024  # larger load reports (POST /nodes): 413
    tree_max_avoid: int = 8  # ?avoid= values read from a WHEP POST or GET /nodes/parent; the rest are ignored
    tree_max_suspects: int = 1000  # node URLs viewers reported failed, remembered at an origin
    tree_suspect_seconds: float = 60.0  # how long a suspect is remembered without a newer report from it
    tree_report_timeout: float = 2.0  # seconds a relay's load report to its origin may take
    tree_leave_timeout: float = 1.0  # seconds a relay's DELETE /nodes/{id} at shutdown may take
    relay_connect_timeout: float = 5.0  # seconds the POST {parent}/relay/{stream} of a relay link may take
    relay_retry_max: float = 2.0  # seconds: the longest wait between attempts to reach a refusing parent
    whep_max_json_bytes: int = 4096  # larger layer-selection / SSE bodies: 413
    whep_max_event_streams: int = 4  # SSE event streams per WHEP session; beyond: 429
    whep_sse_queue: int = 32  # events held per SSE stream; a slow reader loses the oldest
    whep_sse_keepalive: float = 15.0  # seconds of no event before an SSE keep-alive comment

    @property
    def cluster_closed(self) -> bool:
        """No cluster token and no explicit open cluster: nobody joins the tree, nobody is placed elsewhere."""
        return not self.cluster_tokens and not self.open_cluster

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        s = cls(**overrides)  # type: ignore[arg-type]
        if not s.publish_tokens:
            s.publish_tokens = _split(os.environ.get(PUBLISH_TOKEN_ENV, ""))
        if not s.view_tokens:
            s.view_tokens = _split(os.environ.get(VIEW_TOKEN_ENV, ""))
        if not s.cluster_tokens:
            s.cluster_tokens = _split(os.environ.get(CLUSTER_TOKEN_ENV, ""))
        return s


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]
