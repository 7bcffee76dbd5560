#!/usr/bin/python3
"""A GStreamer webrtcbin WHIP publisher (webrtcbin presents an RSA DTLS certificate).

Run with Debian's Python, which has the GStreamer bindings (python3-gi, gir1.2-nice-0.1), not the project venv:
``/usr/bin/python3 tests/peers/gst_whip.py URL --seconds S [--token T]``. Only the standard library (ctypes for
one refcount fix) and gi. Compat switches: ``--expand-bundle-only``, ``--mtu N``, ``--setup passive``.

Debian 12 has no whipsink, so this script does the WHIP part itself: it waits for ICE gathering to complete,
POSTs the offer, applies the answer, sends a live test pattern (H.264) and a tone (Opus) for S seconds after the
answer, DELETEs the session and prints one JSON line with what happened. libnice skips loopback when it
discovers local addresses, so the agent is told to gather on --ice-host (127.0.0.1) only.
Exit status: 0 when the peer connection (ICE + DTLS) reached "connected", 1 otherwise, 2 on bad usage/setup.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

try:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstWebRTC", "1.0")
    gi.require_version("GstSdp", "1.0")
    gi.require_version("Nice", "0.1")
    from gi.repository import GLib, Gst, GstSdp, GstWebRTC, Nice
except (ImportError, ValueError) as exc:  # ValueError: a typelib is missing
    print(f"gst_whip: GStreamer Python bindings unavailable: {exc}", file=sys.stderr)
    sys.exit(2)

HTTP_TIMEOUT_S = 10.0
GATHER_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10.0

PIPELINE = (
    "webrtcbin name=wb bundle-policy=max-bundle "
    "videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},framerate={fps}/1 "
    "! videoconvert ! x264enc name=venc tune=zerolatency speed-preset=ultrafast key-int-max={gop} "
    "! video/x-h264,profile=constrained-baseline "
    "! rtph264pay config-interval=-1 aggregate-mode=zero-latency {mtu}"
    "! application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000 ! wb. "
    "audiotestsrc is-live=true wave=sine ! audioconvert ! audioresample ! opusenc name=aenc "
    "! rtpopuspay {mtu}! application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000 ! wb."
)


def log(msg: str) -> None:
    print(f"gst_whip: {msg}", file=sys.stderr, flush=True)


def _keep_ice_agent_alive(ice: object) -> None:
    """Work around GStreamer 1.22: webrtcbin never sinks its GstWebRTCNice's floating reference, so the first
    Python wrapper takes it over (refcount 1) and frees the agent when it is collected, and webrtcbin then crashes
    (CRITICALs from gst_webrtc_ice_add_stream, then SIGSEGV). Give webrtcbin back a reference of its own."""
    if getattr(ice, "__grefcount__", 2) != 1:  # fixed GStreamer: webrtcbin already holds its own reference
        return
    capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    capsule_pointer.restype, capsule_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    gobject = ctypes.CDLL("libgobject-2.0.so.0")
    gobject.g_object_ref.restype, gobject.g_object_ref.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    gobject.g_object_ref(capsule_pointer(ice.__gpointer__, None))


def _nick(value: object) -> str:
    """An enum value's short name ("connected"), or str(value) for anything else."""
    nick = getattr(value, "value_nick", None)
    return nick if nick else str(value)


def expand_bundle_only(sdp: str) -> str:
    """Rewrite max-bundle's ``m=<kind> 0`` + ``a=bundle-only`` sections (RFC 8843 7.3.3) to port 9 without
    bundle-only, the shape browsers send, for servers that take port 0 as "rejected"."""
    out, bundle_only_section = [], False
    sections: list[list[str]] = [[]]
    for line in sdp.splitlines():
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    for section in sections:
        bundle_only_section = "a=bundle-only" in section
        for line in section:
            if bundle_only_section and line.startswith("m="):
                kind, port, rest = line.split(" ", 2)
                line = f"{kind} {9 if port == '0' else port} {rest}"
            if bundle_only_section and line == "a=bundle-only":
                continue
            out.append(line)
    return "\r\n".join(out) + "\r\n"


