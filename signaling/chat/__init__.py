"""Chat and reactions beside a broadcast (docs/chat.md).

Pure: ``protocol`` (frame schema, validation, WebSocket text-frame encoding) and ``room`` (room state, history,
moderation, rate limits). Adapters: ``bus`` (in-memory or Redis pub/sub) and ``http`` (the aiohttp WebSocket
handler and ``register_chat_routes``).
"""
