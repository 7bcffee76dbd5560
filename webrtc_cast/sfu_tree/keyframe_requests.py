"""KeyframeRequests: merge and throttle keyframe requests toward a publisher — pure."""

from __future__ import annotations


class KeyframeRequests:
    """Many viewers' PLI/FIR and joins become at most one upstream request per ``min_interval`` seconds."""

    __slots__ = ("min_interval", "_last_sent", "_pending", "requested", "sent")

    def __init__(self, min_interval: float = 0.5) -> None:
        self.min_interval = min_interval
        self._last_sent: float | None = None
        self._pending = False
        self.requested = 0
        self.sent = 0

    def request(self, now: float) -> bool:
        """Record a request; True when one should go upstream now."""
        self.requested += 1
        if self._last_sent is None or now - self._last_sent >= self.min_interval:
            self._last_sent = now
            self._pending = False
            self.sent += 1
            return True
        self._pending = True
        return False

    def poll(self, now: float) -> bool:
        """Called periodically: True when a request held back by the throttle is now due."""
        if self._pending and self._last_sent is not None and now - self._last_sent >= self.min_interval:
            self._last_sent = now
            self._pending = False
            self.sent += 1
            return True
        return False

    def keyframe_arrived(self) -> None:
        """A keyframe satisfies every request held back."""
        self._pending = False
