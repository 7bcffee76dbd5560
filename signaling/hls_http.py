"""LL-HLS origin: the packagers' lifecycle and the HTTP handlers (aiohttp ADAPTER).

URLs (relative URIs inside the playlists resolve against them):

    GET /hls/{stream}/index.m3u8                          multivariant playlist
    GET /hls/{stream}/{rendition}.m3u8[?_HLS_msn&_HLS_part&_HLS_skip]   media playlist (blocking reload, delta)
    GET /hls/{stream}/{rendition}/{epoch}/init{g}.mp4     init segment
    GET /hls/{stream}/{rendition}/{epoch}/{msn}.m4s       segment
    GET /hls/{stream}/{rendition}/{epoch}/{msn}.{i}.m4s   part (the hinted next part blocks until published)
    GET /static/vendor/hls.min.js                         hls.js from node_modules (npm), never committed

Cache-Control follows conformance.md H47 (TD = TARGETDURATION): blocking playlist 6 TD / 4 TD on 4xx, non-blocking
playlist 0.5 TD / 1 TD, media 6 TD (immutable: every media URI carries the packager epoch) / 1 TD on 404.
A blocked request that times out (3 TD, H28) gets 503 with 1 TD: a stalled encoder should not be cached for 4 TD.

Blocked playlist requests take a fast path (the 1,000-waiter budget is 50 ms, ~50 us each; aiohttp's own response
path costs several times that): waiters are grouped by what they wait for and what they get back (rendition,
_HLS_msn/_HLS_part, _HLS_skip, gzip). When a part is published, each satisfied group's complete HTTP/1.1 response
(status line, headers, body) is built once and written straight to every waiter's transport in one callback right
after the packager's update; the handler then returns a ``SentResponse`` marker (signaling/aiohttp_glue.py)
that aiohttp treats as already written.
Only keep-alive HTTP/1.1 GET requests take it; anything else goes through aiohttp as usual.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

from aiohttp import HttpVersion11, web

from signaling.aiohttp_glue import SentResponse
from webrtc_cast.hls_fallback.blocking import BadDirective, Directives, parse_directives, satisfied
from webrtc_cast.hls_fallback.packager import HlsConfig, Packager
from webrtc_cast.hls_fallback.playlist import render_media
from webrtc_cast.hls_fallback.rendition import Rendition
from webrtc_cast.node import STREAM_NAME, Node
from webrtc_cast.sfu_tree.broadcast import Broadcast

logger = logging.getLogger(__name__)

# Linux nice value of the transcode thread (per thread): on a busy core the forwarding loop's thread, woken by a
# packet, then preempts it instead of waiting out its time slice. Not SCHED_IDLE: a thread that can be starved
# while it holds the GIL would stall the loop whenever other processes keep the core busy.
TRANSCODE_NICE = 5


def _lower_transcode_priority() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), TRANSCODE_NICE)
    except (AttributeError, OSError) as exc:  # not Linux, or not allowed: normal priority
        logger.info("hls: transcode thread keeps its priority (%s)", exc)

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
HLS_JS = Path(__file__).resolve().parents[1] / "node_modules" / "hls.js" / "dist" / "hls.min.js"
_MEDIA_FILE = re.compile(r"^(?:init(\d{1,6})\.mp4|(\d{1,12})\.m4s|(\d{1,12})\.(\d{1,6})\.m4s)$")


def config_from(settings) -> HlsConfig:  # noqa: ANN001
    return HlsConfig(
        part_target=settings.hls_part_target,
        segment_min=settings.hls_segment_min,
        target_duration=settings.hls_target_duration,
        window=settings.hls_window,
        hold_back_parts=settings.hls_part_hold_back,
        audio_bitrate=settings.hls_audio_bitrate,
    )


@dataclass(eq=False, slots=True)
class _Group:
    """Blocked requests that wait for the same thing and get the same bytes back."""

    packager: Packager
    rendition: Rendition
    directives: Directives
    gzip: bool
    waiters: dict[asyncio.Future, asyncio.BaseTransport] = field(default_factory=dict)  # ordered: FIFO

    def ready(self) -> bool:
        r = self.rendition
        return r.ended or satisfied(self.directives, r.has_part, r.has_segment)


class HlsService:
    """One packager per broadcast, created with the broadcast and ended (EXT-X-ENDLIST) when it is removed."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.config = config_from(node.settings)
        self.packagers: dict[str, Packager] = {}
        self._events: dict[str, asyncio.Event] = {}
        self._cache: dict[tuple[str, str, str | None], tuple[int, bytes, bytes]] = {}
        self._wire: dict[tuple[str, str, str | None, bool], tuple[int, bytes]] = {}
        self._groups: dict[str, dict[tuple, _Group]] = {}  # stream -> (rendition, msn, part, skip, gzip) -> group
        self._release_due: set[str] = set()
        # Opus -> AAC for every broadcast, off the forwarding loop (PyAV releases the GIL inside the codecs)
        self._transcoder = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="hls-transcode", initializer=_lower_transcode_priority
        )
        # The thread holds the GIL between codec calls: the process's switch interval (set by the composition
        # root, webrtc_cast.app.tune_process) bounds how long the forwarding loop waits for it.
        node.on_broadcast_created.append(self.attach)
        node.on_broadcast_removed.append(self.detach)
        for b in node.broadcasts.values():
            self.attach(b)

    def attach(self, broadcast: Broadcast) -> None:
        name = broadcast.name
        wall = time.time()
        packager = Packager(name, self.config, wall, wall - time.monotonic(), lambda: self._notify(name),
                            offload=self._offload)
        old = self.packagers.get(name)
        if old is not None:
            old.end()
        self.packagers[name] = packager

        def tap(track, pkt, keyframe, now):  # noqa: ANN001, ANN202
            packager.tap(track, pkt, keyframe, now, broadcast.publisher_id)

        broadcast.taps.append(tap)

    def close(self) -> None:
        """Let the transcode thread go (the app's cleanup): queued jobs are dropped, a running one finishes."""
        self._transcoder.shutdown(wait=False, cancel_futures=True)

    def _offload(self, job, done) -> None:  # noqa: ANN001 - packager.Offload
        """Run a packager job (audio transcode) on the transcode thread; ``done`` runs back on the loop, in order
        (one worker thread: jobs finish in the order they were given)."""
        try:
            future = asyncio.get_running_loop().run_in_executor(self._transcoder, job)
        except RuntimeError:  # closed: the node is shutting down, the audio is not needed any more
            return

        def finished(f: asyncio.Future) -> None:
            try:
                result = f.result()
            except Exception:  # a broken packet or codec state: that job's audio is lost, the rest goes on
                logger.exception("hls: audio transcode failed")
                result = None
            done(result, time.monotonic())

        future.add_done_callback(finished)

    def detach(self, broadcast: Broadcast) -> None:
        packager = self.packagers.get(broadcast.name)
        if packager is None:
            return
        packager.end()
        linger = self.node.settings.hls_linger

        def forget() -> None:
            if self.packagers.get(broadcast.name) is packager:
                del self.packagers[broadcast.name]

        try:
            asyncio.get_running_loop().call_later(linger, forget)
        except RuntimeError:
            forget()

    def _notify(self, stream: str) -> None:
        if self._groups.get(stream) and stream not in self._release_due:
            # after the packager's current update: a part's publication is followed, in the same call, by the end
            # of its segment and the start of the next (a playlist rendered in between would hint a wrong part)
            try:
                asyncio.get_running_loop().call_soon(self._release, stream)
                self._release_due.add(stream)
            except RuntimeError:
                self._release(stream)
        event = self._events.pop(stream, None)
        if event is not None:
            event.set()

    def _release(self, stream: str) -> None:
        """Answer every blocked request whose part now exists: one response per group, written to each waiter."""
        self._release_due.discard(stream)
        groups = self._groups.get(stream)
        if not groups:
            return
        done = [key for key, g in groups.items() if g.ready()]
        for key in done:
            g = groups.pop(key)
            skip = g.directives.skip if not g.rendition.ended else None
            wire = self.wire(g.packager, g.rendition.name, skip, g.gzip)
            for fut, transport in g.waiters.items():
                if fut.done():
                    continue
                try:
                    if transport.is_closing():
                        fut.set_result(None)
                        continue
                    transport.write(wire)  # type: ignore[attr-defined]
                except Exception:  # noqa: BLE001 - one broken connection must not stop the others
                    logger.exception("hls: writing a blocked playlist answer failed")
                    fut.set_result(None)
                    continue
                fut.set_result(len(wire))

    async def block(self, packager: Packager, rendition: Rendition, d: Directives, gz: bool,
                    transport: asyncio.BaseTransport, timeout: float) -> int | None | bool:
        """Hold a blocked playlist request (fast path). Returns the bytes written for it, None when its
        connection went away, False when the part did not appear within ``timeout``."""
        key = (id(packager), rendition.name, d.msn, d.part, d.skip, gz)
        groups = self._groups.setdefault(packager.stream, {})
        group = groups.get(key)
        if group is None or group.packager is not packager:
            group = groups[key] = _Group(packager, rendition, d, gz)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        group.waiters[fut] = transport
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            return False
        finally:
            group.waiters.pop(fut, None)
            if not group.waiters and groups.get(key) is group:
                del groups[key]

    def wire(self, packager: Packager, name: str, skip: str | None, gz: bool) -> bytes:
        """The complete HTTP/1.1 200 answer to a blocked playlist request, built once per playlist change."""
        key = (packager.epoch, name, skip, gz)
        hit = self._wire.get(key)
        if hit is not None and hit[0] == packager.version:
            return hit[1]
        body, gzipped = self.rendered(packager, name, skip)
        if gz:
            body = gzipped
        head = (
            "HTTP/1.1 200 OK\r\n"
            f"Content-Type: {PLAYLIST_TYPE}; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Cache-Control: {_cache_control(6 * self.config.target_duration)}\r\n"
            "Vary: Accept-Encoding\r\n"
            + ("Content-Encoding: gzip\r\n" if gz else "")
            + "Access-Control-Allow-Origin: *\r\n"
            f"Date: {formatdate(usegmt=True)}\r\n"
            "\r\n"
        )
        wire = head.encode() + body
        self._wire[key] = (packager.version, wire)
        if len(self._wire) > 64 * max(1, len(self.packagers)):
            self._wire.clear()
        return wire

    async def wait_for(self, stream: str, ready, timeout: float) -> bool:  # noqa: ANN001
        """Wait until ``ready()`` is true or ``timeout`` passes; wakes on every change of the stream."""
        deadline = time.monotonic() + timeout
        while not ready():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            event = self._events.get(stream)
            if event is None:
                event = self._events[stream] = asyncio.Event()
            try:
                async with asyncio.timeout(left):  # no task per waiter (asyncio.wait_for makes one in 3.11)
                    await event.wait()
            except TimeoutError:
                return ready()
        return True

    def rendered(self, packager: Packager, name: str, skip: str | None) -> tuple[bytes, bytes]:
        """Playlist text and its gzip, rendered once per change and shared by every waiting request."""
        key = (packager.epoch, name, skip)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == packager.version:
            return hit[1], hit[2]
        if name == "index":
            text = packager.multivariant()
        else:
            renditions = packager.renditions()
            r = renditions[name]
            reports = [o.report() for n, o in renditions.items() if n != name]
            text = render_media(r.view(reports), skip)
        body = text.encode()
        gz = gzip.compress(body, compresslevel=5, mtime=0)
        self._cache[key] = (packager.version, body, gz)
        if len(self._cache) > 64 * max(1, len(self.packagers)):
            self._cache.clear()
        return body, gz


