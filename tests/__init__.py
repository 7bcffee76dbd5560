"""webrtc-cast tests. OpenSSL's DTLS settings must be in place before anything loads cryptography (tests/tls.py
does), so the glue's one import-time side effect runs first (webrtc_cast/sfu_tree/aiortc_glue/openssl_conf.py)."""

from webrtc_cast.sfu_tree.aiortc_glue import openssl_conf  # noqa: F401
