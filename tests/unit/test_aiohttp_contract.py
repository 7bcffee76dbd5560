"""Contract: the aiohttp internals used by signaling/aiohttp_glue.py are still there and still mean the same.

If an aiohttp upgrade breaks this, fix signaling/aiohttp_glue.py (the only user) before relaxing the pin.
"""

from __future__ import annotations

import asyncio
import importlib.metadata

import aiohttp
import pytest
from aiohttp import web

from signaling.aiohttp_glue import SentResponse
from tests.conftest import free_port

PINNED = "3.14.5"


def _pin_in_pyproject() -> str:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    return text.split('"aiohttp==', 1)[1].split('"', 1)[0]


def test_installed_aiohttp_is_the_pinned_one() -> None:
    assert importlib.metadata.version("aiohttp") == PINNED == _pin_in_pyproject()


def test_stream_response_has_the_private_fields_we_set() -> None:
    r = web.StreamResponse()
    for name in ("_eof_sent", "_keep_alive", "_body_length"):
        assert hasattr(r, name), name


@pytest.mark.asyncio
async def test_a_sent_response_leaves_the_connection_to_us() -> None:
    """A handler writes a whole HTTP answer to the transport itself and returns SentResponse: the client reads
    exactly those bytes, and the keep-alive connection serves a second request."""

    async def handler(request: web.Request) -> web.StreamResponse:
        body = b"hello"
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\nX-Sent: raw\r\n\r\n"
        assert request.transport is not None
        request.transport.write(head + body)
        return SentResponse(200, len(head) + len(body))

    app = web.Application()
    app.router.add_get("/raw", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(2):  # the second request reuses the kept-alive connection
                async with session.get(f"http://127.0.0.1:{port}/raw") as resp:
                    assert resp.status == 200
                    assert resp.headers["X-Sent"] == "raw"
                    assert await asyncio.wait_for(resp.read(), 5) == b"hello"
    finally:
        await runner.cleanup()
