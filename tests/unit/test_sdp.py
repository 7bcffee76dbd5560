"""SDP parsing, answer writing and trickle fragments (signaling.sdp)."""

from __future__ import annotations

import aiortc.sdp
import pytest
from aiortc import RTCPeerConnection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.offers import CHROME_OFFER, FFMPEG_OFFER, FINGERPRINT, edit, mutated_offer, sdp_text
from webrtc_cast.sdp import description as sdp
from webrtc_cast.sdp.description import (
    AnswerSection,
    Codec,
    SdpError,
    SendStream,
    TransportParams,
    parse,
    parse_trickle_fragment,
    write_answer,
)


async def aiortc_offer(*transceivers: tuple[str, str]) -> str:
    pc = RTCPeerConnection()
    try:
        for kind, direction in transceivers:
            pc.addTransceiver(kind, direction=direction)
        return (await pc.createOffer()).sdp
    finally:
        await pc.close()


# --- parse: real and realistic offers ----------------------------------------------------------------------
def test_parse_chrome_offer() -> None:
    offer = parse(CHROME_OFFER)
    assert offer.session_attr("group") == "BUNDLE 0 1"
    assert offer.session_attr("extmap-allow-mixed") == ""
    audio, video = offer.media
    assert (audio.kind, audio.mid, audio.direction, audio.port, audio.protocol) == (
        "audio", "0", "sendonly", 9, "UDP/TLS/RTP/SAVPF",
    )
    assert [c.payload_type for c in video.codecs] == [int(f) for f in video.formats]
    opus = audio.codec(111)
    assert opus is not None
    assert (opus.name, opus.key, opus.clock_rate, opus.channels) == ("opus", "OPUS", 48000, 2)
    assert opus.fmtp == {"minptime": "10", "useinbandfec": "1"}
    assert opus.feedback == ["transport-cc"]
    assert audio.codec(0) is not None and audio.codec(0).name == "PCMU"  # type: ignore[union-attr]
    assert audio.extmaps[4] == "urn:ietf:params:rtp-hdrext:sdes:mid"

    h264 = [c for c in video.codecs if c.key == "H264"]
    assert [(c.payload_type, c.fmtp["profile-level-id"], c.fmtp["packetization-mode"]) for c in h264] == [
        (102, "42001f", "1"),
        (104, "42001f", "0"),
        (106, "42e01f", "1"),
        (108, "42e01f", "0"),
        (127, "4d001f", "1"),
        (39, "4d001f", "0"),
        (112, "64001f", "1"),
    ]
    assert h264[0].feedback == ["goog-remb", "transport-cc", "ccm fir", "nack", "nack pli"]
    rtx = {c.payload_type: c.fmtp["apt"] for c in video.codecs if c.key == "RTX"}
    assert rtx == {97: "96", 103: "102", 105: "104", 107: "106", 109: "108", 125: "127", 40: "39", 113: "112",
                   99: "98", 46: "45", 115: "114"}
    assert {c.key for c in video.codecs} == {"VP8", "VP9", "AV1", "H264", "RTX", "RED", "ULPFEC"}
    assert video.codec(45).fmtp == {"level-idx": "5", "profile": "0", "tier": "0"}  # type: ignore[union-attr]
    assert video.extmaps[10] == "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
    assert video.extmaps[11] == "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
    # what aiortc's parser drops is kept here
    assert video.attrs("rid") == ["h send", "m send", "l send"]
    assert video.attr("simulcast") == "send h;m;l"
    assert video.attr("ssrc-group") == "FID 2882400001 2882400002"
    assert len(video.attrs("ssrc")) == 4
    assert offer.fingerprints(video) == [("sha-256", FINGERPRINT.split()[1])]
    assert offer.media_or_session(video, "ice-ufrag") == "EsAw"
    assert video.attrs("candidate") == []
    assert len(audio.attrs("candidate")) == 2


def test_parse_ffmpeg_offer() -> None:
    offer = parse(FFMPEG_OFFER)
    audio, video = offer.media
    assert audio.attr("setup") == "passive"
    assert [(c.payload_type, c.name) for c in video.codecs] == [(106, "H264"), (107, "rtx")]
    assert video.codecs[1].fmtp == {"apt": "106"}
    assert video.codecs[0].feedback == []
    assert video.attr("msid") == "FFmpeg video"
    assert not any(k == "candidate" for s in offer.media for k, _ in s.attributes)


