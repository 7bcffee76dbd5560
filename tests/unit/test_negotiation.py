"""WHIP/WHEP negotiation: offer validation, DTLS roles, codec plans (signaling.negotiation)."""

from __future__ import annotations

import pytest
from aiortc import RTCPeerConnection
from hypothesis import HealthCheck, given, settings

from tests.unit.offers import CHROME_OFFER, FFMPEG_OFFER, FINGERPRINT, chrome_viewer_offer, edit, mutated_offer
from webrtc_cast.sdp.description import Codec, SdpError, SdpUnsupported, TransportParams, parse, write_answer
from webrtc_cast.sdp.negotiation import dtls_setup, h264_profile, plan_publisher, plan_viewer, validate_offer

H264_CB = Codec(106, "H264", 90000, fmtp={"packetization-mode": "1", "profile-level-id": "42e01f"})
OPUS = Codec(111, "opus", 48000, 2)
VP8 = Codec(96, "VP8", 90000)

APP_SECTION = "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:2\r\n"


async def aiortc_offer(direction: str, kinds: tuple[str, ...] = ("audio", "video")) -> str:
    pc = RTCPeerConnection()
    try:
        for kind in kinds:
            pc.addTransceiver(kind, direction=direction)
        return (await pc.createOffer()).sdp
    finally:
        await pc.close()


def live_h264(profile: str) -> Codec:
    return Codec(100, "H264", 90000, fmtp={"packetization-mode": "1", "profile-level-id": profile})


def video_plan(planned: list) -> tuple:
    return next((a, p) for a, p in planned if p is not None and p.kind == "video")


# --- validate_offer ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [CHROME_OFFER, FFMPEG_OFFER, chrome_viewer_offer(), CHROME_OFFER + APP_SECTION])
def test_valid_offers(text: str) -> None:
    validate_offer(parse(text))


async def test_aiortc_offers_are_valid() -> None:
    for direction in ("sendonly", "recvonly", "sendrecv"):
        validate_offer(parse(await aiortc_offer(direction)))
    validate_offer(parse(await aiortc_offer("sendonly", ("video",))))


@pytest.mark.parametrize("drop", ["a=ice-ufrag", "a=ice-pwd", "a=fingerprint", "a=mid"])
def test_missing_transport_attributes_are_400(drop: str) -> None:
    with pytest.raises(SdpError):
        validate_offer(parse(edit(FFMPEG_OFFER, drop=(drop,))))


def test_malformed_fingerprint_is_400() -> None:
    with pytest.raises(SdpError):
        validate_offer(parse(FFMPEG_OFFER.replace(FINGERPRINT, "sha-256")))


def test_two_video_tracks_are_422() -> None:
    video = FFMPEG_OFFER[FFMPEG_OFFER.index("m=video") :].replace("a=mid:1", "a=mid:2")
    with pytest.raises(SdpUnsupported, match="at most one"):
        validate_offer(parse(FFMPEG_OFFER + video))


def test_second_video_section_with_port_zero_is_fine() -> None:
    video = FFMPEG_OFFER[FFMPEG_OFFER.index("m=video") :].replace("a=mid:1", "a=mid:2")
    video = video.replace("m=video 9", "m=video 0")
    validate_offer(parse(FFMPEG_OFFER + video))


def test_two_media_streams_are_422() -> None:
    text = FFMPEG_OFFER.replace("a=msid:FFmpeg video", "a=msid:Other video")
    with pytest.raises(SdpUnsupported, match="one MediaStream"):
        validate_offer(parse(text))


def test_msid_dash_is_no_stream() -> None:
    validate_offer(parse(FFMPEG_OFFER.replace("a=msid:FFmpeg video", "a=msid:- video")))


def test_blank_msid_is_not_a_crash() -> None:
    """Regression: ``a=msid: `` (blank) raised IndexError instead of being treated as no stream id."""
    validate_offer(parse(FFMPEG_OFFER.replace("a=msid:FFmpeg video", "a=msid: ")))


