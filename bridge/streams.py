"""Dispatch through Redis Streams: one stream and one consumer group per channel.

`DispatchQueue.enqueue` appends an encoded `Dispatch` to its channel's stream; a `Worker` per
channel process (any number, each a consumer of the channel's group) delivers it through the
channel's `Driver` and reports the outcome on the results stream, which the bridge reads with a
`ResultReader` (trace, re-allocation).

Delivery is at least once, idempotent by `Dispatch.key`:
- an entry is acknowledged only once its outcome is written, in one MULTI with the outcome
  (the "done" record of a delivered key, the result, a dead letter), so a crash at any point
  leaves the entry pending, and XAUTOCLAIM hands it to a live worker after `claim_idle`;
- a key already recorded as done is acknowledged without delivering it again;
- a crash between the device's acknowledgement and that MULTI redelivers the dispatch: the
  device side applies a key once (the channel simulators do), so nothing is applied twice.

Redis layout under `prefix`: `{prefix}:{channel}` dispatch streams (group `{channel}`),
`{prefix}:{channel}:attempts` (hash, entry id -> attempts so far, survives a worker crash),
`{prefix}:done:{key}` (the Delivery JSON, expiring after `done_ttl`, longer than any plan is
valid), `{prefix}:results` and `{prefix}:dead` streams. Acknowledged entries are deleted from the
dispatch streams (XDEL in the same MULTI), so those stay as long as the backlog. The results
and dead-letter streams are never trimmed here: their readers decide what they no longer need.

The pure parts (stream names, the result model and its JSON, the retry decision, the backoff)
are separate from the I/O (`DispatchQueue`, `Worker`, `ResultReader`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final

import redis.asyncio
from pydantic import TypeAdapter, ValidationError
from redis.exceptions import RedisError, ResponseError

from .channel import (
    ChannelError, Delivery, DeviceUnavailable, Dispatch, Driver, decode_dispatch, encode_dispatch)
from .models import Channel

DEFAULT_PREFIX: Final = "adrgate:bridge"

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    DELIVERED = "delivered"  # the device acknowledged it
    UNAVAILABLE = "unavailable"  # the device did not answer: the bridge re-allocates its share
    DEAD = "dead"  # refused, malformed, or out of attempts: in the dead-letter stream


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatchResult:
    """The outcome of one stream entry, as the results stream carries it."""

    key: str  # Dispatch.key; "" for an entry that is not a dispatch
    plan_id: str
    device_id: str
    event_id: str | None
    channel: Channel
    outcome: Outcome
    attempts: int  # deliveries tried (0: malformed, never tried)
    entry_id: str  # the dispatch stream entry
    enqueued_at: datetime
    finished_at: datetime
    delivery: Delivery | None = None  # DELIVERED only
    reason: str = ""  # UNAVAILABLE and DEAD: why


@dataclass(frozen=True, slots=True)
class DeadLetter:
    entry_id: str
    dispatch: bytes  # the entry as it was enqueued, to inspect or enqueue again
    result: DispatchResult


@dataclass(frozen=True, slots=True)
class StreamNames:
    """Every Redis key the dispatch streams use, under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def dispatches(self, channel: Channel) -> str:
        return f"{self.prefix}:{channel}"

    def attempts(self, channel: Channel) -> str:
        return f"{self.prefix}:{channel}:attempts"

    def done(self, key: str) -> str:
        return f"{self.prefix}:done:{key}"

    @property
    def results(self) -> str:
        return f"{self.prefix}:results"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"


_RESULT: Final = TypeAdapter(DispatchResult)
_DELIVERY: Final = TypeAdapter(Delivery)


def encode_result(result: DispatchResult) -> bytes:
    return _RESULT.dump_json(result)


def decode_result(data: bytes | str) -> DispatchResult:
    """Raises pydantic.ValidationError on anything that is not an encoded result."""
    return _RESULT.validate_json(data)


def entry_time(entry_id: str) -> datetime:
    """When Redis appended the entry: its id starts with milliseconds since the epoch."""
    return datetime.fromtimestamp(int(entry_id.split("-", 1)[0]) / 1000, UTC)


