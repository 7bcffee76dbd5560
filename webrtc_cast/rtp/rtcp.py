"""RTCP parsing and building (RFC 3550, RFC 4585, RFC 5104, draft-alvestrand-rmcat-remb).

Pure: parse_compound takes the plaintext of one (compound) RTCP packet, i.e. the bytes after SRTCP
unprotect, and returns small frozen values; the build_* functions return bytes ready to protect.

Every RTCP packet starts with the common header (RFC 3550 section 6.4.1)::

    |V=2|P| RC/FMT  |      PT       |            length             |

where length counts 32-bit words minus one, and a set P bit means the last byte of the packet holds the
number of padding bytes to ignore.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

PT_SR = 200
PT_RR = 201
PT_SDES = 202
PT_BYE = 203
PT_APP = 204
PT_RTPFB = 205
PT_PSFB = 206

FMT_NACK = 1  # RTPFB, RFC 4585 section 6.2.1
FMT_PLI = 1  # PSFB, RFC 4585 section 6.3.1
FMT_FIR = 4  # PSFB, RFC 5104 section 4.3.1
FMT_AFB = 15  # PSFB application layer feedback (REMB)

_NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
_MAX_COUNT = 31
_REMB_ID = b"REMB"


class RtcpError(ValueError):
    """A malformed RTCP packet."""


@dataclass(frozen=True, slots=True)
class ReportBlock:
    ssrc: int
    fraction_lost: int
    packets_lost: int  # cumulative, signed 24-bit
    highest_seq: int  # extended highest sequence number received
    jitter: int
    lsr: int  # middle 32 bits of the last SR's NTP timestamp
    dlsr: int  # delay since last SR, in 1/65536 s


@dataclass(frozen=True, slots=True)
class SenderReport:
    ssrc: int
    ntp_time: int  # 64-bit NTP timestamp
    rtp_time: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    ssrc: int
    reports: tuple[ReportBlock, ...] = ()


@dataclass(frozen=True, slots=True)
class Nack:
    sender_ssrc: int
    media_ssrc: int
    lost: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Pli:
    sender_ssrc: int
    media_ssrc: int


@dataclass(frozen=True, slots=True)
class Fir:
    sender_ssrc: int
    entries: tuple[tuple[int, int], ...]  # (media ssrc, command sequence number)


@dataclass(frozen=True, slots=True)
class Remb:
    sender_ssrc: int
    bitrate: int  # bits per second
    ssrcs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Bye:
    ssrcs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Unknown:
    pt: int
    fmt: int


RtcpPacket = SenderReport | ReceiverReport | Nack | Pli | Fir | Remb | Bye | Unknown


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 demultiplexing: an RTCP packet's second byte (its packet type) is in 192..223."""
    return len(data) >= 2 and 192 <= data[1] <= 223


def randomized_interval(interval: float, unit_random: float) -> float:
    """RFC 3550 §6.3.1: the nominal report interval times a factor in [0.5, 1.5) (``unit_random`` in [0, 1)).

    Streams that start together (a batch of viewers joining) would otherwise report in the same instant every
    second; on a node that is a burst of hundreds of sender reports blocking the forwarding loop at once."""
    return interval * (0.5 + unit_random)


