"""LL-HLS pure modules: depacketizer, segmenter, blocking directives, playlists (H-numbers: conformance.md §3)."""

from __future__ import annotations

import m3u8
import pytest

from tests.unit.hls_media import h264_access_units, packetize_h264, split_annexb
from webrtc_cast.hls_fallback.blocking import BadDirective, advance_part_limit, parse_directives, satisfied
from webrtc_cast.hls_fallback.depacketize import H264Depacketizer, strip_padding
from webrtc_cast.hls_fallback.playlist import AudioRendition, VideoVariant, render_media, render_multivariant
from webrtc_cast.hls_fallback.rendition import Rendition
from webrtc_cast.hls_fallback.segmenter import Cut, Segmenter


@pytest.fixture(scope="module")
def aus() -> list[bytes]:
    return h264_access_units(40, gop=20)


def _push_all(d: H264Depacketizer, aus: list[bytes], drop: set[int] = frozenset()) -> list:
    out, seq = [], 0
    for i, au in enumerate(aus):
        payloads = packetize_h264(split_annexb(au))
        for k, p in enumerate(payloads):
            if seq not in drop:
                out += d.push(p, (0xFFFFF000 + i * 3000) & 0xFFFFFFFF, k == len(payloads) - 1, seq)
            seq += 1
    return out


def test_depacketizer_reassembles_fu_a_and_stap_a(aus):
    d = H264Depacketizer()
    got = _push_all(d, aus)
    assert len(got) == len(aus)
    assert [a.annexb() for a in got] == [b"".join(b"\x00\x00\x00\x01" + n for n in split_annexb(x)) for x in aus]
    assert got[0].keyframe and got[20].keyframe and not got[1].keyframe
    assert got[-1].timestamp > got[0].timestamp > 0xFFFF0000  # unwrapped across the 32-bit wrap
    assert d.sps is not None and d.pps is not None


def test_depacketizer_drops_until_next_idr_after_loss(aus):
    d = H264Depacketizer()
    # lose one packet of frame 5: frames 5..19 are dropped, frame 20 (IDR) resumes
    per_frame = [len(packetize_h264(split_annexb(a))) for a in aus]
    first_of_5 = sum(per_frame[:5])
    got = _push_all(d, aus, drop={first_of_5})
    assert [a.timestamp - got[0].timestamp for a in got][:6] == [0, 3000, 6000, 9000, 12000, 60000]
    assert d.dropped_frames == 15 and d.lost_packets == 1


def test_strip_padding():
    assert strip_padding(b"H" * 12 + b"abc\x00\x02", 12, True) == b"abc"
    assert strip_padding(b"H" * 12 + b"abc", 12, False) == b"abc"
    assert strip_padding(b"H" * 12 + b"\x09", 12, True) == b""


def test_segmenter_parts_and_keyframe_segments():
    s = Segmenter(part_target=0.25, segment_min=1.0, target_duration=2)
    cuts = [s.decide(i / 30, i % 30 == 0) for i in range(91)]
    seg_starts = [i for i, c in enumerate(cuts) if c is Cut.SEGMENT]
    assert seg_starts == [0, 30, 60, 90]  # H40: at keyframes once >= segment_min
    part_starts = [i for i, c in enumerate(cuts) if c is not Cut.NONE]
    lengths = [(b - a) / 30 for a, b in zip(part_starts, part_starts[1:], strict=False)]
    assert max(lengths) <= 0.25  # H05: DURATION <= PART-TARGET
    assert all(x >= 0.85 * 0.25 for x, nxt in zip(lengths, part_starts[1:], strict=False) if nxt not in seg_starts)


def test_segmenter_long_gop_is_cut_within_target_duration():
    s = Segmenter(0.25, 1.0, 2)
    cuts = [s.decide(i / 30, i == 0) for i in range(200)]
    starts = [i for i, c in enumerate(cuts) if c is Cut.SEGMENT]
    assert all(round((b - a) / 30) <= 2 for a, b in zip(starts, starts[1:], strict=False))  # H17


def test_segmenter_aligned_follower_cuts_at_leader_boundaries():
    s = Segmenter(0.25, 1.0, 2)
    s.align_to(1.0)
    s.align_to(2.0)
    cuts = [s.decide(i * 1024 / 48000, True, 1024 / 48000) for i in range(130)]
    starts = [round(i * 1024 / 48000, 3) for i, c in enumerate(cuts) if c is Cut.SEGMENT]
    # at the first part cut after each boundary (44 + 3 frames would leave a 3-frame closing part)
    assert starts == [0.0, 1.173, 2.112]


