"""Ingest pump: a publisher's datagrams read straight off its socket, audio ahead of video already waiting there.

Why: each incoming RTP packet takes one synchronous pass over every viewer of its layer (~10 µs per viewer, so
~1.5 ms at 150 viewers). A keyframe arrives as a burst of 30-40 video packets; read one datagram per event-loop
turn, an audio packet that arrived behind the burst waited in the kernel's socket buffer for the whole burst's
fan-out — tens of milliseconds at 150 viewers, which is what the viewers hear as jitter and what bounded the
viewers per core (benchmarks/fanout.py measures the delay on audio). The pump drains the socket before every
delivery and delivers the *urgent* payload types (the publisher's audio) first, so audio waits for at most the
one video pass in progress. Within one payload type the order is kept; across them, audio overtaking video is
harmless (separate SSRCs, separate clocks).

Video waiting in the socket goes out in *runs*: consecutive packets of one SSRC, at most ``run_limit()`` of them,
delivered together so that each viewer gets them in one UDP GSO send (see Broadcast.on_rtp_run). Under load the
runs form by themselves (packets queue while a pass is in progress), and the caller's limit keeps one run's pass
short enough for the audio behind it.

The pump is plain socket + asyncio code: the caller (the aiortc glue) decides which datagrams are RTP, decrypts
and routes them (``deliver``), and gives everything else (STUN, DTLS, RTCP) back to the ICE stack (``other``).
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Callable, Iterable

# Deliveries per event-loop turn before the pump lets other callbacks run (viewers' RTCP, HTTP, timers).
DELIVERIES_PER_TURN = 64
# Datagrams held in the pump's queues at most; beyond that the kernel's socket buffer holds them.
MAX_QUEUED = 512
_RECV_SIZE = 2048


def is_rtp(data: bytes) -> bool:
    """RTP (not RTCP, STUN or DTLS) by RFC 7983 demultiplexing and RFC 5761's payload-type rule."""
    return len(data) >= 12 and 128 <= data[0] <= 191 and not 192 <= data[1] <= 223


class IngestPump:
    """Reads one socket and hands RTP to ``deliver``, urgent payload types first, within a per-turn budget."""

    def __init__(
        self,
        sock: socket.socket,
        deliver: Callable[[list[bytes]], None],
        other: Callable[[bytes, tuple], None],  # type: ignore[type-arg]
        urgent_payload_types: Iterable[int],
        loop: asyncio.AbstractEventLoop | None = None,
        run_limit: Callable[[], int] | None = None,
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._deliver = deliver
        self._other = other
        self._urgent_pts = frozenset(pt & 0x7F for pt in urgent_payload_types)
        self._loop = loop or asyncio.get_running_loop()
        self._run_limit = run_limit
        self._urgent: deque[bytes] = deque()
        self._bulk: deque[bytes] = deque()
        self._scheduled = False
        self._closed = False
        self.delivered = 0
        self.overtakes = 0  # urgent packets delivered while other RTP was waiting
        self.runs = 0  # deliveries of more than one packet
        self.read_errors = 0

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        """Entry point: the event loop read one datagram of this socket. Delivers it and whatever followed it."""
        self._take(data, addr)
        if not self._scheduled:
            self._run()

    def close(self) -> None:
        self._closed = True
        self._urgent.clear()
        self._bulk.clear()
        self._sock.close()

    @property
    def queued(self) -> int:
        return len(self._urgent) + len(self._bulk)

    def _take(self, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        if is_rtp(data):
            if data[1] & 0x7F in self._urgent_pts:
                self._urgent.append(data)
            else:
                self._bulk.append(data)
        else:
            self._other(data, addr)

    def _drain(self) -> None:
        recvfrom = self._sock.recvfrom
        while len(self._urgent) + len(self._bulk) < MAX_QUEUED:
            try:
                data, addr = recvfrom(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.read_errors += 1
                return
            self._take(data, addr)

    def _run(self) -> None:
        self._scheduled = False
        if self._closed:
            return
        urgent, bulk = self._urgent, self._bulk
        for _ in range(DELIVERIES_PER_TURN):
            self._drain()
            if urgent:
                if bulk:
                    self.overtakes += 1
                run = [urgent.popleft()]
            elif bulk:
                run = [bulk.popleft()]
                if bulk and self._run_limit is not None:
                    limit = self._run_limit()
                    ssrc = run[0][8:12]
                    while bulk and len(run) < limit and bulk[0][8:12] == ssrc:
                        run.append(bulk.popleft())
                    if len(run) > 1:
                        self.runs += 1
            else:
                return
            self.delivered += len(run)
            self._deliver(run)
            if self._closed:
                return
        self._scheduled = True
        self._loop.call_soon(self._run)
