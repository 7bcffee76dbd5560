"""Placement tickets: a redirected viewer's stand-in for its Bearer token (pure)."""

from webrtc_cast.access.tickets import check_ticket, make_ticket


def test_a_ticket_is_valid_for_its_stream_key_and_lifetime_only():
    t = make_ticket("k", "live", 1000.0)
    assert check_ticket(["other", "k"], "live", t, 1000.0)
    assert check_ticket(["k"], "live", t, 1029.0)
    assert not check_ticket(["k"], "live", t, 1031.0)  # expired
    assert not check_ticket(["k"], "other", t, 1000.0)
    assert not check_ticket(["x"], "live", t, 1000.0)
    assert not check_ticket([], "live", t, 1000.0)
    for bad in ("", ".", "abc.def", "1030", "1030.", "9" * 100, "1030." + "0" * 32):
        assert not check_ticket(["k"], "live", bad, 1000.0)
    far = make_ticket("k", "live", 1000.0, seconds=10_000)
    assert not check_ticket(["k"], "live", far, 1000.0)  # longer-lived than any origin issues
