"""SDP offers in, SDP answers out (RFC 8866, JSEP RFC 8829, BUNDLE RFC 9143) — pure.

aiortc's parser drops what an SFU needs (rid, simulcast, unknown extmaps), so offers are parsed here into a
small model and answers are written here. Anything malformed raises :class:`SdpError` (a 400); anything
well-formed that we cannot serve raises :class:`SdpUnsupported` (a 422).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_SDP_LINES = 2000


class SdpError(ValueError):
    """The offer is not a valid SDP offer (answered with 400)."""


class SdpUnsupported(ValueError):
    """The offer is valid but asks for something this server does not do (answered with 422)."""


@dataclass(slots=True)
class Codec:
    payload_type: int
    name: str  # as in rtpmap, e.g. "H264", "VP8", "opus", "rtx"
    clock_rate: int
    channels: int = 1
    fmtp: dict[str, str] = field(default_factory=dict)
    feedback: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.name.upper()

    def fmtp_line(self) -> str:
        return ";".join(f"{k}={v}" if v != "" else k for k, v in self.fmtp.items())


@dataclass(slots=True)
class MediaSection:
    kind: str  # audio | video | application | ...
    port: int
    protocol: str
    formats: list[str]
    attributes: list[tuple[str, str]] = field(default_factory=list)
    codecs: list[Codec] = field(default_factory=list)
    extmaps: dict[int, str] = field(default_factory=dict)

    def attr(self, name: str) -> str | None:
        for k, v in self.attributes:
            if k == name:
                return v
        return None

    def attrs(self, name: str) -> list[str]:
        return [v for k, v in self.attributes if k == name]

    @property
    def mid(self) -> str | None:
        return self.attr("mid")

    @property
    def direction(self) -> str:
        for k, _ in self.attributes:
            if k in ("sendrecv", "sendonly", "recvonly", "inactive"):
                return k
        return "sendrecv"

    def codec(self, payload_type: int) -> Codec | None:
        for c in self.codecs:
            if c.payload_type == payload_type:
                return c
        return None


@dataclass(slots=True)
class SessionDescription:
    attributes: list[tuple[str, str]]
    media: list[MediaSection]

    def session_attr(self, name: str) -> str | None:
        for k, v in self.attributes:
            if k == name:
                return v
        return None

    def media_or_session(self, section: MediaSection, name: str) -> str | None:
        value = section.attr(name)
        return value if value is not None else self.session_attr(name)

    def fingerprints(self, section: MediaSection) -> list[tuple[str, str]]:
        values = section.attrs("fingerprint") or [v for k, v in self.attributes if k == "fingerprint"]
        out = []
        for v in values:
            parts = v.split()
            if len(parts) != 2:
                raise SdpError(f"bad fingerprint attribute: {v!r}")
            out.append((parts[0].lower(), parts[1].upper()))
        return out


_LINE = re.compile(r"^([a-z])=(.*)$")


def parse(text: str) -> SessionDescription:
    """Parse an SDP document. Raises SdpError when it is not one."""
    if not isinstance(text, str) or not text.strip():
        raise SdpError("empty SDP")
    lines = [ln.rstrip("\r") for ln in text.split("\n") if ln.strip()]
    if len(lines) > MAX_SDP_LINES:
        raise SdpError("SDP has too many lines")
    if lines[0] != "v=0":
        raise SdpError("SDP must start with v=0")
    session_attrs: list[tuple[str, str]] = []
    media: list[MediaSection] = []
    seen_o = False
    for line in lines[1:]:
        m = _LINE.match(line)
        if not m:
            raise SdpError(f"malformed SDP line: {line[:80]!r}")
        kind, value = m.group(1), m.group(2)
        if kind == "o":
            seen_o = True
        elif kind == "m":
            media.append(_parse_m_line(value))
        elif kind == "a":
            name, _, val = value.partition(":")
            target = media[-1].attributes if media else session_attrs
            target.append((name, val))
    if not seen_o:
        raise SdpError("SDP has no o= line")
    if not media:
        raise SdpError("SDP has no media sections")
    for section in media:
        _collect_codecs(section)
    return SessionDescription(session_attrs, media)


def _parse_m_line(value: str) -> MediaSection:
    parts = value.split()
    if len(parts) < 3:
        raise SdpError(f"malformed m= line: {value[:80]!r}")
    try:
        port = int(parts[1].split("/")[0])
    except ValueError as exc:
        raise SdpError(f"bad port in m= line: {value[:80]!r}") from exc
    return MediaSection(kind=parts[0], port=port, protocol=parts[2], formats=parts[3:])


def _collect_codecs(section: MediaSection) -> None:
    if section.kind not in ("audio", "video"):
        return
    by_pt: dict[int, Codec] = {}
    for k, v in section.attributes:
        if k == "rtpmap":
            pt_s, _, enc = v.partition(" ")
            try:
                pt = int(pt_s)
                name, rate, *rest = enc.split("/")
                codec = Codec(pt, name, int(rate), int(rest[0]) if rest else 1)
            except ValueError as exc:
                raise SdpError(f"bad rtpmap: {v!r}") from exc
            if not 0 <= pt <= 127:
                raise SdpError(f"payload type out of range: {pt}")
            by_pt[pt] = codec
        elif k == "extmap":
            ident, _, rest = v.partition(" ")
            try:
                ext_id = int(ident.split("/")[0])
            except ValueError as exc:
                raise SdpError(f"bad extmap: {v!r}") from exc
            section.extmaps[ext_id] = rest.split()[0] if rest.split() else ""
    for k, v in section.attributes:
        if k in ("fmtp", "rtcp-fb"):
            pt_s, _, params = v.partition(" ")
            if pt_s == "*":
                targets = list(by_pt.values())
            else:
                try:
                    codec = by_pt.get(int(pt_s))
                except ValueError as exc:
                    raise SdpError(f"bad {k}: {v!r}") from exc
                targets = [codec] if codec else []
            for codec in targets:
                if k == "fmtp":
                    for item in params.split(";"):
                        item = item.strip()
                        if item:
                            name, _, val = item.partition("=")
                            codec.fmtp[name.strip().lower()] = val.strip()
                else:
                    codec.feedback.append(params.strip())
    for fmt in section.formats:
        try:
            pt = int(fmt)
        except ValueError as exc:
            raise SdpError(f"bad format in m= line: {fmt!r}") from exc
        if pt in by_pt:
            section.codecs.append(by_pt[pt])
        elif pt in _STATIC_PAYLOAD_TYPES:
            name, rate, ch = _STATIC_PAYLOAD_TYPES[pt]
            section.codecs.append(Codec(pt, name, rate, ch))


_STATIC_PAYLOAD_TYPES = {0: ("PCMU", 8000, 1), 8: ("PCMA", 8000, 1), 9: ("G722", 8000, 1)}


# --- answer writing ---------------------------------------------------------------------------------------
@dataclass(slots=True)
class TransportParams:
    ice_ufrag: str
    ice_pwd: str
    fingerprint: str  # sha-256 value
    setup: str  # active | passive
    candidates: list[str]  # values after "a=candidate:"


@dataclass(slots=True)
class SendStream:
    """What we send in an m-section (WHEP): msid and the SSRCs we will use."""

    stream_id: str
    track_id: str
    ssrc: int
    cname: str
    rtx_ssrc: int | None = None
    layer_ssrcs: list[int] = field(default_factory=list)  # relay links: one SSRC per simulcast layer, low to high


@dataclass(slots=True)
class AnswerSection:
    offer: MediaSection
    accepted: bool
    direction: str = "recvonly"
    codecs: list[Codec] = field(default_factory=list)
    extmaps: dict[int, str] = field(default_factory=dict)
    send: SendStream | None = None
    extra: list[str] = field(default_factory=list)  # further attribute lines, e.g. rid/simulcast


def write_answer(session_id: int, transport: TransportParams, sections: list[AnswerSection]) -> str:
    """Write a BUNDLE (max-bundle, rtcp-mux-only) answer. Candidates go in the first accepted section."""
    accepted_mids = [s.offer.mid or str(i) for i, s in enumerate(sections) if s.accepted]
    host, port = _default_address(transport.candidates)
    lines = [
        "v=0",
        f"o=- {session_id} 2 IN IP4 127.0.0.1",
        "s=webrtc-cast",
        "t=0 0",
    ]
    if accepted_mids:
        lines.append("a=group:BUNDLE " + " ".join(accepted_mids))
    # also at session level: a rejected section carries none, and some peers (GStreamer 1.22) look for one
    lines.append(f"a=fingerprint:sha-256 {transport.fingerprint}")
    lines.append("a=msid-semantic: WMS *")
    first = True
    for i, s in enumerate(sections):
        mid = s.offer.mid or str(i)
        if not s.accepted:
            fmt = " ".join(s.offer.formats) or "0"
            lines += [f"m={s.offer.kind} 0 {s.offer.protocol} {fmt}", "c=IN IP4 0.0.0.0", f"a=mid:{mid}"]
            continue
        pts = " ".join(str(c.payload_type) for c in s.codecs)
        lines += [
            f"m={s.offer.kind} {port if first else 9} {s.offer.protocol} {pts}",
            f"c=IN IP4 {host if first else '0.0.0.0'}",
            "a=rtcp:9 IN IP4 0.0.0.0",
            f"a=ice-ufrag:{transport.ice_ufrag}",
            f"a=ice-pwd:{transport.ice_pwd}",
            f"a=fingerprint:sha-256 {transport.fingerprint}",
            f"a=setup:{transport.setup}",
            f"a=mid:{mid}",
        ]
        for ext_id, uri in sorted(s.extmaps.items()):
            lines.append(f"a=extmap:{ext_id} {uri}")
        lines += [f"a={s.direction}", "a=rtcp-mux", "a=rtcp-mux-only"]
        if s.offer.kind == "video":
            lines.append("a=rtcp-rsize")
        for c in s.codecs:
            rtpmap = f"a=rtpmap:{c.payload_type} {c.name}/{c.clock_rate}"
            if c.channels > 1:
                rtpmap += f"/{c.channels}"
            lines.append(rtpmap)
            for fb in c.feedback:
                lines.append(f"a=rtcp-fb:{c.payload_type} {fb}")
            if c.fmtp:
                lines.append(f"a=fmtp:{c.payload_type} {c.fmtp_line()}")
        lines += [f"a={x}" for x in s.extra]
        if s.send is not None:
            snd = s.send
            lines.append(f"a=msid:{snd.stream_id} {snd.track_id}")
            if snd.rtx_ssrc is not None:
                lines.append(f"a=ssrc-group:FID {snd.ssrc} {snd.rtx_ssrc}")
            if snd.layer_ssrcs:
                lines.append("a=ssrc-group:SIM " + " ".join(str(x) for x in snd.layer_ssrcs))
            for ssrc in (snd.ssrc, snd.rtx_ssrc, *[x for x in snd.layer_ssrcs if x != snd.ssrc]):
                if ssrc is not None:
                    lines.append(f"a=ssrc:{ssrc} cname:{snd.cname}")
                    lines.append(f"a=ssrc:{ssrc} msid:{snd.stream_id} {snd.track_id}")
        if first:
            lines += [f"a=candidate:{c}" for c in transport.candidates]
            lines.append("a=end-of-candidates")
            first = False
    return "\r\n".join(lines) + "\r\n"


def _default_address(candidates: list[str]) -> tuple[str, int]:
    for c in candidates:
        parts = c.split()
        if len(parts) >= 6:
            try:
                return parts[4], int(parts[5])
            except ValueError:
                continue
    return "0.0.0.0", 9


def parse_trickle_fragment(text: str) -> tuple[str | None, str | None, list[str], bool]:
    """Parse an ``application/trickle-ice-sdpfrag`` body (RFC 8840).

    Returns (ice-ufrag, ice-pwd, candidate values, end-of-candidates).
    """
    if len(text) > 64 * 1024:
        raise SdpError("fragment too large")
    ufrag = pwd = None
    candidates: list[str] = []
    end = False
    for raw in text.split("\n"):
        line = raw.strip()
        if not line:
            continue
        if not _LINE.match(line):
            raise SdpError(f"malformed fragment line: {line[:80]!r}")
        if line.startswith("a=ice-ufrag:"):
            ufrag = line[len("a=ice-ufrag:") :]
        elif line.startswith("a=ice-pwd:"):
            pwd = line[len("a=ice-pwd:") :]
        elif line.startswith("a=candidate:"):
            candidates.append(line[len("a=candidate:") :])
        elif line == "a=end-of-candidates":
            end = True
    return ufrag, pwd, candidates, end
