"""Chat across two nodes through a real redis-server on 127.0.0.1 (started and stopped here)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from signaling.chat import protocol as p
from tests.conftest import free_port, missing_peer, run_node
from tests.integration.test_chat import Client


@contextlib.asynccontextmanager
async def redis_server(directory: Path) -> AsyncIterator[str]:
    """A private redis-server on a free 127.0.0.1 port, no persistence; yields its URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        missing_peer("redis-server is not installed (apt-get install -y redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(directory), "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    import redis.asyncio as aioredis

    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = aioredis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                await client.ping()
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                await asyncio.sleep(0.05)
        await client.aclose()
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
async def redis_url(tmp_path: Path) -> AsyncIterator[str]:
    async with redis_server(tmp_path) as url:
        yield url


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


FAST = {"chat_messages_per_second": 200.0, "chat_message_burst": 200, "chat_viewers_interval": 0.5}


async def test_two_nodes_same_order_and_history_survives_restart(redis_url: str, session) -> None:
    async with run_node(redis_url=redis_url, **FAST) as (base_a, _a), run_node(redis_url=redis_url, **FAST) as (
        base_b, _b
    ):
        on_a = [await Client.connect(session, base_a) for _ in range(2)]
        on_b = [await Client.connect(session, base_b) for _ in range(2)]
        for i, c in enumerate(on_a + on_b):
            await c.join(f"u{i}")
        everyone = on_a + on_b
        await asyncio.gather(*(c.send({"type": "message", "text": f"{i}:{k}"})
                               for k in range(25) for i, c in enumerate(everyone)))
        seen = []
        for c in everyone:
            got = [await c.next("message") for _ in range(100)]
            seen.append([(m["id"], m["text"]) for m in got])
        assert seen[0] == seen[1] == seen[2] == seen[3]
        assert [i for i, _ in seen[0]] == list(range(1, 101))
        # viewers: the count spans both nodes
        for _ in range(40):
            frames = on_a[0].of("viewers")
            if frames and frames[-1]["count"] == 4:
                break
            await asyncio.sleep(0.1)
            with contextlib.suppress(TimeoutError):
                await on_a[0].next("viewers", timeout=0.1)
        assert on_a[0].of("viewers")[-1]["count"] == 4
        for c in everyone:
            await c.ws.close()
    # both nodes are gone; a new node reads the history back from Redis
    async with run_node(redis_url=redis_url, **FAST) as (base_c, _c):
        late = await Client.connect(session, base_c)
        await late.send({"type": "join", "name": "late"})
        await late.next("welcome")
        history = await late.next("history")
        assert [(m["id"], m["text"]) for m in history["messages"]] == seen[0]
        await late.send({"type": "message", "text": "after restart"})
        assert (await late.next("message"))["id"] == 101


async def test_moderation_and_reactions_across_nodes(redis_url: str, session) -> None:
    settings = {"chat_moderator_tokens": ["mod"], "chat_history": 10, "chat_ban_addresses": False, **FAST}
    async with run_node(redis_url=redis_url, **settings) as (base_a, _a), run_node(
        redis_url=redis_url, **settings
    ) as (base_b, _b):
        mod = await Client.connect(session, base_a)
        await mod.join("host", "mod")
        viewer = await Client.connect(session, base_b)
        welcome = await viewer.join("troll")
        for i in range(15):
            await viewer.send({"type": "message", "text": f"m{i}"})
        msgs = [await mod.next("message") for _ in range(15)]
        await mod.send({"type": "pin", "id": msgs[-1]["id"]})
        assert (await viewer.next("moderation"))["action"] == "pin"
        await mod.send({"type": "delete", "id": msgs[-2]["id"]})
        assert (await viewer.next("moderation"))["action"] == "delete"
        await mod.send({"type": "slow_mode", "seconds": 5})
        assert (await viewer.next("moderation"))["action"] == "slow_mode"
        for _ in range(3):
            await viewer.send({"type": "reaction", "emoji": p.REACTIONS[0]})
        got = await mod.next("reactions")
        assert got["counts"] == {p.REACTIONS[0]: 3}
        await mod.send({"type": "ban", "uid": welcome["uid"]})
        assert await viewer.closed() == p.CLOSE_BANNED
        # a node started now loads the state: capped history without the deleted message, the pin, slow mode
        async with run_node(redis_url=redis_url, **settings) as (base_c, _c):
            late = await Client.connect(session, base_c)
            await late.send({"type": "join", "name": "late"})
            await late.next("welcome")
            history = await late.next("history")
            ids = [m["id"] for m in history["messages"]]
            assert len(ids) == 9 and msgs[-2]["id"] not in ids and ids[-1] == msgs[-1]["id"]
            assert history["pinned"]["id"] == msgs[-1]["id"] and history["slow_mode"] == 5


async def test_node_shutdown_ends_even_when_redis_swallows_the_readers_cancellation(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py can swallow a cancellation that lands in its read timeout (redis/redis-py#2028, #2551); the
    reader then never ended and neither did the node's shutdown. Here every cancellation is swallowed."""
    from redis.asyncio.client import PubSub

    from signaling.chat.bus import READ_POLL, RedisBus

    real = PubSub.get_message

    async def swallowing(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        try:
            return await real(self, *args, **kwargs)
        except asyncio.CancelledError:
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            return None

    monkeypatch.setattr(PubSub, "get_message", swallowing)
    bus = RedisBus(redis_url, "t", history=10, ttl=60, viewers_interval=1.0)
    await bus.start(lambda room, event: None, lambda: None)
    await asyncio.sleep(0.2)  # the reader is waiting in get_message
    started = time.monotonic()
    await asyncio.wait_for(bus.stop(), 10)
    assert time.monotonic() - started < READ_POLL + 1.0
    assert bus._reader is not None and bus._reader.done()