def test_offer_without_audio_or_video_is_422() -> None:
    text = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n" + APP_SECTION
    with pytest.raises(SdpUnsupported):
        validate_offer(parse(text))


def test_session_level_ice_and_fingerprint_are_enough() -> None:
    text = edit(FFMPEG_OFFER, drop=("a=fingerprint", "a=ice-ufrag", "a=ice-pwd"))
    session = f"a=ice-ufrag:u\r\na=ice-pwd:pwdpwdpwdpwdpwdpwdpwd12\r\na=fingerprint:{FINGERPRINT}\r\n"
    text = text.replace("t=0 0\r\n", "t=0 0\r\n" + session)
    validate_offer(parse(text))


# --- dtls_setup ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("offer_setup", "expected"),
    [("actpass", ("passive", "server")), ("active", ("passive", "server")), ("passive", ("active", "client")),
     ("ACTPASS", ("passive", "server"))],
)
def test_dtls_setup(offer_setup: str, expected: tuple[str, str]) -> None:
    text = FFMPEG_OFFER.replace("a=setup:passive", f"a=setup:{offer_setup}")
    assert dtls_setup(parse(text)) == expected


def test_dtls_setup_ffmpeg_is_passive_so_we_are_client() -> None:
    assert dtls_setup(parse(FFMPEG_OFFER)) == ("active", "client")


def test_dtls_setup_missing_defaults_to_actpass() -> None:
    assert dtls_setup(parse(edit(FFMPEG_OFFER, drop=("a=setup",)))) == ("passive", "server")


def test_dtls_setup_session_level() -> None:
    text = edit(FFMPEG_OFFER, drop=("a=setup",)).replace("t=0 0\r\n", "t=0 0\r\na=setup:passive\r\n")
    assert dtls_setup(parse(text)) == ("active", "client")


def test_dtls_setup_holdconn_is_400() -> None:
    with pytest.raises(SdpError):
        dtls_setup(parse(FFMPEG_OFFER.replace("a=setup:passive", "a=setup:holdconn")))


# --- plan_publisher (WHIP) ----------------------------------------------------------------------------------------
def test_publisher_chrome_prefers_constrained_baseline_h264_packetization_mode_1() -> None:
    planned = plan_publisher(parse(CHROME_OFFER + APP_SECTION))
    assert [a.accepted for a, _ in planned] == [True, True, False]
    (audio_answer, audio_plan), (video_answer, plan) = planned[0], planned[1]
    assert audio_plan.codec.key == "OPUS" and audio_plan.codec.payload_type == 111
    assert audio_answer.direction == "recvonly" and audio_plan.feedback == set()
    assert plan.codec.payload_type == 106
    assert h264_profile(plan.codec) == "42e01f"
    assert plan.payload_types == {"H264": 106}
    # one codec plus its RTX: the browser's probe padding then rides the RTX stream, which is not forwarded
    assert plan.rtx_payload_types == {106: 107}
    assert [c.payload_type for c in video_answer.codecs] == [106, 107]
    # goog-remb is kept: the server sends REMB so the publisher ramps up; transport-cc is filtered out
    assert plan.feedback == {"nack", "nack pli", "ccm fir", "goog-remb"}
    assert plan.ssrcs == [2882400001, 2882400002]
    assert plan.mid == "1" and plan.kind == "video"


def test_publisher_preference_order_setting() -> None:
    plan = video_plan(plan_publisher(parse(CHROME_OFFER), ("VP8", "H264")))[1]
    assert plan.codec.key == "VP8" and plan.codec.payload_type == 96


def test_publisher_plan_does_not_alias_the_offer() -> None:
    offer = parse(CHROME_OFFER)
    plan = video_plan(plan_publisher(offer))[1]
    plan.codec.feedback.clear()
    assert offer.media[1].codec(106).feedback  # type: ignore[union-attr]


