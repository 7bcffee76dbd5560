"""Codec payload inspection (PURE): keyframe detection and resolution parsing for forwarded RTP."""

from __future__ import annotations

from collections.abc import Callable

from webrtc_cast.codecs import h264, vp8

# Audio codecs: every packet is independently decodable, so there is never a keyframe to wait for.
_AUDIO_CODECS = frozenset({"opus", "pcmu", "pcma", "g722"})


def _never_keyframe(payload: bytes) -> bool:
    return False


def keyframe_detector(codec_name: str) -> Callable[[bytes], bool]:
    """The keyframe test for an RTP payload of the named codec (SDP rtpmap name, case-insensitive).

    Raises ValueError for a video codec this package cannot inspect.
    """
    name = codec_name.lower()
    if name == "h264":
        return h264.is_keyframe
    if name == "vp8":
        return vp8.is_keyframe
    if name in _AUDIO_CODECS:
        return _never_keyframe
    raise ValueError(f"no keyframe detector for codec {codec_name!r}")


__all__ = ["h264", "keyframe_detector", "vp8"]
