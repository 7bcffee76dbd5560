"""Relay links: a node whose sources are its parent's layers (DESIGN.md §1) — asyncio adapter.

When a viewer asks a relay node for a stream, the relay subscribes once to its parent with
``POST {parent}/relay/{stream}``: a recvonly offer of our own, answered with every simulcast layer (one SSRC
each, announced as ``a=ssrc-group:SIM`` plus ``a=x-cast-layers:l,m,h``). The link then feeds the local Broadcast
exactly as a WHIP publisher would (a PublisherSession), so the relay's viewers get the same layer selection,
keyframe cache, NACK repair and sender reports. Keyframe requests go up the link hop by hop, merged and
throttled at each hop.

Healing: a link is supervised. When its transport fails, or when a live link is silent for
``relay_link_timeout`` and a probe of the link's session URL at the parent (``GET``, ``relay_probe_timeout``)
fails, the relay connects again: to the same parent when only the link was lost (the probe said 404), to
ANOTHER node when the parent is gone (no answer). The new parent comes from the origin's registry
(``GET {origin}/nodes/parent``: shallowest node with room, never one of our own descendants), else from the
``--parent`` list in turn; the origin is always a candidate. Viewers keep their sessions: their forwarders start
a new epoch at the new link's first keyframe, so sequence numbers and timestamps stay continuous.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import aiohttp
from yarl import URL

from webrtc_cast.sdp import description as sdp
from webrtc_cast.sfu_tree import negotiate
from webrtc_cast.sfu_tree.sessions import PublisherSession

if TYPE_CHECKING:
    from webrtc_cast.node import Node
    from webrtc_cast.sfu_tree.tree import Tree

logger = logging.getLogger(__name__)

class RelayLinks:
    """One link per stream this node serves from its parent, kept while the stream has viewers.

    Built by the composition root (webrtc_cast.app), which subscribes :meth:`want` to ``node.on_viewer_wants``
    and :meth:`Tree.set_parent` to ``on_parent_change``. ``tree`` (read only here) gives the origin to ask for a
    new parent, this node's URL and the registry's credentials.
    """

    def __init__(
        self, node: Node, parent_url: str, token: str | None = None, linger: float = 10.0,
        fallback_parents: list[str] | tuple[str, ...] = (), tree: Tree | None = None,
    ) -> None:
        self.node = node
        self.tree = tree
        # listeners: this node's parent changed (url, the parent's depth when it said one, else None)
        self.on_parent_change: list[Callable[[str, int | None], None]] = []
        self.parents = list(dict.fromkeys(p.rstrip("/") for p in (parent_url, *fallback_parents)))
        self.parent_url = self.parents[0]  # the current parent of every link of this node
        self.token = token
        self.linger = linger
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._session_urls: dict[str, str] = {}  # link session id -> its URL at the parent (for probes)
        self._lock = asyncio.Lock()
        self._gap_since: dict[str, float] = {}  # stream -> monotonic time of the last packet of a lost link
        self.reconnects = 0
        self.parent_changes = 0
        self.last_heal_seconds: float | None = None

    def want(self, stream: str) -> None:
        task = self._tasks.get(stream)
        if task is None or task.done():
            self._tasks[stream] = asyncio.create_task(self._keep(stream))

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _wanted(self, stream: str) -> bool:
        b = self.node.broadcasts.get(stream)
        return b is not None and any(b.forwarders.values())

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def _keep(self, stream: str) -> None:
        backoff = 0.2
        backoff_max = self.node.settings.relay_retry_max
        idle_since: float | None = None
        while True:
            if not self._wanted(stream):
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > self.linger:
                    return
            else:
                idle_since = None
            parent = self.parent_url
            try:
                session = await self._connect(stream, parent)
            except (aiohttp.ClientConnectionError, OSError, TimeoutError) as exc:
                logger.info("relay %s: parent %s unreachable (%s)", stream, parent, exc)
                if await self._parent_gone(parent, stream):
                    continue  # another parent: try it at once
                await asyncio.sleep(backoff)
                backoff = min(backoff_max, backoff * 2)
                continue
            except (aiohttp.ClientError, sdp.SdpError, ValueError) as exc:
                logger.info("relay %s: parent %s not live or refused (%s); retrying", stream, parent, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff_max, backoff * 2)
                continue
            backoff = 0.2
            reason = await self._supervise(stream, session, parent)
            await self.node.close_session(session)
            self._session_urls.pop(session.id, None)
            self.reconnects += 1
            self.node.metrics.relay_reattach.labels(reason).inc()
            logger.info("relay %s: link to %s ended (%s); re-attaching", stream, parent, reason)
            if reason == "parent_gone":
                await self._parent_gone(parent, stream)

    async def _supervise(self, stream: str, session: PublisherSession, parent: str) -> str:
        """Wait until the link is lost: 'link' (transport failed, or the parent no longer knows the link) or
        'parent_gone' (the link went silent and the parent does not answer)."""
        s = self.node.settings
        broadcast = session.broadcast
        last = -1
        last_change = time.monotonic()
        got_media = False
        while True:
            try:
                await asyncio.wait_for(session.transport.failed.wait(), 0.05)
                self._gap_since[stream] = last_change
                return "link"
            except TimeoutError:
                pass
            if session.closed:
                return "link"
            count = sum(t.buffer.packets for t in broadcast.tracks.values())
            now = time.monotonic()
            if count != last:
                if last >= 0 and not got_media:
                    got_media = True
                    since = self._gap_since.pop(stream, None)
                    if since is not None:
                        self.last_heal_seconds = now - since
                        self.node.metrics.relay_heal_seconds.observe(self.last_heal_seconds)
                last, last_change = count, now
            elif now - last_change > s.relay_link_timeout and (got_media or broadcast.live):
                alive = await self._probe(session)
                if alive is None:
                    self._gap_since[stream] = last_change
                    return "parent_gone"
                if alive is False:
                    self._gap_since[stream] = last_change
                    return "link"
                last_change = time.monotonic()  # the parent is there and has the link: the stream is quiet

    async def _probe(self, session: PublisherSession) -> bool | None:
        """True: the parent holds our link; False: it answers but does not; None: no answer in time."""
        url = self._session_urls.get(session.id)
        if url is None:
            return True
        timeout = aiohttp.ClientTimeout(total=self.node.settings.relay_probe_timeout)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url, headers=self._headers()) as r:
                return r.status < 400
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None

    async def _parent_gone(self, dead: str, stream: str) -> bool:
        """Move this node to another parent (once, however many links noticed). True if the parent changed."""
        async with self._lock:
            if self.parent_url != dead:
                return True  # another link already moved us
            new = await self._ask_origin(dead, stream)
            if new is None:
                tree = self.tree
                ring = list(dict.fromkeys([*self.parents, *([tree.origin_url] if tree and tree.origin_url else [])]))
                if dead in ring and len(ring) > 1:
                    new = ring[(ring.index(dead) + 1) % len(ring)]
                elif ring and ring[0] != dead:
                    new = ring[0]
            if new is None or new == dead:
                return False
            logger.info("relay: parent %s is gone; re-attaching to %s", dead, new)
            self.parent_url = new
            self.parent_changes += 1
            for listener in self.on_parent_change:
                listener(new, None)
            return True

    async def _ask_origin(self, dead: str, stream: str) -> str | None:
        tree = self.tree
        if tree is None or not tree.origin_url or tree.origin_url == dead:
            return None
        params = {"url": tree.url, "avoid": dead, "stream": stream}
        timeout = aiohttp.ClientTimeout(total=max(0.2, self.node.settings.relay_probe_timeout))
        try:
            async with aiohttp.ClientSession(timeout=timeout) as http, http.get(
                f"{tree.origin_url}/nodes/parent", params=params, headers=tree.auth_headers()
            ) as r:
                if r.status != 200:
                    return None
                answer = await r.json()
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return None
        url = answer.get("url") if isinstance(answer, dict) else None
        return url.rstrip("/") if isinstance(url, str) and url.startswith(("http://", "https://")) else None

    async def _connect(self, stream: str, parent: str) -> PublisherSession:
        node = self.node
        transport = negotiate.link_transport(node.settings, node.certificate)
        try:
            try:
                local = await transport.gather()
            except OSError as exc:  # a local problem: not a reason to leave the parent
                raise ValueError(f"cannot gather ICE candidates: {exc}") from exc
            headers = {"Content-Type": "application/sdp", **self._headers()}
            timeout = aiohttp.ClientTimeout(total=node.settings.relay_connect_timeout)
            url = f"{parent}/relay/{stream}"
            async with aiohttp.ClientSession(timeout=timeout) as http, http.post(
                url, data=negotiate.build_offer(local), headers=headers
            ) as r:
                body = await r.text()
                if r.status != 201:
                    raise ValueError(f"parent answered {r.status}: {body.strip()[:200]}")
                location = r.headers.get("Location")
                depth = r.headers.get("X-Cast-Depth", "")
            session = negotiate.accept_link_answer(transport, local, body, stream, node.broadcast, node.metrics)
        except BaseException:
            await transport.close()
            raise
        if location:
            self._session_urls[session.id] = str(URL(url).join(URL(location)))
        if depth.isdigit() and len(depth) < 4:
            for listener in self.on_parent_change:
                listener(parent, int(depth))
        node.adopt_session(session)
        return session
