"""LL-HLS playlist model and rendering (rfc8216bis-22) — pure.

One small type per thing a playlist lists; :func:`render_media` and :func:`render_multivariant` turn them into
text. The H-numbers refer to ../shared/conformance.md §3; the tests check each against this output and against
independent parsers (PyPI ``m3u8``; npm ``hls-parser`` in strict mode).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

VERSION = 9  # EXT-X-SKIP needs 9 (H13); EXT-X-MAP with fMP4 needs 6
# EXT-X-PART tags are listed for the last PART_PARENTS parent segments (the open one included), and never for one
# that ended more than 3 x TD before the end (H19). Players start PART-HOLD-BACK (~0.75 s) from the end and need
# parts of the last one or two; hls-parser's strict mode rejects parts on older parents; and every blocking reload
# of every viewer carries these lines.
PART_PARENTS = 3


@dataclass(slots=True)
class Part:
    duration: float
    independent: bool
    size: int


@dataclass(slots=True)
class Segment:
    msn: int
    start: float  # media time, seconds
    pdt: float  # EXT-X-PROGRAM-DATE-TIME, Unix seconds
    init: int  # generation of the init segment (EXT-X-MAP) this segment needs
    discontinuity: bool = False
    parts: list[Part] = field(default_factory=list)
    duration: float | None = None  # None while the segment is still being written

    @property
    def complete(self) -> bool:
        return self.duration is not None

    @property
    def size(self) -> int:
        return sum(p.size for p in self.parts)


@dataclass(slots=True)
class RenditionReport:
    uri: str
    last_msn: int
    last_part: int | None


@dataclass(slots=True)
class MediaView:
    """What one media playlist response shows."""

    prefix: str  # URI prefix of parts, segments and init segments, relative to the playlist
    target_duration: int
    part_target: float
    media_sequence: int
    discontinuity_sequence: int
    segments: list[Segment]  # listed segments, oldest first; the last may be open
    next_part: tuple[int, int] | None  # (msn, index) of the preload hint; None once ended
    reports: list[RenditionReport] = field(default_factory=list)
    ended: bool = False
    hold_back_parts: float = 3.0  # PART-HOLD-BACK in part targets; H02 wants >= 3

    @property
    def part_hold_back(self) -> float:
        return max(3.0, self.hold_back_parts) * self.part_target  # H02: >= 3 x PART-TARGET

    @property
    def can_skip_until(self) -> float:
        return 6.0 * self.target_duration  # H04: >= 6 x TARGETDURATION


def part_uri(prefix: str, msn: int, index: int) -> str:
    return f"{prefix}{msn}.{index}.m4s"


def segment_uri(prefix: str, msn: int) -> str:
    return f"{prefix}{msn}.m4s"


def init_uri(prefix: str, generation: int) -> str:
    return f"{prefix}init{generation}.mp4"


def format_pdt(unix_seconds: float) -> str:
    stamp = datetime.fromtimestamp(unix_seconds, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def _num(value: float) -> str:
    return f"{value:.5f}".rstrip("0").rstrip(".") if value != int(value) else f"{int(value)}.0"


def skipped_count(view: MediaView) -> int:
    """Segments a delta update may replace by EXT-X-SKIP (H30): those wholly older than CAN-SKIP-UNTIL."""
    if not view.segments:
        return 0
    last = view.segments[-1]
    end = last.start + (last.duration if last.duration is not None else sum(p.duration for p in last.parts))
    n = 0
    for seg in view.segments:
        if not seg.complete or end - (seg.start + seg.duration) <= view.can_skip_until:  # type: ignore[operator]
            break
        n += 1
    return n


def render_media(view: MediaView, skip: str | None = None) -> str:
    """The media playlist; ``skip`` is the _HLS_skip directive ("YES" or "v2"), already validated."""
    out = ["#EXTM3U"]
    n_skip = skipped_count(view) if skip and not view.ended else 0
    version = 10 if n_skip and skip == "v2" else VERSION
    out.append(f"#EXT-X-VERSION:{version}")
    out.append(f"#EXT-X-TARGETDURATION:{view.target_duration}")
    out.append(f"#EXT-X-MEDIA-SEQUENCE:{view.media_sequence}")
    out.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{view.discontinuity_sequence}")
    out.append(
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,"
        f"PART-HOLD-BACK={_num(view.part_hold_back)},CAN-SKIP-UNTIL={_num(view.can_skip_until)}"
    )
    out.append(f"#EXT-X-PART-INF:PART-TARGET={_num(view.part_target)}")
    if n_skip:
        tag = f"#EXT-X-SKIP:SKIPPED-SEGMENTS={n_skip}"
        if skip == "v2":
            tag += ',RECENTLY-REMOVED-DATERANGES=""'
        out.append(tag)
    listed = view.segments[n_skip:]
    # H19: EXT-X-PART tags are listed for the last 3 x TD only, and for the last PART_PARENTS parents
    end = listed[-1].start + sum(p.duration for p in listed[-1].parts) if listed else 0.0
    parts_from = end - 3 * view.target_duration
    first_parent = len(listed) - PART_PARENTS
    current_init: int | None = None
    for index, seg in enumerate(listed):
        # H08: DISCONTINUITY, MAP and PROGRAM-DATE-TIME come before the segment's first EXT-X-PART
        if seg.discontinuity and seg is not view.segments[0]:
            out.append("#EXT-X-DISCONTINUITY")
        if seg.init != current_init:
            out.append(f'#EXT-X-MAP:URI="{init_uri(view.prefix, seg.init)}"')
            current_init = seg.init
        out.append(f"#EXT-X-PROGRAM-DATE-TIME:{format_pdt(seg.pdt)}")
        seg_end = seg.start + (seg.duration if seg.duration is not None else 0.0)
        if not seg.complete or (seg_end > parts_from and index >= first_parent):
            for i, part in enumerate(seg.parts):
                attrs = f'DURATION={_num(round(part.duration, 5))},URI="{part_uri(view.prefix, seg.msn, i)}"'
                if part.independent:
                    attrs += ",INDEPENDENT=YES"
                out.append(f"#EXT-X-PART:{attrs}")
        if seg.complete:
            out.append(f"#EXTINF:{seg.duration:.5f},")
            out.append(segment_uri(view.prefix, seg.msn))
    if view.ended:
        out.append("#EXT-X-ENDLIST")
    elif view.next_part is not None:
        msn, index = view.next_part
        out.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{part_uri(view.prefix, msn, index)}"')
    for r in view.reports:
        attrs = f'URI="{r.uri}",LAST-MSN={r.last_msn}'
        if r.last_part is not None:
            attrs += f",LAST-PART={r.last_part}"
        out.append(f"#EXT-X-RENDITION-REPORT:{attrs}")
    return "\n".join(out) + "\n"


@dataclass(slots=True)
class VideoVariant:
    uri: str
    codecs: str  # video codec, e.g. avc1.42e01f
    width: int
    height: int
    frame_rate: float
    peak_bps: int
    average_bps: int


@dataclass(slots=True)
class AudioRendition:
    uri: str
    codecs: str  # mp4a.40.2
    group: str
    name: str
    channels: int
    peak_bps: int
    average_bps: int


def render_multivariant(variants: list[VideoVariant], audio: AudioRendition | None) -> str:
    out = ["#EXTM3U", f"#EXT-X-VERSION:{VERSION}"]
    if audio is not None:
        out.append(
            f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="{audio.group}",NAME="{audio.name}",DEFAULT=YES,AUTOSELECT=YES,'
            f'CHANNELS="{audio.channels}",URI="{audio.uri}"'
        )
    for v in sorted(variants, key=lambda v: v.peak_bps):
        peak = v.peak_bps + (audio.peak_bps if audio else 0)
        average = v.average_bps + (audio.average_bps if audio else 0)
        codecs = v.codecs + (f",{audio.codecs}" if audio else "")
        attrs = (
            f'BANDWIDTH={max(peak, 1)},AVERAGE-BANDWIDTH={max(average, 1)},CODECS="{codecs}",'
            f"RESOLUTION={v.width}x{v.height},FRAME-RATE={v.frame_rate:.3f}"
        )
        if audio is not None:
            attrs += f',AUDIO="{audio.group}"'
        out.append(f"#EXT-X-STREAM-INF:{attrs}")
        out.append(v.uri)
    return "\n".join(out) + "\n"


def bandwidth(segments: list[Segment]) -> tuple[int, int]:
    """(peak, average) bits per second over the complete segments (H33: BANDWIDTH is the peak)."""
    done = [s for s in segments if s.complete and s.duration and s.duration > 0]
    if not done:
        return 0, 0
    peak = max(s.size * 8 / s.duration for s in done)  # type: ignore[operator]
    average = sum(s.size for s in done) * 8 / sum(s.duration for s in done)  # type: ignore[misc]
    return math.ceil(peak), math.ceil(average)
