"""Registry, placement and workers on loopback: 307 to a relay, a full tree, two origins sharing Redis,
``serve --workers 2``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from signaling.app_keys import RELAY_LINKS_KEY
from tests.conftest import TEST_CLUSTER_TOKEN, app_of, free_port, make_offer, run_node
from tests.integration.test_chat_redis import redis_server
from tests.integration.test_forwarding import FPS, ffmpeg_publisher, wait_live
from webrtc_cast.clients import watch

ROOT = Path(__file__).resolve().parents[2]
FAST = {"node_report_interval": 0.2}


async def _nodes(http: aiohttp.ClientSession, origin: str, token: str = TEST_CLUSTER_TOKEN) -> list[dict]:
    async with http.get(f"{origin}/nodes", headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200
        return (await r.json())["nodes"]


async def _wait_nodes(http: aiohttp.ClientSession, origin: str, count: int, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = await _nodes(http, origin)
        if len(nodes) >= count:
            return nodes
        assert time.monotonic() < deadline, nodes
        await asyncio.sleep(0.1)


async def test_origin_sends_viewers_to_a_relay_with_307_and_answers_503_when_the_tree_is_full(http):
    async with run_node(max_viewers=0, **FAST) as (origin, origin_node), \
            run_node(parent_url=origin, max_viewers=1, **FAST) as (relay, relay_node):
        nodes = await _wait_nodes(http, origin, 2)
        assert [(n["url"], n["depth"]) for n in nodes] == [(origin, 0), (relay, 1)]
        proc = ffmpeg_publisher(f"{origin}/whip/placed", seconds=12)
        try:
            await wait_live(origin_node, "placed")
            # W38: a load-balancing redirect is 307 (keeps method and body); CORS exposes Location
            async with http.post(f"{origin}/whep/placed", data="v=0", headers={"Content-Type": "application/sdp"},
                                 allow_redirects=False) as r:
                assert r.status == 307
                assert r.headers["Location"] == f"{relay}/whep/placed"
                assert "Location" in r.headers["Access-Control-Expose-Headers"]
            await asyncio.sleep(0.5)  # that redirect counted as pending on the relay until its next report
            report = await watch(f"{origin}/whep/placed", duration=3.0)
            assert report.location and report.location.startswith(f"{relay}/whep/placed/"), report.to_json()
            assert report.frames_decoded >= 0.6 * FPS * 2.0, report.to_json()
            assert report.delete_status == 200
            # the only relay carries its one viewer: the whole tree is full -> the documented LL-HLS answer
            await asyncio.sleep(0.5)  # the relay's next load report shows its viewer gone
            held = asyncio.create_task(watch(f"{origin}/whep/placed", duration=2.0))
            deadline = time.monotonic() + 5
            while not any(s.role == "whep" for s in relay_node.sessions.values()):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # one load report later the origin knows
            async with http.post(f"{origin}/whep/placed", data="v=0",
                                 headers={"Content-Type": "application/sdp"}) as r:
                assert r.status == 503
                assert json.loads(await r.text()) == {"error": "full", "fallback": "hls"}
                assert r.headers["Retry-After"]
            await held
        finally:
            proc.kill()
            await asyncio.to_thread(proc.communicate, timeout=30)
    assert origin_node.metrics.placements.labels("redirect")._value.get() >= 2


async def test_registry_refuses_bad_reports_and_unknown_cluster_tokens(http):
    async with run_node(cluster_tokens=["secret"]) as (origin, _):
        report = {"id": "n1", "url": "http://127.0.0.1:9", "max_viewers": 5}
        async with http.post(f"{origin}/nodes", json=report) as r:
            assert r.status == 401
        auth = {"Authorization": "Bearer secret"}
        async with http.post(f"{origin}/nodes", json={**report, "url": "ftp://x"}, headers=auth) as r:
            assert r.status == 400
        async with http.post(f"{origin}/nodes", json=report, headers=auth) as r:
            assert r.status == 200 and (await r.json())["root"]
        async with http.get(f"{origin}/nodes", headers=auth) as r:
            assert {n["id"] for n in (await r.json())["nodes"]} >= {"n1"}
        async with http.delete(f"{origin}/nodes/n1", headers=auth) as r:
            assert r.status == 204


async def test_two_origins_share_the_registry_in_redis(tmp_path: Path):
    """A viewer POSTs to origin A; the stream is published to origin B, whose relay R serves it: A sends the
    viewer to R (307) from what R reported to B through Redis, and the viewer plays."""
    async with redis_server(tmp_path) as url, run_node(redis_url=url, **FAST) as (a, _a), \
                run_node(redis_url=url, max_viewers=0, **FAST) as (b, b_node), \
                run_node(parent_url=b, **FAST) as (r, r_node):
        async with aiohttp.ClientSession() as http:
            nodes = await _wait_nodes(http, a, 3)
            assert {n["url"] for n in nodes} == {a, b, r}
        proc = ffmpeg_publisher(f"{b}/whip/shared", seconds=10)
        try:
            await wait_live(b_node, "shared")
            await asyncio.sleep(0.5)  # B's next report names the live stream
            report = await watch(f"{a}/whep/shared", duration=4.0)
        finally:
            proc.kill()
            await asyncio.to_thread(proc.communicate, timeout=30)
        assert report.location and report.location.startswith(f"{r}/whep/shared/"), report.to_json()
        assert report.frames_decoded >= 0.6 * FPS * 3.0, report.to_json()
        links = app_of(r_node).get(RELAY_LINKS_KEY)
        assert links is not None and links.parent_url == b


def test_serve_workers_2_puts_a_second_process_behind_the_same_port(tmp_path: Path):
    port = free_port()
    while True:  # the worker takes PORT+1
        try:
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            break
        except OSError:
            port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "webrtc_cast.cli", "serve", "--workers", "2", "--port", str(port),
         "--max-viewers", "1", "--cluster-token", TEST_CLUSTER_TOKEN],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )

    async def scenario() -> list:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if len(await _nodes(http, base)) == 2:
                        break
                except (aiohttp.ClientError, AssertionError):
                    pass
                assert time.monotonic() < deadline and server.poll() is None, "workers did not come up"
                await asyncio.sleep(0.2)
        proc = ffmpeg_publisher(f"{base}/whip/w", seconds=10)
        try:
            await asyncio.sleep(2.0)
            # max 1 viewer per process: the first stays on the origin, the second goes to the worker
            first = asyncio.create_task(watch(f"{base}/whep/w", duration=5.0))
            await asyncio.sleep(1.5)
            second = await watch(f"{base}/whep/w", duration=3.5)
            return [await first, second]
        finally:
            proc.kill()
            await asyncio.to_thread(proc.communicate, timeout=30)

    try:
        reports = asyncio.run(scenario())
    finally:
        server.terminate()
        server.wait(15)
    served = [r.location.rsplit("/whep/", 1)[0] for r in reports]
    assert served == [base, f"http://127.0.0.1:{port + 1}"], [r.to_json() for r in reports]
    for r in reports:
        assert r.frames_decoded >= 0.5 * FPS * 2.5, r.to_json()


async def test_with_view_tokens_the_redirected_viewer_gets_in_with_a_ticket(http):
    """Clients drop Authorization on a cross-origin redirect; the origin's ticket in Location stands in for it."""
    async with run_node(max_viewers=0, view_tokens=["v"], **FAST) as (origin, _), \
            run_node(parent_url=origin, parent_token="v", view_tokens=["v"], **FAST) as (relay, relay_node):
        await _wait_nodes(http, origin, 2)
        pc, offer = await make_offer("recvonly")
        try:
            sdp_type = {"Content-Type": "application/sdp"}
            async with http.post(f"{origin}/whep/t", data=offer, headers=sdp_type) as r:
                assert r.status == 401  # the origin checks the token before it places anyone
            async with http.post(f"{origin}/whep/t", data=offer, headers={**sdp_type, "Authorization": "Bearer v"},
                                 allow_redirects=False) as r:
                assert r.status == 307
                location = r.headers["Location"]
            assert location.startswith(f"{relay}/whep/t?ticket=")
            async with http.post(location, data=offer, headers=sdp_type) as r:  # no Authorization, as a browser
                assert r.status == 201, await r.text()
            async with http.post(location.replace("/whep/t?", "/whep/other?"), data=offer, headers=sdp_type) as r:
                assert r.status == 401  # a ticket is for one stream
        finally:
            await pc.close()
        assert sum(1 for s in relay_node.sessions.values() if s.role == "whep") == 1


