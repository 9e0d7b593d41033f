"""The XML-signature replay nonce cache is shared by VTN processes through Redis."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import redis.asyncio

from adrgate.replay import RedisReplayCache
from oadr.messages import Poll, ResponseMessage
from oadr.signing import InMemoryReplayCache, SigningKey

from tests.certs import write_pki
from tests.rawven import RawVen, code
from tests.vtnkit import running_vtn, utcnow


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "per-process"])
async def test_message_replayed_to_another_vtn_is_refused(
        tmp_path: Path, redis_url: str, shared: bool) -> None:
    pki = write_pki(tmp_path / "pki")
    client = redis.asyncio.Redis.from_url(redis_url)  # as adrgate.vtnserver builds it
    db = f"sqlite:///{tmp_path}/vtn.db"

    def cache() -> RedisReplayCache | InMemoryReplayCache:
        return RedisReplayCache(client) if shared else InMemoryReplayCache(clock=utcnow)

    vtn_key = SigningKey.load(pki.vtn_ecc.cert_pem, pki.vtn_ecc.key_pem)
    ven_key = SigningKey.load(pki.ven_ecc.cert_pem, pki.ven_ecc.key_pem)
    options = dict(signing_key=vtn_key, require_signatures=True, poll_freq=timedelta(seconds=5))
    async with running_vtn(db, replay=cache(), **options) as first, \
            running_vtn(db, replay=cache(), **options) as second:
        ven = RawVen(first, "ven-replay", key=ven_key)
        await ven.register()
        captured = ven.encode(Poll(ven_id=ven.ven_id or ""))
        assert (await ven.post("OadrPoll", captured)).status == 200
        replayed = (await RawVen(second, "attacker").post("OadrPoll", captured)).message
        assert isinstance(replayed, ResponseMessage)
        assert code(replayed) == (463 if shared else 200)
    await client.aclose()
