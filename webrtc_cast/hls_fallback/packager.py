"""The LL-HLS packager of one broadcast: a Broadcast tap that turns its RTP into CMAF renditions.

Synchronous and free of asyncio (the HTTP adapter is told of every change through ``on_change``); the media
work goes through :mod:`muxer` (PyAV). Per H.264 video track: depacketize, cut (segmenter), mux the access units
as received into fMP4 parts. Opus audio is transcoded once to AAC-LC and cut at the video's segment boundaries.

Timeline: media time is seconds since the packager's ``epoch_wall`` (Unix time). A track is anchored when its
first usable packet arrives: at the publisher's sender-report clock when one is known and plausible, else at the
packet's arrival on this node's wall clock (the same clock the WebRTC path measures latency against).
EXT-X-PROGRAM-DATE-TIME is ``epoch_wall + segment start - lateness``. ``lateness`` corrects an anchor taken from a
late first packet: a publisher that buffers its first frames while it connects (FFmpeg's WHIP muxer sends about a
second of frames in one burst after the DTLS handshake) would otherwise get PDTs that late for the whole broadcast.
A frame cannot arrive before it was captured, so when the leading video layer's frames arrive earlier than the
anchored timeline says, the timeline is late by that much: ``lateness`` is the largest such lead seen since the
anchor, and the PDTs of the segments since the last discontinuity follow it (in practice it settles within the
first seconds). One value for every rendition (H36: consistent PDTs). The media timeline (tfdt) is never moved.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from webrtc_cast.codecs.h264 import NAL_SPS, profile_level_id, sps_resolution
from webrtc_cast.hls_fallback.depacketize import START_CODE, H264Depacketizer, strip_padding
from webrtc_cast.hls_fallback.muxer import FragmentWriter, OpusToAac
from webrtc_cast.hls_fallback.playlist import (
    AudioRendition,
    VideoVariant,
    bandwidth,
    render_multivariant,
)
from webrtc_cast.hls_fallback.rendition import Rendition
from webrtc_cast.hls_fallback.segmenter import Cut, Segmenter

logger = logging.getLogger(__name__)

VIDEO_TIMESCALE = 90000
AUDIO_RATE = 48000
# offload(job, done): run job() elsewhere, then call done(its result or None on failure, now) on the caller's loop
AacFrames = list[tuple[int, bytes]]  # (pts in samples, AAC frame)
Offload = Callable[[Callable[[], AacFrames], Callable[[AacFrames | None, float], None]], None]
AUDIO_HOLD = 0.5  # seconds an AAC frame waits for the video to pass its time before it is cut alone


@dataclass(slots=True)
class HlsConfig:
    part_target: float = 0.25
    segment_min: float = 1.0
    target_duration: int = 2
    window: float = 30.0
    hold_back_parts: float = 3.0
    audio_bitrate: int = 128_000


class _Anchor:
    """Maps one SSRC's RTP timestamps to media seconds."""

    def __init__(self, rtp: int, media: float, clock: int) -> None:
        self.rtp, self.media, self.clock = rtp, media, clock
        self._last = rtp
        self._high = 0

    def media_time(self, ts: int) -> float:
        delta = (ts - self._last) & 0xFFFFFFFF
        if delta < 0x80000000 and ts < self._last:
            self._high += 1 << 32
        if delta < 0x80000000:
            self._last = ts
            ext = self._high + ts
        else:
            ext = self._high + ts - (1 << 32 if ts > self._last else 0)
        return self.media + (ext - self.rtp) / self.clock


