"""The one place that uses aiohttp internals (DESIGN.md §2): aiohttp is pinned to an exact version in
pyproject.toml and ``tests/unit/test_aiohttp_contract.py`` fails first when an upgrade moves what is used here.

``SentResponse``: the LL-HLS blocking reload answers hundreds of waiters of one part with the same bytes, written
straight to each connection's transport (one ``write`` per waiter, not one aiohttp response each). The handler
then returns a ``SentResponse`` so that aiohttp neither writes nor closes anything for it: ``_eof_sent`` makes
``prepare``/``write_eof`` no-ops, ``_keep_alive`` says whether the connection stays open (as the bytes said),
and ``_body_length`` feeds aiohttp's access accounting.
"""

from __future__ import annotations

from aiohttp import web


class SentResponse(web.StreamResponse):
    """A response whose bytes are already on the transport."""

    def __init__(self, status: int, length: int, keep_alive: bool = True) -> None:
        super().__init__(status=status)
        self._eof_sent = True
        self._keep_alive = keep_alive
        self._body_length = length
