"""HTTP side of the relay tree (aiohttp adapter): the registry endpoints and WHEP placement at an origin.

* ``POST /nodes`` (JSON load report; Bearer cluster token when configured): register or refresh a node.
  Answers ``{"root": <origin id>, "interval": s, "ttl": s}``.
* ``DELETE /nodes/{id}``: a node leaves (never the origin's own entry: 403).
* With no cluster token configured (and no ``open_cluster``), registration, re-attachment and placement are
  closed: ``POST``/``DELETE /nodes`` and ``GET /nodes/parent`` answer 403 and the origin serves every viewer.
* ``GET /nodes``: the fresh nodes as JSON (for operators and the tests).
* ``GET /nodes/parent?url=<child>&avoid=<url>&stream=<name>``: where a relay should re-attach:
  ``{"url": ..., "depth": ...}``, or 503 when no node fits.
* :func:`placement_response` is called by ``POST /whep/{stream}`` at an origin: a ``307 Temporary Redirect`` to
  ``{node}/whep/{stream}`` (307 keeps the method and body, so any WHEP player simply follows it), the 503
  ``{"error":"full","fallback":"hls"}`` when the whole tree is full, or None: serve here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

from aiohttp import web

from signaling.app_keys import NODE_KEY, TREE_KEY
from webrtc_cast.access.tickets import make_ticket, ticket_keys
from webrtc_cast.access.tokens import AuthError, check_bearer
from webrtc_cast.sfu_tree.placement import BadReport, NodeLoad
from webrtc_cast.sfu_tree.registry import RegistryFull

logger = logging.getLogger(__name__)

CLOSED_TEXT = ("this node has no cluster token: registration is closed; set --cluster-token, "
               "or --open-cluster in a lab\n")

FULL_BODY = json.dumps({"error": "full", "fallback": "hls"})


def full_response(node) -> web.Response:  # noqa: ANN001 - Node
    node.metrics.http_errors.labels("503").inc()
    return web.Response(
        status=503, text=FULL_BODY, content_type="application/json",
        headers={"Retry-After": str(node.settings.whep_retry_after)},
    )


def _tree(request: web.Request, member: bool = True):  # noqa: ANN202
    node = request.app[NODE_KEY]
    tree = request.app.get(TREE_KEY)
    if tree is not None and tree.registry is None and tree.origin_url and tree.origin_url != tree.url:
        # a relay: the registry is at its origin (307 keeps method and body, so a report simply follows)
        raise web.HTTPTemporaryRedirect(f"{tree.origin_url}{request.path_qs}")
    if tree is None or tree.registry is None:
        raise web.HTTPNotFound(text="this node is not an origin: register with the origin\n")
    if member and node.settings.cluster_closed:
        raise web.HTTPForbidden(text=CLOSED_TEXT)
    try:
        check_bearer(request.headers.get("Authorization"), node.settings.cluster_tokens, [])
    except AuthError as exc:
        raise web.HTTPUnauthorized(text=exc.message + "\n", headers={"WWW-Authenticate": exc.challenge}) from None
    return node, tree


async def register(request: web.Request) -> web.Response:
    node, tree = _tree(request)
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text="Content-Type must be application/json\n")
    limit = node.settings.tree_max_report_bytes
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(raw))
    try:
        load = NodeLoad.from_mapping(json.loads(raw), reported_at=time.time())
    except (ValueError, BadReport) as exc:
        raise web.HTTPBadRequest(text=f"bad load report: {exc}\n") from None
    if load.id == tree.id:
        raise web.HTTPConflict(text="that id is the origin's own\n")
    if not load.root:  # a node that registers here belongs to this origin's tree (until it says otherwise)
        load = dataclasses.replace(load, root=tree.root)
    if load.parent:  # the depth follows from the parent's, when the parent is known (before the first link)
        parent = next((n for n in await tree.nodes() if n.url == load.parent), None)
        if parent is not None and parent.depth + 1 != load.depth:
            load = dataclasses.replace(load, depth=parent.depth + 1)
    try:
        await tree.registry.report(load)
    except RegistryFull:
        raise web.HTTPServiceUnavailable(text="the registry is full\n", headers={"Retry-After": "10"}) from None
    s = node.settings
    return web.json_response({"root": tree.root, "interval": s.node_report_interval, "ttl": s.node_report_ttl})


async def unregister(request: web.Request) -> web.Response:
    _, tree = _tree(request)
    if request.match_info["id"] == tree.id:
        raise web.HTTPForbidden(text="that id is the origin's own: it cannot be removed\n")
    await tree.registry.remove(request.match_info["id"])
    return web.Response(status=204)


async def list_nodes(request: web.Request) -> web.Response:
    _, tree = _tree(request, member=False)
    nodes = sorted(await tree.nodes(), key=lambda n: (n.depth, n.url))
    return web.json_response({"origin": tree.id, "nodes": [json.loads(n.to_json()) for n in nodes]})


async def choose_parent(request: web.Request) -> web.Response:
    node, tree = _tree(request)
    child = request.query.get("url", "")
    avoid = request.query.getall("avoid", [])[:node.settings.tree_max_avoid]
    stream = request.query.get("stream") or None
    choice = await tree.place_parent(child, avoid, stream)
    if choice is None:
        raise web.HTTPServiceUnavailable(text="no node can take a relay link now\n", headers={"Retry-After": "1"})
    return web.json_response({"url": choice.url, "depth": choice.depth, "id": choice.id})


async def placement_response(request: web.Request, node, stream: str) -> web.Response | None:  # noqa: ANN001
    """At an origin with placement on: 307 to the chosen node, 503 when the tree is full, None: serve here."""
    tree = request.app.get(TREE_KEY)
    if tree is None or tree.registry is None or not node.settings.placement or node.settings.cluster_closed:
        return None
    locality = request.query.get("locality") or request.headers.get("X-Cast-Locality") or None
    avoid = [a.rstrip("/") for a in request.query.getall("avoid", [])[:node.settings.tree_max_avoid]]
    try:
        choice = await tree.place_viewer(stream, locality, avoid)
    except Exception as exc:  # noqa: BLE001 - a registry outage must not stop viewing: serve here
        logger.warning("placement failed (%s); serving the viewer here", exc)
        return None
    if choice is None:
        node.metrics.placements.labels("full").inc()
        return full_response(node)
    if choice.id == tree.id:
        node.metrics.placements.labels("self").inc()
        return None
    node.metrics.placements.labels("redirect").inc()
    query = request.query.copy()
    query.popall("avoid", None)
    query.popall("ticket", None)
    keys = ticket_keys(node.settings.cluster_tokens, node.settings.view_tokens)
    if node.settings.view_tokens and keys:  # the redirected POST loses its Authorization header: a ticket
        query["ticket"] = make_ticket(keys[0], stream, time.time())
    location = f"{choice.url}/whep/{stream}" + (f"?{_encode(query)}" if query else "")
    return web.Response(status=307, headers={"Location": location, "Cache-Control": "no-store"})


def _encode(query) -> str:  # noqa: ANN001 - MultiDict
    from urllib.parse import urlencode

    return urlencode(list(query.items()))


def register_tree_routes(app: web.Application) -> None:
    app.router.add_post("/nodes", register)
    app.router.add_get("/nodes", list_nodes)
    app.router.add_get("/nodes/parent", choose_parent)
    app.router.add_delete("/nodes/{id}", unregister)
