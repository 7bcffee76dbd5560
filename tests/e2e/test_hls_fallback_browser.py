"""The /watch page falls back to LL-HLS by itself (no ?mode=hls), in headless Chromium, and the user sees it play.

(a) WebRTC cannot connect: a firewall drops UDP between the viewer and the node's media address. The node's viewer
    sessions gather on a loopback address of their own (127.0.0.77; the publisher's on 127.0.0.1) and an nftables
    table of this test drops every UDP datagram to or from that address (root + nft; removed after the test). The
    WHEP POST (TCP) succeeds, ICE never completes, and after FALLBACK_MS (4 s) the page switches to hls.js.
(b) WebRTC is full: ``max_viewers=1``; a first /watch page takes the one WebRTC seat and plays over WebRTC, the
    second gets 503 {"error": "full", "fallback": "hls"} and plays over LL-HLS at once.

What is asserted is what the user sees: the video advancing with a live frame on screen (the burned-in time read
from the picture is less than 3 s old), the stats panel's transport row saying LL-HLS and its live latency row
filled in, the status line. Under CI=true a missing Chromium or hls.js fails.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from browser import chromium_context, collect_console, screenshot, unavailable
from test_hls_browser import glass_to_glass

from signaling.hls_http import HLS_JS
from tests.conftest import run_node
from tests.integration.test_forwarding import ffmpeg_publisher, wait_live

pytestmark = pytest.mark.e2e

BLOCKED = "127.0.0.77"  # the node's media address for viewers in test (a); UDP to and from it is dropped


@contextmanager
def udp_blocked(address: str) -> Iterator[None]:
    """An nftables table dropping UDP to and from ``address`` (only that loopback address), removed on exit."""
    nft = shutil.which("nft") or "/usr/sbin/nft"
    if os.geteuid() != 0 or not os.access(nft, os.X_OK):
        unavailable("blocking UDP needs root and nft (apt-get install -y nftables)")
    table = f"cast_hls_test_{os.getpid()}"
    rules = (
        f"add table inet {table}\n"
        f"add chain inet {table} out {{ type filter hook output priority 0; policy accept; }}\n"
        f"add rule inet {table} out ip daddr {address} meta l4proto udp drop\n"
        f"add rule inet {table} out ip saddr {address} meta l4proto udp drop\n"
    )
    subprocess.run([nft, "-f", "-"], input=rules, text=True, check=True)
    try:
        yield
    finally:
        subprocess.run([nft, "delete", "table", "inet", table], check=False)

SEEN = """() => {
  const v = document.getElementById('player');
  const rows = {};
  const dts = document.querySelectorAll('#stats dt');
  dts.forEach((dt) => { rows[dt.textContent] = dt.nextElementSibling ? dt.nextElementSibling.textContent : null; });
  const pc = window.castViewer && window.castViewer.pc;
  return {t: v.currentTime, paused: v.paused, ready: v.readyState,
          status: document.getElementById('status').textContent,
          transport: window.castViewer && window.castViewer.transport, rows,
          hls: window.castHls ? window.castHls.state : null, ice: pc ? pc.iceConnectionState : null};
}"""


STATUS_LOG = """document.addEventListener('DOMContentLoaded', () => {
  window.statusLog = [];
  const el = document.getElementById('status');
  if (el) new MutationObserver(() => window.statusLog.push(el.textContent)).observe(el, {childList: true,
    characterData: true, subtree: true});
});"""


async def wait_hls_playing(page, timeout_s: float, console: list[str]) -> float:  # noqa: ANN001
    """Seconds until the page plays over hls.js."""
    t0 = time.monotonic()
    try:
        await page.wait_for_function("window.castHls && window.castHls.state === 'playing'",
                                     timeout=timeout_s * 1000)
    except Exception as exc:  # noqa: BLE001 - a timeout: say what the page shows instead
        state = await page.evaluate(SEEN)
        log = await page.evaluate("() => window.statusLog")
        raise AssertionError(("not playing over LL-HLS", state, log, console[-15:])) from exc
    return time.monotonic() - t0


async def assert_plays_over_hls(page, console: list[str]) -> dict:  # noqa: ANN001
    """The user's view: video advancing, a live frame on screen, transport LL-HLS, the live latency shown."""
    first = await page.evaluate(SEEN)
    await asyncio.sleep(4.0)
    seen = await page.evaluate(SEEN)
    g2g = [v for v in [await glass_to_glass(page) for _ in range(3)] if v is not None]
    context = (first, seen, g2g, console[-15:])
    assert seen["transport"] == "hls" and seen["hls"] == "playing", context
    assert not seen["paused"] and seen["ready"] >= 3 and seen["t"] - first["t"] > 3.0, context  # it plays
    assert "LL-HLS" in seen["rows"].get("transport", ""), context  # the stats panel says how it plays
    assert seen["rows"].get("live latency", "–").endswith(" s"), context  # and shows the live latency
    assert "LL-HLS" in seen["status"], context
    assert g2g and max(g2g) < 3000, context  # the frame on screen is live (burned-in send time)
    return seen


