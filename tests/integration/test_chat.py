"""Chat over real WebSockets on 127.0.0.1: the embedded (memory) bus, limits, moderation, slow clients, flooding."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time

import aiohttp
import pytest

from signaling.chat import protocol as p
from tests.conftest import run_node

FIRE = "\U0001f525"
LIKE = "\U0001f44d"


class Client:
    """A test chat client: keeps every frame it receives, in order."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: list[dict] = []
        self._cursor = 0

    @classmethod
    async def connect(cls, session: aiohttp.ClientSession, base: str, stream: str = "room") -> Client:
        ws = await session.ws_connect(base.replace("http://", "ws://") + f"/chat/{stream}", max_msg_size=0)
        return cls(ws)

    async def join(self, name: str, token: str | None = None) -> dict:
        frame: dict = {"type": "join", "name": name}
        if token:
            frame["token"] = token
        await self.send(frame)
        welcome = await self.next("welcome", "error")
        if welcome["type"] == "welcome":
            await self.next("history")
        return welcome

    async def send(self, frame: dict) -> None:
        await self.ws.send_str(json.dumps(frame))

    async def next(self, *types: str, timeout: float = 5.0) -> dict:
        """The next frame of one of ``types`` (frames of other types are kept but skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            while self._cursor < len(self.frames):
                frame = self.frames[self._cursor]
                self._cursor += 1
                if not types or frame["type"] in types:
                    return frame
            msg = await self.ws.receive(timeout=max(0.01, deadline - time.monotonic()))
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"socket ended: {msg.type} {self.ws.close_code}")
            self.frames.append(json.loads(msg.data))

    async def closed(self, timeout: float = 5.0) -> int | None:
        """Read until the server closes; the close code."""
        deadline = time.monotonic() + timeout
        while True:
            msg = await self.ws.receive(timeout=max(0.01, deadline - time.monotonic()))
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.frames.append(json.loads(msg.data))
                continue
            return self.ws.close_code

    def of(self, kind: str) -> list[dict]:
        return [f for f in self.frames if f["type"] == kind]


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


async def test_messages_history_and_order(session: aiohttp.ClientSession) -> None:
    async with run_node(chat_messages_per_second=100.0, chat_message_burst=100) as (base, _node):
        clients = [await Client.connect(session, base) for _ in range(3)]
        for i, c in enumerate(clients):
            welcome = await c.join(f"user{i}")
            assert welcome["v"] == p.VERSION and welcome["reactions"] == list(p.REACTIONS)
        await asyncio.gather(*(c.send({"type": "message", "text": f"{i}-{k}"}) for k in range(10)
                               for i, c in enumerate(clients)))
        seen = []
        for c in clients:
            seen.append([(await c.next("message"))["id"] for _ in range(30)])
        assert seen[0] == seen[1] == seen[2] == sorted(seen[0])
        late = await Client.connect(session, base)
        await late.send({"type": "join", "name": "late"})
        await late.next("welcome")
        history = await late.next("history")
        assert [m["id"] for m in history["messages"]] == seen[0]
        assert {m["text"] for m in history["messages"]} == {f"{i}-{k}" for i in range(3) for k in range(10)}


async def test_reactions_are_aggregated(session: aiohttp.ClientSession) -> None:
    async with run_node() as (base, _node):
        sender, watcher = await Client.connect(session, base), await Client.connect(session, base)
        await sender.join("a")
        await watcher.join("b")
        for _ in range(12):
            await sender.send({"type": "reaction", "emoji": FIRE})
        await sender.send({"type": "reaction", "emoji": LIKE})
        await sender.send({"type": "reaction", "emoji": "💩"})
        assert (await sender.next("error"))["code"] == p.BAD_REACTION
        total: dict[str, int] = {}
        frames = 0
        while total.get(FIRE, 0) < 12 or total.get(LIKE, 0) < 1:
            f = await watcher.next("reactions")
            frames += 1
            for e, n in f["counts"].items():
                total[e] = total.get(e, 0) + n
        assert total == {FIRE: 12, LIKE: 1}
        assert frames <= 3  # one frame per interval, never one per reaction


async def test_moderation(session: aiohttp.ClientSession) -> None:
    async with run_node(chat_moderator_tokens=["modtok"], chat_ban_addresses=False) as (base, node):
        mod, viewer, other = [await Client.connect(session, base) for _ in range(3)]
        assert (await mod.join("host", "modtok"))["moderator"] is True
        assert (await viewer.join("troll"))["moderator"] is False
        await other.join("other")
        await viewer.send({"type": "message", "text": "spam"})
        spam = await other.next("message")
        await viewer.send({"type": "delete", "id": spam["id"]})
        assert (await viewer.next("error"))["code"] == p.FORBIDDEN
        await mod.send({"type": "pin", "id": spam["id"]})
        assert (await other.next("moderation"))["action"] == "pin"
        await mod.send({"type": "delete", "id": spam["id"]})
        deleted = await other.next("moderation")
        assert deleted == {"type": "moderation", "action": "delete", "id": spam["id"], "by": "host"}
        await mod.send({"type": "pin", "id": 999})
        assert (await mod.next("error"))["code"] == p.NOT_FOUND
        await mod.send({"type": "slow_mode", "seconds": 30})
        assert (await other.next("moderation"))["seconds"] == 30
        await other.send({"type": "message", "text": "one"})
        await other.next("message")
        await other.send({"type": "message", "text": "two"})
        err = await other.next("error")
        assert err["code"] == p.SLOW_MODE and 25 < err["retry_after"] <= 30
        await mod.send({"type": "ban", "uid": spam["uid"]})
        assert await viewer.closed() == p.CLOSE_BANNED
        assert (await other.next("moderation"))["action"] == "ban"
        fresh = await Client.connect(session, base)  # same address, new connection: only the uid was banned
        assert (await fresh.join("someone"))["type"] == "welcome"
        late = await Client.connect(session, base)
        await late.send({"type": "join", "name": "late"})
        history = await late.next("history")
        assert history["pinned"] is None and history["slow_mode"] == 30
        assert spam["id"] not in [m["id"] for m in history["messages"]]
        assert b'webrtc_cast_chat_closed_total{code="4003"} 1.0' in node.metrics.render()


async def test_address_ban(session: aiohttp.ClientSession) -> None:
    async with run_node(chat_moderator_tokens=["modtok"]) as (base, _node):
        mod, viewer = await Client.connect(session, base), await Client.connect(session, base)
        await mod.join("host", "modtok")
        welcome = await viewer.join("troll")
        await mod.send({"type": "ban", "uid": welcome["uid"]})
        assert await viewer.closed() == p.CLOSE_BANNED
        again = await Client.connect(session, base)
        await asyncio.sleep(0.1)  # the address ban follows the uid ban on the bus
        assert (await again.join("troll2"))["code"] == p.BANNED
        assert await again.closed() == p.CLOSE_BANNED


async def test_validation_and_limits(session: aiohttp.ClientSession) -> None:
    settings = {"chat_max_frame_bytes": 1024, "chat_max_text_chars": 50, "chat_max_violations": 5,
                "chat_max_connections_per_address": 3, "chat_join_timeout": 0.5}
    async with run_node(**settings) as (base, node):
        c = await Client.connect(session, base)
        await c.send({"type": "message", "text": "before join"})
        assert (await c.next("error"))["code"] == p.NOT_JOINED
        await c.join("x")
        await c.ws.send_str("not json")
        assert (await c.next("error"))["code"] == p.BAD_FRAME
        await c.send({"type": "message", "text": "x" * 51})
        assert (await c.next("error"))["code"] == p.TEXT_TOO_LONG
        await c.send({"type": "message", "text": "x" * 2000})
        assert (await c.next("error"))["code"] == p.FRAME_TOO_LARGE
        await c.send({"type": "nope"})
        assert (await c.next("error"))["code"] == p.UNKNOWN_TYPE
        await c.send({"type": "reaction", "emoji": "x"})  # fifth violation in the window: closed
        assert await c.closed() == p.CLOSE_POLICY

        huge = await Client.connect(session, base)
        await huge.join("y")
        await huge.ws.send_str("x" * 5000)  # past 4x the frame limit: the socket is closed
        assert await huge.closed() == p.CLOSE_TOO_BIG

        silent = await Client.connect(session, base)
        assert await silent.closed() == p.CLOSE_PROTOCOL  # no join within chat_join_timeout

        held = [await Client.connect(session, base) for _ in range(3)]
        for i, h in enumerate(held):
            await h.join(f"h{i}")
        extra = await Client.connect(session, base)
        assert (await extra.next("error"))["code"] == p.TOO_MANY_CONNECTIONS
        assert await extra.closed() == p.CLOSE_TOO_MANY_CONNECTIONS
        metrics = node.metrics.render().decode()
        assert 'webrtc_cast_chat_rejected_total{code="text_too_long"} 1.0' in metrics
        assert "webrtc_cast_chat_connections 3.0" in metrics


async def test_tokens(session: aiohttp.ClientSession) -> None:
    async with run_node(view_tokens=["see"], chat_moderator_tokens=["mod"]) as (base, _node):
        anon = await Client.connect(session, base)
        assert (await anon.join("anon"))["code"] == p.UNAUTHORIZED
        assert await anon.closed() == p.CLOSE_UNAUTHORIZED
        ok = await Client.connect(session, base)
        assert (await ok.join("v", "see"))["moderator"] is False
        mod = await Client.connect(session, base)
        assert (await mod.join("m", "mod"))["moderator"] is True


async def _raw_reader_that_never_reads(base: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket client that upgrades, joins, and then never reads: the slow consumer."""
    port = int(base.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1024)
    sock = writer.get_extra_info("socket")
    import socket

    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /chat/room HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    await reader.readuntil(b"\r\n\r\n")
    payload = json.dumps({"type": "join", "name": "slow"}).encode()
    mask = os.urandom(4)
    writer.write(bytes((0x81, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    await writer.drain()
    return reader, writer


async def test_slow_client_is_cut_off_and_others_keep_up(session: aiohttp.ClientSession) -> None:
    settings = {"chat_client_buffer_bytes": 64 * 1024, "chat_messages_per_second": 1000.0,
                "chat_message_burst": 1000, "chat_frames_per_second": 1000.0, "chat_frame_burst": 1000,
                "chat_max_text_chars": 4000, "chat_max_frame_bytes": 8192}
    async with run_node(**settings) as (base, node):
        _reader, writer = await _raw_reader_that_never_reads(base)
        sender, watcher = await Client.connect(session, base), await Client.connect(session, base)
        await sender.join("sender")
        await watcher.join("watcher")
        text = "y" * 3900
        drain = asyncio.create_task(sender.closed(timeout=60))  # the sender reads its own echo
        count = 2000  # ~8 MB per client: past the slow client's buffer and the kernel's socket buffers
        ids: list[int] = []
        for batch in range(0, count, 8):  # the watcher keeps up (never 64 KB behind); the slow client does not
            for i in range(batch, batch + 8):
                await sender.send({"type": "message", "text": f"{i} {text}"})
            ids += [(await watcher.next("message", timeout=20))["id"] for _ in range(8)]
        assert ids == list(range(1, count + 1))  # the others got everything, in order
        closed = b'webrtc_cast_chat_closed_total{code="4008"} 1.0'
        for _ in range(50):
            if closed in node.metrics.render():
                break
            await asyncio.sleep(0.05)
        assert closed in node.metrics.render()
        drain.cancel()
        writer.close()


async def test_flooding_client_is_limited_while_others_stay_fast(session: aiohttp.ClientSession) -> None:
    async with run_node(chat_max_violations=50) as (base, node):
        listeners = [await Client.connect(session, base) for _ in range(15)]
        for i, c in enumerate(listeners):
            await c.join(f"l{i}")
        senders = listeners[:4]
        flooder = await Client.connect(session, base)
        await flooder.join("flood")
        sent_at: dict[str, float] = {}
        latencies: list[float] = []
        stop = asyncio.Event()

        async def flood() -> None:
            with __import__("contextlib").suppress(Exception):
                for i in range(5000):
                    await flooder.ws.send_str(json.dumps({"type": "message", "text": f"flood {i}"}))
                    if i % 20 == 0:
                        await asyncio.sleep(0)

        async def talk(c: Client, n: int) -> None:
            for k in range(n):
                tag = f"{c.frames and 'c'}{id(c)}-{k}"
                sent_at[tag] = time.perf_counter()
                await c.send({"type": "message", "text": tag})
                await asyncio.sleep(1.0)  # within the default 1 message/s

        async def listen(c: Client) -> None:
            while not stop.is_set():
                try:
                    f = await c.next("message", timeout=0.5)
                except TimeoutError:
                    continue
                if f["text"] in sent_at:
                    latencies.append(time.perf_counter() - sent_at[f["text"]])

        listen_tasks = [asyncio.create_task(listen(c)) for c in listeners]
        flood_task = asyncio.create_task(flood())
        await asyncio.gather(*(talk(c, 3) for c in senders))
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*listen_tasks)
        await flood_task
        code = await flooder.closed()
        assert code == p.CLOSE_POLICY
        errors = flooder.of("error")
        assert errors and {e["code"] for e in errors} <= {p.RATE_LIMITED}
        accepted = [f for f in listeners[-1].frames if f["type"] == "message" and f["text"].startswith("flood")]
        assert len(accepted) <= 5  # the message burst, nothing more
        assert len(latencies) == 4 * 3 * 15
        latencies.sort()
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        assert p99 < 0.1, f"p99 delivery latency {p99 * 1000:.1f} ms"
        assert b'webrtc_cast_chat_rejected_total{code="rate_limited"}' in node.metrics.render()