def ntp_from_unix(t: float) -> int:
    """64-bit NTP timestamp (32.32 fixed point, seconds since 1900) for a Unix time in seconds."""
    seconds = int(t // 1)
    fraction = int((t - seconds) * (1 << 32))
    if fraction >= 1 << 32:
        seconds, fraction = seconds + 1, 0
    return (((seconds + _NTP_EPOCH_OFFSET) << 32) | fraction) & 0xFFFF_FFFF_FFFF_FFFF


def ntp_middle32(ntp_time: int) -> int:
    """The middle 32 bits of a 64-bit NTP timestamp, as echoed in a report block's LSR field."""
    return (ntp_time >> 16) & 0xFFFF_FFFF


# --- parsing ---------------------------------------------------------------------------------------------

_REPORT_BLOCK = struct.Struct("!IB3sIIII")
_SR_INFO = struct.Struct("!IQIII")
_FB_HEADER = struct.Struct("!II")


def _parse_report_blocks(body: bytes, offset: int, count: int) -> tuple[ReportBlock, ...]:
    if offset + count * _REPORT_BLOCK.size > len(body):
        raise RtcpError("report blocks overrun the packet")
    blocks = []
    for index in range(count):
        ssrc, fraction, lost, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(
            body, offset + index * _REPORT_BLOCK.size
        )
        blocks.append(ReportBlock(ssrc, fraction, int.from_bytes(lost, "big", signed=True), highest, jitter, lsr, dlsr))
    return tuple(blocks)


def _parse_sr(count: int, body: bytes) -> SenderReport:
    if len(body) < _SR_INFO.size:
        raise RtcpError("sender report too short")
    ssrc, ntp_time, rtp_time, packets, octets = _SR_INFO.unpack_from(body)
    return SenderReport(ssrc, ntp_time, rtp_time, packets, octets, _parse_report_blocks(body, _SR_INFO.size, count))


def _parse_rr(count: int, body: bytes) -> ReceiverReport:
    if len(body) < 4:
        raise RtcpError("receiver report too short")
    return ReceiverReport(int.from_bytes(body[:4], "big"), _parse_report_blocks(body, 4, count))


def _parse_bye(count: int, body: bytes) -> Bye:
    if len(body) < 4 * count:
        raise RtcpError("BYE source list overruns the packet")
    return Bye(tuple(struct.unpack_from(f"!{count}I", body)))


def _expand_nack(fci: bytes) -> tuple[int, ...]:
    if not fci or len(fci) % 4:
        raise RtcpError("generic NACK FCI is not a whole number of PID/BLP pairs")
    lost: dict[int, None] = {}
    for offset in range(0, len(fci), 4):
        pid, blp = struct.unpack_from("!HH", fci, offset)
        lost[pid] = None
        for bit in range(16):
            if blp & (1 << bit):
                lost[(pid + bit + 1) & 0xFFFF] = None
    return tuple(lost)


def _parse_remb(sender: int, fci: bytes) -> Remb | None:
    if len(fci) < 8 or fci[:4] != _REMB_ID:
        return None
    count = fci[4]
    exponent = fci[5] >> 2
    mantissa = ((fci[5] & 0x03) << 16) | (fci[6] << 8) | fci[7]
    if len(fci) < 8 + 4 * count:
        raise RtcpError("REMB source list overruns the packet")
    return Remb(sender, mantissa << exponent, tuple(struct.unpack_from(f"!{count}I", fci, 8)))


def _parse_feedback(pt: int, fmt: int, body: bytes) -> RtcpPacket:
    if len(body) < _FB_HEADER.size:
        raise RtcpError("feedback packet too short")
    sender, media = _FB_HEADER.unpack_from(body)
    fci = body[_FB_HEADER.size :]
    if pt == PT_RTPFB and fmt == FMT_NACK:
        return Nack(sender, media, _expand_nack(fci))
    if pt == PT_PSFB and fmt == FMT_PLI:
        return Pli(sender, media)
    if pt == PT_PSFB and fmt == FMT_FIR:
        if not fci or len(fci) % 8:
            raise RtcpError("FIR FCI is not a whole number of entries")
        return Fir(sender, tuple((ssrc, seq) for ssrc, seq, _ in struct.iter_unpack("!IB3s", fci)))
    if pt == PT_PSFB and fmt == FMT_AFB:
        remb = _parse_remb(sender, fci)
        if remb is not None:
            return remb
    return Unknown(pt, fmt)


def _parse_one(first: int, pt: int, body: bytes) -> RtcpPacket:
    count = first & 0x1F
    if pt == PT_SR:
        return _parse_sr(count, body)
    if pt == PT_RR:
        return _parse_rr(count, body)
    if pt == PT_BYE:
        return _parse_bye(count, body)
    if pt in (PT_RTPFB, PT_PSFB):
        return _parse_feedback(pt, count, body)
    return Unknown(pt, count)


def parse_compound(data: bytes) -> list[RtcpPacket]:
    """Every packet in a compound RTCP packet, in order. Raises RtcpError if any of them is malformed."""
    if len(data) < 4:
        raise RtcpError("RTCP packet shorter than its header")
    packets: list[RtcpPacket] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 4:
            raise RtcpError("trailing bytes shorter than an RTCP header")
        first, pt, words = struct.unpack_from("!BBH", data, pos)
        if first >> 6 != 2:
            raise RtcpError(f"RTCP version {first >> 6}, expected 2")
        end = pos + 4 * (words + 1)
        if end > len(data):
            raise RtcpError("RTCP length overruns the buffer")
        body = data[pos + 4 : end]
        if first & 0x20:  # P: padding count in the last byte
            padding = body[-1] if body else 0
            if padding == 0 or padding > len(body):
                raise RtcpError("bad RTCP padding")
            body = body[:-padding]
        packets.append(_parse_one(first, pt, body))
        pos = end
    return packets


# --- building --------------------------------------------------------------------------------------------


def _header(count: int, pt: int, body_length: int) -> bytes:
    return struct.pack("!BBH", 0x80 | count, pt, body_length // 4)


def _pack_report_blocks(reports: Iterable[ReportBlock]) -> tuple[int, bytes]:
    blocks = tuple(reports)
    if len(blocks) > _MAX_COUNT:
        raise ValueError(f"at most {_MAX_COUNT} report blocks per packet")
    packed = b"".join(
        _REPORT_BLOCK.pack(
            block.ssrc,
            block.fraction_lost,
            max(-(1 << 23), min((1 << 23) - 1, block.packets_lost)).to_bytes(3, "big", signed=True),
            block.highest_seq,
            block.jitter,
            block.lsr,
            block.dlsr,
        )
        for block in blocks
    )
    return len(blocks), packed


def build_sr(
    ssrc: int,
    ntp_time: int,
    rtp_time: int,
    packet_count: int,
    octet_count: int,
    reports: Iterable[ReportBlock] = (),
) -> bytes:
    """A sender report (PT 200). Counters wrap modulo 2^32 as RFC 3550 specifies."""
    count, blocks = _pack_report_blocks(reports)
    body = _SR_INFO.pack(
        ssrc,
        ntp_time & 0xFFFF_FFFF_FFFF_FFFF,
        rtp_time & 0xFFFF_FFFF,
        packet_count & 0xFFFF_FFFF,
        octet_count & 0xFFFF_FFFF,
    )
    return _header(count, PT_SR, len(body) + len(blocks)) + body + blocks


def build_rr(ssrc: int, reports: Iterable[ReportBlock] = ()) -> bytes:
    """A receiver report (PT 201)."""
    count, blocks = _pack_report_blocks(reports)
    return _header(count, PT_RR, 4 + len(blocks)) + struct.pack("!I", ssrc) + blocks


def build_pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    """A picture loss indication (PSFB FMT 1, no FCI)."""
    return _header(FMT_PLI, PT_PSFB, 8) + _FB_HEADER.pack(sender_ssrc, media_ssrc)


def build_fir(sender_ssrc: int, media_ssrc: int, seq: int) -> bytes:
    """A full intra request (PSFB FMT 4) with one FCI entry; the header's media SSRC is 0 (RFC 5104)."""
    fci = struct.pack("!IB3x", media_ssrc, seq & 0xFF)
    return _header(FMT_FIR, PT_PSFB, 8 + len(fci)) + _FB_HEADER.pack(sender_ssrc, 0) + fci


def _serial_offset(seq: int, base: int) -> int:
    """Signed distance from base to seq in 16-bit serial-number arithmetic."""
    delta = (seq - base) & 0xFFFF
    return delta - 0x10000 if delta >= 0x8000 else delta


def build_nack(sender_ssrc: int, media_ssrc: int, lost: Iterable[int]) -> bytes:
    """A generic NACK (RTPFB FMT 1), packing the lost sequence numbers into PID/BLP pairs.

    Sequence numbers are ordered in serial-number arithmetic around the first one, so a loss run across
    the 65535 -> 0 wrap shares pairs. Raises ValueError for an empty list or a number outside 0..65535.
    """
    seqs = list(dict.fromkeys(lost))
    if not seqs:
        raise ValueError("a NACK needs at least one lost sequence number")
    if any(not 0 <= seq <= 0xFFFF for seq in seqs):
        raise ValueError("sequence numbers are 16-bit")
    base = seqs[0]
    seqs.sort(key=lambda seq: _serial_offset(seq, base))
    pairs: list[tuple[int, int]] = []
    for seq in seqs:
        if pairs:
            pid, blp = pairs[-1]
            distance = (seq - pid) & 0xFFFF
            if 1 <= distance <= 16:
                pairs[-1] = (pid, blp | (1 << (distance - 1)))
                continue
        pairs.append((seq, 0))
    fci = b"".join(struct.pack("!HH", pid, blp) for pid, blp in pairs)
    return _header(FMT_NACK, PT_RTPFB, 8 + len(fci)) + _FB_HEADER.pack(sender_ssrc, media_ssrc) + fci


def build_remb(sender_ssrc: int, bitrate: int, ssrcs: Iterable[int]) -> bytes:
    """A receiver estimated maximum bitrate message (PSFB FMT 15, "REMB").

    The bitrate is encoded as an 18-bit mantissa and 6-bit exponent, so it is rounded down to what that
    format can hold.
    """
    targets = tuple(ssrcs)
    if bitrate < 0:
        raise ValueError("bitrate must not be negative")
    if len(targets) > 255:
        raise ValueError("at most 255 SSRCs in a REMB")
    exponent = 0
    while bitrate >> exponent >= 1 << 18:
        exponent += 1
    if exponent > 63:
        raise ValueError("bitrate too large for REMB")
    mantissa = bitrate >> exponent
    fci = (
        _REMB_ID
        + bytes([len(targets), (exponent << 2) | (mantissa >> 16), (mantissa >> 8) & 0xFF, mantissa & 0xFF])
        + b"".join(struct.pack("!I", ssrc) for ssrc in targets)
    )
    return _header(FMT_AFB, PT_PSFB, 8 + len(fci)) + _FB_HEADER.pack(sender_ssrc, 0) + fci


def build_sdes_cname(ssrc: int, cname: str) -> bytes:
    """A source description (PT 202) with one chunk holding one CNAME item."""
    text = cname.encode()
    if len(text) > 255:
        raise ValueError("CNAME longer than 255 bytes")
    chunk = struct.pack("!IBB", ssrc, 1, len(text)) + text + b"\x00"  # CNAME item, then END
    chunk += b"\x00" * (-len(chunk) % 4)
    return _header(1, PT_SDES, len(chunk)) + chunk


def build_bye(ssrcs: Iterable[int]) -> bytes:
    """A goodbye (PT 203) for up to 31 sources, without a reason."""
    sources = tuple(ssrcs)
    if len(sources) > _MAX_COUNT:
        raise ValueError(f"at most {_MAX_COUNT} SSRCs per BYE")
    body = b"".join(struct.pack("!I", ssrc) for ssrc in sources)
    return _header(len(sources), PT_BYE, len(body)) + body
