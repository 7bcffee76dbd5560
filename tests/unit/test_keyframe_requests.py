"""KeyframeRequests: merging and throttling of upstream keyframe requests (webrtc_cast.sfu_tree.keyframe_requests)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from webrtc_cast.sfu_tree.keyframe_requests import KeyframeRequests


def test_first_request_goes_upstream_at_once() -> None:
    k = KeyframeRequests(0.5)
    assert k.request(100.0)
    assert (k.requested, k.sent) == (1, 1)


def test_requests_within_the_interval_are_merged_and_sent_by_poll() -> None:
    k = KeyframeRequests(0.5)
    assert k.request(0.0)
    assert not k.request(0.1)
    assert not k.request(0.2)
    assert not k.poll(0.3)
    assert k.poll(0.5)
    assert not k.poll(0.6)  # one held-back request, sent once
    assert (k.requested, k.sent) == (3, 2)


def test_request_after_the_interval_goes_at_once() -> None:
    k = KeyframeRequests(0.5)
    assert k.request(0.0)
    assert k.request(0.5)
    assert not k.request(0.9)
    assert k.request(1.0)
    assert not k.poll(10.0)  # the request at 1.0 cleared the pending one


def test_keyframe_arrival_cancels_held_back_requests() -> None:
    k = KeyframeRequests(0.5)
    k.request(0.0)
    k.request(0.1)
    k.keyframe_arrived()
    assert not k.poll(1.0)
    assert k.sent == 1


def test_poll_without_requests_does_nothing() -> None:
    k = KeyframeRequests(0.5)
    assert not k.poll(0.0)
    assert not k.poll(100.0)
    assert k.sent == 0


def test_zero_interval_sends_every_request() -> None:
    k = KeyframeRequests(0.0)
    assert all(k.request(1.0) for _ in range(5))


@settings(max_examples=200, deadline=None)
@given(
    interval=st.floats(0.05, 2.0),
    ops=st.lists(st.tuples(st.sampled_from(["request", "poll", "keyframe"]), st.floats(0.0, 1.0)), max_size=60),
)
def test_never_more_than_one_upstream_request_per_interval(interval: float, ops: list[tuple[str, float]]) -> None:
    """No PLI storm: upstream sends are at least ``interval`` apart, and a request is never silently lost
    (each request is answered at once, by a later poll, or by a keyframe)."""
    k = KeyframeRequests(interval)
    now = 0.0
    sends: list[float] = []
    outstanding = False
    for op, dt in ops:
        now += dt
        if op == "request":
            if k.request(now):
                sends.append(now)
                outstanding = False
            else:
                outstanding = True
        elif op == "poll":
            if k.poll(now):
                sends.append(now)
                assert outstanding
                outstanding = False
        else:
            k.keyframe_arrived()
            outstanding = False
    for a, b in zip(sends, sends[1:], strict=False):
        assert b - a >= interval
    assert k.sent == len(sends)
    if outstanding:
        assert k.poll(now + interval + 1e-9)