class _Track:
    """What video and audio pipelines share: the rendition, the cut rule and the open part."""

    def __init__(self, packager: Packager, rendition: Rendition, segmenter: Segmenter) -> None:
        self.p = packager
        self.rendition = rendition
        self.segmenter = segmenter
        self.writer: FragmentWriter | None = None
        self.ssrc: int | None = None
        self.init_done = False
        self.anchor: _Anchor | None = None
        self.part = bytearray()
        self.part_start = 0.0
        self.part_independent = False
        self.part_open = False
        self.held: tuple[bytes, float, bool] | None = None  # a closed part published with the next cut (segmenter)
        self.last_t: float | None = None
        self.interval = 0.0
        self.samples = 0
        self.first_t: float | None = None

    def anchor_at(self, track, ts: int, now: float) -> None:  # noqa: ANN001
        wall = now + self.p.wall_offset
        clock = track.codec.clock_rate
        sc = track.sender_clock
        if sc is not None:
            delta = (ts - sc.rtp_time) & 0xFFFFFFFF
            delta = delta - (1 << 32) if delta >= 1 << 31 else delta
            sr_wall = sc.ntp_seconds + delta / clock
            if wall - 5.0 < sr_wall <= wall + 0.05:  # plausible: same clock, not in the future
                wall = sr_wall
        media = wall - self.p.epoch_wall
        if self.last_t is not None:
            media = max(media, self.last_t + self.interval + 0.001)  # never backwards (H41)
        self.anchor = _Anchor(ts, media, clock)
        if self is self.p.video:
            self.p.lateness = 0.0

    def sample(self, t: float, data: bytes, keyframe: bool, cut: Cut, timescale: int) -> None:
        assert self.writer is not None
        if self.last_t is not None:
            self.interval = t - self.last_t
        frag = self.writer.write(data, round(t * timescale), keyframe, max(1, round(self.interval * timescale)))
        if not self.init_done and self.writer.init is not None:
            self.rendition.set_init(self.writer.init)
            self.init_done = True
        self.part += frag
        if cut is not Cut.NONE and self.part_open:
            self._publish_part(t, hold=cut is Cut.PART and self.segmenter.hold(t))
        if cut is Cut.SEGMENT:
            self.rendition.end_segment(t)
            self.rendition.start_segment(t, self.p.pdt(t))
            self.p.segment_started(self, t)
        if cut is not Cut.NONE:
            self.part_start, self.part_independent, self.part_open = t, keyframe, True
        self.last_t = t
        if self.first_t is None:
            self.first_t = t
        self.samples += 1

    def _publish_part(self, end: float, hold: bool = False) -> None:
        """Close the open part. A held part goes out first; ``hold``: keep this one for the next cut."""
        part = (bytes(self.part), end - self.part_start, self.part_independent)
        self.part = bytearray()
        self.part_open = False
        self._release_held()
        if hold:
            self.held = part
            return
        self.rendition.add_part(*part)
        self.p.changed()

    def _release_held(self) -> None:
        if self.held is not None:
            self.rendition.add_part(*self.held)
            self.held = None
            self.p.changed()

    def finish(self, discontinuity: bool) -> None:
        """Flush the writer, close the open part and segment (a source change, a restart or the end)."""
        if self.writer is not None:
            self.part += self.writer.close()
            self.writer = None
            if self.part_open and self.last_t is not None:
                self._publish_part(self.last_t + self.interval)
        self._release_held()
        self.part = bytearray()
        self.part_open = False
        self.rendition.end_segment(0.0)
        self.segmenter.reset()
        self.anchor = None
        if discontinuity:
            self.rendition.discontinuity()
        if self.last_t is not None:
            self.last_t += self.interval
        self.p.changed()


