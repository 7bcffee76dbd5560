from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from webrtc_cast.sfu_tree.layer_selector import LayerSelector


def test_loss_moves_down_one_layer_per_settle_period_and_stops_at_the_lowest():
    sel = LayerSelector(settle=2.0)
    assert sel.on_loss(0.2, 0.0, 3) and sel.cap == 1
    assert not sel.on_loss(0.2, 1.0, 3) and sel.cap == 1  # this report still describes the old layer
    assert sel.on_loss(0.2, 2.5, 3) and sel.cap == 2
    assert not sel.on_loss(0.2, 5.0, 3) and sel.cap == 2


def test_climbs_back_only_after_the_hold_of_clean_reports():
    sel = LayerSelector(hold=5.0)
    sel.on_loss(0.3, 0.0, 3)
    changes = [t for t in range(1, 12) if sel.on_loss(0.0, float(t), 3)]
    assert changes == [6] and sel.cap == 0  # clean from t=1, rise at t=6


def test_a_rise_that_fails_doubles_the_next_hold():
    sel = LayerSelector(hold=5.0)
    sel.on_loss(0.3, 0.0, 3)
    for t in range(1, 7):
        sel.on_loss(0.0, float(t), 3)
    assert sel.cap == 0
    sel.on_loss(0.3, 7.0, 3)  # the higher layer does not fit
    assert sel.cap == 1 and sel.hold == 10.0


def test_moderate_loss_neither_raises_nor_lowers():
    sel = LayerSelector()
    sel.on_loss(0.3, 0.0, 3)
    assert not any(sel.on_loss(0.05, float(t), 3) for t in range(1, 30))
    assert sel.cap == 1


def test_one_layer_never_caps():
    sel = LayerSelector()
    assert not sel.on_loss(0.9, 0.0, 1) and sel.cap == 0


@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 5)), max_size=200), st.integers(1, 3))
def test_cap_stays_in_range_and_rises_at_most_once_per_hold(reports, layers):
    sel = LayerSelector(hold=3.0)
    now, last_rise = 0.0, None
    for loss, dt in reports:
        now += dt
        before = sel.cap
        sel.on_loss(loss, now, layers)
        assert 0 <= sel.cap <= max(0, layers - 1)
        if sel.cap < before:
            assert last_rise is None or now - last_rise >= 3.0 - 1e-9
            last_rise = now


RATES = (110_000.0, 240_000.0, 460_000.0)  # l, m, h as Chromium encodes its fake camera (docs/simulcast.md)


def test_an_estimate_below_the_current_layer_drops_straight_to_the_layer_that_fits():
    sel = LayerSelector()
    assert not sel.on_estimate(500_000, 0.0, RATES, 2) and sel.cap == 0  # h fits
    assert not sel.on_estimate(400_000, 1.0, RATES, 2) and sel.cap == 0  # 0.87 x h: jitter, not a bottleneck
    assert sel.on_estimate(150_000, 2.0, RATES, 2) and sel.cap == 2  # only l fits in 0.9 x 150 kbit/s
    assert sel.estimate == 150_000


def test_an_estimate_step_down_settles_before_the_next():
    sel = LayerSelector(settle=2.0)
    assert sel.on_estimate(300_000, 0.0, RATES, 2) and sel.cap == 1  # h -> m
    assert not sel.on_estimate(100_000, 1.0, RATES, 1) and sel.cap == 1  # still describes h's queue
    assert sel.on_estimate(100_000, 2.5, RATES, 1) and sel.cap == 2


def test_no_rise_while_the_estimate_shows_no_headroom_even_with_clean_loss():
    sel = LayerSelector(hold=5.0)
    sel.on_estimate(200_000, 0.0, RATES, 2)  # down to l (0.9 x 200k fits l only)
    assert sel.cap == 2
    for t in range(1, 20):
        sel.on_estimate(120_000, float(t), RATES, 0)  # l is all it can take: 120k < min(240k, 1.3 x 110k)
        assert not sel.on_loss(0.0, float(t), 3)
    assert sel.cap == 2
    sel.on_estimate(170_000, 20.0, RATES, 0)  # the link clears: the estimate climbs to its ceiling over l
    assert sel.on_loss(0.0, 20.0, 3) and sel.cap == 1  # clean for long enough already: the rise is the probe


def test_after_a_rise_a_lagging_estimate_is_not_a_reason_to_fall_back_but_a_falling_one_is():
    sel = LayerSelector(hold=5.0)
    sel.on_estimate(170_000, 0.0, RATES, 1)  # m needs 240k: down to l
    assert sel.cap == 2
    for t in range(1, 7):
        sel.on_estimate(170_000, float(t), RATES, 0)
        sel.on_loss(0.0, float(t), 3)
    assert sel.cap == 1  # rose to m at t=6
    for t, rate in ((7.0, 180_000), (8.0, 195_000), (9.0, 210_000)):  # lagging, but climbing: stay
        assert not sel.on_estimate(rate, t, RATES, 1)
    assert sel.on_estimate(150_000, 10.0, RATES, 1) and sel.cap == 2  # falling: overuse on m
    assert sel.hold == 10.0


def test_a_stale_estimate_no_longer_vetoes_a_rise():
    sel = LayerSelector(hold=5.0, estimate_ttl=3.0)
    sel.on_estimate(120_000, 0.0, RATES, 1)  # m needs 240k: down to l, and no headroom
    assert sel.cap == 2
    rises = [t for t in range(1, 15) if sel.on_loss(0.0, float(t), 3)]
    assert rises and rises[0] >= 6  # the REMB stopped at t=0; loss alone decides after the TTL and the hold


def test_a_rise_refused_by_the_estimate_doubles_the_hold():
    sel = LayerSelector(hold=5.0)
    sel.on_loss(0.3, 0.0, 3)  # cap 1 (m)
    for t in range(1, 7):
        sel.on_estimate(330_000, float(t), RATES, 1)  # 1.3 x 240k = 312k: headroom
        sel.on_loss(0.0, float(t), 3)
    assert sel.cap == 0
    assert sel.on_estimate(300_000, 8.0, RATES, 2) and sel.cap == 1  # h does not fit after all
    assert sel.hold == 10.0


@given(
    st.lists(st.tuples(st.booleans(), st.floats(0, 2e6), st.floats(0, 1), st.floats(0, 5)), max_size=200),
)
def test_mixed_signals_keep_the_cap_in_range(events):
    sel = LayerSelector()
    now = 0.0
    for is_remb, rate, loss, dt in events:
        now += dt
        current = 2 - sel.cap
        if is_remb:
            sel.on_estimate(rate, now, RATES, current)
        else:
            sel.on_loss(loss, now, 3)
        assert 0 <= sel.cap <= 2
