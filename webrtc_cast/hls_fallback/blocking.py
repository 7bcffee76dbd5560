"""Delivery directives of a media playlist request (rfc8216bis §6.2.5) — pure.

:func:`parse_directives` validates ``_HLS_msn``, ``_HLS_part`` and ``_HLS_skip`` against the rendition's state and
says what to do: answer 400 at once, answer now, or hold the request until a part or segment exists.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


class BadDirective(ValueError):
    """The request gets an immediate 400 (H26, H27)."""


@dataclass(frozen=True, slots=True)
class Directives:
    msn: int | None = None  # block until this segment (or part of it) exists
    part: int | None = None
    skip: str | None = None  # "YES" or "v2": a delta update (H30, H31)

    @property
    def blocking(self) -> bool:
        return self.msn is not None


def advance_part_limit(part_target: float) -> int:
    """H27: how many parts ahead a request may ask for: 3 / PART-TARGET when the target is under 1 s, else 3."""
    return math.ceil(3 / part_target) if part_target < 1 else 3


def _int(query: Mapping[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 12:
        raise BadDirective(f"{name} must be a non-negative decimal integer")
    return int(raw)


def parse_directives(
    query: Mapping[str, str],
    last_msn: int,
    last_part: int | None,
    part_target: float,
    ended: bool,
) -> Directives:
    """Validate the query of a media playlist request.

    ``last_msn``/``last_part``: the newest published part's segment and index (-1/None before the first).
    Raises :class:`BadDirective` for a 400. After EXT-X-ENDLIST every directive is ignored (H29, H32).
    """
    msn = _int(query, "_HLS_msn")
    part = _int(query, "_HLS_part")
    skip = query.get("_HLS_skip")
    if part is not None and msn is None:
        raise BadDirective("_HLS_part requires _HLS_msn")  # H26
    if skip is not None and skip not in ("YES", "v2"):
        raise BadDirective("_HLS_skip must be YES or v2")
    if ended:
        return Directives()
    if msn is not None:
        if msn > last_msn + 2:
            raise BadDirective(f"_HLS_msn={msn} is more than two segments past the last ({last_msn})")  # H27
        if part is not None:
            limit = advance_part_limit(part_target)
            have = last_part if last_part is not None else -1
            # a later segment: at least one part per segment in between (the real count is not known yet)
            ahead = part + (msn - last_msn) if msn > last_msn else part - have if msn == last_msn else 0
            if ahead > limit:
                raise BadDirective(f"_HLS_part={part} is more than {limit} parts ahead")  # H27
    return Directives(msn, part, skip)


def satisfied(directives: Directives, has_part, has_segment) -> bool:  # noqa: ANN001
    """True when the requested part or segment exists (``has_part(msn, i)``, ``has_segment(msn)``)."""
    if directives.msn is None:
        return True
    if directives.part is None:
        return has_segment(directives.msn)  # H22
    return has_part(directives.msn, directives.part)  # H23, H24
