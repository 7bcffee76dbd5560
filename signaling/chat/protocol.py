"""Chat wire protocol, version 1: JSON text frames, validated into small frozen objects — pure.

The schema is documented in docs/chat.md. Every parse failure raises ``ProtocolError`` with a stable ``code``;
nothing here raises anything else on any input.
"""

from __future__ import annotations

import json
import struct
import unicodedata
from dataclasses import dataclass

VERSION = 1

# The fixed set of reactions a viewer may send (anything else is refused with ``bad_reaction``).
REACTIONS: tuple[str, ...] = ("\U0001f44d", "\u2764\ufe0f", "\U0001f602", "\U0001f62e", "\U0001f44f", "\U0001f525")
REACTION_SET = frozenset(REACTIONS)

# Error codes (the ``code`` of an ``error`` frame).
BAD_FRAME = "bad_frame"  # not JSON, not an object, or a field of the wrong type
FRAME_TOO_LARGE = "frame_too_large"
UNKNOWN_TYPE = "unknown_type"
UNSUPPORTED_VERSION = "unsupported_version"
NOT_JOINED = "not_joined"
ALREADY_JOINED = "already_joined"
BAD_NAME = "bad_name"
BAD_TEXT = "bad_text"
TEXT_TOO_LONG = "text_too_long"
BAD_REACTION = "bad_reaction"
RATE_LIMITED = "rate_limited"
SLOW_MODE = "slow_mode"
FORBIDDEN = "forbidden"
UNAUTHORIZED = "unauthorized"
BANNED = "banned"
NOT_FOUND = "not_found"
TOO_MANY_CONNECTIONS = "too_many_connections"
UNAVAILABLE = "unavailable"

# WebSocket close codes the server uses (RFC 6455 §7.4; 4000-4999 are private to this protocol).
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008  # repeated abuse: too many violations in the window
CLOSE_TOO_BIG = 1009  # a frame beyond the hard size cap
CLOSE_UNAVAILABLE = 1013  # the chat bus is down; try again later
CLOSE_PROTOCOL = 4000  # no join in time, unsupported version
CLOSE_UNAUTHORIZED = 4001
CLOSE_BANNED = 4003
CLOSE_SLOW_CONSUMER = 4008  # the client did not read fast enough: its outgoing buffer overflowed
CLOSE_TOO_MANY_CONNECTIONS = 4029


class ProtocolError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Join:
    name: str
    token: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    text: str


@dataclass(frozen=True, slots=True)
class Reaction:
    emoji: str


@dataclass(frozen=True, slots=True)
class Delete:
    id: int


@dataclass(frozen=True, slots=True)
class Ban:
    uid: str


@dataclass(frozen=True, slots=True)
class Unban:
    uid: str


@dataclass(frozen=True, slots=True)
class SlowMode:
    seconds: float


@dataclass(frozen=True, slots=True)
class Pin:
    id: int | None  # None unpins


ClientFrame = Join | Message | Reaction | Delete | Ban | Unban | SlowMode | Pin
MODERATION_FRAMES = (Delete, Ban, Unban, SlowMode, Pin)

MAX_TOKEN_CHARS = 4096
MAX_UID_CHARS = 64


def _control(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cf") and ch not in "\n\u200d\ufe0f"


def clean_text(value: object, max_chars: int, *, allow_newlines: bool, code: str = BAD_TEXT) -> str:
    """NFC-normalised, stripped text of 1..max_chars code points without control characters."""
    if not isinstance(value, str):
        raise ProtocolError(code, "must be a string")
    text = unicodedata.normalize("NFC", value).strip()
    if not text:
        raise ProtocolError(code, "must not be empty")
    if len(text) > max_chars:
        raise ProtocolError(TEXT_TOO_LONG if code == BAD_TEXT else code, f"at most {max_chars} characters")
    if any(_control(ch) for ch in text) or (not allow_newlines and "\n" in text):
        raise ProtocolError(code, "control characters are not allowed")
    return text


def _int_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError(BAD_FRAME, "id must be a non-negative integer")
    return value


def _uid(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_UID_CHARS:
        raise ProtocolError(BAD_FRAME, "uid must be a short string")
    return value


def parse_client_frame(
    raw: str | bytes, *, max_bytes: int, max_text_chars: int, max_name_chars: int, max_slow_mode: float
) -> ClientFrame:
    """One client frame from the wire, validated. Raises ProtocolError (and nothing else)."""
    size = len(raw.encode("utf-8", "surrogatepass")) if isinstance(raw, str) else len(raw)
    if size > max_bytes:
        raise ProtocolError(FRAME_TOO_LARGE, f"frames are at most {max_bytes} bytes")
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        raise ProtocolError(BAD_FRAME, "not JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError(BAD_FRAME, "a frame is a JSON object")
    version = obj.get("v", VERSION)
    if version != VERSION:
        raise ProtocolError(UNSUPPORTED_VERSION, f"this server speaks version {VERSION}")
    kind = obj.get("type")
    if kind == "message":
        return Message(clean_text(obj.get("text"), max_text_chars, allow_newlines=True))
    if kind == "reaction":
        emoji = obj.get("emoji")
        if not isinstance(emoji, str) or emoji not in REACTION_SET:
            raise ProtocolError(BAD_REACTION, "emoji must be one of " + " ".join(REACTIONS))
        return Reaction(emoji)
    if kind == "join":
        name = clean_text(obj.get("name"), max_name_chars, allow_newlines=False, code=BAD_NAME)
        token = obj.get("token")
        if token is not None and (not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS):
            raise ProtocolError(BAD_FRAME, "token must be a string")
        return Join(name, token or None)
    if kind == "delete":
        return Delete(_int_id(obj.get("id")))
    if kind == "ban":
        return Ban(_uid(obj.get("uid")))
    if kind == "unban":
        return Unban(_uid(obj.get("uid")))
    if kind == "slow_mode":
        seconds = obj.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds <= max_slow_mode:
            raise ProtocolError(BAD_FRAME, f"seconds must be a number from 0 to {max_slow_mode:g}")
        return SlowMode(float(seconds))
    if kind == "pin":
        target = obj.get("id")
        return Pin(None if target is None else _int_id(target))
    raise ProtocolError(UNKNOWN_TYPE, "unknown frame type")


# ---- server frames: encoded once, the same bytes go to every recipient ----

def encode(frame: dict) -> bytes:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":")).encode()


def error_frame(code: str, message: str, retry_after: float | None = None) -> bytes:
    frame: dict = {"type": "error", "code": code, "message": message}
    if retry_after is not None:
        frame["retry_after"] = round(retry_after, 3)
    return encode(frame)


def ws_text_frame(payload: bytes) -> bytes:
    """An unmasked, final WebSocket text frame (RFC 6455 §5.2) around UTF-8 ``payload`` (server to client)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload
