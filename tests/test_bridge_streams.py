"""Dispatch through Redis Streams: delivered once, retried with backoff, dead-lettered with a
reason, and nothing lost when a worker dies mid-dispatch (in-process and as a killed process)."""

from __future__ import annotations

import asyncio
import inspect
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from aiohttp import ClientSession, web
from pydantic import TypeAdapter

from bridge.channel import (
    ChannelError, Delivery, DeviceUnavailable, Dispatch, decode_dispatch, encode_dispatch)
from bridge.models import Channel, Mode
from bridge.streams import (
    DispatchQueue, DispatchResult, Outcome, ResultReader, StreamNames, Worker, backoff_delay,
    classify, decode_result, encode_result, entry_time)
from tests.test_bridge_models import BATTERY, HEATER, plan, step

MS = timedelta(milliseconds=1)


def worker(client: redis.asyncio.Redis, device: CountingDevice, consumer: str, prefix: str,
           **options: Any) -> Worker:
    """A worker with test timings: tiny backoff, entries reclaimed after 0.2 s."""
    fast: dict[str, Any] = {"backoff": (10 * MS, 40 * MS), "claim_idle": 200 * MS,
                            "block": 50 * MS}
    return Worker(client, device, consumer, prefix=prefix, **(fast | options))


def dispatches(n: int, *, first: int = 0) -> list[Dispatch]:
    return [Dispatch(plan=plan(step(Mode.CHARGE, 0, 1, power_kw=2.0), plan_id=f"p{i}"),
                     device=BATTERY) for i in range(first, first + n)]


class CountingDevice:
    """A battery hub that applies each key once and counts what reaches it.

    `failures[key]`: errors raised by its next deliveries, in order. `hang_on`: the first
    delivery of that key is applied, then never acknowledged (its worker "dies" there).
    """

    channel = Channel.BATTERY_HUB

    def __init__(self, failures: dict[str, list[Exception]] | None = None,
                 hang_on: str | None = None) -> None:
        self.raw: Counter[str] = Counter()  # deliveries that reached the device
        self.applied: Counter[str] = Counter()  # applications: at most one per key
        self.attempted_at: dict[str, list[float]] = {}
        self.hanging = asyncio.Event()
        self._failures = failures or {}
        self._hang_on = hang_on

    async def deliver(self, dispatch: Dispatch) -> Delivery:
        key = dispatch.key
        self.raw[key] += 1
        self.attempted_at.setdefault(key, []).append(asyncio.get_running_loop().time())
        if self._failures.get(key):
            raise self._failures[key].pop(0)
        if key not in self.applied:
            self.applied[key] += 1
        if key == self._hang_on and self.raw[key] == 1:
            self.hanging.set()
            await asyncio.Event().wait()
        now = datetime.now(UTC)
        return Delivery(key=key, plan_id=dispatch.plan.plan_id,
                        device_id=dispatch.device.device_id, channel=self.channel, messages=2,
                        sent_at=now, acked_at=now)

    async def aclose(self) -> None:
        pass


async def wait_until(condition: Callable[[], bool | Awaitable[bool]],
                     timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await _value(condition()):
            await asyncio.sleep(0.02)


async def _value(value: bool | Awaitable[bool]) -> bool:
    return await value if inspect.isawaitable(value) else value


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    connection = redis.asyncio.Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:10]}:bridge"


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(worker.run())
    try:
        yield task
    finally:
        worker.stop()
        async with asyncio.timeout(5):
            with suppress(asyncio.CancelledError):
                await task


class Results:
    """Everything on the results stream so far, read as the bridge would."""

    def __init__(self, client: redis.asyncio.Redis, prefix: str) -> None:
        self.reader = ResultReader(client, prefix=prefix)
        self.seen: list[DispatchResult] = []

    async def at_least(self, n: int) -> bool:
        for entry_id, result in await self.reader.read(block=20 * MS):
            self.seen.append(result)
            await self.reader.ack(entry_id)
        return len(self.seen) >= n

    def by_key(self) -> dict[str, DispatchResult]:
        return {r.key: r for r in self.seen}


async def drained(client: redis.asyncio.Redis, prefix: str) -> bool:
    """Nothing left in the battery-hub stream, nothing pending, no attempt counts."""
    names = StreamNames(prefix)
    stream = names.dispatches(Channel.BATTERY_HUB)
    pending = await client.xpending(stream, str(Channel.BATTERY_HUB))
    return (await client.xlen(stream), pending["pending"],
            await client.hlen(names.attempts(Channel.BATTERY_HUB))) == (0, 0, 0)


# --- the pure parts ---

def test_backoff_doubles_up_to_the_cap_with_equal_jitter() -> None:
    base, cap = timedelta(seconds=1), timedelta(seconds=10)
    assert [backoff_delay(n, base, cap, 0.999999).total_seconds() for n in (1, 2, 3, 4, 5)] == \
        pytest.approx([1, 2, 4, 8, 10], rel=1e-5)
    assert backoff_delay(3, base, cap, 0.0) == timedelta(seconds=2)
    assert backoff_delay(1000, base, cap, 0.5) == timedelta(seconds=7.5)


@pytest.mark.parametrize(("error", "attempts", "expected"), [
    (ChannelError("busy"), 1, None),
    (ChannelError("busy"), 3, Outcome.DEAD),
    (ChannelError("bad frame", retryable=False), 1, Outcome.DEAD),
    (DeviceUnavailable("no answer"), 1, Outcome.UNAVAILABLE),
    (RuntimeError("driver bug"), 1, Outcome.DEAD),
])
def test_classify(error: Exception, attempts: int, expected: Outcome | None) -> None:
    assert classify(error, attempts, max_attempts=3) is expected


def test_a_result_round_trips_through_json_and_entry_ids_carry_their_time() -> None:
    at = datetime(2026, 11, 27, 17, 0, 0, 123000, tzinfo=UTC)
    entry_id = f"{int(at.timestamp() * 1000)}-4"
    result = DispatchResult(key="p1#1#plan", plan_id="p1", device_id="bat-1", event_id="ev-1",
                            channel=Channel.OCPP, outcome=Outcome.DELIVERED, attempts=2,
                            entry_id=entry_id, enqueued_at=entry_time(entry_id), finished_at=at,
                            delivery=Delivery(key="p1#1#plan", plan_id="p1", device_id="bat-1",
                                              channel=Channel.OCPP, messages=4, sent_at=at,
                                              acked_at=at, detail="profile 7"))
    assert decode_result(encode_result(result)) == result
    assert result.enqueued_at == at


# --- with a real Redis ---

async def test_enqueued_dispatches_are_delivered_recorded_and_acknowledged(
        client: redis.asyncio.Redis, prefix: str) -> None:
    queue, results = DispatchQueue(client, prefix), Results(client, prefix)
    device = CountingDevice()
    sent = dispatches(5)
    for dispatch in sent:
        await queue.enqueue(dispatch)
    async with running(worker(client, device, "w1", prefix)):
        await wait_until(lambda: results.at_least(5))
    keys = {d.key for d in sent}
    assert device.raw == Counter({key: 1 for key in keys})
    assert results.by_key().keys() == keys
    for result in results.seen:
        assert (result.outcome, result.attempts, result.channel) == (
            Outcome.DELIVERED, 1, Channel.BATTERY_HUB)
        assert result.delivery is not None and result.delivery.key == result.key
        assert result.enqueued_at <= result.finished_at
        done = await client.get(StreamNames(prefix).done(result.key))
        assert TypeAdapter(Delivery).validate_json(done) == result.delivery
    assert await drained(client, prefix)
    assert await queue.dead_letters() == []


