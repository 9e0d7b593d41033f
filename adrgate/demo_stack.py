"""Everything `adrgate demo` runs, in one process on one event loop: the VTN with its CMB (the
same application `adrgate vtn` serves), three aggregators (`AggregatorSide`: VEN fleet, bridge,
channel workers, simulated devices), all on one accelerated demo clock.

Accelerated time: every component that asks the time asks `DemoClock`, which runs `speed` times
faster than the wall clock. Event times, plans, the devices' physics, the CMB's windows and its
override timings are all in demo time; network round trips, polls and channel latencies stay
real, so at 900x a one-second poll is 15 demo minutes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

import redis.asyncio
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine

from bridge.models import Channel, Device
from bridge.sapc import SapcDriver
from bridge.sim.dcc import REALISTIC, Latency
from bridge.sim.world import WorldOptions
from ven.fleet import DeviceClass, FleetSpec, ResourceSpec, VenSpec
from vtn.api import OPERATOR
from vtn.app import VtnDeps, make_app
from vtn.cmb.api import cmb_beside
from vtn.cmb.override import (
    CMB_PROGRAM,
    OpenAdrPath,
    OverrideExecutor,
    PathName,
    PathOutcome,
    SapcPath,
)
from vtn.cmb.records import DeviceRegistration, Override
from vtn.cmb.service import Cmb, CmbConfig
from vtn.cmb.signing import public_pem
from vtn.cmb.store import AggregatorProfile
from vtn.handlers import VtnConfig
from vtn.store import VtnStore

from .bridgeproc import AggregatorSide, BridgeOptions
from .replay import RedisReplayCache
from .services import EmbeddedRedis, ServiceError, make_engine

PRICES: Final = "http://dso.example/programs/day-ahead-prices"  # routine DSR
FLEX: Final = "http://dso.example/programs/flexibility"  # an enrolled grid service: response DSR
CMB_EUI: Final = "00-CB-00-00-00-00-00-01"  # the CMB's own DCC user (Load Controller)
AREAS: Final = ("north", "south")
VTN_ID: Final = "DSO-VTN"
# A critical SAPC command: request and signed pre-command, each user-DCC both ways; the second
# also DCC-device both ways (22 s with the realistic latency).
DCC_COMMAND_S: Final = 4 * REALISTIC.user_dcc + 2 * REALISTIC.dcc_device
EV_DEPARTURE: Final = timedelta(hours=21)  # from the day's start
EV_NEED: Final = 0.6  # of the battery, by departure


class DemoError(RuntimeError):
    """A stage of the demo failed; the message says which and what to do."""


class DemoClock:
    """Demo time: `speed` times the wall clock from an anchor. Changing the speed re-anchors, so
    demo time never jumps."""

    def __init__(self, start: datetime, speed: float = 1.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._at = start
        self._real = monotonic()
        self.speed = speed

    def __call__(self) -> datetime:
        return self._at + timedelta(seconds=(self._monotonic() - self._real) * self.speed)

    def set_speed(self, speed: float) -> None:
        self._at, self._real, self.speed = self(), self._monotonic(), speed

    def real_seconds(self, demo: timedelta) -> float:
        return demo.total_seconds() / self.speed

    async def sleep_until(self, when: datetime) -> None:
        """Sleep until demo time `when` (at most a few real seconds per wake, so a speed change
        is honoured)."""
        for _ in range(100_000):
            left = self.real_seconds(when - self())
            if left <= 0:
                return
            await asyncio.sleep(min(left, 1.0))


@dataclass(frozen=True, slots=True)
class AggregatorPlan:
    """One aggregator of the demo: its VEN's name, what its fleet is, and its resources."""

    name: str
    title: str
    resources: tuple[ResourceSpec, ...]


def aggregators(devices: int) -> tuple[AggregatorPlan, ...]:
    """The three aggregators for `devices` devices per fleet (the EV operator has half), each
    split evenly between the two network areas."""
    half, quarter = devices // 2, max(1, devices // 4)

    def group(rid: str, cls: DeviceClass, n: int, kw: float, base: float, flex: float,
              area: str, export_kw: float = 0.0) -> ResourceSpec:
        """`n` devices in `area`, each rated `kw`, drawing `base`, movable by `flex`."""
        return ResourceSpec(resource_id=f"{rid}-{area}", device_class=cls, devices=n,
                            rated_kw=kw * n, baseline_kw=base * n, flexible_kw=flex * n,
                            network_area=area, export_kw=export_kw * n)

    return (
        AggregatorPlan("battery-pv", "home batteries (hub API) + PV diverters (SAPC)", tuple(
            r for area in AREAS for r in (
                group("batteries", DeviceClass.BATTERY, quarter, 5.0, 0.5, 4.5, area,
                      export_kw=5.0),
                group("pv-diverters", DeviceClass.HOT_WATER, quarter, 3.0, 1.0, 2.0, area)))),
        AggregatorPlan("ev-cpo", "EV charge points (OCPP 1.6J)", tuple(
            group("chargers", DeviceClass.EV, quarter, 7.4, 3.0, 4.4, area) for area in AREAS)),
        AggregatorPlan("hot-water", "immersion heaters (SAPC via the DCC)", tuple(
            group("heaters", DeviceClass.HOT_WATER, half, 3.0, 1.0, 2.0, area)
            for area in AREAS)),
    )


