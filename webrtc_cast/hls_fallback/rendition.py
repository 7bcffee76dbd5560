"""One rendition's published media: parts, segments, init segments and the playlist window — pure.

The packager appends; the HTTP adapter reads. Everything published is immutable (its URI carries the packager's
epoch, so a restarted packager never reuses one). The window is bounded by time: segments stay listed for
``window`` seconds and stay servable for 3 x TARGETDURATION more (H19), then their bytes are dropped.
"""

from __future__ import annotations

from collections import deque

from webrtc_cast.hls_fallback.playlist import MediaView, Part, RenditionReport, Segment


class Rendition:
    def __init__(
        self, name: str, epoch: str, target_duration: int, part_target: float, window: float,
        hold_back_parts: float = 3.0,
    ) -> None:
        if window < 3 * target_duration:
            raise ValueError("the window must hold at least 3 x TARGETDURATION of media (H18)")
        self.name = name
        self.prefix = f"{name}/{epoch}/"
        self.playlist_uri = f"{name}.m3u8"
        self.target_duration = target_duration
        self.part_target = part_target
        self.window = window
        self.hold_back_parts = hold_back_parts
        self.segments: deque[Segment] = deque()  # retained: listed ones plus a 3 x TD tail of removed ones
        self._disc: deque[int] = deque()  # discontinuity sequence number of each retained segment
        self._bytes: dict[tuple[int, int], bytes] = {}  # (msn, part index) -> part bytes
        self.inits: dict[int, bytes] = {}
        self.init_generation = -1
        self.next_msn = 0
        self.version = 0  # bumps on every change: the HTTP adapter's cache key
        self.ended = False
        self._pending_discontinuity = False
        self.codecs = ""
        self.width = self.height = 0
        self.frame_rate = 0.0
        self.channels = 2
        self.media_sequence = 0  # MSN of the first listed segment

    # -- writing ----------------------------------------------------------------------------------------
    def set_init(self, data: bytes) -> int:
        """A new init segment (new SPS/PPS, a new source): the next segment carries EXT-X-MAP for it."""
        if self.init_generation >= 0 and self.inits.get(self.init_generation) == data:
            return self.init_generation
        self.init_generation += 1
        self.inits[self.init_generation] = data
        return self.init_generation

    def discontinuity(self) -> None:
        """The next segment follows a source change or restart (H41)."""
        self._pending_discontinuity = True

    @property
    def open_segment(self) -> Segment | None:
        if self.segments and not self.segments[-1].complete:
            return self.segments[-1]
        return None

    def start_segment(self, start: float, pdt: float) -> Segment:
        if self.init_generation < 0:
            raise RuntimeError("set_init before the first segment")
        if self.open_segment is not None:
            raise RuntimeError("end_segment first")
        disc = self._pending_discontinuity and bool(self.segments)
        self._pending_discontinuity = False
        seg = Segment(self.next_msn, start, pdt, self.init_generation, discontinuity=disc)
        self._disc.append((self._disc[-1] if self._disc else 0) + (1 if disc else 0))
        self.next_msn += 1
        self.segments.append(seg)
        self.version += 1
        return seg

    def add_part(self, data: bytes, duration: float, independent: bool) -> tuple[int, int]:
        seg = self.open_segment
        if seg is None:
            raise RuntimeError("start_segment first")
        index = len(seg.parts)
        self._bytes[(seg.msn, index)] = data
        seg.parts.append(Part(duration, independent, len(data)))
        self.version += 1
        return seg.msn, index

    def end_segment(self, now_media: float) -> None:
        """Close the open segment; its EXTINF is the sum of its parts (H09). Empty segments are dropped."""
        seg = self.open_segment
        if seg is None:
            return
        if not seg.parts:
            self.segments.pop()
            self._disc.pop()
            self.next_msn -= 1
            if seg.discontinuity:
                self._pending_discontinuity = True
            return
        seg.duration = sum(p.duration for p in seg.parts)
        self.version += 1
        self._trim(seg.start + seg.duration)

    def end(self) -> None:
        """The broadcast is over: EXT-X-ENDLIST (H29, H32: directives are ignored from now on)."""
        if self.ended:
            return
        self.end_segment(0.0)
        self.ended = True
        self.version += 1

    def _trim(self, end: float) -> None:
        listed_from = end - self.window
        keep_from = listed_from - 3 * self.target_duration
        while self.segments and self.segments[0].complete:
            first = self.segments[0]
            if first.start + first.duration >= keep_from:  # type: ignore[operator]
                break
            self.segments.popleft()
            self._disc.popleft()
            for i in range(len(first.parts)):
                self._bytes.pop((first.msn, i), None)
        used = {s.init for s in self.segments}
        for gen in [g for g in self.inits if g not in used and g != self.init_generation]:
            del self.inits[gen]
        # the first listed segment: the oldest whose end is inside the window
        msn = self.segments[0].msn if self.segments else self.next_msn
        for seg in self.segments:
            if seg.complete and seg.start + seg.duration < listed_from:  # type: ignore[operator]
                msn = seg.msn + 1
            else:
                break
        self.media_sequence = max(self.media_sequence, msn)  # H18: never decreases

    # -- reading ----------------------------------------------------------------------------------------
    def listed(self) -> list[Segment]:
        return [s for s in self.segments if s.msn >= self.media_sequence]

    def part(self, msn: int, index: int) -> bytes | None:
        return self._bytes.get((msn, index))

    def segment(self, msn: int) -> bytes | None:
        for seg in self.segments:
            if seg.msn == msn:
                if not seg.complete:
                    return None
                return b"".join(self._bytes[(msn, i)] for i in range(len(seg.parts)))
        return None

    @property
    def last_msn(self) -> int:
        """MSN of the newest segment with anything in it (complete or open), -1 before the first."""
        for seg in reversed(self.segments):
            if seg.parts:
                return seg.msn
        return -1

    @property
    def last_part(self) -> int | None:
        for seg in reversed(self.segments):
            if seg.parts:
                return len(seg.parts) - 1
        return None

    def next_part(self) -> tuple[int, int]:
        """The part that will be published next (the preload hint, H43)."""
        seg = self.segments[-1] if self.segments else None
        if seg is None:
            return self.next_msn, 0
        if seg.complete:
            return seg.msn + 1, 0
        return seg.msn, len(seg.parts)

    def has_part(self, msn: int, index: int) -> bool:
        """Part ``index`` of segment ``msn`` is published, where an index past the end of a complete segment
        means part 0 of the next one (H24)."""
        for seg in reversed(self.segments):
            if seg.msn == msn:
                if index < len(seg.parts):
                    return True
                return seg.complete and self.has_part(msn + 1, 0)
            if seg.msn < msn:
                return False
        return bool(self.segments) and msn < self.segments[0].msn

    def has_segment(self, msn: int) -> bool:
        """Segment ``msn`` is complete (or old)."""
        for seg in reversed(self.segments):
            if seg.msn == msn:
                return seg.complete
            if seg.msn < msn:
                return False
        return bool(self.segments) and msn < self.segments[0].msn

    def view(self, reports: list[RenditionReport] | None = None) -> MediaView:
        listed = self.listed()
        disc_seq = 0
        if listed:
            disc_seq = self._disc[len(self.segments) - len(listed)]
        return MediaView(
            prefix=self.prefix,
            target_duration=self.target_duration,
            part_target=self.part_target,
            media_sequence=listed[0].msn if listed else self.media_sequence,
            discontinuity_sequence=disc_seq,
            segments=listed,
            next_part=None if self.ended else self.next_part(),
            reports=reports or [],
            ended=self.ended,
            hold_back_parts=self.hold_back_parts,
        )

    def report(self) -> RenditionReport:
        return RenditionReport(self.playlist_uri, max(self.last_msn, 0), self.last_part)