def test_publisher_ffmpeg() -> None:
    planned = plan_publisher(parse(FFMPEG_OFFER))
    video_answer, plan = video_plan(planned)
    assert plan.codec.payload_type == 106 and plan.codec.fmtp["packetization-mode"] == "1"
    assert plan.ssrcs == [1382364117, 1937007463]
    assert planned[0][1].codec.key == "OPUS"


def test_publisher_other_h264_profile_when_no_constrained_baseline() -> None:
    text = edit(CHROME_OFFER, drop=("a=fmtp:102 ", "a=fmtp:106 "))  # those default to packetization-mode 0
    plan = video_plan(plan_publisher(parse(text)))[1]
    assert plan.codec.payload_type == 127 and h264_profile(plan.codec) == "4d001f"


async def test_publisher_aiortc_offer() -> None:
    planned = plan_publisher(parse(await aiortc_offer("sendonly")))
    plan = video_plan(planned)[1]
    assert plan.codec.key == "H264" and h264_profile(plan.codec) == "42e01f"


def test_publisher_packetization_mode_0_only_is_422() -> None:
    text = FFMPEG_OFFER.replace("packetization-mode=1", "packetization-mode=0")
    with pytest.raises(SdpUnsupported, match="no supported video codec"):
        plan_publisher(parse(text))


def test_publisher_vp9_av1_only_is_422_naming_them() -> None:
    text = FFMPEG_OFFER.replace("a=rtpmap:106 H264/90000", "a=rtpmap:106 VP9/90000").replace(
        "m=video 9 UDP/TLS/RTP/SAVPF 106 107", "m=video 9 UDP/TLS/RTP/SAVPF 106 107 45"
    ) + "a=rtpmap:45 AV1/90000\r\n"
    with pytest.raises(SdpUnsupported, match="AV1, VP9, rtx"):
        plan_publisher(parse(text))


def test_publisher_audio_needs_opus_48k() -> None:
    text = FFMPEG_OFFER.replace("a=rtpmap:111 opus/48000/2", "a=rtpmap:111 PCMU/8000")
    with pytest.raises(SdpUnsupported, match="audio"):
        plan_publisher(parse(text))


@pytest.mark.parametrize("direction", ["recvonly", "inactive"])
def test_publisher_must_send(direction: str) -> None:
    with pytest.raises(SdpUnsupported, match="sendonly or sendrecv"):
        plan_publisher(parse(FFMPEG_OFFER.replace("a=sendonly", f"a={direction}")))


def test_publisher_rejected_section_is_answered_rejected() -> None:
    planned = plan_publisher(parse(FFMPEG_OFFER.replace("m=audio 9 ", "m=audio 0 ")))
    assert planned[0][0].accepted is False and planned[0][1] is None
    assert planned[1][1] is not None


def test_publisher_blank_ssrc_attribute_is_not_a_crash() -> None:
    """Regression: ``a=ssrc:`` with nothing after it raised IndexError (a 500) instead of being skipped."""
    text = FFMPEG_OFFER.replace("a=ssrc:1382364117 cname:FFmpeg", "a=ssrc:")
    plan = video_plan(plan_publisher(parse(text)))[1]
    assert plan.ssrcs == [1382364117, 1937007463]


def test_publisher_non_numeric_ssrc_is_skipped() -> None:
    text = FFMPEG_OFFER.replace("a=ssrc:1382364117 cname:FFmpeg", "a=ssrc:abc cname:x")
    assert video_plan(plan_publisher(parse(text)))[1].ssrcs == [1382364117, 1937007463]


# --- plan_viewer (WHEP) ---------------------------------------------------------------------------------------------
def test_viewer_not_live_gets_one_entry_per_supported_codec() -> None:
    planned = plan_viewer(parse(chrome_viewer_offer()), {})
    answer, plan = video_plan(planned)
    assert answer.direction == "sendonly"
    assert [(c.payload_type, c.name) for c in answer.codecs] == [(96, "VP8"), (97, "rtx"), (106, "H264"), (107, "rtx")]
    assert plan.payload_types == {"VP8": 96, "H264": 106}
    assert plan.rtx_payload_types == {96: 97, 106: 107}
    assert plan.codec.key == "VP8"
    # REMB (goog-remb with the offer's abs-send-time id) drives automatic layer choice; transport-cc is not answered
    assert all(fb in ("nack", "nack pli", "ccm fir", "goog-remb") for c in answer.codecs for fb in c.feedback)
    assert "goog-remb" in answer.codecs[0].feedback
    assert answer.extmaps == {2: "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"}
    assert plan.abs_send_time_id == 2
    audio_answer, audio_plan = planned[0]
    assert audio_plan.payload_types == {"OPUS": 111} and audio_answer.codecs[0].feedback == []


