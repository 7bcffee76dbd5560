"""A node's place in the relay tree: its identity, its load reports and, at an origin, placement (adapter).

* Every node measures its load once per ``node_report_interval``: viewers, egress bit rate (bytes forwarded),
  process CPU, relay links, live streams.
* An origin (a node without a parent) owns a registry (memory, or Redis with ``--redis``), writes its own report
  into it and answers ``POST /nodes`` from relays. For a WHEP POST it asks :mod:`placement` which node should
  serve the viewer: itself, another node (the HTTP layer answers 307), or nobody (the tree is full: 503).
* A relay reports to its origin (``POST {origin}/nodes``) and learns the id of its tree's root from the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

from webrtc_cast.sfu_tree import placement
from webrtc_cast.sfu_tree.placement import NodeLoad
from webrtc_cast.sfu_tree.registry import NodeRegistry, make_registry

if TYPE_CHECKING:
    from webrtc_cast.node import Node

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class LoadMeter:
    """Rates from monotonic counters (PURE): bytes forwarded and CPU seconds, sampled at ``now``."""

    at: float | None = None
    octets: int = 0
    cpu_seconds: float = 0.0
    egress_bps: float = 0.0
    cpu: float = 0.0

    def sample(self, now: float, octets: int, cpu_seconds: float) -> None:
        if self.at is not None and now > self.at:
            dt = now - self.at
            self.egress_bps = max(0, octets - self.octets) * 8 / dt
            self.cpu = max(0.0, cpu_seconds - self.cpu_seconds) / dt
        self.at, self.octets, self.cpu_seconds = now, octets, cpu_seconds


def public_url(settings) -> str:  # noqa: ANN001 - Settings
    if settings.public_url:
        return settings.public_url.rstrip("/")
    scheme = "https" if settings.tls_cert else "http"
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"{scheme}://{host}:{settings.port}"


class Tree:
    """This node's membership in the tree. Built and started by the composition root (webrtc_cast.app); it reads
    the node's load and never writes into it. Relay links tell it their parent through :meth:`set_parent`."""

    def __init__(self, node: Node, registry: NodeRegistry | None = None) -> None:
        s = node.settings
        self.node = node
        self.id = secrets.token_hex(8)
        self.url = public_url(s)
        self.is_origin = not s.parent_url
        self.origin_url = (s.origin_url or s.parent_url or "").rstrip("/") or None
        self.root = self.id if self.is_origin else ""
        self.depth = 0 if self.is_origin else 1  # a relay: parent's depth + 1 once a link tells it
        self.parent: str | None = None if self.is_origin else s.parent_url.rstrip("/")
        self.registry = registry if registry is not None else (
            make_registry(s.redis_url, s.node_report_ttl, s.tree_redis_prefix, s.registry_max_nodes)
            if self.is_origin else None
        )
        self.meter = LoadMeter()
        self._pending: dict[str, tuple[float, int]] = {}  # node id -> (since wall time, viewers sent since)
        self._suspects: dict[str, float] = {}  # node URL -> wall time a viewer reported it failed (?avoid=)
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.registry is not None:
            await self.registry.start()
        if self.is_origin or self.origin_url:
            self._task = asyncio.create_task(self._report_loop(), name="tree-reports")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            if self.registry is not None:
                await self.registry.remove(self.id)
            elif self.origin_url and self._http is not None:
                timeout = aiohttp.ClientTimeout(total=self.node.settings.tree_leave_timeout)
                async with self._http.delete(f"{self.origin_url}/nodes/{self.id}", headers=self.auth_headers(),
                                             timeout=timeout) as r:
                    await r.read()
        if self.registry is not None:
            await self.registry.stop()
        if self._http is not None:
            await self._http.close()
            self._http = None

    def auth_headers(self) -> dict[str, str]:
        """What this node sends to the registry and the origin: the first cluster token, if any."""
        tokens = self.node.settings.cluster_tokens
        return {"Authorization": f"Bearer {tokens[0]}"} if tokens else {}

    def set_parent(self, parent: str, parent_depth: int | None = None) -> None:
        """A relay link attached to ``parent`` (whose depth, when it said, is ``parent_depth``)."""
        self.parent = parent
        if parent_depth is not None:
            self.depth = parent_depth + 1

    # -- load -----------------------------------------------------------------------------------------------
    def sample(self) -> None:
        octets = sum(b for _, b in self.node.forwarding_totals().values())
        self.meter.sample(time.monotonic(), octets, time.process_time())

    def load(self) -> NodeLoad:
        node, s = self.node, self.node.settings
        sessions = list(node.sessions.values())
        return NodeLoad(
            id=self.id, url=self.url, depth=self.depth, root=self.root, parent=self.parent,
            viewers=sum(1 for x in sessions if x.role == "whep"), max_viewers=s.max_viewers,
            egress_bps=round(self.meter.egress_bps), max_egress_bps=s.max_egress_bps,
            cpu=round(self.meter.cpu, 3), max_cpu=s.max_cpu, locality=s.locality,
            streams=tuple(sorted(n for n, b in node.broadcasts.items() if b.live)),
            relays=sum(1 for x in sessions if x.role == "relay"), reported_at=time.time(),
        )

    async def _report_loop(self) -> None:
        interval = self.node.settings.node_report_interval
        while True:
            self.sample()
            try:
                if self.registry is not None:
                    await self.registry.report(self.load())
                    self.node.metrics.tree_nodes.set(len(await self.registry.nodes()))
                else:
                    await self._report_to_origin()
            except Exception as exc:  # noqa: BLE001 - a missed report is survivable; keep reporting
                self.node.metrics.tree_report_errors.inc()
                logger.info("load report failed: %s", exc)
            await asyncio.sleep(interval)

    async def _report_to_origin(self) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.node.settings.tree_report_timeout)
            )
        body = self.load().to_json()
        headers = {"Content-Type": "application/json", **self.auth_headers()}
        async with self._http.post(f"{self.origin_url}/nodes", data=body, headers=headers) as r:
            if r.history:  # a relay pointed us at its origin (307): report there directly from now on
                self.origin_url = str(r.url).rsplit("/nodes", 1)[0]
            if r.status != 200:
                raise RuntimeError(f"origin answered {r.status}: {(await r.text())[:200]}")
            answer = await r.json()
        root = answer.get("root") if isinstance(answer, dict) else None
        if isinstance(root, str):
            self.root = root

    # -- placement (origin) ---------------------------------------------------------------------------------
    async def nodes(self) -> list[NodeLoad]:
        """The registry's fresh nodes, this node's own entry replaced by its load right now."""
        assert self.registry is not None
        others = [n for n in await self.registry.nodes() if n.id != self.id]
        return [self.load(), *others]

    async def place_viewer(self, stream: str, locality: str | None, avoid: list[str]) -> NodeLoad | None:
        """Which node should serve a new viewer of ``stream``: this node's own load for "here", another node's
        for a redirect, None when the tree is full. With no other node registered: always here."""
        nodes = await self.nodes()
        now = time.time()
        if len(placement.fresh(nodes, now, self.node.settings.node_report_ttl)) <= 1:
            return nodes[0]
        avoid = [a for a in avoid if a != self.url]  # this node is answering: it is not gone
        s = self.node.settings
        for url in avoid:  # a viewer lost this node: skip it for everyone until it reports again
            if len(self._suspects) < s.tree_max_suspects or url in self._suspects:
                self._suspects[url] = now
        suspects = []
        for n in nodes:
            since = self._suspects.get(n.url)
            if since is not None and n.reported_at <= since:
                suspects.append(n.id)
            elif since is not None:
                del self._suspects[n.url]
        for url in [u for u, t in self._suspects.items() if now - t > s.tree_suspect_seconds]:
            del self._suspects[url]
        pending = {}
        for n in nodes:
            since, count = self._pending.get(n.id, (0.0, 0))
            if n.id != self.id and n.reported_at <= since:
                pending[n.id] = count
        choice = placement.choose_viewer_node(
            nodes, stream, now=now, ttl=self.node.settings.node_report_ttl, locality=locality, pending=pending,
            avoid=[*avoid, *suspects], home_root=self.root,
        )
        if choice is not None and choice.id != self.id:
            self._pending[choice.id] = (now, pending.get(choice.id, 0) + 1)
        return choice

    async def place_parent(self, child_url: str, avoid: list[str], stream: str | None) -> NodeLoad | None:
        nodes = await self.nodes()
        return placement.choose_parent(
            nodes, child_url=child_url, now=time.time(), ttl=self.node.settings.node_report_ttl, avoid=avoid,
            stream=stream,
        )
