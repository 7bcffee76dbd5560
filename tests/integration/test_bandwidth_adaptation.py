"""Bandwidth adaptation: a Chromium viewer behind a rate limit drops to a lower simulcast layer without freezing,
and climbs back to the top layer when the limit lifts. The times to adapt are measured and printed.

Topology (all addresses created by this test; nothing leaves the machine)::

    root namespace                                         namespace wbw<pid>
    ───────────────────────────────────────────            ──────────────────────────────────
    webrtc-cast serve --host H --ice-host 127.0.0.1        headless Chromium viewer
                      --ice-host H                           /watch/bw over the veth
    headless Chromium publisher (l/m/h simulcast)  veth  H ◄─────────────────► V  veth
      /publish/bw, media over 127.0.0.1 or H (local)     UDP H→V policed to LIMIT_KBYTES/s while limited

H and V are a /30 in 198.18.0.0/15 (the benchmarking range). The viewer Chromium is started by Playwright through
a wrapper script (``ip netns exec NS /usr/bin/chromium "$@"``): Playwright drives it over a pipe, so only its
network lives in the namespace, where the one way out is the veth to H.

The limit: the kernel of the machine this was written on has no sch_netem/tbf, so the limit is an nftables rule
inside the viewer's namespace, ``ip saddr H meta l4proto udp limit rate over N kbytes/second drop`` — a policer:
what exceeds the rate is lost, which the viewer reports in its RTCP receiver reports, which is what the server's
LayerSelector acts on (down one layer per report with > 8 % loss, up one layer after a hold of clean reports).

Timeline: viewer on h → BASE_S s → limit on → LIMIT_S s → limit off → until the viewer is back on h (bounded).
The viewer's layer is read from the decoded frames (requestVideoFrameCallback: every frame's width and arrival
time) and cross-checked against the server's /healthz per-layer viewer counts.

Without root, ip, nft, Chromium or Playwright the test is skipped — except under CI=true, where it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import missing_peer
from tests.e2e.browser import CHROMIUM, CHROMIUM_ARGS, chromium_context

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CAST = (sys.executable, "-m", "webrtc_cast")
STREAM = "bw"
WIDTHS = {320: "l", 640: "m", 1280: "h"}
TOP_WIDTH = 1280
LIMIT_KBYTES = 40  # 0.32 Mbit/s: below h (~0.46 Mbit/s of video + audio), above m (~0.23) + audio
BASE_S = 3.0  # on h, unlimited, before the limit
LIMIT_S = 15.0  # how long the limit stays
UP_DEADLINE_S = 27.0  # after the lift, the longest we wait for h
SAMPLE_S = 0.5
# Bounds asserted (the measured values are printed; see the docstring of the test for what they were).
ADAPT_DOWN_MAX_S = 6.0
ADAPT_UP_MAX_S = 25.0
MAX_GAP_S = 1.0
QUEUE_LATENCY_MS = 200  # the tbf queue's longest wait before it drops (a modest home-router buffer)
CMD_TIMEOUT_S = 10.0


def _unavailable(reason: str) -> None:
    missing_peer(f"the bandwidth-limit setup is unavailable: {reason}")


def _run(*cmd: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=CMD_TIMEOUT_S, check=check)


# --------------------------------------------------------------------------------------------- the limited link
@dataclass
class Link:
    netns: str
    host_if: str
    host_ip: str
    viewer_if: str
    viewer_ip: str

    def _nft(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run("ip", "netns", "exec", self.netns, "nft", *args, stdin=stdin, check=check)

    def limit(self, kbytes: int, kind: str = "police") -> None:
        """``police``: an nftables policer in the viewer's namespace drops what exceeds the rate (no queue: only
        loss tells). ``queue``: a tbf qdisc on the server's end of the veth queues up to QUEUE_LATENCY_MS, then
        drops — a bottleneck link with a buffer, where delay grows before anything is lost (REMB sees it)."""
        if kind == "queue":
            _run("tc", "qdisc", "replace", "dev", self.host_if, "root", "tbf", "rate", f"{kbytes * 8}kbit",
                 "burst", "6000", "latency", f"{QUEUE_LATENCY_MS}ms")
            return
        ruleset = (
            "table inet wcast_bw {\n"
            "  chain limited_in {\n"
            "    type filter hook prerouting priority raw; policy accept;\n"
            f'    iifname "{self.viewer_if}" ip saddr {self.host_ip} meta l4proto udp '
            f"limit rate over {kbytes} kbytes/second counter drop\n"
            "  }\n"
            "}\n"
        )
        self._nft("-f", "-", stdin=ruleset)

    def dropped(self) -> int | None:
        """Packets the limit dropped (policer counter, or the qdisc's drops)."""
        try:
            qdisc = _run("tc", "-s", "qdisc", "show", "dev", self.host_if).stdout
            if "tbf" in qdisc:
                return int(qdisc.split("dropped", 1)[1].split()[0].rstrip(","))
            out = self._nft("list", "table", "inet", "wcast_bw").stdout
            return int(out.split("packets", 1)[1].split()[0])
        except (subprocess.SubprocessError, OSError, IndexError, ValueError):
            return None

    def unlimit(self) -> None:
        self._nft("delete", "table", "inet", "wcast_bw", check=False)
        _run("tc", "qdisc", "del", "dev", self.host_if, "root", check=False)


def _pick_subnet() -> tuple[str, str]:
    base = ipaddress.ip_network("198.18.0.0/15")
    in_use = _run("ip", "-o", "-4", "addr", "show", check=False).stdout
    for attempt in range(64):
        index = (os.getpid() * 11 + 3 + attempt) % (base.num_addresses // 4)
        net = ipaddress.ip_network(f"{base.network_address + index * 4}/30")
        host, viewer = str(net.network_address + 1), str(net.network_address + 2)
        if f" {host}/" not in in_use and f" {viewer}/" not in in_use:
            return host, viewer
    raise RuntimeError("no free /30 in 198.18.0.0/15")


@pytest.fixture
def link() -> Iterator[Link]:
    if sys.platform != "linux":
        _unavailable("network namespaces need Linux")
    if os.geteuid() != 0:
        _unavailable("network namespaces need root")
    missing = [tool for tool in ("ip", "nft", "tc") if shutil.which(tool) is None]
    if missing:
        _unavailable(f"{', '.join(missing)} not found (apt-get install -y iproute2 nftables)")
    tag = f"wbw{os.getpid() % 1_000_000}"
    host_ip, viewer_ip = _pick_subnet()
    lk = Link(netns=tag, host_if=f"{tag}h", host_ip=host_ip, viewer_if=f"{tag}v", viewer_ip=viewer_ip)
    created_ns = created_link = False
    try:
        try:
            _run("ip", "netns", "add", lk.netns)
            created_ns = True
            _run("ip", "link", "add", lk.host_if, "type", "veth", "peer", "name", lk.viewer_if)
            created_link = True
            _run("ip", "link", "set", lk.viewer_if, "netns", lk.netns)
            _run("ip", "addr", "add", f"{host_ip}/30", "dev", lk.host_if)
            _run("ip", "link", "set", lk.host_if, "up")
            _run("ip", "-n", lk.netns, "addr", "add", f"{viewer_ip}/30", "dev", lk.viewer_if)
            _run("ip", "-n", lk.netns, "link", "set", lk.viewer_if, "up")
            _run("ip", "-n", lk.netns, "link", "set", "lo", "up")
        except subprocess.CalledProcessError as exc:
            _unavailable(f"cannot create the namespace and veth: {' '.join(exc.cmd)}: {exc.stderr.strip()}")
        # nft must work inside the namespace (the nf_tables module): probe with the real rule, then remove it.
        try:
            lk.limit(LIMIT_KBYTES)
        except subprocess.CalledProcessError as exc:
            _unavailable(f"nftables cannot install the rate limit: {exc.stderr.strip()}")
        lk.unlimit()
        try:
            lk.limit(LIMIT_KBYTES, "queue")
        except subprocess.CalledProcessError as exc:
            _unavailable(f"tc cannot install a tbf queue: {exc.stderr.strip()}")
        lk.unlimit()
        yield lk
    finally:
        if created_link:
            _run("ip", "link", "del", lk.host_if, check=False)
        if created_ns:
            _run("ip", "netns", "del", lk.netns, check=False)


# --------------------------------------------------------------------------------------------- helpers
def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _healthz(base: str) -> dict:
    with _HTTP.open(f"{base}/healthz", timeout=2) as resp:
        return json.loads(resp.read().decode())


async def _wait_for(predicate, timeout: float, what: str, alive=None) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None:
            alive()
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            if await predicate():
                return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _metric(base: str, name: str) -> float:
    """A sample's value from /metrics (0 when absent), e.g. ``name{label="x"}``."""
    with _HTTP.open(f"{base}/metrics", timeout=2) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    return 0.0


def _server_layer(health: dict) -> str:
    """The rids of the video layers the server has the viewer on (two during a switch: current and target)."""
    layers = health["broadcasts"][STREAM]["layers"]
    return "+".join(x["rid"] for x in layers if x["key"].startswith("video") and x["viewers"]) or "-"


# In the viewer page: every decoded frame that reaches the <video> element, as [Date.now() ms, width].
RECORD_FRAMES = """() => {
  const video = document.getElementById("player");
  const rec = (window.__bwFrames = []);
  const onFrame = (_now, meta) => { rec.push([Date.now(), meta.width]); video.requestVideoFrameCallback(onFrame); };
  video.requestVideoFrameCallback(onFrame);
}"""
FRAMES_SINCE = "(i) => window.__bwFrames.slice(i)"
STATS = """async () => {
  const s = await window.castViewer.stats();
  return s && {width: s.frameWidth || 0, decoded: s.framesDecoded || 0, freezes: s.freezeCount || 0,
               freezeS: s.totalFreezesDuration || 0, lost: s.packetsLost || 0, bytes: s.bytesReceived || 0};
}"""


def _wrapper(directory: Path, netns: str) -> Path:
    """An executable that starts Chromium inside the namespace (Playwright passes its flags through "$@")."""
    path = directory / "chromium-in-netns"
    ip = shutil.which("ip") or "ip"
    path.write_text(f'#!/bin/sh\nexec {ip} netns exec {netns} {CHROMIUM} "$@"\n')
    path.chmod(0o755)
    return path


# --------------------------------------------------------------------------------------------- the test
@pytest.mark.parametrize("kind", ["queue", "police"])
async def test_viewer_behind_a_limit_drops_a_layer_and_climbs_back(link: Link, tmp_path: Path, kind: str) -> None:
    """A Chromium viewer on h; LIMIT_KBYTES for LIMIT_S seconds; then no limit until it is back on h.

    ``queue`` (a tbf bottleneck with a 200 ms buffer): delay builds before loss, Chromium's REMB falls, and the
    server must move the viewer down on the estimate (the metric of REMB-driven changes is checked).
    ``police`` (an nftables policer, no buffer): nothing queues; loss in the receiver reports moves it down.
    The timeline and a JSON summary are printed; docs/simulcast.md records measured runs.
    """
    host = link.host_ip
    port = _free_port(host)
    base = f"http://{host}:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen(
            [
                *CAST,
                "serve",
                "--host",
                host,
                "--port",
                str(port),
                "--ice-host",
                "127.0.0.1",
                "--ice-host",
                host,
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def server_alive() -> None:
        assert server.poll() is None, f"server exited: {(tmp_path / 'server.log').read_text()[-3000:]}"

    samples: list[dict] = []
    frames: list[list[float]] = []
    t_limit = t_lift = None
    dropped = None
    try:

        async def server_up() -> bool:
            return _healthz(base)["status"] == "ok"

        await _wait_for(server_up, 15, "the server", server_alive)

        # The pages come from http://H:PORT, not 127.0.0.1: let Chromium treat that origin as secure (getUserMedia).
        args = [*CHROMIUM_ARGS, f"--unsafely-treat-insecure-origin-as-secure={base}"]
        wrapper = str(_wrapper(tmp_path, link.netns))
        async with (
            chromium_context(args=args) as pub_ctx,
            chromium_context(args=args, executable_path=wrapper) as view_ctx,
        ):
            publisher = await pub_ctx.new_page()
            await publisher.goto(f"{base}/publish/{STREAM}?autostart=1")

            async def three_layers() -> bool:
                layers = [x for x in _healthz(base)["broadcasts"][STREAM]["layers"] if x["key"].startswith("video")]
                return len(layers) == 3 and all(x["width"] and x["bitrate"] > 0 for x in layers)

            try:
                await _wait_for(three_layers, 25, "three simulcast layers", server_alive)
            except AssertionError as exc:
                state = await publisher.evaluate("[window.castPublisher?.state, window.castPublisher?.error]")
                raise AssertionError(f"{exc}; publisher {state}; healthz {_healthz(base)}") from None

            viewer = await view_ctx.new_page()
            await viewer.goto(f"{base}/watch/{STREAM}")
            await viewer.wait_for_function("window.castViewer && window.castViewer.state === 'playing'", timeout=20_000)
            await viewer.evaluate(RECORD_FRAMES)

            async def on_top() -> bool:
                return ((await viewer.evaluate(STATS)) or {}).get("width") == TOP_WIDTH

            await _wait_for(on_top, 15, "the viewer on the top layer", server_alive)

            t0 = time.time()
            deadline = t0 + BASE_S + LIMIT_S + UP_DEADLINE_S
            back_on_top_since = None
            while time.time() < deadline:
                now = time.time()
                if t_limit is None and now - t0 >= BASE_S:
                    link.limit(LIMIT_KBYTES, kind)
                    t_limit = time.time()
                if t_limit is not None and t_lift is None and now - t_limit >= LIMIT_S:
                    dropped = link.dropped()
                    link.unlimit()
                    t_lift = time.time()
                server_alive()
                stats = await viewer.evaluate(STATS) or {}
                frames.extend(await viewer.evaluate(FRAMES_SINCE, len(frames)))
                health = _healthz(base)
                layers = {
                    x["rid"]: x["bitrate"]
                    for x in health["broadcasts"][STREAM]["layers"]
                    if x["key"].startswith("video")
                }
                samples.append({"t": time.time(), "server": _server_layer(health), "rates": layers, **stats})
                if t_lift is not None:
                    if stats.get("width") == TOP_WIDTH:
                        back_on_top_since = back_on_top_since or time.time()
                        if time.time() - back_on_top_since >= 2.0:
                            break
                    else:
                        back_on_top_since = None
                await asyncio.sleep(max(0.0, SAMPLE_S - (time.time() - now)))
            frames.extend(await viewer.evaluate(FRAMES_SINCE, len(frames)))
            remb_down = _metric(base, 'webrtc_cast_automatic_layer_changes_total{direction="down",signal="remb"}')
            loss_down = _metric(base, 'webrtc_cast_automatic_layer_changes_total{direction="down",signal="loss"}')
            rembs = _metric(base, "webrtc_cast_remb_received_total")
    finally:
        link.unlimit()
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)

    assert t_limit is not None and t_lift is not None, "the run ended before the limit was lifted"
    t0 = samples[0]["t"]

    def rel(t: float) -> float:
        return round(t - t0, 2)

    # The timeline.
    print(
        f"\nbandwidth adaptation: limit {LIMIT_KBYTES} kB/s ({LIMIT_KBYTES * 8 / 1000:.1f} Mbit/s) "
        f"from t={rel(t_limit)} s to t={rel(t_lift)} s; {dropped} packets dropped by the limit"
    )
    print("   t(s)  viewer  server  decoded freezes  lost   kbit/s  layer kbit/s (l/m/h)")
    prev = None
    for s in samples:
        kbps = "" if prev is None else f"{(s['bytes'] - prev['bytes']) * 8 / 1000 / (s['t'] - prev['t']):7.0f}"
        rates = "/".join(str(round(s["rates"].get(r, 0) / 1000)) for r in "lmh")
        print(
            f"{rel(s['t']):7.1f}  {WIDTHS.get(s.get('width'), s.get('width')):>6}  {s['server']:>6}  "
            f"{s.get('decoded', 0):7d} {s.get('freezes', 0):7d} {s.get('lost', 0):5d}  {kbps:>7}  {rates}"
        )
        prev = s

    # The layer per decoded frame (ms → s).
    frames_s = [(t / 1000, w) for t, w in frames]
    assert frames_s, "no frame timestamps were recorded in the viewer page"
    down = next(((t, w) for t, w in frames_s if t > t_limit and w < TOP_WIDTH), None)
    assert down is not None, f"the viewer never left h during the {LIMIT_S:.0f} s limit"
    adapt_down = down[0] - t_limit
    up = next(((t, w) for t, w in frames_s if t > t_lift and w == TOP_WIDTH), None)
    adapt_up = None if up is None else up[0] - t_lift
    # Time on a lower layer while limited, from the first lower frame to the lift.
    limited = [(t, w) for t, w in frames_s if down[0] <= t <= t_lift]
    lower_share = sum(w < TOP_WIDTH for _, w in limited) / max(1, len(limited))
    # Frame gaps: from the move down to the end (the move itself included).
    after = [t for t, _ in frames_s if t >= down[0] - 1.0]
    gaps = [b - a for a, b in zip(after, after[1:], strict=False)]
    max_gap = max(gaps, default=0.0)
    worst_at = after[gaps.index(max_gap)] if gaps else None
    before_limit = [s for s in samples if s["t"] <= t_limit]
    freezes_during = samples[-1].get("freezes", 0) - (before_limit[-1].get("freezes", 0) if before_limit else 0)
    summary = {
        "adapt_down_s": round(adapt_down, 2),
        "first_lower_layer": WIDTHS.get(down[1], down[1]),
        "adapt_up_s": None if adapt_up is None else round(adapt_up, 2),
        "lower_layer_share_while_limited": round(lower_share, 2),
        "max_frame_gap_s": round(max_gap, 3),
        "max_gap_at_t": None if worst_at is None else rel(worst_at),
        "chromium_freezes_after_limit": freezes_during,
        "frames": len(frames_s),
        "dropped_by_limit": dropped,
        "limit": kind,
        "down_changes_by_remb": remb_down,
        "down_changes_by_loss": loss_down,
        "rembs_received": rembs,
    }
    print("bandwidth adaptation:", json.dumps(summary))

    assert rembs > 0, f"Chromium sent no REMB (goog-remb + abs-send-time are answered): {summary}"
    if kind == "queue":
        assert remb_down >= 1, f"the bandwidth estimate did not move the viewer down: {summary}"
    else:
        assert dropped is None or dropped > 0, "the limit dropped nothing: the media did not cross the veth"
    assert adapt_down <= ADAPT_DOWN_MAX_S, summary
    assert lower_share >= 0.7, f"the viewer did not settle on a lower layer while limited: {summary}"
    assert max_gap <= MAX_GAP_S, f"frames stopped for {max_gap:.2f} s: {summary}"
    assert adapt_up is not None, f"the viewer did not climb back to h within {UP_DEADLINE_S:.0f} s: {summary}"
    assert adapt_up <= ADAPT_UP_MAX_S, summary
