"""One negotiation path for WHIP, WHEP and relay links (asyncio adapter over the pure webrtc_cast.sdp).

Both directions build sessions here, so the node (answering a POST) and the relay (offering to its parent) never
repeat each other: the transport and its ICE gathering, the media plans and codecs, the forwarders of a viewer,
the publisher's ingest wiring and the start of ICE/DTLS.

* :func:`answer_offer` answers a WHIP ('whip'), WHEP ('whep') or relay-link ('relay') offer: the session (not
  started) and the SDP answer.
* :func:`link_offer` / :func:`accept_link_answer`: the relay's side of a link: our recvonly offer, then a
  PublisherSession fed by the parent's answer (every simulcast layer, one SSRC each).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from webrtc_cast.sdp import description as sdp
from webrtc_cast.sdp import negotiation
from webrtc_cast.sdp.negotiation import MediaPlan
from webrtc_cast.sdp.simulcast import SimulcastPlan
from webrtc_cast.settings import Settings
from webrtc_cast.sfu_tree.aiortc_glue import PeerTransport
from webrtc_cast.sfu_tree.broadcast import Broadcast
from webrtc_cast.sfu_tree.forwarder import Forwarder
from webrtc_cast.sfu_tree.sessions import (
    PublisherSession,
    Session,
    ViewerSession,
    new_session_id,
    random_ssrc,
)

OFFER_CODECS = {
    "audio": [sdp.Codec(111, "opus", 48000, 2, fmtp={"minptime": "10", "useinbandfec": "1"})],
    "video": [
        sdp.Codec(102, "H264", 90000, fmtp={"level-asymmetry-allowed": "1", "packetization-mode": "1",
                                             "profile-level-id": "42e01f"}, feedback=["nack", "nack pli", "ccm fir"]),
        sdp.Codec(103, "H264", 90000, fmtp={"level-asymmetry-allowed": "1", "packetization-mode": "1",
                                             "profile-level-id": "640c1f"}, feedback=["nack", "nack pli", "ccm fir"]),
        sdp.Codec(96, "VP8", 90000, feedback=["nack", "nack pli", "ccm fir"]),
    ],
}


@dataclass(slots=True)
class Offer:
    """A parsed, validated offer and what the answer needs from it."""

    description: sdp.SessionDescription
    setup: str
    dtls_role: str


def read_offer(offer_text: str) -> Offer:
    """Parse and validate an offer. Raises sdp.SdpError / SdpUnsupported."""
    offer = sdp.parse(offer_text)
    negotiation.validate_offer(offer)
    setup, dtls_role = negotiation.dtls_setup(offer)
    return Offer(offer, setup, dtls_role)


def _remote(description: sdp.SessionDescription, first) -> tuple[str, str, list, list[str]]:  # noqa: ANN001
    return (
        description.media_or_session(first, "ice-ufrag") or "",
        description.media_or_session(first, "ice-pwd") or "",
        description.fingerprints(first),
        [v for k, v in first.attributes if k == "candidate"],
    )


def _wire_publisher(session: PublisherSession) -> None:
    session.transport.set_handlers(session.on_rtp, session.on_rtcp)
    session.transport.pump_ingest(session.audio_payload_types(), session.on_rtp_run, session.broadcast.run_limit)


async def answer_offer(
    role: str, stream: str, offer: Offer, broadcast: Broadcast, settings: Settings, certificate, metrics,  # noqa: ANN001
    token: str | None,
) -> tuple[Session, str, Callable[[], None]]:
    """Negotiate a WHIP, WHEP or relay-link session: (session, SDP answer, start). ``start()`` begins ICE/DTLS.

    A relay link is a viewer session that receives every simulcast layer, one SSRC per layer.
    """
    description = offer.description
    if role == "whip":
        planned = negotiation.plan_publisher(description, settings.preferred_video_codecs)
    else:
        planned = negotiation.plan_viewer(description, broadcast.live_codecs())
    first = next(s for s in description.media if negotiation.in_use(description, s) and s.kind in ("audio", "video"))
    remote_ufrag, remote_pwd, fingerprints, candidates = _remote(description, first)
    transport = PeerTransport(settings.ice_hosts, certificate)
    local = await transport.gather()
    common = dict(
        id=new_session_id(),
        stream=stream,
        role=role,
        transport=transport,
        broadcast=broadcast,
        metrics=metrics,
        token=token,
        ice_ufrag=local.ice_ufrag,
        remote_ufrag=remote_ufrag,
    )
    sections = [a for a, _ in planned]
    plans = [p for _, p in planned if p is not None]
    session: Session
    if role == "whip":
        session = PublisherSession(**common, plans=plans, remb_bitrate=settings.ingest_max_bitrate)
    else:
        viewer = ViewerSession(**common, sender_report_interval=settings.sender_report_interval)
        for index, section in enumerate(description.media):
            if section.kind == "video" and negotiation.in_use(description, section):
                viewer.video_mline, viewer.video_mid = index, section.mid
        for answer_section, plan in planned:
            if plan is None:
                continue
            layers = broadcast.video_layers() if plan.kind == "video" and role == "relay" else []
            if len(layers) > 1:
                _relay_layers(viewer, answer_section, plan, layers, stream)
                continue
            fwd = Forwarder(
                plan.kind,
                plan.codec.clock_rate,
                random_ssrc(),
                plan.payload_types,
                plan.rtx_payload_types,
                random_ssrc() if plan.rtx_payload_types else None,
            )
            fwd.abs_send_time_id = plan.abs_send_time_id or 0
            viewer.forwarders[plan.kind] = fwd
            answer_section.send = sdp.SendStream(
                stream_id=stream, track_id=f"{stream}-{plan.kind}", ssrc=fwd.ssrc, cname=viewer.cname,
                rtx_ssrc=fwd.rtx_ssrc,
            )
        session = viewer
    if isinstance(session, PublisherSession):
        _wire_publisher(session)
    else:
        transport.set_handlers(session.on_rtp, session.on_rtcp)  # type: ignore[attr-defined]
    answer = sdp.write_answer(
        int(time.time() * 1000),
        sdp.TransportParams(local.ice_ufrag, local.ice_pwd, local.fingerprint, offer.setup, local.candidates),
        sections,
    )

    def start() -> None:
        transport.start(remote_ufrag, remote_pwd, fingerprints, offer.dtls_role, candidates)

    return session, answer, start


def _relay_layers(viewer: ViewerSession, section, plan, layers, stream: str) -> None:  # noqa: ANN001
    """A relay link's video: one pinned forwarder and SSRC per layer, announced as a SIM group + rid names."""
    ssrcs = []
    for layer in layers:
        fwd = Forwarder("video", plan.codec.clock_rate, random_ssrc(), plan.payload_types)
        fwd.pinned_rid = layer.rid
        viewer.forwarders[layer.key] = fwd
        ssrcs.append(fwd.ssrc)
    section.send = sdp.SendStream(
        stream_id=stream, track_id=f"{stream}-video", ssrc=ssrcs[0], cname=viewer.cname, layer_ssrcs=ssrcs
    )
    section.extra.append("x-cast-layers:" + ",".join(t.rid or "" for t in layers))


