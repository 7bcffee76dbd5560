"""Relay tree on loopback: origin -> relay -> relay, viewers on each hop, and a link that heals.

All nodes run in this process on their own 127.0.0.1 ports (one machine, many nodes is the same tree).
"""

from __future__ import annotations

import asyncio
import time

from signaling.app_keys import RELAY_LINKS_KEY
from tests.conftest import app_of, run_node
from tests.integration.test_forwarding import FPS, ffmpeg_publisher, wait_live
from webrtc_cast.clients import watch


async def test_two_relay_hops_carry_the_broadcast_to_viewers():
    async with run_node() as (origin, origin_node):
        async with run_node(parent_url=origin) as (relay1, relay1_node), \
                run_node(parent_url=relay1) as (relay2, relay2_node):
            proc = ffmpeg_publisher(f"{origin}/whip/tree", seconds=16)
            try:
                await wait_live(origin_node, "tree")
                reports = await asyncio.gather(
                    watch(f"{origin}/whep/tree", duration=7.0),
                    watch(f"{relay1}/whep/tree", duration=7.0),
                    watch(f"{relay2}/whep/tree", duration=7.0),
                )
            finally:
                await asyncio.to_thread(proc.communicate, timeout=30)
        for hop, r in enumerate(reports):
            assert (r.width, r.height) == (320, 180), (hop, r.to_json())
            assert r.frames_decoded >= 0.9 * FPS * (7.0 - r.join_time_ms / 1000 - 0.5), (hop, r.to_json())
            assert r.audio_frames > 0
        p50 = [r.latency_p50_ms for r in reports]
        print(f"glass-to-glass p50 by hops 0/1/2: {p50} ms")
        assert p50[2] < p50[0] + 100, p50  # a hop adds milliseconds, not a buffer
        # one link per hop, however many viewers
        assert sum(1 for s in origin_node.sessions.values() if s.role == "relay") <= 1


async def test_a_relay_re_attaches_when_its_link_drops_and_viewers_keep_their_session():
    async with run_node() as (origin, origin_node), run_node(parent_url=origin) as (relay, relay_node):
        proc = ffmpeg_publisher(f"{origin}/whip/heal", seconds=16)
        try:
            await wait_live(origin_node, "heal")
            viewer = asyncio.create_task(watch(f"{relay}/whep/heal", duration=9.0))
            await asyncio.sleep(3.0)
            viewer_ids = {s.id for s in relay_node.sessions.values() if s.role == "whep"}
            link = next(s for s in origin_node.sessions.values() if s.role == "relay")
            dropped_at = time.monotonic()
            await origin_node.close_session(link)  # the parent side of the link goes away
            while app_of(relay_node)[RELAY_LINKS_KEY].reconnects == 0 or not relay_node.broadcasts["heal"].live:
                assert time.monotonic() - dropped_at < 5.0, "the relay did not re-attach"
                await asyncio.sleep(0.05)
            healed_in = time.monotonic() - dropped_at
            report = await viewer
        finally:
            await asyncio.to_thread(proc.communicate, timeout=30)
        print(f"re-attached in {healed_in * 1000:.0f} ms; viewer: {report.to_json()}")
        assert healed_in < 2.0
        assert {s.id for s in relay_node.sessions.values() if s.role == "whep"} <= viewer_ids
        assert report.frames_decoded >= 0.75 * FPS * 9.0, report.to_json()
        assert report.max_gap_ms is not None and report.max_gap_ms < 2500, report.to_json()
