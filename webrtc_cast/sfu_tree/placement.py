"""Placement in the relay tree (PURE: values in, a choice out; no clock of its own, no I/O).

Every node of a tree (the origin too) reports its load about once a second: viewers, egress bit rate, CPU, its
depth in the tree, its public URL and an optional locality label. From those reports:

* :func:`choose_viewer_node` picks the node that should serve a new WHEP viewer: a fresh node with headroom,
  the viewer's locality label first, then the shallowest (fewest hops, lowest latency), then the least loaded.
  None means the whole tree is full (the caller answers 503 ``{"error":"full","fallback":"hls"}``).
* :func:`choose_parent` picks where a relay re-attaches when its parent went away: never itself nor one of its
  own descendants (no cycles), never the node that just failed, shallowest and least loaded first.

Reports older than ``ttl`` seconds are ignored (a node that missed a few reports is gone). ``pending`` counts
viewers sent to a node since its last report, so a burst of joins between two reports spreads out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

MAX_URL_CHARS = 512
MAX_LABEL_CHARS = 64
MAX_STREAMS = 1000


class BadReport(ValueError):
    """A load report that is not a JSON object with the documented fields and types."""


@dataclass(frozen=True, slots=True)
class NodeLoad:
    id: str  # stable for the life of the process (random), unique in the tree
    url: str  # public base URL, e.g. http://10.0.0.2:8080 (viewers are sent to {url}/whep/{stream})
    depth: int = 0  # 0: origin; a relay: its parent's depth + 1
    root: str = ""  # the id of the tree's origin (several origins can share one registry)
    parent: str | None = None  # base URL of the node's current parent (None: an origin)
    viewers: int = 0  # WHEP sessions now
    max_viewers: int = 0  # the node's own limit (settings.max_viewers)
    egress_bps: float = 0.0  # bits per second sent to viewers and child relays (last report interval)
    max_egress_bps: float = 0.0  # 0: no egress limit
    cpu: float = 0.0  # process CPU over the last interval, 1.0 = one core busy
    max_cpu: float = 0.0  # 0: no CPU limit
    locality: str | None = None  # optional label (a region, a rack, a city)
    streams: tuple[str, ...] = ()  # broadcasts live on this node
    relays: int = 0  # child relay links now
    reported_at: float = 0.0  # wall clock (time.time()) of the report

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_mapping(cls, data: object, reported_at: float | None = None) -> NodeLoad:
        """Validate an untrusted report (an HTTP body, a Redis value). Raises BadReport."""
        if not isinstance(data, Mapping):
            raise BadReport("a load report is a JSON object")
        try:
            node = cls(
                id=_text(data, "id", required=True, limit=MAX_LABEL_CHARS),
                url=_url(data.get("url")),
                depth=_int(data, "depth", 0, 64),
                root=_text(data, "root", limit=MAX_LABEL_CHARS) or "",
                parent=_url(data["parent"]) if data.get("parent") else None,
                viewers=_int(data, "viewers", 0, 10**7),
                max_viewers=_int(data, "max_viewers", 0, 10**7),
                egress_bps=_num(data, "egress_bps"),
                max_egress_bps=_num(data, "max_egress_bps"),
                cpu=_num(data, "cpu", 1024.0),
                max_cpu=_num(data, "max_cpu", 1024.0),
                locality=_text(data, "locality", limit=MAX_LABEL_CHARS),
                streams=_streams(data.get("streams", ())),
                relays=_int(data, "relays", 0, 10**7),
                reported_at=float(reported_at if reported_at is not None else _num(data, "reported_at", 1e12)),
            )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, BadReport):
                raise
            raise BadReport(str(exc)) from None
        return node

    # -- load -------------------------------------------------------------------------------------------------
    def per_viewer_bps(self) -> float:
        return self.egress_bps / self.viewers if self.viewers else 0.0

    def has_headroom(self, pending: int = 0) -> bool:
        viewers = self.viewers + pending
        if viewers >= self.max_viewers:
            return False
        if self.max_egress_bps > 0 and self.egress_bps + (pending + 1) * self.per_viewer_bps() > self.max_egress_bps:
            return False
        return not (self.max_cpu > 0 and self.cpu >= self.max_cpu)

    def load(self, pending: int = 0) -> float:
        """The fullest of the node's limits, 0.0 (idle) .. 1.0 (at a limit)."""
        parts = [(self.viewers + pending) / self.max_viewers if self.max_viewers > 0 else 1.0]
        if self.max_egress_bps > 0:
            parts.append((self.egress_bps + pending * self.per_viewer_bps()) / self.max_egress_bps)
        if self.max_cpu > 0:
            parts.append(self.cpu / self.max_cpu)
        return max(parts)


def fresh(nodes: Iterable[NodeLoad], now: float, ttl: float) -> list[NodeLoad]:
    """Reports no older than ``ttl`` seconds (a report from the future, by clock skew, counts as fresh)."""
    return [n for n in nodes if now - n.reported_at <= ttl]


