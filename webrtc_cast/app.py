"""The composition root: builds a node's whole application and wires its parts (the only module, with the CLI,
that sees every layer).

``create_app(node)`` returns the aiohttp application: the signaling endpoints (WHIP, WHEP, relay links,
registry, chat, LL-HLS, pages) on top of the core objects it builds here and connects through constructor
arguments and listeners:

* ``Tree(node)``: this node's identity, load reports and, at an origin, the registry and placement;
* ``RelayLinks(node, ..., tree=tree)`` at a relay: ``node.on_viewer_wants`` -> ``links.want``,
  ``links.on_parent_change`` -> ``tree.set_parent``;
* ``node.on_broadcast_event`` -> the WHEP event streams (signaling.whep_extensions.notify).

Start order: node, tree (relay links start on demand); stop order: tree, relay links, node.
"""

from __future__ import annotations

import ssl
import sys

from aiohttp import web

from signaling import whep_extensions
from signaling.app_keys import NODE_KEY, RELAY_LINKS_KEY, TREE_KEY
from signaling.chat.http import register_chat_routes
from signaling.hls_http import register_hls_routes
from signaling.http_api import LIMITER_KEY, cors_and_errors, register_routes, register_static, web_root
from signaling.tree_http import register_tree_routes
from webrtc_cast.access.rate_limit import RateLimiter
from webrtc_cast.node import Node
from webrtc_cast.settings import Settings
from webrtc_cast.sfu_tree.relay import RelayLinks
from webrtc_cast.sfu_tree.tree import Tree

# seconds: the longest a worker thread (the LL-HLS Opus -> AAC transcode) keeps the GIL from the forwarding loop;
# CPython's default (5 ms) would show in the WebRTC viewers' p99 delay.
SWITCH_INTERVAL = 0.0005


def tune_process() -> None:
    """Process-wide settings of a node process, made once by whoever runs one (the CLI, the test harness)."""
    sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))


def build_relay_links(node: Node, tree: Tree | None) -> RelayLinks | None:
    """A relay's links to its parent, wired to the node and the tree; None for a node without a parent."""
    s = node.settings
    if not s.parent_url:
        return None
    links = RelayLinks(
        node, s.parent_url, s.parent_token, s.relay_linger, fallback_parents=s.fallback_parents, tree=tree,
    )
    node.on_viewer_wants.append(links.want)
    if tree is not None:
        links.on_parent_change.append(tree.set_parent)
    return links


def create_app(node: Node) -> web.Application:
    s = node.settings
    app = web.Application(middlewares=[cors_and_errors], client_max_size=s.max_sdp_bytes + 1024)
    app[NODE_KEY] = node
    node.on_broadcast_event.append(whep_extensions.notify)
    app[LIMITER_KEY] = RateLimiter(s.http_requests_per_second, s.http_burst)
    root = web_root(s)
    register_routes(app, root)
    register_chat_routes(app, node)
    register_tree_routes(app)
    tree = Tree(node)
    app[TREE_KEY] = tree
    links = build_relay_links(node, tree)
    if links is not None:
        app[RELAY_LINKS_KEY] = links
    register_hls_routes(app, node)  # LL-HLS origin: /hls/..., /static/vendor/hls.min.js (before /static)
    register_static(app, root)

    async def on_startup(_: web.Application) -> None:
        await node.start()
        await tree.start()

    async def on_cleanup(_: web.Application) -> None:
        await tree.stop()
        if links is not None:
            await links.close()
        await node.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def server_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """HTTPS when the settings name a certificate and key (PEM), else None (plain HTTP)."""
    cert, key = getattr(settings, "tls_cert", None), getattr(settings, "tls_key", None)
    if not cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx
