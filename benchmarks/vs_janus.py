"""Fan-out side by side with Janus: viewers per core for webrtc-cast and for Janus's streaming plugin.

The same machine, the same synthetic 2.5 Mbit/s H.264 + Opus stream and the same lean viewer load generator
(benchmarks/lean_viewer.py) as benchmarks/fanout.py, run against

* webrtc-cast: ``webrtc-cast serve`` (HTTP on 127.0.0.1), publisher over WHIP, viewers over WHEP (we offer);
* Janus (Debian's ``janus``, C): started with a config this benchmark writes into a temp dir (core, the streaming
  plugin only, the HTTP transport on 127.0.0.1 only, ``event_loops = 1``). The publisher sends the same packets
  as plain RTP to an RTP mountpoint on loopback UDP ports; viewers attach through the Janus HTTP API (create
  session, attach ``janus.plugin.streaming``, ``watch`` -> Janus's offer -> our answer with ``start``);
* optionally webrtc-cast without packet taps (``--servers ...,webrtc-cast-nohls``): forwarding only, no LL-HLS.

Janus cannot gather ICE candidates on the loopback interface, so the benchmark re-executes itself in a private
network namespace (``unshare --net``; needs root) with its own loopback and a veth pair carrying NETNS_ADDR, on
which every server and peer gathers ICE. Nothing in it is reachable from outside.

The server is pinned to one core, this process (the load) to the other. Runs alternate: webrtc-cast, Janus,
webrtc-cast, Janus, ... each with a fresh server process and the ramp of benchmarks/fanout.py: the largest viewer
count with no server-side drop and p99 forwarding delay under 10 ms, server CPU and RSS delta per viewer, and the
join time (viewers joining one at a time at the probe step: first request -> DTLS up, -> first RTP packet).

Janus has no forwarded-packets counter: its "server-side drop" is published x N minus what the viewers received
(so a loss on the load side counts against Janus; the kernel's drops on either side's sockets are reported).

Usage:  .venv/bin/python -m benchmarks.vs_janus [--quick] [--rounds 2] [--total-budget 900]
            [--servers webrtc-cast,janus[,webrtc-cast-nohls]] [--janus-event-loops 1] [fanout options]
        (the fanout options: --steps, --window, --settle, --join-batch, --max-p99-ms, --retries, --server-core,
        --load-core, --profile, --probe-at, --probe-joins; see ``python -m benchmarks.fanout --help``)
Prints one JSON object (also saved under benchmarks/results/) and a summary line with the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import itertools
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import aiohttp

from benchmarks import fanout
from benchmarks.lean_viewer import AUDIO_PT, H264_FMTP, VIDEO_PT, H264Clip, LeanPublisher, LeanViewer
from webrtc_cast.workers import stop_processes

logger = logging.getLogger("vs_janus")

DEFAULT_STEPS = (25, 50, 75, 100, 125, 150, 200, 250, 300, 400, 500, 600, 700, 800)
# Janus (libnice) never gathers on the loopback interface, so the whole benchmark runs in a private network
# namespace of its own: its loopback plus a veth pair whose one end carries NETNS_ADDR. Nothing in it is reachable
# from outside the process tree; traffic to NETNS_ADDR is local delivery, the same kernel path as 127.0.0.1.
# Both servers and all peers use NETNS_ADDR for ICE; HTTP stays on 127.0.0.1.
NETNS_ADDR = "10.255.0.1"
SERVERS = ("webrtc-cast", "janus", "webrtc-cast-nohls")
NETNS_IFACE = "vsj0"
_NETNS_ENV = "VS_JANUS_IN_NETNS"
MOUNTPOINT_ID = 1
JANUS_HTTP_TIMEOUT_S = 15.0
_transactions = itertools.count(1)


# --- Janus: config, process, HTTP API -------------------------------------------------------------------------
def janus_lib_dir() -> Path | None:
    for path in glob.glob("/usr/lib/*/janus/plugins/libjanus_streaming.so") + glob.glob(
        "/usr/lib/janus/plugins/libjanus_streaming.so"
    ):
        return Path(path).parent.parent
    return None


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_janus_config(root: Path, http_port: int, audio_port: int, video_port: int, event_loops: int = 1) -> Path:
    """A minimal Janus config in ``root``: the streaming plugin and the HTTP transport only (each folder holds
    only the one library), HTTP on 127.0.0.1, ICE gathering on the loopback interface only, one RTP mountpoint
    for Opus PT 111 + H.264 PT 102 on loopback UDP ports. Returns the config folder."""
    lib = janus_lib_dir()
    if lib is None:
        raise RuntimeError("janus plugins not found: apt-get install -y janus (scripts/install.sh --test)")
    cfg = root / "cfg"
    folders = {name: root / name for name in ("plugins", "transports", "events", "loggers")}
    for path in (cfg, *folders.values()):
        path.mkdir(parents=True, exist_ok=True)
    (folders["plugins"] / "libjanus_streaming.so").symlink_to(lib / "plugins" / "libjanus_streaming.so")
    (folders["transports"] / "libjanus_http.so").symlink_to(lib / "transports" / "libjanus_http.so")
    (cfg / "janus.jcfg").write_text(
        f"""general: {{
  configs_folder = "{cfg}"
  plugins_folder = "{folders["plugins"]}"
  transports_folder = "{folders["transports"]}"
  events_folder = "{folders["events"]}"
  loggers_folder = "{folders["loggers"]}"
  debug_level = 3
  server_name = "vs-janus-bench"
  session_timeout = 0{f"{chr(10)}  event_loops = {event_loops}" if event_loops > 0 else ""}
}}
certificates: {{}}
media: {{ rtp_port_range = "20000-60000" }}
nat: {{ nice_debug = false; ice_enforce_list = "{NETNS_IFACE}"; ignore_mdns = true }}
plugins: {{}}
transports: {{}}
loggers: {{}}
events: {{ broadcast = false }}
"""
    )
    (cfg / "janus.transport.http.jcfg").write_text(
        f"""general: {{ json = "plain"; base_path = "/janus"; http = true; port = {http_port}; ip = "127.0.0.1";
  https = false }}
