"""The node registry: who is in the relay tree and how loaded each node is (asyncio adapters).

``MemoryRegistry`` (the embedded default) lives in the origin's memory. ``RedisRegistry`` (``--redis URL``) keeps
each node's last load report as one Redis key with a time to live, listed in one set, so several origins share
one view of the tree. Both answer the same three calls; placement itself is pure
(:mod:`webrtc_cast.sfu_tree.placement`).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Protocol

from webrtc_cast.sfu_tree.placement import BadReport, NodeLoad

logger = logging.getLogger(__name__)

class RegistryFull(Exception):
    """The registry holds its maximum of fresh nodes (settings.registry_max_nodes) already."""


class NodeRegistry(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def report(self, load: NodeLoad) -> None:
        """Insert or refresh one node's report (its ``reported_at`` is the registry's clock)."""

    async def remove(self, node_id: str) -> None:
        """A node leaves (graceful shutdown)."""

    async def nodes(self) -> list[NodeLoad]:
        """Every report younger than the registry's time to live."""


class MemoryRegistry:
    """In-process registry; reports expire ``ttl`` seconds after they were made."""

    def __init__(self, ttl: float, clock=time.time, max_nodes: int = 10_000) -> None:  # noqa: ANN001
        self.ttl = ttl
        self.max_nodes = max_nodes  # a new node beyond this is refused (a flood of fake ids cannot grow it)
        self._clock = clock
        self._nodes: dict[str, NodeLoad] = {}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def report(self, load: NodeLoad) -> None:
        self._expire()
        if load.id not in self._nodes and len(self._nodes) >= self.max_nodes:
            raise RegistryFull()
        self._nodes[load.id] = load

    async def remove(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)

    async def nodes(self) -> list[NodeLoad]:
        self._expire()
        return list(self._nodes.values())

    def _expire(self) -> None:
        now = self._clock()
        for key in [k for k, n in self._nodes.items() if now - n.reported_at > self.ttl]:
            del self._nodes[key]


class RedisRegistry:
    """Reports in Redis: ``{prefix}:node:{id}`` holds the JSON report (expires after ``ttl``); the set
    ``{prefix}:nodes`` lists ids (members whose key expired are dropped on read). Reads are cached for
    ``cache_seconds`` so a burst of viewer POSTs costs one round trip."""

    def __init__(
        self, url: str, ttl: float, prefix: str = "webrtc-cast:tree", cache_seconds: float = 0.2,
        max_nodes: int = 10_000,
    ) -> None:
        self.url = url
        self.max_nodes = max_nodes
        self.ttl = ttl
        self.prefix = prefix
        self.cache_seconds = cache_seconds
        self._client = None
        self._cache: tuple[float, list[NodeLoad]] | None = None

    async def start(self) -> None:
        import redis.asyncio as aioredis  # imported here: the embedded default does not need redis

        self._client = aioredis.Redis.from_url(self.url, socket_connect_timeout=5, socket_timeout=5)

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _key(self, node_id: str) -> str:
        return f"{self.prefix}:node:{node_id}"

    async def report(self, load: NodeLoad) -> None:
        assert self._client is not None, "start() first"
        index = f"{self.prefix}:nodes"
        if await self._client.scard(index) >= self.max_nodes and not await self._client.sismember(index, load.id):
            raise RegistryFull()
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.set(self._key(load.id), load.to_json(), px=max(1, int(self.ttl * 1000)))
            pipe.sadd(index, load.id)
            await pipe.execute()
        self._cache = None

    async def remove(self, node_id: str) -> None:
        assert self._client is not None, "start() first"
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(self._key(node_id))
            pipe.srem(f"{self.prefix}:nodes", node_id)
            await pipe.execute()
        self._cache = None

    async def nodes(self) -> list[NodeLoad]:
        assert self._client is not None, "start() first"
        now = time.monotonic()
        if self._cache is not None and now - self._cache[0] < self.cache_seconds:
            return list(self._cache[1])
        index = f"{self.prefix}:nodes"
        ids = sorted(m.decode() if isinstance(m, bytes) else m for m in await self._client.smembers(index))
        found: list[NodeLoad] = []
        gone: list[str] = []
        if ids:
            values = await self._client.mget([self._key(i) for i in ids])
            for node_id, raw in zip(ids, values, strict=True):
                if raw is None:
                    gone.append(node_id)
                    continue
                try:
                    found.append(NodeLoad.from_mapping(json.loads(raw)))
                except (ValueError, BadReport) as exc:  # a foreign or corrupt value: skip it, never crash
                    logger.warning("registry: ignoring node %s: %s", node_id, exc)
        if gone:
            await self._client.srem(index, *gone)
        self._cache = (now, found)
        return list(found)


def make_registry(
    redis_url: str | None, ttl: float, prefix: str = "webrtc-cast:tree", max_nodes: int = 10_000
) -> NodeRegistry:
    if redis_url:
        return RedisRegistry(redis_url, ttl, prefix, max_nodes=max_nodes)
    return MemoryRegistry(ttl, max_nodes=max_nodes)
