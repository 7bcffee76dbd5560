"""Codec and section choices for WHIP (ingest) and WHEP (egress) answers — pure.

Media is forwarded, never transcoded, so a viewer must take the publisher's codec. Payload types are the
offerer's: each WHEP viewer gets its own payload-type map, and the Forwarder rewrites packets into it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from webrtc_cast.sdp import simulcast as simulcast_sdp
from webrtc_cast.sdp.description import AnswerSection, Codec, MediaSection, SdpError, SdpUnsupported, SessionDescription
from webrtc_cast.sdp.simulcast import ABS_SEND_TIME_URI, SimulcastPlan

SUPPORTED_VIDEO = ("H264", "VP8")
SUPPORTED_AUDIO = ("OPUS",)
VIDEO_FEEDBACK = ("nack", "nack pli", "ccm fir")
PUBLISHER_VIDEO_FEEDBACK = (*VIDEO_FEEDBACK, "goog-remb")  # REMB tells the publisher how much we take


@dataclass(slots=True)
class MediaPlan:
    """What one accepted m-section carries."""

    kind: str
    mid: str
    codec: Codec  # primary codec (publisher) or the first codec (viewer)
    payload_types: dict[str, int] = field(default_factory=dict)  # codec key -> PT (viewer side)
    rtx_payload_types: dict[int, int] = field(default_factory=dict)  # media PT -> its RTX PT
    feedback: set[str] = field(default_factory=set)
    ssrcs: list[int] = field(default_factory=list)  # ssrcs announced in the offer (publisher)
    simulcast: SimulcastPlan | None = None  # publisher video sending several layers
    abs_send_time_id: int | None = None  # negotiated abs-send-time extension id


def h264_profile(codec: Codec) -> str:
    return codec.fmtp.get("profile-level-id", "42e01f").lower()


def _h264_ok(codec: Codec) -> bool:
    return codec.fmtp.get("packetization-mode", "0") == "1"


def _supported(codec: Codec, kind: str) -> bool:
    if kind == "audio":
        return codec.key in SUPPORTED_AUDIO and codec.clock_rate == 48000
    if codec.key == "H264":
        return _h264_ok(codec)
    return codec.key in SUPPORTED_VIDEO


def in_use(offer: SessionDescription, section: MediaSection) -> bool:
    """Whether an offered section is meant to carry media: a non-zero port, or port 0 with ``a=bundle-only``
    inside the offer's BUNDLE group (RFC 8843 §7.3.3; GStreamer webrtcbin offers its audio that way)."""
    if section.port != 0:
        return True
    if section.attr("bundle-only") is None or section.mid is None:
        return False
    group = (offer.session_attr("group") or "").split()
    return bool(group) and group[0] == "BUNDLE" and section.mid in group[1:]


def validate_offer(offer: SessionDescription) -> None:
    """RFC 9725 §4.4: one MediaStream, at most one audio and one video track; ICE and DTLS present."""
    counts = {"audio": 0, "video": 0}
    msids: set[str] = set()
    for section in offer.media:
        if section.kind in counts and in_use(offer, section):
            counts[section.kind] += 1
            msid = (section.attr("msid") or "").split()
            if msid and msid[0] != "-":
                msids.add(msid[0])
            if not offer.media_or_session(section, "ice-ufrag") or not offer.media_or_session(
                section, "ice-pwd"
            ):
                raise SdpError("offer lacks ice-ufrag/ice-pwd")
            if not offer.fingerprints(section):
                raise SdpError("offer lacks a DTLS fingerprint")
            if section.mid is None:
                raise SdpError("offer section lacks a=mid")
    if counts["audio"] > 1 or counts["video"] > 1:
        raise SdpUnsupported("at most one audio and one video track per session (RFC 9725 §4.4.2)")
    if counts["audio"] + counts["video"] == 0:
        raise SdpUnsupported("the offer has no audio or video section")
    if len(msids) > 1:
        raise SdpUnsupported("all tracks must belong to one MediaStream (RFC 9725 §4.4.2)")


def dtls_setup(offer: SessionDescription) -> tuple[str, str]:
    """Our a=setup value and our DTLS role for the offer's a=setup."""
    setup = None
    for section in offer.media:
        setup = offer.media_or_session(section, "setup")
        if setup:
            break
    setup = (setup or "actpass").lower()
    if setup in ("actpass", "active"):
        return "passive", "server"
    if setup == "passive":
        return "active", "client"
    raise SdpError(f"bad a=setup value {setup!r}")


def _rtx_for(section: MediaSection, pt: int) -> Codec | None:
    for c in section.codecs:
        if c.key == "RTX" and c.fmtp.get("apt") == str(pt):
            return c
    return None


