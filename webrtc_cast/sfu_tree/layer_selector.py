"""LayerSelector: automatic simulcast layer choice for one viewer from its loss reports — pure.

Chrome and aiortc viewers report ``fraction lost`` for our video stream in RTCP receiver reports (about once a
second). The selector keeps a *cap*: how many layers from the top the viewer must stay below.
- Down fast: one report above ``down_loss`` lowers the cap one layer (a layer switch happens at the lower layer's
  next keyframe, which the Broadcast requests). The next ``settle`` seconds of reports still describe the old
  layer, so they cannot lower it again (measured: without this a viewer always fell two layers).
- Up cautiously: after ``hold`` seconds of reports under ``up_loss`` the cap rises one layer. A rise that is
  followed by loss within ``hold`` doubles the hold for the next try (up to ``max_hold``), so a viewer on a link
  that cannot carry the higher layer does not oscillate; a clean period resets it.
NACK repairs travel on RTX, so the loss seen here is what the link dropped, not what the viewer ended up missing.
"""

from __future__ import annotations


class LayerSelector:
    __slots__ = (
        "down_loss", "up_loss", "base_hold", "max_hold", "settle", "hold", "cap", "_clean_since", "_raised_at",
        "_lowered_at",
    )

    def __init__(
        self, down_loss: float = 0.08, up_loss: float = 0.02, hold: float = 5.0, max_hold: float = 60.0,
        settle: float = 2.0,
    ):
        self.down_loss = down_loss
        self.up_loss = up_loss
        self.base_hold = hold
        self.max_hold = max_hold
        self.settle = settle  # after a step down, reports still describe the old layer: no second step before this
        self.hold = hold
        self.cap = 0
        self._lowered_at: float | None = None  # 0: any layer; n: at least n layers below the top
        self._clean_since: float | None = None
        self._raised_at: float | None = None

    def on_loss(self, fraction_lost: float, now: float, layers: int) -> bool:
        """Feed one report; True when the cap changed (the caller re-selects the viewer's layer)."""
        if layers <= 1:
            self.cap = 0
            return False
        if fraction_lost > self.down_loss:
            self._clean_since = None
            if self._raised_at is not None and now - self._raised_at < self.hold:
                self.hold = min(self.max_hold, self.hold * 2)  # the last rise did not hold: wait longer next time
            self._raised_at = None
            if self._lowered_at is not None and now - self._lowered_at < self.settle:
                return False
            if self.cap < layers - 1:
                self.cap += 1
                self._lowered_at = now
                return True
            return False
        if fraction_lost > self.up_loss:
            self._clean_since = None
            return False
        if self._clean_since is None:
            self._clean_since = now
            return False
        if self.cap > 0 and now - self._clean_since >= self.hold:
            self.cap -= 1
            self._clean_since = now
            self._raised_at = now
            return True
        if self._raised_at is not None and now - self._raised_at >= 2 * self.hold:
            self.hold = self.base_hold  # it held: the next rise waits the base time again
            self._raised_at = None
        return False
