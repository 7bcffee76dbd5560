"""Two headless Chromium /watch pages chat and react with each other through the node's chat WebSocket."""

from __future__ import annotations

import pytest
from browser import collect_console, screenshot

from tests.conftest import run_node

pytestmark = pytest.mark.e2e

FIRE = "\U0001f525"


async def test_two_pages_chat_and_react(browser_context) -> None:  # noqa: ANN001
    async with run_node(chat_moderator_tokens=["modtok"]) as (base, _node):
        logs: list[str] = []
        alice = await browser_context.new_page()
        bob = await browser_context.new_page()
        collect_console(alice, logs)
        collect_console(bob, logs)
        await alice.goto(f"{base}/watch/party?name=alice&token=modtok")
        await bob.goto(f"{base}/watch/party?name=bob")
        for page in (alice, bob):
            await page.wait_for_function("window.castChat && window.castChat.state === 'joined'", timeout=10_000)
        assert await alice.evaluate("window.castChat.moderator") is True

        await alice.fill("#chat-input", "hello from alice")
        await alice.click("#chat-send")
        await bob.wait_for_selector("#chat-messages li:has-text('hello from alice')", timeout=5_000)
        await bob.fill("#chat-input", "hi alice")
        await bob.press("#chat-input", "Enter")
        await alice.wait_for_selector("#chat-messages li:has-text('hi alice')", timeout=5_000)
        order_a = await alice.evaluate("window.castChat.messages.map(m => m.text)")
        order_b = await bob.evaluate("window.castChat.messages.map(m => m.text)")
        assert order_a == order_b == ["hello from alice", "hi alice"], logs

        for _ in range(3):
            await bob.click(f"#chat-reactions button[data-emoji='{FIRE}']")
        await alice.wait_for_function(f"(window.castChat.reactions['{FIRE}'] || 0) >= 3", timeout=5_000)
        assert await alice.evaluate(f"window.castChat.reactions['{FIRE}']") == 3

        await bob.wait_for_function("window.castChat.viewers === 2", timeout=6_000)
        first_id = await alice.evaluate("window.castChat.messages[0].id")
        await alice.hover(f"#chat-messages li[data-id='{first_id}']")  # the moderator tools show on hover
        await alice.click(f"#chat-messages li[data-id='{first_id}'] button[title='pin']")
        await bob.wait_for_selector("#chat-pinned:has-text('hello from alice')", timeout=5_000)
        await screenshot(bob, "chat-bob")
        errors = [line for line in logs if line.startswith("pageerror")]
        assert not errors, errors
