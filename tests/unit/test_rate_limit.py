"""Token-bucket rate limits per client address (signaling.rate_limit)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webrtc_cast.access.rate_limit import RateLimiter


def test_burst_then_wait() -> None:
    rl = RateLimiter(rate=2.0, burst=3)
    assert [rl.allow("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rl.allow("a", 0.0) == pytest.approx(0.5)
    assert rl.allow("a", 0.25) == pytest.approx(0.25)
    assert rl.allow("a", 0.5) == 0.0
    assert rl.allow("a", 0.5) == pytest.approx(0.5)


def test_keys_are_independent() -> None:
    rl = RateLimiter(rate=1.0, burst=1)
    assert rl.allow("a", 0.0) == 0.0
    assert rl.allow("a", 0.0) > 0
    assert rl.allow("b", 0.0) == 0.0


def test_refill_is_capped_at_burst() -> None:
    rl = RateLimiter(rate=10.0, burst=2)
    assert rl.allow("a", 0.0) == 0.0
    assert rl.allow("a", 1000.0) == 0.0
    assert rl.allow("a", 1000.0) == 0.0
    assert rl.allow("a", 1000.0) > 0


def test_zero_rate_waits_forever_after_the_burst() -> None:
    rl = RateLimiter(rate=0.0, burst=1)
    assert rl.allow("a", 0.0) == 0.0
    assert rl.allow("a", 1e9) == math.inf


def test_zero_burst_never_allows() -> None:
    rl = RateLimiter(rate=1.0, burst=0)
    assert rl.allow("a", 0.0) > 0


def test_remembers_at_most_max_keys_evicting_the_least_recent() -> None:
    rl = RateLimiter(rate=1.0, burst=1, max_keys=2)
    rl.allow("a", 0.0)
    rl.allow("b", 0.0)
    rl.allow("a", 0.0)  # a is now the most recent
    rl.allow("c", 0.0)  # evicts b
    assert len(rl._buckets) == 2
    assert rl.allow("b", 0.0) == 0.0  # forgotten, so a full bucket again
    assert rl.allow("c", 0.0) > 0


@settings(max_examples=150, deadline=None)
@given(
    rate=st.floats(0.5, 50.0),
    burst=st.integers(1, 20),
    gaps=st.lists(st.floats(0.0, 0.5), min_size=1, max_size=200),
)
def test_allowed_requests_never_exceed_burst_plus_rate_times_time(rate: float, burst: int, gaps: list[float]) -> None:
    rl = RateLimiter(rate, burst)
    now = 0.0
    allowed = 0
    for gap in gaps:
        now += gap
        wait = rl.allow("k", now)
        assert wait >= 0.0
        if wait == 0.0:
            allowed += 1
        else:
            # waiting as told is enough for the next request to pass
            probe = RateLimiter(rate, burst)
            probe._buckets = rl._buckets.copy()
            assert probe.allow("k", now + wait + 1e-9) == 0.0
        assert allowed <= burst + rate * now + 1e-6
