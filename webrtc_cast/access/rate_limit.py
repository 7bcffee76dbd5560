"""Token buckets per client address (RFC 9725 §5: POST/PATCH/DELETE floods are rate-limited) — pure."""

from __future__ import annotations

import math
from collections import OrderedDict


class RateLimiter:
    """``rate`` requests per second with bursts of ``burst`` per key; remembers at most ``max_keys`` keys."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, last time)

    def allow(self, key: str, now: float) -> float:
        """0.0 when the request may go ahead, else the seconds to wait before the next one is allowed."""
        tokens, last = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[key] = (tokens, now)
            wait = (1.0 - tokens) / self.rate if self.rate > 0 else math.inf
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait
