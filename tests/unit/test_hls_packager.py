"""The packager on real H.264 (libx264) and Opus RTP, without a network: CMAF boxes, parts, IDRs, timelines.

H-numbers: ../shared/conformance.md §3. Every part and segment is opened with PyAV (an independent demuxer).
"""

from __future__ import annotations

import io
import struct

import av
import m3u8
import pytest

from tests.unit.hls_media import h264_access_units, opus_packets, rtp_feed, track
from webrtc_cast.hls_fallback.packager import HlsConfig, Packager
from webrtc_cast.hls_fallback.playlist import render_media
from webrtc_cast.timecode import read_timestamp

EPOCH_WALL = 1_800_000_000.0


@pytest.fixture(scope="module")
def media():
    return h264_access_units(150, gop=30), opus_packets(250)


def run(feed, packager: Packager, publisher: str = "pub1") -> None:
    for trk, pkt, now in feed.events:
        packager.tap(trk, pkt, False, now, publisher)


def make_packager(**cfg) -> Packager:
    # wall = monotonic + offset: monotonic 100.0 is EPOCH_WALL + 1 s
    return Packager("s", HlsConfig(**cfg), EPOCH_WALL, EPOCH_WALL - 99.0)


def boxes(data: bytes, start: int = 0, end: int | None = None):
    end = len(data) if end is None else end
    while start < end:
        size, kind = struct.unpack(">I4s", data[start : start + 8])
        yield kind.decode(), start, size
        start += size


def child(data: bytes, path: list[str], start: int = 0, end: int | None = None) -> tuple[int, int] | None:
    for kind, off, size in boxes(data, start, end):
        if kind == path[0]:
            return (off, size) if len(path) == 1 else child(data, path[1:], off + 8, off + size)
    return None


def tfdts(data: bytes) -> list[int]:
    out = []
    for kind, off, size in boxes(data):
        if kind == "moof":
            t = child(data, ["traf", "tfdt"], off + 8, off + size)
            assert t is not None  # H39: every traf has a tfdt
            version = data[t[0] + 8]
            out.append(struct.unpack(">Q" if version else ">I", data[t[0] + 12 : t[0] + (20 if version else 16)])[0])
    return out


def demux(init: bytes, body: bytes) -> list:
    with av.open(io.BytesIO(init + body)) as c:
        return [pk for pk in c.demux(c.streams[0]) if pk.size]


def decode(init: bytes, body: bytes) -> list:
    with av.open(io.BytesIO(init + body)) as c:
        return list(c.decode(c.streams[0]))


