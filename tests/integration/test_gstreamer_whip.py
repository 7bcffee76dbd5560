"""GStreamer webrtcbin (a third WebRTC stack, with an RSA DTLS certificate) publishing over WHIP.

The publisher is ``tests/peers/gst_whip.py`` run by Debian's /usr/bin/python3 (python3-gi has no wheel for the
venv). All media stays on 127.0.0.1: the peer tells libnice to gather on 127.0.0.1 only.

Both DTLS roles are covered: with webrtcbin's ``a=setup:actpass`` the server answers passive and is the DTLS
server (webrtcbin's RSA certificate is then a client certificate); with a ``passive`` offer the server is the DTLS
client and must accept an RSA server certificate (``DTLS_CIPHERS`` in ``aiortc_glue/dtls.py``).

webrtcbin's RTP packets are up to 1400 bytes (rtph264pay's default mtu), larger than what browsers, FFmpeg and
aiortc send (~1200).

webrtcbin's max-bundle offer carries its second section as ``m=audio 0 ... a=bundle-only`` (RFC 8843 7.3.3); the
server treats it as in use (``negotiation.in_use``) and writes the fingerprint at session level too, which
GStreamer 1.22 requires. The offer is posted verbatim.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import missing_peer, run_node
from webrtc_cast.clients import WatchReport, watch

ROOT = Path(__file__).resolve().parents[2]
PEER = ROOT / "tests" / "peers" / "gst_whip.py"
SYSTEM_PYTHON = os.environ.get("GST_PYTHON", "/usr/bin/python3")  # a Python with python3-gi
FPS = 30

_PROBE = """
import gi
for ns in ("Gst", "GstWebRTC", "GstSdp"):
    gi.require_version(ns, "1.0")
gi.require_version("Nice", "0.1")
from gi.repository import Gst, GstWebRTC, GstSdp, Nice
Gst.init(None)
missing = [f for f in ("webrtcbin", "nicesrc", "x264enc", "opusenc", "rtph264pay", "rtpopuspay", "videotestsrc")
           if Gst.ElementFactory.find(f) is None]
print(",".join(missing))
"""


@functools.cache
def _gst_missing() -> str | None:
    """Why the GStreamer peer cannot run here, or None."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found (python3-gi is for Debian's Python)"
    try:
        probe = subprocess.run([SYSTEM_PYTHON, "-c", _PROBE], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {SYSTEM_PYTHON}: {exc}"
    if probe.returncode != 0:
        return "GStreamer Python bindings unavailable: " + (probe.stderr.strip().splitlines() or ["?"])[-1]
    if probe.stdout.strip():
        return f"GStreamer elements missing: {probe.stdout.strip()}"
    return None


@pytest.fixture
def gstreamer() -> None:
    reason = _gst_missing()
    if reason is None:
        return
    reason += " (scripts/install.sh --test installs the GStreamer packages)"
    missing_peer(f"GStreamer webrtcbin is unavailable: {reason}")


async def publish_and_watch(
    stream: str, peer_args: tuple[str, ...], *, seconds: float = 10.0, watch_s: float = 5.0
) -> tuple[dict, WatchReport]:
    """Run the webrtcbin publisher for ``seconds``, watch ``watch_s`` once it is live; (peer JSON, report)."""
    async with run_node() as (base, node):
        proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(PEER), f"{base}/whip/{stream}", "--seconds", str(seconds), *peer_args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 15.0
            while not _live(node, stream):
                if proc.poll() is not None or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            live = _live(node, stream)
            report = await watch(f"{base}/whep/{stream}", duration=watch_s) if live else None
        finally:
            try:
                out, err = await asyncio.to_thread(proc.communicate, timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
    lines = out.strip().splitlines()
    result = json.loads(lines[-1]) if lines else {}
    print(f"gst_whip {peer_args}: {json.dumps(result)}\nviewer: {report.to_json() if report else None}")
    detail = f"peer exit {proc.returncode}, result {result}, stderr:\n{err[-2000:]}"
    assert report is not None, f"stream {stream!r} never went live; {detail}"
    assert proc.returncode == 0, detail
    return result, report


def _live(node, stream: str) -> bool:
    b = node.broadcasts.get(stream)
    return b is not None and b.live and len(b.tracks) == 2 and all(t.buffer.packets > 0 for t in b.tracks.values())


def check(result: dict, report: WatchReport) -> None:
    assert result["answer_status"] == 201, result
    assert result["local_candidates"] and all(" 127.0.0.1 " in c for c in result["local_candidates"]), result
    assert result["dtls_connected"] and result["dtls_state"] == "connected", result
    assert result["connection_state"] == "connected", result
    assert result["delete_status"] == 200, result
    assert result["video_frames"] >= FPS * 9, result
    assert report.connection_state == "connected", report.to_json()
    assert report.video_codec == "H264" and (report.width, report.height) == (320, 240), report.to_json()
    expected = FPS * (report.duration_s - (report.join_time_ms or 0) / 1000.0)
    assert report.frames_decoded >= 0.9 * expected, (expected, report.to_json())
    assert report.audio_frames > 0, report.to_json()


@pytest.mark.parametrize("setup", ["actpass", "passive"], ids=["server-is-dtls-server", "server-is-dtls-client"])
async def test_gstreamer_webrtcbin_publishes_over_whip(gstreamer, setup):
    result, report = await publish_and_watch(f"gst-{setup}", ("--setup", setup))
    check(result, report)
