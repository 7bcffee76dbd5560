"""Headless Chromium for end-to-end tests (a helper module, not a test file).

`chromium_context()` launches Debian's Chromium (never a Playwright-downloaded browser) with the flags from
TESTING.md: fake camera/microphone, auto-granted media permission, and 127.0.0.1 ICE candidates allowed.
Without Chromium or Playwright the test is skipped — except under CI=true, where it fails: a CI run that
silently skips its browser tests proves nothing.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from tests.conftest import missing_peer

CHROMIUM = os.environ.get("CAST_CHROMIUM", "/usr/bin/chromium")

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    # A muted tab is still allowed to autoplay; never throttle timers of pages that are not in front,
    # since a test keeps a publisher page and a viewer page open side by side.
    "--autoplay-policy=no-user-gesture-required",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
]

SCREENSHOT_DIR_ENV = "CAST_SCREENSHOT_DIR"


def unavailable(reason: str) -> None:
    """Fail under CI=true, skip otherwise."""
    missing_peer(f"the browser is unavailable: {reason}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@asynccontextmanager
async def chromium_context(**kwargs: Any) -> AsyncIterator[Any]:
    """Yield a Playwright BrowserContext of a fresh headless Chromium with an empty profile.

    Extra keyword arguments go to `launch_persistent_context` (e.g. viewport=...).
    """
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)) and not shutil.which(CHROMIUM):
        unavailable(f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)")
    try:
        from playwright.async_api import async_playwright
    except ImportError as exc:
        unavailable(f"playwright is not installed ({exc}); pip install -e '.[test]'")

    options: dict[str, Any] = {
        "executable_path": CHROMIUM,
        "headless": True,
        "args": CHROMIUM_ARGS,
        "viewport": {"width": 1280, "height": 800},
    }
    options.update(kwargs)
    with tempfile.TemporaryDirectory(prefix="cast-chromium-") as profile:
        async with async_playwright() as pw:
            context = await pw.chromium.launch_persistent_context(profile, **options)
            try:
                yield context
            finally:
                await context.close()


def collect_console(page: Any, sink: list[str]) -> None:
    """Append the page's console messages and uncaught errors to `sink` (useful in assertion messages)."""
    page.on("console", lambda msg: sink.append(f"console.{msg.type}: {msg.text}"))
    page.on("pageerror", lambda err: sink.append(f"pageerror: {err}"))


async def screenshot(page: Any, name: str) -> Path | None:
    """Save a PNG of `page` as <$CAST_SCREENSHOT_DIR>/<name>.png when that variable is set."""
    directory = os.environ.get(SCREENSHOT_DIR_ENV)
    if not directory:
        return None
    path = Path(directory) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(path), full_page=True)
    return path