def test_packaged_renditions_are_valid_cmaf_and_playlists(media):
    aus, opus = media
    feed = rtp_feed(5.0, aus=aus, opus=opus)
    p = make_packager()
    run(feed, p)
    r = p.renditions()
    assert set(r) == {"video", "audio"}
    video, audio = r["video"], r["audio"]
    vtext = render_media(video.view([audio.report()]))
    pl = m3u8.loads(vtext)
    assert pl.target_duration == 2 and pl.media_sequence == 0
    # H38: init = ftyp (iso6 + cmfc) + moov with mvex, no samples
    init = video.inits[0]
    kinds = [k for k, _, _ in boxes(init)]
    assert kinds[:2] == ["ftyp", "moov"] and b"iso6" in init[:32] and b"cmfc" in init[:32]
    assert child(init, ["moov", "mvex"]) is not None and b"moof" not in init
    complete = [s for s in video.segments if s.complete]
    assert len(complete) >= 3
    prev_end = None
    for seg in complete:
        body = video.segment(seg.msn)
        assert body == b"".join(video.part(seg.msn, i) for i in range(len(seg.parts)))  # H39: parts = parent
        frames = decode(init, body)
        assert frames and frames[0].key_frame  # H40: every segment starts with an IDR
        starts = tfdts(body)
        assert starts[0] == round(seg.start * 90000)
        if prev_end is not None:
            assert abs(starts[0] - prev_end) <= 1  # H41: no timestamp gap between segments
        prev_end = round((seg.start + seg.duration) * 90000)
        for i, part in enumerate(seg.parts):
            packets = demux(init, video.part(seg.msn, i))  # each part opens on its own with the init
            assert len(packets) == round(part.duration * 30)
            assert packets[0].is_keyframe == part.independent  # H06: INDEPENDENT=YES iff it starts on an IDR
            if part.independent:
                assert decode(init, video.part(seg.msn, i))[0].key_frame  # H40: decodable alone
    # the burned-in timecode survives: the samples are the publisher's, not re-encoded
    first = decode(init, video.segment(0))[0]
    assert read_timestamp(first.to_ndarray()) == 1_700_000_000_000
    # audio: AAC-LC, every part decodable, same timeline as the video (H35)
    ainit = audio.inits[0]
    assert b"mp4a" in ainit
    for seg in [s for s in audio.segments if s.complete]:
        frames = decode(ainit, audio.segment(seg.msn))
        assert frames and frames[0].sample_rate == 48000
        vseg = next(v for v in video.segments if v.msn == seg.msn)
        assert _follows(vseg, seg)  # segment boundaries aligned with the video's (H35), to within one part
        # never a short closing part: hls.js would count the segment buffered without it (docs/hls.md)
        assert seg.parts[-1].duration > 0.2
    # PDT from the arrival clock: the first frame arrived at monotonic 100.002 = EPOCH_WALL + 1.002
    assert abs(complete[0].pdt - (EPOCH_WALL + 1.002)) < 1e-6
    mv = m3u8.loads(p.multivariant())
    info = mv.playlists[0].stream_info
    assert info.resolution == (320, 180) and abs(info.frame_rate - 30) < 0.01
    assert info.codecs.startswith("avc1.42") and info.codecs.endswith(",mp4a.40.2")
    assert info.bandwidth >= info.average_bandwidth > 0


def test_publisher_change_gives_a_discontinuity_in_every_rendition(media):
    aus, opus = media
    p = make_packager()
    run(rtp_feed(3.0, aus=aus[:90], opus=opus[:150]), p, "pub1")
    run(rtp_feed(3.0, aus=aus[:90], opus=opus[:150], start=104.0, video_ssrc=7, audio_ssrc=8), p, "pub2")
    for name, r in p.renditions().items():
        text = render_media(r.view())
        assert text.count("#EXT-X-DISCONTINUITY\n") == 1, name  # H41: the gap is announced
        lines = text.splitlines()
        i = lines.index("#EXT-X-DISCONTINUITY")
        assert lines[i + 1].startswith("#EXT-X-MAP:") or lines[i + 1].startswith("#EXT-X-PROGRAM-DATE-TIME")
        starts = [s.start for s in r.segments]
        assert starts == sorted(starts)  # timestamps never go backwards
    v, a = p.renditions()["video"], p.renditions()["audio"]
    assert v.last_msn == a.last_msn  # H35: the renditions' MSNs stay aligned
    for vs, as_ in zip(v.segments, a.segments, strict=False):
        assert vs.msn == as_.msn and _follows(vs, as_), (vs, as_)


def test_packet_loss_drops_to_next_idr_and_parts_stay_decodable(media):
    aus, opus = media
    p = make_packager()
    run(rtp_feed(4.0, aus=aus, opus=opus, drop={200, 201}), p)
    video = p.renditions()["video"]
    for seg in [s for s in video.segments if s.complete]:
        frames = decode(video.inits[0], video.segment(seg.msn))
        assert frames[0].key_frame


def test_vp8_gets_a_clear_unavailable_answer():
    p = make_packager()
    vp8 = track("video", "VP8", 90000)
    data = bytes([0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]) + b"\x10\x00\x00"
    from webrtc_cast.rtp.header import parse

    p.tap(vp8, (data, parse(data), 1), True, 1.0, "x")
    assert p.unavailable and "H.264" in p.unavailable and not p.renditions()


def test_audio_follows_video_boundaries_with_short_segments(media):
    aus, opus = media
    p = make_packager(target_duration=1, segment_min=0.5)
    run(rtp_feed(3.0, aus=aus[:90], opus=opus[:150]), p)
    v, a = p.renditions()["video"], p.renditions()["audio"]
    assert [s.msn for s in v.segments] == [s.msn for s in a.segments]
    assert all(_follows(x, y) for x, y in zip(v.segments, a.segments, strict=True))


