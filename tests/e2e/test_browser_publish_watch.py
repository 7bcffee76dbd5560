"""Chromium publishes over WHIP to a real `webrtc-cast serve`, a second Chromium page watches over WHEP.

The server runs as a subprocess on a free loopback port with `--ice-host 127.0.0.1`; the pages are the ones
it serves itself (/publish/{stream}, /watch/{stream}, /static/...). Truth comes from the viewer's getStats():
framesDecoded must keep growing and freezeCount must stay 0.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from browser import collect_console, free_port, screenshot, unavailable

pytestmark = pytest.mark.e2e

WATCH_SECONDS = 5
MIN_FPS = 10  # the fake camera runs at 30 fps; anything below this over 5 s is a stall, not a slow start


def server_command(port: int) -> list[str]:
    script = Path(sys.executable).with_name("webrtc-cast")
    exe = str(script) if script.exists() else shutil.which("webrtc-cast")
    if exe is None or importlib.util.find_spec("webrtc_cast.cli") is None:
        unavailable("the webrtc-cast console script / webrtc_cast.cli is not installed")
    return [exe, "serve", "--host", "127.0.0.1", "--port", str(port), "--ice-host", "127.0.0.1"]


def wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"webrtc-cast serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answers HTTP: up
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"webrtc-cast serve did not answer {url} within {timeout} s")


@pytest.fixture
def cast_server():
    port = free_port()
    cmd = server_command(port)
    with tempfile.TemporaryFile(mode="w+") as out:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            try:
                wait_http(f"{base}/publish/x", proc, timeout=20)
            except RuntimeError as exc:
                out.seek(0)
                pytest.fail(f"{exc}\n--- server output ---\n{out.read()[-4000:]}")
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            out.seek(0)
            log = out.read()
            if log:
                sys.stderr.write(f"--- webrtc-cast serve output (tail) ---\n{log[-4000:]}\n")


async def test_chromium_publish_and_watch(cast_server, browser_context):
    log: list[str] = []
    publisher = await browser_context.new_page()
    collect_console(publisher, log)
    await publisher.goto(f"{cast_server}/publish/x?autostart=1&simulcast=0")  # one layer; simulcast: test_simulcast
    await publisher.wait_for_function(
        "window.castPublisher && ['live', 'failed', 'error'].includes(window.castPublisher.state)",
        timeout=20_000,
    )
    state = await publisher.evaluate("[window.castPublisher.state, document.getElementById('status').textContent]")
    assert state[0] == "live", (state, log)

    viewer = await browser_context.new_page()
    collect_console(viewer, log)
    await viewer.goto(f"{cast_server}/watch/x")
    try:
        await viewer.wait_for_function("window.castViewer && window.castViewer.state === 'playing'", timeout=20_000)
    except Exception as exc:
        status = await viewer.text_content("#status")
        raise AssertionError(f"viewer never played: {status!r}\n" + "\n".join(log)) from exc

    first = await viewer.evaluate("window.castViewer.stats()")
    await asyncio.sleep(WATCH_SECONDS)
    second = await viewer.evaluate("window.castViewer.stats()")
    await screenshot(publisher, "e2e-publish-live")
    await screenshot(viewer, "e2e-watch-playing")

    decoded = second["framesDecoded"] - first["framesDecoded"]
    assert decoded >= MIN_FPS * WATCH_SECONDS, (first, second)
    assert second["frameWidth"] > 0 and second["frameHeight"] > 0, second
    assert first["freezeCount"] == 0 and second["freezeCount"] == 0, (first, second)
    assert not [line for line in log if line.startswith("pageerror")], log

    # Stopping the publisher must be orderly (DELETE answered, page back to 'stopped').
    await publisher.click("#toggle")
    await publisher.wait_for_function("window.castPublisher.state === 'stopped'", timeout=5_000)
