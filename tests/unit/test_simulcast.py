"""Simulcast: negotiation (RFC 8853, legacy SIM), routing by rid, and layer switches only at keyframes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.offers import CHROME_OFFER, edit
from webrtc_cast.rtp.header import build
from webrtc_cast.sdp import description as sdp
from webrtc_cast.sdp import negotiation
from webrtc_cast.sdp import simulcast as sim
from webrtc_cast.sdp.description import Codec
from webrtc_cast.sfu_tree.broadcast import Broadcast, PublishedTrack
from webrtc_cast.sfu_tree.forwarder import Forwarder

SPS_STAP_A = bytes([24, 0, 4, 0x67, 0x42, 0xE0, 0x1F, 0, 4, 0x68, 0xCE, 0x3C, 0x80, 0, 2, 0x65, 0x88])
P_FRAME = bytes([0x41, 0x9A, 0x00, 0x11])


def video_section(offer: str) -> sdp.MediaSection:
    return next(m for m in sdp.parse(offer).media if m.kind == "video")


def test_w16_chrome_rid_offer_is_answered_with_recv_rids_and_simulcast():
    planned = negotiation.plan_publisher(sdp.parse(CHROME_OFFER))
    answer, plan = next((a, p) for a, p in planned if p is not None and p.kind == "video")
    assert plan.simulcast is not None and plan.simulcast.rids == ["h", "m", "l"]
    assert answer.extra == ["rid:h recv", "rid:m recv", "rid:l recv", "simulcast:recv h;m;l"]
    assert answer.extmaps[10] == sim.RID_URI and answer.extmaps[11] == sim.REPAIRED_RID_URI
    assert answer.extmaps[4] == sim.MID_URI
    text = sdp.write_answer(1, sdp.TransportParams("u", "p" * 22, "AA:BB", "passive", []), [a for a, _ in planned])
    assert "a=simulcast:recv h;m;l" in text and "a=rid:l recv" in text


def test_more_than_three_layers_keeps_three_and_names_the_rest():
    offer = edit(CHROME_OFFER, replace={"a=simulcast:send h;m;l": "a=simulcast:send h;m;l;x"})
    offer = offer.replace("a=rid:l send", "a=rid:l send\r\na=rid:x send")
    plan = sim.parse(video_section(offer))
    assert plan.rids == ["h", "m", "l"] and plan.ignored == ["x"]


def test_paused_rids_are_accepted():
    offer = edit(CHROME_OFFER, replace={"a=simulcast:send h;m;l": "a=simulcast:send h;~m;l"})
    assert sim.parse(video_section(offer)).rids == ["h", "m", "l"]


@pytest.mark.parametrize(
    "bad",
    ["a=simulcast:recv h;m;l", "a=simulcast:send h;m;zz", "a=simulcast:send h;m;" + "x" * 40, "a=simulcast:send"],
)
def test_bad_simulcast_lines_are_sdp_errors(bad):
    offer = edit(CHROME_OFFER, replace={"a=simulcast:send h;m;l": bad})
    with pytest.raises(sdp.SdpError):
        sim.parse(video_section(offer))


def test_rid_simulcast_without_the_rid_extension_is_refused():
    offer = edit(CHROME_OFFER, drop=("a=extmap:10 ",))
    with pytest.raises(sdp.SdpError):
        sim.parse(video_section(offer))


def test_legacy_sim_group():
    offer = edit(CHROME_OFFER, drop=("a=rid:", "a=simulcast:"))
    offer = offer.replace("a=ssrc-group:FID", "a=ssrc-group:SIM 11 22 33\r\na=ssrc-group:FID")
    plan = sim.parse(video_section(offer))
    assert plan.legacy_ssrcs == [11, 22, 33] and plan.rid_ext_id is None and plan.answer_lines() == []


def test_one_layer_offer_has_no_simulcast():
    offer = edit(CHROME_OFFER, drop=("a=rid:", "a=simulcast:"))
    assert sim.parse(video_section(offer)) is None


# --- routing and switching ---------------------------------------------------------------------------------
H264 = Codec(102, "H264", 90000, fmtp={"packetization-mode": "1"})
RID_EXT = 10


def rid_packet(rid: str, ssrc: int, seq: int, ts: int, payload: bytes, with_rid: bool = True) -> bytes:
    body = build(102, seq, ts, ssrc, payload)
    if not with_rid:
        return body
    value = rid.encode()
    ext = bytes([(RID_EXT << 4) | (len(value) - 1)]) + value
    ext += b"\x00" * (-len(ext) % 4)
    header = bytearray(body[:12])
    header[0] |= 0x10
    return bytes(header) + b"\xbe\xde" + (len(ext) // 4).to_bytes(2, "big") + ext + body[12:]


class Out:
    def __init__(self) -> None:
        self.sent: list[tuple[int, int, int]] = []  # (seq, ts, payload first byte)
        self.headers: list[tuple[int, bytes]] = []  # (first byte, extension block)

    def __call__(self, payload, b0, b1, seq, ts, ssrc, ext) -> bool:  # noqa: ANN001
        self.sent.append((seq, ts, bytes(payload)[0]))
        self.headers.append((b0, ext))
        return True


def simulcast_broadcast() -> Broadcast:
    b = Broadcast("s")
    b.attach_publisher("p", [PublishedTrack("video", H264, rids=["l", "m", "h"], rid_ext_id=RID_EXT)])
    return b


def viewer(b: Broadcast, rid: str | None = None) -> tuple[Forwarder, Out]:
    fwd = Forwarder("video", 90000, 5, {"H264": 96})
    fwd.pinned_rid = rid
    out = Out()
    fwd.sink = out
    b.add_forwarder(fwd, 0.0)
    return fwd, out


def test_packets_route_to_layers_by_rid_and_later_packets_by_ssrc():
    b = simulcast_broadcast()
    for rid, ssrc in (("l", 1), ("m", 2), ("h", 3)):
        b.on_rtp(rid_packet(rid, ssrc, 10, 0, SPS_STAP_A), 0.0)
        b.on_rtp(rid_packet(rid, ssrc, 11, 0, P_FRAME, with_rid=False), 0.0)  # rid only on the first packets
    assert {k: t.buffer.packets for k, t in b.tracks.items()} == {"video/l": 2, "video/m": 2, "video/h": 2}
    assert b.on_rtp(rid_packet("zz", 9, 1, 0, P_FRAME), 0.0) == 0 and b.unroutable == 1


def test_a_pinned_viewer_gets_only_its_layer():
    b = simulcast_broadcast()
    fwd, out = viewer(b, "m")
    for i, (rid, ssrc) in enumerate((("l", 1), ("m", 2), ("h", 3)) * 3):
        b.on_rtp(rid_packet(rid, ssrc, 100 + i // 3, 3000 * i, SPS_STAP_A if i < 3 else P_FRAME), 0.0)
    assert fwd.current_layer == "video/m" and len(out.sent) == 3
    assert [s for s, _, _ in out.sent] == [(out.sent[0][0] + k) & 0xFFFF for k in range(3)]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("lmh"), st.booleans(), st.sampled_from([None, "l", "m", "h"])),
                min_size=1, max_size=120))
def test_switches_happen_only_at_target_keyframes_with_continuous_output(steps):
    """DESIGN.md §4: +1 sequence numbers per forwarded packet, timestamps never back, switch only at a keyframe."""
    b = simulcast_broadcast()
    fwd, out = viewer(b, "l")
    seqs = {"l": 1000, "m": 30000, "h": 65500}
    ssrcs = {"l": 1, "m": 2, "h": 3}
    for i, (rid, keyframe, new_choice) in enumerate(steps):
        if new_choice is not None and new_choice != fwd.pinned_rid:
            fwd.pinned_rid = new_choice
            b.reselect(fwd, float(i))
        before_layer = fwd.current_layer
        seqs[rid] = (seqs[rid] + 1) & 0xFFFF
        n = len(out.sent)
        b.on_rtp(rid_packet(rid, ssrcs[rid], seqs[rid], 3000 * i, SPS_STAP_A if keyframe else P_FRAME), i / 30)
        if fwd.current_layer != before_layer:
            assert keyframe and fwd.current_layer == f"video/{rid}"  # only a keyframe of the target switches
        if len(out.sent) > n:
            assert fwd.current_layer == f"video/{rid}"  # only the current layer is forwarded
    for (s1, t1, _), (s2, t2, _) in zip(out.sent, out.sent[1:], strict=False):
        assert (s2 - s1) & 0xFFFF == 1
        assert ((t2 - t1) & 0xFFFFFFFF) < 0x80000000
    # a viewer is subscribed to at most its current and its target layer
    subscribed = [t.key for t in b.tracks.values() if fwd in t.forwarders]
    assert set(subscribed) <= {fwd.current_layer, fwd.target_layer} and fwd.target_layer in subscribed


def test_automatic_choice_is_the_best_layer_under_the_caps():
    b = simulcast_broadcast()
    for key, (w, h) in {"video/l": (320, 180), "video/m": (640, 360), "video/h": (1280, 720)}.items():
        b.tracks[key].width, b.tracks[key].height = w, h
    fwd, _ = viewer(b)
    assert fwd.target_layer == "video/h"
    fwd.max_height = 400
    b.reselect(fwd, 1.0)
    assert fwd.target_layer == "video/m"
    fwd.max_height, fwd.layer_cap = None, 2
    b.reselect(fwd, 2.0)
    assert fwd.target_layer == "video/l"


def test_a_layer_choice_before_the_viewer_is_connected_waits_for_attachment():
    """A WHEP layer POST right after the 201 (DTLS not up yet) must not subscribe a forwarder that cannot send."""
    b = simulcast_broadcast()
    fwd = Forwarder("video", 90000, 5, {"H264": 96})  # created for the session, not attached, no sink yet
    fwd.pinned_rid = "l"
    b.reselect(fwd, 0.0)
    assert all(fwd not in t.forwarders for t in b.tracks.values())
    assert b.on_rtp(rid_packet("l", 1, 10, 0, SPS_STAP_A), 0.0) == 0  # and the publisher's packets still flow
    out = Out()
    fwd.sink = out
    b.add_forwarder(fwd, 0.0)
    b.on_rtp(rid_packet("l", 1, 11, 3000, SPS_STAP_A), 0.1)
    assert fwd.current_layer == "video/l" and len(out.sent) == 1


def test_viewers_that_negotiated_abs_send_time_get_our_send_time_in_their_extension_id():
    """Chrome's receive-side estimator (REMB) needs abs-send-time on every video packet; others get no block."""
    b = simulcast_broadcast()
    stamped, stamped_out = viewer(b, "h")
    stamped.abs_send_time_id = 3
    plain, plain_out = viewer(b, "h")
    other, other_out = viewer(b, "h")
    other.abs_send_time_id = 5  # another browser's id: its own block, same time
    for i, now in enumerate((10.0, 10.5)):
        b.on_rtp(rid_packet("h", 3, 100 + i, 3000 * i, SPS_STAP_A if i == 0 else P_FRAME), now)
    assert [ext for _, ext in plain_out.headers] == [b"", b""]
    assert all(b0 & 0x10 == 0 for b0, _ in plain_out.headers)
    times = []
    for b0, ext in stamped_out.headers:
        assert b0 & 0x10 and ext[:4] == bytes.fromhex("bede0001") and ext[4] == (3 << 4) | 2 and len(ext) == 8
        times.append(int.from_bytes(ext[5:8], "big"))
    assert times == [int(10.0 * 2**18) & 0xFFFFFF, int(10.5 * 2**18) & 0xFFFFFF]  # 6.18 fixed-point seconds
    assert [ext[4] for _, ext in other_out.headers] == [(5 << 4) | 2] * 2
    assert [ext[5:] for _, ext in other_out.headers] == [ext[5:] for _, ext in stamped_out.headers]
