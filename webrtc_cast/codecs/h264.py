"""H.264 RTP payload inspection (RFC 6184, packetization-mode 1) and SPS parsing (ITU-T H.264 7.3.2.1).

Pure: functions take one RTP payload (the bytes after the RTP header) and return values. Nothing here
raises on malformed input; an unparseable payload is "not a keyframe" / "no resolution".
"""

from __future__ import annotations

from collections.abc import Iterator

NAL_SLICE = 1
NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
NAL_STAP_A = 24
NAL_STAP_B = 25
NAL_MTAP16 = 26
NAL_MTAP24 = 27
NAL_FU_A = 28
NAL_FU_B = 29

_KEYFRAME_TYPES = frozenset({NAL_IDR, NAL_SPS})

# profile_idc values whose SPS carries chroma_format_idc, bit depths and scaling matrices (H.264 7.3.2.1.1).
_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})

# Sanity bounds: H.264 level 6.2 allows 139264 macroblocks per frame; 16384 pixels covers any real width.
_MAX_DIMENSION = 16384


class _SpsError(ValueError):
    """Internal: the SPS bit stream ended early or holds an out-of-range value."""


def nal_type(payload: bytes) -> int | None:
    """The NAL unit type of the RTP payload's first byte (24 = STAP-A, 28 = FU-A), or None if empty."""
    if not payload:
        return None
    return payload[0] & 0x1F


def _stap_a_units(payload: bytes) -> Iterator[bytes]:
    """The complete NAL units aggregated in a STAP-A payload; stops quietly at a truncated entry."""
    pos = 1
    end = len(payload)
    while pos + 2 <= end:
        size = (payload[pos] << 8) | payload[pos + 1]
        pos += 2
        if size == 0 or pos + size > end:
            return
        yield payload[pos : pos + size]
        pos += size


def nal_units(payload: bytes) -> Iterator[bytes]:
    """Complete NAL units carried by the payload: the single NAL unit itself, or each STAP-A entry.

    FU-A fragments and the other aggregation types yield nothing (they carry no complete NAL unit).
    """
    kind = nal_type(payload)
    if kind is None:
        return
    if 1 <= kind <= 23:
        yield payload
    elif kind == NAL_STAP_A:
        yield from _stap_a_units(payload)


def is_keyframe(payload: bytes) -> bool:
    """True if the payload carries an SPS or (the start of) an IDR slice.

    Single NAL units are judged by their type, STAP-A by any aggregated unit, FU-A only by the start
    fragment (S bit) using the type in the FU header. Never raises.
    """
    kind = nal_type(payload)
    if kind is None:
        return False
    if kind == NAL_FU_A:
        if len(payload) < 2:
            return False
        fu_header = payload[1]
        return bool(fu_header & 0x80) and (fu_header & 0x1F) in _KEYFRAME_TYPES
    if kind == NAL_STAP_A:
        return any((unit[0] & 0x1F) in _KEYFRAME_TYPES for unit in _stap_a_units(payload))
    return kind in _KEYFRAME_TYPES


def _find_sps(payload: bytes) -> bytes | None:
    for unit in nal_units(payload):
        if unit[0] & 0x1F == NAL_SPS:
            return unit
    return None


def _unescape(nal: bytes) -> bytes:
    """NAL unit payload to RBSP: drop each emulation-prevention byte (the 03 in 00 00 03)."""
    if b"\x00\x00\x03" not in nal:
        return nal
    out = bytearray()
    zeros = 0
    for byte in nal:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


class _BitReader:
    __slots__ = ("_data", "_pos", "_end")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0
        self._end = len(data) * 8

    def bit(self) -> int:
        if self._pos >= self._end:
            raise _SpsError("SPS ended early")
        value = (self._data[self._pos >> 3] >> (7 - (self._pos & 7))) & 1
        self._pos += 1
        return value

    def bits(self, count: int) -> int:
        value = 0
        for _ in range(count):
            value = (value << 1) | self.bit()
        return value

    def ue(self) -> int:
        """Unsigned exp-Golomb code ue(v)."""
        zeros = 0
        while self.bit() == 0:
            zeros += 1
            if zeros > 31:
                raise _SpsError("exp-Golomb code longer than 32 bits")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        """Signed exp-Golomb code se(v): 1, 2, 3, 4 ... map to 1, -1, 2, -2 ..."""
        code = self.ue()
        return (code + 1) // 2 if code & 1 else -(code // 2)