class _Video(_Track):
    def __init__(self, packager: Packager, rendition: Rendition, segmenter: Segmenter) -> None:
        super().__init__(packager, rendition, segmenter)
        self.depack = H264Depacketizer()
        self.params: tuple[bytes, bytes] | None = None

    def packet(self, track, pkt, now: float) -> None:  # noqa: ANN001
        data, hdr, ext_seq = pkt
        if hdr.ssrc != self.ssrc:
            if self.ssrc is not None:
                self.finish(discontinuity=True)
            self.ssrc = hdr.ssrc
            self.depack = H264Depacketizer()
            self.params = None
        payload = strip_padding(data, hdr.payload_offset, hdr.padding)
        for au in self.depack.push(payload, hdr.timestamp, hdr.marker, ext_seq):
            if self.anchor is None:
                self.anchor_at(track, au.timestamp & 0xFFFFFFFF, now)
            t = self.anchor.media_time(au.timestamp & 0xFFFFFFFF)  # type: ignore[union-attr]
            if self.last_t is not None and t <= self.last_t:
                continue
            params = (self.depack.sps, self.depack.pps)
            if au.keyframe and params != self.params:
                if self.writer is not None:
                    self.finish(discontinuity=True)  # new encoding parameters: new init (EXT-X-MAP)
                    self.anchor_at(track, au.timestamp & 0xFFFFFFFF, now)
                    t = self.anchor.media_time(au.timestamp & 0xFFFFFFFF)  # type: ignore[union-attr]
                self.params = params  # type: ignore[assignment]
                self._open_writer()
            if self.writer is None:
                continue
            if self is self.p.video:
                self.p.observe_arrival(t, now)
            cut = self.segmenter.decide(t, au.keyframe)
            body = au.annexb()
            if au.keyframe and not any(n[0] & 0x1F == NAL_SPS for n in au.nals):
                body = START_CODE + self.params[0] + START_CODE + self.params[1] + body  # type: ignore[index]
            self.sample(t, body, au.keyframe, cut, VIDEO_TIMESCALE)

    def _open_writer(self) -> None:
        sps, pps = self.params  # type: ignore[misc]
        stap = bytes([24]) + len(sps).to_bytes(2, "big") + sps + len(pps).to_bytes(2, "big") + pps
        width, height = sps_resolution(stap) or (0, 0)
        self.rendition.width, self.rendition.height = width, height
        self.rendition.codecs = f"avc1.{profile_level_id(stap) or '42e01f'}"
        self.writer = FragmentWriter("h264", VIDEO_TIMESCALE, width=width, height=height)
        self.init_done = False

    @property
    def frame_rate(self) -> float:
        if self.first_t is None or self.last_t is None or self.last_t <= self.first_t:
            return 30.0
        return (self.samples - 1) / (self.last_t - self.first_t)


class _Audio(_Track):
    def __init__(self, packager: Packager, rendition: Rendition, segmenter: Segmenter, bitrate: int) -> None:
        super().__init__(packager, rendition, segmenter)
        self.bitrate = bitrate
        self.transcoder: OpusToAac | None = None
        self.pending: deque[tuple[float, bytes, float]] = deque()  # (t, aac frame, arrival)
        self.start_at: float | None = None  # video's first segment start after a (re)start
        self.generation = 0  # bumped by a restart: transcodes still in flight for the old source are dropped

    def packet(self, track, pkt, now: float) -> None:  # noqa: ANN001
        data, hdr, _ = pkt
        if hdr.ssrc != self.ssrc:
            if self.ssrc is not None:
                self.restart()
            self.ssrc = hdr.ssrc
            self.writer = FragmentWriter("aac", AUDIO_RATE, bitrate=self.bitrate)
            self.init_done = False
            self.transcoder = OpusToAac(self.writer.encoder)  # type: ignore[arg-type]
            self.rendition.codecs = "mp4a.40.2"
        if self.anchor is None:
            self.anchor_at(track, hdr.timestamp, now)
        t = self.anchor.media_time(hdr.timestamp)  # type: ignore[union-attr]
        payload = strip_padding(data, hdr.payload_offset, hdr.padding)
        job = partial(self.transcoder.push, payload, round(t * AUDIO_RATE))  # type: ignore[union-attr]
        if self.p.offload is None:
            self._transcoded(self.generation, now, job(), now)
        else:  # Opus decode + AAC encode off the forwarding loop; the result comes back on it, in order
            self.p.offload(job, partial(self._transcoded, self.generation, now))

    def _transcoded(self, generation: int, arrival: float, frames: AacFrames | None, now: float) -> None:
        # Defence in depth: frames of a replaced source usually fall before the new segment anyway (start_at
        # is unset until the video's next segment), but a job finishing late must never land after the restart.
        if generation != self.generation or self.p.ended or frames is None:
            return
        for pts, frame in frames:
            self.pending.append((pts / AUDIO_RATE, frame, arrival))
        self.flush_pending(now=now)

    def restart(self) -> None:
        """A new source: flush what is held, close the segment, wait for the video's next segment."""
        self.flush_pending(force=True)
        self.finish(discontinuity=True)
        self.start_at = None
        self.pending.clear()
        self.ssrc = None
        self.generation += 1

    def flush_pending(self, force: bool = False, now: float = 0.0) -> None:
        video_t = self.p.video_time()
        while self.pending:
            t, frame, arrival = self.pending[0]
            if not force and (video_t is None or t > video_t) and now - arrival < AUDIO_HOLD:
                return  # wait until the video has decided its cuts up to t
            self.pending.popleft()
            if self.start_at is None or t < self.start_at - 0.5 / 48 or self.writer is None:
                continue  # before the video's first segment: nothing to align with
            if self.last_t is not None and t <= self.last_t:
                continue
            cut = self.segmenter.decide(t, True, 1024 / AUDIO_RATE)
            self.sample(t, frame, True, cut, AUDIO_RATE)


