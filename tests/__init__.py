"""webrtc-cast tests. Import webrtc_cast first: it points OpenSSL at its DTLS settings (see _openssl.py)."""

import webrtc_cast  # noqa: F401
