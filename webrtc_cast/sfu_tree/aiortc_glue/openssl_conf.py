"""Point OpenSSL at webrtc-cast's DTLS settings before ``cryptography`` is first imported.

The one process-wide side effect on import in webrtc-cast, and it cannot move: OpenSSL reads OPENSSL_CONF once,
when cryptography first loads it, so it must be set before anything imports cryptography/pyOpenSSL/aiortc. The
glue package's ``__init__`` imports this module before aiortc, and every use of cryptography in the core goes
through the glue (``rtp/srtp_gcm.py`` is imported by the glue only), so any import path that can reach DTLS
sets it first, with or without the CLI (``tests/unit/test_openssl_conf.py``). An operator's own OPENSSL_CONF
wins. Why: see openssl_dtls.cnf beside this file (FFmpeg's WHIP muxer presents a P-224 certificate).
The pin ``cryptography<47`` matters too: from 47 the bundled OpenSSL 4 drops P-224 from TLS entirely.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CONF = Path(__file__).with_name("openssl_dtls.cnf")

if "cryptography" in sys.modules and "OPENSSL_CONF" not in os.environ:
    import warnings

    warnings.warn(
        "cryptography was imported before webrtc_cast: FFmpeg WHIP publishers with P-224 certificates "
        "will fail DTLS. Import webrtc_cast.sfu_tree.aiortc_glue first or set OPENSSL_CONF to " + str(CONF),
        RuntimeWarning,
        stacklevel=2,
    )
os.environ.setdefault("OPENSSL_CONF", str(CONF))
