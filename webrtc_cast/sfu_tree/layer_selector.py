"""LayerSelector: automatic simulcast layer choice for one viewer, from its bandwidth estimate and loss — pure.

The selector keeps a *cap*: how many layers from the top the viewer must stay below. Two signals feed it:

- **REMB** (the viewer's receive-side bandwidth estimate; Chrome sends it about once a second when the answer
  carries ``goog-remb`` and the abs-send-time extension, which the forwarding loop stamps on every video packet
  with our send time). Its delay-based estimator sees a queue building at a bottleneck before packets are lost,
  so it drives the way *down*: when the estimate falls below ``down_ratio`` x the current layer's bitrate, the cap
  drops straight to the highest layer that fits in ``fit_ratio`` x the estimate (several layers at once if need
  be). It also vetoes the way *up*: a rise needs the estimate at the next layer's bitrate or at least
  ``up_ratio`` x the current one. A receive-side estimate never climbs above ~1.5x what it receives, so the
  next layer (often 2x) cannot be proven in advance; the rise itself is the probe. For ``hold`` seconds after a
  rise the estimate lags behind the new rate, so only a *falling* estimate (overuse) lowers the cap then; a rise
  that the estimate or the loss refuses within ``hold`` doubles the next hold.
- **Loss** (``fraction lost`` of RTCP receiver reports, about once a second): one report above ``down_loss``
  lowers the cap one layer — the signal for links that drop instead of queueing (policers) and for viewers that
  send no REMB (aiortc without abs-send-time, Firefox, FFmpeg). *Up*: after ``hold`` seconds of reports under
  ``up_loss`` (and no REMB veto) the cap rises one layer.

After a step down the next ``settle`` seconds of reports still describe the old layer, so they cannot lower it
again (measured: without this a viewer always fell two layers). An estimate older than ``estimate_ttl`` seconds
no longer vetoes anything (a viewer that stopped sending REMB is judged on loss alone).
NACK repairs travel on RTX, so the loss seen here is what the link dropped, not what the viewer ended up missing.
"""

from __future__ import annotations

from collections.abc import Sequence


class LayerSelector:
    __slots__ = (
        "down_loss", "up_loss", "base_hold", "max_hold", "settle", "hold", "cap", "down_ratio", "fit_ratio",
        "up_ratio", "estimate_ttl", "estimate", "_estimate_at", "_headroom", "_clean_since", "_raised_at",
        "_lowered_at",
    )

    def __init__(
        self, down_loss: float = 0.08, up_loss: float = 0.02, hold: float = 5.0, max_hold: float = 60.0,
        settle: float = 2.0, down_ratio: float = 0.8, fit_ratio: float = 0.9, up_ratio: float = 1.2,
        estimate_ttl: float = 3.0,
    ):
        self.down_loss = down_loss
        self.up_loss = up_loss
        self.base_hold = hold
        self.max_hold = max_hold
        self.settle = settle  # after a step down, reports still describe the old layer: no second step before this
        self.down_ratio = down_ratio
        self.fit_ratio = fit_ratio
        self.up_ratio = up_ratio
        self.estimate_ttl = estimate_ttl
        self.hold = hold
        self.cap = 0  # 0: any layer; n: at least n layers below the top
        self.estimate: float | None = None  # the latest REMB, bits per second
        self._estimate_at: float | None = None
        self._headroom = True  # the latest estimate allows a rise
        self._lowered_at: float | None = None
        self._clean_since: float | None = None
        self._raised_at: float | None = None

    # -- loss ---------------------------------------------------------------------------------------------
    def on_loss(self, fraction_lost: float, now: float, layers: int) -> bool:
        """Feed one receiver report; True when the cap changed (the caller re-selects the viewer's layer)."""
        if layers <= 1:
            self.cap = 0
            return False
        if fraction_lost > self.down_loss:
            self._clean_since = None
            return self._lower(min(self.cap + 1, layers - 1), now)
        if fraction_lost > self.up_loss:
            self._clean_since = None
            return False
        if self._clean_since is None:
            self._clean_since = now
            return False
        if self.cap > 0 and now - self._clean_since >= self.hold and self._may_rise(now):
            self.cap -= 1
            self._clean_since = now
            self._raised_at = now
            return True
        if self._raised_at is not None and now - self._raised_at >= 2 * self.hold:
            self.hold = self.base_hold  # it held: the next rise waits the base time again
            self._raised_at = None
        return False

    # -- bandwidth estimate -------------------------------------------------------------------------------
    def on_estimate(self, bitrate: float, now: float, layer_bitrates: Sequence[float], current: int) -> bool:
        """Feed one REMB (bits/s). ``layer_bitrates``: the measured bitrate of each layer automatic selection
        may use, smallest first; ``current``: the index of the layer the viewer is on (or switching to).
        True when the cap changed."""
        previous = self.estimate if self._estimate_at is not None else None
        self.estimate = bitrate
        self._estimate_at = now
        n = len(layer_bitrates)
        if n <= 1 or not 0 <= current < n or layer_bitrates[current] <= 0:
            self._headroom = True
            return False
        need = layer_bitrates[current]
        if current + 1 < n:
            up_need = min(layer_bitrates[current + 1], self.up_ratio * need)
            self._headroom = up_need <= 0 or bitrate >= up_need
        else:
            self._headroom = True
        if bitrate >= self.down_ratio * need or current == 0:
            return False
        just_raised = self._raised_at is not None and now - self._raised_at < self.hold
        if just_raised and (previous is None or bitrate >= previous):
            # Just raised: the estimate still describes the smaller layer and climbs toward the new rate. Only a
            # falling estimate (the estimator saw a queue build: overuse) says the new layer does not fit.
            return False
        fits = [i for i in range(current) if layer_bitrates[i] <= self.fit_ratio * bitrate]
        target = fits[-1] if fits else 0
        return self._lower(n - 1 - target, now)

    # -- shared -------------------------------------------------------------------------------------------
    def _may_rise(self, now: float) -> bool:
        fresh = self._estimate_at is not None and now - self._estimate_at <= self.estimate_ttl
        return self._headroom or not fresh

    def _lower(self, cap: int, now: float) -> bool:
        if self._raised_at is not None and now - self._raised_at < self.hold:
            self.hold = min(self.max_hold, self.hold * 2)  # the last rise did not hold: wait longer next time
        self._raised_at = None
        self._clean_since = None
        if cap <= self.cap or (self._lowered_at is not None and now - self._lowered_at < self.settle):
            return False
        self.cap = cap
        self._lowered_at = now
        return True
