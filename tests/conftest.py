"""Shared fixtures: a real node on 127.0.0.1 and real offers from aiortc."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection

import webrtc_cast  # noqa: F401  (first: sets OPENSSL_CONF before cryptography loads)
from signaling.http_api import create_app, server_ssl_context
from webrtc_cast.node import Node
from webrtc_cast.settings import Settings
from webrtc_cast.sfu_tree.aiortc_glue import use_ice_hosts

IN_CI = os.environ.get("CI", "").lower() == "true"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def run_node(**overrides: object) -> AsyncIterator[tuple[str, Node]]:
    """A node serving HTTP on 127.0.0.1 with ICE on 127.0.0.1; yields (base URL, node)."""
    settings = Settings(host="127.0.0.1", port=free_port(), ice_hosts=["127.0.0.1"], **overrides)  # type: ignore[arg-type]
    node = Node(settings)
    runner = web.AppRunner(create_app(node), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, ssl_context=server_ssl_context(settings))
    await site.start()
    try:
        yield f"http://127.0.0.1:{settings.port}", node
    finally:
        await runner.cleanup()


@pytest.fixture
async def node_url() -> AsyncIterator[tuple[str, Node]]:
    async with run_node() as pair:
        yield pair


async def make_offer(direction: str = "sendonly", kinds: tuple[str, ...] = ("audio", "video")) -> tuple[
    RTCPeerConnection, str
]:
    """A real JSEP offer from aiortc (full ICE candidates on 127.0.0.1)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for kind in kinds:
        pc.addTransceiver(kind, direction=direction)
    with use_ice_hosts(["127.0.0.1"]):
        await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
