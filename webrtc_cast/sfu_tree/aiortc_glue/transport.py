"""PeerTransport: one bundled ICE + DTLS-SRTP transport (gather, start, consent, raw RTP/RTCP in and out)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import aioice.ice
import aioice.stun
import pylibsrtp
from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsFingerprint, RTCDtlsParameters
from aiortc.rtcicetransport import RTCIceGatherer, RTCIceParameters, RTCIceTransport
from aiortc.sdp import candidate_from_sdp, candidate_to_sdp

from webrtc_cast.rtp.srtp_gcm import GcmProtector
from webrtc_cast.sfu_tree.aiortc_glue.dtls import RtcpHandler, RtpHandler, _TapDtlsTransport, certificate_fingerprint
from webrtc_cast.sfu_tree.aiortc_glue.srtp_send import (
    RtpBatchSink,
    RtpSink,
    _batch_of,
    _gcm_protector,
    _make_gcm_batch_sink,
    _make_gcm_sink,
    _make_sink,
)
from webrtc_cast.sfu_tree.ingest_pump import IngestPump

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class LocalParameters:
    ice_ufrag: str
    ice_pwd: str
    fingerprint: str  # sha-256, upper-case hex with colons
    candidates: list[str]  # SDP candidate attribute values (without "a=candidate:")




class PeerTransport:
    """One bundled ICE + DTLS-SRTP transport towards one peer (publisher, viewer or relay)."""

    def __init__(
        self,
        ice_hosts: list[str],
        certificate: RTCCertificate,
        on_rtp: RtpHandler | None = None,
        on_rtcp: RtcpHandler | None = None,
    ) -> None:
        self._ice_hosts = list(ice_hosts)
        self._gatherer = RTCIceGatherer(iceServers=[])
        self._ice = RTCIceTransport(self._gatherer)
        self._dtls = _TapDtlsTransport(self._ice, [certificate])
        self._dtls.on_rtp = on_rtp
        self._dtls.on_rtcp = on_rtcp
        self._certificate = certificate
        self._start_task: asyncio.Task[None] | None = None
        self._closed = False
        self.connected = asyncio.Event()
        self.failed = asyncio.Event()
        self.on_state: Callable[[str], None] | None = None
        self.send_errors = 0
        self.srtp_errors = 0
        self.bytes_sent = 0
        self.packets_sent = 0
        self.junk_datagrams = 0
        self.consent_by_traffic = 0  # unanswered consent checks forgiven because the peer's media kept arriving
        self._sink: RtpSink | None = None
        self._sink_pair: object | None = None
        self._sink_socket: socket.socket | None = None
        self._gcm_checked = False
        self._gcm_protector: GcmProtector | None = None
        self._urgent_payload_types: frozenset[int] | None = None  # set by pump_ingest()
        self._run_limit: Callable[[], int] | None = None
        self._batch_sink: RtpBatchSink | None = None
        self._batch_sink_of: RtpSink | None = None
        self._pump: IngestPump | None = None
        self._pump_protocol: object | None = None
        self._pump_original: Callable[[bytes, tuple], None] | None = None  # type: ignore[type-arg]
        # aiortc's DTLS receive loop reads data[0] of every datagram: one empty UDP datagram from anyone who
        # knows the port would raise IndexError and end the session. Drop empty datagrams before it sees them.
        self._ice._recv = self._recv_nonempty
        self._dtls.on("statechange", self._dtls_state_changed)
        self._ice.on("statechange", self._ice_state_changed)

    def set_handlers(self, on_rtp: RtpHandler | None, on_rtcp: RtcpHandler | None) -> None:
        """Where decrypted RTP and RTCP from the peer go."""
        self._dtls.on_rtp = on_rtp
        self._dtls.on_rtcp = on_rtcp

    def pump_ingest(
        self,
        urgent_payload_types: Iterable[int],
        on_rtp_run: Callable[[list[bytes], float], None] | None = None,
        run_limit: Callable[[], int] | None = None,
    ) -> None:
        """For peers that send us media (publishers, parent relays): once connected, read their SRTP straight off
        the selected pair's socket with an :class:`IngestPump` — RTP with these payload types (the audio) is
        delivered ahead of other RTP already waiting, and other RTP waiting there goes to ``on_rtp_run`` in runs
        of one SSRC (at most ``run_limit()`` packets). STUN, DTLS and RTCP still go through aioice and aiortc."""
        self._urgent_payload_types = frozenset(urgent_payload_types)
        self._run_limit = run_limit
        self._dtls.on_rtp_run = on_rtp_run
        self._dtls.on_slow_rtp = self._install_pump

    def _install_pump(self) -> None:
        """(Re)install the pump on the nominated pair's socket; called on RTP that came the slow way."""
        if self._closed or self._urgent_payload_types is None or self._dtls._rx_srtp is None:
            return
        pair = self._ice._connection._nominated.get(1)
        if pair is None or pair.protocol is self._pump_protocol or pair.protocol.transport is None:
            return
        protocol = pair.protocol
        trsock = protocol.transport.get_extra_info("socket")
        self._remove_pump()
        sock = socket.fromfd(trsock.fileno(), trsock.family, trsock.type)
        self._pump_original = protocol.datagram_received
        self._pump = IngestPump(sock, self._dtls.deliver_srtp, self._pump_original, self._urgent_payload_types,
                                run_limit=self._run_limit)
        self._pump_protocol = protocol
        protocol.datagram_received = self._pump.datagram_received

    def _remove_pump(self) -> None:
        if self._pump is None:
            return
        self._pump_protocol.datagram_received = self._pump_original  # type: ignore[attr-defined]
        self._pump.close()
        self._pump = self._pump_protocol = self._pump_original = None

    @property
    def pump(self) -> IngestPump | None:
        """The ingest pump reading this peer's media, once installed (None before or without pump_ingest)."""
        return self._pump

    # -- setup -------------------------------------------------------------------------------------------
    async def gather(self) -> LocalParameters:
        """Gather host candidates on exactly the configured addresses."""
        conn = self._gatherer._connection
        if not conn._local_candidates_start:
            conn._local_candidates_start = True
            conn._local_candidates += await conn.get_component_candidates(
                component=1, addresses=self._ice_hosts
            )
            conn._local_candidates_end = True
        if not conn._local_candidates:
            raise OSError(f"could not bind any ICE host address of {self._ice_hosts}")
        params = self._gatherer.getLocalParameters()
        return LocalParameters(
            ice_ufrag=params.usernameFragment,
            ice_pwd=params.password,
            fingerprint=certificate_fingerprint(self._certificate),
            candidates=[candidate_to_sdp(c) for c in self._gatherer.getLocalCandidates()],
        )

    def start(
        self,
        remote_ufrag: str,
        remote_pwd: str,
        remote_fingerprints: list[tuple[str, str]],
        dtls_role: str,
        remote_candidates: list[str],
        remote_ice_lite: bool = False,
    ) -> None:
        """Begin ICE and then DTLS in the background. ``dtls_role`` is ours: 'client' or 'server'."""
        self._dtls._set_role(dtls_role)
        remote_dtls = RTCDtlsParameters(
            fingerprints=[RTCDtlsFingerprint(algorithm=a, value=v) for a, v in remote_fingerprints]
        )
        remote_ice = RTCIceParameters(
            usernameFragment=remote_ufrag, password=remote_pwd, iceLite=remote_ice_lite
        )
        self._start_task = asyncio.ensure_future(
            self._run(remote_ice, remote_dtls, remote_candidates)
        )

    async def _run(
        self, remote_ice: RTCIceParameters, remote_dtls: RTCDtlsParameters, candidates: list[str]
    ) -> None:
        try:
            for c in candidates:
                await self.add_remote_candidate(c)
            await self._ice.start(remote_ice)
            if self._ice.state != "completed":
                self.failed.set()
                return
            self._replace_consent_checks()
            await self._dtls.start(remote_dtls)
            if self._dtls.state == "connected":
                self.connected.set()
            else:
                self.failed.set()
        except Exception:  # a peer that breaks the handshake must not take the node down
            logger.exception("transport setup failed")
            self.failed.set()

    def _replace_consent_checks(self) -> None:
        """Swap aioice's consent-freshness loop (RFC 7675) for one that also counts the peer's own traffic.

        FFmpeg 8's WHIP muxer never answers consent checks, so aioice's loop (6 unanswered checks, 5 s apart)
        closed every FFmpeg publisher after ~30 s. Here an unanswered check still counts as consent when
        authenticated SRTP/SRTCP arrived from the peer within the last interval: a peer that keeps sending us
        media it encrypted with this session's keys is alive and wants the session. Peers that neither answer nor
        send are dropped as before.
        """
        conn = self._gatherer._connection
        task = conn._query_consent_task
        if task is not None:
            task.cancel()
        conn._query_consent_task = asyncio.ensure_future(self._query_consent(conn))

    async def _query_consent(self, conn: aioice.ice.Connection) -> None:
        failures = 0
        while True:
            interval = aioice.ice.CONSENT_INTERVAL
            await asyncio.sleep(interval * (0.8 + 0.4 * random.random()))
            for pair in list(conn._nominated.values()):
                request = conn.build_request(pair, nominate=False)
                try:
                    await pair.protocol.request(
                        request, pair.remote_addr, integrity_key=conn.remote_password.encode("utf8"),
                        retransmissions=0,
                    )
                    failures = 0
                except aioice.stun.TransactionError:
                    if time.monotonic() - self._dtls.last_rx < interval:
                        self.consent_by_traffic += 1
                        failures = 0
                    else:
                        failures += 1
            if failures >= aioice.ice.CONSENT_FAILURES:
                logger.info("ICE consent expired: %d checks unanswered and nothing received", failures)
                conn._query_consent_task = None
                await conn.close()
                return

    async def add_remote_candidate(self, sdp_value: str | None) -> bool:
        """Add one remote candidate (the value after ``a=candidate:``); None ends the list.

        Returns False for candidates that are ignored: unparseable, non-UDP, or mDNS/unresolvable names
        (RFC 9725 §4.3.2 says to ignore them silently).
        """
        if sdp_value is None:
            await self._ice.addRemoteCandidate(None)
            return True
        try:
            candidate = candidate_from_sdp(sdp_value)
        except (ValueError, IndexError):
            return False
        if candidate.protocol.lower() != "udp" or candidate.ip.endswith(".local") or candidate.ip.endswith(
            ".invalid"
        ):
            return False
        candidate.sdpMid = "0"
        try:
            await self._ice.addRemoteCandidate(candidate)
        except (ValueError, OSError):
            return False
        return True

    # -- I/O ---------------------------------------------------------------------------------------------
    def rtp_sink(self) -> RtpSink | None:
        """The hot-path sender for this peer once DTLS is up (None before): rewrite, protect and send in one
        synchronous call, using a duplicate of the selected ICE pair's socket."""
        pair = self._ice._connection._nominated.get(1)
        srtp = self._dtls._tx_srtp
        if pair is None or srtp is None or pair.protocol.transport is None:
            return None
        if self._sink is not None and self._sink_pair is pair:
            return self._sink
        trsock = pair.protocol.transport.get_extra_info("socket")
        if self._sink_socket is not None:
            self._sink_socket.close()
        self._sink_socket = socket.fromfd(trsock.fileno(), trsock.family, trsock.type)
        self._sink_socket.setblocking(False)
        gcm = self._gcm()
        if gcm is not None:
            self._sink = _make_gcm_sink(gcm, self._sink_socket, pair.remote_addr)
        else:
            self._sink = _make_sink(srtp, self._sink_socket, pair.remote_addr)
        self._sink_pair = pair
        return self._sink

    def rtp_batch_sink(self) -> RtpBatchSink | None:
        """The batched hot-path sender for this peer (see RtpBatchSink), None before DTLS is up."""
        sink = self.rtp_sink()
        if sink is None:
            return None
        if self._batch_sink_of is not sink:
            gcm = self._gcm()
            assert self._sink_socket is not None
            if gcm is not None:
                addr = self._sink_pair.remote_addr  # type: ignore[attr-defined]
                self._batch_sink = _make_gcm_batch_sink(gcm, self._sink_socket, addr)
            else:
                self._batch_sink = _batch_of(sink)
            self._batch_sink_of = sink
        return self._batch_sink

    def tap_datagrams(self, handler: Callable[[bytes, tuple], bool]) -> pylibsrtp.Session:  # type: ignore[type-arg]
        """Load generators: see each datagram of the selected ICE pair before aioice does (``handler`` returns
        True when it consumed it; STUN, DTLS and anything declined still go to aioice). Returns the inbound SRTP
        session, for decrypting a sample. Call after DTLS is connected."""
        pair = self._ice._connection._nominated[1]
        protocol = pair.protocol
        original = protocol.datagram_received

        def datagram_received(data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
            if not handler(data, addr):
                original(data, addr)

        protocol.datagram_received = datagram_received
        return self._dtls._rx_srtp

    async def _recv_nonempty(self) -> bytes:
        recv = self._gatherer._connection.recv
        while True:
            data = await recv()
            if data:
                return data
            self.junk_datagrams += 1

    def _gcm(self) -> GcmProtector | None:
        if self._gcm_checked is False and self._dtls._tx_srtp is not None:
            self._gcm_checked = True
            self._gcm_protector = _gcm_protector(self._dtls)
        return self._gcm_protector

    def send_rtp(self, packet: bytes) -> bool:
        """Protect and send one RTP packet now (synchronous, no await). False if not sent."""
        dtls = self._dtls
        if dtls._tx_srtp is None:
            return False
        pair = self._ice._connection._nominated.get(1)
        if pair is None:
            return False
        gcm = self._gcm()
        try:
            # one protector per SSRC stream: with GCM negotiated, every RTP packet goes through ours so the
            # rollover counter stays consistent between the hot path and repairs
            data = gcm.protect(packet) if gcm is not None else dtls._tx_srtp.protect(packet)
        except (pylibsrtp.Error, ValueError, struct.error):
            self.srtp_errors += 1
            return False
        transport = pair.protocol.transport
        if transport is None:
            return False
        transport.sendto(data, pair.remote_addr)
        self.bytes_sent += len(data)
        self.packets_sent += 1
        return True

    def send_rtcp(self, packet: bytes) -> bool:
        dtls = self._dtls
        if dtls._tx_srtp is None:
            return False
        pair = self._ice._connection._nominated.get(1)
        if pair is None:
            return False
        try:
            data = dtls._tx_srtp.protect_rtcp(packet)
        except pylibsrtp.Error:
            self.srtp_errors += 1
            return False
        transport = pair.protocol.transport
        if transport is None:
            return False
        transport.sendto(data, pair.remote_addr)
        return True

    # -- state -------------------------------------------------------------------------------------------
    @property
    def local_ports(self) -> list[int]:
        """UDP ports of the gathered host candidates."""
        return [c.port for c in self._gatherer.getLocalCandidates()]

    @property
    def dtls_state(self) -> str:
        return self._dtls.state

    @property
    def ice_state(self) -> str:
        return self._ice.state

    def _dtls_state_changed(self) -> None:
        state = self._dtls.state
        if state in ("failed", "closed"):
            self.failed.set()
        if self.on_state is not None:
            self.on_state(state)

    def _ice_state_changed(self) -> None:
        if self._ice.state in ("failed", "closed"):
            self.failed.set()
            if self.on_state is not None:
                self.on_state(self._ice.state)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
        self._sink = None
        if self._sink_socket is not None:
            self._sink_socket.close()
            self._sink_socket = None
        self._remove_pump()
        with contextlib.suppress(Exception):
            await self._dtls.stop()
        with contextlib.suppress(Exception):
            await self._ice.stop()
        self.failed.set()