@pytest.mark.parametrize("direction", ["sendonly", "recvonly", "sendrecv"])
async def test_parse_real_aiortc_offer(direction: str) -> None:
    text = await aiortc_offer(("audio", direction), ("video", direction))
    offer = parse(text)
    assert [s.kind for s in offer.media] == ["audio", "video"]
    assert all(s.direction == direction for s in offer.media)
    video = offer.media[1]
    names = [c.key for c in video.codecs]
    assert "VP8" in names and "H264" in names and "RTX" in names
    for c in video.codecs:
        if c.key == "RTX":
            assert video.codec(int(c.fmtp["apt"])) is not None
    for s in offer.media:
        fps = offer.fingerprints(s)
        assert fps and fps[0][0] == "sha-256"
        assert offer.media_or_session(s, "ice-pwd")


def test_parse_with_bare_newlines_and_blank_lines() -> None:
    text = "\n\n" + FFMPEG_OFFER.replace("\r\n", "\n") + "\n\n"
    offer = parse(text)
    assert len(offer.media) == 2


def test_session_level_attributes_apply_to_sections() -> None:
    text = edit(FFMPEG_OFFER, drop=("a=fingerprint", "a=ice-ufrag", "a=ice-pwd"))
    text = text.replace(
        "t=0 0\r\n",
        f"t=0 0\r\na=ice-ufrag:sess\r\na=ice-pwd:sesspwdsesspwdsesspwd12\r\na=fingerprint:{FINGERPRINT}\r\n",
    )
    offer = parse(text)
    assert offer.media_or_session(offer.media[0], "ice-ufrag") == "sess"
    assert offer.fingerprints(offer.media[1])[0][0] == "sha-256"


def test_wildcard_rtcp_fb_and_static_payload_types() -> None:
    text = (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
        "m=audio 9 RTP/AVP 0 8 9\r\na=rtcp-fb:* nack\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:97 H264/90000\r\n"
        "a=rtcp-fb:* nack pli\r\n"
        "a=fmtp:97 Packetization-Mode = 1 ; profile-level-id=42E01F;;\r\na=fmtp:55 apt=1\r\na=rtcp-fb:55 nack\r\n"
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=sctp-port:5000\r\n"
    )
    offer = parse(text)
    audio, video, app = offer.media
    assert [(c.name, c.clock_rate) for c in audio.codecs] == [("PCMU", 8000), ("PCMA", 8000), ("G722", 8000)]
    assert audio.codecs[0].feedback == []  # the wildcard only covers rtpmap'd codecs
    assert [c.feedback for c in video.codecs] == [["nack pli"], ["nack pli"]]
    assert video.codecs[1].fmtp == {"packetization-mode": "1", "profile-level-id": "42E01F"}
    assert app.codecs == [] and app.formats == ["webrtc-datachannel"]
    assert app.attr("sctp-port") == "5000"


def test_direction_default_is_sendrecv() -> None:
    offer = parse(edit(FFMPEG_OFFER, drop=("a=sendonly",)))
    assert offer.media[0].direction == "sendrecv"


def test_port_with_count_and_rejected_section() -> None:
    offer = parse(FFMPEG_OFFER.replace("m=audio 9 ", "m=audio 0 ").replace("m=video 9 ", "m=video 9/2 "))
    assert offer.media[0].port == 0
    assert offer.media[1].port == 9


def test_codec_fmtp_line() -> None:
    c = Codec(106, "H264", 90000, fmtp={"packetization-mode": "1", "profile-level-id": "42e01f", "flag": ""})
    assert c.fmtp_line() == "packetization-mode=1;profile-level-id=42e01f;flag"


# --- parse: malformed input ----------------------------------------------------------------------------------
_MINIMAL = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n"
)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \r\n  ",
        "o=- 1 1 IN IP4 0.0.0.0\r\nm=video 9 RTP/AVP 96\r\n",  # no v=0
        "v=1\r\n" + _MINIMAL[5:],
        _MINIMAL.replace("o=- 1 1 IN IP4 0.0.0.0\r\n", ""),  # no o=
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\n",  # no media
        _MINIMAL + "this is not sdp\r\n",
        _MINIMAL + "A=upper:case\r\n",
        _MINIMAL + "a\r\n",
        _MINIMAL.replace("m=video 9 UDP/TLS/RTP/SAVPF 96", "m=video 9"),
        _MINIMAL.replace("m=video 9 ", "m=video nine "),
        _MINIMAL.replace("m=video 9 UDP/TLS/RTP/SAVPF 96", "m=video 9 UDP/TLS/RTP/SAVPF 96 x"),
        _MINIMAL.replace("a=rtpmap:96 VP8/90000", "a=rtpmap:96 VP8"),
        _MINIMAL.replace("a=rtpmap:96 VP8/90000", "a=rtpmap:96 VP8/fast"),
        _MINIMAL.replace("a=rtpmap:96 VP8/90000", "a=rtpmap:x VP8/90000"),
        _MINIMAL.replace("a=rtpmap:96 VP8/90000", "a=rtpmap:96 opus/48000/two"),
        _MINIMAL.replace("a=rtpmap:96 VP8/90000", "a=rtpmap:200 VP8/90000"),
        _MINIMAL.replace("a=rtpmap:96 VP8/90000", "a=rtpmap:-1 VP8/90000"),
        _MINIMAL + "a=fmtp:abc apt=96\r\n",
        _MINIMAL + "a=rtcp-fb:abc nack\r\n",
        _MINIMAL + "a=extmap:one urn:x\r\n",
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n" + "a=x\r\n" * sdp.MAX_SDP_LINES + "m=video 9 RTP/AVP 96\r\n",
    ],
)
def test_parse_rejects_malformed(text: str) -> None:
    with pytest.raises(SdpError):
        parse(text)


