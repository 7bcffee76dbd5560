"""Micro-benchmark of the forwarding hot path: CPU time per packet·viewer, and where it goes.

One process, no server, no asyncio: a real :class:`Broadcast` with N viewers whose sinks are the real AES-GCM
sinks of the glue (our RFC 7714 sender on ``cryptography``'s AESGCM, ``sendmsg`` on a non-blocking UDP socket to
a receiving socket on 127.0.0.1 that is drained between rounds, outside the timing). It feeds 1200-byte H.264
packets and 160-byte Opus packets through :meth:`Broadcast.on_rtp` and reports thread CPU time per packet·viewer,
then the same loop with parts taken away, so the difference is each part's cost:

* ``full``        on_rtp with the real sinks (map, header, GCM, sendmsg)
* ``no_send``     the sink does everything except the syscall
* ``map_only``    the sink returns at once (the Python loop plus Forwarder.map)
* ``run{K}_full`` :meth:`Broadcast.on_rtp_run` with runs of K packets (what the ingest pump hands over when packets
  wait in the socket) and the glue's batch sinks: one UDP GSO sendmsg per viewer and run
* and single operations timed alone: ``aesgcm_encrypt_1200``, ``sendmsg_1200``, ``protect_parts_1200``, ...

Usage:  .venv/bin/python -m benchmarks.hot_path [--viewers 50] [--packets 4000] [--core 1]
It pins itself to ``--core`` (default: the last allowed core). Thread CPU time (not wall time) is reported, so
other processes on the machine disturb it less; the minimum of ``--repeat`` rounds is taken.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Callable

from webrtc_cast.rtp.header import build as build_rtp
from webrtc_cast.rtp.srtp_gcm import GcmProtector
from webrtc_cast.sdp.description import Codec
from webrtc_cast.sfu_tree import aiortc_glue
from webrtc_cast.sfu_tree.broadcast import Broadcast, PublishedTrack
from webrtc_cast.sfu_tree.forwarder import Forwarder

VIDEO_PT, AUDIO_PT = 102, 111
SRC_VIDEO_SSRC, SRC_AUDIO_SSRC = 0x1111, 0x2222


def _now() -> float:
    return time.thread_time()


class Rig:
    """A broadcast with ``n`` viewers (video forwarders on sinks made by ``make_sink``)."""

    def __init__(
        self, n: int, make_sink: Callable[[int], object], kind: str = "video",
        make_batch_sink: Callable[[int], object] | None = None,
    ) -> None:
        self.b = Broadcast("bench")
        self.b.attach_publisher(
            "pub",
            [
                PublishedTrack("video", Codec(VIDEO_PT, "H264", 90000)),
                PublishedTrack("audio", Codec(AUDIO_PT, "opus", 48000, 2)),
            ],
        )
        self.kind = kind
        self.fwds = []
        for i in range(n):
            pt = VIDEO_PT if kind == "video" else AUDIO_PT
            fwd = Forwarder(kind, 90000 if kind == "video" else 48000, 0x5000 + i, {"H264": pt, "OPUS": pt})
            fwd.sink = make_sink(i)
            if make_batch_sink is not None:
                fwd.batch_sink = make_batch_sink(i)
            self.b.add_forwarder(fwd, 0.0)
            self.fwds.append(fwd)
        self.seq = 1000
        self.ts = 5000
        # one keyframe first: the forwarders start forwarding on it
        if kind == "video":
            self.feed(bytes([0x65]) + bytes(1199), 0.001)

    def feed(self, payload: bytes, now: float, marker: bool = False) -> int:
        self.seq += 1
        self.ts += 3000
        if self.kind == "video":
            pkt = build_rtp(VIDEO_PT, self.seq & 0xFFFF, self.ts, SRC_VIDEO_SSRC, payload, marker)
        else:
            pkt = build_rtp(AUDIO_PT, self.seq & 0xFFFF, self.ts, SRC_AUDIO_SSRC, payload, marker)
        return self.b.on_rtp(pkt, now)

    def feed_run(self, payload: bytes, now: float, k: int) -> int:
        run = []
        for _ in range(k):
            self.seq += 1
            run.append(build_rtp(VIDEO_PT, self.seq & 0xFFFF, self.ts, SRC_VIDEO_SSRC, payload))
        self.ts += 3000
        return self.b.on_rtp_run(run, now)


def _drain(sock: socket.socket) -> None:
    try:
        while True:
            sock.recv(4096)
    except BlockingIOError:
        pass


def measure_rig(n: int, packets: int, repeat: int, make_sink, kind: str, payload_len: int, rx) -> float:
    """µs of thread CPU per packet·viewer (minimum over rounds)."""
    rig = Rig(n, make_sink, kind)
    body = bytes([0x41]) + bytes(payload_len - 1) if kind == "video" else bytes(payload_len)
    best = float("inf")
    now = 1.0
    batch = 50  # packets between drains of the receiving socket (its buffer holds them all)
    for _ in range(repeat):
        total = 0.0
        sent = 0
        for _ in range(packets // batch):
            t0 = _now()
            for _ in range(batch):
                now += 0.001
                sent += rig.feed(body, now)
            total += _now() - t0
            if rx is not None:
                _drain(rx)
        if sent != (packets // batch) * batch * n:
            raise RuntimeError(f"sent {sent}, expected {(packets // batch) * batch * n}")
        best = min(best, total / sent * 1e6)
    return best


def measure_runs(n: int, packets: int, repeat: int, make_sink, make_batch_sink, k: int, rx) -> float:
    """µs of thread CPU per packet·viewer when packets come in runs of ``k`` (minimum over rounds)."""
    rig = Rig(n, make_sink, "video", make_batch_sink)
    body = bytes([0x41]) + bytes(1199)
    best = float("inf")
    now = 1.0
    runs_per_drain = max(1, 48 // k)
    for _ in range(repeat):
        total = 0.0
        sent = 0
        rounds = packets // (runs_per_drain * k)
        for _ in range(rounds):
            t0 = _now()
            for _ in range(runs_per_drain):
                now += 0.001
                sent += rig.feed_run(body, now, k)
            total += _now() - t0
            _drain(rx)
        if sent != rounds * runs_per_drain * k * n:
            raise RuntimeError(f"sent {sent}, expected {rounds * runs_per_drain * k * n}")
        best = min(best, total / sent * 1e6)
    return best


def time_op(fn: Callable[[], object], count: int, repeat: int, after: Callable[[], None] | None = None) -> float:
    """µs of thread CPU per call of ``fn`` (minimum over rounds)."""
    best = float("inf")
    for _ in range(repeat):
        total = 0.0
        done = 0
        while done < count:
            t0 = _now()
            for _ in range(50):
                fn()
            total += _now() - t0
            done += 50
            if after is not None:
                after()
        best = min(best, total / done * 1e6)
    return best


def sendmmsg_experiment(n: int, repeat: int) -> dict:
    """Would batching the sends help? ``n`` datagrams of 1240 bytes to ``n`` different receiving sockets, either
    as ``n`` sendto calls or as one sendmmsg(2) (through ctypes, all structures built beforehand, so this is the
    best case for batching). Note that batching over one socket needs every viewer on one server socket (one
    shared ICE port); today each viewer has its own. µs per datagram."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    class Iovec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

    class SockaddrIn(ctypes.Structure):
        _fields_ = [
            ("family", ctypes.c_ushort),
            ("port", ctypes.c_uint16),
            ("addr", ctypes.c_uint32),
            ("zero", ctypes.c_char * 8),
        ]

    class Msghdr(ctypes.Structure):
        _fields_ = [
            ("name", ctypes.c_void_p),
            ("namelen", ctypes.c_uint32),
            ("iov", ctypes.POINTER(Iovec)),
            ("iovlen", ctypes.c_size_t),
            ("control", ctypes.c_void_p),
            ("controllen", ctypes.c_size_t),
            ("flags", ctypes.c_int),
        ]

    class Mmsghdr(ctypes.Structure):
        _fields_ = [("hdr", Msghdr), ("len", ctypes.c_uint)]

    rxs = []
    for _ in range(n):
        r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        r.bind(("127.0.0.1", 0))
        r.setblocking(False)
        rxs.append(r)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.1", 0))
    tx.setblocking(False)
    data = ctypes.create_string_buffer(1240)
    iov = Iovec(ctypes.cast(data, ctypes.c_void_p), 1240)
    names = (SockaddrIn * n)()
    msgs = (Mmsghdr * n)()
    for i, r in enumerate(rxs):
        port = r.getsockname()[1]
        names[i] = SockaddrIn(
            socket.AF_INET, socket.htons(port), int.from_bytes(socket.inet_aton("127.0.0.1"), "little"), b""
        )
        msgs[i].hdr = Msghdr(
            ctypes.cast(ctypes.byref(names[i]), ctypes.c_void_p),
            ctypes.sizeof(SockaddrIn),
            ctypes.pointer(iov),
            1,
            None,
            0,
            0,
        )
    fd = tx.fileno()
    sendmmsg = libc.sendmmsg
    addrs = [r.getsockname() for r in rxs]
    pkt = bytes(1240)

    def drain_all() -> None:
        for r in rxs:
            _drain(r)

    def one_by_one() -> None:
        for a in addrs:
            tx.sendto(pkt, a)

    def batched() -> None:
        if sendmmsg(fd, msgs, n, 0) != n:
            raise OSError(ctypes.get_errno(), "sendmmsg")

    per_call_sendto = time_op(one_by_one, 200, repeat, drain_all) / n
    per_call_mmsg = time_op(batched, 200, repeat, drain_all) / n
    for r in rxs:
        r.close()
    tx.close()
    return {"sendto_each_us": round(per_call_sendto, 3), "sendmmsg_batched_us": round(per_call_mmsg, 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--viewers", type=int, default=50)
    p.add_argument("--packets", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--core", type=int, default=None)
    args = p.parse_args(argv)
    cores = sorted(os.sched_getaffinity(0))
    core = args.core if args.core is not None else cores[-1]
    os.sched_setaffinity(0, {core})

    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    addr = rx.getsockname()
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    tx.bind(("127.0.0.1", 0))
    tx.setblocking(False)
    key, salt = os.urandom(16), os.urandom(12)

    def gcm_sink(_i: int):
        return aiortc_glue._make_gcm_sink(GcmProtector(key, salt), tx, addr)

    class _NoSendSock:
        def sendmsg(self, *a: object) -> int:
            return 0

        def sendto(self, *a: object) -> int:
            return 0

    def gcm_batch_sink(_i: int):
        return aiortc_glue._make_gcm_batch_sink(GcmProtector(key, salt), tx, addr)

    def gcm_nosend_sink(_i: int):
        return aiortc_glue._make_gcm_sink(GcmProtector(key, salt), _NoSendSock(), addr)  # type: ignore[arg-type]

    def null_sink(_i: int):
        return lambda *a: True

    n, k, r = args.viewers, args.packets, args.repeat
    out: dict = {"viewers": n, "core": core, "python": sys.version.split()[0], "us_per_packet_viewer": {}}
    res = out["us_per_packet_viewer"]
    res["video_full"] = measure_rig(n, k, r, gcm_sink, "video", 1200, rx)
    res["video_no_send"] = measure_rig(n, k, r, gcm_nosend_sink, "video", 1200, None)
    res["video_map_only"] = measure_rig(n, k, r, null_sink, "video", 1200, None)
    res["audio_full"] = measure_rig(n, k, r, gcm_sink, "audio", 160, rx)
    for run in (2, 4, 8):
        res[f"video_run{run}_full"] = measure_runs(n, k, r, gcm_sink, gcm_batch_sink, run, rx)

    ops: dict = {}
    gcm = GcmProtector(key, salt)
    payload = memoryview(bytes(1200))
    header = bytes(12)
    aead = gcm._aead
    iv = bytes(12)
    ops["aesgcm_encrypt_1200"] = time_op(lambda: aead.encrypt(iv, payload, header), 20000, r)
    ops["protect_parts_1200"] = time_op(lambda: gcm.protect_parts(header, payload, 7, 0x1234), 20000, r)
    ct = bytes(1228)
    ops["sendmsg_1200"] = time_op(lambda: tx.sendmsg((header, ct), (), 0, addr), 5000, r, lambda: _drain(rx))
    pkt = bytes(1240)
    ops["sendto_1240"] = time_op(lambda: tx.sendto(pkt, addr), 5000, r, lambda: _drain(rx))
    out["us_per_op"] = {k2: round(v, 3) for k2, v in ops.items()}
    out["sendmmsg_experiment_per_datagram"] = sendmmsg_experiment(n, r)
    out["us_per_packet_viewer"] = {k2: round(v, 3) for k2, v in res.items()}
    out["derived"] = {
        "syscall_and_kernel": round(res["video_full"] - res["video_no_send"], 3),
        "header_gcm_in_sink": round(res["video_no_send"] - res["video_map_only"], 3),
        "loop_and_map": round(res["video_map_only"], 3),
    }
    print(json.dumps(out, indent=2))
    print(
        f"hot_path: {res['video_full']:.2f} us per video packet·viewer at N={n} "
        f"(loop+map {res['video_map_only']:.2f}, header+GCM {res['video_no_send'] - res['video_map_only']:.2f}, "
        f"sendmsg+kernel {res['video_full'] - res['video_no_send']:.2f}); audio {res['audio_full']:.2f}; "
        f"in runs (GSO) of 2/4/8: {res['video_run2_full']:.2f}/{res['video_run4_full']:.2f}/"
        f"{res['video_run8_full']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
