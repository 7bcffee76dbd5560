"""The one place that touches aiortc / aioice internals (DESIGN.md §2, §6).

Everything else in webrtc-cast talks to a :class:`PeerTransport`: ICE on the configured host addresses, DTLS
with SRTP keying, and raw RTP/RTCP bytes in and out. aiortc's media pipeline (RtpRouter, RTCRtpReceiver,
jitter buffers, decoders) is never used on the server.

Modules: ``ice`` (host addresses for aiortc clients, the encoder-bitrate hook), ``dtls`` (certificate, cipher
list, the DTLS transport that taps decrypted RTP/RTCP), ``srtp_send`` (the raw SRTP send path: sinks, GSO),
``transport`` (PeerTransport: gather, start, consent, send/receive).

The internals used here are pinned by the exact aiortc/aioice versions in pyproject.toml and checked by
``tests/unit/test_aiortc_contract.py``; when an upgrade moves them, that test fails first.

``openssl_conf`` is imported first, before aiortc loads cryptography: the package's one import-time side effect.
"""

from webrtc_cast.sfu_tree.aiortc_glue import openssl_conf  # noqa: F401  (must precede any cryptography import)

# isort: split
from aiortc.rtcdtlstransport import SRTP_PROFILES

from webrtc_cast.sfu_tree.aiortc_glue.dtls import (
    DTLS_CIPHERS,
    RtcpHandler,
    RtpHandler,
    _CastCertificate,
    _TapDtlsTransport,
    certificate_fingerprint,
    generate_certificate,
)
from webrtc_cast.sfu_tree.aiortc_glue.ice import set_ice_hosts, set_sender_target_bitrate, use_ice_hosts
from webrtc_cast.sfu_tree.aiortc_glue.srtp_send import (
    RtpBatchSink,
    RtpSink,
    _batch_of,
    _gcm_protector,
    _gso,
    _make_gcm_batch_sink,
    _make_gcm_sink,
    _make_sink,
)
from webrtc_cast.sfu_tree.aiortc_glue.transport import LocalParameters, PeerTransport

__all__ = [
    "DTLS_CIPHERS",
    "SRTP_PROFILES",
    "LocalParameters",
    "PeerTransport",
    "RtcpHandler",
    "RtpBatchSink",
    "RtpHandler",
    "RtpSink",
    "_CastCertificate",
    "_TapDtlsTransport",
    "_batch_of",
    "_gcm_protector",
    "_gso",
    "_make_gcm_batch_sink",
    "_make_gcm_sink",
    "_make_sink",
    "certificate_fingerprint",
    "generate_certificate",
    "set_ice_hosts",
    "set_sender_target_bitrate",
    "use_ice_hosts",
]