def plan_publisher(offer: SessionDescription, preferred_video: tuple[str, ...] = ("H264", "VP8")) -> list[
    tuple[AnswerSection, MediaPlan | None]
]:
    """Answer sections for a WHIP offer: recvonly, one codec per section (plus its RTX when offered)."""
    out: list[tuple[AnswerSection, MediaPlan | None]] = []
    for section in offer.media:
        if section.kind not in ("audio", "video") or not in_use(offer, section):
            out.append((AnswerSection(section, accepted=False), None))
            continue
        if section.direction not in ("sendonly", "sendrecv"):
            raise SdpUnsupported(f"{section.kind} section must be sendonly or sendrecv for WHIP")
        candidates = [c for c in section.codecs if _supported(c, section.kind)]
        if not candidates:
            names = ", ".join(sorted({c.name for c in section.codecs})) or "none"
            raise SdpUnsupported(f"no supported {section.kind} codec offered (offered: {names})")
        if section.kind == "video":
            rank = {name: i for i, name in enumerate(preferred_video)}
            candidates.sort(
                key=lambda c: (rank.get(c.key, 99), 0 if h264_profile(c).startswith("42e0") else 1)
                if c.key == "H264"
                else (rank.get(c.key, 99), 0)
            )
        chosen = copy.deepcopy(candidates[0])
        chosen.feedback = (
            [fb for fb in chosen.feedback if fb in PUBLISHER_VIDEO_FEEDBACK] if section.kind == "video" else []
        )
        sim = simulcast_sdp.parse(section) if section.kind == "video" else None
        extmaps: dict[int, str] = dict(sim.extmaps) if sim else {}
        abs_id = next((i for i, uri in section.extmaps.items() if uri == ABS_SEND_TIME_URI), None)
        if abs_id is not None and "goog-remb" in chosen.feedback:
            extmaps[abs_id] = ABS_SEND_TIME_URI
        ssrcs = []
        for v in section.attrs("ssrc"):
            try:
                ssrcs.append(int(v.split()[0]))
            except (ValueError, IndexError):  # a blank a=ssrc: line
                continue
        plan = MediaPlan(
            kind=section.kind,
            mid=section.mid or "",
            codec=chosen,
            payload_types={chosen.key: chosen.payload_type},
            feedback=set(chosen.feedback),
            ssrcs=sorted(set(ssrcs)),
            simulcast=sim,
            abs_send_time_id=abs_id if abs_id in extmaps else None,
        )
        answer_codecs = [chosen]
        rtx = _rtx_for(section, chosen.payload_type) if section.kind == "video" else None
        if rtx is not None:
            # Accepting RTX moves a browser's bandwidth-probe padding onto the RTX stream, which is not forwarded;
            # without it the padding rides the media SSRC and would reach viewers.
            answer_codecs.append(copy.deepcopy(rtx))
            plan.rtx_payload_types[chosen.payload_type] = rtx.payload_type
        answer = AnswerSection(
            section, accepted=True, direction="recvonly", codecs=answer_codecs, extmaps=extmaps,
            extra=sim.answer_lines() if sim else [],
        )
        out.append((answer, plan))
    return out


def plan_viewer(
    offer: SessionDescription, live_codecs: dict[str, Codec | None]
) -> list[tuple[AnswerSection, MediaPlan | None]]:
    """Answer sections for a WHEP offer: sendonly, the viewer's payload types.

    ``live_codecs`` maps kind -> the publisher's codec when the broadcast is live (None before), so a viewer
    that cannot decode the live codec is refused (422) rather than given a broken session.
    """
    out: list[tuple[AnswerSection, MediaPlan | None]] = []
    for section in offer.media:
        if section.kind not in ("audio", "video") or not in_use(offer, section):
            out.append((AnswerSection(section, accepted=False), None))
            continue
        if section.direction not in ("recvonly", "sendrecv"):
            raise SdpUnsupported(f"{section.kind} section must be recvonly or sendrecv for WHEP")
        live = live_codecs.get(section.kind)
        supported = [c for c in section.codecs if _supported(c, section.kind)]
        chosen: list[Codec] = []
        seen: set[str] = set()
        if live is not None:
            match = _best_match(supported, live)
            if match is None:
                raise SdpUnsupported(
                    f"the broadcast's {section.kind} codec is {live.name}"
                    + (f" (profile-level-id {h264_profile(live)})" if live.key == "H264" else "")
                    + ", which this viewer did not offer"
                )
            chosen.append(match)
            seen.add(match.key)
        # Keep one entry of every other supported codec so a publisher that returns with another codec
        # still reaches this viewer.
        for c in supported:
            if c.key not in seen:
                if c.key == "H264":
                    best = _best_match([x for x in supported if x.key == "H264"], None)
                    if best is not None:
                        chosen.append(best)
                else:
                    chosen.append(c)
                seen.add(c.key)
        if not chosen:
            names = ", ".join(sorted({c.name for c in section.codecs})) or "none"
            raise SdpUnsupported(f"no supported {section.kind} codec offered (offered: {names})")
        answer_codecs: list[Codec] = []
        plan = MediaPlan(kind=section.kind, mid=section.mid or "", codec=chosen[0])
        extmaps: dict[int, str] = {}
        abs_id = next((i for i, uri in section.extmaps.items() if uri == ABS_SEND_TIME_URI), None)
        remb = section.kind == "video" and abs_id is not None and "goog-remb" in chosen[0].feedback
        if remb:
            extmaps[abs_id] = ABS_SEND_TIME_URI
            plan.abs_send_time_id = abs_id
        for c in chosen:
            c = copy.deepcopy(c)
            if section.kind == "video":
                c.feedback = [fb for fb in c.feedback if fb in VIDEO_FEEDBACK or (remb and fb == "goog-remb")]
                plan.feedback.update(c.feedback)
            else:
                c.feedback = []
            answer_codecs.append(c)
            plan.payload_types[c.key] = c.payload_type
            rtx = _rtx_for(section, c.payload_type) if section.kind == "video" else None
            if rtx is not None and "nack" in c.feedback:
                answer_codecs.append(copy.deepcopy(rtx))
                plan.rtx_payload_types[c.payload_type] = rtx.payload_type
        out.append(
            (AnswerSection(section, accepted=True, direction="sendonly", codecs=answer_codecs, extmaps=extmaps),
             plan)
        )
    return out


def _best_match(supported: list[Codec], live: Codec | None) -> Codec | None:
    same = [c for c in supported if live is None or c.key == live.key]
    if not same:
        return None
    if same[0].key != "H264":
        return same[0]
    want = h264_profile(live)[:4] if live is not None else "42e0"
    for c in same:
        if h264_profile(c)[:4] == want:
            return c
    for c in same:  # same profile_idc, other constraint flags
        if h264_profile(c)[:2] == want[:2]:
            return c
    return same[0]
