"""Fan-out benchmark: how many 2.5 Mbit/s WHEP viewers one server core carries.

The server (``webrtc-cast serve``) runs as a subprocess pinned to core 0; this process pins itself to core 1 and
runs the load there: one synthetic publisher and N lean viewers (see benchmarks/lean_viewer.py), all with real
ICE, DTLS and SRTP on 127.0.0.1. N is ramped step by step; in each step's measurement window

* server-side drop  = publisher packets x N - the server's ``webrtc_cast_forwarded_packets_total`` delta,
  plus datagrams the kernel dropped on the server's sockets (/proc/net/udp ``drops``),
* forwarding delay  = viewer arrival minus the send time the publisher wrote into every audio packet
  (same machine, same monotonic clock; it includes the viewer loop's own latency, so it is an upper bound),
* CPU and memory    = the server's utime+stime and VmRSS from /proc, against a baseline with no viewers.

A step passes with every viewer connected, no server-side drop and p99 delay under ``--max-p99-ms``. The
search stops at the first failing step, when the load generator itself saturates, or when ``--budget`` ends.

Usage:  .venv/bin/python -m benchmarks.fanout [--quick] [--budget 180] [--steps 50,100,150,...]
Prints one JSON object (also saved under benchmarks/results/) and one summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from benchmarks.lean_viewer import H264Clip, LeanPublisher, LeanViewer, Recorder, encode_clip_at
from webrtc_cast.sfu_tree.aiortc_glue import PeerTransport, generate_certificate
from webrtc_cast.workers import stop_processes

logger = logging.getLogger("fanout")

DEFAULT_STEPS = (25, 50, 75, 100, 125, 150, 200, 250, 300, 400, 500, 600, 700, 800)
FLOOR_VIEWERS = 150
TARGET_BITRATE = 2_500_000
DRAIN_S = 0.3
DRAIN_MAX_S = 8.0
PROFILE_TOP = 12
MAX_VIDEO_WAIT_S = 5.0
CONTENDED = 0.05  # runqueue wait above this share of the window: other processes competed for the core
RESULTS_DIR = Path(__file__).resolve().parent / "results"
_FORWARDED = re.compile(r'^webrtc_cast_forwarded_packets_total\{kind="(\w+)"\}\s+([0-9.e+]+)', re.M)
CLK_TCK = os.sysconf("SC_CLK_TCK")
_NO_LINE = re.compile(r":\d+\)$")


# --- /proc readers -------------------------------------------------------------------------------------------
def cpu_seconds(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_split(pid: int | str = "self") -> tuple[float, float]:
    """(user, system) CPU seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def rss_kb(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def runqueue_wait_seconds(pid: int | str = "self") -> float:
    """Time this process's threads spent runnable but waiting for a CPU (/proc/PID/task/*/schedstat): other
    work on the same core shows up here."""
    total = 0
    task_dir = f"/proc/{pid}/task"
    for tid in os.listdir(task_dir):
        with contextlib.suppress(OSError, ValueError, IndexError), open(f"{task_dir}/{tid}/schedstat") as f:
            total += int(f.read().split()[1])
    return total / 1e9


def core_busy_seconds(core: int | None) -> float:
    """CPU seconds core ``core`` spent busy (/proc/stat: all but idle and iowait), 0.0 when unknown."""
    if core is None:
        return 0.0
    with contextlib.suppress(OSError, ValueError), open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                vals = [int(v) for v in line.split()[1:]]
                return (sum(vals[:8]) - vals[3] - vals[4]) / CLK_TCK
    return 0.0


def socket_inodes(pid: int | str) -> set[str]:
    out = set()
    fd_dir = f"/proc/{pid}/fd"
    for name in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            target = os.readlink(f"{fd_dir}/{name}")
            if target.startswith("socket:["):
                out.add(target[8:-1])
    return out


def udp_drops(pid: int | str) -> int:
    """Datagrams the kernel dropped on this process's UDP sockets (receive buffer full), since they opened."""
    inodes = socket_inodes(pid)
    total = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                if len(cols) >= 13 and cols[9] in inodes:
                    total += int(cols[12])
    return total


def machine_info() -> dict:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import aiortc

    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "aiortc": aiortc.__version__,
    }


