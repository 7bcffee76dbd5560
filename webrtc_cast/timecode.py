"""Burned-in wall-clock timecode for glass-to-glass latency (PURE: numpy only).

The synthetic publisher writes its send time (milliseconds since the epoch, 48 bits) into every frame; a
viewer that decodes the frame reads it back and subtracts it from its own clock (TESTING.md,
"Glass-to-glass latency").

Layout
------
A band of ``ROWS x COLS`` (3 x 24) square cells across the top of the frame, anchored at row 0 and scaled to
the frame *width* only::

    cell = width / 24 (a float; cell k spans round(k * cell) .. round((k + 1) * cell))
    band height = 3 * cell  (320 px wide -> 40 px, 640 -> 80 px, 1280 -> 160 px)

Cells are read row-major, 72 in all:

    cells  0..3   start marker  W B W B   (white/black references and a sync check)
    cells  4..51  48 data bits, most significant first (the timestamp in ms)
    cells 52..67  CRC-16/CCITT-FALSE of the 6 big-endian timestamp bytes
    cells 68..71  end marker    B W B W

A 1 bit is white, a 0 bit black (luma 235 / 16, or 255 / 0 for RGB input). Each cell is at least 13 px wide
at 320x180, so it survives H.264/VP8 at low bitrate; the reader averages the central half of every cell,
thresholds at the midpoint of the marker references and rejects the frame (None) when the markers are too
weak or wrong, or the CRC fails, so garbage and noise read as None.

Because the band starts at row 0 and depends only on the width, the same code works on a luma plane
(``H x W``), on a stacked yuv420p array (``H*3/2 x W``, the shape ``av.VideoFrame.to_ndarray()`` gives) and
on RGB (``H x W x 3``); and because the geometry is a fraction of the width, it survives scaling.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

ROWS = 3
COLS = 24
CELLS = ROWS * COLS
TIMESTAMP_BITS = 48
CRC_BITS = 16
START_MARKER = (1, 0, 1, 0)
END_MARKER = (0, 1, 0, 1)
MIN_WIDTH = 96  # 4 px cells: below this the code is not meaningful
MIN_CONTRAST = 48  # luma units between the white and black references

_LUMA_WHITE = 235
_LUMA_BLACK = 16
_DATA_START = len(START_MARKER)
_CRC_START = _DATA_START + TIMESTAMP_BITS
_END_START = _CRC_START + CRC_BITS
assert _END_START + len(END_MARKER) == CELLS


def crc16_ccitt(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def _bits(value: int, n: int) -> list[int]:
    return [(value >> (n - 1 - i)) & 1 for i in range(n)]


def encode_bits(t_ms: int) -> list[int]:
    """The 72 cell values (1 = white) for timestamp ``t_ms``."""
    if not 0 <= t_ms < 1 << TIMESTAMP_BITS:
        raise ValueError(f"timestamp {t_ms} does not fit in {TIMESTAMP_BITS} bits")
    crc = crc16_ccitt(t_ms.to_bytes(6, "big"))
    return [*START_MARKER, *_bits(t_ms, TIMESTAMP_BITS), *_bits(crc, CRC_BITS), *END_MARKER]


@lru_cache(maxsize=64)
def _cell_edges(width: int) -> tuple[tuple[int, ...], float]:
    cell = width / COLS
    return tuple(round(k * cell) for k in range(max(COLS, ROWS) + 1)), cell


def band_height(width: int) -> int:
    """Rows at the top of a ``width``-wide frame that the timecode occupies."""
    edges, _ = _cell_edges(width)
    return edges[ROWS]


def _plane_and_levels(frame: np.ndarray) -> tuple[np.ndarray, int, int]:
    if frame.dtype != np.uint8:
        raise TypeError("expected a uint8 array")
    if frame.ndim == 2:
        return frame, _LUMA_WHITE, _LUMA_BLACK
    if frame.ndim == 3 and frame.shape[2] in (3, 4):
        return frame, 255, 0
    raise ValueError(f"expected a 2-D luma/yuv420p array or an H x W x 3 RGB array, got shape {frame.shape}")


def burn_timestamp(yuv_or_rgb: np.ndarray, t_ms: int) -> None:
    """Write ``t_ms`` into the top band of the frame, in place.

    ``yuv_or_rgb`` is a uint8 luma plane, a stacked yuv420p array (only its luma rows are touched) or an
    RGB(A) image (all channels set, so it converts to neutral black/white).
    """
    plane, white, black = _plane_and_levels(yuv_or_rgb)
    height, width = plane.shape[:2]
    if width < MIN_WIDTH:
        raise ValueError(f"frame too narrow for the timecode ({width} < {MIN_WIDTH})")
    if band_height(width) > height:
        raise ValueError("frame too short for the timecode band")
    edges, _ = _cell_edges(width)
    for i, bit in enumerate(encode_bits(t_ms)):
        row, col = divmod(i, COLS)
        plane[edges[row] : edges[row + 1], edges[col] : edges[col + 1]] = white if bit else black


def read_cells(frame: np.ndarray) -> np.ndarray | None:
    """Mean luma of the central half of each of the 72 cells (float array), or None if it cannot fit."""
    plane = frame
    if plane.ndim == 3:
        plane = plane[:, :, 1] if plane.shape[2] >= 3 else plane[:, :, 0]  # green ~ luma
    if plane.ndim != 2:
        return None
    height, width = plane.shape
    if width < MIN_WIDTH:
        return None
    _, cell = _cell_edges(width)
    if ROWS * cell > height:
        return None
    band = plane[: int(ROWS * cell + 1)]
    means = np.empty(CELLS, dtype=np.float64)
    quarter = cell / 4.0
    for i in range(CELLS):
        row, col = divmod(i, COLS)
        y0 = int(round(row * cell + quarter))
        y1 = max(int(round((row + 1) * cell - quarter)), y0 + 1)
        x0 = int(round(col * cell + quarter))
        x1 = max(int(round((col + 1) * cell - quarter)), x0 + 1)
        means[i] = band[y0:y1, x0:x1].mean()
    return means


def read_timestamp(frame: np.ndarray) -> int | None:
    """The timestamp burned by :func:`burn_timestamp`, or None if the frame does not carry a valid one.

    Accepts a luma plane, a stacked yuv420p array or an RGB(A) image, each uint8.
    """
    means = read_cells(frame)
    if means is None:
        return None
    refs = means[:_DATA_START].tolist() + means[_END_START:].tolist()
    expected = (*START_MARKER, *END_MARKER)
    whites = [m for m, bit in zip(refs, expected, strict=True) if bit]
    blacks = [m for m, bit in zip(refs, expected, strict=True) if not bit]
    if min(whites) - max(blacks) < MIN_CONTRAST:
        return None
    threshold = (sum(whites) / len(whites) + sum(blacks) / len(blacks)) / 2.0
    bits = (means > threshold).astype(np.uint8)
    value = 0
    for b in bits[_DATA_START:_CRC_START]:
        value = (value << 1) | int(b)
    crc = 0
    for b in bits[_CRC_START:_END_START]:
        crc = (crc << 1) | int(b)
    if crc16_ccitt(value.to_bytes(6, "big")) != crc:
        return None
    return value


@lru_cache(maxsize=8)
def _pattern_base(width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """A yuv420p base image twice as wide as the frame (so any roll offset has a full frame to show)."""
    period = width
    big_w = width + period
    ys, xs = np.mgrid[0:height, 0:big_w]
    phase = 2.0 * np.pi * xs / period
    luma = 110.0 + 60.0 * np.sin(phase) + 30.0 * np.sin(2.0 * np.pi * ys / max(height, 1) + phase / 2.0)
    # Sharp vertical bars and a checkerboard strip give the encoder edges to code and motion to estimate.
    bar = max(width // 16, 4)
    luma[:, (xs[0] // bar) % 4 == 0] += 40.0
    check = max(width // 40, 4)
    strip = slice(height * 2 // 3, height * 2 // 3 + 2 * check)
    luma[strip] = np.where(((xs[strip] // check) + (ys[strip] // check)) % 2 == 0, 200.0, 40.0)
    luma_u8 = np.clip(luma, 16, 235).astype(np.uint8)
    cy, cx = np.mgrid[0 : height // 2, 0 : big_w // 2]
    u = (128 + 50 * np.sin(2.0 * np.pi * cx / (period / 2))).astype(np.uint8)
    v = (128 + 50 * np.cos(2.0 * np.pi * (cx + cy) / (period / 2))).astype(np.uint8)
    return luma_u8, u, v, period


def test_pattern(width: int, height: int, frame_no: int) -> np.ndarray:
    """A moving yuv420p test image as one stacked ``(height * 3 // 2, width)`` uint8 array.

    The shape is what ``av.VideoFrame.from_ndarray(arr, format="yuv420p")`` takes. The base image is built
    once per size; each frame is a horizontal slice of it that scrolls 4 px per frame.
    """
    if width % 2 or height % 2 or width < 2 or height < 2:
        raise ValueError("width and height must be positive and even")
    luma, u, v, period = _pattern_base(width, height)
    offset = (frame_no * 4) % period
    out = np.empty((height * 3 // 2, width), dtype=np.uint8)
    out[:height] = luma[:, offset : offset + width]
    c_off = offset // 2
    cw, ch = width // 2, height // 2
    chroma = out[height:].reshape(2 * ch, cw)  # u then v, each ch x cw, stacked
    chroma[:ch] = u[:, c_off : c_off + cw]
    chroma[ch:] = v[:, c_off : c_off + cw]
    return out


test_pattern.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported into tests

__all__ = [
    "CELLS",
    "COLS",
    "ROWS",
    "band_height",
    "burn_timestamp",
    "crc16_ccitt",
    "encode_bits",
    "read_cells",
    "read_timestamp",
    "test_pattern",
]