async def test_watch_falls_back_to_hls_when_webrtc_cannot_connect():
    if not HLS_JS.is_file():
        unavailable("hls.js is not installed (npm ci)")
    async with run_node() as (base, node):
        proc = ffmpeg_publisher(f"{base}/whip/noudp", seconds=30)
        publisher = asyncio.ensure_future(asyncio.to_thread(proc.communicate, timeout=60))
        console: list[str] = []
        try:
            await wait_live(node, "noudp")
            await asyncio.sleep(2.0)  # a first LL-HLS segment
            node.settings.ice_hosts = [BLOCKED]  # sessions from now on (the viewer's) gather there
            roles: list[str] = []
            create_session = node.create_session

            async def recording(role, *args, **kwargs):  # noqa: ANN001, ANN202
                roles.append(role)
                return await create_session(role, *args, **kwargs)

            node.create_session = recording
            with udp_blocked(BLOCKED):
                async with chromium_context() as context:
                    await context.add_init_script(STATUS_LOG)
                    page = await context.new_page()
                    collect_console(page, console)
                    await page.goto(f"{base}/watch/noudp")
                    took = await wait_hls_playing(page, 15, console)
                    seen = await assert_plays_over_hls(page, console)
                    log = await page.evaluate("() => window.statusLog")
                    await screenshot(page, "hls-fallback-no-udp")
        finally:
            await publisher
        # WebRTC was tried (WHEP answered, ICE never completed) and the page said why it switched
        assert roles == ["whep"], roles  # the page asked for WebRTC once and the node answered it
        assert not any(m.startswith(("Connected", "Playing noudp.")) for m in log), log  # ICE never completed
        assert any("WebRTC did not connect within 4 s" in m for m in log), log
        assert took < 10.0, took  # FALLBACK_MS (4 s) + hls.js start
        print(f"fallback (no UDP): playing over LL-HLS {took:.1f} s after the page loaded; {seen['rows']}")


async def test_watch_falls_back_to_hls_when_webrtc_is_full():
    if not HLS_JS.is_file():
        unavailable("hls.js is not installed (npm ci)")
    async with run_node(max_viewers=1) as (base, node):
        proc = ffmpeg_publisher(f"{base}/whip/full", seconds=30)
        publisher = asyncio.ensure_future(asyncio.to_thread(proc.communicate, timeout=60))
        console: list[str] = []
        try:
            await wait_live(node, "full")
            await asyncio.sleep(2.0)
            async with chromium_context() as context:
                await context.add_init_script(STATUS_LOG)
                first = await context.new_page()
                await first.goto(f"{base}/watch/full")
                await first.wait_for_function("window.castViewer && window.castViewer.state === 'playing'",
                                              timeout=15000)
                assert await first.evaluate("() => window.castViewer.transport") == "webrtc"
                page = await context.new_page()
                collect_console(page, console)
                await page.goto(f"{base}/watch/full")
                took = await wait_hls_playing(page, 10, console)
                seen = await assert_plays_over_hls(page, console)
                log = await page.evaluate("() => window.statusLog")
                await screenshot(page, "hls-fallback-full")
                still = await first.evaluate(SEEN)
        finally:
            await publisher
        assert any("WebRTC is full on this server" in m for m in log), log  # the 503 {"fallback": "hls"}
        assert still["transport"] == "webrtc" and still["ice"] in ("connected", "completed"), still
        assert took < 4.0, took
        print(f"fallback (full): playing over LL-HLS {took:.1f} s after the page loaded; {seen['rows']}")
