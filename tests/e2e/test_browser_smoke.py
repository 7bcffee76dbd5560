"""Prove the headless-Chromium harness and the web pages without the real server.

A tiny aiohttp app serves web/ the way the server does (/publish/{stream}, /watch/{stream}, /static/...).
Checked in Chromium: the pages load and lay out, the fake camera works, and two RTCPeerConnections connect
over 127.0.0.1 (which needs --allow-loopback-in-peer-connection). A minimal aiortc WHIP/WHEP endpoint,
bound to loopback, then proves wish.js end to end: Chromium publishes (frames arrive and decode in aiortc),
Chromium plays (framesDecoded grows), and Stop sends DELETE to the Location.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from aiohttp import web
from browser import collect_console, screenshot

WEB = Path(__file__).resolve().parents[2] / "web"

pytestmark = pytest.mark.e2e

BLANK = "<!doctype html><meta charset=utf-8><title>blank</title><p>blank</p>"


def page_app() -> web.Application:
    app = web.Application()

    async def publish(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB / "publish.html")

    async def watch(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB / "watch.html")

    async def blank(_request: web.Request) -> web.Response:
        return web.Response(text=BLANK, content_type="text/html")

    app.router.add_get("/publish/{stream}", publish)
    app.router.add_get("/watch/{stream}", watch)
    app.router.add_get("/blank", blank)
    app.router.add_static("/static/", WEB)
    return app


@contextlib.asynccontextmanager
async def serve(app: web.Application):
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def base_url():
    async with serve(page_app()) as url:
        yield url


async def test_publish_page_previews_fake_camera(browser_context, base_url):
    page = await browser_context.new_page()
    log: list[str] = []
    collect_console(page, log)
    await page.goto(f"{base_url}/publish/smoke")
    await page.wait_for_function("window.castPublisher && window.castPublisher.state === 'ready'", timeout=10_000)
    await page.wait_for_function("document.getElementById('preview').videoWidth > 0", timeout=10_000)
    assert await page.text_content("#stream-name") == "smoke"
    assert await page.is_enabled("#toggle")
    tracks = await page.evaluate("window.castPublisher.stream.getTracks().map(t => t.kind).sort()")
    assert tracks == ["audio", "video"], log
    await screenshot(page, "publish-ready")

    # No WHIP endpoint here: the error must carry the HTTP status and the page must say so.
    await page.click("#toggle")
    await page.wait_for_function("window.castPublisher.state === 'failed'", timeout=10_000)
    status = await page.text_content("#status")
    assert "404" in status, status
    await screenshot(page, "publish-error")
    assert not [line for line in log if line.startswith("pageerror")], log


async def test_watch_page_reports_error_and_retries(browser_context, base_url):
    page = await browser_context.new_page()
    log: list[str] = []
    collect_console(page, log)
    await page.goto(f"{base_url}/watch/smoke?token=t0k")
    await page.wait_for_function("window.castViewer && window.castViewer.state === 'retrying'", timeout=10_000)
    status = await page.text_content("#status")
    assert "404" in status and "retrying" in status, status
    assert await page.evaluate("window.castViewer.lastError.status") == 404
    await screenshot(page, "watch-error")
    # The backoff timer fires and the page tries again.
    await page.wait_for_function("window.castViewer.reconnects >= 1", timeout=5_000)
    assert not [line for line in log if line.startswith("pageerror")], log


LOOPBACK_JS = """
async () => {
  const media = await navigator.mediaDevices.getUserMedia({video: true, audio: true});
  const a = new RTCPeerConnection(), b = new RTCPeerConnection();
  for (const t of media.getTracks()) a.addTransceiver(t, {direction: 'sendonly'});
  const gathered = (pc) => new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') return resolve();
    pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && resolve());
    setTimeout(resolve, 3000);
  });
  const candidates = (sdp) => sdp.split('\\r\\n').filter((l) => l.startsWith('a=candidate:'));
  const loopbackOnly = (sdp) => sdp.split('\\r\\n')
    .filter((l) => !l.startsWith('a=candidate:') || / 127\\.0\\.0\\.1 /.test(l)).join('\\r\\n');
  await a.setLocalDescription(); await gathered(a);
  await b.setRemoteDescription({type: 'offer', sdp: loopbackOnly(a.localDescription.sdp)});
  await b.setLocalDescription(); await gathered(b);
  await a.setRemoteDescription({type: 'answer', sdp: loopbackOnly(b.localDescription.sdp)});
  const deadline = Date.now() + 10000;
  const inbound = async () => {
    let v = null;
    (await b.getStats()).forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') v = s; });
    return v;
  };
  while (Date.now() < deadline) {
    const v = await inbound();
    if (a.connectionState === 'connected' && v && v.framesDecoded > 10) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  const stats = await a.getStats();
  let pair = null;
  stats.forEach((s) => { if (s.type === 'transport') pair = stats.get(s.selectedCandidatePairId); });
  const local = pair && stats.get(pair.localCandidateId);
  const remote = pair && stats.get(pair.remoteCandidateId);
  const v = await inbound();
  const result = {
    offerCandidates: candidates(a.localDescription.sdp),
    stateA: a.connectionState, stateB: b.connectionState,
    framesDecoded: v ? v.framesDecoded : 0, width: v ? v.frameWidth : 0,
    local: local ? local.address : null, remote: remote ? remote.address : null,
  };
  a.close(); b.close(); media.getTracks().forEach((t) => t.stop());
  return result;
}
"""


async def test_in_page_loopback_peer_connection(browser_context, base_url):
    page = await browser_context.new_page()
    await page.goto(f"{base_url}/blank")
    result = await page.evaluate(LOOPBACK_JS)
    assert any(" 127.0.0.1 " in c for c in result["offerCandidates"]), result
    assert result["stateA"] == "connected" and result["stateB"] == "connected", result
    # Only 127.0.0.1 candidates were exchanged, so media went to 127.0.0.1. The sending side may still use
    # its eth0 socket (source 192.0.2.x; the receiver sees it as peer-reflexive): on Linux that traffic
    # never leaves the host either.
    assert result["remote"] == "127.0.0.1", result
    assert result["framesDecoded"] > 10 and result["width"] > 0, result


class LoopbackEndpoint:
    """A minimal WHIP/WHEP endpoint made of aiortc peer connections (test double for the real server).

    WHIP: counts video frames decoded from the browser. WHEP: sends aiortc's synthetic video and silence.
    Locations are relative ("/resource/N" for WHIP, "res/N" for WHEP) to exercise both resolutions.
    """

    def __init__(self) -> None:
        self.pcs: dict[str, object] = {}
        self.tasks: list[asyncio.Task] = []
        self.frames = 0
        self.authorization: list[str | None] = []
        self.deleted: list[str] = []
        self.counter = 0

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/whip/{stream}", self.whip)
        app.router.add_post("/whep/{stream}", self.whep)
        app.router.add_delete("/resource/{id}", self.delete)
        app.router.add_delete("/whep/res/{id}", self.delete)

    async def _answer(self, request: web.Request, pc, location: str) -> web.Response:
        from aiortc import RTCSessionDescription

        self.authorization.append(request.headers.get("Authorization"))
        if request.content_type != "application/sdp":
            return web.Response(status=415, text="want application/sdp")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=await request.text(), type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return web.Response(
            status=201,
            text=pc.localDescription.sdp,
            content_type="application/sdp",
            headers={"Location": location, "ETag": f'"{self.counter}"'},
        )

    async def whip(self, request: web.Request) -> web.Response:
        from aiortc import RTCPeerConnection

        pc = RTCPeerConnection()
        self.counter += 1
        self.pcs[str(self.counter)] = pc

        @pc.on("track")
        def on_track(track) -> None:
            if track.kind == "video":
                self.tasks.append(asyncio.ensure_future(self._count(track)))

        return await self._answer(request, pc, f"/resource/{self.counter}")

    async def _count(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                self.frames += 1

    async def whep(self, request: web.Request) -> web.Response:
        from aiortc import RTCPeerConnection
        from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

        pc = RTCPeerConnection()
        self.counter += 1
        self.pcs[str(self.counter)] = pc
        pc.addTrack(AudioStreamTrack())
        pc.addTrack(VideoStreamTrack())
        return await self._answer(request, pc, f"res/{self.counter}")

    async def delete(self, request: web.Request) -> web.Response:
        self.deleted.append(request.path)
        pc = self.pcs.pop(request.match_info["id"], None)
        if pc is None:
            return web.Response(status=404)
        await pc.close()
        return web.Response(status=200)

    async def close(self) -> None:
        for pc in list(self.pcs.values()):
            await pc.close()
        for task in self.tasks:
            task.cancel()


@pytest.fixture
async def loopback_endpoint(monkeypatch):
    aioice_ice = pytest.importorskip("aioice.ice")
    # Loopback only: aioice skips 127.0.0.1 by default and would gather eth0.
    monkeypatch.setattr(aioice_ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    endpoint = LoopbackEndpoint()
    app = page_app()
    endpoint.add_routes(app)
    async with serve(app) as url:
        try:
            yield url, endpoint
        finally:
            await endpoint.close()


async def wait_until(predicate, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.1)


async def test_publish_page_whip_roundtrip(browser_context, loopback_endpoint):
    url, endpoint = loopback_endpoint
    page = await browser_context.new_page()
    log: list[str] = []
    collect_console(page, log)
    await page.goto(f"{url}/publish/rt?autostart=1&token=s3cret")
    await page.wait_for_function("window.castPublisher.state === 'live'", timeout=15_000)
    assert endpoint.authorization == ["Bearer s3cret"]
    await wait_until(lambda: endpoint.frames >= 10, 15, "aiortc to decode 10 frames from Chromium")
    await page.wait_for_timeout(1500)  # let the stats panel fill in
    await screenshot(page, "publish-live")
    await page.click("#toggle")
    await wait_until(lambda: endpoint.deleted, 5, "DELETE of the WHIP session")
    assert endpoint.deleted == ["/resource/1"]
    assert await page.evaluate("window.castPublisher.state") == "stopped"
    assert not [line for line in log if line.startswith("pageerror")], log


async def test_watch_page_whep_roundtrip(browser_context, loopback_endpoint):
    url, endpoint = loopback_endpoint
    page = await browser_context.new_page()
    log: list[str] = []
    collect_console(page, log)
    await page.goto(f"{url}/watch/rt")
    await page.wait_for_function("window.castViewer.state === 'playing'", timeout=15_000)
    first = await page.evaluate("window.castViewer.stats()")
    await page.wait_for_timeout(2000)
    second = await page.evaluate("window.castViewer.stats()")
    assert second["framesDecoded"] > first["framesDecoded"] > 0, (first, second)
    assert second["frameWidth"] == 640, second
    assert await page.evaluate("document.getElementById('player').videoWidth") == 640
    await screenshot(page, "watch-playing")
    await page.click("#reconnect")  # closes the session (DELETE) and plays again
    await wait_until(lambda: endpoint.deleted, 5, "DELETE of the WHEP session")
    assert endpoint.deleted == ["/whep/res/1"]
    await page.wait_for_function("window.castViewer.state === 'playing'", timeout=15_000)
    assert not [line for line in log if line.startswith("pageerror")], log
