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