def classify(error: Exception, attempts: int, max_attempts: int) -> Outcome | None:
    """What a failed delivery attempt leads to; None: try again after a backoff."""
    if isinstance(error, DeviceUnavailable):
        return Outcome.UNAVAILABLE  # the bridge re-allocates; retrying here would only delay it
    if isinstance(error, ChannelError) and error.retryable and attempts < max_attempts:
        return None
    return Outcome.DEAD  # refused by the device, out of attempts, or a driver bug


def backoff_delay(attempt: int, base: timedelta, cap: timedelta, rand: float) -> timedelta:
    """Exponential backoff after failed attempt number `attempt` (1-based), capped, with "equal
    jitter" (`rand` in [0, 1) scales it to 50..100 %) so workers retrying a shared gateway
    spread out."""
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 32))  # 2**32 s outgrows any cap
    return ceiling * (0.5 + rand / 2)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def ensure_group(client: redis.asyncio.Redis, stream: str, group: str) -> None:
    """Create the consumer group (and the stream) unless it exists; from the stream's start, so
    entries added before the group existed are delivered too."""
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class DispatchQueue:
    """Where the bridge puts dispatches: the stream of the device's channel."""

    def __init__(self, client: redis.asyncio.Redis, prefix: str = DEFAULT_PREFIX) -> None:
        self._client = client
        self.names = StreamNames(prefix)
        self._groups: set[Channel] = set()

    async def enqueue(self, dispatch: Dispatch) -> str:
        """Append `dispatch`; returns the entry id."""
        channel = dispatch.device.channel
        stream = self.names.dispatches(channel)
        if channel not in self._groups:
            await ensure_group(self._client, stream, str(channel))
            self._groups.add(channel)
        return _text(await self._client.xadd(stream, {"dispatch": encode_dispatch(dispatch)}))

    async def dead_letters(self, count: int = 100) -> list[DeadLetter]:
        """The oldest `count` dead letters."""
        entries: Any = await self._client.xrange(self.names.dead, count=count)
        return [DeadLetter(_text(entry_id), fields.get(b"dispatch", b""),
                           decode_result(fields[b"result"])) for entry_id, fields in entries]


@dataclass(slots=True)
class _Entry:
    entry_id: str
    raw: bytes  # the "dispatch" field as enqueued (b"" when missing)
    dispatch: Dispatch | None = None
    attempts: int = 0
    enqueued_at: datetime = field(init=False)

    def __post_init__(self) -> None:
        self.enqueued_at = entry_time(self.entry_id)


