"""The aiohttp application keys every signaling module reads (one place, so handlers never import each other)."""

from __future__ import annotations

from aiohttp import web

from webrtc_cast.node import Node
from webrtc_cast.sfu_tree.relay import RelayLinks
from webrtc_cast.sfu_tree.tree import Tree

NODE_KEY: web.AppKey[Node] = web.AppKey("node", Node)
# Set by the composition root (webrtc_cast.app); read with ``app.get(...)``: absent when the node has none.
TREE_KEY: web.AppKey[Tree] = web.AppKey("tree", Tree)  # this node's place in the relay tree
RELAY_LINKS_KEY: web.AppKey[RelayLinks] = web.AppKey("relay_links", RelayLinks)  # a relay: links to its parent