@pytest.mark.parametrize(
    ("live_profile", "pt"),
    [
        ("42e01f", 106),  # exact profile and constraint flags
        ("42e034", 106),  # level differs: still matched on profile_idc + flags
        ("42001f", 102),
        ("4d001f", 127),
        ("64001f", 112),
        ("42c01f", 102),  # no exact flags: same profile_idc, first one offered
        ("4d0029", 127),
        ("640c2a", 112),
        ("f4001f", 102),  # nothing alike: the first H264 offered (packetization-mode 1)
    ],
)
def test_viewer_h264_profile_matching(live_profile: str, pt: int) -> None:
    answer, plan = video_plan(plan_viewer(parse(chrome_viewer_offer()), {"video": live_h264(live_profile)}))
    assert plan.codec.payload_type == pt
    assert plan.payload_types["H264"] == pt
    assert plan.rtx_payload_types[pt] == {102: 103, 106: 107, 127: 125, 112: 113}[pt]
    assert answer.codecs[0].payload_type == pt
    assert answer.codecs[0].fmtp["packetization-mode"] == "1"
    assert sum(c.key == "H264" for c in answer.codecs) == 1
    assert "VP8" in plan.payload_types  # kept for a publisher returning with another codec


def test_viewer_live_vp8() -> None:
    answer, plan = video_plan(plan_viewer(parse(chrome_viewer_offer()), {"video": VP8, "audio": OPUS}))
    assert plan.codec.key == "VP8"
    assert [c.payload_type for c in answer.codecs][:2] == [96, 97]
    assert plan.rtx_payload_types[96] == 97


def test_viewer_rtx_only_with_nack() -> None:
    text = edit(chrome_viewer_offer(), drop=("a=rtcp-fb:106 nack",))
    answer, plan = video_plan(plan_viewer(parse(text), {"video": H264_CB}))
    assert 106 not in plan.rtx_payload_types
    assert 107 not in [c.payload_type for c in answer.codecs]
    assert plan.rtx_payload_types.get(96) == 97


def test_viewer_h264_without_rtx() -> None:
    text = edit(chrome_viewer_offer(), drop=("a=fmtp:107 ",))
    answer, plan = video_plan(plan_viewer(parse(text), {"video": H264_CB}))
    assert plan.codec.payload_type == 106 and 106 not in plan.rtx_payload_types


def test_viewer_ffmpeg_style_recvonly_offer() -> None:
    text = FFMPEG_OFFER.replace("a=sendonly", "a=recvonly")
    answer, plan = video_plan(plan_viewer(parse(text), {"video": H264_CB, "audio": OPUS}))
    assert plan.codec.payload_type == 106
    assert plan.rtx_payload_types == {}  # FFmpeg offers no nack feedback


async def test_viewer_aiortc_offer() -> None:
    planned = plan_viewer(parse(await aiortc_offer("recvonly")), {"video": H264_CB, "audio": OPUS})
    answer, plan = video_plan(planned)
    offer = parse(await aiortc_offer("recvonly"))
    chosen = offer.media[1].codec(plan.codec.payload_type)
    assert chosen is not None and h264_profile(chosen) == "42e01f"
    rtx_pt = plan.rtx_payload_types[plan.codec.payload_type]
    rtx = offer.media[1].codec(rtx_pt)
    assert rtx is not None and rtx.fmtp["apt"] == str(plan.codec.payload_type)


