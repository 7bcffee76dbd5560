"""VP8 RTP payload inspection (RFC 7741): payload descriptor, keyframe flag, keyframe resolution.

Pure: functions take one RTP payload (the bytes after the RTP header) and return values.

Payload descriptor (RFC 7741 section 4.2)::

    |X|R|N|S|R| PID |   X: extension byte follows, S: start of partition, PID: partition index
    |I|L|T|K| RSV   |   (if X) I: picture id, L: TL0PICIDX, T: TID, K: KEYIDX
    |M| PictureID   |   (if I) M: 15-bit picture id, one more byte
    |   TL0PICIDX   |   (if L)
    |TID|Y| KEYIDX  |   (if T or K)

The VP8 payload header follows in the first packet of a frame (S=1, PID=0); the low bit of its first byte
is the inverse keyframe flag P. A keyframe's header continues with the start code 9d 01 2a and two
little-endian 16-bit fields whose low 14 bits are width and height (RFC 6386 section 9.1).
"""

from __future__ import annotations

_START_CODE = b"\x9d\x01\x2a"


class VP8DescriptorError(ValueError):
    """The VP8 payload descriptor is truncated."""


def descriptor_length(payload: bytes) -> int:
    """Length in bytes of the payload descriptor at the start of payload.

    Raises VP8DescriptorError when the payload ends inside the descriptor.
    """
    if not payload:
        raise VP8DescriptorError("empty VP8 payload")
    length = 1
    if payload[0] & 0x80:  # X
        if len(payload) < 2:
            raise VP8DescriptorError("VP8 descriptor truncated in the extension byte")
        ext = payload[1]
        length = 2
        if ext & 0x80:  # I: picture id, 7 or 15 bits
            if len(payload) <= length:
                raise VP8DescriptorError("VP8 descriptor truncated in the picture id")
            length += 2 if payload[length] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            length += 1
        if ext & 0x30:  # T or K: TID/Y/KEYIDX
            length += 1
        if len(payload) < length:
            raise VP8DescriptorError("VP8 descriptor truncated")
    return length


def picture_id(payload: bytes) -> int | None:
    """The 7- or 15-bit picture id from the descriptor, or None if absent or truncated."""
    if len(payload) < 3 or not payload[0] & 0x80 or not payload[1] & 0x80:
        return None
    if payload[2] & 0x80:
        if len(payload) < 4:
            return None
        return ((payload[2] & 0x7F) << 8) | payload[3]
    return payload[2] & 0x7F


def _keyframe_header_offset(payload: bytes) -> int | None:
    """Offset of the VP8 payload header if this packet starts a keyframe, else None."""
    if not payload or not payload[0] & 0x10 or payload[0] & 0x07:  # S=1 and PID=0
        return None
    try:
        offset = descriptor_length(payload)
    except VP8DescriptorError:
        return None
    if len(payload) <= offset or payload[offset] & 0x01:  # P=1: interframe
        return None
    return offset


def is_keyframe(payload: bytes) -> bool:
    """True if this packet is the first packet of a VP8 keyframe. Never raises."""
    return _keyframe_header_offset(payload) is not None


def keyframe_resolution(payload: bytes) -> tuple[int, int] | None:
    """(width, height) from the first packet of a keyframe, else None. Never raises."""
    offset = _keyframe_header_offset(payload)
    if offset is None or len(payload) < offset + 10:
        return None
    if payload[offset + 3 : offset + 6] != _START_CODE:
        return None
    width = int.from_bytes(payload[offset + 6 : offset + 8], "little") & 0x3FFF
    height = int.from_bytes(payload[offset + 8 : offset + 10], "little") & 0x3FFF
    if width == 0 or height == 0:
        return None
    return width, height