def test_parse_rejects_non_text() -> None:
    with pytest.raises(SdpError):
        parse(None)  # type: ignore[arg-type]
    with pytest.raises(SdpError):
        parse(b"v=0")  # type: ignore[arg-type]


def test_bad_fingerprint_is_sdp_error() -> None:
    offer = parse(FFMPEG_OFFER.replace(f"a=fingerprint:{FINGERPRINT}", "a=fingerprint:sha-256"))
    with pytest.raises(SdpError):
        offer.fingerprints(offer.media[0])


def test_sdp_errors_are_value_errors_and_distinct() -> None:
    assert issubclass(SdpError, ValueError) and issubclass(sdp.SdpUnsupported, ValueError)
    assert not issubclass(sdp.SdpUnsupported, SdpError)


# --- fuzz: only SdpError ---------------------------------------------------------------------------------------
def _parse_all(text: str) -> None:
    try:
        offer = parse(text)
    except SdpError:
        return
    for section in offer.media:
        try:
            offer.fingerprints(section)
        except SdpError:
            pass
        assert section.direction in ("sendrecv", "sendonly", "recvonly", "inactive")
        assert all(0 <= c.payload_type <= 127 for c in section.codecs)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), sdp_text, sdp_text.map("v=0\no=x\n".__add__)))
def test_fuzz_random_text_raises_only_sdp_error(text: str) -> None:
    _parse_all(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_offer())
def test_fuzz_mutated_offers_raise_only_sdp_error(text: str) -> None:
    _parse_all(text)


# --- write_answer ---------------------------------------------------------------------------------------------
TRANSPORT = TransportParams(
    ice_ufrag="srvU",
    ice_pwd="srvpwdsrvpwdsrvpwdsrvpwd",
    fingerprint=FINGERPRINT.split()[1],
    setup="passive",
    candidates=[
        "1 1 udp 2130706431 10.0.0.5 40000 typ host",
        "2 1 udp 1694498815 203.0.113.9 40000 typ srflx raddr 10.0.0.5 rport 40000",
    ],
)


def _answer_sections() -> list[AnswerSection]:
    offer = parse(CHROME_OFFER + "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n")
    audio, video, app = offer.media
    opus = Codec(111, "opus", 48000, 2, {"minptime": "10", "useinbandfec": "1"})
    h264 = Codec(106, "H264", 90000, fmtp={"packetization-mode": "1", "profile-level-id": "42e01f"},
                 feedback=["nack", "nack pli", "ccm fir"])
    rtx = Codec(107, "rtx", 90000, fmtp={"apt": "106"})
    return [
        AnswerSection(audio, True, "sendonly", [opus], {4: "urn:ietf:params:rtp-hdrext:sdes:mid"},
                      SendStream("live", "live-audio", 1111, "cn")),
        AnswerSection(video, True, "sendonly", [h264, rtx], {}, SendStream("live", "live-video", 2222, "cn", 3333),
                      extra=["rid:h recv", "simulcast:recv h"]),
        AnswerSection(app, False),
    ]