def _skip_scaling_list(reader: _BitReader, size: int) -> None:
    last_scale = 8
    next_scale = 8
    for _ in range(size):
        if next_scale != 0:
            delta = reader.se()
            if not -128 <= delta <= 127:
                raise _SpsError("delta_scale out of range")
            next_scale = (last_scale + delta + 256) % 256
        last_scale = last_scale if next_scale == 0 else next_scale


def _parse_resolution(rbsp: bytes) -> tuple[int, int]:
    """Width and height in pixels from an SPS RBSP whose first byte is the NAL header."""
    reader = _BitReader(rbsp)
    reader.bits(8)  # NAL header
    profile_idc = reader.bits(8)
    reader.bits(16)  # constraint flags, reserved bits, level_idc
    if reader.ue() > 31:
        raise _SpsError("seq_parameter_set_id out of range")
    chroma_format_idc = 1
    separate_colour_plane = 0
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = reader.ue()
        if chroma_format_idc > 3:
            raise _SpsError("chroma_format_idc out of range")
        if chroma_format_idc == 3:
            separate_colour_plane = reader.bit()
        reader.ue()  # bit_depth_luma_minus8
        reader.ue()  # bit_depth_chroma_minus8
        reader.bit()  # qpprime_y_zero_transform_bypass_flag
        if reader.bit():  # seq_scaling_matrix_present_flag
            for index in range(8 if chroma_format_idc != 3 else 12):
                if reader.bit():  # seq_scaling_list_present_flag[index]
                    _skip_scaling_list(reader, 16 if index < 6 else 64)
    reader.ue()  # log2_max_frame_num_minus4
    pic_order_cnt_type = reader.ue()
    if pic_order_cnt_type == 0:
        reader.ue()  # log2_max_pic_order_cnt_lsb_minus4
    elif pic_order_cnt_type == 1:
        reader.bit()  # delta_pic_order_always_zero_flag
        reader.se()  # offset_for_non_ref_pic
        reader.se()  # offset_for_top_to_bottom_field
        cycle = reader.ue()
        if cycle > 255:
            raise _SpsError("num_ref_frames_in_pic_order_cnt_cycle out of range")
        for _ in range(cycle):
            reader.se()
    elif pic_order_cnt_type != 2:
        raise _SpsError("pic_order_cnt_type out of range")
    reader.ue()  # max_num_ref_frames
    reader.bit()  # gaps_in_frame_num_value_allowed_flag
    width_mbs = reader.ue() + 1
    height_map_units = reader.ue() + 1
    frame_mbs_only = reader.bit()
    if not frame_mbs_only:
        reader.bit()  # mb_adaptive_frame_field_flag
    reader.bit()  # direct_8x8_inference_flag
    crop_left = crop_right = crop_top = crop_bottom = 0
    if reader.bit():  # frame_cropping_flag
        crop_left, crop_right, crop_top, crop_bottom = reader.ue(), reader.ue(), reader.ue(), reader.ue()

    chroma_array_type = 0 if separate_colour_plane else chroma_format_idc
    if chroma_array_type == 0:
        crop_unit_x = 1
        crop_unit_y = 2 - frame_mbs_only
    else:
        sub_width_c = 1 if chroma_array_type == 3 else 2
        sub_height_c = 2 if chroma_array_type == 1 else 1
        crop_unit_x = sub_width_c
        crop_unit_y = sub_height_c * (2 - frame_mbs_only)

    width = width_mbs * 16 - crop_unit_x * (crop_left + crop_right)
    height = (2 - frame_mbs_only) * height_map_units * 16 - crop_unit_y * (crop_top + crop_bottom)
    if not (0 < width <= _MAX_DIMENSION and 0 < height <= _MAX_DIMENSION):
        raise _SpsError("resolution out of range")
    return width, height


def sps_resolution(payload: bytes) -> tuple[int, int] | None:
    """(width, height) from an SPS carried as a single NAL unit or inside a STAP-A, else None."""
    sps = _find_sps(payload)
    if sps is None:
        return None
    try:
        return _parse_resolution(_unescape(sps))
    except _SpsError:
        return None


def profile_level_id(payload: bytes) -> str | None:
    """The SPS's profile_idc, constraint flags and level_idc as six hex digits (e.g. "42e01f"), else None."""
    sps = _find_sps(payload)
    if sps is None:
        return None
    rbsp = _unescape(sps)
    if len(rbsp) < 4:
        return None
    return rbsp[1:4].hex()
