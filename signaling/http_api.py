"""WHIP (RFC 9725) and WHEP (draft-ietf-wish-whep) endpoints, health, metrics and pages (aiohttp adapter).

Endpoints only: the application is assembled by the composition root, :mod:`webrtc_cast.app`.
Conformance numbers (W.., E..) refer to ../shared/conformance.md.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

from aiohttp import web

from signaling import whep_extensions
from signaling.app_keys import NODE_KEY, RELAY_LINKS_KEY, TREE_KEY
from signaling.tree_http import full_response, placement_response
from webrtc_cast.access.rate_limit import RateLimiter
from webrtc_cast.access.tickets import check_ticket, ticket_keys
from webrtc_cast.access.tokens import AuthError, check_bearer
from webrtc_cast.node import STREAM_NAME, Node, NodeFull, NotLive
from webrtc_cast.sdp import description as sdp
from webrtc_cast.sfu_tree.sessions import Session

logger = logging.getLogger(__name__)

SDP_TYPE = "application/sdp"
TRICKLE_TYPE = "application/trickle-ice-sdpfrag"
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Location, ETag, Link, Accept-Patch, Accept-Post, Retry-After",
}

DEFAULT_WEB_ROOT = Path(__file__).resolve().parent.parent / "web"


def _error(status: int, message: str, node: Node | None = None, **headers: str) -> web.Response:
    if node is not None:
        node.metrics.http_errors.labels(str(status)).inc()
    return web.Response(status=status, text=message + "\n", content_type="text/plain", headers=headers)


LIMITER_KEY: web.AppKey[RateLimiter] = web.AppKey("limiter", RateLimiter)
LIMITED_METHODS = frozenset({"POST", "PATCH", "DELETE"})


@web.middleware
async def cors_and_errors(request: web.Request, handler):  # noqa: ANN001, ANN201
    """CORS headers on every answer, the rate limit on state-changing methods, and no unhandled crash."""
    try:
        if request.method in LIMITED_METHODS:
            wait = request.app[LIMITER_KEY].allow(request.remote or "?", time.monotonic())
            if wait > 0:
                raise web.HTTPTooManyRequests(
                    text="too many requests\n", headers={"Retry-After": str(max(1, math.ceil(wait)))}
                )
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400:
            request.app[NODE_KEY].metrics.http_errors.labels(str(exc.status)).inc()
        for k, v in CORS_HEADERS.items():
            exc.headers.setdefault(k, v)
        raise
    except Exception:
        logger.exception("unhandled error on %s %s", request.method, request.path)
        response = web.Response(status=500, text="internal error\n")
    for k, v in CORS_HEADERS.items():
        response.headers.setdefault(k, v)
    return response


def _stream(request: web.Request) -> str:
    name = request.match_info.get("stream", "")
    if not STREAM_NAME.match(name):
        raise web.HTTPBadRequest(text="stream names are 1-64 characters of A-Z a-z 0-9 _ -\n")
    return name


def _tokens(node: Node, role: str) -> list[str]:
    return node.settings.publish_tokens if role == "whip" else node.settings.view_tokens  # relays: view tokens


def _auth_http(exc: AuthError) -> web.HTTPException:
    cls = web.HTTPUnauthorized if exc.status == 401 else web.HTTPForbidden
    headers = {"WWW-Authenticate": exc.challenge} if exc.status == 401 else {}
    return cls(text=exc.message + "\n", headers=headers)


async def _read_body(request: web.Request, node: Node, expected_type: str) -> str:
    if request.content_type != expected_type:
        raise web.HTTPUnsupportedMediaType(text=f"Content-Type must be {expected_type}\n")
    limit = node.settings.max_sdp_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(raw))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise web.HTTPBadRequest(text="body is not UTF-8\n") from None


def _session_url(request: web.Request, role: str, stream: str, session: Session) -> str:
    return f"/{role}/{stream}/{session.id}"


def make_endpoint_handlers(role: str):  # noqa: ANN201
    async def post(request: web.Request) -> web.Response:
        node = request.app[NODE_KEY]
        stream = _stream(request)
        try:
            token = check_bearer(
                request.headers.get("Authorization"), _tokens(node, role), _tokens(node, _other(role))
            )
        except AuthError as exc:
            if not _placement_ticket(request, node, role, stream):
                raise _auth_http(exc) from None
            token = None  # sent here by the origin, which checked the token (webrtc_cast/access/tickets.py)
        if role == "whep":
            placed = await placement_response(request, node, stream)  # an origin: 307 to a relay, or 503 full
            if placed is not None:
                return placed
        offer = await _read_body(request, node, SDP_TYPE)
        if role == "whep" and node.settings.require_live_for_whep and not node.broadcast(stream).live:
            return _error(409, "the stream is not live", node, **{"Retry-After": str(node.settings.whep_retry_after)})
        try:
            session, answer = await node.create_session(role, stream, offer, token)
        except sdp.SdpUnsupported as exc:
            return _error(422, str(exc), node)
        except sdp.SdpError as exc:
            return _error(400, f"malformed SDP offer: {exc}", node)
        except NotLive:
            return _error(409, "the stream is not live here", node, **{"Retry-After": "1"})
        except NodeFull:
            return full_response(node)
        except OSError as exc:
            logger.error("cannot create %s session: %s", role, exc)
            return _error(503, "no ICE address available", node, **{"Retry-After": "5"})
        location = _session_url(request, role, stream, session)
        response = web.Response(
            status=201,
            text=answer,
            content_type=SDP_TYPE,
            headers={"Location": location, "ETag": session.etag, "Accept-Patch": TRICKLE_TYPE},
        )
        if role == "whep":
            for link in whep_extensions.link_headers(location):  # E11, E18
                response.headers.add("Link", link)
        tree = request.app.get(TREE_KEY)
        if role == "relay" and tree is not None:
            response.headers["X-Cast-Depth"] = str(tree.depth)  # the child's depth is this + 1
        return response

    async def options(request: web.Request) -> web.Response:
        # W32/W33/E05: a CORS preflight succeeds without credentials.
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": "POST, GET, HEAD, OPTIONS",
                "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
                "Access-Control-Max-Age": "86400",
                "Accept-Post": SDP_TYPE,
                "Allow": "POST, GET, HEAD, OPTIONS",
            },
        )

    async def get(request: web.Request) -> web.Response:
        _stream(request)
        return web.Response(status=204)  # W07: 2xx with no body

    return post, options, get


def _placement_ticket(request: web.Request, node: Node, role: str, stream: str) -> bool:
    ticket = request.query.get("ticket")
    if role != "whep" or not ticket or request.headers.get("Authorization"):
        return False
    keys = ticket_keys(node.settings.cluster_tokens, node.settings.view_tokens)
    return check_ticket(keys, stream, ticket, time.time())


def _other(role: str) -> str:
    return "whep" if role == "whip" else "whip"


def make_session_handlers(role: str, handlers: dict | None = None):  # noqa: ANN201
    handlers = {} if handlers is None else handlers

    def lookup(request: web.Request) -> tuple[Node, Session]:
        node = request.app[NODE_KEY]
        stream = _stream(request)
        session = node.sessions.get(request.match_info["session"])
        if session is None or session.role != role or session.stream != stream:
            raise web.HTTPNotFound(text="no such session\n")
        if _tokens(node, role):
            try:
                token = check_bearer(request.headers.get("Authorization"), _tokens(node, role), [])
            except AuthError as exc:
                raise _auth_http(exc) from None
            if session.token is not None and token != session.token:
                raise web.HTTPForbidden(text="token does not own this session\n")
        return node, session

    async def delete(request: web.Request) -> web.Response:
        node, session = lookup(request)  # W31: entity-tags are ignored on DELETE
        await node.close_session(session)
        return web.Response(status=200)

    async def patch(request: web.Request) -> web.Response:
        node, session = lookup(request)
        if request.content_type != TRICKLE_TYPE:
            return _error(415, f"Content-Type must be {TRICKLE_TYPE}", node)  # W19
        if_match = request.headers.get("If-Match")
        if if_match is None:
            return _error(428, "If-Match is required", node)  # W21
        body = await _read_body(request, node, TRICKLE_TYPE)
        try:
            ufrag, _pwd, candidates, end = sdp.parse_trickle_fragment(body)
        except sdp.SdpError as exc:
            return _error(400, f"malformed fragment: {exc}", node)
        restart = if_match.strip() == "*" or (ufrag is not None and ufrag != session.remote_ufrag)
        if restart:
            # W28: trickle is supported, ICE restart is not; the session is untouched (W27).
            return _error(422, "ICE restart is not supported; create a new session", node)
        if if_match.strip() != session.etag:
            return _error(412, "If-Match does not match the session's entity-tag", node)  # W22
        for c in candidates:
            await session.transport.add_remote_candidate(c)  # W23: unusable candidates are ignored
        if end:
            await session.transport.add_remote_candidate(None)
        return web.Response(status=204)  # W20: no ETag on a trickle answer

    async def get(request: web.Request) -> web.Response:
        lookup(request)
        return web.Response(status=204)

    async def options(request: web.Request) -> web.Response:
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": "PATCH, DELETE, GET, OPTIONS",
                "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
                "Accept-Patch": TRICKLE_TYPE,
                "Allow": "PATCH, DELETE, GET, OPTIONS",
            },
        )

    async def layer(request: web.Request) -> web.Response:
        node, session = lookup(request)
        return await whep_extensions.select_layer(request, node, session)  # type: ignore[arg-type]

    async def sse_create(request: web.Request) -> web.Response:
        _, session = lookup(request)
        url = f"/{role}/{session.stream}/{session.id}"
        return await whep_extensions.create_event_stream(request, session, url)  # type: ignore[arg-type]

    async def sse_get(request: web.Request) -> web.StreamResponse:
        _, session = lookup(request)
        return await whep_extensions.serve_event_stream(request, session)  # type: ignore[arg-type]

    async def sse_delete(request: web.Request) -> web.Response:
        _, session = lookup(request)
        return whep_extensions.delete_event_stream(request, session)  # type: ignore[arg-type]

    handlers.update(layer=layer, sse_create=sse_create, sse_get=sse_get, sse_delete=sse_delete)
    return delete, patch, get, options


async def healthz(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    body = {
        "status": "ok",
        "broadcasts": {
            name: {
                "live": b.live,
                "viewers": b.viewer_count,
                "layers": [
                    {"key": t.key, "rid": t.rid, "width": t.width, "height": t.height,
                     "bitrate": round(t.bitrate), "active": t.active, "viewers": len(t.forwarders)}
                    for t in sorted(b.tracks.values(), key=lambda t: (t.kind, t.quality()))
                ],
            }
            for name, b in node.broadcasts.items()
        },
        "sessions": len(node.sessions),
    }
    tree = request.app.get(TREE_KEY)
    if tree is not None:
        links = request.app.get(RELAY_LINKS_KEY)
        body["tree"] = {
            "id": tree.id, "url": tree.url, "depth": tree.depth, "root": tree.root, "parent": tree.parent,
            "origin": tree.is_origin, "reattached": links.reconnects if links is not None else 0,
            "last_heal_seconds": links.last_heal_seconds if links is not None else None,
        }
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    return web.Response(body=node.metrics.render(), content_type="text/plain", charset="utf-8")


def _page(name: str, web_root: Path):  # noqa: ANN202
    async def handler(request: web.Request) -> web.StreamResponse:
        _stream(request)
        return web.FileResponse(web_root / name, headers={"Cache-Control": "no-cache"})

    return handler


async def index(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    rows = "".join(
        f'<li><a href="/watch/{n}">{n}</a> {"live" if b.live else "waiting"} · {b.viewer_count} viewers</li>'
        for n, b in sorted(node.broadcasts.items())
    )
    html = (
        "<!doctype html><meta charset=utf-8><title>webrtc-cast</title>"
        '<link rel=stylesheet href="/static/css/cast.css"><main><h1>webrtc-cast</h1>'
        f"<ul>{rows or '<li>No broadcasts yet. Publish at /publish/&lt;name&gt;.</li>'}</ul></main>"
    )
    return web.Response(text=html, content_type="text/html")


def web_root(settings) -> Path:  # noqa: ANN001 - Settings
    """The folder of the browser pages: settings.web_root, else $WEBRTC_CAST_WEB_ROOT, else the packaged web/."""
    return Path(settings.web_root or os.environ.get("WEBRTC_CAST_WEB_ROOT", DEFAULT_WEB_ROOT))


def register_routes(app: web.Application, root: Path) -> None:
    """WHIP, WHEP and relay-link endpoints (with the WHEP extensions), health, metrics and the pages."""
    for role in ("whip", "whep", "relay"):
        post, options, get = make_endpoint_handlers(role)
        app.router.add_route("POST", f"/{role}/{{stream}}", post)
        app.router.add_route("OPTIONS", f"/{role}/{{stream}}", options)
        app.router.add_route("GET", f"/{role}/{{stream}}", get)
        extra: dict = {}
        delete, patch, sget, soptions = make_session_handlers(role, extra)
        if role == "whep":
            base = f"/{role}/{{stream}}/{{session}}"
            app.router.add_route("POST", base + "/layer", extra["layer"])
            app.router.add_route("POST", base + "/sse", extra["sse_create"])
            app.router.add_route("GET", base + "/sse/{sse}", extra["sse_get"])
            app.router.add_route("DELETE", base + "/sse/{sse}", extra["sse_delete"])
        app.router.add_route("DELETE", f"/{role}/{{stream}}/{{session}}", delete)
        app.router.add_route("PATCH", f"/{role}/{{stream}}/{{session}}", patch)
        app.router.add_route("GET", f"/{role}/{{stream}}/{{session}}", sget)
        app.router.add_route("OPTIONS", f"/{role}/{{stream}}/{{session}}", soptions)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", index)
    app.router.add_get("/publish/{stream}", _page("publish.html", root))
    app.router.add_get("/watch/{stream}", _page("watch.html", root))


def register_static(app: web.Application, root: Path) -> None:
    """``/static`` from the pages folder (registered last: more specific /static/... routes go first)."""
    if root.is_dir():
        app.router.add_static("/static", root, follow_symlinks=False)