class Worker:
    """One consumer of one channel's group: delivers dispatches through `driver`.

    `run()` works until `stop()`: the entry in hand is finished (a delivery under way completes,
    bounded by the driver's own timeouts; a backoff wait is abandoned) and the loop returns.
    Cancelling the `run()` task abandons the entry in hand. Abandoned and unread-but-claimed
    entries stay pending and are reclaimed after `claim_idle`, by this consumer or another.

    `claim_idle` must exceed the longest a live worker leaves an entry untouched, or a live
    worker's entry is taken over (then both may deliver it: harmless, but wasted). Each attempt
    touches its entry, so for the entry in hand that is one delivery attempt (the driver's
    timeout) plus the backoff cap; entries read in the same `batch` wait for the ones before
    them, hence one at a time by default. `block` bounds each read, so `stop()` is noticed
    within it; the Redis client's socket timeout must be longer.
    """

    def __init__(self, client: redis.asyncio.Redis, driver: Driver, consumer: str, *,
                 prefix: str = DEFAULT_PREFIX, max_attempts: int = 5,
                 backoff: tuple[timedelta, timedelta] = (timedelta(seconds=1),
                                                         timedelta(seconds=60)),
                 claim_idle: timedelta = timedelta(minutes=5),
                 block: timedelta = timedelta(seconds=1), batch: int = 1,
                 done_ttl: timedelta = timedelta(days=7),
                 clock: Callable[[], datetime] = _utcnow,
                 rand: Callable[[], float] = random.random) -> None:
        if max_attempts < 1 or batch < 1:
            raise ValueError("max_attempts and batch must be at least 1")
        if claim_idle <= backoff[1]:
            raise ValueError(f"claim_idle {claim_idle} must exceed the backoff cap {backoff[1]}")
        self._client = client
        self._driver = driver
        self.consumer = consumer
        self.channel = driver.channel
        self.names = StreamNames(prefix)
        self._stream = self.names.dispatches(self.channel)
        self._group = str(self.channel)
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._claim_idle = claim_idle
        self._block = block
        self._batch = batch
        self._done_ttl = done_ttl
        self._clock = clock
        self._rand = rand
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Read, reclaim and deliver until `stop()`. Redis errors are logged and retried."""
        loop = asyncio.get_running_loop()
        next_claim = loop.time()
        while not self._stopping.is_set():
            try:
                if loop.time() >= next_claim:
                    await ensure_group(self._client, self._stream, self._group)
                    await self._reclaim()
                    next_claim = loop.time() + self._claim_idle.total_seconds() / 2
                response: Any = await self._client.xreadgroup(
                    self._group, self.consumer, {self._stream: ">"}, count=self._batch,
                    block=max(1, int(self._block.total_seconds() * 1000)))
                for _, entries in response:
                    await self._handle_all(entries)
            except RedisError:
                log.exception("%s worker %s: Redis failed; retrying", self.channel, self.consumer)
                next_claim = loop.time()  # the group may be gone with a restarted Redis
                await self._wait_for_stop(self._block)

    async def _reclaim(self) -> None:
        """Take over entries another consumer (or this one, before a restart) left pending."""
        cursor: bytes | str = "0-0"
        idle_ms = int(self._claim_idle.total_seconds() * 1000)
        while not self._stopping.is_set():
            claimed: Any = await self._client.xautoclaim(
                self._stream, self._group, self.consumer, idle_ms, cursor, count=self._batch)
            cursor, entries = claimed[0], claimed[1]  # Redis 7 adds a third: ids deleted meanwhile
            if entries:
                log.info("%s worker %s reclaimed %d entries", self.channel, self.consumer,
                         len(entries))
            await self._handle_all(entries)
            if _text(cursor) == "0-0":
                return

    async def _handle_all(self, entries: list[tuple[bytes, dict[bytes, bytes] | None]]) -> None:
        for entry_id, fields in entries:
            if self._stopping.is_set():
                return  # the rest stay pending: reclaimed later
            await self._handle(_Entry(_text(entry_id), (fields or {}).get(b"dispatch", b"")))

    async def _handle(self, entry: _Entry) -> None:
        try:
            entry.dispatch = decode_dispatch(entry.raw)
        except ValidationError as exc:
            reason = f"malformed entry: {exc.error_count()} errors, first: {exc.errors()[0]['msg']}"
            await self._finish(entry, Outcome.DEAD, reason=reason)
            return
        if entry.dispatch.device.channel is not self.channel:
            reason = f"a {entry.dispatch.device.channel} dispatch in the {self.channel} stream"
            await self._finish(entry, Outcome.DEAD, reason=reason)
            return
        while True:
            if await self._begin_attempt(entry):
                return
            try:
                delivery = await self._driver.deliver(entry.dispatch)
            except Exception as exc:  # any failure becomes an outcome, never a crash
                outcome = classify(exc, entry.attempts, self._max_attempts)
                if outcome is None:
                    delay = backoff_delay(entry.attempts, *self._backoff, self._rand())
                    log.info("%s %s: attempt %d failed (%s), retrying in %s", self.channel,
                             entry.dispatch.key, entry.attempts, exc, delay)
                    if await self._wait_for_stop(delay):
                        return  # abandoned: stays pending with its attempts counted
                    continue
                if not isinstance(exc, ChannelError):
                    log.error("%s driver failed on %s", self.channel, entry.dispatch.key,
                              exc_info=exc)
                await self._finish(entry, outcome, reason=f"{type(exc).__name__}: {exc}")
                return
            await self._finish(entry, Outcome.DELIVERED, delivery=delivery)
            return

    async def _begin_attempt(self, entry: _Entry) -> bool:
        """Count the attempt and touch the entry (XCLAIM to ourselves resets its idle time, so no
        other worker takes it over while we work on it). True: nothing left to do for it."""
        assert entry.dispatch is not None
        key = entry.dispatch.key
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.exists(self.names.done(key))
            pipe.hincrby(self.names.attempts(self.channel), entry.entry_id, 1)
            pipe.xclaim(self._stream, self._group, self.consumer, 0, [entry.entry_id],
                        justid=True)
            done, entry.attempts, _ = await pipe.execute()
        if done:
            log.info("%s %s already delivered: acknowledged without delivering", self.channel, key)
            await self._commit(entry)
            return True
        if entry.attempts > self._max_attempts:  # the earlier attempts died with their worker
            entry.attempts -= 1  # this one is not made
            await self._finish(entry, Outcome.DEAD, reason=(
                f"{entry.attempts} attempts did not finish (worker lost mid-delivery)"))
            return True
        return False

    async def _finish(self, entry: _Entry, outcome: Outcome, *, delivery: Delivery | None = None,
                      reason: str = "") -> None:
        d = entry.dispatch
        result = DispatchResult(
            key=d.key if d else "", plan_id=d.plan.plan_id if d else "",
            device_id=d.device.device_id if d else "", event_id=d.plan.event_id if d else None,
            channel=self.channel, outcome=outcome, attempts=entry.attempts,
            entry_id=entry.entry_id, enqueued_at=entry.enqueued_at, finished_at=self._clock(),
            delivery=delivery, reason=reason)
        encoded = encode_result(result)
        if outcome is Outcome.DELIVERED:
            log.debug("%s %s delivered", self.channel, result.key)
        else:
            log.warning("%s %s %s: %s", self.channel, result.key or entry.entry_id, outcome,
                        reason)
        await self._commit(entry, results=[encoded],
                           dead=[entry.raw, encoded] if outcome is Outcome.DEAD else None,
                           done=_DELIVERY.dump_json(delivery) if delivery else None)

    async def _commit(self, entry: _Entry, *, results: list[bytes] | None = None,
                      dead: list[bytes] | None = None, done: bytes | None = None) -> None:
        """Write the outcome and acknowledge the entry in one MULTI: all or nothing."""
        async with self._client.pipeline(transaction=True) as pipe:
            if done is not None and entry.dispatch is not None:
                pipe.set(self.names.done(entry.dispatch.key), done, ex=self._done_ttl)
            if dead is not None:
                pipe.xadd(self.names.dead, {"dispatch": dead[0], "result": dead[1]})
            for encoded in results or ():
                pipe.xadd(self.names.results, {"result": encoded})
            pipe.xack(self._stream, self._group, entry.entry_id)
            pipe.xdel(self._stream, entry.entry_id)
            pipe.hdel(self.names.attempts(self.channel), entry.entry_id)
            await pipe.execute()

    async def _wait_for_stop(self, delay: timedelta) -> bool:
        """Sleep `delay` unless stopped first; True if stopped."""
        try:
            await asyncio.wait_for(self._stopping.wait(), delay.total_seconds())
        except TimeoutError:
            return False
        return True


class ResultReader:
    """The bridge's reader of the results stream, as a consumer of its own group.

    `read` returns this consumer's unacknowledged results first (left by a crash), then new
    ones; `ack` them once handled. A result that does not decode is logged and acknowledged.
    """

    def __init__(self, client: redis.asyncio.Redis, *, prefix: str = DEFAULT_PREFIX,
                 group: str = "bridge", consumer: str = "bridge") -> None:
        self._client = client
        self._stream = StreamNames(prefix).results
        self._group = group
        self._consumer = consumer
        self._backlog: str | None = "0"  # where this consumer's unacknowledged entries resume
        self._ready = False

    async def read(self, count: int = 100,
                   block: timedelta = timedelta(seconds=1)) -> list[tuple[str, DispatchResult]]:
        if not self._ready:
            await ensure_group(self._client, self._stream, self._group)
            self._ready = True
        while self._backlog is not None:
            self._backlog, found = await self._read(self._backlog, count, None)
            if found:
                return found
        _, found = await self._read(">", count, max(1, int(block.total_seconds() * 1000)))
        return found

    async def ack(self, *entry_ids: str) -> None:
        if entry_ids:
            await self._client.xack(self._stream, self._group, *entry_ids)

    async def _read(self, start: str, count: int, block_ms: int | None
                    ) -> tuple[str | None, list[tuple[str, DispatchResult]]]:
        """The results after `start`, and the last id read (None: there were none)."""
        response: Any = await self._client.xreadgroup(
            self._group, self._consumer, {self._stream: start}, count=count, block=block_ms)
        last: str | None = None
        found: list[tuple[str, DispatchResult]] = []
        for _, entries in response:
            for entry_id, fields in entries:
                last = _text(entry_id)
                try:
                    found.append((last, decode_result((fields or {})[b"result"])))
                except (KeyError, ValidationError):
                    log.error("results entry %s is not a result: %r", last, fields)
                    await self.ack(last)
        return last, found
