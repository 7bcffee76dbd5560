"""``webrtc-cast serve`` with no packet taps on any broadcast: forwarding only, no LL-HLS packager.

A diagnostic for benchmarks/vs_janus.py (``--servers webrtc-cast-nohls``): Janus's streaming plugin only
forwards, while webrtc-cast also packages every broadcast for LL-HLS on the same event loop (Opus to AAC and
fMP4 parts, benchmarks/vs_janus.py measured it). Running both variants shows what the forwarding path alone
carries. Never a way to deploy: the /hls endpoints stay empty.

Usage:  python -m benchmarks.serve_without_taps serve --host 127.0.0.1 ...   (the arguments of webrtc-cast)
"""

from __future__ import annotations

import sys

from webrtc_cast.sfu_tree import broadcast


class _NoTaps(list):
    """A Broadcast.taps list that refuses new taps."""

    def append(self, item: object) -> None:
        return None


_init = broadcast.Broadcast.__init__


def _init_without_taps(self: broadcast.Broadcast, *args: object, **kwargs: object) -> None:
    _init(self, *args, **kwargs)  # type: ignore[arg-type]
    self.taps = _NoTaps()


broadcast.Broadcast.__init__ = _init_without_taps  # type: ignore[method-assign]

if __name__ == "__main__":
    from webrtc_cast.cli import main

    sys.exit(main(sys.argv[1:]))