async def test_a_key_already_done_is_acknowledged_without_delivering_it_again(
        client: redis.asyncio.Redis, prefix: str) -> None:
    queue, results = DispatchQueue(client, prefix), Results(client, prefix)
    device = CountingDevice()
    [dispatch] = dispatches(1)
    await queue.enqueue(dispatch)
    await queue.enqueue(dispatch)  # e.g. a step fired again after a restart
    [later] = dispatches(1, first=1)
    await queue.enqueue(later)
    async with running(worker(client, device, "w1", prefix)):
        await wait_until(lambda: results.at_least(2))
        await wait_until(lambda: drained(client, prefix))
    assert device.raw == Counter({dispatch.key: 1, later.key: 1})
    assert [r.key for r in results.seen] == [dispatch.key, later.key]


async def test_a_worker_dying_after_the_device_applied_redelivers_and_the_device_applies_once(
        client: redis.asyncio.Redis, prefix: str) -> None:
    queue, results = DispatchQueue(client, prefix), Results(client, prefix)
    sent = dispatches(3)
    device = CountingDevice(hang_on=sent[1].key)
    for dispatch in sent:
        await queue.enqueue(dispatch)
    first = worker(client, device, "w1", prefix)
    task = asyncio.create_task(first.run())
    async with asyncio.timeout(5):
        await device.hanging.wait()
    task.cancel()  # dies between the device's acknowledgement and recording it
    with suppress(asyncio.CancelledError):
        await task
    async with running(worker(client, device, "w2", prefix)):
        await wait_until(lambda: results.at_least(3))
    assert device.raw == Counter({sent[0].key: 1, sent[1].key: 2, sent[2].key: 1})
    assert device.applied == Counter({d.key: 1 for d in sent})
    assert sorted(r.key for r in results.seen) == sorted(d.key for d in sent)
    assert results.by_key()[sent[1].key].attempts == 2
    assert await drained(client, prefix)


async def test_retryable_failures_back_off_then_dead_letter_after_max_attempts(
        client: redis.asyncio.Redis, prefix: str) -> None:
    queue, results = DispatchQueue(client, prefix), Results(client, prefix)
    doomed, recovering = dispatches(2)
    device = CountingDevice({doomed.key: [ChannelError(f"busy {i}") for i in range(10)],
                             recovering.key: [ChannelError("busy"), ChannelError("busy")]})
    await queue.enqueue(doomed)
    await queue.enqueue(recovering)
    async with running(worker(client, device, "w1", prefix, max_attempts=3, rand=lambda: 0.5)):
        await wait_until(lambda: results.at_least(2))
    dead, delivered = results.by_key()[doomed.key], results.by_key()[recovering.key]
    assert (dead.outcome, dead.attempts, dead.reason) == (Outcome.DEAD, 3, "ChannelError: busy 2")
    assert (delivered.outcome, delivered.attempts) == (Outcome.DELIVERED, 3)
    assert device.raw == Counter({doomed.key: 3, recovering.key: 3})
    gaps = [b - a for a, b in zip(device.attempted_at[doomed.key],
                                  device.attempted_at[doomed.key][1:])]
    minimum = [backoff_delay(n, 10 * MS, 40 * MS, 0.5).total_seconds() for n in (1, 2)]
    assert all(gap >= low for gap, low in zip(gaps, minimum, strict=True)), (gaps, minimum)
    [letter] = await queue.dead_letters()
    assert decode_dispatch(letter.dispatch) == doomed
    assert letter.result == dead
    assert await client.get(StreamNames(prefix).done(doomed.key)) is None
    assert await drained(client, prefix)


async def test_a_refusal_is_dead_at_once_and_an_unavailable_device_is_reported_not_retried(
        client: redis.asyncio.Redis, prefix: str) -> None:
    queue, results = DispatchQueue(client, prefix), Results(client, prefix)
    refused, unavailable = dispatches(2)
    device = CountingDevice({refused.key: [ChannelError("bad frame", retryable=False)],
                             unavailable.key: [DeviceUnavailable("no answer in 25 s")]})
    await queue.enqueue(refused)
    await queue.enqueue(unavailable)
    async with running(worker(client, device, "w1", prefix)):
        await wait_until(lambda: results.at_least(2))
    by_key = results.by_key()
    assert (by_key[refused.key].outcome, by_key[refused.key].attempts) == (Outcome.DEAD, 1)
    assert "bad frame" in by_key[refused.key].reason
    assert (by_key[unavailable.key].outcome, by_key[unavailable.key].attempts) == (
        Outcome.UNAVAILABLE, 1)
    assert by_key[unavailable.key].reason == "DeviceUnavailable: no answer in 25 s"
    assert device.raw == Counter({refused.key: 1, unavailable.key: 1})
    assert [d.result.key for d in await queue.dead_letters()] == [refused.key]
    assert await drained(client, prefix)


