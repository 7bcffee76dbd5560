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
  renditions' media sequence numbers cover the same time (H35) — to within one part: a follower never closes a
  segment with a part shorter than :data:`MIN_CLOSING_PART`. When the leader's boundary is passed while the open
  part is shorter than that, the part is filled up as usual and the segment is cut at the next part cut instead.
  Why: hls.js (1.7.4) counts a segment as fully buffered when what is missing of it is shorter than its
  fragment tracker's 0.2 s ``bufferPadding``. If the playlist that closes a segment arrives after the part
  before the last was loaded but before it was appended, hls.js marks the whole segment buffered
  (``FragmentState.OK``) and its audio controller never loads the closing part: a hole in the audio, a stall
  (docs/hls.md, "The stall that was left"). A closing part longer than the padding keeps the segment PARTIAL.
- The leader (video) cannot lengthen its closing part: the segment ends at the keyframe and H05 keeps the other
  parts at 0.85-1 x PART-TARGET (with a 1 s GOP at 30 fps: 4 x 7 frames + 2). Instead, :meth:`Segmenter.hold`
  says when a part just cut may be the one before such a short closing part (the next keyframe, predicted from the
  last GOP, is due within :data:`MIN_CLOSING_PART`). The packager then publishes that part only at the next cut,
  together with the closing part and the segment's end when a keyframe comes, so hls.js sees the part before the
  last and the closing part in the same playlist update and loads them as one chain.
"""

from __future__ import annotations

from collections import deque
from enum import Enum

# hls.js's FragmentTracker.bufferPadding (0.2 s) plus a margin: the shortest last part a follower gives a segment
MIN_CLOSING_PART = 0.22


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
        self._keyframe: float | None = None  # the last keyframe seen (leader) and the interval before it
        self._gop: float | None = None
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
        self._keyframe = self._gop = None

    def decide(self, t: float, keyframe: bool, frame_duration: float | None = None) -> Cut:
        """``frame_duration``: known length of this frame (audio); video estimates from the last interval."""
        if self._last is not None and t > self._last:
            self._interval = t - self._last
        self._last = t
        step = frame_duration if frame_duration is not None else self._interval
        if keyframe and not self.aligned:
            if self._keyframe is not None and t > self._keyframe:
                self._gop = t - self._keyframe
            self._keyframe = t
        if self.segment_start is None:
            self.segment_start = self.part_start = t
            return Cut.SEGMENT
        seg_len = t - self.segment_start
        assert self.part_start is not None
        part_full = (t - self.part_start) + step > self.part_target + 1e-6
        cut_segment = False
        if self.aligned:
            # a boundary the leader has passed; half a frame of tolerance (audio frames do not land on it)
            while self._boundaries and self._boundaries[0] <= self.segment_start + step / 2:
                self._boundaries.popleft()  # stale: at or before this segment's start
            passed = bool(self._boundaries) and t + step / 2 >= self._boundaries[0]
            # never a short closing part: cut at the boundary only if the open part is long enough, else at the
            # next part cut
            if passed and (part_full or t - self.part_start >= min(MIN_CLOSING_PART, self.part_target) - 1e-6):
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
        if part_full:
            self.part_start = t
            return Cut.PART
        return Cut.NONE

    def hold(self, t: float) -> bool:
        """Leader only, right after :meth:`decide` answered ``Cut.PART`` at ``t``: the part that ended at ``t``
        may be followed by a closing part shorter than :data:`MIN_CLOSING_PART` (a keyframe due before then), so
        it should be published with the next cut rather than now (the module doc). At most one part late."""
        if self.aligned or self.segment_start is None:
            return False
        window = min(MIN_CLOSING_PART, self.part_target)
        if t + window <= self.segment_start + self.segment_min:
            return False  # no segment cut possible before the next part is long enough
        if self._keyframe is None or self._gop is None:
            return True  # GOP unknown yet: hold near any possible cut
        due = self._keyframe + self._gop
        while due <= t:  # a keyframe that did not come (a longer GOP): the next one at the same interval
            due += self._gop
        return due - t < window + self._interval / 2