class DccPaths:
    """The CMB's smart-metering override path over every aggregator's DCC simulator (each
    aggregator process simulates its own; in GB there is one DCC): a device goes through the
    DCC its owner's SAPCs hang off."""

    name: PathName = "sapc"

    def __init__(self, by_owner: dict[str, SapcPath]) -> None:
        self._by_owner = by_owner

    async def apply(self, override: Override, devices: Sequence[DeviceRegistration]
                    ) -> PathOutcome:
        return await self._each(override, devices, "apply")

    async def lift(self, override: Override, devices: Sequence[DeviceRegistration]
                   ) -> PathOutcome:
        return await self._each(override, devices, "lift")

    async def aclose(self) -> None:
        for path in self._by_owner.values():
            await path.aclose()

    async def _each(self, override: Override, devices: Sequence[DeviceRegistration],
                    action: str) -> PathOutcome:
        sapc = [d for d in devices if d.channel is Channel.SAPC]
        out = PathOutcome()
        groups = {owner: [d for d in sapc if d.owner == owner] for owner in self._by_owner}
        outcomes = await asyncio.gather(*(
            getattr(self._by_owner[owner], action)(override, group)
            for owner, group in groups.items() if group))
        for o in outcomes:
            out.reached += o.reached
            out.failed |= o.failed
            out.messages += o.messages
            out.error = out.error or o.error
        for d in sapc:
            if d.owner not in self._by_owner:
                out.failed[d.device_id] = f"no DCC reaches {d.owner}'s SAPCs"
        out.detail = f"{len(out.reached)} SAPCs through {len(outcomes)} DCC(s)"
        return out


@dataclass
class Aggregator:
    plan: AggregatorPlan
    spec: FleetSpec
    side: AggregatorSide
    engine: Engine
    key: ec.EllipticCurvePrivateKey
    ven_id: str = ""

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def devices(self) -> tuple[Device, ...]:
        return self.side.devices


@dataclass
class Stack:
    clock: DemoClock
    url: str
    data_dir: Path
    vtn: VtnStore
    cmb: Cmb
    redis_url: str
    aggregators: list[Aggregator] = field(default_factory=list)

    def aggregator(self, name: str) -> Aggregator:
        return next(a for a in self.aggregators if a.name == name)


def vtn_db(data_dir: Path) -> str:
    return f"sqlite:///{data_dir.absolute() / 'vtn.db'}"


def aggregator_db(data_dir: Path, name: str) -> str:
    return f"sqlite:///{data_dir.absolute() / f'{name}.db'}"


@asynccontextmanager
async def running_stack(data_dir: Path, *, port: int, devices: int, clock: DemoClock,
                        speed: float, day: datetime, poll_s: int = 1) -> AsyncIterator[Stack]:
    """Start Redis, the VTN with the CMB on 127.0.0.1:`port`, and the three aggregators with
    their devices registered at the CMB; stop everything on exit. `speed` is the demo clock's
    speed while the day plays: what real-time latencies and periods are scaled by. The EVs are
    plugged in from the start and leave at 21:00 on `day`, wanting EV_NEED of their battery.

    Raises:
        DemoError: the port is taken, or a service did not come up.
    """
    async with AsyncExitStack() as stack:
        # on a loopback port: a unix socket path under a deep --data-dir may be too long
        embedded = EmbeddedRedis(data_dir / "redis", tcp=True, persist=False)
        try:
            embedded.start()
        except (ServiceError, ValueError, OSError) as exc:
            raise DemoError(f"the embedded redis-server did not start: {exc}") from None
        stack.callback(embedded.stop)
        client = redis.asyncio.Redis.from_url(embedded.url)
        stack.push_async_callback(client.aclose)

        store = VtnStore(make_engine(vtn_db(data_dir)))
        store.create_schema()
        stack.callback(store.close)
        store.save_program(FLEX, "grid services (constraint management, dispatch)")
        store.save_program(CMB_PROGRAM, "CMB control overrides")
        # Telemetry every demo quarter hour: about one report per real second at 900x.
        deps = VtnDeps(store=store, replay=RedisReplayCache(client), clock=clock,
                       config=VtnConfig(vtn_id=VTN_ID, poll_freq=timedelta(seconds=poll_s),
                                        report_granularity=timedelta(minutes=15)))
        # Monitors tick every demo minute.
        cmb = cmb_beside(store, now=clock(), config=CmbConfig(
            tick_every=timedelta(seconds=max(0.05, 60 / speed))))
        app = make_app(deps, cmb)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        try:
            await web.TCPSite(runner, "127.0.0.1", port).start()
        except OSError as exc:
            raise DemoError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror or exc}); "
                            f"is another adrgate running? Choose another port with "
                            f"--port") from None
        url = f"http://127.0.0.1:{port}"
        out = Stack(clock=clock, url=url, data_dir=data_dir, vtn=store, cmb=cmb,
                    redis_url=embedded.url)

        cmb_key = ec.generate_private_key(ec.SECP256R1())
        stop = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        for i, plan in enumerate(aggregators(devices)):
            out.aggregators.append(await _start(out, plan, i, cmb_key, speed, stop, tasks,
                                                stack, departure=day + EV_DEPARTURE))

        paths = {a.name: SapcPath(SapcDriver(user_eui=CMB_EUI, key=cmb_key,
                                             dcc_url=a.side.world.dcc.url, clock=clock))
                 for a in out.aggregators if a.side.world.dcc is not None}
        executor = OverrideExecutor(openadr=OpenAdrPath(app[OPERATOR], clock=clock), clock=clock)
        executor.paths += (DccPaths(paths),)
        stack.push_async_callback(executor.aclose)
        cmb.executor = executor
        await _registered(out)
        try:
            yield out
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)


