"""The chat wire protocol: parsing is total (ProtocolError or a frame, nothing else), frames encode exactly."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from signaling.chat import protocol as p

LIMITS = {"max_bytes": 4096, "max_text_chars": 20, "max_name_chars": 8, "max_slow_mode": 60.0}


def parse(frame: object) -> p.ClientFrame:
    return p.parse_client_frame(frame if isinstance(frame, str) else json.dumps(frame), **LIMITS)


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ({"type": "join", "name": " ann "}, p.Join("ann")),
        ({"type": "join", "name": "ann", "token": "t", "v": 1}, p.Join("ann", "t")),
        ({"type": "message", "text": "hi\nthere"}, p.Message("hi\nthere")),
        ({"type": "message", "text": "e\u0301"}, p.Message("\u00e9")),  # NFC
        ({"type": "reaction", "emoji": "\u2764\ufe0f"}, p.Reaction("\u2764\ufe0f")),
        ({"type": "delete", "id": 3}, p.Delete(3)),
        ({"type": "ban", "uid": "abc"}, p.Ban("abc")),
        ({"type": "unban", "uid": "abc"}, p.Unban("abc")),
        ({"type": "slow_mode", "seconds": 2.5}, p.SlowMode(2.5)),
        ({"type": "pin", "id": None}, p.Pin(None)),
        ({"type": "pin", "id": 7}, p.Pin(7)),
    ],
)
def test_valid_frames(frame: dict, expected: p.ClientFrame) -> None:
    assert parse(frame) == expected


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{", p.BAD_FRAME),
        ("[1]", p.BAD_FRAME),
        ({"type": "what"}, p.UNKNOWN_TYPE),
        ({"type": "join", "name": "ann", "v": 2}, p.UNSUPPORTED_VERSION),
        ({"type": "join", "name": ""}, p.BAD_NAME),
        ({"type": "join", "name": "a very long name"}, p.BAD_NAME),
        ({"type": "join", "name": "a\nb"}, p.BAD_NAME),
        ({"type": "join", "name": "ann", "token": 5}, p.BAD_FRAME),
        ({"type": "message", "text": "   "}, p.BAD_TEXT),
        ({"type": "message", "text": 5}, p.BAD_TEXT),
        ({"type": "message", "text": "x" * 21}, p.TEXT_TOO_LONG),
        ({"type": "message", "text": "bell\x07"}, p.BAD_TEXT),
        ({"type": "message", "text": "rtl\u202eoverride"}, p.BAD_TEXT),
        ({"type": "reaction", "emoji": "x"}, p.BAD_REACTION),
        ({"type": "delete", "id": -1}, p.BAD_FRAME),
        ({"type": "delete", "id": True}, p.BAD_FRAME),
        ({"type": "ban", "uid": ""}, p.BAD_FRAME),
        ({"type": "slow_mode", "seconds": 61}, p.BAD_FRAME),
        ({"type": "slow_mode", "seconds": "1"}, p.BAD_FRAME),
        ("x" * 5000, p.FRAME_TOO_LARGE),
        ("[" * 100_000, p.FRAME_TOO_LARGE),
    ],
)
def test_invalid_frames(frame: object, code: str) -> None:
    with pytest.raises(p.ProtocolError) as info:
        parse(frame)
    assert info.value.code == code


def test_deep_nesting_is_a_bad_frame() -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.parse_client_frame("[" * 3000, max_bytes=10_000, max_text_chars=10, max_name_chars=10, max_slow_mode=1)
    assert info.value.code == p.BAD_FRAME


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_any_wire_input_parses_or_raises_protocol_error(raw: str | bytes) -> None:
    try:
        parse(raw) if isinstance(raw, str) else p.parse_client_frame(raw, **LIMITS)
    except p.ProtocolError:
        pass


@given(st.sampled_from(["join", "message", "reaction", "delete", "ban", "slow_mode", "pin", "x"]),
       st.dictionaries(st.sampled_from(["name", "text", "emoji", "id", "uid", "seconds", "token", "v"]), json_values))
def test_any_object_parses_or_raises_protocol_error(kind: str, fields: dict) -> None:
    try:
        parse({"type": kind, **fields})
    except p.ProtocolError:
        pass


@pytest.mark.parametrize("n", [0, 1, 125, 126, 65535, 65536, 70000])
def test_ws_text_frame_lengths(n: int) -> None:
    payload = b"a" * n
    frame = p.ws_text_frame(payload)
    assert frame[0] == 0x81 and frame.endswith(payload)
    if n < 126:
        assert frame[1] == n and len(frame) == n + 2
    elif n < 65536:
        assert frame[1] == 126 and int.from_bytes(frame[2:4], "big") == n
    else:
        assert frame[1] == 127 and int.from_bytes(frame[2:10], "big") == n


def test_error_frame() -> None:
    assert json.loads(p.error_frame(p.RATE_LIMITED, "slow down", 0.12345)) == {
        "type": "error", "code": "rate_limited", "message": "slow down", "retry_after": 0.123
    }
