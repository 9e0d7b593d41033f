"""The aggregator side in one process: the VEN fleet, the bridge, a Redis Streams worker per
channel, the step scheduler and the simulated devices (`adrgate ven --fleet FILE --bridge`).
With `devices_url` the devices and the workers are other processes (`adrgate aggregator`,
adrgate/aggparts.py): the planner and the telemetry read the devices service's snapshots.

The fleet's grid signals go to the bridge; the bridge's plans go through the channel streams to
the workers, whose drivers reach the simulated devices on loopback; the channels' outcomes come
back through the results stream; the devices' physics is the fleet's telemetry source. After a
restart the step schedules are rebuilt from the database and anything left in the streams is
delivered by the new workers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import aiohttp
import redis.asyncio
from sqlalchemy import Engine

from bridge.channel import Dispatch
from bridge.cmb_client import CmbReviewer
from bridge.inventory import devices_of
from bridge.models import Device, Plan
from bridge.remote import DeviceSide, RemoteDevices
from bridge.scheduler import StepScheduler
from bridge.service import Bridge
from bridge.sim.world import World, WorldOptions, start_world
from bridge.store import BridgeStore, PlanStatus
from bridge.streams import DEFAULT_PREFIX, DispatchQueue, ResultReader, Worker
from policies.plans import DeviceView
from ven.fleet import FleetSpec
from ven.runner import Fleet
from ven.store import FleetStore
from vtn.cmb.signing import PrivateKey

log = logging.getLogger("adrgate.bridge")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class BridgeOptions:
    world: WorldOptions = field(default_factory=WorldOptions)
    redispatch_every: timedelta = timedelta(minutes=5)
    sample_every: timedelta = timedelta(minutes=1)
    retry_base: timedelta = timedelta(seconds=1)
    retry_cap: timedelta = timedelta(seconds=60)
    max_attempts: int = 5
    stream_prefix: str = DEFAULT_PREFIX
    seed: int | None = None
    cmb_url: str | None = None  # submit every plan to this CMB (the VTN's base URL)
    cmb_key: PrivateKey | None = None  # the aggregator operator's key registered there
    devices_url: str | None = None  # an `adrgate devices` service; its workers run elsewhere


class _Outlet:
    def __init__(self, queue: DispatchQueue, scheduler: StepScheduler) -> None:
        self.queue = queue
        self.scheduler = scheduler

    async def enqueue(self, dispatch: Dispatch) -> None:
        await self.queue.enqueue(dispatch)

    def schedule(self, plan: Plan, device: Device) -> None:
        self.scheduler.schedule(plan, device)


class AggregatorSide:
    """Everything `run` starts is reachable from here once `ready` is set (tests look in)."""

    def __init__(self, spec: FleetSpec, engine: Engine, redis_url: str, *,
                 options: BridgeOptions = BridgeOptions(),
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.spec = spec
        self.fleet_store = FleetStore(engine)
        self.store = BridgeStore(engine)
        self.redis_url = redis_url
        self.options = options
        self.clock = clock
        self.devices = tuple(d for ven in spec.vens for d in devices_of(ven))
        self.ready = asyncio.Event()
        self.world: World  # in-process devices only
        self.physics: DeviceSide
        self.bridge: Bridge
        self.fleet: Fleet
        self.scheduler: StepScheduler

    async def run(self, stop: asyncio.Event) -> None:
        client = redis.asyncio.Redis.from_url(self.redis_url, socket_timeout=10)
        async with AsyncExitStack() as stack:
            stack.push_async_callback(client.aclose)
            reviewer = None
            if self.options.cmb_url is not None and self.options.cmb_key is not None:
                session = await stack.enter_async_context(aiohttp.ClientSession())
                reviewer = CmbReviewer(self.options.cmb_url, self.options.cmb_key, session,
                                       clock=self.clock)
            now = self.clock()
            if self.options.devices_url is None:
                self.world = await start_world(self.devices, stack, start=now,
                                               clock=self.clock, options=self.options.world)
                self.physics, drivers = self.world.physics, self.world.drivers
            else:
                self.physics, drivers = await self._remote(self.options.devices_url, stack,
                                                           now), {}
            queue = DispatchQueue(client, prefix=self.options.stream_prefix)
            self.scheduler = StepScheduler(queue.enqueue, clock=self.clock)
            self.scheduler.start()
            stack.callback(self.scheduler.shutdown)
            rebuilt = self.scheduler.rebuild(
                (r.plan, r.device) for r in self.store.plans(status=PlanStatus.DISPATCHED,
                                                              ending_after=now)
                if not r.device.takes_plans)
            self.bridge = Bridge(self.spec, self.store, _Outlet(queue, self.scheduler),
                                 self._views, self.physics.forecast, clock=self.clock,
                                 seed=self.options.seed,
                                 redispatch_every=self.options.redispatch_every,
                                 sample_every=self.options.sample_every, reviewer=reviewer)
            self.fleet = Fleet(self.spec, self.fleet_store, clock=self.clock,
                               telemetry=self.physics, seed=self.options.seed,
                               on_signals=self.bridge.on_signals)
            consumer = f"{socket.gethostname()}-{os.getpid()}"
            workers = [Worker(client, driver, f"{consumer}-{channel}",
                              prefix=self.options.stream_prefix,
                              max_attempts=self.options.max_attempts,
                              backoff=(self.options.retry_base, self.options.retry_cap))
                       for channel, driver in drivers.items()]
            reader = ResultReader(client, prefix=self.options.stream_prefix)
            log.info("bridge: %d devices on %s; %d step jobs rebuilt", len(self.devices),
                     ", ".join(sorted(drivers)) or "no channel here", rebuilt)
            # Readers of Redis end between blocking reads (cancelling one inside redis-py
            # can stall until the connection gives up); the bridge's own loop is cancelled.
            stopping = asyncio.Event()
            readers = [asyncio.create_task(w.run()) for w in workers]
            readers.append(asyncio.create_task(self._results(reader, stopping)))
            planner = asyncio.create_task(self.bridge.run())
            self.ready.set()
            try:
                await self.fleet.run(stop)
            finally:
                stopping.set()
                for w in workers:
                    w.stop()
                planner.cancel()
                with suppress(asyncio.CancelledError):
                    await planner
                await asyncio.gather(*readers, return_exceptions=True)

    def _views(self, devices: Sequence[Device],
               now: datetime) -> dict[str, DeviceView]:
        self.physics.advance(now)
        return self.physics.views([d.device_id for d in devices])

    async def _remote(self, url: str, stack: AsyncExitStack, now: datetime) -> RemoteDevices:
        """The devices service's first snapshot, then one every few seconds until `stack`
        closes. Raises aiohttp.ClientError, TimeoutError, SnapshotError."""
        session = await stack.enter_async_context(
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)))
        remote = RemoteDevices(url, self.devices, session, start=now)
        await remote.refresh()
        refresher = asyncio.create_task(remote.run())

        async def stop() -> None:
            refresher.cancel()
            with suppress(asyncio.CancelledError):
                await refresher
        stack.push_async_callback(stop)
        return remote

    async def _results(self, reader: ResultReader, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            batch = await reader.read()
            if batch:
                await self.bridge.on_results([result for _, result in batch])
                await reader.ack(*(entry_id for entry_id, _ in batch))
