"""webrtc-cast: low-latency live broadcast (WHIP in, SFU tree, WHEP and LL-HLS out)."""

from webrtc_cast import _openssl  # noqa: F401  (must precede any cryptography import)
