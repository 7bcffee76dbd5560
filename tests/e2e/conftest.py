"""Fixtures for the headless-Chromium tests (see browser.py)."""

from __future__ import annotations

import pytest

# browser.py sits next to this file: tests/e2e is on sys.path (pytest "prepend" import mode, no __init__.py)
from browser import chromium_context


@pytest.fixture
async def browser_context():
    """A fresh Chromium BrowserContext (empty profile, fake media devices, loopback ICE allowed)."""
    async with chromium_context() as context:
        yield context