# --- server subprocess ---------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    port: int,
    core: int | None,
    max_viewers: int,
    log_path: Path,
    ice_host: str = "127.0.0.1",
    module: str = "webrtc_cast",
) -> subprocess.Popen:
    """``module`` is the entry point: webrtc_cast, or benchmarks.serve_without_taps (forwarding only)."""
    cmd = [
        sys.executable,
        "-m",
        module,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ice-host",
        ice_host,
        "--max-viewers",
        str(max_viewers),
        # every lean viewer posts from 127.0.0.1: lift the per-address limit meant for real clients
        "--http-rate",
        "10000",
        "--http-burst",
        "10000",
        "--log-level",
        "warning",
    ]
    preexec = (lambda: os.sched_setaffinity(0, {core})) if core is not None else None
    log = open(log_path, "wb")  # noqa: SIM115 - owned by the child for its lifetime
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec)


async def wait_ready(http: aiohttp.ClientSession, base: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with http.get(base + "/healthz", timeout=aiohttp.ClientTimeout(total=2)) as r:
                if r.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError("server did not become ready")


async def forwarded_packets(http: aiohttp.ClientSession, base: str) -> dict[str, int]:
    """The server's ``webrtc_cast_forwarded_packets_total`` by kind."""
    async with http.get(base + "/metrics", timeout=aiohttp.ClientTimeout(total=10)) as r:
        text = await r.text()
    return {kind: int(float(v)) for kind, v in _FORWARDED.findall(text)}


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(q / 100 * (len(sorted_values) - 1)))))
    return sorted_values[k]


