"""Simulcast in WHIP offers: RFC 8853 rid-based (``a=rid``/``a=simulcast``) and legacy ``ssrc-group:SIM`` — pure.

The answer receives at most :data:`MAX_LAYERS` layers; further rids are left out of the answer (so the sender
does not send them) and named in :attr:`SimulcastPlan.ignored` for the log.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from webrtc_cast.sdp.description import MediaSection, SdpError

RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
MAX_LAYERS = 3
MAX_RID_LENGTH = 16  # RFC 8851 allows more; layer names longer than this are refused

# names that tell a layer's rank when resolutions are not known yet (lower is smaller)
_RANK_WORDS = {"q": 0, "quarter": 0, "low": 0, "l": 0, "lo": 0, "h2": 1, "half": 1, "m": 1, "mid": 1, "medium": 1,
               "f": 2, "full": 2, "h": 2, "hi": 2, "high": 2}


@dataclass(slots=True)
class SimulcastPlan:
    rids: list[str]  # the layers we receive, in the offer's order
    rid_ext_id: int | None  # header extension id carrying the rid (None: legacy SSRC simulcast)
    legacy_ssrcs: list[int] = field(default_factory=list)  # ssrc-group:SIM, low to high
    ignored: list[str] = field(default_factory=list)
    extmaps: dict[int, str] = field(default_factory=dict)  # to echo in the answer

    def answer_lines(self) -> list[str]:
        if not self.rids or self.rid_ext_id is None:
            return []
        return [f"rid:{r} recv" for r in self.rids] + ["simulcast:recv " + ";".join(self.rids)]


def rank_hint(rid: str) -> int:
    return _RANK_WORDS.get(rid.lower(), 1)


def parse(section: MediaSection) -> SimulcastPlan | None:
    """The simulcast the video section offers, or None when it offers one layer."""
    ext_ids = {uri: ext_id for ext_id, uri in section.extmaps.items()}
    simulcast = section.attr("simulcast")
    if simulcast is not None:
        parts = simulcast.split()
        if len(parts) < 2 or parts[0] != "send":
            raise SdpError(f"a WHIP offer sends simulcast: bad a=simulcast:{simulcast}")
        rids = []
        for alternative in parts[1].split(";"):
            rid = alternative.split(",")[0].lstrip("~")  # first alternative; "~" = paused at start
            if not rid or len(rid) > MAX_RID_LENGTH or not rid.replace("-", "").replace("_", "").isalnum():
                raise SdpError(f"bad rid in a=simulcast: {rid!r}")
            rids.append(rid)
        declared = {v.split()[0] for v in section.attrs("rid") if v.split()}
        missing = [r for r in rids if r not in declared]
        if missing:
            raise SdpError(f"a=simulcast names rids without a=rid lines: {missing}")
        rid_ext = ext_ids.get(RID_URI)
        if rid_ext is None:
            raise SdpError("rid simulcast needs the sdes:rtp-stream-id header extension")
        extmaps = {ext_ids[u]: u for u in (MID_URI, RID_URI, REPAIRED_RID_URI) if u in ext_ids}
        return SimulcastPlan(rids[:MAX_LAYERS], rid_ext, ignored=rids[MAX_LAYERS:], extmaps=extmaps)
    for value in section.attrs("ssrc-group"):
        parts = value.split()
        if parts and parts[0] == "SIM":
            try:
                ssrcs = [int(x) for x in parts[1:]]
            except ValueError as exc:
                raise SdpError(f"bad ssrc-group:SIM {value!r}") from exc
            if len(ssrcs) > 1:
                kept = ssrcs[:MAX_LAYERS]
                return SimulcastPlan([f"s{i}" for i in range(len(kept))], None, legacy_ssrcs=kept,
                                     ignored=[str(s) for s in ssrcs[MAX_LAYERS:]])
    return None