def _follows(video_seg, audio_seg, part_target: float = 0.25) -> bool:
    """The audio segment starts at the video's boundary (the nearest AAC frame), or at the first part cut after it
    when the part open at the boundary was too short to close the segment (segmenter.MIN_CLOSING_PART)."""
    return -0.011 <= audio_seg.start - video_seg.start < part_target


def test_end_adds_endlist(media):
    aus, opus = media
    p = make_packager()
    run(rtp_feed(2.0, aus=aus[:60], opus=opus[:100]), p)
    p.end()
    for r in p.renditions().values():
        text = render_media(r.view(), skip="YES")
        assert "\n#EXT-X-ENDLIST\n" in text and "#EXT-X-PRELOAD-HINT" not in text  # H10
        assert all(s.complete for s in r.segments)


def test_offloaded_audio_transcode_gives_the_same_audio_as_inline(media):
    """The node transcodes Opus -> AAC on a worker thread (Packager ``offload``). Jobs complete later, in order:
    the audio rendition must match the inline one."""
    aus, opus = media
    inline = make_packager()
    run(rtp_feed(3.0, aus=aus[:90], opus=opus[:150]), inline)

    queued: list = []
    deferred = Packager("s", HlsConfig(), EPOCH_WALL, EPOCH_WALL - 99.0,
                        offload=lambda job, done: queued.append((job, done)))

    def drain(now: float) -> None:
        while queued:
            job, done = queued.pop(0)
            done(job(), now)

    feed = rtp_feed(3.0, aus=aus[:90], opus=opus[:150])
    for i, (trk, pkt, now) in enumerate(feed.events):
        deferred.tap(trk, pkt, False, now, "pub1")
        if i % 7 == 6:  # results come back in batches, a little late
            drain(now)
    drain(feed.events[-1][2])
    ours, theirs = deferred.renditions()["audio"], inline.renditions()["audio"]
    assert [(s.msn, round(s.start, 3)) for s in ours.segments] == [(s.msn, round(s.start, 3)) for s in theirs.segments]
    assert ours.segment(ours.segments[0].msn) == theirs.segment(theirs.segments[0].msn)


def test_part_before_a_short_closing_part_is_announced_with_it(media):
    """The video's closing part is short (a 1 s GOP at 30 fps: 4 x 7 frames + 2; H05 allows nothing else). hls.js
    1.7.4 never loads it if the playlist closing the segment comes after the part before it was loaded but before
    it was appended (docs/hls.md, "The stall that was left"). So no playlist may list the part before a short
    closing part while the segment is still open: the two (and the segment's end) appear in one update."""
    from webrtc_cast.hls_fallback.segmenter import MIN_CLOSING_PART

    aus, opus = media
    p = make_packager()
    seen_open: dict[int, set[int]] = {}
    for trk, pkt, now in rtp_feed(5.0, aus=aus[:150], opus=opus[:250]).events:
        p.tap(trk, pkt, False, now, "pub1")  # HlsService answers blocked requests after each tap, never inside one
        video = p.renditions().get("video")
        for seg in video.segments if video is not None else []:
            if not seg.complete:
                seen_open.setdefault(seg.msn, set()).add(len(seg.parts))
    closed = [s for s in p.renditions()["video"].segments if s.complete]
    short = [s for s in closed if s.parts[-1].duration < MIN_CLOSING_PART]
    assert len(short) >= 3  # the case at hand: 2-frame closing parts
    for seg in short:
        assert len(seg.parts) - 1 not in seen_open.get(seg.msn, set()), (seg.msn, seen_open.get(seg.msn))
    for seg in closed:  # H05 and H09 still hold; nothing is lost or reordered
        assert all(part.duration <= 0.25 + 1e-9 for part in seg.parts)
        assert abs(sum(part.duration for part in seg.parts) - seg.duration) < 1e-9
    # only the part before the closing one waits: every other part of a segment was listed on its own
    for seg in short:
        assert set(range(1, len(seg.parts) - 1)) <= seen_open[seg.msn], (seg.msn, seen_open[seg.msn])