# --- the benchmark -------------------------------------------------------------------------------------------
class Bench:
    name = "webrtc-cast"

    def __init__(
        self,
        args: argparse.Namespace,
        server_pid: int,
        base: str,
        clip: H264Clip,
        proc: subprocess.Popen | None = None,
    ) -> None:
        self.args = args
        self.pid = server_pid
        self.proc = proc
        self.ice_host = getattr(args, "ice_host", "127.0.0.1")  # where every peer of the run gathers ICE
        self.base = base
        self.clip = clip
        self.stream = "bench"
        self.recorder = Recorder()
        self.viewers: list[LeanViewer] = []
        self.join_failures: list[str] = []
        self.certificate = generate_certificate()
        self.publisher: LeanPublisher | None = None
        self.join_probe: dict | None = None

    # -- what differs between servers (benchmarks/vs_janus.py overrides these) -----------------------------------
    async def ready(self, http: aiohttp.ClientSession) -> None:
        await wait_ready(http, self.base, self.proc or _SERVER["proc"], 20)

    async def connect_publisher(self, http: aiohttp.ClientSession) -> LeanPublisher:
        pub = LeanPublisher(PeerTransport([self.ice_host], self.certificate), self.clip)
        await pub.connect(http, f"{self.base}/whip/{self.stream}")
        return pub

    async def connect_viewer(self, http: aiohttp.ClientSession, viewer: LeanViewer) -> None:
        await viewer.connect(http, f"{self.base}/whep/{self.stream}")

    async def close_viewer(self, http: aiohttp.ClientSession, viewer: LeanViewer) -> None:
        await viewer.close(http, self.base)

    async def server_forwarded(self, http: aiohttp.ClientSession) -> dict[str, int]:
        """Packets the server sent to viewers so far, by kind (its own counter)."""
        return await forwarded_packets(http, self.base)

    async def join(self, http: aiohttp.ClientSession, target: int) -> dict:
        """Add viewers until ``target`` are connected (batches of --join-batch, each bounded in time)."""
        t0 = time.monotonic()
        failed = 0
        attempts = 0
        while len(self.viewers) < target and attempts < 2 * target:
            batch = [
                LeanViewer(PeerTransport([self.ice_host], self.certificate), self.recorder)
                for _ in range(min(self.args.join_batch, target - len(self.viewers)))
            ]
            attempts += len(batch)
            results = await asyncio.gather(*(self.connect_viewer(http, v) for v in batch), return_exceptions=True)
            for v, res in zip(batch, results, strict=True):
                if isinstance(res, BaseException):
                    failed += 1
                    self.join_failures.append(str(res)[:200])
                    await v.close()
                else:
                    self.viewers.append(v)
        return {"join_seconds": round(time.monotonic() - t0, 2), "join_failures": failed}

    async def probe_joins(self, http: aiohttp.ClientSession, count: int) -> dict:
        """Join time with the broadcast running to ``len(viewers)`` viewers: ``count`` more viewers join one at a
        time (nothing else joining); each is timed from its first signaling request to DTLS up and to its first
        RTP packet, then they all leave again."""
        at = len(self.viewers)
        connect_ms: list[float] = []
        first_ms: list[float] = []
        failures = 0
        probes: list[LeanViewer] = []
        give_up = time.monotonic() + 30.0  # a server that cannot take joins any more must not stall the run
        for _ in range(count):
            if time.monotonic() > give_up:
                break
            v = LeanViewer(PeerTransport([self.ice_host], self.certificate), self.recorder)
            probes.append(v)
            v.t_start = time.monotonic()
            try:
                await self.connect_viewer(http, v)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                failures += 1
                self.join_failures.append(f"probe: {str(exc)[:200]}")
                continue
            deadline = time.monotonic() + 3.0
            while not v.t_first and time.monotonic() < deadline:
                await asyncio.sleep(0.002)
            connect_ms.append((v.t_connected - v.t_start) * 1000)
            if v.t_first:
                first_ms.append((v.t_first - v.t_start) * 1000)
            else:
                failures += 1
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                asyncio.gather(*(self.close_viewer(http, v) for v in probes), return_exceptions=True), 15
            )
        await asyncio.sleep(1.0)  # the server notices the departures before the next step
        connect_ms.sort()
        first_ms.sort()
        return {
            "at_viewers": at,
            "joins": count,
            "failures": failures,
            "connect_ms": {"p50": _r(percentile(connect_ms, 50)), "p95": _r(percentile(connect_ms, 95))},
            "first_packet_ms": {"p50": _r(percentile(first_ms, 50)), "p95": _r(percentile(first_ms, 95))},
        }

    async def wait_video_flowing(self, limit: float) -> float:
        """Until every viewer receives video (a viewer that joined without a cached keyframe waits for the next
        one; this publisher ignores PLI). Returns the seconds waited (bounded by ``limit``)."""
        t0 = time.monotonic()
        before = [v.video for v in self.viewers]
        while time.monotonic() - t0 < limit:
            await asyncio.sleep(0.25)
            now = [v.video for v in self.viewers]
            if all(b < a for a, b in zip(now, before, strict=True)):
                break
            before = [b if b < a else a for a, b in zip(now, before, strict=True)]
        return round(time.monotonic() - t0, 2)

    def _totals(self) -> dict:
        pub = self.publisher
        assert pub is not None
        return {
            "pub_sent": pub.sent,
            "pub_audio": pub.sent_audio,
            "pub_bytes": pub.sent_bytes,
            "received": sum(v.received for v in self.viewers),
            "per_viewer": [v.received for v in self.viewers],
            "server_sock_drops": udp_drops(self.pid),
            "load_sock_drops": udp_drops("self"),
        }

    def _start_profiler(self, seconds: float) -> tuple[subprocess.Popen, Path] | None:
        """py-spy (if installed) sampling the server for the window, pinned to the load core."""
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not self.args.profile or not Path(exe).exists():
            return None
        out = Path(tempfile.gettempdir()) / f"fanout-prof-{self.pid}-{len(self.viewers)}.txt"
        cmd = [
            exe,
            "record",
            "--pid",
            str(self.pid),
            "--duration",
            str(max(1, int(seconds))),
            "--rate",
            "250",
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(out),
        ]
        core = self.args.load_core
        preexec = (lambda: os.sched_setaffinity(0, {core})) if core is not None else None
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=preexec)
        return proc, out

    async def window(self, http: aiohttp.ClientSession, seconds: float) -> dict:
        """One measurement window, bracketed by publisher pauses so every counter is exact."""
        pub = self.publisher
        assert pub is not None
        n = len(self.viewers)
        rec = self.recorder
        pub.pause()
        fwd0 = await self._drain(http)
        s0 = self._totals()
        rec.delays_ns.clear()
        rec.active = True
        dec0 = (rec.decrypt_ok, rec.decrypt_failures)
        wait0, lwait0 = runqueue_wait_seconds(self.pid), runqueue_wait_seconds()
        busy0 = core_busy_seconds(self.args.server_core)
        split0 = cpu_split(self.pid)
        cpu0, load0, t0 = cpu_seconds(self.pid), cpu_seconds(), time.monotonic()
        profiler = self._start_profiler(seconds) if n else None
        lags: list[float] = []
        lag_task = asyncio.create_task(_lag_sampler(lags))
        pub.resume()
        peak = 0.0
        last_cpu, last_t = cpu0, t0
        end = t0 + seconds
        while (now := time.monotonic()) < end:
            await asyncio.sleep(min(1.0, max(0.0, end - now)))
            c, t = cpu_seconds(self.pid), time.monotonic()
            if t - last_t > 0.2:
                peak = max(peak, (c - last_cpu) / (t - last_t))
            last_cpu, last_t = c, t
        pub.pause()
        lag_task.cancel()
        cpu1, load1, t1 = cpu_seconds(self.pid), cpu_seconds(), time.monotonic()
        wait1, lwait1 = runqueue_wait_seconds(self.pid), runqueue_wait_seconds()
        busy1 = core_busy_seconds(self.args.server_core)
        split1 = cpu_split(self.pid)
        fwd1 = await self._drain(http)
        rec.active = False
        s1 = self._totals()
        pub.resume()
        wall = t1 - t0
        published = s1["pub_sent"] - s0["pub_sent"]
        forwarded = sum(fwd1.values()) - sum(fwd0.values())
        audio_pub = s1["pub_audio"] - s0["pub_audio"]
        audio_drop = audio_pub * n - (fwd1.get("audio", 0) - fwd0.get("audio", 0))
        received = s1["received"] - s0["received"]
        delays = sorted(d / 1e6 for d in rec.delays_ns)
        profile = await _collect_profile(profiler) if profiler else None
        return {
            "viewers": n,
            "seconds": round(wall, 2),
            "publisher_bitrate_bps": round((s1["pub_bytes"] - s0["pub_bytes"]) * 8 / wall),
            "published_packets": published,
            "expected_forwarded": published * n,
            "forwarded_packets": forwarded,
            "server_drop": published * n - forwarded,
            "server_drop_audio": audio_drop,
            "server_socket_drops": s1["server_sock_drops"] - s0["server_sock_drops"],
            "received_packets": received,
            "per_viewer_received": _spread([b - a for a, b in zip(s0["per_viewer"], s1["per_viewer"], strict=True)]),
            "load_side_loss": forwarded - received,
            "load_socket_drops": s1["load_sock_drops"] - s0["load_sock_drops"],
            "egress_mbps": round(forwarded / wall * (s1["pub_bytes"] - s0["pub_bytes"]) / max(published, 1) * 8e-6, 1),
            "delay_samples": len(delays),
            "delay_ms": {
                "p50": _r(percentile(delays, 50)),
                "p90": _r(percentile(delays, 90)),
                "p99": _r(percentile(delays, 99)),
                "max": _r(delays[-1] if delays else None),
            },
            "sample_decrypt_ok": rec.decrypt_ok - dec0[0],
            "sample_decrypt_failures": rec.decrypt_failures - dec0[1],
            "server_cpu": round((cpu1 - cpu0) / wall, 3),
            "server_cpu_peak_1s": round(peak, 3),
            "server_cpu_user": round((split1[0] - split0[0]) / wall, 3),
            "server_cpu_system": round((split1[1] - split0[1]) / wall, 3),
            "server_rss_kb": rss_kb(self.pid),
            "load_cpu": round((load1 - load0) / wall, 3),
            # share of the window each side was runnable but not running (other processes on its core)
            "server_runqueue_wait": round((wait1 - wait0) / wall, 3),
            # share of the server core other processes used (its busy time minus the server's CPU time): unlike
            # the run-queue wait, not inflated by a multi-threaded server's threads waiting for each other
            "server_core_foreign": round(max(0.0, (busy1 - busy0) - (cpu1 - cpu0)) / wall, 3)
            if self.args.server_core is not None
            else None,
            "load_runqueue_wait": round((lwait1 - lwait0) / wall, 3),
            "load_loop_lag_ms": {"p99": _r(percentile(sorted(lags), 99)), "max": _r(max(lags) if lags else None)},
            **({"profile_top_self": profile} if profile else {}),
        }

    async def _drain(self, http: aiohttp.ClientSession) -> dict[str, int]:
        """With the publisher paused, wait until the server's and the viewers' counters stop moving (the server
        may still work through a backlog). Returns the forwarded-packets counter. Bounded by DRAIN_MAX_S."""
        deadline = time.monotonic() + DRAIN_MAX_S
        last: tuple[dict[str, int], int] | None = None
        await asyncio.sleep(DRAIN_S)
        while True:
            now = (await self.server_forwarded(http), sum(v.received for v in self.viewers))
            if now == last or time.monotonic() > deadline:
                return now[0]
            last = now
            await asyncio.sleep(DRAIN_S)

    def judge(self, step: dict) -> tuple[bool, str]:
        p99 = step["delay_ms"]["p99"]
        step["load_saturated"] = load_saturated(step, self.args)
        if step["join_failures"] or step["viewers"] < step["target"]:
            return False, "viewers failed to join"
        if step["server_drop"] > 0 or step["server_socket_drops"] > 0:
            return False, "server-side drop"
        if step["load_saturated"]:  # the measured delay includes the generator's own lag: not the server's
            return False, "load generator saturated (result is a lower bound)"
        if p99 is None or step["delay_samples"] == 0:
            return False, "no delay samples"
        if p99 >= self.args.max_p99_ms:
            return False, f"p99 delay {p99} ms >= {self.args.max_p99_ms} ms"
        if load_saturated(step, self.args):
            return False, "load generator saturated (result is a lower bound)"
        if step["sample_decrypt_failures"]:
            return False, "SRTP sample decryption failed"
        return True, "pass"

    async def run(self) -> dict:
        args = self.args
        started = time.monotonic()
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=connector) as http:
            await self.ready(http)
            pub = self.publisher = await self.connect_publisher(http)
            pub_task = asyncio.create_task(pub.run(max_seconds=args.budget + 120))
            try:
                await asyncio.sleep(2.5)  # the broadcast goes live and caches a keyframe
                baseline = await self.window(http, min(3.0, args.window))
                baseline["target"] = 0
                steps: list[dict] = []
                stopped = "all steps passed"
                per_viewer_join = 0.05
                inconclusive = 0  # consecutive steps that failed only while other processes held the server core
                for target in args.steps:
                    added = target - len(self.viewers)
                    estimate = added * per_viewer_join * 1.5 + args.settle + args.window + 3 * DRAIN_S + 2
                    if time.monotonic() - started + estimate > args.budget:
                        stopped = "time budget"
                        break
                    # Joins happen with the publisher paused, so the RSS delta across them is the viewers' own
                    # memory: with media flowing, the LL-HLS packager's window (~30 s of segments, ~10 MB at
                    # 2.5 Mbit/s) fills at the same time and would be counted per viewer.
                    pub.pause()
                    await asyncio.sleep(DRAIN_S)
                    rss_before = rss_kb(self.pid)
                    joined = await self.join(http, target)
                    await asyncio.sleep(DRAIN_S)
                    joined["rss_join_delta_kb"] = rss_kb(self.pid) - rss_before
                    joined["joined_viewers"] = len(self.viewers) - (target - added)
                    pub.resume()
                    per_viewer_join = max(0.01, joined["join_seconds"] / max(added, 1))
                    await asyncio.sleep(args.settle)
                    joined["waited_for_video_s"] = await self.wait_video_flowing(MAX_VIDEO_WAIT_S)
                    for attempt in range(1 + args.retries):
                        step = {"target": target, "attempt": attempt + 1, **joined}
                        step.update(await self.window(http, args.window))
                        ok, why = self.judge(step)
                        step["pass"], step["verdict"] = ok, why
                        steps.append(step)
                        contended = is_contended(step)
                        if ok or not contended or time.monotonic() - started + args.window + 3 > args.budget:
                            break
                        logger.info("N=%d failed while the server core was contended; measuring again", target)
                    logger.info(
                        "N=%d %s: server cpu %.2f, p99 %s ms, drop %d, load cpu %.2f",
                        step["viewers"],
                        why,
                        step["server_cpu"],
                        step["delay_ms"]["p99"],
                        step["server_drop"],
                        step["load_cpu"],
                    )
                    probe_due = target >= args.probe_at and not step["join_failures"]
                    if self.join_probe is None and probe_due and args.probe_joins > 0:
                        self.join_probe = await self.probe_joins(http, args.probe_joins)
                    if ok:
                        inconclusive = 0
                        stopped = "all steps passed"
                    elif contended and inconclusive < args.max_inconclusive:
                        # every attempt was contended: not this server's limit, maybe; one more step decides
                        inconclusive += 1
                        stopped = f"N={target}: {why} (contended: inconclusive)"
                        logger.info("N=%d inconclusive (contended); going on to the next step", target)
                    else:
                        stopped = f"N={target}: {why}"
                        break
            finally:
                pub.stop()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pub_task, 5)
                await self._close_all(http)
        return self._result(baseline, steps, stopped, time.monotonic() - started)

    async def _close_all(self, http: aiohttp.ClientSession) -> None:
        closers = [v.close() for v in self.viewers]
        if self.publisher is not None:
            closers.append(self.publisher.transport.close())
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*closers, return_exceptions=True), 15)

    def _result(self, baseline: dict, steps: list[dict], stopped: str, elapsed: float) -> dict:
        passed = [s for s in steps if s["pass"]]
        if steps and not steps[-1]["pass"] and steps[-1]["target"] in {s["target"] for s in passed}:
            stopped = "time budget"
        best = passed[-1] if passed else None
        result: dict = {
            "max_viewers": best["viewers"] if best else 0,
            "stopped_because": stopped,
            "stopped_by": stopped_by(stopped, steps),
        }
        if best:
            n = best["viewers"]
            result.update(
                p99_delay_ms=best["delay_ms"]["p99"],
                server_cpu=best["server_cpu"],
                cpu_per_viewer_pct=round((best["server_cpu"] - baseline["server_cpu"]) * 100 / n, 3),
                rss_per_viewer_kb=round((best["server_rss_kb"] - baseline["server_rss_kb"]) / n, 1),
                publisher_bitrate_bps=best["publisher_bitrate_bps"],
            )
        cpu_steps = [s for s in steps if s["server_cpu"] > baseline["server_cpu"]]
        if cpu_steps:
            last = cpu_steps[-1]
            per_viewer = (last["server_cpu"] - baseline["server_cpu"]) / last["viewers"]
            # viewers one fully busy core would carry at this step's measured cost (ignores delay and drops)
            result["cpu_extrapolated_viewers"] = int((1.0 - baseline["server_cpu"]) / per_viewer)
            # the largest step measured, passed or not: CPU time per viewer is less disturbed by other processes
            # on the core than the delay is
            result["last_step"] = {
                "viewers": last["viewers"],
                "cpu_per_viewer_pct": round(per_viewer * 100, 3),
                "rss_per_viewer_kb": round((last["server_rss_kb"] - baseline["server_rss_kb"]) / last["viewers"], 1),
                "us_cpu_per_packet_viewer": round(
                    per_viewer * last["seconds"] / max(1, last["published_packets"]) * 1e6, 2
                ),
            }
        contended = [s["viewers"] for s in steps if is_contended(s)]
        if contended:
            result["contended_steps"] = contended
            result["note"] = (
                "other processes competed for the server core or the load core during these steps "
                "(server_core_foreign, load_runqueue_wait): "
                "delays and drops there are pessimistic"
            )
        joins = [
            (s["rss_join_delta_kb"], s["joined_viewers"])
            for s in steps
            if s.get("attempt") == 1 and "rss_join_delta_kb" in s
        ]
        if joins and sum(n for _, n in joins):
            # RSS growth across the joins (publisher paused) over the viewers that joined: memory per viewer
            result["rss_join_per_viewer_kb"] = round(sum(d for d, _ in joins) / sum(n for _, n in joins), 1)
        if self.join_probe is not None:
            result["join_probe"] = self.join_probe
        joined = [v for v in self.viewers if v.t_start and v.t_first]
        if joined:
            first = sorted((v.t_first - v.t_start) * 1000 for v in joined)
            result["ramp_join_first_packet_ms"] = {
                "p50": _r(percentile(first, 50)),
                "p95": _r(percentile(first, 95)),
                "batch": self.args.join_batch,
            }
        result["floor_viewers"] = FLOOR_VIEWERS
        result["floor_met"] = bool(best and best["viewers"] >= FLOOR_VIEWERS)
        if self.join_failures:
            result["join_failure_examples"] = self.join_failures[:3]
        return {
            "benchmark": "fanout",
            "server": self.name,
            "machine": machine_info(),
            "config": {
                "quick": self.args.quick,
                "steps": list(self.args.steps),
                "window_s": self.args.window,
                "settle_s": self.args.settle,
                "budget_s": self.args.budget,
                "max_p99_ms": self.args.max_p99_ms,
                "target_bitrate_bps": TARGET_BITRATE,
                "clip": {
                    "width": self.clip.width,
                    "height": self.clip.height,
                    "fps": self.clip.fps,
                    "seconds": self.clip.duration,
                    "video_bitrate_bps": round(self.clip.bitrate),
                    "gop_s": 2,
                },
                "server_core": self.args.server_core,
                "load_core": self.args.load_core,
            },
            "baseline": baseline,
            "steps": steps,
            "result": result,
            "elapsed_s": round(elapsed, 1),
        }


