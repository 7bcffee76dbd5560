"""DTLS: the certificate and cipher list (RSA peers too), and the DTLS transport that taps decrypted RTP/RTCP."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pylibsrtp
from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsTransport
from OpenSSL import SSL

logger = logging.getLogger(__name__)

RtpHandler = Callable[[bytes, float], None]
RtcpHandler = Callable[[bytes], None]

# ECDSA and RSA suites: GStreamer webrtcbin presents an RSA certificate and aiortc's stock list is ECDSA-only,
# so as DTLS client we could not talk to it.
DTLS_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    b"ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA"
)


class _CastCertificate(RTCCertificate):
    """An aiortc certificate whose DTLS context also accepts RSA peers."""

    def _create_ssl_context(self, srtp_profiles: list) -> SSL.Context:  # aiortc internal hook
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.set_options(SSL.OP_NO_TICKET)
        # The peer's certificate is self-signed; it is checked against the SDP fingerprint after the handshake.
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *args: True)
        ctx.use_certificate(self._cert)
        ctx.use_privatekey(self._key)
        ctx.set_cipher_list(DTLS_CIPHERS)
        ctx.set_tlsext_use_srtp(b":".join(x.openssl_profile for x in srtp_profiles))
        return ctx


def generate_certificate() -> RTCCertificate:
    """A fresh ECDSA P-256 certificate for DTLS (one per node is enough)."""
    base = RTCCertificate.generateCertificate()
    return _CastCertificate(key=base._key, cert=base._cert)


def certificate_fingerprint(certificate: RTCCertificate, algorithm: str = "sha-256") -> str:
    for fp in certificate.getFingerprints():
        if fp.algorithm == algorithm:
            return fp.value
    raise ValueError(f"no {algorithm} fingerprint")


class _TapDtlsTransport(RTCDtlsTransport):
    """RTCDtlsTransport that hands decrypted RTP/RTCP bytes to callbacks instead of its RtpRouter."""

    on_rtp: RtpHandler | None = None
    on_rtcp: RtcpHandler | None = None
    handler_errors = 0
    last_rx = 0.0  # monotonic time of the last authenticated (decrypted) RTP or RTCP packet from the peer

    on_slow_rtp: Callable[[], None] | None = None  # RTP came the aioice/aiortc way (no ingest pump on its socket)
    pumped_srtp_errors = 0
    on_rtp_run: Callable[[list[bytes], float], None] | None = None  # several packets of one SSRC at once

    def _handler_failed(self, what: str) -> None:
        """Count a handler's exception (logged the first time and every 1000th): it must not end the session."""
        self.handler_errors += 1
        if self.handler_errors == 1 or self.handler_errors % 1000 == 0:
            logger.exception("%s handler failed (%d so far)", what, self.handler_errors)

    async def _handle_rtp_data(self, data: bytes, arrival_time_ms: int) -> None:  # aiortc internal hook
        self.deliver_rtp(data, arrival_time_ms / 1000.0)
        if self.on_slow_rtp is not None:
            self.on_slow_rtp()

    def deliver_rtp(self, data: bytes, arrival: float) -> None:
        self.last_rx = time.monotonic()
        if self.on_rtp is not None:
            try:
                self.on_rtp(data, arrival)
            except Exception:  # a bug in one packet's handling must not end the session (aiortc stops its loop)
                self._handler_failed("RTP")

    def deliver_srtp(self, run: list[bytes]) -> None:
        """SRTP packets read by the ingest pump (one, or a run of one SSRC): decrypt and deliver, as aiortc's
        receive loop would, but a run in one call to ``on_rtp_run`` when there is one."""
        srtp = self._rx_srtp
        if srtp is None:
            return
        plain = []
        for data in run:
            try:
                plain.append(srtp.unprotect(data))
            except pylibsrtp.Error:  # replayed, forged or not for us: dropped, as aiortc does
                self.pumped_srtp_errors += 1
        now = time.monotonic()
        if len(plain) > 1 and self.on_rtp_run is not None:
            self.last_rx = now
            try:
                self.on_rtp_run(plain, now)
            except Exception:
                self._handler_failed("RTP")
            return
        for data in plain:
            self.deliver_rtp(data, now)

    async def _handle_rtcp_data(self, data: bytes) -> None:  # aiortc internal hook
        self.last_rx = time.monotonic()
        if self.on_rtcp is not None:
            try:
                self.on_rtcp(data)
            except Exception:
                self._handler_failed("RTCP")
