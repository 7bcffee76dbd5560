"""The aiortc / aioice internals that webrtc_cast/sfu_tree/aiortc_glue/ relies on.

When an upgrade moves one of them, this fails first and names it, instead of a session failing at run time.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version

import aioice.ice
import pytest
from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsTransport
from aiortc.rtcicetransport import RTCIceGatherer, RTCIceTransport
from aiortc.rtcrtpsender import RTCRtpSender

from webrtc_cast.sfu_tree import aiortc_glue


def test_pinned_versions():
    assert version("aiortc") == "1.16.0"
    assert version("aioice") == "0.13.0"
    assert version("cryptography").split(".")[0] in ("45", "46")  # OpenSSL 3.5 with P-224 (FFmpeg's DTLS cert)


@pytest.mark.parametrize(
    ("owner", "name"),
    [
        (RTCDtlsTransport, "_handle_rtp_data"),
        (RTCDtlsTransport, "_handle_rtcp_data"),
        (RTCDtlsTransport, "_set_role"),
        (RTCDtlsTransport, "_recv_next"),
        (RTCCertificate, "_create_ssl_context"),
        (aioice.ice.Connection, "get_component_candidates"),
        (aioice.ice.Connection, "recv"),
        (aioice.ice.Connection, "build_request"),
        (aioice.ice.Connection, "close"),
    ],
)
def test_hooked_methods_exist(owner, name):
    assert callable(getattr(owner, name))


def test_dtls_hooks_keep_their_signatures():
    assert list(inspect.signature(RTCDtlsTransport._handle_rtp_data).parameters) == ["self", "data", "arrival_time_ms"]
    assert list(inspect.signature(RTCDtlsTransport._handle_rtcp_data).parameters) == ["self", "data"]
    assert list(inspect.signature(RTCCertificate._create_ssl_context).parameters) == ["self", "srtp_profiles"]
    # the receive loop still reads through the ICE transport's _recv attribute, which the glue replaces
    assert "self.transport._recv()" in inspect.getsource(RTCDtlsTransport._recv_next)
    assert "self._recv = self._connection.recv" in inspect.getsource(RTCIceTransport.__init__)


async def test_glue_reaches_the_attributes_it_uses():
    cert = aiortc_glue.generate_certificate()
    assert hasattr(cert, "_cert") and hasattr(cert, "_key")
    transport = aiortc_glue.PeerTransport(["127.0.0.1"], cert)
    conn = transport._gatherer._connection
    for attr in ("_local_candidates", "_local_candidates_start", "_local_candidates_end", "_nominated",
                 "_query_consent_task", "remote_password"):
        assert hasattr(conn, attr), attr
    # consent freshness: aioice starts its loop in connect() and cancels _query_consent_task in close(); the glue
    # swaps in its own loop through that attribute, with the module's constants
    assert "self._query_consent_task = asyncio.create_task(self.query_consent())" in inspect.getsource(
        aioice.ice.Connection.connect
    )
    assert "self._query_consent_task" in inspect.getsource(aioice.ice.Connection.close)
    assert isinstance(aioice.ice.CONSENT_INTERVAL, int | float) and isinstance(aioice.ice.CONSENT_FAILURES, int)
    assert list(inspect.signature(aioice.ice.Connection.build_request).parameters) == ["self", "pair", "nominate"]
    dtls = transport._dtls
    for attr in ("_tx_srtp", "_rx_srtp"):
        assert hasattr(dtls, attr), attr
    local = await transport.gather()
    assert local.candidates and all(" 127.0.0.1 " in c for c in local.candidates)
    await transport.close()
    assert isinstance(transport._gatherer, RTCIceGatherer)


def test_ingest_pump_hook_points():
    # the glue replaces the nominated pair's protocol.datagram_received with the ingest pump and gives back what
    # is not RTP; aioice's own handler must still be the one that turns non-STUN data into queued data
    source = inspect.getsource(aioice.ice.StunProtocol.datagram_received)
    assert "self.receiver.data_received(data" in source
    assert list(inspect.signature(aioice.ice.StunProtocol.datagram_received).parameters) == ["self", "data", "addr"]
    assert "_rx_srtp.unprotect(data)" in inspect.getsource(RTCDtlsTransport._recv_next)


def test_sender_encoder_attribute_name():
    assert "self.__encoder" in inspect.getsource(RTCRtpSender)


def test_get_host_addresses_is_looked_up_at_gather_time():
    assert "get_host_addresses(" in inspect.getsource(aioice.ice.Connection.gather_candidates)
