"""Bearer-token checks (RFC 6750, RFC 9725 §4.7) — pure."""

from __future__ import annotations

import hmac

MAX_TOKEN_LENGTH = 4096


class AuthError(Exception):
    def __init__(self, status: int, message: str, challenge: str = 'Bearer realm="webrtc-cast"') -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.challenge = challenge


def _matches(token: str, tokens: list[str]) -> bool:
    # constant-time per comparison; every configured token is compared
    found = False
    for t in tokens:
        if hmac.compare_digest(token.encode(), t.encode()):
            found = True
    return found


def check_bearer(header: str | None, allowed: list[str], other_role: list[str]) -> str | None:
    """The token when one is required and valid; None when no token is required.

    401 for a missing, malformed or unknown token; 403 for a token valid only for the other role.
    """
    if not allowed:
        return None
    if not header:
        raise AuthError(401, "a Bearer token is required")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_LENGTH:
        raise AuthError(401, "malformed Authorization header", 'Bearer realm="webrtc-cast", error="invalid_request"')
    if _matches(token, allowed):
        return token
    if other_role and _matches(token, other_role):
        raise AuthError(403, "this token does not allow that", 'Bearer error="insufficient_scope"')
    raise AuthError(401, "unknown token", 'Bearer realm="webrtc-cast", error="invalid_token"')
