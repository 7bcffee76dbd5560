"""The chat bus: how events reach every member of a room, in one order (asyncio adapter).

``MemoryBus`` (the embedded default) delivers in-process. ``RedisBus`` spans nodes: a Lua script numbers each
message (INCR), stores it in the room's capped history (a sorted set scored by id) and PUBLISHes it, all in one
atomic step, so every node receives the events of a room in the same order as the history holds them, and a
restarted node reads the history back. Moderation state (slow mode, pin, bans) lives in Redis next to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

EventHandler = Callable[[str, dict], None]  # (room, event), called in bus order
ResyncHandler = Callable[[], None]  # the bus lost events (reconnected): reload every room's snapshot

# RedisBus's subscription waits for a message at most this long before it looks at its stop flag again.
# Why a flag besides Task.cancel(): redis-py can swallow a cancellation that lands while its read timeout
# expires (redis/redis-py#2028, #2551); the reader then went on forever and a node's shutdown never ended.
READ_POLL = 1.0
# How long RedisBus.stop waits for the reader to end before it gives up on it (logged).
READER_STOP_TIMEOUT = 3.0


@dataclass(slots=True)
class Snapshot:
    history: list[dict] = field(default_factory=list)
    pinned: dict | None = None
    slow_mode: float = 0.0
    banned: set[str] = field(default_factory=set)


def _encode(event: dict) -> str:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


class MemoryBus:
    """One process: publish delivers synchronously to the handler; message ids count per room."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._on_event: EventHandler | None = None

    async def start(self, on_event: EventHandler, on_resync: ResyncHandler) -> None:
        self._on_event = on_event

    async def stop(self) -> None:
        self._on_event = None

    async def join_room(self, room: str) -> tuple[Snapshot | None, list[dict]]:
        return None, []  # the in-memory Room is the state

    async def leave_room(self, room: str) -> None:
        return None

    async def publish(self, room: str, event: dict) -> None:
        if event["t"] == "msg":
            event["id"] = self._ids[room] = self._ids.get(room, 0) + 1
        if self._on_event is not None:
            self._on_event(room, event)

    async def viewers(self, room: str, local_count: int) -> int:
        return local_count


_MESSAGE_SCRIPT = """
local id = redis.call('INCR', KEYS[1])
local ev = string.sub(ARGV[1], 1, -2) .. ',"id":' .. id .. '}'
redis.call('ZADD', KEYS[2], id, ev)
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[2]) + 1))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('PUBLISH', KEYS[3], ev)
return id
"""

_STATE_SCRIPT = """
local kind = ARGV[2]
if kind == 'del' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], ARGV[3], ARGV[3])
  if redis.call('HGET', KEYS[2], 'pin_id') == ARGV[3] then redis.call('HDEL', KEYS[2], 'pin', 'pin_id') end
elseif kind == 'ban' then
  redis.call('SADD', KEYS[3], ARGV[3])
  redis.call('EXPIRE', KEYS[3], ARGV[5])
elseif kind == 'unban' then
  redis.call('SREM', KEYS[3], ARGV[3])
elseif kind == 'slow' then
  redis.call('HSET', KEYS[2], 'slow', ARGV[3])
elseif kind == 'pin' then
  if ARGV[3] == '' then redis.call('HDEL', KEYS[2], 'pin', 'pin_id')
  else redis.call('HSET', KEYS[2], 'pin', ARGV[4], 'pin_id', ARGV[3]) end
end
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('PUBLISH', KEYS[4], ARGV[1])
return 1
"""