async def test_no_cluster_token_closes_registration_and_placement(http):
    """Issue 17 item 1: an unauthenticated fake node with depth 0 neither registers nor receives viewers."""
    async with run_node(cluster_tokens=[]) as (origin, _):
        fake = {"id": "evil", "url": "http://127.0.0.1:9", "depth": 0, "max_viewers": 1000}
        async with http.post(f"{origin}/nodes", json=fake) as r:
            assert r.status == 403 and "registration is closed" in await r.text()
        async with http.get(f"{origin}/nodes/parent", params={"url": "http://127.0.0.1:9"}) as r:
            assert r.status == 403
        async with http.post(f"{origin}/whep/live", data="v=0\r\n", headers={"Content-Type": "application/sdp"},
                             allow_redirects=False) as r:
            assert r.status != 307 and "Location" not in r.headers or "127.0.0.1:9" not in r.headers["Location"]
        assert "evil" not in {n["id"] for n in await _nodes(http, origin)}


async def test_delete_of_the_origins_own_entry_is_refused(http):
    async with run_node(cluster_tokens=["secret"]) as (origin, _):
        auth = {"Authorization": "Bearer secret"}
        own = (await (await http.get(f"{origin}/nodes", headers=auth)).json())["origin"]
        async with http.delete(f"{origin}/nodes/{own}", headers=auth) as r:
            assert r.status == 403
        assert own in {n["id"] for n in await _nodes(http, origin, "secret")}
    async with run_node(cluster_tokens=[]) as (origin, _):
        own = (await (await http.get(f"{origin}/nodes")).json())["origin"]
        async with http.delete(f"{origin}/nodes/{own}") as r:
            assert r.status == 403