admin: {{ admin_http = false; admin_https = false }}
cors: {{}}
"""
    )
    (cfg / "janus.plugin.streaming.jcfg").write_text(
        f"""general: {{ events = false }}
bench: {{
  type = "rtp"
  id = {MOUNTPOINT_ID}
  description = "vs_janus bench"
  media = (
    {{ type = "audio"; mid = "a"; label = "audio"; port = {audio_port}; iface = "127.0.0.1"; pt = {AUDIO_PT};
      codec = "opus" }},
    {{ type = "video"; mid = "v"; label = "video"; port = {video_port}; iface = "127.0.0.1"; pt = {VIDEO_PT};
      codec = "h264"; fmtp = "{H264_FMTP}" }}
  )
}}
"""
    )
    return cfg


def start_janus(cfg: Path, core: int | None, log_path: Path) -> subprocess.Popen:
    exe = shutil.which("janus")
    if exe is None:
        raise RuntimeError("janus is not installed: apt-get install -y janus (scripts/install.sh --test)")
    cmd = [exe, "-F", str(cfg), "-C", str(cfg / "janus.jcfg")]
    preexec = (lambda: os.sched_setaffinity(0, {core})) if core is not None else None
    log = open(log_path, "wb")  # noqa: SIM115 - owned by the child for its lifetime
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec)


class JanusApi:
    """The few Janus HTTP API calls a streaming viewer needs."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base  # http://127.0.0.1:PORT/janus

    async def post(self, path: str, body: dict) -> dict:
        body = {**body, "transaction": f"t{next(_transactions)}"}
        timeout = aiohttp.ClientTimeout(total=JANUS_HTTP_TIMEOUT_S)
        async with self.http.post(self.base + path, json=body, timeout=timeout) as resp:
            reply = await resp.json(content_type=None)
        if reply.get("janus") == "error" or "error" in reply:
            raise RuntimeError(f"janus {body.get('janus')}: {reply.get('error')}")
        return reply

    async def create(self) -> int:
        return int((await self.post("", {"janus": "create"}))["data"]["id"])

    async def attach(self, session: int) -> int:
        reply = await self.post(f"/{session}", {"janus": "attach", "plugin": "janus.plugin.streaming"})
        return int(reply["data"]["id"])

    async def next_jsep(self, session: int, handle: int, deadline: float) -> dict:
        """Long-poll the session's events until one for ``handle`` carries a JSEP (or a plugin error)."""
        while time.monotonic() < deadline:
            timeout = aiohttp.ClientTimeout(total=max(1.0, deadline - time.monotonic()))
            async with self.http.get(f"{self.base}/{session}?maxev=5", timeout=timeout) as resp:
                events = await resp.json(content_type=None)
            for ev in events if isinstance(events, list) else [events]:
                data = ev.get("plugindata", {}).get("data", {})
                if "error" in data:
                    raise RuntimeError(f"janus streaming: {data['error']}")
                if ev.get("sender") == handle and ev.get("jsep"):
                    return ev["jsep"]
        raise RuntimeError("janus: no offer before the deadline")

    async def destroy(self, session: int) -> None:
        await self.post(f"/{session}", {"janus": "destroy"})


