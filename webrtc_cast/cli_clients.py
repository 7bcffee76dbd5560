"""``webrtc-cast publish`` and ``webrtc-cast watch``: argparse subcommands around :mod:`webrtc_cast.clients`.

Mount them on the main parser's subparsers; each sets ``func(args) -> int`` (an exit code)::

    sub = parser.add_subparsers(dest="command", required=True)
    add_publish_parser(sub)
    add_watch_parser(sub)
    args = parser.parse_args()
    sys.exit(args.func(args))

Exit codes: 0 ok, 1 the session ran but received nothing (watch), 2 signaling refused (non-201), 3 the
peer connection failed, 130 interrupted before a report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import aiohttp

from webrtc_cast import clients
from webrtc_cast.clients import PeerConnectionError, PublishReport, SignalingError, WatchReport

TOKEN_ENV = "WEBRTC_CAST_PUBLISH_TOKEN"
WATCH_TOKEN_ENV = "WEBRTC_CAST_WATCH_TOKEN"

T = TypeVar("T")


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _even_int(text: str) -> int:
    value = int(text)
    if value <= 0 or value % 2:
        raise argparse.ArgumentTypeError("must be a positive even number")
    return value


def _ice_hosts(text: str) -> list[str]:
    return [h.strip() for h in text.split(",") if h.strip()]


def add_publish_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "publish",
        help="publish a synthetic test stream over WHIP",
        description=(
            "Publish a synthetic stream to a WHIP endpoint: a moving test pattern with the send time burned "
            "into every frame (so viewers can measure glass-to-glass latency) and a 440 Hz Opus tone. "
            "Runs for --duration seconds or until Ctrl-C, then DELETEs the session."
        ),
    )
    parser.add_argument("whip_url", metavar="WHIP_URL", help="e.g. http://127.0.0.1:8080/whip/live")
    parser.add_argument(
        "--synthetic",
        action="store_true",
        required=True,
        help="send the built-in test pattern and tone (the only source for now; required)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV),
        help=f"bearer token for the Authorization header (default: ${TOKEN_ENV})",
    )
    parser.add_argument(
        "--duration", type=_positive_float, default=None, help="seconds to publish (default: until Ctrl-C)"
    )
    parser.add_argument(
        "--width", type=_even_int, default=640, help="frame width in pixels, even (default: %(default)s)"
    )
    parser.add_argument(
        "--height", type=_even_int, default=360, help="frame height in pixels, even (default: %(default)s)"
    )
    parser.add_argument("--fps", type=_positive_float, default=30.0, help="frame rate (default: %(default)g)")
    parser.add_argument(
        "--bitrate",
        type=int,
        default=1_000_000,
        help=(
            "video encoder target bitrate in bit/s; aiortc clamps H264 to 0.5-3 Mbit/s and VP8 to "
            "0.25-1.5 Mbit/s (default: %(default)s)"
        ),
    )
    parser.add_argument(
        "--codec",
        choices=clients.SUPPORTED_CODECS,
        default="H264",
        type=str.upper,
        help="video codec offered first (default: %(default)s)",
    )
    parser.add_argument("--no-audio", action="store_true", help="send video only")
    parser.add_argument(
        "--ice-hosts",
        type=_ice_hosts,
        default=list(clients.DEFAULT_ICE_HOSTS),
        help="comma-separated local addresses for ICE candidates (default: 127.0.0.1)",
    )
    parser.add_argument("--json", action="store_true", help="print the final report as one JSON object")
    parser.set_defaults(func=run_publish)
    return parser


def add_watch_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "watch",
        help="watch a stream over WHEP and report frames, freezes and latency",
        description=(
            "Watch a WHEP stream for --duration seconds, decode every frame and report: frames decoded, "
            "resolution, measured fps, freezes (gaps > max(3 frame intervals, 150 ms)), time to first "
            "frame, and glass-to-glass latency p50/p95/max read from the timecode that `webrtc-cast "
            "publish --synthetic` burns in (same machine clock). Exit code 1 if no video frame arrived."
        ),
    )
    parser.add_argument("whep_url", metavar="WHEP_URL", help="e.g. http://127.0.0.1:8080/whep/live")
    parser.add_argument(
        "--duration",
        type=_positive_float,
        default=10.0,
        help="seconds to watch, counted from the POST (default: %(default)g)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument(
        "--frame-times",
        action="store_true",
        help="with --json: add frame_times, the wall-clock time (Unix seconds) of every decoded frame",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get(WATCH_TOKEN_ENV),
        help=f"bearer token for the Authorization header (default: ${WATCH_TOKEN_ENV})",
    )
    parser.add_argument(
        "--ice-hosts",
        type=_ice_hosts,
        default=list(clients.DEFAULT_ICE_HOSTS),
        help="comma-separated local addresses for ICE candidates (default: 127.0.0.1)",
    )
    parser.set_defaults(func=run_watch)
    return parser


def _run_until_signal(make: Callable[[asyncio.Event], Coroutine[Any, Any, T]]) -> T:
    """Run the client; SIGINT/SIGTERM set its stop event so it still DELETEs and reports."""

    async def main() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        return await make(stop)

    return asyncio.run(main())


def _fail(args: argparse.Namespace, code: int, exc: Exception, status: int | None = None) -> int:
    if args.json:
        print(json.dumps({"error": str(exc), "status": status}))
    else:
        print(f"error: {exc}", file=sys.stderr)
    return code


def _fmt(value: float | None, unit: str = " ms") -> str:
    return "-" if value is None else f"{value:.0f}{unit}"


def _print_publish(report: PublishReport) -> None:
    print(
        f"published {report.frames_sent} video frames ({report.width}x{report.height} @ {report.fps:g} fps, "
        f"{report.video_codec or '?'}) and {report.audio_frames_sent} audio frames "
        f"in {report.duration_s:.1f} s to {report.whip_url}"
    )
    print(
        f"  connect {_fmt(report.connect_time_ms)}, target bitrate {report.target_bitrate} bit/s "
        f"({'applied' if report.bitrate_applied else 'NOT applied: aiortc default'}), "
        f"DELETE {report.delete_status}, final state {report.connection_state}"
    )


def _print_watch(report: WatchReport) -> None:
    print(
        f"watched {report.whep_url} for {report.duration_s:.1f} s: {report.frames_decoded} frames "
        f"{report.width}x{report.height} ({report.video_codec or '?'}) at {report.fps:.1f} fps, "
        f"{report.audio_frames} audio frames"
    )
    print(
        f"  join {_fmt(report.join_time_ms)}, freezes {report.freezes} (max gap {_fmt(report.max_gap_ms)}), "
        f"latency p50 {_fmt(report.latency_p50_ms)} p95 {_fmt(report.latency_p95_ms)} "
        f"max {_fmt(report.latency_max_ms)} ({report.latency_samples} timecoded frames)"
    )


def run_publish(args: argparse.Namespace) -> int:
    try:
        report = _run_until_signal(
            lambda stop: clients.publish(
                args.whip_url,
                token=args.token,
                duration=args.duration,
                width=args.width,
                height=args.height,
                fps=args.fps,
                bitrate=args.bitrate,
                codec=args.codec,
                audio=not args.no_audio,
                ice_hosts=args.ice_hosts,
                stop=stop,
            )
        )
    except SignalingError as exc:
        return _fail(args, 2, exc, exc.status)
    except (PeerConnectionError, aiohttp.ClientError, OSError) as exc:
        return _fail(args, 3, exc)
    except ValueError as exc:
        return _fail(args, 2, exc)
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(report.to_json())
    else:
        _print_publish(report)
    return 0


def run_watch(args: argparse.Namespace) -> int:
    try:
        report = _run_until_signal(
            lambda stop: clients.watch(
                args.whep_url, duration=args.duration, token=args.token, ice_hosts=args.ice_hosts, stop=stop
            )
        )
    except SignalingError as exc:
        return _fail(args, 2, exc, exc.status)
    except (PeerConnectionError, aiohttp.ClientError, OSError) as exc:
        return _fail(args, 3, exc)
    except KeyboardInterrupt:
        return 130
    if args.json:
        data = report.to_dict()
        if getattr(args, "frame_times", False):
            data["frame_times"] = [round(t, 4) for t in report.frame_times]
        print(json.dumps(data))
    else:
        _print_watch(report)
    return 0 if report.frames_decoded > 0 else 1


__all__ = ["add_publish_parser", "add_watch_parser", "run_publish", "run_watch"]
