"""The ``webrtc-cast`` command: serve, demo, publish, watch. Every subcommand has ``--help``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys

from aiohttp import web

from webrtc_cast.settings import CLUSTER_TOKEN_ENV, PUBLISH_TOKEN_ENV, VIEW_TOKEN_ENV, Settings

logger = logging.getLogger("webrtc_cast")


def _add_serve_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="HTTP listen address (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="HTTP port (default: 8080)")
    p.add_argument(
        "--ice-host",
        action="append",
        dest="ice_hosts",
        metavar="ADDR",
        help="address to gather and announce ICE candidates on; repeat for several (default: 127.0.0.1)",
    )
    p.add_argument(
        "--publish-token",
        action="append",
        dest="publish_tokens",
        metavar="TOKEN",
        help=f"Bearer token that may publish over WHIP; repeatable; also ${PUBLISH_TOKEN_ENV} "
        "(comma-separated). With none, ingest is open.",
    )
    p.add_argument(
        "--view-token",
        action="append",
        dest="view_tokens",
        metavar="TOKEN",
        help=f"Bearer token required to watch over WHEP; also ${VIEW_TOKEN_ENV}. With none, viewing is open.",
    )
    p.add_argument("--max-viewers", type=int, default=Settings().max_viewers, help="WHEP sessions per node")
    p.add_argument(
        "--http-rate", type=float, default=Settings().http_requests_per_second,
        help="POST/PATCH/DELETE per second per client address before 429 (default: %(default)s)",
    )
    p.add_argument(
        "--http-burst", type=int, default=Settings().http_burst,
        help="requests a client address may make at once (default: %(default)s)",
    )
    p.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate (chain) file")
    p.add_argument("--tls-key", metavar="PEM", help="private key for --tls-cert")
    p.add_argument(
        "--redis", metavar="URL", dest="redis_url",
        help="Redis URL (redis://127.0.0.1:6379/0 or unix:///path): chat rooms span nodes through Redis pub/sub "
        "and chat history lives there; an origin keeps the relay tree's registry there, so several origins share "
        "one view (default: one process, in memory)",
    )
    tree = p.add_argument_group("relay tree (docs/scaling.md)")
    tree.add_argument(
        "--public-url", metavar="URL",
        help="this node's base URL as viewers and child relays reach it (default: http(s)://HOST:PORT)",
    )
    tree.add_argument("--locality", metavar="LABEL", help="locality label; viewers asking ?locality=LABEL prefer it")
    tree.add_argument(
        "--max-egress", type=float, default=Settings().max_egress_bps, metavar="BPS",
        help="bit/s to viewers and child relays at which placement sends new viewers elsewhere (0: no limit)",
    )
    tree.add_argument(
        "--max-cpu", type=float, default=Settings().max_cpu, metavar="CORES",
        help="process CPU (1.0 = one core busy) at which placement sends new viewers elsewhere (0: no limit)",
    )
    tree.add_argument(
        "--cluster-token", action="append", dest="cluster_tokens", metavar="TOKEN",
        help=f"Bearer token for the registry (/nodes): an origin accepts it, a relay sends the first; "
        f"also ${CLUSTER_TOKEN_ENV}. With none, registration and placement are closed "
        "(serve --workers generates one for its local processes).",
    )
    tree.add_argument(
        "--open-cluster", action="store_true", dest="open_cluster",
        help="LAB ONLY: with no cluster token, let any host register, be placed and link (logged at WARNING)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        host=args.host,
        port=args.port,
        ice_hosts=args.ice_hosts or ["127.0.0.1"],
        publish_tokens=args.publish_tokens or [],
        view_tokens=args.view_tokens or [],
        max_viewers=args.max_viewers,
        http_requests_per_second=args.http_rate,
        http_burst=args.http_burst,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        redis_url=args.redis_url,
        public_url=args.public_url,
        locality=args.locality,
        max_egress_bps=args.max_egress,
        max_cpu=args.max_cpu,
        cluster_tokens=args.cluster_tokens or [],
        open_cluster=args.open_cluster,
    )


async def _run_server(settings: Settings, after_start=None) -> None:  # noqa: ANN001
    from webrtc_cast.app import create_app, server_ssl_context, tune_process
    from webrtc_cast.node import Node

    tune_process()
    node = Node(settings)
    app = create_app(node)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, ssl_context=server_ssl_context(settings))
    await site.start()
    base = f"{'https' if settings.tls_cert else 'http'}://{settings.host}:{settings.port}"
    logger.info("webrtc-cast listening on %s (ICE on %s)", base, ", ".join(settings.ice_hosts))
    if not settings.publish_tokens:
        logger.warning("*** NO PUBLISH TOKEN CONFIGURED: anyone who reaches %s/whip/ can publish ***", base)
    if settings.open_cluster and not settings.cluster_tokens:
        logger.warning("*** --open-cluster: ANY host that reaches %s/nodes can join the relay tree and be sent "
                       "viewers (a lab setting; use --cluster-token in production) ***", base)
    elif not settings.parent_url and not settings.cluster_tokens:
        logger.warning("no cluster token: registration is closed and every viewer is served here "
                       "(set --cluster-token to grow a relay tree)")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    extra: asyncio.Task | None = None
    if after_start is not None:
        extra = asyncio.create_task(after_start(base))
        extra.add_done_callback(lambda t: None if t.cancelled() or not t.exception() else logger.error(
            "demo publisher stopped: %s", t.exception()))
    try:
        await stop.wait()
    finally:
        if extra is not None:
            extra.cancel()
            with contextlib.suppress(BaseException):
                await extra
        await runner.cleanup()


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.workers > 1:
        from webrtc_cast.workers import run_with_workers

        return run_with_workers(settings, args.workers, args.log_level, lambda: asyncio.run(_run_server(settings)))
    asyncio.run(_run_server(settings))
    return 0


def cmd_relay(args: argparse.Namespace) -> int:
    settings = _settings(args)
    settings.parent_url = args.parent[0]
    settings.fallback_parents = args.parent[1:]
    settings.origin_url = args.origin
    settings.parent_token = args.parent_token
    if args.workers > 1:
        from webrtc_cast.workers import run_with_workers

        return run_with_workers(settings, args.workers, args.log_level, lambda: asyncio.run(_run_server(settings)))
    asyncio.run(_run_server(settings))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    settings = _settings(args)
    token = settings.publish_tokens[0] if settings.publish_tokens else None

    async def publisher(base: str) -> None:
        from webrtc_cast.clients import publish
        from webrtc_cast.sfu_tree.aiortc_glue import set_ice_hosts

        set_ice_hosts(settings.ice_hosts)
        print(f"\n  Demo stream '{args.stream}' is playing. Open:  {base}/watch/{args.stream}\n", flush=True)
        while True:  # keep the demo on air: republish if the publisher ever drops
            try:
                await publish(
                    f"{base}/whip/{args.stream}", token=token, width=args.width, height=args.height,
                    fps=args.fps, bitrate=args.bitrate, duration=None,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - log and retry, the server keeps running
                logger.warning("demo publisher: %s; retrying in 2 s", exc)
            await asyncio.sleep(2)

    asyncio.run(_run_server(settings, publisher))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="webrtc-cast",
        description="Low-latency live broadcast: WHIP ingest, packet-forwarding SFU, WHEP viewers.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run a node: WHIP ingest, WHEP viewers, pages, metrics",
        description="Run an SFU node. Endpoints: POST /whip/{stream}, POST /whep/{stream}, "
        "/publish/{stream}, /watch/{stream}, /healthz, /metrics.",
    )
    _add_serve_options(serve)
    serve.add_argument(
        "--workers", type=int, default=1, metavar="N",
        help="processes: the origin on PORT plus N-1 local relays on PORT+1..PORT+N-1 (one per core); the origin "
        "answers viewers' POST /whep with 307 to the least loaded one (default: 1)",
    )
    serve.set_defaults(func=cmd_serve)
    relay = sub.add_parser(
        "relay",
        help="run a relay node that takes its streams from a parent node",
        description="Run a node whose broadcasts come from PARENT: when a viewer asks for a stream, the relay "
        "subscribes once to PARENT (POST {parent}/relay/{stream}, every simulcast layer over one link) and serves "
        "its own viewers and child relays. It registers with the origin and reports its load every second; the origin "
        "sends viewers to it (307). A lost link re-attaches by itself: to another node within about a second "
        "when the parent is gone.",
    )
    relay.add_argument(
        "--parent", required=True, action="append", metavar="URL",
        help="base URL of the parent node; repeat to list more parents to re-attach to when one is gone",
    )
    relay.add_argument(
        "--origin", metavar="URL",
        help="the tree's origin: where to register, report load and ask for a new parent (default: the first "
        "--parent; a relay there forwards to its origin). The origin is always a fallback parent.",
    )
    relay.add_argument("--parent-token", metavar="TOKEN", help="Bearer token for the parent (one of its view tokens)")
    _add_serve_options(relay)
    relay.add_argument(
        "--workers", type=int, default=1, metavar="N",
        help="processes: this relay on PORT plus N-1 relays on PORT+1..PORT+N-1 linked to it over loopback "
        "(one network link per machine); each registers with the origin, which places viewers on all (default: 1)",
    )
    relay.set_defaults(func=cmd_relay)
    demo = sub.add_parser(
        "demo",
        help="serve plus a synthetic publisher, in one command",
        description="Run `serve` and publish a synthetic test pattern (send time burned in) to one stream; "
        "prints the viewer URL.",
    )
    _add_serve_options(demo)
    demo.add_argument("--stream", default="demo", help="stream name (default: demo)")
    demo.add_argument("--width", type=int, default=640)
    demo.add_argument("--height", type=int, default=360)
    demo.add_argument("--fps", type=int, default=30)
    demo.add_argument("--bitrate", type=int, default=1_000_000, help="video bitrate in bit/s")
    demo.set_defaults(func=cmd_demo)
    try:
        from webrtc_cast.cli_clients import add_publish_parser, add_watch_parser

        add_publish_parser(sub)
        add_watch_parser(sub)
    except ImportError as exc:  # pragma: no cover - only while the clients module is missing
        logger.debug("client commands unavailable: %s", exc)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, getattr(args, "log_level", "info").upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if os.environ.get("WEBRTC_CAST_DEBUG_AIORTC") != "1":
        logging.getLogger("aioice").setLevel(logging.WARNING)
        logging.getLogger("aiortc").setLevel(logging.WARNING)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