class PlainRtpSender:
    """Stands in for the publisher's PeerTransport: plain RTP to the mountpoint's loopback ports."""

    def __init__(self, audio_port: int, video_port: int) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.setblocking(False)
        self._audio = ("127.0.0.1", audio_port)
        self._video = ("127.0.0.1", video_port)

    def send_rtp(self, packet: bytes) -> bool:
        try:
            self._sock.sendto(packet, self._audio if (packet[1] & 0x7F) == AUDIO_PT else self._video)
        except OSError:
            return False
        return True

    async def close(self) -> None:
        self._sock.close()


class JanusBench(fanout.Bench):
    """benchmarks/fanout.py's ramp against Janus's streaming plugin."""

    name = "janus"

    def __init__(
        self, args: argparse.Namespace, proc: subprocess.Popen, base: str, clip: H264Clip, ports: tuple[int, int]
    ):
        super().__init__(args, proc.pid, base, clip, proc)
        self.ports = ports
        self.sessions: dict[int, int] = {}  # id(viewer) -> Janus session

    async def ready(self, http: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"janus exited with {self.proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(self.base + "/info", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise RuntimeError("janus did not become ready")

    async def connect_publisher(self, http: aiohttp.ClientSession) -> LeanPublisher:
        return LeanPublisher(PlainRtpSender(*self.ports), self.clip)  # type: ignore[arg-type]

    async def connect_viewer(self, http: aiohttp.ClientSession, viewer: LeanViewer) -> None:
        api = JanusApi(http, self.base)
        viewer.t_start = viewer.t_start or time.monotonic()
        session = await api.create()
        self.sessions[id(viewer)] = session
        handle = await api.attach(session)
        deadline = time.monotonic() + JANUS_HTTP_TIMEOUT_S
        await api.post(f"/{session}/{handle}", {"janus": "message", "body": {"request": "watch", "id": MOUNTPOINT_ID}})
        offer = await api.next_jsep(session, handle, deadline)

        async def send_answer(answer: str) -> None:
            await api.post(
                f"/{session}/{handle}",
                {"janus": "message", "body": {"request": "start"}, "jsep": {"type": "answer", "sdp": answer}},
            )

        await viewer.accept_offer(offer["sdp"], send_answer)

    async def close_viewer(self, http: aiohttp.ClientSession, viewer: LeanViewer) -> None:
        session = self.sessions.pop(id(viewer), None)
        if session is not None:
            with contextlib.suppress(Exception):
                await JanusApi(http, self.base).destroy(session)
        await viewer.close()

    def judge(self, step: dict) -> tuple[bool, str]:
        # received-based accounting: a drop on the load generator's own sockets is not Janus's
        if 0 < step["server_drop"] <= step["load_socket_drops"]:
            return False, "load generator saturated (its sockets dropped what Janus sent; result is a lower bound)"
        return super().judge(step)

    async def server_forwarded(self, http: aiohttp.ClientSession) -> dict[str, int]:
        # Janus exports no such counter: what the viewers received stands in for it (see the module docstring)
        return {"audio": sum(v.audio for v in self.viewers), "video": sum(v.video for v in self.viewers)}


# --- one run per server ---------------------------------------------------------------------------------------
def run_cast(args: argparse.Namespace, clip: H264Clip, name: str = "webrtc-cast") -> dict:
    port = fanout.free_port()
    log_path = Path(tempfile.gettempdir()) / f"vs-janus-cast-{port}.log"
    module = "benchmarks.serve_without_taps" if name == "webrtc-cast-nohls" else "webrtc_cast"
    proc = fanout.start_server(
        port, args.server_core, max(args.steps) + args.probe_joins + 10, log_path, ice_host=args.ice_host, module=module
    )
    try:
        bench = fanout.Bench(args, proc.pid, f"http://127.0.0.1:{port}", clip, proc)
        bench.name = name
        report = asyncio.run(asyncio.wait_for(bench.run(), args.budget + 60))
    finally:
        stop_processes([proc], 15)
    report["server_log_tail"] = log_path.read_text(errors="replace").splitlines()[-5:]
    return report


def run_janus(args: argparse.Namespace, clip: H264Clip) -> dict:
    root = Path(tempfile.mkdtemp(prefix="vs-janus-"))
    http_port, audio_port, video_port = fanout.free_port(), free_udp_port(), free_udp_port()
    cfg = write_janus_config(root, http_port, audio_port, video_port, args.janus_event_loops)
    log_path = root / "janus.log"
    proc = start_janus(cfg, args.server_core, log_path)
    try:
        bench = JanusBench(args, proc, f"http://127.0.0.1:{http_port}/janus", clip, (audio_port, video_port))
        report = asyncio.run(asyncio.wait_for(bench.run(), args.budget + 60))
        report["server_version"] = janus_version()
    finally:
        stop_processes([proc], 15)
        tail = log_path.read_text(errors="replace").splitlines()[-5:] if log_path.exists() else []
        shutil.rmtree(root, ignore_errors=True)
    report["server_log_tail"] = tail
    return report


def janus_version() -> str:
    with contextlib.suppress(Exception):
        out = subprocess.run(["janus", "--version"], capture_output=True, text=True, timeout=10).stdout
        return out.splitlines()[0].strip()
    return "?"


# --- summary ----------------------------------------------------------------------------------------------------
def _digest(report: dict) -> dict:
    r = report.get("result", {})
    probe = r.get("join_probe") or {}
    return {
        "max_viewers": r.get("max_viewers", 0),
        "stopped_because": r.get("stopped_because"),
        "stopped_by": r.get("stopped_by"),
        "p99_delay_ms": r.get("p99_delay_ms"),
        "server_cpu": r.get("server_cpu"),
        "cpu_per_viewer_pct": r.get("cpu_per_viewer_pct"),
        "cpu_extrapolated_viewers": r.get("cpu_extrapolated_viewers"),
        "rss_per_viewer_kb": r.get("rss_join_per_viewer_kb"),  # RSS growth across the joins, publisher paused
        "join_probe_at": probe.get("at_viewers"),
        "join_connect_ms": probe.get("connect_ms"),
        "join_first_packet_ms": probe.get("first_packet_ms"),
        "contended_steps": r.get("contended_steps", []),
        "last_step": r.get("last_step"),
    }


def _med(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(median(values), 3) if values else None


def summarize(runs: list[dict]) -> dict:
    out: dict = {}
    for name in SERVERS:
        mine = [_digest(r) for r in runs if r.get("server") == name]
        if not mine:
            continue
        maxes = [d["max_viewers"] for d in mine]

        def med(key: str, sub: str | None = None, rows: list[dict] = mine) -> float | None:
            vals = [d[key][sub] if sub else d[key] for d in rows if d.get(key) is not None]
            vals = [v for v in vals if v is not None]
            return round(median(vals), 3) if vals else None

        out[name] = {
            "runs": len(mine),
            "max_viewers_each_run": maxes,
            "max_viewers_median": median(maxes),
            "cpu_per_viewer_pct_median": med("cpu_per_viewer_pct"),
            "last_step_cpu_per_viewer_pct_median": _med(
                [(d.get("last_step") or {}).get("cpu_per_viewer_pct") for d in mine]
            ),
            "last_step_us_per_packet_viewer_median": _med(
                [(d.get("last_step") or {}).get("us_cpu_per_packet_viewer") for d in mine]
            ),
            "last_step_rss_per_viewer_kb_median": _med(
                [(d.get("last_step") or {}).get("rss_per_viewer_kb") for d in mine]
            ),
            # viewers one busy core would carry at the measured CPU cost per viewer (ignores the delay limit)
            "cpu_extrapolated_viewers_median": med("cpu_extrapolated_viewers"),
            "rss_per_viewer_kb_median": med("rss_per_viewer_kb"),
            "join_first_packet_p50_ms_median": med("join_first_packet_ms", "p50"),
            "join_first_packet_p95_ms_median": med("join_first_packet_ms", "p95"),
            "join_connect_p95_ms_median": med("join_connect_ms", "p95"),
        }
    cast, janus = out.get("webrtc-cast"), out.get("janus")
    if cast and janus and janus["max_viewers_median"]:
        out["ratio_viewers"] = round(cast["max_viewers_median"] / janus["max_viewers_median"], 2)
    nohls = out.get("webrtc-cast-nohls")
    if nohls and janus and janus["max_viewers_median"]:
        out["ratio_viewers_forwarding_only"] = round(nohls["max_viewers_median"] / janus["max_viewers_median"], 2)
    if cast and janus and cast["last_step_cpu_per_viewer_pct_median"] and janus["last_step_cpu_per_viewer_pct_median"]:
        # CPU cost per viewer at the largest step measured, Janus / webrtc-cast: above 1.0 means webrtc-cast is
        # cheaper per viewer (the fixed cost with no viewer, e.g. our LL-HLS packager, is not in it)
        out["ratio_cpu_efficiency"] = round(
            janus["last_step_cpu_per_viewer_pct_median"] / cast["last_step_cpu_per_viewer_pct_median"], 2
        )
    return out


def summary_line(summary: dict) -> str:
    def one(name: str) -> str:
        s = summary.get(name)
        if not s:
            return f"{name}: no run"
        return (
            f"{name} {s['max_viewers_median']} viewers/core (runs {s['max_viewers_each_run']}), "
            f"cpu/viewer {s['cpu_per_viewer_pct_median']} % (~{s['cpu_extrapolated_viewers_median']} by CPU), "
            f"rss/viewer {s['rss_per_viewer_kb_median']} KB, "
            f"join p50/p95 {s['join_first_packet_p50_ms_median']}/{s['join_first_packet_p95_ms_median']} ms"
        )

    ratio = summary.get("ratio_viewers")
    cpu_ratio = summary.get("ratio_cpu_efficiency")
    extra = ""
    if "webrtc-cast-nohls" in summary:
        extra = (
            f"; forwarding only (no LL-HLS packager) ratio {summary.get('ratio_viewers_forwarding_only', 'n/a')}: "
            f"{one('webrtc-cast-nohls')}"
        )
    return (
        f"vs_janus: ratio webrtc-cast/Janus = {ratio if ratio is not None else 'n/a'} (viewers per core; "
        f"goal >= 1.0), by CPU per viewer {cpu_ratio if cpu_ratio is not None else 'n/a'}; "
        f"{one('webrtc-cast')}; {one('janus')}{extra}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=True)
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round, 20 viewers, 5 s windows")
    p.add_argument("--rounds", type=int, default=None, help="webrtc-cast/Janus pairs (default 2, quick 1)")
    p.add_argument("--total-budget", type=float, default=None, help="seconds for everything (default 900)")
    p.add_argument(
        "--servers",
        default="webrtc-cast,janus",
        help=f"comma-separated, run in this order each round, from {','.join(SERVERS)} (webrtc-cast-nohls: "
        "forwarding only, LL-HLS packager detached, a diagnostic)",
    )
    p.add_argument("--only", choices=SERVERS, default=None, help="run one server only (same as --servers X)")
    p.add_argument(
        "--janus-event-loops",
        type=int,
        default=1,
        help="Janus 'event_loops': 1 = one static loop thread for all handles (its setting for many handles, and"
        " the best on one core); 0 = Janus's default, a thread per handle",
    )
    own, rest = p.parse_known_args(argv)
    quick = ["--quick"] if own.quick else []
    args = fanout.parse_args(quick + rest)
    if not any(a.startswith("--steps") for a in rest) and not own.quick:
        args.steps = sorted(DEFAULT_STEPS)
    args.rounds = own.rounds or (1 if own.quick else 2)
    args.total_budget = own.total_budget or (240.0 if own.quick else 900.0)
    args.only = own.only
    args.servers = [own.only] if own.only else [x for x in own.servers.split(",") if x]
    unknown = [x for x in args.servers if x not in SERVERS]
    if unknown:
        p.error(f"unknown server(s) {unknown}: choose from {SERVERS}")
    args.janus_event_loops = own.janus_event_loops
    runs_total = args.rounds * len(args.servers)
    # each run gets an equal share (less the clip encoding and process start/stop)
    args.budget = min(args.budget if own.quick else 1e9, max(30.0, (args.total_budget - 30) / runs_total - 20))
    return args


def reexec_in_netns(argv: list[str]) -> int:
    """Run this benchmark again inside a new network namespace (see NETNS_ADDR); returns its exit code."""
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if unshare is None or ip is None:
        logger.error("vs_janus needs unshare (util-linux) and ip (iproute2) for its private network namespace")
        return 2
    script = (
        f"set -e; {ip} link set lo up; {ip} link add {NETNS_IFACE} type veth peer name {NETNS_IFACE}p; "
        f"{ip} addr add {NETNS_ADDR}/32 dev {NETNS_IFACE}; {ip} link set {NETNS_IFACE}p up; "
        f'{ip} link set {NETNS_IFACE} up; exec "$0" -m benchmarks.vs_janus "$@"'
    )
    env = {**os.environ, _NETNS_ENV: "1"}
    cmd = [unshare, "--net", "sh", "-c", script, sys.executable, *argv]
    try:
        return subprocess.run(cmd, env=env, cwd=Path(__file__).resolve().parent.parent).returncode
    except KeyboardInterrupt:
        return 130


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if os.environ.get(_NETNS_ENV) != "1":
        return reexec_in_netns(argv)
    args = parse_args(argv)
    args.ice_host = NETNS_ADDR
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("aioice").setLevel(logging.WARNING)
    started = time.monotonic()
    cores = os.sched_getaffinity(0)
    if len(cores) < 2 or args.server_core not in cores or args.load_core not in cores:
        logger.warning("cores %s: cannot pin server and load apart; numbers will be pessimistic", sorted(cores))
        args.server_core = args.load_core = None
    else:
        os.sched_setaffinity(0, {args.load_core})
    if "janus" in args.servers and shutil.which("janus") is None:
        logger.error("janus is not installed: apt-get install -y janus (or scripts/install.sh --test)")
        return 2
    clip = fanout.encode_clip_at(fanout.TARGET_BITRATE)
    logger.info(
        "clip %.1f s at %.0f bit/s; %d round(s), %.0f s per run", clip.duration, clip.bitrate, args.rounds, args.budget
    )
    order = args.servers
    runs: list[dict] = []
    for rnd in range(args.rounds):
        for name in order:
            left = args.total_budget - (time.monotonic() - started)
            if left < 45:
                logger.warning("total budget spent: skipping %s round %d", name, rnd + 1)
                continue
            args.budget = min(args.budget, left - 25)
            logger.info("round %d: %s", rnd + 1, name)
            try:
                report = run_janus(args, clip) if name == "janus" else run_cast(args, clip, name)
            except Exception as exc:  # noqa: BLE001 - one failed run must not lose the others
                logger.exception("%s run failed", name)
                report = {"server": name, "error": repr(exc)[:500]}
            report["round"] = rnd + 1
            runs.append(report)
            d = _digest(report) if "result" in report else {"error": report.get("error")}
            logger.info("round %d %s: %s", rnd + 1, name, json.dumps(d))
    summary = summarize(runs)
    out = {
        "benchmark": "vs_janus",
        "machine": fanout.machine_info(),
        "config": {
            "quick": args.quick,
            "rounds": args.rounds,
            "steps": list(args.steps),
            "window_s": args.window,
            "max_p99_ms": args.max_p99_ms,
            "join_batch": args.join_batch,
            "probe_at": args.probe_at,
            "probe_joins": args.probe_joins,
            "janus_event_loops": args.janus_event_loops,
            "server_core": args.server_core,
            "load_core": args.load_core,
            "ice_host": f"{NETNS_ADDR} (private network namespace)",
            "budget_per_run_s": args.budget,
            "total_budget_s": args.total_budget,
        },
        "summary": summary,
        "runs": runs,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    text = json.dumps(out, indent=2)
    print(text)
    if not args.no_save:
        fanout.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (fanout.RESULTS_DIR / f"vs-janus-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(text + "\n")
    print(summary_line(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
