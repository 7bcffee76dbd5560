"""The /watch page in Chromium re-joins through the origin when the relay serving it dies (issue 4).

Real processes on 127.0.0.1: an origin that keeps no viewers itself (--max-viewers 0), two relays under it, a
synthetic publisher. The page is loaded from the origin; its WHEP POST is answered 307 to a relay (cross-origin
CORS included). SIGKILL of that relay: the page must notice, POST to the origin again (which avoids the dead
relay) and decode new frames from the other relay within 3 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from browser import collect_console, free_port

from webrtc_cast.workers import stop_processes

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def _spawn(args: list[str], out) -> subprocess.Popen:  # noqa: ANN001
    return subprocess.Popen([sys.executable, "-m", "webrtc_cast.cli", *args], cwd=ROOT, stdout=out,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})


AUTH = {"Authorization": "Bearer e2e-cluster-token"}


def _nodes(base: str) -> list[dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{base}/nodes", headers=AUTH), timeout=1) as r:
            return json.loads(r.read())["nodes"]
    except OSError:
        return []


STATE_JS = """async () => {
  const v = window.castViewer;
  const s = v ? await v.stats() : null;
  return [v && v.session ? v.session.url : null, s ? s.framesDecoded || 0 : 0, v ? v.state : null];
}"""


async def test_watch_page_rejoins_through_the_origin_when_its_relay_is_killed(browser_context):
    with tempfile.TemporaryFile(mode="w+") as log:
        await _scenario(browser_context, log)


async def _scenario(browser_context, log) -> None:  # noqa: ANN001
    ports = [free_port() for _ in range(3)]
    base = f"http://127.0.0.1:{ports[0]}"
    procs: list[subprocess.Popen] = []
    common = ["--host", "127.0.0.1", "--ice-host", "127.0.0.1", "--cluster-token", "e2e-cluster-token"]
    try:
        procs.append(_spawn(["serve", *common, "--port", str(ports[0]), "--max-viewers", "0"], log))
        for port in ports[1:]:
            procs.append(_spawn(["relay", "--parent", base, *common, "--port", str(port)], log))
        deadline = time.monotonic() + 20
        while len(_nodes(base)) < 3:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                log.seek(0)
                pytest.fail(f"the tree did not come up\n{log.read()[-3000:]}")
            await asyncio.sleep(0.2)
        procs.append(_spawn(["publish", "--synthetic", "--width", "320", "--height", "180", "--duration", "60",
                             f"{base}/whip/tree"], log))
        page = await browser_context.new_page()
        console: list[str] = []
        collect_console(page, console)
        await asyncio.sleep(2.0)
        await page.goto(f"{base}/watch/tree")
        try:
            await page.wait_for_function("window.castViewer && window.castViewer.state === 'playing'",
                                         timeout=20_000)
        except Exception:  # noqa: BLE001
            pytest.fail("the page did not play\n" + "\n".join(console[-20:]))
        first_url, _, _ = await page.evaluate(STATE_JS)
        assert first_url and not first_url.startswith(base), first_url  # served by a relay, after a 307
        serving = next(p for p, port in zip(procs[1:3], ports[1:], strict=True) if f":{port}/" in first_url)
        await asyncio.sleep(1.0)
        killed_at = time.monotonic()
        serving.send_signal(signal.SIGKILL)
        resumed_at = None
        frames_then = 0
        while time.monotonic() - killed_at < 8:
            url, frames, _ = await page.evaluate(STATE_JS)
            if url and url != first_url and frames > 0:
                if frames_then and frames > frames_then:
                    resumed_at = time.monotonic()
                    break
                frames_then = frames_then or frames
            await asyncio.sleep(0.05)
        url, frames, state = await page.evaluate(STATE_JS)
        print(f"/watch re-joined in {None if resumed_at is None else round(resumed_at - killed_at, 2)} s via {url}")
        if resumed_at is None:
            print(json.dumps(_nodes(base), indent=1))
            log.seek(0)
            print(log.read()[-6000:])
            print("\n".join(console))
            print(await page.evaluate("JSON.stringify([window.castViewer.transport, window.castViewer.lastError, "
                                      "document.getElementById('status').textContent])"))
        assert resumed_at is not None, (url, frames, state, console[-30:])
        assert resumed_at - killed_at < 3.0, (resumed_at - killed_at, console[-10:])
        assert url.startswith("http://127.0.0.1:") and url != first_url
    finally:
        stop_processes(procs, timeout=10.0)
