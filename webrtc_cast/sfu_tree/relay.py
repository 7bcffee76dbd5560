"""Relay links: a node whose sources are its parent's layers (DESIGN.md §1) — asyncio adapter.

When a viewer asks a relay node for a stream, the relay subscribes once to its parent with
``POST {parent}/relay/{stream}``: a recvonly offer of our own, answered with every simulcast layer (one SSRC
each, announced as ``a=ssrc-group:SIM`` plus ``a=x-cast-layers:l,m,h``). The link then feeds the local Broadcast
exactly as a WHIP publisher would (a PublisherSession), so the relay's viewers get the same layer selection,
keyframe cache, NACK repair and sender reports. Keyframe requests go up the link hop by hop, merged and
throttled at each hop.

Healing: when the link drops (parent gone, ICE consent lost), the relay connects again with backoff (to the same
parent; several parents and placement are future work). Viewers keep their sessions: their forwarders start a
new epoch at the new link's first keyframe, so sequence numbers and timestamps stay continuous.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import TYPE_CHECKING

import aiohttp

from signaling import sdp
from signaling.negotiation import MediaPlan
from signaling.simulcast import SimulcastPlan
from webrtc_cast.sfu_tree.aiortc_glue import PeerTransport
from webrtc_cast.sfu_tree.sessions import PublisherSession, new_session_id

if TYPE_CHECKING:
    from webrtc_cast.node import Node

logger = logging.getLogger(__name__)

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


class RelayLinks:
    """One link per stream this node serves from its parent, kept while the stream has viewers."""

    def __init__(self, node: Node, parent_url: str, token: str | None = None, linger: float = 10.0) -> None:
        self.node = node
        self.parent_url = parent_url.rstrip("/")
        self.token = token
        self.linger = linger
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.reconnects = 0
        node.relay_links = self

    def want(self, stream: str) -> None:
        task = self._tasks.get(stream)
        if task is None or task.done():
            self._tasks[stream] = asyncio.create_task(self._keep(stream))

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _wanted(self, stream: str) -> bool:
        b = self.node.broadcasts.get(stream)
        return b is not None and any(b.forwarders.values())

    async def _keep(self, stream: str) -> None:
        backoff = 0.2
        idle_since: float | None = None
        while True:
            if not self._wanted(stream):
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > self.linger:
                    return
            else:
                idle_since = None
            try:
                session = await self._connect(stream)
            except (aiohttp.ClientError, OSError, TimeoutError, sdp.SdpError, ValueError) as exc:
                logger.info("relay %s: parent not reachable or not live (%s); retrying", stream, exc)
                await asyncio.sleep(backoff)
                backoff = min(2.0, backoff * 2)
                continue
            backoff = 0.2
            await session.transport.failed.wait()
            await self.node.close_session(session)
            self.reconnects += 1
            logger.info("relay %s: link to parent ended; re-attaching", stream)

    async def _connect(self, stream: str) -> PublisherSession:
        node = self.node
        transport = PeerTransport(node.settings.ice_hosts, node.certificate)
        try:
            local = await transport.gather()
            headers = {"Content-Type": "application/sdp"}
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            timeout = aiohttp.ClientTimeout(total=5)
            async with aiohttp.ClientSession(timeout=timeout) as http, http.post(
                f"{self.parent_url}/relay/{stream}", data=build_offer(local), headers=headers
            ) as r:
                body = await r.text()
                if r.status != 201:
                    raise ValueError(f"parent answered {r.status}: {body.strip()[:200]}")
            answer = sdp.parse(body)
            first = answer.media[0]
            setup = (answer.media_or_session(first, "setup") or "passive").lower()
            broadcast = node.broadcast(stream)
            session = PublisherSession(
                id=new_session_id(), stream=stream, role="whip", transport=transport, broadcast=broadcast,
                metrics=node.metrics, token=None, ice_ufrag=local.ice_ufrag,
                remote_ufrag=answer.media_or_session(first, "ice-ufrag") or "",
                plans=plans_from_answer(answer),
            )
            transport.set_handlers(session.on_rtp, session.on_rtcp)
            transport.start(
                session.remote_ufrag,
                answer.media_or_session(first, "ice-pwd") or "",
                answer.fingerprints(first),
                "client" if setup == "passive" else "server",
                [v for k, v in first.attributes if k == "candidate"],
            )
        except BaseException:
            await transport.close()
            raise
        node.adopt_session(session)
        return session
