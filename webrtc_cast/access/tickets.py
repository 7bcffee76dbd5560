"""Placement tickets (PURE): a viewer the origin authenticated and sent on with 307 may join the chosen node
without its Bearer token.

Browsers and HTTP clients drop ``Authorization`` when a redirect crosses origins (Fetch, RFC 9110 §15.4), so
with view tokens configured the origin adds ``ticket=<expiry>.<mac>`` to the ``Location``: an HMAC-SHA256 of
the expiry and the stream name under a key every node of the tree holds (the first cluster token, else the
first view token). A node accepts a valid, unexpired ticket for that stream in place of the token.
"""

from __future__ import annotations

import hashlib
import hmac

TICKET_SECONDS = 30
MAX_TICKET_CHARS = 80


def ticket_keys(cluster_tokens: list[str], view_tokens: list[str]) -> list[str]:
    return list(cluster_tokens or view_tokens)


def _mac(key: str, expiry: int, stream: str) -> str:
    return hmac.new(key.encode(), f"{expiry}:{stream}".encode(), hashlib.sha256).hexdigest()[:32]


def make_ticket(key: str, stream: str, now: float, seconds: int = TICKET_SECONDS) -> str:
    expiry = int(now) + seconds
    return f"{expiry}.{_mac(key, expiry, stream)}"


def check_ticket(keys: list[str], stream: str, ticket: str, now: float) -> bool:
    if not keys or len(ticket) > MAX_TICKET_CHARS:
        return False
    expiry_text, _, mac = ticket.partition(".")
    if not expiry_text.isdigit() or not mac:
        return False
    expiry = int(expiry_text)
    if expiry < now or expiry > now + 10 * TICKET_SECONDS:
        return False
    ok = False
    for key in keys:  # every key is compared (constant time each)
        ok |= hmac.compare_digest(mac, _mac(key, expiry, stream))
    return ok
