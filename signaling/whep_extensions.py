"""WHEP extensions: Video Layer Selection (E18–E19) and Server-Sent Events (E11–E17) — aiohttp adapter.

Layer URL: ``POST {session}/layer`` with JSON ``{"mediaId": "1", "rid": "h"}`` (``encodingId`` is accepted too,
as Broadcast Box sends it) pins a layer; ``{"mediaId": "1"}`` returns to automatic selection. ``maxWidth`` /
``maxHeight`` limit automatic selection. The switch happens at the target layer's next keyframe (requested).

SSE: ``POST {session}/sse`` with a JSON list of event types → 201 + Location of the stream; ``GET`` it for
``text/event-stream``; ``DELETE`` ends it. Events: ``layers`` (keyed by m-line index, ``{"<i>": [{"rid":..,
"width":.., "height":.., "bitrate":..}]}``; a layer with bitrate 0 is inactive), ``active``, ``inactive`` and
``viewercount``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from dataclasses import dataclass

from aiohttp import web

from signaling.app_keys import NODE_KEY
from webrtc_cast.sfu_tree.broadcast import Broadcast
from webrtc_cast.sfu_tree.sessions import ViewerSession

LAYER_REL = "urn:ietf:params:whep:ext:core:layer"
SSE_REL = "urn:ietf:params:whep:ext:core:server-sent-events"
SUPPORTED_EVENTS = ("active", "inactive", "layers", "viewercount")
# Limits are settings (webrtc_cast/settings.py): whep_max_json_bytes, whep_max_event_streams, whep_sse_queue,
# whep_sse_keepalive.


def link_headers(session_url: str) -> list[str]:
    events = ",".join(SUPPORTED_EVENTS)
    return [
        f'<{session_url}/sse>; rel="{SSE_REL}"; events="{events}"',
        f'<{session_url}/layer>; rel="{LAYER_REL}"',
    ]


def video_mid_index(session: ViewerSession) -> str:
    return str(session.video_mline) if session.video_mline is not None else "0"


def layers_event(broadcast: Broadcast, session: ViewerSession) -> dict[str, list[dict[str, object]]]:
    layers = []
    for t in broadcast.video_layers():
        entry: dict[str, object] = {"bitrate": int(t.bitrate) if t.active else 0}
        if t.rid is not None:
            entry["rid"] = t.rid
            entry["encodingId"] = t.rid
        else:
            entry["spatialLayerId"] = 0
        if t.width:
            entry["width"], entry["height"] = t.width, t.height
        layers.append(entry)
    return {video_mid_index(session): layers}


@dataclass(eq=False)
class EventStream:
    id: str
    events: frozenset[str]
    queue: asyncio.Queue[tuple[str, str] | None]  # bounded: a slow reader loses the oldest (full snapshots)
    closed: bool = False

    def push(self, event: str, data: object) -> None:
        if self.closed or event not in self.events:
            return
        item = (event, json.dumps(data, separators=(",", ":")))
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
        self.queue.put_nowait(item)

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)


def notify(broadcast: Broadcast, sessions: list[ViewerSession], what: str) -> None:
    """Push the current state to every event stream of these viewers."""
    for s in sessions:
        for stream in s.event_streams.values():
            if what == "layers":
                stream.push("layers", layers_event(broadcast, s))
            elif what == "live":
                stream.push("active" if broadcast.live else "inactive", {})
            elif what == "viewers":
                stream.push("viewercount", {"viewercount": broadcast.viewer_count})


async def _json_body(request: web.Request) -> object:
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text="Content-Type must be application/json\n")
    limit = request.app[NODE_KEY].settings.whep_max_json_bytes
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(raw))
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text="body is not JSON\n") from None


async def select_layer(request: web.Request, node, session: ViewerSession) -> web.Response:  # noqa: ANN001
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="expected a JSON object\n")
    fwd = session.forwarders.get("video")
    if fwd is None:
        raise web.HTTPBadRequest(text="this session has no video\n")
    media_id = body.get("mediaId")
    if media_id is not None and str(media_id) not in (video_mid_index(session), session.video_mid or ""):
        raise web.HTTPBadRequest(text=f"mediaId {media_id!r} is not this session's video\n")
    rid = body.get("rid", body.get("encodingId"))
    for limit in ("maxWidth", "maxHeight"):
        value = body.get(limit)
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise web.HTTPBadRequest(text=f"{limit} must be a positive integer\n")
    broadcast = session.broadcast
    if rid is not None:
        if not isinstance(rid, str) or not any(t.rid == rid for t in broadcast.video_layers()):
            known = [t.rid for t in broadcast.video_layers() if t.rid]
            raise web.HTTPBadRequest(text=f"no layer {rid!r}; layers: {known}\n")
        fwd.pinned_rid = rid
    else:
        fwd.pinned_rid = None
    if body.get("maxHeight") is not None:
        fwd.max_height = body["maxHeight"]
    elif body.get("maxWidth") is not None:
        fwd.max_height = body["maxWidth"] * 9 // 16
    elif rid is None:
        fwd.max_height = None
    broadcast.reselect(fwd, time.monotonic())
    return web.Response(status=200)


async def create_event_stream(request: web.Request, session: ViewerSession, session_url: str) -> web.Response:
    body = await _json_body(request)
    if not isinstance(body, list) or not body or not all(isinstance(e, str) for e in body):
        raise web.HTTPBadRequest(text="expected a JSON list of event types\n")
    unknown = [e for e in body if e not in SUPPORTED_EVENTS]
    if unknown:
        raise web.HTTPBadRequest(text=f"unsupported event types: {unknown}; supported: {list(SUPPORTED_EVENTS)}\n")
    settings = request.app[NODE_KEY].settings
    if len(session.event_streams) >= settings.whep_max_event_streams:
        raise web.HTTPTooManyRequests(text="too many event streams for this session\n")
    stream = EventStream(secrets.token_urlsafe(12), frozenset(body), asyncio.Queue(settings.whep_sse_queue))
    session.event_streams[stream.id] = stream
    broadcast = session.broadcast
    stream.push("layers", layers_event(broadcast, session))
    stream.push("viewercount", {"viewercount": broadcast.viewer_count})
    if broadcast.live:
        stream.push("active", {})  # E14: no initial "inactive" when nothing is live
    return web.Response(status=201, headers={"Location": f"{session_url}/sse/{stream.id}"})


async def serve_event_stream(request: web.Request, session: ViewerSession) -> web.StreamResponse:
    stream = session.event_streams.get(request.match_info["sse"])
    if stream is None or stream.closed:
        raise web.HTTPNotFound(text="no such event stream\n")
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    keepalive = request.app[NODE_KEY].settings.whep_sse_keepalive
    await response.prepare(request)
    try:
        while True:
            try:
                item = await asyncio.wait_for(stream.queue.get(), timeout=keepalive)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            if item is None:
                break
            event, data = item
            await response.write(f"event: {event}\ndata: {data}\n\n".encode())
    except ConnectionError:  # the reader went away; the stream stays until DELETE or the session ends
        pass
    return response


def delete_event_stream(request: web.Request, session: ViewerSession) -> web.Response:
    stream = session.event_streams.pop(request.match_info["sse"], None)
    if stream is None:
        raise web.HTTPNotFound(text="no such event stream\n")
    stream.close()
    return web.Response(status=200)
