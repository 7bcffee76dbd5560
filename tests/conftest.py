"""Shared fixtures: a real node on 127.0.0.1 and real offers from aiortc."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import sys
import threading
from collections.abc import AsyncIterator
from typing import NoReturn

import aiohttp
import pytest
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection

from webrtc_cast.app import create_app, server_ssl_context, tune_process
from webrtc_cast.node import Node
from webrtc_cast.settings import Settings
from webrtc_cast.sfu_tree.aiortc_glue import use_ice_hosts

tune_process()  # the test process runs nodes in-process, as the CLI's process does

IN_CI = os.environ.get("CI", "").lower() == "true"


def missing_peer(message: str) -> NoReturn:
    """A real peer or server a test needs is not there: a failure under CI=true (a CI run that silently skips
    proves nothing), a skip otherwise."""
    if IN_CI:
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)

# pytest-timeout fails a test that runs past `timeout` (pyproject.toml). Its dump shows threads, and an asyncio
# test's main thread is only ever in select(); so this long before the timeout, the stacks of the pending asyncio
# tasks are written to stderr as well: where a hung test waits.
TASK_DUMP_LEAD = 20.0


def _dump_pending_tasks(nodeid: str) -> None:
    tasks = [o for o in gc.get_objects() if isinstance(o, asyncio.Task) and not o.done()]
    out = sys.__stderr__
    out.write(f"\n==== {nodeid}: close to its timeout; {len(tasks)} pending asyncio tasks ====\n")
    for task in tasks:
        with contextlib.suppress(Exception):
            task.print_stack(limit=12, file=out)
    out.flush()


@pytest.fixture(autouse=True)
def _pending_task_dump(request: pytest.FixtureRequest):
    marker = request.node.get_closest_marker("timeout")
    limit = float(marker.args[0]) if marker and marker.args else float(request.config.getini("timeout") or 0)
    timer = None
    if limit > TASK_DUMP_LEAD:
        timer = threading.Timer(limit - TASK_DUMP_LEAD, _dump_pending_tasks, args=(request.node.nodeid,))
        timer.daemon = True
        timer.start()
    yield
    if timer is not None:
        timer.cancel()


APPS: dict[int, web.Application] = {}  # id(node) -> its application, while run_node runs it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TEST_CLUSTER_TOKEN = "test-cluster-token"


@contextlib.asynccontextmanager
async def run_node(**overrides: object) -> AsyncIterator[tuple[str, Node]]:
    """A node serving HTTP on 127.0.0.1 with ICE on 127.0.0.1; yields (base URL, node). Its cluster token is
    TEST_CLUSTER_TOKEN unless the test names its own (registration is closed without one)."""
    overrides.setdefault("cluster_tokens", [TEST_CLUSTER_TOKEN])
    settings = Settings(host="127.0.0.1", port=free_port(), ice_hosts=["127.0.0.1"], **overrides)  # type: ignore[arg-type]
    node = Node(settings)
    app = create_app(node)
    APPS[id(node)] = app
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, ssl_context=server_ssl_context(settings))
    await site.start()
    try:
        yield f"http://127.0.0.1:{settings.port}", node
    finally:
        await runner.cleanup()
        APPS.pop(id(node), None)


def app_of(node: Node) -> web.Application:
    """The application run_node built around ``node`` (for its tree and relay links: webrtc_cast.app)."""
    return APPS[id(node)]


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
