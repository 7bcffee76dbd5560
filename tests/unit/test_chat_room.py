"""Room: joins, limits, slow mode, moderation, bus events in order, reaction aggregation — no I/O."""

from __future__ import annotations

import json

from signaling.chat import protocol as p
from signaling.chat.room import Limits, Member, Room, chat_role

LIMITS = Limits(history=3, message_burst=2, messages_per_second=1.0, max_violations=3, violation_window=10.0,
                reaction_burst=2, reactions_per_second=1.0, frame_burst=100, frames_per_second=100.0)


def room(**kw: object) -> Room:
    return Room("r", kw.pop("limits", LIMITS), ["mod"], kw.pop("view_tokens", []))  # type: ignore[arg-type]


def frames(out) -> list[dict]:  # noqa: ANN001
    return [json.loads(f) for f in out.reply]


def joined(r: Room, name: str = "ann", token: str | None = None, uid: str = "u1") -> Member:
    m = Member(key=name, uid=uid, addr_key="addr:" + name)
    frame = {"type": "join", "name": name, **({"token": token} if token else {})}
    out = r.receive(m, json.dumps(frame), 0.0, 0.0)
    assert [f["type"] for f in frames(out)] == ["welcome", "history"]
    return m


def test_roles() -> None:
    assert chat_role(None, ["m"], []) == "viewer"
    assert chat_role("m", ["m"], []) == "moderator"
    assert chat_role("x", ["m"], []) is None
    assert chat_role(None, ["m"], ["v"]) is None
    assert chat_role("v", ["m"], ["v"]) == "viewer"


def test_message_rate_limit_and_abuse_close() -> None:
    r = room()
    m = joined(r)
    msg = json.dumps({"type": "message", "text": "hi"})
    assert len(r.receive(m, msg, 1.0, 1000.0).publish) == 1
    assert len(r.receive(m, msg, 1.0, 1000.0).publish) == 1
    out = r.receive(m, msg, 1.0, 1000.0)
    assert not out.publish and out.errors == [p.RATE_LIMITED] and out.close is None
    assert frames(out)[0]["retry_after"] == 1.0
    assert r.receive(m, msg, 1.1, 1000.0).close is None
    assert r.receive(m, msg, 1.2, 1000.0).close == (p.CLOSE_POLICY, "too many violations")


def test_violations_expire() -> None:
    r = room()
    m = joined(r)
    for t in (1.0, 2.0, 13.0, 14.0):
        assert r.receive(m, "nope", t, 0.0).close is None


def test_not_joined_and_join_errors() -> None:
    r = room(view_tokens=["v"])
    m = Member(key="k", uid="u")
    assert r.receive(m, json.dumps({"type": "message", "text": "x"}), 0, 0).errors == [p.NOT_JOINED]
    out = r.receive(m, json.dumps({"type": "join", "name": "x"}), 0, 0)
    assert out.close == (p.CLOSE_UNAUTHORIZED, "unauthorized")
    out = r.receive(m, json.dumps({"type": "join", "name": "x", "v": 9}), 0, 0)
    assert out.close is not None and out.close[0] == p.CLOSE_PROTOCOL


def test_slow_mode_spares_moderators() -> None:
    r = room()
    viewer, mod = joined(r), joined(r, "host", "mod", uid="u2")
    r.apply({"t": "slow", "seconds": 10, "by": "host"})
    msg = json.dumps({"type": "message", "text": "hi"})
    assert r.receive(viewer, msg, 1.0, 0).publish
    out = r.receive(viewer, msg, 5.0, 0)
    assert out.errors == [p.SLOW_MODE] and frames(out)[0]["retry_after"] == 6.0
    assert r.receive(mod, msg, 5.0, 0).publish and r.receive(mod, msg, 5.0, 0).publish


