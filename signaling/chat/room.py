"""One chat room: history, moderation state, per-connection limits and reaction aggregation — pure.

A client frame goes through ``Room.receive(member, raw, now, wall)``, which returns an ``Outcome``: frames for
that client, events to publish on the bus, and maybe a close. Events come back from the bus in one total order
(the same on every node) through ``Room.apply(event)``, which updates the state and returns the frame to fan
out. Nothing here touches a socket, a task or a clock.
"""

from __future__ import annotations

import hmac
from collections import Counter, deque
from dataclasses import dataclass, field

from signaling.chat import protocol as p
from webrtc_cast.access.rate_limit import RateLimiter


@dataclass(frozen=True, slots=True)
class Limits:
    """The chat limits of a node (each one is a ``chat_*`` setting, see docs/configuration.md)."""

    max_frame_bytes: int = 4096
    max_text_chars: int = 500
    max_name_chars: int = 32
    history: int = 100
    frames_per_second: float = 20.0
    frame_burst: int = 40
    messages_per_second: float = 1.0
    message_burst: int = 5
    reactions_per_second: float = 5.0
    reaction_burst: int = 20
    max_violations: int = 10
    violation_window: float = 10.0
    max_slow_mode: float = 3600.0

    @classmethod
    def from_settings(cls, s: object) -> Limits:
        return cls(
            **{name: getattr(s, "chat_" + name) for name in cls.__dataclass_fields__ if hasattr(s, "chat_" + name)}
        )


@dataclass(slots=True)
class Member:
    """One WebSocket connection in a room (joined or not yet)."""

    key: str  # unique per connection on this node (the rate-limit key)
    uid: str  # the public, random id of this connection (messages carry it; bans target it)
    addr_key: str = ""  # a hash of the client address: never sent to clients; an address ban lists it
    name: str = ""
    moderator: bool = False
    joined: bool = False
    last_message: float = float("-inf")
    violations: deque[float] = field(default_factory=deque)


@dataclass(slots=True)
class Outcome:
    reply: list[bytes] = field(default_factory=list)  # JSON payloads for this client only
    publish: list[dict] = field(default_factory=list)  # events for the bus (every node, every member)
    close: tuple[int, str] | None = None  # close this client with (code, reason)
    errors: list[str] = field(default_factory=list)  # the codes of the error frames in ``reply``


def _error(out: Outcome, code: str, message: str, retry_after: float | None = None) -> None:
    out.reply.append(p.error_frame(code, message, retry_after))
    out.errors.append(code)


def _matches(token: str, tokens: list[str]) -> bool:
    found = False
    for t in tokens:  # constant time per comparison, every token compared
        if hmac.compare_digest(token.encode(), t.encode()):
            found = True
    return found


def chat_role(token: str | None, moderator_tokens: list[str], view_tokens: list[str]) -> str | None:
    """"moderator", "viewer", or None when the token is refused.

    A token in ``moderator_tokens`` makes a moderator. With ``view_tokens`` configured, a viewer needs one of
    them; otherwise anyone may chat, and an unknown token is refused rather than silently ignored.
    """
    if token is not None and moderator_tokens and _matches(token, moderator_tokens):
        return "moderator"
    if view_tokens:
        return "viewer" if token is not None and _matches(token, view_tokens) else None
    return "viewer" if token is None else None


def message_frame(event: dict) -> dict:
    return {"type": "message", "id": event["id"], "uid": event["uid"], "name": event["name"],
            "text": event["text"], "ts": event["ts"], "mod": event["mod"]}


