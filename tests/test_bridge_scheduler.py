"""Plan steps fire at their starts (by a controllable clock, after short real delays), once per
key; newer plans replace older ones; after a restart the remaining steps fire and the passed
ones do not."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from functools import partial

import redis.asyncio

from bridge.channel import Dispatch
from bridge.models import Device, Mode, Plan, PlanStep
from bridge.scheduler import StepScheduler
from bridge.streams import DispatchQueue, ResultReader
from tests.test_bridge_models import BATTERY, HEATER, T0, plan
from tests.test_bridge_streams import CountingDevice, drained, running, wait_until, worker

UNIT = timedelta(milliseconds=150)  # one step's length: real time the tests wait
OTHER = Device(device_id="hw-2", resource_id="heaters", device_class=HEATER.device_class,
               channel=HEATER.channel, network_area="south", rated_import_kw=3.0)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Fired:
    """The enqueue callable: records each dispatch and the (real) time it arrived."""

    def __init__(self) -> None:
        self.dispatches: list[Dispatch] = []
        self.at: list[float] = []

    async def __call__(self, dispatch: Dispatch) -> None:
        self.dispatches.append(dispatch)
        self.at.append(asyncio.get_running_loop().time())

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.dispatches]


def levels(*spans: tuple[int, int], device: Device = HEATER, **fields: object) -> Plan:
    """A LIMIT plan for `device` whose steps span these (start, end) in UNITs after T0."""
    steps = tuple(PlanStep(mode=Mode.LIMIT, start=T0 + a * UNIT, end=T0 + b * UNIT, level=10 * i)
                  for i, (a, b) in enumerate(spans))
    return plan(*steps, device=device.device_id, **fields)


@asynccontextmanager
async def started(scheduler: StepScheduler) -> AsyncIterator[StepScheduler]:
    scheduler.start()
    try:
        yield scheduler
    finally:
        scheduler.shutdown()


async def settled(scheduler: StepScheduler, fired: Fired, n: int) -> None:
    """Wait until `n` dispatches fired and no job is left (so no more can come)."""
    async def done() -> bool:
        return len(fired.dispatches) >= n and not scheduler.pending()
    await wait_until(done, timeout=5)


async def test_steps_fire_at_their_starts_in_order_with_their_keys() -> None:
    clock = Clock(T0)
    fired = Fired()
    scheduler = StepScheduler(fired, clock)
    three = levels((1, 2), (2, 3), (3, 4), plan_id="p7", sequence=4)
    async with started(scheduler):
        begun = asyncio.get_running_loop().time()
        assert scheduler.schedule(three, HEATER) == ["p7#4#step0", "p7#4#step1", "p7#4#step2"]
        assert scheduler.pending() == [("p7#4#step0", T0 + UNIT), ("p7#4#step1", T0 + 2 * UNIT),
                                       ("p7#4#step2", T0 + 3 * UNIT)]
        await settled(scheduler, fired, 3)
    assert fired.keys == ["p7#4#step0", "p7#4#step1", "p7#4#step2"]
    assert [(d.step, d.device) for d in fired.dispatches] == [(0, HEATER), (1, HEATER), (2, HEATER)]
    waited = [at - begun for at in fired.at]
    assert all(w >= (i + 1) * UNIT.total_seconds() - 0.01 for i, w in enumerate(waited)), waited


async def test_scheduling_the_same_plan_again_changes_nothing() -> None:
    clock = Clock(T0)
    fired = Fired()
    scheduler = StepScheduler(fired, clock)
    two = levels((1, 2), (2, 3))
    async with started(scheduler):
        first = scheduler.schedule(two, HEATER)
        assert scheduler.schedule(two, HEATER) == first
        assert [job for job, _ in scheduler.pending()] == first
        await settled(scheduler, fired, 2)
    assert fired.keys == first


async def test_a_newer_plan_replaces_the_older_plans_pending_steps_for_that_device_only() -> None:
    clock = Clock(T0)
    fired = Fired()
    scheduler = StepScheduler(fired, clock)
    older = levels((2, 3), (3, 4), plan_id="old", sequence=1)
    newer = levels((1, 2), (2, 4), plan_id="new", sequence=2)
    neighbour = levels((3, 4), device=OTHER, plan_id="other", sequence=1)
    async with started(scheduler):
        scheduler.schedule(older, HEATER)
        scheduler.schedule(neighbour, OTHER)
        scheduler.schedule(newer, HEATER)
        assert scheduler.schedule(older, HEATER) == []  # arriving late: ignored
        assert [job for job, _ in scheduler.pending()] == ["new#2#step0", "new#2#step1",
                                                           "other#1#step0"]
        await settled(scheduler, fired, 3)
    assert fired.keys == ["new#2#step0", "new#2#step1", "other#1#step0"]


async def test_the_step_in_progress_fires_at_once_and_ended_steps_never() -> None:
    clock = Clock(T0 + 1.5 * UNIT)
    fired = Fired()
    scheduler = StepScheduler(fired, clock)
    async with started(scheduler):
        assert scheduler.schedule(levels((0, 1), (1, 2), (2, 3)), HEATER) == ["p1#1#step1",
                                                                           "p1#1#step2"]
        assert scheduler.schedule(levels((0, 1), plan_id="gone"), OTHER) == []
        await settled(scheduler, fired, 2)
    assert fired.keys == ["p1#1#step1", "p1#1#step2"]


async def test_cancel_drops_a_devices_pending_steps() -> None:
    clock = Clock(T0)
    fired = Fired()
    scheduler = StepScheduler(fired, clock)
    async with started(scheduler):
        scheduler.schedule(levels((1, 2), (2, 3)), HEATER)
        scheduler.schedule(levels((1, 2), device=OTHER, plan_id="other"), OTHER)
        assert (scheduler.cancel(HEATER.device_id), scheduler.cancel("nobody")) == (2, 0)
        await settled(scheduler, fired, 1)
    assert fired.keys == ["other#1#step0"]


async def test_rebuild_after_a_restart_fires_the_remaining_steps_not_the_passed_ones() -> None:
    clock = Clock(T0)
    fired = Fired()
    heater_plan = levels((1, 2), (2, 3), (3, 4), (4, 5), plan_id="h", sequence=3)
    other_plan = levels((1, 3), (3, 5), device=OTHER, plan_id="o", sequence=1)
    before = StepScheduler(fired, clock)
    async with started(before):
        before.schedule(heater_plan, HEATER)
        before.schedule(other_plan, OTHER)
        await wait_until(lambda: len(fired.dispatches) >= 2, timeout=5)
    # the process stops; it restarts when the heater's step 1 has begun and step 2 has not
    clock.now = T0 + 2.5 * UNIT
    fired_before = fired.keys[:]
    after = StepScheduler(fired, clock)
    after.schedule(levels((1, 9), plan_id="stale"), OTHER)  # not in the database any more
    async with started(after):
        assert after.rebuild([(heater_plan, HEATER), (other_plan, OTHER)]) == 5
        await settled(after, fired, len(fired_before) + 5)
    assert sorted(fired_before) == ["h#3#step0", "o#1#step0"]
    assert sorted(fired.keys[len(fired_before):]) == [
        "h#3#step1", "h#3#step2", "h#3#step3", "o#1#step0", "o#1#step1"]


async def test_a_step_fired_again_after_a_restart_reaches_the_device_once(
        redis_url: str) -> None:
    """Rebuild fires the step in progress again; the stream worker skips its key."""
    client = redis.asyncio.Redis.from_url(redis_url)
    prefix = f"t-{uuid.uuid4().hex[:10]}:bridge"
    queue, device, reader = DispatchQueue(client, prefix), CountingDevice(), \
        ResultReader(client, prefix=prefix)
    clock = Clock(T0 + UNIT)
    battery_plan = plan(PlanStep(mode=Mode.CHARGE, start=T0, end=T0 + 40 * UNIT, power_kw=2.0),
                        PlanStep(mode=Mode.HOLD, start=T0 + 40 * UNIT, end=T0 + 41 * UNIT))
    entry_ids: list[str] = []

    async def enqueue(dispatch: Dispatch) -> None:
        entry_ids.append(await queue.enqueue(dispatch))

    async def caught_up(enqueued: int) -> bool:
        return len(entry_ids) == enqueued and await drained(client, prefix)

    try:
        async with running(worker(client, device, "w1", prefix)):
            for fired in (1, 2):  # before and after a restart, both during step 0
                async with started(StepScheduler(enqueue, clock)) as scheduler:
                    scheduler.rebuild([(battery_plan, BATTERY)])
                    await wait_until(partial(caught_up, fired))
        results = await reader.read(block=timedelta(milliseconds=20))
    finally:
        await client.aclose()
    assert device.raw == {"p1#1#step0": 1}
    assert [r.key for _, r in results] == ["p1#1#step0"]