def test_segmenter_follower_never_closes_a_segment_with_a_short_part():
    """The stall of issue 5: hls.js 1.7.4 counts a segment as buffered when less than its 0.2 s bufferPadding of it
    is missing, so a segment whose closing part is shorter than that can be left without it (docs/hls.md). Audio
    (every part INDEPENDENT, H05's floor does not apply) must close each segment with a part > 0.2 s, and stay
    within one part of the leader's boundaries."""
    frame = 1024 / 48000
    for gop in (1.0, 1.5, 2.0, 0.96):
        s = Segmenter(0.25, 1.0, 2, aligned=True)
        boundaries = [gop * k for k in range(1, 12)]
        for b in boundaries:
            s.align_to(b)
        n = int(boundaries[-1] / frame)
        cuts = [s.decide(i * frame, True, frame) for i in range(n)]
        starts = [i for i, c in enumerate(cuts) if c is not Cut.NONE]
        seg_starts = [i for i in starts if cuts[i] is Cut.SEGMENT]
        lengths = {a: (b - a) * frame for a, b in zip(starts, starts[1:], strict=False)}
        assert max(lengths.values()) <= 0.25 + 1e-9  # H05
        closing = [lengths[a] for a, b in zip(starts, starts[1:], strict=False) if cuts[b] is Cut.SEGMENT]
        assert closing and min(closing) > 0.2 + frame / 2, (gop, closing)  # more than hls.js's bufferPadding
        for b, i in zip(boundaries, seg_starts[1:], strict=False):
            assert -frame / 2 - 1e-9 <= i * frame - b < 0.25, (gop, b, i * frame)  # within a part after the boundary


def _rendition(parts_per_segment=4, segments=3, part=0.25) -> Rendition:
    r = Rendition("video", "e1", target_duration=2, part_target=part, window=30)
    r.set_init(b"init")
    for m in range(segments):
        r.start_segment(m * parts_per_segment * part, 1000.0 + m)
        for i in range(parts_per_segment):
            r.add_part(b"p%d.%d" % (m, i), part, i == 0)
        r.end_segment(0)
    r.start_segment(segments * parts_per_segment * part, 2000.0)
    r.add_part(b"open", part, True)
    return r


def test_blocking_directives_h22_to_h29():
    r = _rendition()
    assert r.last_msn == 3 and r.last_part == 0
    q = parse_directives({"_HLS_msn": "3", "_HLS_part": "1"}, r.last_msn, r.last_part, 0.25, False)
    assert not satisfied(q, r.has_part, r.has_segment)  # H23: held
    q = parse_directives({"_HLS_msn": "3", "_HLS_part": "0"}, r.last_msn, r.last_part, 0.25, False)
    assert satisfied(q, r.has_part, r.has_segment)
    q = parse_directives({"_HLS_msn": "3"}, r.last_msn, r.last_part, 0.25, False)
    assert not satisfied(q, r.has_part, r.has_segment)  # H22: segment 3 is not complete yet
    assert satisfied(parse_directives({"_HLS_msn": "0"}, 3, 0, 0.25, False), r.has_part, r.has_segment)  # H25
    # H24: a part index past the end of a complete parent is part 0 of the next segment
    q = parse_directives({"_HLS_msn": "2", "_HLS_part": "9"}, r.last_msn, r.last_part, 0.25, False)
    assert satisfied(q, r.has_part, r.has_segment)
    q = parse_directives({"_HLS_msn": "3", "_HLS_part": "9"}, r.last_msn, r.last_part, 0.25, False)
    assert not satisfied(q, r.has_part, r.has_segment)
    with pytest.raises(BadDirective):  # H26
        parse_directives({"_HLS_part": "1"}, 3, 0, 0.25, False)
    with pytest.raises(BadDirective):  # H27: msn > last + 2
        parse_directives({"_HLS_msn": "6"}, 3, 0, 0.25, False)
    assert advance_part_limit(0.25) == 12 and advance_part_limit(1.0) == 3
    with pytest.raises(BadDirective):  # H27: more than the advance part limit ahead
        parse_directives({"_HLS_msn": "3", "_HLS_part": "13"}, 3, 0, 0.25, False)
    parse_directives({"_HLS_msn": "3", "_HLS_part": "12"}, 3, 0, 0.25, False)
    for bad in ({"_HLS_msn": "-1"}, {"_HLS_msn": "x"}, {"_HLS_skip": "NO"}):
        with pytest.raises(BadDirective):
            parse_directives(bad, 3, 0, 0.25, False)
    assert not parse_directives({"_HLS_msn": "99", "_HLS_skip": "YES"}, 3, 0, 0.25, True).blocking  # H29, H32


def _parse(text: str) -> m3u8.M3U8:
    return m3u8.loads(text)