async def test_malformed_and_misrouted_entries_are_dead_lettered_and_the_worker_goes_on(
        client: redis.asyncio.Redis, prefix: str) -> None:
    queue, results = DispatchQueue(client, prefix), Results(client, prefix)
    device = CountingDevice()
    stream = StreamNames(prefix).dispatches(Channel.BATTERY_HUB)
    [good] = dispatches(1)
    await queue.enqueue(good)  # creates the stream and its group
    misrouted = Dispatch(plan=plan(step(Mode.LIMIT, 0, 1, level=40), device="hw-1"),
                         device=HEATER)
    for fields in ({"dispatch": b"not json"}, {"something": b"else"},
                   {"dispatch": encode_dispatch(misrouted)}):
        await client.xadd(stream, fields)  # type: ignore[arg-type]
    [after] = dispatches(1, first=1)
    await queue.enqueue(after)
    async with running(worker(client, device, "w1", prefix)):
        await wait_until(lambda: results.at_least(5))
    outcomes = [(r.key, r.outcome, r.attempts) for r in results.seen]
    assert outcomes == [(good.key, Outcome.DELIVERED, 1), ("", Outcome.DEAD, 0),
                        ("", Outcome.DEAD, 0), (misrouted.key, Outcome.DEAD, 0),
                        (after.key, Outcome.DELIVERED, 1)]
    letters = await queue.dead_letters()
    assert [letter.dispatch for letter in letters] == [
        b"not json", b"", encode_dispatch(misrouted)]
    assert all(r.reason.startswith("malformed entry") for r in results.seen[1:3])
    assert "sapc dispatch in the battery_hub stream" in results.seen[3].reason
    assert await drained(client, prefix)


async def test_stopping_during_a_backoff_leaves_the_entry_to_the_next_worker_with_its_attempts(
        client: redis.asyncio.Redis, prefix: str) -> None:
    queue, results = DispatchQueue(client, prefix), Results(client, prefix)
    [dispatch] = dispatches(1)
    device = CountingDevice({dispatch.key: [ChannelError("busy")]})
    await queue.enqueue(dispatch)
    slow = worker(client, device, "w1", prefix, backoff=(timedelta(seconds=30),) * 2,
                  claim_idle=timedelta(seconds=31))
    async with running(slow):
        await wait_until(lambda: device.raw[dispatch.key] == 1)
    pending = await client.xpending(StreamNames(prefix).dispatches(Channel.BATTERY_HUB),
                                    str(Channel.BATTERY_HUB))
    assert (pending["pending"], await results.at_least(1)) == (1, False)
    async with running(worker(client, device, "w2", prefix)):
        await wait_until(lambda: results.at_least(1))
    assert [(r.outcome, r.attempts) for r in results.seen] == [(Outcome.DELIVERED, 2)]
    assert await drained(client, prefix)


async def test_attempts_lost_with_their_workers_count_towards_the_limit(
        client: redis.asyncio.Redis, prefix: str) -> None:
    queue, results = DispatchQueue(client, prefix), Results(client, prefix)
    device = CountingDevice()
    [dispatch] = dispatches(1)
    entry_id = await queue.enqueue(dispatch)
    # as if three workers had died delivering it (a dispatch that crashes its driver)
    await client.hset(StreamNames(prefix).attempts(Channel.BATTERY_HUB), entry_id, 3)
    async with running(worker(client, device, "w1", prefix, max_attempts=3)):
        await wait_until(lambda: results.at_least(1))
    [result] = results.seen
    assert (result.outcome, result.attempts, device.raw[dispatch.key]) == (Outcome.DEAD, 3, 0)
    assert "did not finish" in result.reason


