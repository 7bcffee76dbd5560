"""GET /chat/{stream}: the chat WebSocket (aiohttp adapter over the pure Room; docs/chat.md).

Fan-out writes one pre-built WebSocket frame straight onto each member's transport, synchronously, like
websockets' ``broadcast()``: nobody waits on anybody. A member whose outgoing buffer would pass
``chat_client_buffer_bytes`` is a slow consumer: ephemeral frames (reactions, viewers) skip it once half of
the buffer is used, and a chat message that does not fit closes it with 4008 (it reconnects and gets the
history again). The buffer is the bounded queue; nothing else is queued per client.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import time
from collections import Counter

from aiohttp import WSMsgType, web

from signaling.chat import protocol as p
from signaling.chat.bus import READER_STOP_TIMEOUT, MemoryBus, RedisBus
from signaling.chat.room import Limits, Member, Room

logger = logging.getLogger(__name__)


class Connection:
    __slots__ = ("ws", "transport", "member", "closing")

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport, member: Member) -> None:
        self.ws = ws
        self.transport = transport
        self.member = member
        self.closing = False


class RoomHandle:
    __slots__ = ("room", "members", "joined", "ready", "idle_since")

    def __init__(self, room: Room, ready: asyncio.Future) -> None:
        self.room = room
        self.members: dict[str, Connection] = {}  # every connection of this node in the room
        self.joined: dict[str, Connection] = {}  # those that joined: they get the fan-out
        self.ready = ready
        self.idle_since = time.monotonic()


class ChatService:
    """The rooms of one node, their connections, the bus and the periodic frames."""

    def __init__(self, node) -> None:  # noqa: ANN001 - webrtc_cast.node.Node
        s = node.settings
        self.settings = s
        self.metrics = node.metrics
        self.limits = Limits.from_settings(s)
        self.bus = (
            RedisBus(s.redis_url, s.chat_redis_prefix, s.chat_history, s.chat_redis_ttl, s.chat_viewers_interval)
            if s.redis_url
            else MemoryBus()
        )
        self.rooms: dict[str, RoomHandle] = {}
        self.per_address: Counter[str] = Counter()
        self._next_key = 0
        self._ticker: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()
        self._moderators = list(s.chat_moderator_tokens) + list(s.publish_tokens)

    # ---- lifecycle ----

    async def start(self) -> None:
        await self.bus.start(self._on_event, self._on_resync)
        self._ticker = asyncio.create_task(self._tick_loop(), name="chat-ticker")

    async def shutdown(self) -> None:
        for h in list(self.rooms.values()):
            for conn in list(h.members.values()):
                await self._close(conn, 1001, "server shutting down")

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()  # bounded: its bus call could swallow the cancellation (see bus.READ_POLL)
            await asyncio.wait({self._ticker}, timeout=READER_STOP_TIMEOUT)
        for t in list(self._background):
            t.cancel()
        await self.bus.stop()

    def _spawn(self, coro) -> None:  # noqa: ANN001
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- rooms ----

    async def _room(self, name: str) -> RoomHandle:
        h = self.rooms.get(name)
        if h is None:
            if len(self.rooms) >= self.settings.chat_max_rooms and not self._evict_idle_room():
                raise RuntimeError("too many rooms")
            room = Room(name, self.limits, self._moderators, list(self.settings.view_tokens))
            h = self.rooms[name] = RoomHandle(room, asyncio.get_running_loop().create_future())
            try:
                await self._load(h)
            except BaseException as exc:
                self.rooms.pop(name, None)
                h.ready.set_exception(exc)
                h.ready.exception()  # retrieved: waiters re-raise it
                raise
            h.ready.set_result(None)
        elif not h.ready.done():
            await asyncio.shield(h.ready)
        return h

    async def _load(self, h: RoomHandle) -> None:
        snapshot, buffered = await self.bus.join_room(h.room.name)
        if snapshot is not None:
            h.room.load(snapshot.history, snapshot.pinned, snapshot.slow_mode, snapshot.banned)
        for event in buffered:
            h.room.apply(event)

    def _evict_idle_room(self) -> bool:
        idle = [(h.idle_since, n) for n, h in self.rooms.items() if not h.members and h.ready.done()]
        if not idle:
            return False
        _, name = min(idle)
        del self.rooms[name]
        self._spawn(self._quietly(self.bus.leave_room(name)))
        return True

    async def _quietly(self, coro) -> None:  # noqa: ANN001
        try:
            await coro
        except Exception as exc:  # noqa: BLE001 - the bus is best effort here; logged and counted
            self.metrics.chat_bus_errors.inc()
            logger.warning("chat bus: %s", exc)

    def _on_resync(self) -> None:
        async def reload(h: RoomHandle) -> None:
            await self._load(h)
            self._fanout(h, h.room.history_frame())

        for h in list(self.rooms.values()):
            if h.ready.done():
                self._spawn(self._quietly(reload(h)))

    def _on_event(self, name: str, event: dict) -> None:
        h = self.rooms.get(name)
        if h is None or not h.ready.done():
            return
        frame, kicks = h.room.apply(event)
        if frame is not None:
            self._fanout(h, frame)
        for target in kicks:
            for conn in list(h.members.values()):
                m = conn.member
                if (m.uid == target or m.addr_key == target) and not m.moderator and not conn.closing:
                    if m.uid == target and self.settings.chat_ban_addresses and m.addr_key:
                        ban = {"t": "ban", "uid": m.addr_key, "quiet": True, "by": event.get("by", "")}
                        self._spawn(self._quietly(self.bus.publish(name, ban)))
                    self._send(conn, p.error_frame(p.BANNED, "banned from this room"))
                    self._spawn(self._close(conn, p.CLOSE_BANNED, "banned"))

    # ---- writing ----

    def _fanout(self, h: RoomHandle, payload: bytes, droppable: bool = False) -> int:
        data = p.ws_text_frame(payload)
        limit = self.settings.chat_client_buffer_bytes
        soft = limit // 2
        size = len(data)
        sent = skipped = 0
        slow: list[Connection] = []
        for conn in h.joined.values():
            transport = conn.transport
            if conn.closing or transport.is_closing():
                continue
            buffered = transport.get_write_buffer_size()
            if droppable and buffered > soft:
                skipped += 1
                continue
            if buffered + size > limit:
                slow.append(conn)
                continue
            transport.write(data)
            sent += 1
        if sent:
            self.metrics.chat_deliveries.inc(sent)
        if skipped:
            self.metrics.chat_skipped_frames.inc(skipped)
        for conn in slow:
            conn.closing = True
            self._spawn(self._close(conn, p.CLOSE_SLOW_CONSUMER, "slow consumer"))
        return sent

    def _send(self, conn: Connection, payload: bytes) -> None:
        transport = conn.transport
        if conn.closing or transport.is_closing():
            return
        data = p.ws_text_frame(payload)
        if transport.get_write_buffer_size() + len(data) > self.settings.chat_client_buffer_bytes:
            conn.closing = True
            self._spawn(self._close(conn, p.CLOSE_SLOW_CONSUMER, "slow consumer"))
            return
        transport.write(data)

    async def _close(self, conn: Connection, code: int, reason: str) -> None:
        conn.closing = True
        self.metrics.chat_closed.labels(str(code)).inc()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.ws.close(code=code, message=reason.encode()), 5)
        with contextlib.suppress(Exception):
            conn.transport.abort() if not conn.transport.is_closing() else None

    # ---- the periodic frames: reactions, viewers ----

    async def _tick_loop(self) -> None:
        interval = self.settings.chat_reaction_interval
        every = max(1, round(self.settings.chat_viewers_interval / interval))
        n = 0
        while True:
            await asyncio.sleep(interval)
            n += 1
            for name, h in list(self.rooms.items()):
                if not h.ready.done():
                    continue
                counts = h.room.take_local_reactions()
                if counts:
                    self.metrics.chat_reactions.inc(sum(counts.values()))
                    try:
                        await self.bus.publish(name, {"t": "rx", "counts": counts})
                    except Exception as exc:  # noqa: BLE001 - counted; reactions are best effort
                        self.metrics.chat_bus_errors.inc()
                        logger.warning("chat bus: %s", exc)
                frame = h.room.reactions_frame(interval)
                if frame is not None:
                    self._fanout(h, frame, droppable=True)
                if n % every == 0 and h.members:
                    await self._quietly(self._viewers(name, h))

    async def _viewers(self, name: str, h: RoomHandle) -> None:
        total = await self.bus.viewers(name, len(h.joined))
        frame = h.room.viewers_frame(total)
        if frame is not None:
            self._fanout(h, frame, droppable=True)

    # ---- the WebSocket ----

    def _address_key(self, addr: str) -> str:
        key = self.settings.chat_redis_prefix.encode()
        return "addr:" + hmac.new(key, addr.encode(), hashlib.sha256).hexdigest()[:20]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        from webrtc_cast.node import STREAM_NAME

        stream = request.match_info.get("stream", "")
        if not STREAM_NAME.match(stream):
            raise web.HTTPBadRequest(text="stream names are 1-64 characters of A-Z a-z 0-9 _ -\n")
        s = self.settings
        ws = web.WebSocketResponse(
            heartbeat=s.chat_heartbeat, max_msg_size=s.chat_max_frame_bytes * 4, compress=False, autoping=True
        )
        await ws.prepare(request)
        transport = request.transport
        addr = request.remote or "?"
        if transport is None:
            return ws
        if self.per_address[addr] >= s.chat_max_connections_per_address:
            self.metrics.chat_rejected.labels(p.TOO_MANY_CONNECTIONS).inc()
            transport.write(p.ws_text_frame(p.error_frame(p.TOO_MANY_CONNECTIONS, "too many connections")))
            self.metrics.chat_closed.labels(str(p.CLOSE_TOO_MANY_CONNECTIONS)).inc()
            await ws.close(code=p.CLOSE_TOO_MANY_CONNECTIONS, message=b"too many connections")
            return ws
        self.per_address[addr] += 1
        self.metrics.chat_connections.inc()
        self._next_key += 1
        member = Member(key=str(self._next_key), uid=os.urandom(5).hex(), addr_key=self._address_key(addr))
        conn = Connection(ws, transport, member)
        h: RoomHandle | None = None
        try:
            try:
                h = await self._room(stream)
            except Exception as exc:  # noqa: BLE001 - bus down or too many rooms: tell the client
                logger.warning("chat: cannot open room %s: %s", stream, exc)
                self._send(conn, p.error_frame(p.UNAVAILABLE, "chat is unavailable, try again later"))
                await self._close(conn, p.CLOSE_UNAVAILABLE, "unavailable")
                return ws
            h.members[member.key] = conn
            await self._serve(conn, h, stream)
        finally:
            if h is not None:
                h.members.pop(member.key, None)
                h.joined.pop(member.key, None)
                if not h.members:
                    h.idle_since = time.monotonic()
            self.per_address[addr] -= 1
            if self.per_address[addr] <= 0:
                del self.per_address[addr]
            self.metrics.chat_connections.dec()
        return ws

    async def _serve(self, conn: Connection, h: RoomHandle, stream: str) -> None:
        ws, member = conn.ws, conn.member
        deadline = time.monotonic() + self.settings.chat_join_timeout
        while not conn.closing:
            timeout = None if member.joined else max(0.0, deadline - time.monotonic())
            try:
                msg = await ws.receive(timeout=timeout)
            except TimeoutError:
                self._send(conn, p.error_frame(p.NOT_JOINED, "no join frame in time"))
                await self._close(conn, p.CLOSE_PROTOCOL, "join timeout")
                return
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                await self._on_frame(conn, h, stream, msg.data)
            elif msg.type == WSMsgType.ERROR:
                self.metrics.chat_rejected.labels(p.FRAME_TOO_LARGE).inc()
                return  # aiohttp closed it (1009 for a frame past the hard cap)
            else:
                return  # close, closing, closed

    async def _on_frame(self, conn: Connection, h: RoomHandle, stream: str, data: str | bytes) -> None:
        member = conn.member
        was_joined = member.joined
        out = h.room.receive(member, data, time.monotonic(), time.time())
        if member.joined and not was_joined:
            h.joined[member.key] = conn
        for payload in out.reply:
            self._send(conn, payload)
        for event in out.publish:
            try:
                await self.bus.publish(stream, event)
            except Exception as exc:  # noqa: BLE001 - the bus is down: the client is told, nothing else breaks
                self.metrics.chat_bus_errors.inc()
                logger.warning("chat bus: %s", exc)
                self._send(conn, p.error_frame(p.UNAVAILABLE, "chat is unavailable, try again later"))
                continue
            kind = event["t"]
            if kind == "msg":
                self.metrics.chat_messages.inc()
        for code in out.errors:
            self.metrics.chat_rejected.labels(code).inc()
        if out.close is not None:
            await self._close(conn, *out.close)


CHAT_KEY: web.AppKey[ChatService] = web.AppKey("chat", ChatService)


def register_chat_routes(app: web.Application, node) -> ChatService:  # noqa: ANN001
    """Mount GET /chat/{stream} (WebSocket) on ``app`` and tie the chat service to the app's lifecycle."""
    service = ChatService(node)
    app[CHAT_KEY] = service
    app.router.add_get("/chat/{stream}", service.handle)

    async def on_startup(_: web.Application) -> None:
        await service.start()

    async def on_shutdown(_: web.Application) -> None:
        await service.shutdown()

    async def on_cleanup(_: web.Application) -> None:
        await service.stop()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return service