class RedisBus:
    """Rooms across nodes through Redis pub/sub; history and moderation state in Redis.

    One pattern subscription (``<prefix>:*:events``) per node carries the events of every room; events of rooms
    without local members are dropped by the handler. A lost connection is retried with backoff, and the
    handler is told to reload every room's snapshot, since pub/sub does not replay what was missed.
    """

    def __init__(self, url: str, prefix: str, history: int, ttl: int, viewers_interval: float) -> None:
        self.url = url
        self.prefix = prefix
        self.history = history
        self.ttl = ttl
        self.viewers_interval = viewers_interval
        self.node_id = os.urandom(6).hex()
        self._client = None
        self._reader: asyncio.Task | None = None
        self._stopping = False
        self._on_event: EventHandler | None = None
        self._on_resync: ResyncHandler | None = None
        self._loading: dict[str, list[dict]] = {}
        self._message_script = None
        self._state_script = None
        self.connected = asyncio.Event()

    def _key(self, room: str, what: str) -> str:
        return f"{self.prefix}:{room}:{what}"

    async def start(self, on_event: EventHandler, on_resync: ResyncHandler) -> None:
        import redis.asyncio as aioredis  # imported here: the embedded default does not need redis

        self._on_event, self._on_resync = on_event, on_resync
        self._client = aioredis.Redis.from_url(self.url, socket_connect_timeout=5, health_check_interval=15)
        self._message_script = self._client.register_script(_MESSAGE_SCRIPT)
        self._state_script = self._client.register_script(_STATE_SCRIPT)
        await self._client.ping()  # fail at startup, loudly, when Redis is not there
        self._reader = asyncio.create_task(self._read_loop(), name="chat-redis-reader")
        await asyncio.wait_for(self.connected.wait(), 10)

    async def stop(self) -> None:
        self._stopping = True
        if self._reader is not None:
            self._reader.cancel()
            done, _ = await asyncio.wait({self._reader}, timeout=READER_STOP_TIMEOUT)
            if not done:
                logger.warning("chat: the Redis reader did not stop within %.0f s; left behind", READER_STOP_TIMEOUT)
        if self._client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._client.aclose(), READER_STOP_TIMEOUT)

    async def _read_loop(self) -> None:
        from redis.exceptions import RedisError

        pattern = f"{self.prefix}:*:events"
        head, tail = len(self.prefix) + 1, -len(":events")
        backoff = 0.2
        first = True
        while not self._stopping:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(pattern)
                self.connected.set()
                if not first and self._on_resync is not None:
                    self._on_resync()
                first, backoff = False, 0.2
                while not self._stopping:
                    msg = await pubsub.get_message(timeout=READ_POLL)
                    if msg is None or msg.get("type") != "pmessage":
                        continue
                    room = msg["channel"].decode()[head:tail]
                    try:
                        event = json.loads(msg["data"])
                    except ValueError:
                        logger.warning("chat: dropped a malformed bus event in %s", room)
                        continue
                    if not isinstance(event, dict):
                        continue
                    loading = self._loading.get(room)
                    if loading is not None:
                        loading.append(event)
                    elif self._on_event is not None:
                        self._on_event(room, event)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            except asyncio.CancelledError:
                with contextlib.suppress(BaseException):
                    await pubsub.aclose()
                raise
            except (RedisError, OSError) as exc:
                self.connected.clear()
                logger.warning("chat: Redis subscription lost (%s); retrying in %.1f s", exc, backoff)
                with contextlib.suppress(BaseException):
                    await pubsub.aclose()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def join_room(self, room: str) -> tuple[Snapshot | None, list[dict]]:
        """The room's snapshot, plus the events that arrived while it was read (to apply after it)."""
        self._loading.setdefault(room, [])
        try:
            pipe = self._client.pipeline(transaction=True)
            pipe.zrange(self._key(room, "history"), 0, -1)
            pipe.hgetall(self._key(room, "state"))
            pipe.smembers(self._key(room, "bans"))
            raw_history, state, bans = await pipe.execute()
        finally:
            buffered = self._loading.pop(room, [])
        snap = Snapshot()
        for raw in raw_history:
            with contextlib.suppress(ValueError):
                snap.history.append(json.loads(raw))
        with contextlib.suppress(ValueError, TypeError):
            snap.slow_mode = float(state.get(b"slow", b"0"))
        if state.get(b"pin"):
            with contextlib.suppress(ValueError):
                snap.pinned = json.loads(state[b"pin"])
        snap.banned = {b.decode() for b in bans}
        return snap, buffered

    async def leave_room(self, room: str) -> None:
        await self._client.hdel(self._key(room, "viewers"), self.node_id)

    async def publish(self, room: str, event: dict) -> None:
        kind = event["t"]
        channel = self._key(room, "events")
        if kind == "msg":
            keys = [self._key(room, "seq"), self._key(room, "history"), channel]
            await self._message_script(keys=keys, args=[_encode(event), self.history, self.ttl])
        elif kind == "rx":
            await self._client.publish(channel, _encode(event))
        else:
            arg, extra = "", ""
            if kind == "del":
                arg = str(event["id"])
            elif kind in ("ban", "unban"):
                arg = event["uid"]
            elif kind == "slow":
                arg = repr(float(event["seconds"]))
            elif kind == "pin" and event["message"] is not None:
                arg, extra = str(event["message"]["id"]), _encode(event["message"])
            keys = [self._key(room, "history"), self._key(room, "state"), self._key(room, "bans"), channel]
            await self._state_script(keys=keys, args=[_encode(event), kind, arg, extra, self.ttl])

    async def viewers(self, room: str, local_count: int) -> int:
        """Report this node's count; the room's total over nodes that reported recently."""
        key = self._key(room, "viewers")
        now = time.time()
        pipe = self._client.pipeline(transaction=False)
        pipe.hset(key, self.node_id, f"{local_count} {now:.3f}")
        pipe.expire(key, max(10, int(self.viewers_interval * 5)))
        pipe.hgetall(key)
        _, _, counts = await pipe.execute()
        total = 0
        for value in counts.values():
            with contextlib.suppress(ValueError):
                n, at = value.split()
                if now - float(at) < self.viewers_interval * 3:
                    total += int(n)
        return total
