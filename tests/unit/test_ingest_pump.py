"""IngestPump: audio queued behind a video burst in the socket is delivered before the rest of the burst."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from webrtc_cast.sfu_tree import ingest_pump
from webrtc_cast.sfu_tree.ingest_pump import IngestPump, is_rtp

AUDIO_PT, VIDEO_PT = 111, 102


def rtp(pt: int, seq: int, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq, seq * 90, 0x1234 + pt) + bytes(100)


@pytest.fixture
def socket_pair():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    yield rx, tx
    tx.close()
    rx.close()


def test_demultiplexing():
    assert is_rtp(rtp(VIDEO_PT, 1)) and is_rtp(rtp(AUDIO_PT, 1, marker=True))
    assert not is_rtp(struct.pack("!BBH", 0x80, 200, 6) + bytes(24))  # RTCP sender report (RFC 5761)
    assert not is_rtp(bytes([0x00, 0x01]) + bytes(18))  # STUN binding request
    assert not is_rtp(bytes([22, 0xFE, 0xFD]) + bytes(20))  # DTLS record
    assert not is_rtp(b"") and not is_rtp(b"\x80\x60")


async def _first_datagram(rx: socket.socket) -> tuple[bytes, tuple]:
    """What the event loop does: read one datagram and hand it to the protocol."""
    await asyncio.sleep(0.05)  # let everything sent arrive in the socket buffer
    rx.setblocking(False)
    return rx.recvfrom(2048)


async def test_audio_overtakes_the_video_burst_waiting_in_the_socket(socket_pair):
    rx, tx = socket_pair
    burst = [rtp(VIDEO_PT, seq) for seq in range(1, 31)]
    for packet in burst:
        tx.send(packet)
    tx.send(rtp(AUDIO_PT, 500))
    tx.send(rtp(VIDEO_PT, 31, marker=True))
    delivered: list[bytes] = []
    pump = IngestPump(socket.socket(fileno=socket.dup(rx.fileno())), delivered.extend, lambda d, a: None, [AUDIO_PT])
    data, addr = await _first_datagram(rx)
    pump.datagram_received(data, addr)
    pts = [d[1] & 0x7F for d in delivered]
    # the audio arrived behind 30 video packets and went out first, not after the burst's fan-out
    assert pts[0] == AUDIO_PT
    video_seqs = [struct.unpack_from("!H", d, 2)[0] for d in delivered if d[1] & 0x7F == VIDEO_PT]
    assert video_seqs == list(range(1, 32))  # video in order, none lost
    assert pump.overtakes == 1 and pump.delivered == 32
    pump.close()


async def test_a_long_burst_yields_to_the_event_loop_and_still_delivers_everything(socket_pair):
    rx, tx = socket_pair
    total = ingest_pump.DELIVERIES_PER_TURN * 2 + 10
    for seq in range(total):
        tx.send(rtp(VIDEO_PT, seq))
    delivered: list[bytes] = []
    pump = IngestPump(socket.socket(fileno=socket.dup(rx.fileno())), delivered.extend, lambda d, a: None, [AUDIO_PT])
    data, addr = await _first_datagram(rx)
    pump.datagram_received(data, addr)
    assert len(delivered) == ingest_pump.DELIVERIES_PER_TURN  # one turn's budget, then other callbacks run
    for _ in range(5):
        await asyncio.sleep(0)
    assert [struct.unpack_from("!H", d, 2)[0] for d in delivered] == list(range(total))
    pump.close()


async def test_non_rtp_goes_back_to_the_ice_stack(socket_pair):
    rx, tx = socket_pair
    stun = bytes([0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42]) + bytes(12)
    rtcp = struct.pack("!BBHI", 0x81, 201, 1, 0x99) + bytes(24)
    tx.send(rtp(VIDEO_PT, 1))
    tx.send(stun)
    tx.send(rtcp)
    tx.send(b"")
    tx.send(rtp(AUDIO_PT, 2))
    delivered: list[bytes] = []
    others: list[bytes] = []
    pump = IngestPump(
        socket.socket(fileno=socket.dup(rx.fileno())), delivered.extend, lambda d, a: others.append(d), [AUDIO_PT]
    )
    data, addr = await _first_datagram(rx)
    pump.datagram_received(data, addr)
    assert [d[1] & 0x7F for d in delivered] == [AUDIO_PT, VIDEO_PT]
    assert others == [stun, rtcp, b""]  # untouched, in order; the ICE stack decides (the glue drops empties)
    pump.close()


async def test_closed_pump_delivers_nothing(socket_pair):
    rx, tx = socket_pair
    delivered: list[bytes] = []
    pump = IngestPump(socket.socket(fileno=socket.dup(rx.fileno())), delivered.extend, lambda d, a: None, [AUDIO_PT])
    pump.close()
    pump.datagram_received(rtp(VIDEO_PT, 1), ("127.0.0.1", 1))
    assert delivered == []


async def test_video_waiting_in_the_socket_goes_out_in_runs_of_one_ssrc(socket_pair):
    rx, tx = socket_pair
    for seq in range(10):
        tx.send(rtp(VIDEO_PT, seq))
    other_layer = struct.pack("!BBHII", 0x80, VIDEO_PT, 7, 0, 0xABCD) + bytes(100)
    tx.send(other_layer)
    tx.send(rtp(AUDIO_PT, 1))
    runs: list[list[bytes]] = []
    pump = IngestPump(
        socket.socket(fileno=socket.dup(rx.fileno())), runs.append, lambda d, a: None, [AUDIO_PT], run_limit=lambda: 4
    )
    data, addr = await _first_datagram(rx)
    pump.datagram_received(data, addr)
    # audio alone first, then the first layer's packets at most 4 at a time, the other SSRC in a run of its own
    assert [len(r) for r in runs] == [1, 4, 4, 2, 1]
    assert runs[0][0][1] & 0x7F == AUDIO_PT and runs[-1] == [other_layer]
    assert [struct.unpack_from("!H", d, 2)[0] for r in runs[1:4] for d in r] == list(range(10))
    assert pump.runs == 3 and pump.delivered == 12
    pump.close()
