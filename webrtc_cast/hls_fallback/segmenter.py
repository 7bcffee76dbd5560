"""Cut decisions for CMAF parts and segments — pure.

Times are seconds on the rendition's media timeline. :meth:`Segmenter.decide` is asked once per frame, before
the frame is added, and answers whether the frame starts a new segment, a new part, or continues the part.

Rules (conformance.md §3):
- A segment is cut at a keyframe once it is at least ``segment_min`` long (H40: segments start with an IDR). If
  the encoder's GOP is longer than the target duration allows, the segment is cut without a keyframe just before
  its rounded EXTINF would exceed TARGETDURATION (H17); that segment's first part is then not INDEPENDENT.
- A part is cut before the frame that would take it past ``part_target`` (H05: DURATION <= PART-TARGET), using
  the last frame interval as the estimate of the next one.
- Audio (every frame independent) follows the video's segment boundaries when told (:meth:`align_to`), so the
  renditions' media sequence numbers cover the same time (H35).
"""

from __future__ import annotations

from collections import deque
from enum import Enum


class Cut(Enum):
    NONE = 0
    PART = 1
    SEGMENT = 2


class Segmenter:
    def __init__(self, part_target: float, segment_min: float, target_duration: int, aligned: bool = False) -> None:
        if not 0 < part_target <= segment_min <= target_duration:
            raise ValueError("need 0 < part_target <= segment_min <= target_duration")
        self.part_target = part_target
        self.segment_min = segment_min
        self.target_duration = target_duration
        self.segment_start: float | None = None
        self.part_start: float | None = None
        self._last: float | None = None
        self._interval = 0.0
        self._boundaries: deque[float] = deque()  # aligned mode: segment starts announced by the leader
        self.aligned = aligned  # a follower: cuts segments only where the leader did (or to honour H17)

    def align_to(self, boundary: float) -> None:
        """Aligned mode (audio): start a new segment at the first frame at or after ``boundary``."""
        self.aligned = True
        self._boundaries.append(boundary)

    def reset(self) -> None:
        """A discontinuity: the next frame starts a segment whatever it is."""
        self.segment_start = self.part_start = self._last = None
        self._interval = 0.0
        self._boundaries.clear()

    def decide(self, t: float, keyframe: bool, frame_duration: float | None = None) -> Cut:
        """``frame_duration``: known length of this frame (audio); video estimates from the last interval."""
        if self._last is not None and t > self._last:
            self._interval = t - self._last
        self._last = t
        step = frame_duration if frame_duration is not None else self._interval
        if self.segment_start is None:
            self.segment_start = self.part_start = t
            return Cut.SEGMENT
        seg_len = t - self.segment_start
        cut_segment = False
        if self.aligned:
            # a boundary the leader has passed; half a frame of tolerance (audio frames do not land on it)
            while self._boundaries and self._boundaries[0] <= self.segment_start + step / 2:
                self._boundaries.popleft()  # stale: at or before this segment's start
            if self._boundaries and t + step / 2 >= self._boundaries[0]:
                self._boundaries.popleft()
                cut_segment = True
        elif keyframe and seg_len >= self.segment_min - 1e-6:
            cut_segment = True
        # no keyframe (or leader boundary) in time: keep EXTINF within TARGETDURATION (H17)
        if not cut_segment and seg_len > 0 and round(seg_len + step + 1e-9) > self.target_duration:
            cut_segment = True
        if cut_segment:
            self.segment_start = self.part_start = t
            return Cut.SEGMENT
        assert self.part_start is not None
        if (t - self.part_start) + step > self.part_target + 1e-6:
            self.part_start = t
            return Cut.PART
        return Cut.NONE