_SERVER: dict = {}


def load_saturated(step: dict, args: argparse.Namespace) -> bool:
    """The load generator, not the server, limited this step: its CPU share, its event-loop lag or its sockets."""
    lag = (step.get("load_loop_lag_ms") or {}).get("max") or 0.0
    return bool(
        step["load_side_loss"] > 0
        or step["load_socket_drops"] > 0
        or step["load_cpu"] > getattr(args, "max_load_cpu", 0.95)
        or lag > getattr(args, "max_load_lag_ms", 50.0)
    )


def stopped_by(stopped: str, steps: list[dict]) -> str:
    """Where the ramp stopped and why: server limit, load generator limit, step cap or time budget."""
    if stopped == "time budget":
        return "time budget"
    if stopped == "all steps passed":
        return "step cap"
    if "load generator saturated" in stopped:
        return "load generator limit"
    return "server limit"


async def _lag_sampler(out: list[float], period: float = 0.01) -> None:
    """Event-loop lag of this (load) process: how late a ``period`` sleep wakes up, in ms."""
    while True:
        t = time.monotonic()
        await asyncio.sleep(period)
        out.append((time.monotonic() - t - period) * 1000)


def is_contended(step: dict) -> bool:
    """Other processes competed for the server core, or for the load generator's (whose loop latency is part of
    the measured delay), during the window."""
    if step.get("load_runqueue_wait", 0.0) > CONTENDED:
        return True
    foreign = step.get("server_core_foreign")
    if foreign is not None:
        return foreign > CONTENDED
    return step["server_runqueue_wait"] > CONTENDED


