"""The nonce cache shared by several VTN processes: one Redis key per nonce, expiring by itself."""

from __future__ import annotations

import math
from datetime import timedelta

import redis.asyncio


class RedisReplayCache:
    """`oadr.signing.ReplayCache` on Redis: `SET key 1 NX EX ttl`, one round trip per message.

    The client is `redis.asyncio`: the round trip is awaited, so the event loop serves other
    requests meanwhile (a synchronous client blocked it ~0.45 ms per signed message). Its owner
    closes it on that loop (`await client.aclose()`).
    """

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._client = client

    async def seen(self, key: str, ttl: timedelta) -> bool:
        """Return True if `key` is already stored; otherwise store it for `ttl` (at least 1 s).

        Raises:
            redis.RedisError: Redis is unreachable (fail closed: the message is not accepted).
        """
        seconds = max(1, math.ceil(ttl.total_seconds()))
        # SET NX answers None when the key already exists, True when it was written.
        return await self._client.set(key, b"1", nx=True, ex=seconds) is None