# -- the relay's side of a link ------------------------------------------------------------------------------
def build_offer(local) -> str:  # noqa: ANN001 - aiortc_glue.LocalParameters
    """A recvonly audio+video offer for a relay link (setup:actpass, all candidates, BUNDLE)."""
    sections = []
    for mid, kind in enumerate(("audio", "video")):
        codecs = OFFER_CODECS[kind]
        media = sdp.MediaSection(kind, 9, "UDP/TLS/RTP/SAVPF", [str(c.payload_type) for c in codecs],
                                 attributes=[("mid", str(mid))])
        sections.append(sdp.AnswerSection(media, accepted=True, direction="recvonly", codecs=list(codecs)))
    transport = sdp.TransportParams(local.ice_ufrag, local.ice_pwd, local.fingerprint, "actpass", local.candidates)
    return sdp.write_answer(secrets.randbelow(1 << 62), transport, sections)


def plans_from_answer(answer: sdp.SessionDescription) -> list[MediaPlan]:
    """What the parent will send: the codec it chose per kind and, for video, its layers by SSRC."""
    plans = []
    for section in answer.media:
        if section.kind not in ("audio", "video") or section.port == 0 or not section.codecs:
            continue
        codec = section.codecs[0]
        plan = MediaPlan(kind=section.kind, mid=section.mid or "", codec=codec,
                         payload_types={codec.key: codec.payload_type})
        layers = (section.attr("x-cast-layers") or "").split(",")
        for value in section.attrs("ssrc-group"):
            parts = value.split()
            if parts and parts[0] == "SIM" and len(parts) > 2:
                ssrcs = [int(x) for x in parts[1:]]
                rids = layers if len(layers) == len(ssrcs) else [f"s{i}" for i in range(len(ssrcs))]
                plan.simulcast = SimulcastPlan(rids, None, legacy_ssrcs=ssrcs)
        plans.append(plan)
    return plans


def link_transport(settings: Settings, certificate) -> PeerTransport:  # noqa: ANN001
    """The transport of a relay link; ``await transport.gather()`` then :func:`build_offer`."""
    return PeerTransport(settings.ice_hosts, certificate)


def accept_link_answer(
    transport: PeerTransport, local, answer_text: str, stream: str,  # noqa: ANN001 - LocalParameters
    broadcast_of: Callable[[str], Broadcast], metrics,  # noqa: ANN001 - NodeMetrics
) -> PublisherSession:
    """The parent's answer: a PublisherSession that feeds ``broadcast_of(stream)``, its transport started."""
    answer = sdp.parse(answer_text)
    first = answer.media[0]
    setup = (answer.media_or_session(first, "setup") or "passive").lower()
    broadcast = broadcast_of(stream)
    remote_ufrag, remote_pwd, fingerprints, candidates = _remote(answer, first)
    session = PublisherSession(
        id=new_session_id(), stream=stream, role="whip", transport=transport, broadcast=broadcast,
        metrics=metrics, token=None, ice_ufrag=local.ice_ufrag,
        remote_ufrag=remote_ufrag, plans=plans_from_answer(answer),
    )
    _wire_publisher(session)
    transport.start(remote_ufrag, remote_pwd, fingerprints, "client" if setup == "passive" else "server", candidates)
    return session