async def _collect_profile(profiler: tuple[subprocess.Popen, Path]) -> list[dict] | None:
    """Top functions by self time from py-spy's raw (collapsed-stack) output."""
    proc, path = profiler
    for _ in range(100):  # py-spy stops by itself after --duration; wait at most 10 s more
        if proc.poll() is not None:
            break
        await asyncio.sleep(0.1)
    else:
        proc.kill()
        proc.wait(5)
    if not path.exists():
        return None
    self_counts: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = _NO_LINE.sub(")", stack.rsplit(";", 1)[-1])  # merge the lines of one function
        self_counts[leaf] = self_counts.get(leaf, 0) + int(count)
        total += int(count)
    path.unlink()
    top = sorted(self_counts.items(), key=lambda kv: -kv[1])[:PROFILE_TOP]
    return [{"function": f, "self_pct": round(100 * c / total, 1)} for f, c in top] if total else None


def _spread(values: list[int]) -> dict | None:
    return {"min": min(values), "max": max(values)} if values else None


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def summary_line(report: dict) -> str:
    r = report["result"]
    if not r.get("max_viewers"):
        return f"fanout: max_viewers=0 at 2.5 Mbit/s on 1 core ({r['stopped_because']})"
    return (
        f"fanout: max_viewers={r['max_viewers']} at 2.5 Mbit/s on 1 core, p99_delay={r['p99_delay_ms']} ms, "
        f"cpu_per_viewer={r['cpu_per_viewer_pct']} %, rss_per_viewer={r.get('rss_join_per_viewer_kb')} KB (joins)"
        f" (floor {r['floor_viewers']}: {'met' if r['floor_met'] else 'NOT met'}; stopped: {r['stopped_because']})"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 20 viewers, 5 s window")
    p.add_argument("--budget", type=float, default=180.0, help="seconds for the whole run (default 180)")
    p.add_argument(
        "--steps",
        type=lambda s: [int(x) for x in s.split(",")],
        default=None,
        help="viewer counts to ramp through, comma-separated",
    )
    p.add_argument("--window", type=float, default=None, help="measurement seconds per step (default 10)")
    p.add_argument("--settle", type=float, default=1.5, help="seconds between joins and the window")
    p.add_argument("--join-batch", type=int, default=25, help="viewers joining concurrently")
    p.add_argument("--max-p99-ms", type=float, default=10.0, help="p99 forwarding delay limit")
    p.add_argument(
        "--retries",
        type=int,
        default=1,
        help="re-measure a failed step this many times when other processes contended the server core",
    )
    p.add_argument(
        "--max-inconclusive",
        type=int,
        default=1,
        help="failed steps in a row, every attempt with the server core contended, to go past before stopping",
    )
    p.add_argument(
        "--max-load-cpu",
        type=float,
        default=0.95,
        help="load generator CPU share above which a step is 'load generator saturated' (default 0.95)",
    )
    p.add_argument(
        "--max-load-lag-ms",
        type=float,
        default=50.0,
        help="load generator event-loop lag (max in"
        " the window) above which a step is 'load generator saturated' (default 50)",
    )
    p.add_argument("--server-core", type=int, default=0)
    p.add_argument("--load-core", type=int, default=1)
    p.add_argument(
        "--profile",
        action="store_true",
        help="sample the server with py-spy during each window (top functions by self time)",
    )
    p.add_argument(
        "--probe-at", type=int, default=50, help="after the first step with at least this many viewers, time joins"
    )
    p.add_argument("--probe-joins", type=int, default=10, help="viewers joining one at a time in the join probe")
    p.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/fanout-*.json")
    args = p.parse_args(argv)
    if args.quick:
        args.steps = args.steps or [20]
        args.window = args.window or 5.0
        args.budget = min(args.budget, 90.0)
    args.steps = sorted(set(args.steps or DEFAULT_STEPS))
    args.window = args.window or 10.0
    args.probe_at = min(args.probe_at, max(args.steps))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("aioice").setLevel(logging.WARNING)
    cores = os.sched_getaffinity(0)
    if len(cores) < 2 or args.server_core not in cores or args.load_core not in cores:
        logger.warning("cores %s: cannot pin server and load apart; numbers will be pessimistic", sorted(cores))
        args.server_core = args.load_core = None
    else:
        os.sched_setaffinity(0, {args.load_core})
    t0 = time.monotonic()
    clip = encode_clip_at(TARGET_BITRATE)
    logger.info("encoded %.1f s clip at %.0f bit/s in %.1f s", clip.duration, clip.bitrate, time.monotonic() - t0)
    port = free_port()
    log_path = Path(tempfile.gettempdir()) / f"fanout-server-{port}.log"
    max_viewers = max(args.steps) + 10
    proc = start_server(port, args.server_core, max_viewers, log_path)
    _SERVER["proc"] = proc
    try:
        bench = Bench(args, proc.pid, f"http://127.0.0.1:{port}", clip, proc)
        report = asyncio.run(asyncio.wait_for(bench.run(), args.budget + 120))
    finally:
        stop_processes([proc], 10)
    report["server_log_tail"] = log_path.read_text(errors="replace").splitlines()[-5:]
    text = json.dumps(report, indent=2)
    print(text)
    if not args.no_save:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (RESULTS_DIR / f"fanout-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(text + "\n")
    print(summary_line(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