class Packager:
    """One broadcast's LL-HLS renditions. ``tap`` goes into ``Broadcast.taps``."""

    def __init__(self, stream: str, config: HlsConfig, epoch_wall: float, wall_offset: float,
                 on_change: Callable[[], None] | None = None, offload: Offload | None = None) -> None:
        self.stream = stream
        # None: transcode audio inline (tests, tools). The node's adapter runs it on a worker thread so a
        # packet's Opus decode and AAC encode (~0.7 ms, several ms at times) never hold up the forwarding loop.
        self.offload = offload
        self.config = config
        self.epoch = secrets.token_hex(4)  # in every media URI: a restarted packager never reuses one
        self.epoch_wall = epoch_wall
        self.wall_offset = wall_offset  # Unix time minus monotonic time
        self.on_change = on_change
        self.version = 0
        self.publisher_id: str | None = None
        self.videos: dict[str, _Video] = {}  # by track key: "video" or "video/<rid>" (simulcast layers)
        self.audio: _Audio | None = None
        self.unavailable: str | None = None
        self.ended = False
        self.errors = 0
        self.lateness = 0.0  # seconds the leader's anchored timeline is behind its arrivals (see the module doc)

    def _rendition(self, name: str) -> Rendition:
        c = self.config
        return Rendition(name, self.epoch, c.target_duration, c.part_target, c.window, c.hold_back_parts)

    def _segmenter(self, aligned: bool = False) -> Segmenter:
        c = self.config
        return Segmenter(c.part_target, c.segment_min, c.target_duration, aligned)

    # -- the tap ----------------------------------------------------------------------------------------
    def tap(self, track, pkt, keyframe: bool, now: float, publisher_id: str | None = None) -> None:  # noqa: ANN001
        if self.ended:
            return
        if publisher_id != self.publisher_id:
            if self.publisher_id is not None:
                self.source_changed()
            self.publisher_id = publisher_id
        kind, codec = track.kind, track.codec.name.upper()
        try:
            if kind == "video":
                if codec != "H264":
                    self.unavailable = (
                        f"HLS unavailable: the broadcast's video is {track.codec.name}; LL-HLS carries H.264 only "
                        "and this node does not transcode. Publish H.264 to get HLS."
                    )
                    return
                self.unavailable = None
                key = getattr(track, "key", "video")
                pipeline = self.videos.get(key)
                if pipeline is None:
                    name = "video" if key == "video" else "video_" + re.sub(r"[^A-Za-z0-9]", "", key[6:])[:16]
                    pipeline = self.videos[key] = _Video(self, self._rendition(name), self._segmenter())
                pipeline.packet(track, pkt, now)
            elif kind == "audio" and codec == "OPUS" and self.video is not None:
                if self.audio is None:
                    seg = self._segmenter(aligned=True)
                    self.audio = _Audio(self, self._rendition("audio"), seg, self.config.audio_bitrate)
                    current = self.video.rendition.open_segment
                    self.audio.start_at = current.start if current is not None else None
                self.audio.packet(track, pkt, now)
        except Exception:
            self.errors += 1
            logger.exception("hls %s: packaging failed; restarting the %s rendition", self.stream, kind)
            pipeline = self.videos.get(getattr(track, "key", "video")) if kind == "video" else self.audio
            if pipeline is not None:
                pipeline.ssrc = None
                pipeline.writer = None
                pipeline.finish(discontinuity=True)

    def source_changed(self) -> None:
        """A new publisher (reconnect, replacement): every rendition gets a discontinuity at once (H35)."""
        for video in self.videos.values():
            if video.ssrc is not None:
                video.finish(discontinuity=True)
                video.ssrc = None
        if self.audio is not None and self.audio.ssrc is not None:
            self.audio.restart()

    @property
    def video(self) -> _Video | None:
        """The leader: the first video layer; audio follows its segment boundaries."""
        return next(iter(self.videos.values()), None)

    # -- called by the pipelines ------------------------------------------------------------------------
    def video_time(self) -> float | None:
        return self.video.last_t if self.video is not None else None

    def segment_started(self, track: _Track, t: float) -> None:
        if track is self.video and self.audio is not None:
            if self.audio.start_at is None:
                self.audio.start_at = t
                self.audio.segmenter.reset()
            self.audio.segmenter.align_to(t)

    def pdt(self, t: float) -> float:
        """EXT-X-PROGRAM-DATE-TIME (Unix seconds) of media time ``t``."""
        return self.epoch_wall + t - self.lateness

    def observe_arrival(self, t: float, now: float) -> None:
        """The leader's access unit at media time ``t`` arrived at monotonic ``now``."""
        early = t - (now + self.wall_offset - self.epoch_wall)
        if early > self.lateness + 0.001:
            self.lateness = early
            # every segment since the last discontinuity (the anchor): PDT(n+1) = PDT(n) + EXTINF(n) stays true
            for track in self.tracks():
                for seg in reversed(track.rendition.segments):
                    seg.pdt = self.pdt(seg.start)
                    if seg.discontinuity:
                        break

    def changed(self) -> None:
        self.version += 1
        if self.on_change is not None:
            self.on_change()

    # -- lifecycle --------------------------------------------------------------------------------------
    def end(self) -> None:
        """The broadcast is gone: flush and add EXT-X-ENDLIST to every rendition."""
        if self.ended:
            return
        if self.audio is not None:
            self.audio.flush_pending(force=True)
        for t in self.tracks():
            t.finish(discontinuity=False)
            t.rendition.end()
        self.ended = True
        self.changed()

    def tracks(self) -> list[_Track]:
        return [*self.videos.values(), *([self.audio] if self.audio is not None else [])]

    # -- reading ----------------------------------------------------------------------------------------
    def renditions(self) -> dict[str, Rendition]:
        return {t.rendition.name: t.rendition for t in self.tracks() if t.rendition.init_generation >= 0}

    @property
    def ready(self) -> bool:
        """A multivariant playlist can be served: the video has its first part."""
        return self.video is not None and self.video.rendition.last_part is not None

    def multivariant(self) -> str:
        variants = []
        for video in self.videos.values():
            v = video.rendition
            if v.last_part is None:
                continue
            peak, average = bandwidth(list(v.segments))
            if peak == 0:  # no complete segment yet: the parts so far
                size = sum(s.size for s in v.segments)
                span = max((video.last_t or 0) - (video.first_t or 0), 0.2)
                peak = average = int(size * 8 / span)
            variants.append(VideoVariant(v.playlist_uri, v.codecs, v.width, v.height, video.frame_rate, peak, average))
        audio = None
        if self.audio is not None and self.audio.rendition.init_generation >= 0:
            a = self.audio.rendition
            apeak, aaverage = bandwidth(list(a.segments))
            bitrate = self.config.audio_bitrate
            audio = AudioRendition(a.playlist_uri, "mp4a.40.2", "aac", "audio", 2, apeak or bitrate,
                                   aaverage or bitrate)
        return render_multivariant(variants, audio)
