"""``serve --workers N`` / ``relay --workers N``: the node plus N-1 local relay processes, one per core (adapter).

Python forwards packets on one core per process, so a machine with N cores runs N nodes. The origin keeps the
public port and does ingest, the registry and placement; worker ``i`` is ``webrtc-cast relay`` on PORT+i of
the same host, parented to the origin over loopback. Viewers always POST to the origin's port; the origin
answers 307 to the node that should serve them (itself included), exactly as across machines. ``relay
--workers N`` does the same on a relay machine: one link crosses the network, the other processes link to the
first over loopback, and all of them register with the origin. (SO_REUSEPORT
was the other choice: it spreads TCP connections blindly, so a viewer's later PATCH/DELETE of its session URL
could reach a process that does not hold the session, and it cannot consider load.)
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable

from yarl import URL

from webrtc_cast.settings import CLUSTER_TOKEN_ENV, PUBLISH_TOKEN_ENV, VIEW_TOKEN_ENV, Settings

logger = logging.getLogger(__name__)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def worker_argv(settings: Settings, index: int, log_level: str = "info") -> list[str]:
    """The command line of worker ``index`` (1..N-1) (PURE)."""
    local = "127.0.0.1" if settings.host in ("0.0.0.0", "") else ("::1" if settings.host == "::" else settings.host)
    scheme = "https" if settings.tls_cert else "http"
    port = settings.port + index
    argv = [
        sys.executable, "-m", "webrtc_cast.cli", "relay",
        "--parent", f"{scheme}://{_url_host(local)}:{settings.port}",
        "--host", settings.host, "--port", str(port),
        "--max-viewers", str(settings.max_viewers),
        "--max-egress", str(settings.max_egress_bps), "--max-cpu", str(settings.max_cpu),
        "--http-rate", str(settings.http_requests_per_second), "--http-burst", str(settings.http_burst),
        "--log-level", log_level,
    ]
    for host in settings.ice_hosts:
        argv += ["--ice-host", host]
    if settings.parent_url:  # the workers of a relay: their origin is the tree's, their parent this relay
        argv += ["--origin", settings.origin_url or settings.parent_url]
    if settings.view_tokens or settings.parent_token:
        argv += ["--parent-token", settings.view_tokens[0] if settings.view_tokens else settings.parent_token]
    if settings.tls_cert:
        argv += ["--tls-cert", settings.tls_cert] + (["--tls-key", settings.tls_key] if settings.tls_key else [])
    if settings.public_url:
        public = URL(settings.public_url)
        argv += ["--public-url", str(public.with_port((public.port or 0) + index))]
    if settings.locality:
        argv += ["--locality", settings.locality]
    if settings.open_cluster:
        argv += ["--open-cluster"]
    if settings.redis_url:
        argv += ["--redis", settings.redis_url]  # chat spans the workers
    return argv


def worker_env(settings: Settings) -> dict[str, str]:
    """Tokens travel in the environment (not on command lines other users can read)."""
    env = dict(os.environ)
    env[PUBLISH_TOKEN_ENV] = ",".join(settings.publish_tokens)
    env[VIEW_TOKEN_ENV] = ",".join(settings.view_tokens)
    env[CLUSTER_TOKEN_ENV] = ",".join(settings.cluster_tokens)
    return env


def run_with_workers(settings: Settings, workers: int, log_level: str, run_origin: Callable[[], None]) -> int:
    procs: list[subprocess.Popen[bytes]] = []
    if settings.cluster_closed and not settings.parent_url:
        # an origin's own workers: a random cluster token for this machine's processes (the origin reads the
        # same Settings object, so it accepts exactly this token)
        settings.cluster_tokens = [secrets.token_urlsafe(32)]
        logger.info("no cluster token given: generated one for the %d local worker(s)", workers - 1)
    env = worker_env(settings)
    try:
        for i in range(1, workers):
            procs.append(subprocess.Popen(worker_argv(settings, i, log_level), env=env))
        logger.info("started %d worker relay(s) on ports %d-%d", len(procs), settings.port + 1,
                    settings.port + workers - 1)
        run_origin()
    finally:
        stop_processes(procs, timeout=10.0)
    return 0


def stop_processes(procs: list[subprocess.Popen], timeout: float = 10.0) -> None:  # type: ignore[type-arg]
    """SIGTERM every process still running, then wait up to ``timeout`` each and SIGKILL those that linger."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
