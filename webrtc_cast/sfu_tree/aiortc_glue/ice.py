"""ICE host addresses for aiortc clients, and the client-side encoder bitrate hook."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import aioice.ice


@contextlib.contextmanager
def use_ice_hosts(addresses: list[str]) -> Iterator[None]:
    """Make aiortc's RTCPeerConnection (a client in tests and tools) gather only ``addresses``.

    aioice looks up ``get_host_addresses`` at gather time and skips 127.0.0.1; this replaces it for the
    duration of the block. Server-side transports do not need it (they gather explicitly).
    """
    original = aioice.ice.get_host_addresses
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: list(addresses)
    try:
        yield
    finally:
        aioice.ice.get_host_addresses = original


def set_ice_hosts(addresses: list[str]) -> None:
    """Process-wide variant of :func:`use_ice_hosts` for long-running client tools."""
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: list(addresses)


def set_sender_target_bitrate(sender: object, bitrate: int) -> bool:
    """Set the encoder bitrate of an aiortc RTCRtpSender (a client-side tool; aiortc has no public API).

    The encoder exists only after the first frame was encoded; False until then. aiortc clamps the value
    (H.264 0.5-3 Mbit/s, VP8 0.25-1.5 Mbit/s).
    """
    encoder = getattr(sender, "_RTCRtpSender__encoder", None)
    if encoder is None or not hasattr(encoder, "target_bitrate"):
        return False
    encoder.target_bitrate = bitrate
    return True