HLS_KEY: web.AppKey[HlsService] = web.AppKey("hls", HlsService)


def _cache_control(seconds: float, immutable: bool = False) -> str:
    value = f"public, max-age={max(0, int(seconds))}"
    return value + ", immutable" if immutable else value


def _fail(status: int, message: str, seconds: float, **headers: str) -> web.Response:
    return web.Response(
        status=status, text=message + "\n", content_type="text/plain",
        headers={"Cache-Control": _cache_control(seconds), **headers},
    )


def _playlist(request: web.Request, body: bytes, gz: bytes, max_age: float) -> web.Response:
    headers = {"Cache-Control": _cache_control(max_age), "Vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        headers["Content-Encoding"] = "gzip"  # H15
        body = gz
    return web.Response(body=body, headers=headers, content_type=PLAYLIST_TYPE, charset="utf-8")


def _packager(request: web.Request, td: int) -> Packager | web.Response:
    service = request.app[HLS_KEY]
    stream = request.match_info["stream"]
    if not STREAM_NAME.match(stream):
        return _fail(400, "stream names are 1-64 characters of A-Z a-z 0-9 _ -", 4 * td)
    packager = service.packagers.get(stream)
    if packager is None:
        return _fail(404, f"no broadcast {stream!r} on this node", td)
    if packager.unavailable and packager.video is None:
        return _fail(409, packager.unavailable, td, **{"X-HLS-Unavailable": "codec"})
    return packager


async def playlist(request: web.Request) -> web.StreamResponse:
    service = request.app[HLS_KEY]
    td = service.config.target_duration
    found = _packager(request, td)
    if isinstance(found, web.Response):
        return found
    packager = found
    name = request.match_info["rendition"]
    if name == "index":
        if not packager.ready:
            return _fail(404, "the broadcast has no HLS media yet", td / 2, **{"Retry-After": "1"})
        body, gz = service.rendered(packager, "index", None)
        return _playlist(request, body, gz, td / 2)
    rendition = packager.renditions().get(name)
    if rendition is None:
        return _fail(404, f"no rendition {name!r}", td)
    try:
        d = parse_directives(
            request.query, rendition.last_msn, rendition.last_part, rendition.part_target, rendition.ended
        )
    except BadDirective as exc:
        return _fail(400, str(exc), 4 * td)
    if d.blocking:
        def ready() -> bool:
            return rendition.ended or satisfied(d, rendition.has_part, rendition.has_segment)

        if not ready():
            transport = request.transport
            if (request.method == "GET" and request.version == HttpVersion11 and request.keep_alive
                    and transport is not None):
                gz = "gzip" in request.headers.get("Accept-Encoding", "")
                sent = await service.block(packager, rendition, d, gz, transport, 3 * td)
                if sent is None:  # the client went away while its request was blocked: close
                    return SentResponse(200, 0, keep_alive=False)
                if sent is not False:
                    return SentResponse(200, sent)
            else:
                await service.wait_for(packager.stream, ready, 3 * td)
            if not ready():
                return _fail(503, "the requested part did not appear in 3 target durations", td,
                             **{"Retry-After": str(td)})
    body, gz = service.rendered(packager, name, d.skip if not rendition.ended else None)
    return _playlist(request, body, gz, 6 * td if d.blocking else td / 2)


async def media(request: web.Request) -> web.StreamResponse:
    service = request.app[HLS_KEY]
    td = service.config.target_duration
    found = _packager(request, td)
    if isinstance(found, web.Response):
        return found
    packager = found
    if request.match_info["epoch"] != packager.epoch:
        return _fail(404, "not found (an earlier run of this broadcast)", td)
    rendition = packager.renditions().get(request.match_info["rendition"])
    m = _MEDIA_FILE.match(request.match_info["file"])
    if rendition is None or m is None:
        return _fail(404, "not found", td)
    init, seg, part_msn, part_index = m.groups()
    data: bytes | None
    if init is not None:
        data = rendition.inits.get(int(init))
    elif seg is not None:
        data = rendition.segment(int(seg))
    else:
        msn, index = int(part_msn), int(part_index)
        data = rendition.part(msn, index)
        if data is None and not rendition.ended and rendition.next_part() == (msn, index):
            # H21: the hinted part blocks until it is published, then is sent whole
            await service.wait_for(packager.stream, lambda: rendition.part(msn, index) is not None or
                                   rendition.next_part() != (msn, index), 3 * td)
            data = rendition.part(msn, index)
    if data is None:
        return _fail(404, "not found", td)
    content_type = "video/mp4" if rendition.name == "video" else "audio/mp4"
    return web.Response(body=data, content_type=content_type,
                        headers={"Cache-Control": _cache_control(6 * td, immutable=True)})


async def hls_js(_: web.Request) -> web.StreamResponse:
    if not HLS_JS.is_file():
        return web.Response(status=404, text="hls.js is not installed: run `npm ci` (scripts/install.sh)\n")
    return web.FileResponse(HLS_JS, headers={"Cache-Control": "public, max-age=3600"})


def register_hls_routes(app: web.Application, node: Node) -> None:
    """Add the LL-HLS origin to ``app`` (one line in webrtc_cast.app.create_app)."""
    service = app[HLS_KEY] = HlsService(node)

    async def on_cleanup(_: web.Application) -> None:
        service.close()

    app.on_cleanup.append(on_cleanup)
    app.router.add_get("/static/vendor/hls.min.js", hls_js)
    app.router.add_get("/hls/{stream}/{rendition}.m3u8", playlist)
    app.router.add_get("/hls/{stream}/{rendition}/{epoch}/{file}", media)


__all__ = ["HLS_KEY", "HlsService", "Directives", "register_hls_routes"]