def test_write_answer_structure() -> None:
    text = write_answer(42, TRANSPORT, _answer_sections())
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")
    lines = text.split("\r\n")
    assert lines[:4] == ["v=0", "o=- 42 2 IN IP4 127.0.0.1", "s=webrtc-cast", "t=0 0"]
    assert "a=group:BUNDLE 0 1" in lines
    answer = parse(text)
    audio, video, app = answer.media
    # candidates and the default address only in the first section
    assert (audio.port, audio.attrs("candidate")) == (40000, TRANSPORT.candidates)
    assert audio.attr("end-of-candidates") == ""
    assert "c=IN IP4 10.0.0.5" in lines
    assert video.port == 9 and video.attrs("candidate") == []
    for s in (audio, video):
        assert s.attr("ice-ufrag") == "srvU"
        assert s.attr("setup") == "passive"
        assert s.direction == "sendonly"
        assert s.attr("rtcp-mux") == "" and s.attr("rtcp-mux-only") == ""
        assert answer.fingerprints(s) == [("sha-256", TRANSPORT.fingerprint)]
    assert audio.codec(111).channels == 2  # type: ignore[union-attr]
    assert audio.extmaps == {4: "urn:ietf:params:rtp-hdrext:sdes:mid"}
    assert video.attr("rtcp-rsize") == "" and audio.attr("rtcp-rsize") is None
    assert [c.payload_type for c in video.codecs] == [106, 107]
    assert video.codec(106).feedback == ["nack", "nack pli", "ccm fir"]  # type: ignore[union-attr]
    assert video.codec(107).fmtp == {"apt": "106"}  # type: ignore[union-attr]
    assert video.attr("ssrc-group") == "FID 2222 3333"
    assert video.attrs("ssrc") == ["2222 cname:cn", "2222 msid:live live-video", "3333 cname:cn",
                                   "3333 msid:live live-video"]
    assert video.attr("msid") == "live live-video"
    assert video.attrs("rid") == ["h recv"] and video.attr("simulcast") == "recv h"
    assert audio.attr("ssrc-group") is None
    assert (app.port, app.mid, app.kind) == (0, "2", "application")


def test_write_answer_is_accepted_by_aiortc_parser() -> None:
    text = write_answer(1, TRANSPORT, _answer_sections())
    parsed = aiortc.sdp.SessionDescription.parse(text)
    assert [m.kind for m in parsed.media] == ["audio", "video", "application"]
    assert parsed.media[1].rtp.codecs[0].mimeType == "video/H264"
    assert parsed.media[0].ice.usernameFragment == "srvU"
    assert parsed.media[0].dtls.role == "server"


def test_write_answer_without_candidates_or_accepted_sections() -> None:
    transport = TransportParams("u", "p" * 22, "AA:BB", "active", [])
    sections = _answer_sections()
    text = write_answer(7, transport, sections[:2])
    assert "c=IN IP4 0.0.0.0" in text and "m=audio 9 " in text
    assert "a=end-of-candidates" in text
    none = write_answer(7, transport, [sections[2]])
    assert "a=group:BUNDLE" not in none
    assert "m=application 0 " in none


def test_write_answer_skips_unparseable_candidates_for_default_address() -> None:
    transport = TransportParams("u", "p" * 22, "AA:BB", "passive", ["short", "1 1 udp 1 10.1.1.1 notaport typ host",
                                                                     "1 1 udp 1 10.2.2.2 5000 typ host"])
    assert "m=audio 5000 " in write_answer(1, transport, _answer_sections()[:1])


# --- trickle fragments (RFC 8840) ------------------------------------------------------------------------------
def test_parse_trickle_fragment() -> None:
    frag = (
        "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\n"
        "a=candidate:1 1 udp 2130706431 192.0.2.1 50000 typ host\r\n"
        "a=candidate:2 1 udp 1694498815 198.51.100.7 50001 typ srflx raddr 192.0.2.1 rport 50000\r\n"
        "a=end-of-candidates\r\n"
    )
    ufrag, pwd, candidates, end = parse_trickle_fragment(frag)
    assert (ufrag, pwd, end) == ("EsAw", "P2uYro0UCOQ4zxjKXaWCBui1", True)
    assert candidates == [
        "1 1 udp 2130706431 192.0.2.1 50000 typ host",
        "2 1 udp 1694498815 198.51.100.7 50001 typ srflx raddr 192.0.2.1 rport 50000",
    ]


def test_parse_trickle_fragment_empty_and_partial() -> None:
    assert parse_trickle_fragment("") == (None, None, [], False)
    assert parse_trickle_fragment("a=end-of-candidates\n") == (None, None, [], True)


@pytest.mark.parametrize("frag", ["candidate:1 1 udp 1 1.2.3.4 5 typ host", "a=candidate\r\nnot a line", "x" * 70000])
def test_parse_trickle_fragment_rejects_malformed(frag: str) -> None:
    with pytest.raises(SdpError):
        parse_trickle_fragment(frag)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=200), sdp_text))
def test_fuzz_trickle_fragment_raises_only_sdp_error(text: str) -> None:
    try:
        ufrag, pwd, candidates, end = parse_trickle_fragment(text)
    except SdpError:
        return
    assert isinstance(candidates, list) and isinstance(end, bool)
