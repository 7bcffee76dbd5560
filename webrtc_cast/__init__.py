"""webrtc-cast: low-latency live broadcast (WHIP in, SFU tree, WHEP and LL-HLS out)."""
