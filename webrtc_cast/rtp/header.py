"""RTP fixed-header views and rewriting (RFC 3550 §5.1), and serial-number arithmetic (RFC 1982).

Pure: bytes in, values or bytes out. The forwarding hot path calls :func:`parse` once per incoming packet and
:func:`rewrite` once per viewer, so both avoid objects beyond one tuple and the output bytes.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

RTP_VERSION = 2
_FIXED = struct.Struct("!BBHII")
_EXT_HDR = struct.Struct("!HH")
MIN_HEADER = 12


class RtpError(ValueError):
    """A packet that is not a well-formed RTP packet; the caller counts it as a drop."""


class RtpHeader(NamedTuple):
    payload_type: int
    marker: bool
    sequence: int
    timestamp: int
    ssrc: int
    payload_offset: int  # first byte after CSRCs and the header extension
    padding: bool
    extension_profile: int  # 0 when there is no header extension
    extension_offset: int  # first byte of the extension elements (valid when extension_profile != 0)
    extension_end: int


def parse(data: bytes) -> RtpHeader:
    """Parse the fixed header, CSRCs and the extension block boundaries of one RTP packet."""
    length = len(data)
    if length < MIN_HEADER:
        raise RtpError("rtp packet shorter than 12 bytes")
    b0, b1, seq, ts, ssrc = _FIXED.unpack_from(data)
    if b0 >> 6 != RTP_VERSION:
        raise RtpError("rtp version is not 2")
    offset = MIN_HEADER + 4 * (b0 & 0x0F)
    ext_profile = 0
    ext_offset = ext_end = offset
    if b0 & 0x10:
        if offset + 4 > length:
            raise RtpError("rtp header extension truncated")
        ext_profile, words = _EXT_HDR.unpack_from(data, offset)
        ext_offset = offset + 4
        ext_end = ext_offset + 4 * words
        offset = ext_end
        if ext_profile == 0:
            ext_profile = -1  # present but profile 0: keep "present" distinguishable
    if offset > length:
        raise RtpError("rtp header longer than packet")
    padding = bool(b0 & 0x20)
    if padding:
        pad = data[-1]
        if pad == 0 or offset + pad > length:
            raise RtpError("rtp padding length invalid")
    return RtpHeader(b1 & 0x7F, bool(b1 & 0x80), seq, ts, ssrc, offset, padding, ext_profile, ext_offset, ext_end)


def payload(data: bytes, header: RtpHeader) -> bytes:
    """The payload without padding."""
    end = len(data) - (data[-1] if header.padding else 0)
    return data[header.payload_offset : end]


def rewrite(
    data: bytes,
    header: RtpHeader,
    payload_type: int,
    sequence: int,
    timestamp: int,
    ssrc: int,
) -> bytes:
    """A copy of the packet with a new fixed header; CSRCs and header extensions are dropped.

    The payload and any padding are kept byte for byte.
    """
    b0 = 0x80 | (0x20 if header.padding else 0)
    b1 = payload_type | (0x80 if header.marker else 0)
    return _FIXED.pack(b0, b1, sequence, timestamp, ssrc) + data[header.payload_offset :]


def build(
    payload_type: int, sequence: int, timestamp: int, ssrc: int, body: bytes, marker: bool = False
) -> bytes:
    """A plain RTP packet (used by tests, RTX and synthetic sources)."""
    return _FIXED.pack(0x80, payload_type | (0x80 if marker else 0), sequence, timestamp, ssrc) + body


def one_byte_extensions(data: bytes, header: RtpHeader) -> dict[int, bytes]:
    """Elements of a one-byte (0xBEDE) or two-byte (0x100x) header extension block, keyed by id."""
    out: dict[int, bytes] = {}
    if header.extension_profile == 0:
        return out
    pos, end = header.extension_offset, header.extension_end
    if header.extension_profile == 0xBEDE:
        while pos < end:
            b = data[pos]
            if b == 0:
                pos += 1
                continue
            ext_id, ext_len = b >> 4, (b & 0x0F) + 1
            if ext_id == 15:
                break
            out[ext_id] = bytes(data[pos + 1 : pos + 1 + ext_len])
            pos += 1 + ext_len
    elif header.extension_profile >> 4 == 0x100:
        while pos + 1 < end:
            ext_id = data[pos]
            if ext_id == 0:
                pos += 1
                continue
            ext_len = data[pos + 1]
            out[ext_id] = bytes(data[pos + 2 : pos + 2 + ext_len])
            pos += 2 + ext_len
    return out


# --- serial-number arithmetic ------------------------------------------------------------------------------
def seq_delta(a: int, b: int) -> int:
    """Signed distance a - b between 16-bit sequence numbers, in [-32768, 32767]."""
    d = (a - b) & 0xFFFF
    return d - 0x10000 if d >= 0x8000 else d


def seq_newer(a: int, b: int) -> bool:
    return seq_delta(a, b) > 0


def ts_delta(a: int, b: int) -> int:
    """Signed distance a - b between 32-bit RTP timestamps."""
    d = (a - b) & 0xFFFFFFFF
    return d - 0x100000000 if d >= 0x80000000 else d


class SeqUnwrapper:
    """Extends 16-bit sequence numbers to a monotonic 64-bit space (tolerates reordering)."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: int | None = None

    def unwrap(self, seq: int) -> int:
        if self._last is None:
            self._last = seq
            return seq
        ext = self._last + seq_delta(seq, self._last & 0xFFFF)
        if ext > self._last:
            self._last = ext
        return ext

    def reset(self) -> None:
        self._last = None