async def test_the_result_reader_returns_what_it_did_not_acknowledge_before_a_restart(
        client: redis.asyncio.Redis, prefix: str) -> None:
    queue, device = DispatchQueue(client, prefix), CountingDevice()
    for dispatch in dispatches(3):
        await queue.enqueue(dispatch)
    await client.xadd(StreamNames(prefix).results, {"result": b"{}"})  # not a result
    first = ResultReader(client, prefix=prefix, consumer="bridge-1")
    got: list[tuple[str, DispatchResult]] = []

    async def three() -> bool:
        got.extend(await first.read(block=20 * MS))
        return len(got) >= 3

    async with running(worker(client, device, "w1", prefix)):
        await wait_until(three)
    await first.ack(got[0][0])
    again = ResultReader(client, prefix=prefix, consumer="bridge-1")
    assert await again.read() == got[1:]
    assert await again.read(block=20 * MS) == []


# --- a worker process killed mid-dispatch ---

class Recorder:
    """The device behind the worker process: applies each key once, counts every delivery, and
    holds delivery number `hold_at` until released, so the test can kill the worker there."""

    def __init__(self, hold_at: int) -> None:
        self.raw: Counter[str] = Counter()
        self.applied: Counter[str] = Counter()
        self.held_key = ""
        self.holding = asyncio.Event()
        self.release = asyncio.Event()
        self._hold_at = hold_at

    async def apply(self, request: web.Request) -> web.Response:
        try:
            dispatch = decode_dispatch(await request.read())
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"not a dispatch: {exc}") from exc
        self.raw[dispatch.key] += 1
        fresh = dispatch.key not in self.applied
        if fresh:
            self.applied[dispatch.key] += 1
        if self.raw.total() == self._hold_at:
            self.held_key = dispatch.key
            self.holding.set()
            await self.release.wait()
        await asyncio.sleep(0.001)  # a device that takes a moment to answer
        return web.Response(text="applied" if fresh else "duplicate")


@asynccontextmanager
async def serving(recorder: Recorder) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/apply", recorder.apply)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}/apply"
    finally:
        recorder.release.set()
        await runner.cleanup()


@asynccontextmanager
async def worker_process(*argv: str) -> AsyncIterator[asyncio.subprocess.Process]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.streamworker", *argv, cwd=Path(__file__).parent.parent)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_killing_a_worker_process_mid_dispatch_loses_nothing_and_applies_nothing_twice(
        client: redis.asyncio.Redis, redis_url: str, prefix: str) -> None:
    count = 200
    recorder, queue, results = Recorder(hold_at=60), DispatchQueue(client, prefix), \
        Results(client, prefix)
    sent = dispatches(count)
    for dispatch in sent:
        await queue.enqueue(dispatch)
    async with serving(recorder) as url:
        async with ClientSession() as http, http.post(url, data=b"{") as response:
            assert response.status == 400  # the device refuses what is not a dispatch
        async with worker_process(redis_url, prefix, url, "A") as a:
            async with asyncio.timeout(20):
                await recorder.holding.wait()
            a.kill()  # SIGKILL while the device holds its delivery
            await a.wait()
        recorder.release.set()
        async with worker_process(redis_url, prefix, url, "B") as b:
            await wait_until(lambda: results.at_least(count), timeout=30)
            b.terminate()
            async with asyncio.timeout(5):
                assert await b.wait() == 0  # SIGTERM: a clean stop
    keys = [d.key for d in sent]
    assert recorder.applied == Counter(keys)  # every key applied exactly once
    assert recorder.raw == Counter(keys) + Counter([recorder.held_key])  # only it twice
    assert sorted(r.key for r in results.seen) == sorted(keys)
    assert {r.outcome for r in results.seen} == {Outcome.DELIVERED}
    assert results.by_key()[recorder.held_key].attempts == 2
    assert await queue.dead_letters() == []
    assert await drained(client, prefix)