async def _start(out: Stack, plan: AggregatorPlan, index: int,
                 cmb_key: ec.EllipticCurvePrivateKey, speed: float, stop: asyncio.Event,
                 tasks: list[asyncio.Task[None]], stack: AsyncExitStack, *,
                 departure: datetime) -> Aggregator:
    key = ec.generate_private_key(ec.SECP256R1())
    out.cmb.register_aggregator(AggregatorProfile(
        aggregator=plan.name, public_key=public_pem(key),
        auto_response=("same_minute_share",), override_level=0), "demo", out.clock())
    ven = VenSpec(name=plan.name, vtn_url=f"{out.url}/OpenADR2/Simple/2.0b",
                  market_contexts=(PRICES, FLEX, CMB_PROGRAM),
                  response_programs=(FLEX, CMB_PROGRAM),
                  poll_interval=timedelta(seconds=1), report_min_period=timedelta(minutes=1),
                  resources=plan.resources)
    spec = FleetSpec(vens=(ven,))
    engine = make_engine(aggregator_db(out.data_dir, plan.name))
    stack.callback(engine.dispose)
    options = BridgeOptions(
        # The DCC's realistic latency, on the demo clock.
        world=WorldOptions(dcc_latency=Latency(user_dcc=REALISTIC.user_dcc / speed,
                                               dcc_device=REALISTIC.dcc_device / speed),
                           seed=index, channel_timeout_s=10.0,
                           inverter_poll_s=1.0, meter_interval_s=5.0,
                           dcc_load_controllers=((CMB_EUI, cmb_key.public_key()),)),
        redispatch_every=timedelta(minutes=5), sample_every=timedelta(minutes=5),
        retry_base=timedelta(seconds=0.2), retry_cap=timedelta(seconds=2), seed=index,
        stream_prefix=f"demo-{plan.name}", cmb_url=out.url, cmb_key=key)
    side = AggregatorSide(spec, engine, out.redis_url, options=options, clock=out.clock)
    # The fleet file has no EV sessions: the simulated EVs get theirs here, before they start.
    side.devices = tuple(
        dataclasses.replace(d, departure=departure, departure_energy_kwh=EV_NEED * d.capacity_kwh)
        if d.device_class is DeviceClass.EV else d for d in side.devices)
    task = asyncio.create_task(side.run(stop))
    tasks.append(task)
    ready = asyncio.create_task(side.ready.wait())
    await asyncio.wait([task, ready], timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        exc = task.exception()
        raise DemoError(f"aggregator {plan.name} did not start: {exc!r}")
    if not ready.done():
        ready.cancel()
        raise DemoError(f"aggregator {plan.name} did not start within 60 s")
    return Aggregator(plan=plan, spec=spec, side=side, engine=engine, key=key)


async def _registered(out: Stack, timeout_s: float = 60.0) -> None:
    """Wait for every VEN's registration, then register its devices at the CMB."""
    names = {a.name for a in out.aggregators}
    deadline = time.monotonic() + timeout_s
    while True:
        vens = {v.ven_name: v.ven_id for v in out.vtn.list_vens() if v.is_registered}
        if names <= vens.keys():
            break
        if time.monotonic() > deadline:
            raise DemoError(f"VENs not registered within {timeout_s:g} s: "
                            f"{sorted(names - vens.keys())}")
        await asyncio.sleep(0.1)
    registry = []
    for a in out.aggregators:
        a.ven_id = vens[a.name]
        registry += [DeviceRegistration(
            device_id=d.device_id, owner=a.name, device_class=d.device_class,
            network_area=d.network_area, channel=d.channel, reach=d.reach,
            rated_import_kw=d.rated_import_kw, rated_export_kw=d.rated_export_kw,
            ven_id=a.ven_id, resource_id=d.resource_id) for d in a.devices]
    out.cmb.put_devices(registry, "demo", out.clock())