class Room:
    def __init__(self, name: str, limits: Limits, moderator_tokens: list[str], view_tokens: list[str]) -> None:
        self.name = name
        self.limits = limits
        self.moderator_tokens = moderator_tokens
        self.view_tokens = view_tokens
        self.history: deque[dict] = deque(maxlen=limits.history)  # message events, oldest first
        self.pinned: dict | None = None
        self.slow_mode = 0.0
        self.banned: set[str] = set()
        self.last_id = 0
        self.viewers = 0
        self._viewers_sent = -1
        self._frames = RateLimiter(limits.frames_per_second, limits.frame_burst)
        self._messages = RateLimiter(limits.messages_per_second, limits.message_burst)
        self._reactions = RateLimiter(limits.reactions_per_second, limits.reaction_burst)
        self.local_reactions: Counter[str] = Counter()  # sent by this node's members, not yet published
        self.shown_reactions: Counter[str] = Counter()  # from the bus (all nodes), not yet fanned out
        self._history_frame: bytes | None = None

    # ---- client frames ----

    def receive(self, member: Member, raw: str | bytes, now: float, wall: float) -> Outcome:
        out = Outcome()
        wait = self._frames.allow(member.key, now)
        if wait > 0:
            return self._violation(member, out, now, p.RATE_LIMITED, "too many frames", wait)
        lim = self.limits
        try:
            frame = p.parse_client_frame(
                raw, max_bytes=lim.max_frame_bytes, max_text_chars=lim.max_text_chars,
                max_name_chars=lim.max_name_chars, max_slow_mode=lim.max_slow_mode,
            )
        except p.ProtocolError as exc:
            if exc.code == p.UNSUPPORTED_VERSION:
                _error(out, exc.code, exc.message)
                out.close = (p.CLOSE_PROTOCOL, "unsupported version")
                return out
            return self._violation(member, out, now, exc.code, exc.message)
        if isinstance(frame, p.Join):
            return self._join(member, frame, out)
        if not member.joined:
            return self._violation(member, out, now, p.NOT_JOINED, "send a join frame first")
        if isinstance(frame, p.Message):
            return self._message(member, frame, out, now, wall)
        if isinstance(frame, p.Reaction):
            wait = self._reactions.allow(member.key, now)
            if wait > 0:
                return self._violation(member, out, now, p.RATE_LIMITED, "too many reactions", wait)
            self.local_reactions[frame.emoji] += 1
            return out
        if not member.moderator:
            return self._violation(member, out, now, p.FORBIDDEN, "moderators only")
        return self._moderate(member, frame, out)

    def _violation(
        self, member: Member, out: Outcome, now: float, code: str, message: str, retry_after: float | None = None
    ) -> Outcome:
        v = member.violations
        v.append(now)
        while v and v[0] <= now - self.limits.violation_window:
            v.popleft()
        _error(out, code, message, retry_after)
        if len(v) >= self.limits.max_violations:
            out.close = (p.CLOSE_POLICY, "too many violations")
        return out

    def _join(self, member: Member, frame: p.Join, out: Outcome) -> Outcome:
        if member.joined:
            _error(out, p.ALREADY_JOINED, "already joined")
            return out
        role = chat_role(frame.token, self.moderator_tokens, self.view_tokens)
        if role is None:
            _error(out, p.UNAUTHORIZED, "unknown or missing token")
            out.close = (p.CLOSE_UNAUTHORIZED, "unauthorized")
            return out
        if role != "moderator" and (member.uid in self.banned or member.addr_key in self.banned):
            _error(out, p.BANNED, "banned from this room")
            out.close = (p.CLOSE_BANNED, "banned")
            return out
        member.name = frame.name
        member.moderator = role == "moderator"
        member.joined = True
        lim = self.limits
        out.reply.append(p.encode({
            "type": "welcome", "v": p.VERSION, "room": self.name, "uid": member.uid, "name": member.name,
            "moderator": member.moderator, "reactions": list(p.REACTIONS),
            "limits": {
                "max_text_chars": lim.max_text_chars, "max_frame_bytes": lim.max_frame_bytes,
                "messages_per_second": lim.messages_per_second, "message_burst": lim.message_burst,
                "reactions_per_second": lim.reactions_per_second,
            },
        }))
        out.reply.append(self.history_frame())
        return out

    def _message(self, member: Member, frame: p.Message, out: Outcome, now: float, wall: float) -> Outcome:
        if self.slow_mode > 0 and not member.moderator:
            wait = member.last_message + self.slow_mode - now
            if wait > 0:
                return self._violation(member, out, now, p.SLOW_MODE, f"slow mode: one message per "
                                       f"{self.slow_mode:g} s", wait)
        wait = self._messages.allow(member.key, now)
        if wait > 0:
            return self._violation(member, out, now, p.RATE_LIMITED, "too many messages", wait)
        member.last_message = now
        out.publish.append({"t": "msg", "uid": member.uid, "name": member.name, "text": frame.text,
                            "mod": member.moderator, "ts": int(wall * 1000)})
        return out

    def _moderate(self, member: Member, frame: p.ClientFrame, out: Outcome) -> Outcome:
        by = member.name
        if isinstance(frame, p.Delete):
            out.publish.append({"t": "del", "id": frame.id, "by": by})
        elif isinstance(frame, p.Ban):
            out.publish.append({"t": "ban", "uid": frame.uid, "by": by})
        elif isinstance(frame, p.Unban):
            out.publish.append({"t": "unban", "uid": frame.uid, "by": by})
        elif isinstance(frame, p.SlowMode):
            out.publish.append({"t": "slow", "seconds": frame.seconds, "by": by})
        elif isinstance(frame, p.Pin):
            message = None
            if frame.id is not None:
                message = next((m for m in self.history if m["id"] == frame.id), None)
                if message is None:
                    _error(out, p.NOT_FOUND, "no such message in the history")
                    return out
                message = message_frame(message)
            out.publish.append({"t": "pin", "message": message, "by": by})
        return out

    # ---- bus events (one total order on every node) ----

    def apply(self, event: dict) -> tuple[bytes | None, list[str]]:
        """Apply one ordered event; return (frame to fan out to joined members or None, uids to close as banned).

        Malformed events are ignored (they come from other nodes, never from a client directly).
        """
        try:
            return self._apply(event)
        except (KeyError, TypeError, ValueError, AttributeError):
            return None, []

    def _apply(self, event: dict) -> tuple[bytes | None, list[str]]:
        kind = event["t"]
        if kind == "msg":
            if event["id"] <= self.last_id:
                return None, []  # already applied (replayed while a snapshot loaded)
            frame = p.encode(message_frame(event))  # raises on a malformed event before any state changes
            self.last_id = event["id"]
            self.history.append(event)
            self._history_frame = None
            return frame, []
        if kind == "rx":
            for emoji, n in event["counts"].items():
                if emoji in p.REACTION_SET and isinstance(n, int) and n > 0:
                    self.shown_reactions[emoji] += n
            return None, []
        by = event.get("by", "")
        if kind == "del":
            target = event["id"]
            kept = [m for m in self.history if m["id"] != target]
            if len(kept) != len(self.history):
                self.history = deque(kept, maxlen=self.limits.history)
            if self.pinned is not None and self.pinned["id"] == target:
                self.pinned = None
            self._history_frame = None
            return p.encode({"type": "moderation", "action": "delete", "id": target, "by": by}), []
        if kind == "ban":
            self.banned.add(event["uid"])
            if event.get("quiet"):  # the address of a banned connection, added by the node that held it
                return None, [event["uid"]]
            return p.encode({"type": "moderation", "action": "ban", "uid": event["uid"], "by": by}), [event["uid"]]
        if kind == "unban":
            self.banned.discard(event["uid"])
            return p.encode({"type": "moderation", "action": "unban", "uid": event["uid"], "by": by}), []
        if kind == "slow":
            self.slow_mode = float(event["seconds"])
            self._history_frame = None
            return p.encode({"type": "moderation", "action": "slow_mode", "seconds": self.slow_mode, "by": by}), []
        if kind == "pin":
            self.pinned = event["message"]
            self._history_frame = None
            return p.encode({"type": "moderation", "action": "pin", "message": self.pinned, "by": by}), []
        return None, []

    def load(self, history: list[dict], pinned: dict | None, slow_mode: float, banned: set[str]) -> None:
        """Replace the state with a snapshot (from Redis when the first member of this node joins)."""
        self.history = deque(sorted(history, key=lambda m: m["id"]), maxlen=self.limits.history)
        self.last_id = max([m["id"] for m in self.history] + [self.last_id])
        self.pinned, self.slow_mode, self.banned = pinned, slow_mode, set(banned)
        self._history_frame = None

    def history_frame(self) -> bytes:
        if self._history_frame is None:
            self._history_frame = p.encode({
                "type": "history", "messages": [message_frame(m) for m in self.history],
                "pinned": self.pinned, "slow_mode": self.slow_mode,
            })
        return self._history_frame

    # ---- periodic frames ----

    def take_local_reactions(self) -> dict[str, int] | None:
        """This node's reaction counts since the last call (to publish as one ``rx`` event), or None."""
        if not self.local_reactions:
            return None
        counts = dict(self.local_reactions)
        self.local_reactions.clear()
        return counts

    def reactions_frame(self, interval: float) -> bytes | None:
        """One aggregated ``reactions`` frame for the last interval, or None when nobody reacted."""
        if not self.shown_reactions:
            return None
        counts = {e: self.shown_reactions[e] for e in p.REACTIONS if self.shown_reactions[e]}
        self.shown_reactions.clear()
        return p.encode({"type": "reactions", "counts": counts, "interval": interval})

    def viewers_frame(self, total: int) -> bytes | None:
        """A ``viewers`` frame when the count changed since the last one."""
        self.viewers = total
        if total == self._viewers_sent:
            return None
        self._viewers_sent = total
        return p.encode({"type": "viewers", "count": total})
