"""The one place that touches aiortc / aioice internals (DESIGN.md §2, §6).

Everything else in webrtc-cast talks to a :class:`PeerTransport`: ICE on the configured host addresses, DTLS
with SRTP keying, and raw RTP/RTCP bytes in and out. aiortc's media pipeline (RtpRouter, RTCRtpReceiver,
jitter buffers, decoders) is never used on the server.

The internals used here are pinned by the exact aiortc/aioice versions in pyproject.toml and checked by
``tests/unit/test_aiortc_contract.py``; when an upgrade moves them, that test fails first.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import aioice.ice
import aioice.stun
import pylibsrtp
from aiortc.rtcdtlstransport import (
    SRTP_PROFILES,
    RTCCertificate,
    RTCDtlsFingerprint,
    RTCDtlsParameters,
    RTCDtlsTransport,
)
from aiortc.rtcicetransport import RTCIceGatherer, RTCIceParameters, RTCIceTransport
from aiortc.sdp import candidate_from_sdp, candidate_to_sdp
from OpenSSL import SSL
from pylibsrtp._binding import ffi as _srtp_ffi
from pylibsrtp._binding import lib as _srtp_lib

from webrtc_cast.rtp.srtp_gcm import GcmProtector
from webrtc_cast.sfu_tree.ingest_pump import IngestPump

logger = logging.getLogger(__name__)

RtpHandler = Callable[[bytes, float], None]
RtcpHandler = Callable[[bytes], None]
# The forwarding hot path: (payload view, first byte, second byte, sequence, timestamp, ssrc, header extension
# block) -> sent? The extension block (b"" for none) is written after the 12-byte header; the caller sets the X bit.
RtpSink = Callable[[memoryview, int, int, int, int, int, bytes], bool]
# Several packets of one outbound stream at once: ([(payload view, first byte, second byte, sequence, timestamp)],
# ssrc, header extension block) -> how many were sent. With AES-GCM, one UDP GSO send per run of equal sizes.
RtpBatchSink = Callable[[list[tuple[memoryview, int, int, int, int]], int, bytes], int]

# One scratch buffer for every outbound packet of the process (the hot path is single-threaded): the new RTP
# header and the payload are written into it, protected in place by libsrtp, and sent from it. No bytes object
# is built per viewer.
_SCRATCH_SIZE = 2048
_SCRATCH = _srtp_ffi.new("char[]", _SCRATCH_SIZE)
_SCRATCH_VIEW = memoryview(_srtp_ffi.buffer(_SCRATCH))
_SCRATCH_LEN = _srtp_ffi.new("int *")
_MAX_PLAINTEXT = _SCRATCH_SIZE - 64  # room for the SRTP auth tag / GCM tag
_RTP_HEADER = struct.Struct("!BBHII")


def _make_sink(srtp_session: pylibsrtp.Session, sock: socket.socket, addr: tuple) -> RtpSink:  # type: ignore[type-arg]
    ctx = srtp_session._srtp[0]  # pylibsrtp internal: the libsrtp context of this session
    protect = _srtp_lib.srtp_protect
    ok = _srtp_lib.srtp_err_status_ok
    sendto = sock.sendto
    pack_into = _RTP_HEADER.pack_into
    view, buf, len_p, limit = _SCRATCH_VIEW, _SCRATCH, _SCRATCH_LEN, _MAX_PLAINTEXT

    def sink(payload: memoryview, b0: int, b1: int, seq: int, ts: int, ssrc: int, ext: bytes) -> bool:
        h = 12 + len(ext)
        n = h + len(payload)
        if n > limit:
            return False
        pack_into(view, 0, b0, b1, seq, ts, ssrc)
        view[12:h] = ext
        view[h:n] = payload
        len_p[0] = n
        if protect(ctx, buf, len_p) != ok:
            return False
        try:
            sendto(view[: len_p[0]], addr)
        except OSError:  # full socket buffer (EAGAIN) or a vanished route: a drop the receiver can NACK
            return False
        return True

    return sink


def _make_gcm_sink(gcm: GcmProtector, sock: socket.socket, addr: tuple) -> RtpSink:  # type: ignore[type-arg]
    protect_parts = gcm.protect_parts
    sendto = sock.sendto
    pack = _RTP_HEADER.pack

    def sink(payload: memoryview, b0: int, b1: int, seq: int, ts: int, ssrc: int, ext: bytes) -> bool:
        header = pack(b0, b1, seq, ts, ssrc) + ext if ext else pack(b0, b1, seq, ts, ssrc)
        try:
            # one sendto of header + ciphertext: on this machine the concatenation (~0.1 µs for 1.2 KB) plus
            # sendto is ~0.3 µs cheaper than sendmsg of the two parts (benchmarks/hot_path.py)
            sendto(header + protect_parts(header, payload, seq, ssrc), addr)
        except OSError:
            return False
        return True

    return sink


_UDP_SEGMENT = 103  # linux/udp.h: the segment size of a UDP GSO send (a control message of SOL_UDP)
_GSO_MAX_BYTES = 65000  # one UDP GSO send is one UDP datagram to the stack: at most 64 KiB
_GSO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS
_GSO_UNSUPPORTED = (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP)
_gso = [hasattr(socket, "SOL_UDP") and sys.platform == "linux"]  # cleared when the kernel refuses one


def _make_gcm_batch_sink(gcm: GcmProtector, sock: socket.socket, addr: tuple) -> RtpBatchSink:  # type: ignore[type-arg]
    """Protects every packet and sends each run of equal-sized packets (the last of a run may be shorter) in one
    sendmsg with UDP_SEGMENT: the kernel splits it into the same datagrams, for a fraction of the per-datagram
    cost of separate sendto calls (benchmarks/hot_path.py)."""
    protect_parts = gcm.protect_parts
    sendto = sock.sendto
    sendmsg = sock.sendmsg
    pack = _RTP_HEADER.pack
    u16 = struct.Struct("=H").pack
    level = getattr(socket, "SOL_UDP", 17)

    def send_run(run: list[bytes], size: int) -> int:
        if len(run) > 1 and _gso[0]:
            try:
                sendmsg(run, [(level, _UDP_SEGMENT, u16(size))], 0, addr)
                return len(run)
            except OSError as exc:
                if exc.errno not in _GSO_UNSUPPORTED:
                    return 0  # full socket buffer: the run is lost, the viewer NACKs it
                _gso[0] = False
                logger.warning("UDP GSO refused (%s): sending one datagram per packet", exc)
        sent = 0
        for packet in run:
            try:
                sendto(packet, addr)
                sent += 1
            except OSError:
                pass
        return sent

    def batch(items: list[tuple[memoryview, int, int, int, int]], ssrc: int, ext: bytes) -> int:
        sent = 0
        run: list[bytes] = []
        size = 0
        for payload, b0, b1, seq, ts in items:
            header = pack(b0, b1, seq, ts, ssrc) + ext if ext else pack(b0, b1, seq, ts, ssrc)
            packet = header + protect_parts(header, payload, seq, ssrc)
            n = len(packet)
            if run and (n > size or len(run) >= _GSO_MAX_SEGMENTS or (len(run) + 1) * size > _GSO_MAX_BYTES):
                sent += send_run(run, size)
                run = []
            if not run:
                size = n
            run.append(packet)
            if n < size:  # a shorter packet can only end a run
                sent += send_run(run, size)
                run = []
        if run:
            sent += send_run(run, size)
        return sent

    return batch


def _batch_of(sink: RtpSink) -> RtpBatchSink:
    """A batch sink that sends packet by packet (AES-CM through libsrtp)."""

    def batch(items: list[tuple[memoryview, int, int, int, int]], ssrc: int, ext: bytes) -> int:
        sent = 0
        for payload, b0, b1, seq, ts in items:
            if sink(payload, b0, b1, seq, ts, ssrc, ext):
                sent += 1
        return sent

    return batch


_GCM_PROFILES = {b"SRTP_AEAD_AES_128_GCM": 16, b"SRTP_AEAD_AES_256_GCM": 32}


def _gcm_protector(dtls: RTCDtlsTransport) -> GcmProtector | None:
    """Our AES-GCM sender (RFC 7714) when DTLS negotiated a GCM profile; None for AES-CM (libsrtp then)."""
    key_len = _GCM_PROFILES.get(dtls._ssl.get_selected_srtp_profile())
    if key_len is None:
        return None
    material = dtls._ssl.export_keying_material(b"EXTRACTOR-dtls_srtp", 2 * (key_len + 12))
    idx = 1 if dtls._role == "server" else 0  # RFC 5764 §4.2: client key, server key, client salt, server salt
    key = material[idx * key_len : (idx + 1) * key_len]
    salt = material[2 * key_len + idx * 12 : 2 * key_len + (idx + 1) * 12]
    return GcmProtector(key, salt)

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


@contextlib.contextmanager
def use_ice_hosts(addresses: list[str]) -> Iterator[None]:
    """Make aiortc's RTCPeerConnection (a client in tests and tools) gather only ``addresses``.

    aioice looks up ``get_host_addresses`` at gather time and skips 127.0.0.1; this replaces it for the
    duration of the block. Server-side transports do not need it (they gather explicitly).
    """
    original = aioice.ice.get_host_addresses
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: list(addresses)
    try:
        yield
    finally:
        aioice.ice.get_host_addresses = original


def set_ice_hosts(addresses: list[str]) -> None:
    """Process-wide variant of :func:`use_ice_hosts` for long-running client tools."""
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: list(addresses)


def set_sender_target_bitrate(sender: object, bitrate: int) -> bool:
    """Set the encoder bitrate of an aiortc RTCRtpSender (a client-side tool; aiortc has no public API).

    The encoder exists only after the first frame was encoded; False until then. aiortc clamps the value
    (H.264 0.5-3 Mbit/s, VP8 0.25-1.5 Mbit/s).
    """
    encoder = getattr(sender, "_RTCRtpSender__encoder", None)
    if encoder is None or not hasattr(encoder, "target_bitrate"):
        return False
    encoder.target_bitrate = bitrate
    return True


@dataclass(slots=True)
class LocalParameters:
    ice_ufrag: str
    ice_pwd: str
    fingerprint: str  # sha-256, upper-case hex with colons
    candidates: list[str]  # SDP candidate attribute values (without "a=candidate:")


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


__all__ = [
    "RtpSink",
    "DTLS_CIPHERS",
    "LocalParameters",
    "PeerTransport",
    "SRTP_PROFILES",
    "certificate_fingerprint",
    "generate_certificate",
    "set_ice_hosts",
    "set_sender_target_bitrate",
    "use_ice_hosts",
]