def test_moderation_requires_a_moderator() -> None:
    r = room()
    viewer, mod = joined(r), joined(r, "host", "mod", uid="u2")
    ban = json.dumps({"type": "ban", "uid": "u1"})
    assert r.receive(viewer, ban, 0, 0).errors == [p.FORBIDDEN]
    assert r.receive(mod, ban, 0, 0).publish == [{"t": "ban", "uid": "u1", "by": "host"}]
    frame, kicks = r.apply({"t": "ban", "uid": "u1", "by": "host"})
    assert kicks == ["u1"] and json.loads(frame)["action"] == "ban"
    again = Member(key="k2", uid="u1")
    assert r.receive(again, json.dumps({"type": "join", "name": "x"}), 0, 0).close == (p.CLOSE_BANNED, "banned")
    assert r.apply({"t": "ban", "uid": "addr:x", "quiet": True}) == (None, ["addr:x"])
    other = Member(key="k3", uid="u9", addr_key="addr:x")
    assert r.receive(other, json.dumps({"type": "join", "name": "x"}), 0, 0).errors == [p.BANNED]


def test_history_is_capped_ordered_and_idempotent() -> None:
    r = room()
    for i in range(1, 6):
        frame, _ = r.apply({"t": "msg", "id": i, "uid": "u", "name": "n", "text": str(i), "mod": False, "ts": 0})
        assert json.loads(frame)["id"] == i
    assert r.apply({"t": "msg", "id": 4, "uid": "u", "name": "n", "text": "dup", "mod": False, "ts": 0}) == (None, [])
    history = json.loads(r.history_frame())
    assert [m["id"] for m in history["messages"]] == [3, 4, 5]
    mod = joined(r, "host", "mod", uid="m")
    out = r.receive(mod, json.dumps({"type": "pin", "id": 5}), 0, 0)
    r.apply(out.publish[0])
    r.apply({"t": "del", "id": 5, "by": "host"})
    history = json.loads(r.history_frame())
    assert [m["id"] for m in history["messages"]] == [3, 4] and history["pinned"] is None
    assert r.receive(mod, json.dumps({"type": "pin", "id": 1}), 0, 0).errors == [p.NOT_FOUND]


def test_malformed_bus_events_are_ignored() -> None:
    r = room()
    for event in ({}, {"t": "msg"}, {"t": "del"}, {"t": "rx", "counts": 5}, {"t": "slow", "seconds": "x"}):
        assert r.apply(event) == (None, [])


def test_reactions_are_aggregated_per_interval() -> None:
    r = room()
    m = joined(r)
    fire = json.dumps({"type": "reaction", "emoji": p.REACTIONS[-1]})
    assert not r.receive(m, fire, 1.0, 0).reply
    assert not r.receive(m, fire, 1.0, 0).reply
    assert r.receive(m, fire, 1.0, 0).errors == [p.RATE_LIMITED]
    counts = r.take_local_reactions()
    assert counts == {p.REACTIONS[-1]: 2} and r.take_local_reactions() is None
    r.apply({"t": "rx", "counts": counts})
    r.apply({"t": "rx", "counts": {p.REACTIONS[0]: 3, "bogus": 9}})
    assert json.loads(r.reactions_frame(0.25)) == {
        "type": "reactions", "counts": {p.REACTIONS[0]: 3, p.REACTIONS[-1]: 2}, "interval": 0.25
    }
    assert r.reactions_frame(0.25) is None


def test_viewers_frame_only_on_change() -> None:
    r = room()
    assert json.loads(r.viewers_frame(3)) == {"type": "viewers", "count": 3}
    assert r.viewers_frame(3) is None
    assert r.viewers_frame(4) is not None


def test_load_snapshot() -> None:
    r = room()
    msgs = [{"t": "msg", "id": i, "uid": "u", "name": "n", "text": "t", "mod": False, "ts": 0} for i in (9, 7, 8)]
    r.load(msgs, None, 2.0, {"u"})
    assert [m["id"] for m in r.history] == [7, 8, 9] and r.last_id == 9 and r.slow_mode == 2.0
    assert r.apply(msgs[0]) == (None, [])