def serving_roots(nodes: Iterable[NodeLoad], stream: str) -> set[str]:
    """The trees (by root id) in which ``stream`` is live somewhere."""
    return {n.root or n.id for n in nodes if stream in n.streams}


def choose_viewer_node(
    nodes: Iterable[NodeLoad],
    stream: str,
    *,
    now: float,
    ttl: float,
    locality: str | None = None,
    pending: Mapping[str, int] | None = None,
    avoid: Iterable[str] = (),
    home_root: str | None = None,
) -> NodeLoad | None:
    """The node that should serve a new viewer of ``stream``, or None when every candidate is full.

    Candidates: fresh nodes of a tree where the stream is live (any tree's node can fetch it from its parent);
    when it is live nowhere, the nodes of ``home_root`` (the asking origin's own tree: viewers may wait for the
    broadcast). ``avoid`` holds node ids or URLs the viewer failed with just now.
    """
    pending = pending or {}
    avoided = set(avoid)
    live = fresh(nodes, now, ttl)
    roots = serving_roots(live, stream) or ({home_root} if home_root else {n.root or n.id for n in live})
    best: tuple[tuple[int, int, float, str], NodeLoad] | None = None
    for n in live:
        if (n.root or n.id) not in roots or n.id in avoided or n.url in avoided:
            continue
        extra = pending.get(n.id, 0)
        if not n.has_headroom(extra):
            continue
        key = (0 if locality and n.locality == locality else 1, n.depth, n.load(extra), n.id)
        if best is None or key < best[0]:
            best = (key, n)
    return None if best is None else best[1]


def descendants(nodes: Iterable[NodeLoad], node_url: str) -> set[str]:
    """URLs of every node below ``node_url`` (children by their reported parent, transitively)."""
    children: dict[str, list[str]] = {}
    for n in nodes:
        if n.parent:
            children.setdefault(n.parent.rstrip("/"), []).append(n.url.rstrip("/"))
    found: set[str] = set()
    todo = [node_url.rstrip("/")]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def choose_parent(
    nodes: Iterable[NodeLoad],
    *,
    child_url: str,
    now: float,
    ttl: float,
    avoid: Iterable[str] = (),
    stream: str | None = None,
    max_depth: int | None = None,
) -> NodeLoad | None:
    """Where a relay at ``child_url`` should re-attach: not itself, not below itself, not in ``avoid`` (URLs),
    a node with room for one more link, in a tree where ``stream`` is live when one is; shallowest, then least
    loaded. ``max_depth`` bounds the parent's depth (None: any)."""
    live = fresh(nodes, now, ttl)
    me = child_url.rstrip("/")
    banned = {me, *(u.rstrip("/") for u in avoid), *descendants(live, me)}
    roots = serving_roots(live, stream) if stream else set()
    best: tuple[tuple[int, int, float, str], NodeLoad] | None = None
    for n in live:
        if n.url.rstrip("/") in banned or (max_depth is not None and n.depth > max_depth):
            continue
        if n.max_egress_bps > 0 and n.egress_bps + n.per_viewer_bps() * 3 > n.max_egress_bps:
            continue  # a relay link carries every layer: about three viewers' worth
        key = (0 if not roots or (n.root or n.id) in roots else 1, n.depth, n.load(), n.id)
        if best is None or key < best[0]:
            best = (key, n)
    return None if best is None else best[1]


# -- validation helpers ----------------------------------------------------------------------------------------
def _text(data: Mapping, key: str, *, required: bool = False, limit: int) -> str | None:  # type: ignore[type-arg]
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise BadReport(f"{key} is required")
        return None
    if not isinstance(value, str) or len(value) > limit or not value.isprintable():
        raise BadReport(f"{key} must be a printable string of at most {limit} characters")
    return value


def _url(value: object) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")) or len(value) > MAX_URL_CHARS:
        raise BadReport("url must be an http(s) URL")
    if any(c.isspace() for c in value) or not value.isprintable():
        raise BadReport("url must not contain spaces or control characters")
    return value.rstrip("/")


def _int(data: Mapping, key: str, low: int, high: int) -> int:  # type: ignore[type-arg]
    value = data.get(key, low)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadReport(f"{key} must be an integer in [{low}, {high}]")
    return value


def _num(data: Mapping, key: str, high: float = 1e13) -> float:  # type: ignore[type-arg]
    value = data.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= high:
        raise BadReport(f"{key} must be a number in [0, {high:g}]")
    return float(value)


def _streams(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or len(value) > MAX_STREAMS:
        raise BadReport(f"streams must be a list of at most {MAX_STREAMS} names")
    if not all(isinstance(s, str) and 0 < len(s) <= 64 for s in value):
        raise BadReport("streams must be stream names")
    return tuple(value)


__all__ = ["BadReport", "NodeLoad", "choose_parent", "choose_viewer_node", "descendants", "fresh"]