class WhipPublisher:
    def __init__(
        self,
        url: str,
        seconds: float,
        token: str | None,
        ice_host: str,
        width: int,
        height: int,
        fps: int,
        gop: int,
        verbose: bool,
        expand_bundle_only: bool = False,
        mtu: int | None = None,
        setup: str = "actpass",
    ) -> None:
        self.url, self.seconds, self.token, self.verbose = url, seconds, token, verbose
        self.expand_bundle_only, self.setup = expand_bundle_only, setup
        self.loop = GLib.MainLoop()
        self.result: dict = {
            "answer_status": None,
            "location": None,
            "delete_status": None,
            "ice_gathering": "new",
            "local_candidates": [],
            "ice_connection_state": "new",
            "connection_state": "new",
            "dtls_state": "new",
            "dtls_connected": False,
            "connected": False,
            "states_seen": {"ice": [], "dtls": [], "pc": []},
            "video_frames": 0,
            "audio_frames": 0,
            "connect_ms": None,
            "seconds": 0.0,
            "error": None,
        }
        self.started = time.monotonic()
        self.posted_at: float | None = None
        self.posted = False
        self.finished = False

        self.pipe = Gst.parse_launch(
            PIPELINE.format(width=width, height=height, fps=fps, gop=gop, mtu=f"mtu={mtu} " if mtu else "")
        )
        self.wb = self.pipe.get_by_name("wb")
        self._restrict_ice(ice_host)
        self._sendonly()
        self._count_buffers("venc", "video_frames")
        self._count_buffers("aenc", "audio_frames")
        self.wb.connect("on-negotiation-needed", self._on_negotiation_needed)
        self.wb.connect("notify::ice-gathering-state", self._on_gathering_state)
        bus = self.pipe.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self._on_bus_error)

    # ------------------------------------------------------------------ setup
    def _restrict_ice(self, host: str) -> None:
        ice = self.wb.get_property("ice-agent")
        _keep_ice_agent_alive(ice)
        self.ice = ice
        ice.set_property("ice-tcp", False)
        agent = ice.get_property("agent")  # the NiceAgent; local addresses must be added before gathering
        addr = Nice.Address.new()
        if not addr.set_from_string(host):
            raise SystemExit(f"gst_whip: bad --ice-host {host!r}")
        if not agent.add_local_address(addr):
            raise SystemExit(f"gst_whip: libnice refused local address {host}")

    def _sendonly(self) -> None:
        i = 0
        while (trans := self.wb.emit("get-transceiver", i)) is not None:
            trans.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
            i += 1
        if i != 2:
            raise SystemExit(f"gst_whip: expected 2 transceivers, webrtcbin has {i}")

    def _count_buffers(self, element: str, key: str) -> None:
        def probe(_pad: Gst.Pad, _info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
            self.result[key] += 1
            return Gst.PadProbeReturn.OK

        self.pipe.get_by_name(element).get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, probe)

    # ------------------------------------------------------------------ negotiation
    def _on_negotiation_needed(self, _wb: Gst.Element) -> None:
        self.wb.emit("create-offer", None, Gst.Promise.new_with_change_func(self._on_offer_created))

    def _on_offer_created(self, promise: Gst.Promise) -> None:
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply is not None else None
        if offer is None:  # an early negotiation-needed before all pads had caps; a later one succeeds
            return
        self.wb.emit("set-local-description", offer, None)

    def _on_gathering_state(self, _wb: Gst.Element, _pspec: object) -> None:
        state = self.wb.get_property("ice-gathering-state")
        self.result["ice_gathering"] = _nick(state)
        if state == GstWebRTC.WebRTCICEGatheringState.COMPLETE and not self.posted:
            self.posted = True
            GLib.idle_add(self._post_offer)

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {}
        if content_type:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _post_offer(self) -> bool:
        offer = self.wb.get_property("local-description").sdp.as_text()
        self.result["local_candidates"] = [
            line[len("a=candidate:") :] for line in offer.splitlines() if line.startswith("a=candidate:")
        ]
        if self.expand_bundle_only:
            offer = expand_bundle_only(offer)
        if self.setup != "actpass":  # webrtcbin takes its DTLS role from the answer's a=setup
            offer = offer.replace("a=setup:actpass", f"a=setup:{self.setup}")
        if self.verbose:
            log("offer:\n" + offer)
        req = urllib.request.Request(
            self.url, data=offer.encode(), method="POST", headers=self._headers("application/sdp")
        )
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:
                self.result["answer_status"] = resp.status
                location = resp.headers.get("Location")
                answer = resp.read().decode()
        except urllib.error.HTTPError as exc:
            self.result["answer_status"] = exc.code
            body = exc.read().decode(errors="replace")[:500]
            self._fail(f"WHIP POST answered {exc.code}: {body}")
            return False
        except (urllib.error.URLError, OSError) as exc:
            self._fail(f"WHIP POST failed: {exc}")
            return False
        if self.result["answer_status"] != 201 or not location:
            self._fail(f"WHIP POST answered {self.result['answer_status']} without a Location")
            return False
        self.result["location"] = urllib.parse.urljoin(self.url, location)
        if self.verbose:
            log("answer:\n" + answer)
        res, msg = GstSdp.SDPMessage.new_from_text(answer)
        if res != GstSdp.SDPResult.OK:
            self._fail(f"cannot parse the SDP answer ({res})")
            return False
        desc = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, msg)
        self.wb.emit("set-remote-description", desc, Gst.Promise.new_with_change_func(self._on_answer_set))
        self.posted_at = time.monotonic()
        GLib.timeout_add(100, self._poll_states)
        GLib.timeout_add(int(CONNECT_TIMEOUT_S * 1000), self._check_connected)
        GLib.timeout_add(int(self.seconds * 1000), self._finish)
        return False

    def _on_answer_set(self, promise: Gst.Promise) -> None:
        reply = promise.get_reply()
        if reply is not None and reply.has_field("error"):
            err = reply.get_value("error")
            GLib.idle_add(self._fail, f"set-remote-description failed: {getattr(err, 'message', err)}")

    # ------------------------------------------------------------------ state tracking
    def _dtls_transport(self) -> object | None:
        trans = self.wb.emit("get-transceiver", 0)
        sender = trans.get_property("sender") if trans is not None else None
        return sender.get_property("transport") if sender is not None else None

    def _record(self, kind: str, key: str, value: str) -> None:
        self.result[key] = value
        seen = self.result["states_seen"][kind]
        if not seen or seen[-1] != value:
            seen.append(value)

    def _poll_states(self) -> bool:
        self._record("ice", "ice_connection_state", _nick(self.wb.get_property("ice-connection-state")))
        self._record("pc", "connection_state", _nick(self.wb.get_property("connection-state")))
        transport = self._dtls_transport()
        if transport is not None:
            self._record("dtls", "dtls_state", _nick(transport.get_property("state")))
        if self.result["dtls_state"] == "connected":
            self.result["dtls_connected"] = True
        if self.result["connection_state"] == "connected" and not self.result["connected"]:
            self.result["connected"] = True
            self.result["connect_ms"] = round((time.monotonic() - (self.posted_at or self.started)) * 1000, 1)
        return not self.finished

    def _check_connected(self) -> bool:
        if not self.result["connected"] and not self.finished:
            self._fail(
                f"not connected after {CONNECT_TIMEOUT_S:.0f} s (ice={self.result['ice_connection_state']},"
                f" dtls={self.result['dtls_state']}, pc={self.result['connection_state']})"
            )
        return False

    def _on_bus_error(self, _bus: Gst.Bus, message: Gst.Message) -> None:
        err, debug = message.parse_error()
        self._fail(f"pipeline error from {message.src.get_name()}: {err.message} ({debug})")

    # ------------------------------------------------------------------ teardown
    def _fail(self, why: str) -> bool:
        log(why)
        if self.result["error"] is None:
            self.result["error"] = why
        self._finish()
        return False

    def _finish(self) -> bool:
        if self.finished:
            return False
        self.finished = True
        self._poll_states()
        location = self.result["location"]
        if location:
            req = urllib.request.Request(location, method="DELETE", headers=self._headers())
            try:
                with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:
                    self.result["delete_status"] = resp.status
            except urllib.error.HTTPError as exc:
                self.result["delete_status"] = exc.code
                log(f"WHIP DELETE answered {exc.code}")
            except (urllib.error.URLError, OSError) as exc:
                log(f"WHIP DELETE failed: {exc}")
        self.loop.quit()
        return False

    def run(self) -> dict:
        if self.pipe.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            self.result["error"] = "pipeline refused to go to PLAYING"
            return self.result

        def gather_timeout() -> bool:
            if not self.posted:
                self._fail(f"ICE gathering not complete after {GATHER_TIMEOUT_S:.0f} s")
            return False

        GLib.timeout_add(int(GATHER_TIMEOUT_S * 1000), gather_timeout)
        try:
            self.loop.run()
        finally:
            self.pipe.set_state(Gst.State.NULL)
            self.result["seconds"] = round(time.monotonic() - self.started, 2)
        return self.result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("--seconds", type=float, default=10.0, help="how long to send after the answer")
    p.add_argument("--token")
    p.add_argument("--ice-host", default="127.0.0.1", help="the only local address ICE gathers on")
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--gop", type=int, default=30, help="keyframe interval in frames")
    p.add_argument(
        "--expand-bundle-only",
        action="store_true",
        help="POST bundle-only sections with port 9 instead of webrtcbin's port 0 (compat workaround)",
    )
    p.add_argument("--mtu", type=int, help="RTP payloaders' mtu (GStreamer's default is 1400 bytes)")
    p.add_argument(
        "--setup",
        choices=("actpass", "passive", "active"),
        default="actpass",
        help="a=setup in the POSTed offer; passive makes webrtcbin the DTLS server (its RSA "
        "certificate then decides the cipher suite)",
    )
    p.add_argument("--verbose", action="store_true", help="print the offer and answer to stderr")
    a = p.parse_args(argv)
    Gst.init(None)
    for factory in ("webrtcbin", "x264enc", "opusenc", "rtph264pay", "rtpopuspay", "nicesrc"):
        if Gst.ElementFactory.find(factory) is None:
            log(f"GStreamer element {factory!r} is missing")
            return 2
    pub = WhipPublisher(
        a.url,
        a.seconds,
        a.token,
        a.ice_host,
        a.width,
        a.height,
        a.fps,
        a.gop,
        a.verbose,
        a.expand_bundle_only,
        a.mtu,
        a.setup,
    )
    result = pub.run()
    print(json.dumps(result), flush=True)
    return 0 if result["connected"] and result["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
