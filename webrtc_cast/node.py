"""Node: one SFU process — broadcasts, sessions and the periodic housekeeping (asyncio adapter)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable

from webrtc_cast.metrics import NodeMetrics
from webrtc_cast.settings import Settings
from webrtc_cast.sfu_tree import negotiate
from webrtc_cast.sfu_tree.aiortc_glue import generate_certificate
from webrtc_cast.sfu_tree.broadcast import Broadcast
from webrtc_cast.sfu_tree.sessions import Session, ViewerSession

logger = logging.getLogger(__name__)

STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class NodeFull(Exception):
    """The node carries its configured maximum of viewers."""


class NotLive(Exception):
    """A relay link asked for a stream that is not live here."""


class Node:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.certificate = generate_certificate()
        self._retired_pump = [0, 0, 0]
        self.metrics = NodeMetrics(self.forwarding_totals, self.ingest_totals, self.pump_totals)
        self._retired_forwarding: dict[str, list[int]] = {}  # kind -> [packets, bytes] of closed viewers
        self._retired_ingest: dict[tuple[str, str], list[int]] = {}
        self.broadcasts: dict[str, Broadcast] = {}
        self.sessions: dict[str, Session] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._tick_task: asyncio.Task[None] | None = None
        self._last_bitrate_sample = time.monotonic()
        # listeners (the relay links, at a relay): a WHEP viewer asked for a stream
        self.on_viewer_wants: list[Callable[[str], None]] = []
        # listeners (the LL-HLS packagers): a Broadcast was created / removed from this node
        self.on_broadcast_created: list[Callable[[Broadcast], None]] = []
        self.on_broadcast_removed: list[Callable[[Broadcast], None]] = []
        # listeners (the WHEP event streams): a broadcast's layers, liveness or audience changed
        self.on_broadcast_event: list[Callable[[Broadcast, list[ViewerSession], str], None]] = []

    # -- lifecycle ----------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._tick_task is None:
            self._tick_task = asyncio.create_task(self._tick_loop())

    async def stop(self) -> None:
        """Stop housekeeping and close every session (the composition root closes relay links first)."""
        if self._tick_task is not None:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick_task
            self._tick_task = None
        await asyncio.gather(*(self.close_session(s) for s in list(self.sessions.values())))

    def broadcast(self, name: str) -> Broadcast:
        b = self.broadcasts.get(name)
        if b is None:
            s = self.settings
            b = Broadcast(
                name, s.nack_buffer_packets, s.keyframe_cache_packets, s.keyframe_request_interval,
                s.keyframe_cache_max_age,
            )
            b.on_layers_change = lambda: self._broadcast_event(b, "layers")
            b.on_live_change = lambda live: self._broadcast_event(b, "live")
            self.broadcasts[name] = b
            for listener in self.on_broadcast_created:
                listener(b)
        return b

    @property
    def viewer_sessions(self) -> int:
        return sum(1 for s in self.sessions.values() if s.role in ("whep", "relay"))

    # -- sessions -----------------------------------------------------------------------------------------
    async def create_session(self, role: str, stream: str, offer_text: str, token: str | None) -> tuple[Session, str]:
        """Negotiate a WHIP ('whip'), WHEP ('whep') or relay-link ('relay') session (webrtc_cast.sfu_tree.negotiate).

        Raises sdp.SdpError / SdpUnsupported, NodeFull, NotLive (relay links need a live stream).
        """
        offer = negotiate.read_offer(offer_text)
        if role == "whep" and self.viewer_sessions >= self.settings.max_viewers:
            raise NodeFull()
        if role == "relay" and not (stream in self.broadcasts and self.broadcasts[stream].live):
            raise NotLive()
        broadcast = self.broadcast(stream)
        if role == "whep":
            for listener in self.on_viewer_wants:
                listener(stream)
        session, answer, start = await negotiate.answer_offer(
            role, stream, offer, broadcast, self.settings, self.certificate, self.metrics, token
        )
        self.sessions[session.id] = session
        start()
        self._spawn(self._await_connected(session))
        return session, answer

    def adopt_session(self, session: Session) -> None:
        """Run a session negotiated elsewhere (a relay link to the parent) like one made by a POST here."""
        self.sessions[session.id] = session
        self._spawn(self._await_connected(session))

    def _spawn(self, coro) -> None:  # noqa: ANN001
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _await_connected(self, session: Session) -> None:
        transport = session.transport
        connected = asyncio.ensure_future(transport.connected.wait())
        failed = asyncio.ensure_future(transport.failed.wait())
        try:
            done, _ = await asyncio.wait(
                {connected, failed}, timeout=self.settings.session_setup_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            connected.cancel()
            failed.cancel()
        if session.closed:
            return
        if not transport.connected.is_set():
            logger.info("%s session %s did not connect; dropping it", session.role, session.id[:8])
            await self.close_session(session)
            return
        session.connected_at = time.monotonic()
        if session.role == "whip":
            for other in list(self.sessions.values()):
                if other is not session and other.role == "whip" and other.stream == session.stream:
                    logger.info("publisher %s replaced by %s", other.id[:8], session.id[:8])
                    await self.close_session(other)
        try:
            session.on_connected()
        except Exception:
            logger.exception("session %s failed to start", session.id[:8])
            await self.close_session(session)
            return
        if session.role == "whep":
            self._broadcast_event(session.broadcast, "viewers")
        await transport.failed.wait()
        if not session.closed:
            logger.info("%s session %s transport ended", session.role, session.id[:8])
            await self.close_session(session)

    async def close_session(self, session: Session) -> None:
        if session.closed:
            return
        session.closed = True
        self.sessions.pop(session.id, None)
        try:
            session.on_closed()
        except Exception:
            logger.exception("session %s cleanup failed", session.id[:8])
        self._retire(session)
        if session.role == "whep":
            self._broadcast_event(session.broadcast, "viewers")
        await session.transport.close()
        b = self.broadcasts.get(session.stream)
        if b is not None and b.idle:
            self.broadcasts.pop(session.stream, None)
            for listener in self.on_broadcast_removed:
                listener(b)
            for kind, track in b.tracks.items():
                t = self._retired_ingest.setdefault((session.stream, kind), [0, 0])
                t[0] += track.buffer.packets
                t[1] += track.buffer.octets

    def _broadcast_event(self, broadcast: Broadcast, what: str) -> None:
        """Layers, liveness or audience changed: automatic selection may move viewers; SSE streams hear it."""
        if what == "layers":
            broadcast.reselect_all(time.monotonic())
        viewers = [s for s in self.sessions.values() if s.role == "whep" and s.broadcast is broadcast]
        for listener in self.on_broadcast_event:
            listener(broadcast, viewers, what)  # type: ignore[arg-type]

    # -- counters read at scrape time ----------------------------------------------------------------------
    def forwarding_totals(self) -> dict[str, tuple[int, int]]:
        totals = {k: list(v) for k, v in self._retired_forwarding.items()}
        for s in self.sessions.values():
            for fwd in getattr(s, "forwarders", {}).values():
                t = totals.setdefault(fwd.kind, [0, 0])
                t[0] += fwd.sent_packets
                t[1] += fwd.sent_octets
        return {k: (v[0], v[1]) for k, v in totals.items()}

    def ingest_totals(self) -> dict[tuple[str, str], tuple[int, int]]:
        totals = {k: list(v) for k, v in self._retired_ingest.items()}
        for name, b in self.broadcasts.items():
            for kind, track in b.tracks.items():
                t = totals.setdefault((name, kind), [0, 0])
                t[0] += track.buffer.packets
                t[1] += track.buffer.octets
        return {k: (v[0], v[1]) for k, v in totals.items()}

    def pump_totals(self) -> tuple[int, int, int]:
        """(packets, runs, audio overtakes) of the ingest pumps reading publishers, closed ones included."""
        totals = list(self._retired_pump)
        for s in self.sessions.values():
            pump = getattr(s.transport, "pump", None)
            if pump is not None:
                totals[0] += pump.delivered
                totals[1] += pump.runs
                totals[2] += pump.overtakes
        return totals[0], totals[1], totals[2]

    def _retire(self, session: Session) -> None:
        pump = getattr(session.transport, "pump", None)
        if pump is not None:
            self._retired_pump[0] += pump.delivered
            self._retired_pump[1] += pump.runs
            self._retired_pump[2] += pump.overtakes
        for fwd in getattr(session, "forwarders", {}).values():
            t = self._retired_forwarding.setdefault(fwd.kind, [0, 0])
            t[0] += fwd.sent_packets
            t[1] += fwd.sent_octets

    # -- housekeeping -------------------------------------------------------------------------------------
    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.tick_interval)
            try:
                self.tick(time.monotonic(), time.time())
            except Exception:  # housekeeping must never stop
                logger.exception("tick failed")

    def tick(self, now: float, wall: float) -> None:
        for session in list(self.sessions.values()):
            session.tick(now, wall)
        interval = now - self._last_bitrate_sample
        if interval >= 1.0:
            self._last_bitrate_sample = now
            for name, b in self.broadcasts.items():
                for kind, bps in b.sample_bitrates(interval).items():
                    self.metrics.ingest_bitrate.labels(name, kind).set(bps)
