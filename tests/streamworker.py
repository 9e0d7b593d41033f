"""A stream worker process for the kill tests: `python -m tests.streamworker REDIS_URL PREFIX
RECORDER_URL CONSUMER` delivers battery-hub dispatches by POSTing them to a recorder (the
device, in the test) until SIGTERM. The test SIGKILLs it mid-dispatch."""

from __future__ import annotations

import asyncio
import signal
import sys
from datetime import UTC, datetime, timedelta

import aiohttp
import redis.asyncio

from bridge.channel import ChannelError, Delivery, DeviceUnavailable, Dispatch, encode_dispatch
from bridge.models import Channel
from bridge.streams import Worker

CLAIM_IDLE = timedelta(seconds=0.5)  # short, so a killed worker's entries move on quickly


class RecorderDriver:
    """POSTs the encoded dispatch; the recorder answers 200 once it has applied the key."""

    channel = Channel.BATTERY_HUB

    def __init__(self, url: str) -> None:
        self._url = url
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def deliver(self, dispatch: Dispatch) -> Delivery:
        sent_at = datetime.now(UTC)
        try:
            async with self._session.post(self._url, data=encode_dispatch(dispatch)) as response:
                detail = await response.text()
        except TimeoutError as exc:
            raise DeviceUnavailable(f"no answer from {self._url}") from exc
        except aiohttp.ClientError as exc:
            raise ChannelError(f"{type(exc).__name__}: {exc}") from exc
        if response.status != 200:
            raise ChannelError(f"HTTP {response.status}: {detail}",
                               retryable=response.status >= 500)
        return Delivery(key=dispatch.key, plan_id=dispatch.plan.plan_id,
                        device_id=dispatch.device.device_id, channel=self.channel, messages=2,
                        sent_at=sent_at, acked_at=datetime.now(UTC), detail=detail)

    async def aclose(self) -> None:
        await self._session.close()


async def main(redis_url: str, prefix: str, recorder_url: str, consumer: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    driver = RecorderDriver(recorder_url)
    worker = Worker(client, driver, consumer, prefix=prefix, claim_idle=CLAIM_IDLE,
                    backoff=(timedelta(seconds=0.01), timedelta(seconds=0.1)),
                    block=timedelta(seconds=0.1))
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, worker.stop)
    try:
        await worker.run()
    finally:
        await driver.aclose()
        await client.aclose()


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    asyncio.run(main(*sys.argv[1:]))