def test_viewer_without_the_live_codec_is_422() -> None:
    text = edit(chrome_viewer_offer(), drop=tuple(f"a=rtpmap:{pt} H264" for pt in (102, 104, 106, 108, 127, 39, 112)))
    with pytest.raises(SdpUnsupported, match="profile-level-id 42e01f"):
        plan_viewer(parse(text), {"video": H264_CB})


def test_viewer_with_only_packetization_mode_0_is_422() -> None:
    text = chrome_viewer_offer().replace("packetization-mode=1", "packetization-mode=0")
    with pytest.raises(SdpUnsupported, match="H264"):
        plan_viewer(parse(text), {"video": H264_CB})


def test_viewer_audio_codec_mismatch_is_422() -> None:
    with pytest.raises(SdpUnsupported, match="audio"):
        plan_viewer(parse(chrome_viewer_offer()), {"audio": Codec(0, "PCMU", 8000)})


def test_viewer_nothing_supported_is_422() -> None:
    text = FFMPEG_OFFER.replace("a=sendonly", "a=recvonly").replace("a=rtpmap:106 H264/90000", "a=rtpmap:106 VP9/90000")
    with pytest.raises(SdpUnsupported, match="no supported video codec"):
        plan_viewer(parse(text), {})


@pytest.mark.parametrize("direction", ["sendonly", "inactive"])
def test_viewer_must_receive(direction: str) -> None:
    with pytest.raises(SdpUnsupported, match="recvonly or sendrecv"):
        plan_viewer(parse(chrome_viewer_offer().replace("a=recvonly", f"a={direction}")), {})


def test_viewer_sendrecv_is_accepted() -> None:
    planned = plan_viewer(parse(chrome_viewer_offer().replace("a=recvonly", "a=sendrecv")), {"video": H264_CB})
    assert video_plan(planned)[0].direction == "sendonly"


def test_viewer_answer_round_trip() -> None:
    """The planned answer, written out, offers exactly the planned payload types."""
    offer = parse(chrome_viewer_offer() + APP_SECTION)
    planned = plan_viewer(offer, {"video": live_h264("64001f"), "audio": OPUS})
    transport = TransportParams("u", "p" * 22, FINGERPRINT.split()[1], dtls_setup(offer)[0], [])
    answer = parse(write_answer(1, transport, [a for a, _ in planned]))
    assert [s.port != 0 for s in answer.media] == [True, True, False]
    video = answer.media[1]
    assert video.direction == "sendonly"
    assert video.codecs[0].payload_type == 112 and video.codecs[0].fmtp["profile-level-id"] == "64001f"
    assert video.codec(113).fmtp == {"apt": "112"}  # type: ignore[union-attr]


# --- fuzz: only 400/422 -------------------------------------------------------------------------------------------
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_offer())
def test_fuzz_negotiation_raises_only_sdp_errors(text: str) -> None:
    """Any damaged offer ends in SdpError (400) or SdpUnsupported (422) — never another exception (a 500)."""
    try:
        offer = parse(text)
        validate_offer(offer)
        setup, _ = dtls_setup(offer)
        transport = TransportParams("u", "p" * 22, "AA:BB", setup, [])
        for planned in (
            plan_publisher(offer),
            plan_viewer(offer, {}),
            plan_viewer(offer, {"video": H264_CB, "audio": OPUS}),
            plan_viewer(offer, {"video": VP8}),
        ):
            parse(write_answer(1, transport, [a for a, _ in planned]))
    except (SdpError, SdpUnsupported):
        pass


def test_viewer_without_abs_send_time_gets_no_remb() -> None:
    """REMB without abs-send-time would be an estimate from RTP timestamps alone; we answer neither."""
    offer = "\n".join(x for x in chrome_viewer_offer().splitlines() if "abs-send-time" not in x) + "\n"
    answer, plan = video_plan(plan_viewer(parse(offer), {}))
    assert not any("goog-remb" in c.feedback for c in answer.codecs)
    assert answer.extmaps == {} and plan.abs_send_time_id is None
