"""Point OpenSSL at webrtc-cast's DTLS settings before ``cryptography`` is first imported.

Must run before anything imports cryptography/pyOpenSSL/aiortc: both ``webrtc_cast`` and ``signaling`` import
it from their ``__init__``. An operator's own OPENSSL_CONF wins. Why: see openssl_dtls.cnf beside this file.
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
        "will fail DTLS. Import webrtc_cast first or set OPENSSL_CONF to " + str(CONF),
        RuntimeWarning,
        stacklevel=2,
    )
os.environ.setdefault("OPENSSL_CONF", str(CONF))
