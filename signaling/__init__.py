"""HTTP signaling: WHIP, WHEP, SDP answers, auth, rate limits."""

from webrtc_cast import _openssl  # noqa: F401  (must precede any cryptography import)
