"""HTTP and WebSocket endpoints on top of the webrtc_cast core: WHIP, WHEP, relay links, registry, LL-HLS, chat."""