def test_media_playlist_tags_validated_by_m3u8():
    r = _rendition(segments=3)
    r.discontinuity()
    r.end_segment(0)
    r.set_init(b"init2")
    r.start_segment(3.25, 3000.0)
    r.add_part(b"x", 0.25, True)
    other = Rendition("audio", "e1", 2, 0.25, 30)
    other.set_init(b"a")
    other.start_segment(0, 0)
    other.add_part(b"a", 0.2, True)
    text = render_media(r.view([other.report()]))
    p = _parse(text)
    assert text.startswith("#EXTM3U\n") and "\ufeff" not in text  # H14
    assert p.part_inf.part_target == 0.25  # H01
    sc = p.server_control
    assert sc.can_block_reload == "YES" and sc.part_hold_back >= 3 * 0.25  # H02
    assert sc.can_skip_until >= 6 * p.target_duration  # H04
    assert sc.hold_back is None  # H03: absent means 3 x TD
    parts = [pt for s in p.segments for pt in s.parts]
    assert all(pt.uri and pt.duration <= 0.25 for pt in parts)  # H05
    assert parts[0].independent == "YES"  # H06
    for seg in p.segments[:-1]:  # H09: parts sum to EXTINF
        if seg.parts:
            assert abs(sum(pt.duration for pt in seg.parts) - seg.duration) < 1e-3
    assert [bool(seg.parts) for seg in p.segments] == [False, False, True, True, True]  # the last PART_PARENTS
    assert p.preload_hint.hint_type == "PART" and p.preload_hint.uri == "video/e1/4.1.m4s"  # H10, H43
    assert [(x.uri, x.last_msn, x.last_part) for x in p.rendition_reports] == [("audio.m3u8", 0, 0)]  # H12, H44
    assert p.version >= 9  # H13
    lines = text.splitlines()
    disc = lines.index("#EXT-X-DISCONTINUITY")  # H08: before the new MAP, PDT and the first part
    assert lines[disc + 1].startswith('#EXT-X-MAP:URI="video/e1/init1.mp4"')
    assert lines[disc + 2].startswith("#EXT-X-PROGRAM-DATE-TIME:") and lines[disc + 3].startswith("#EXT-X-PART:")
    assert all(s.current_program_date_time is not None for s in p.segments if s.uri)  # H42
    assert text.count("#EXT-X-PROGRAM-DATE-TIME:") == len(p.segments)
    assert p.segment_map and p.segment_map[0].uri == "video/e1/init0.mp4"  # H38


def test_delta_update_h30():
    r = Rendition("video", "e1", 2, 0.25, 60)
    r.set_init(b"i")
    for m in range(20):
        r.start_segment(m * 1.0, 1000.0 + m)
        for i in range(4):
            r.add_part(b"p", 0.25, i == 0)
        r.end_segment(0)
    r.start_segment(20.0, 1020.0)
    r.add_part(b"p", 0.25, True)
    full = _parse(render_media(r.view()))
    text = render_media(r.view(), skip="YES")
    delta = _parse(text)
    assert text.count("#EXT-X-SKIP:") == 1  # H13
    assert delta.skip.skipped_segments == 20 - 12 + 0  # segments ending more than 12 s before the end
    first_uri = delta.segments[0].uri
    assert first_uri == f"video/e1/{full.media_sequence + delta.skip.skipped_segments}.m4s"
    assert "RECENTLY-REMOVED-DATERANGES" in render_media(r.view(), skip="v2")  # H31
    assert "#EXT-X-SKIP" not in render_media(r.view())


def test_window_and_media_sequence_h18_h19():
    r = Rendition("video", "e1", 2, 0.25, 6)
    r.set_init(b"i")
    seqs = []
    for m in range(30):
        r.start_segment(m * 1.0, 1000.0 + m)
        for i in range(4):
            r.add_part(b"p", 0.25, i == 0)
        r.end_segment(0)
        seqs.append(r.view().media_sequence)
    assert seqs == sorted(seqs) and seqs[-1] > 0  # H18: never decreases
    view = r.view()
    assert sum(s.duration for s in view.segments) >= 3 * 2  # H18: >= 3 x TD of media listed
    text = render_media(view)
    p = _parse(text)
    with_parts = [s for s in p.segments if s.parts]
    assert sum(s.duration for s in with_parts) <= 3 * 2 + 1  # H19: parts only for the last 3 TD
    removed = view.media_sequence - 1
    assert r.segment(removed) is not None and r.part(removed, 0) is not None  # H19: still servable


def test_multivariant_h33_h34():
    v = VideoVariant("video.m3u8", "avc1.42c01f", 640, 360, 30.0, 900_000, 800_000)
    a = AudioRendition("audio.m3u8", "mp4a.40.2", "aac", "audio", 2, 130_000, 128_000)
    text = render_multivariant([v], a)
    p = _parse(text)
    s = p.playlists[0].stream_info
    assert s.bandwidth == 1_030_000 and s.average_bandwidth == 928_000
    assert s.codecs == "avc1.42c01f,mp4a.40.2" and s.resolution == (640, 360) and s.frame_rate == 30.0
    assert s.audio == "aac" and p.media[0].group_id == "aac" and p.media[0].default == "YES"  # H34
    assert p.media[0].autoselect == "YES" and p.media[0].name == "audio"
    assert "#EXT-X-PART" not in text and "#EXT-X-TARGETDURATION" not in text  # H37
