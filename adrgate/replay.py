"""The nonce cache shared by several VTN processes: one Redis key per nonce, expiring by itself."""

from __future__ import annotations

import math
from datetime import timedelta

import redis


class RedisReplayCache:
    """`oadr.signing.ReplayCache` on Redis: `SET key 1 NX EX ttl`, one round trip per message.

    The client is synchronous on purpose: the call is a single short round trip on the
    verification path.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def seen(self, key: str, ttl: timedelta) -> bool:
        """Return True if `key` is already stored; otherwise store it for `ttl` (at least 1 s).

        Raises:
            redis.RedisError: Redis is unreachable (fail closed: the message is not accepted).
        """
        seconds = max(1, math.ceil(ttl.total_seconds()))
        # SET NX answers None when the key already exists, True when it was written.
        return self._client.set(key, b"1", nx=True, ex=seconds) is None
