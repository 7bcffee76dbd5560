"""The aiohttp application keys every signaling module reads (one place, so handlers never import each other)."""

from __future__ import annotations

from aiohttp import web

from webrtc_cast.node import Node

NODE_KEY: web.AppKey[Node] = web.AppKey("node", Node)
