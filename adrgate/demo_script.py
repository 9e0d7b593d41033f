"""The demo's scripted day: what the DSO, the CMB and an attacker do, and when (demo time).

| demo time | step |
|-----------|------|
| 23:50 (the day before) | day-ahead ELECTRICITY_PRICE event, 48 half-hourly prices, to every aggregator's VEN (routine DSR); the tariff's boundaries published to the CMB |
| 14:00 | the DSO notifies a constraint: LOAD_CONTROL capacity 50 % on the north area's resources, 17:00-19:00 (response DSR) |
| 18:00 | a grid-service window: LOAD_DISPATCH, shed 30 % of the home batteries' rating, 19:00-20:00 |
| 19:15 | a quarter of the dispatched devices fail; the bridge re-dispatches their share |
| 20:00 | the failed devices are repaired |
| 20:30 | the hot-water aggregator is compromised: it plans its whole fleet to switch at once, signed with its own key; the CMB's same-minute monitor catches it and caps every heater through the DCC (SRV 7.16 as Load Controller) |
| 23:00 | the CMB operator lifts the override: the aggregator's plans are in force again |
| 24:00 | end of the day: summary |
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar

import aiohttp

from bridge.channel import PLAN_PRIMACY
from bridge.models import Channel, Mode, Plan, PlanStep
from bridge.store import BridgeStore, PlanRecord
from ven.fleet import DeviceClass
from ven.records import Purpose
from vtn.cmb.records import OverrideStatus, Tariff

from .demo_stack import AREAS, FLEX, PRICES, Aggregator, DemoError, Stack

T = TypeVar("T")
HALF_HOUR: Final = timedelta(minutes=30)
# GB day-ahead shape, GBP/kWh from the given hour: cheap night, morning bump, solar dip, the
# 16:00-19:00 peak.
PRICE_SHAPE: Final = ((0, 0.10), (5, 0.14), (7, 0.24), (9, 0.18), (11, 0.11), (15, 0.20),
                      (16, 0.36), (19, 0.22), (22, 0.13))
CURRENCY: Final = {"kind": "currencyPerKWh", "description": "currencyPerKWh", "units": "GBP",
                   "si_scale": "none"}
KW: Final = {"kind": "powerReal", "description": "RealPower", "units": "W", "si_scale": "k",
             "hertz": 50, "voltage": 230, "ac": True}
CONSTRAINED: Final = AREAS[0]
CAPACITY: Final = 0.5  # the constraint's x-loadControlCapacity
SHED: Final = 0.3  # the dispatch asks this share of the dispatched devices' rated import
FAIL_SHARE: Final = 0.25
WAIT_S: Final = 60.0  # the longest a stage may take, real seconds


def prices() -> list[float]:
    out = []
    for i in range(48):
        hour = i / 2
        out.append(next(p for h, p in reversed(PRICE_SHAPE) if hour >= h))
    return out


@dataclass
class Step:
    at: timedelta  # from the day's start
    title: str
    run: Callable[[], Awaitable[str]]  # what happened, one line


@dataclass
class DayLog:
    """What the script did, for the summary: event ids by role, the attack, the failures."""

    events: dict[str, str] = field(default_factory=dict)  # role -> VTN event id
    failed: list[str] = field(default_factory=list)
    failed_at: datetime | None = None
    attack_plans: list[str] = field(default_factory=list)
    override_id: str | None = None
    lines: list[str] = field(default_factory=list)


def _vens(n: int) -> str:
    return f"{n} VEN" if n == 1 else f"{n} VENs"


async def until(check: Callable[[], T | None], what: str, timeout_s: float = WAIT_S) -> T:
    """Poll `check` until it returns something truthy, at most `timeout_s` real seconds.

    Raises:
        DemoError: it never did.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoError(f"{what}: not seen within {timeout_s:g} s")
        await asyncio.sleep(0.1)


class Day:
    """The scripted day over a running stack. `say` prints one progress line."""

    def __init__(self, stack: Stack, day: datetime, say: Callable[[str], None]) -> None:
        self.stack = stack
        self.day = day
        self.say = say
        self.log = DayLog()

    def steps(self) -> list[Step]:
        h = timedelta(hours=1)
        status = [Step(at=n * h, title="status", run=self.status) for n in (3, 6, 9, 12, 16, 22)]
        return sorted(status + [
            Step(at=-timedelta(minutes=10), title="day-ahead prices", run=self.price_event),
            Step(at=14 * h, title="DSO constraint", run=self.constraint_event),
            Step(at=18 * h, title="grid-service window", run=self.dispatch_event),
            Step(at=19 * h + timedelta(minutes=15), title="device failures", run=self.failures),
            Step(at=20 * h, title="devices repaired", run=self.repair),
            Step(at=20 * h + timedelta(minutes=30), title="compromised aggregator",
                 run=self.attack),
            Step(at=23 * h, title="override lifted", run=self.lift),
        ], key=lambda s: s.at)

    async def play(self, end: timedelta = timedelta(hours=24)) -> DayLog:
        for step in self.steps():
            await self.stack.clock.sleep_until(self.day + step.at)
            started = self.stack.clock()
            self._say(started, f"{step.title}: {await step.run()}")
        await self.stack.clock.sleep_until(self.day + end)
        self._say(self.stack.clock(), "end of the day")
        return self.log

    def _say(self, at: datetime, text: str) -> None:
        line = f"{self._time(at)}  {text}"
        self.log.lines.append(line)
        self.say(line)

    def _time(self, t: datetime) -> str:
        return "24:00" if t >= self.day + timedelta(days=1) else f"{t:%H:%M}"

    # --- DSO / operator actions ---------------------------------------------------------

    async def _create(self, body: dict[str, Any]) -> str:
        async with aiohttp.ClientSession() as session, \
                session.post(f"{self.stack.url}/api/events", json=body) as resp:
            answer = await resp.json()
            if resp.status != 201:
                raise DemoError(f"the VTN refused the event ({resp.status}): {answer}")
        return str(answer["event_id"])

    def _plans(self, role: str) -> dict[str, list[PlanRecord]]:
        event_id = self.log.events[role]
        return {a.name: BridgeStore(a.engine).plans(event_id=event_id)
                for a in self.stack.aggregators}

    async def _planned(self, role: str, done: Callable[[dict[str, list[PlanRecord]]], bool],
                       what: str) -> dict[str, list[PlanRecord]]:
        """Each aggregator's plans for the event, once `done` says they are all there."""
        def check() -> dict[str, list[PlanRecord]] | None:
            plans = self._plans(role)
            return plans if done(plans) else None
        return await until(check, what)

    def _acked(self, role: str) -> int:
        return sum(d.acked_mod >= 0 for d in
                   self.stack.vtn.deliveries_for_event(self.log.events[role]))

    def _all_acked(self, role: str) -> bool:
        return all(d.acked_mod >= 0 for d in
                   self.stack.vtn.deliveries_for_event(self.log.events[role]))

    async def price_event(self) -> str:
        values = prices()
        start = self.day
        tariff = Tariff(tariff_id=f"day-ahead-{start:%Y-%m-%d}",
                        boundaries=tuple(start + i * HALF_HOUR for i in range(49)))
        self.stack.cmb.add_tariff(tariff, "supplier", self.stack.clock())
        self.log.events["prices"] = await self._create({
            "market_context": PRICES, "dtstart": start.isoformat(),
            "targets": {"ven_ids": [a.ven_id for a in self.stack.aggregators]},
            "signals": [{"signal_name": "ELECTRICITY_PRICE", "signal_type": "price",
                         "item_base": CURRENCY,
                         "intervals": [{"duration": "PT30M", "payload": p} for p in values]}]})
        planned = await self._planned("prices", lambda p: all(p.values()),
                                      "the price event's plans on every aggregator")
        return (f"ELECTRICITY_PRICE, 48 half-hourly prices {min(values):.2f}-"
                f"{max(values):.2f} GBP/kWh to {_vens(len(planned))}; planned "
                + ", ".join(f"{n} {len({r.device.device_id for r in p})} devices"
                            for n, p in planned.items()))

    async def constraint_event(self) -> str:
        area = [r.resource_id for a in self.stack.aggregators for r in a.plan.resources
                if r.network_area == CONSTRAINED]
        start = self.day + timedelta(hours=17)
        self.log.events["constraint"] = await self._create({
            "market_context": FLEX, "dtstart": start.isoformat(),
            "targets": {"resource_ids": area},
            "signals": [{"signal_name": "LOAD_CONTROL", "signal_type": "x-loadControlCapacity",
                         "intervals": [{"duration": "PT2H", "payload": CAPACITY}]}]})
        devices = len(self._area_devices(CONSTRAINED))
        planned = await self._planned(
            "constraint", lambda p: sum(map(len, p.values())) >= devices
            and self._all_acked("constraint"),
            "the constraint's plans on every device of the area")
        areas = {r.device.network_area for p in planned.values() for r in p}
        return (f"LOAD_CONTROL capacity {CAPACITY:.0%} on area {CONSTRAINED}, 17:00-19:00: "
                f"{_vens(self._acked('constraint'))} answered, "
                f"{len({r.device.device_id for p in planned.values() for r in p})} devices "
                f"planned, all in {'/'.join(sorted(areas))}")

    def _area_devices(self, area: str) -> list[str]:
        return [d.device_id for a in self.stack.aggregators for d in a.devices
                if d.network_area == area]

    def _dispatched(self) -> list[Aggregator]:
        return [a for a in self.stack.aggregators
                if any(d.device_class is DeviceClass.BATTERY for d in a.devices)]

    async def dispatch_event(self) -> str:
        aggs = self._dispatched()
        resources = [r.resource_id for a in aggs for r in a.plan.resources
                     if r.device_class is DeviceClass.BATTERY]
        rated = sum(r.rated_kw for a in aggs for r in a.plan.resources
                    if r.resource_id in resources)
        shed = round(SHED * rated, 1)
        self.log.events["dispatch"] = await self._create({
            "market_context": FLEX, "dtstart": (self.day + timedelta(hours=19)).isoformat(),
            "targets": {"resource_ids": resources},
            "signals": [{"signal_name": "LOAD_DISPATCH", "signal_type": "delta",
                         "item_base": KW, "intervals": [{"duration": "PT1H", "payload": -shed}]}]})
        planned = await self._planned("dispatch", lambda p: all(p[a.name] for a in aggs),
                                      "the dispatch's plans")
        devices = len({r.device.device_id for p in planned.values() for r in p})
        return (f"LOAD_DISPATCH shed {shed:g} kW, 19:00-20:00, to {_vens(len(aggs))}: "
                f"{devices} devices planned")

    async def failures(self) -> str:
        aggs = self._dispatched()
        devices = [d for a in aggs for d in a.devices if d.device_class is DeviceClass.BATTERY]
        count = max(1, round(FAIL_SHARE * len(devices)))
        failed = devices[::max(1, len(devices) // count)][:count]
        now = self.stack.clock()
        for d in failed:
            next(a for a in aggs if d in a.devices).side.world.physics.fail(d.device_id)
        self.log.failed = [d.device_id for d in failed]
        self.log.failed_at = now

        def redispatched() -> list[PlanRecord] | None:
            latest: dict[str, PlanRecord] = {}
            for r in sorted((r for p in self._plans("dispatch").values() for r in p),
                            key=lambda r: r.plan.sequence):
                latest[r.device.device_id] = r
            withdrawn = all(not latest[d].requested_kw for d in self.log.failed if d in latest)
            revised = [r for d, r in latest.items()
                       if d not in self.log.failed and r.created >= now and r.requested_kw]
            return revised if withdrawn and revised else None

        revised = await until(redispatched, "a re-dispatch after the failures")
        return (f"{len(failed)} of {len(devices)} dispatched batteries went offline; "
                f"re-dispatched: their shares withdrawn, {len(revised)} others now deliver "
                f"{-sum(r.requested_kw or 0.0 for r in revised):.1f} kW")

    async def repair(self) -> str:
        for a in self._dispatched():
            for device_id in self.log.failed:
                if any(d.device_id == device_id for d in a.devices):
                    a.side.world.physics.recover(device_id)
        return f"{len(self.log.failed)} devices back online"

    async def attack(self) -> str:
        agg = self.stack.aggregator("hot-water")
        devices = agg.devices
        start = (self.stack.clock() + timedelta(minutes=30)).replace(second=0, microsecond=0)
        # A compromised aggregator is its bridge: the plans take the bridge's next sequence
        # numbers and its path (signed with its key, judged by the CMB, sent through its DCC
        # access), so the CMB sees plausible plans and the bridge's later plans still follow.
        bridge = agg.side.bridge
        # Off in one minute, on in one minute: whatever each heater was doing, it swings.
        attack = [Plan(
            plan_id=f"attack/{d.device_id}", device_id=d.device_id,
            sequence=bridge.next_sequence(d.device_id), issuer=agg.name,
            purpose=Purpose.ROUTINE, priority=0, random_delay=timedelta(seconds=1),
            event_id=None, steps=(
                PlanStep(mode=Mode.LIMIT, start=start, end=start + HALF_HOUR, level=0),
                PlanStep(mode=Mode.LIMIT, start=start + HALF_HOUR, end=start + 3 * HALF_HOUR,
                         level=100)))
            for d in devices]
        self.log.attack_plans = [p.plan_id for p in attack]
        await bridge.send(attack)
        cmb = self.stack.cmb
        alert = (await until(lambda: [a for a in cmb.store.alerts(aggregator=agg.name)
                                      if a.monitor == "same_minute_share"],
                             "the CMB's same-minute alert"))[-1]
        entry = await until(lambda: next(iter(cmb.overrides(OverrideStatus.ACTIVE)), None),
                            "the automatic override")
        self.log.override_id = entry.override.override_id
        book = agg.side.world.book
        during = start + timedelta(minutes=45)  # the attack's "all on" half hour
        sapc = [d for d in devices if d.channel is Channel.SAPC]
        await until(lambda: all((sp := book.setpoint(d.device_id, during)) is not None
                                and sp.level == 0 for d in sapc),
                    "every heater capped at 0 % through the DCC")
        def applied() -> tuple[Any, ...] | None:
            stored = cmb.store.override(entry.override.override_id)
            return stored.results if stored and len(stored.results) >= 2 else None

        results = await until(applied, "the override's path results (OpenADR and SAPC)")
        paths = {r["path"]: r for r in results}
        return (f"{agg.name} plans {len(devices)} heaters off at {self._time(start)} and on at "
                f"{self._time(start + HALF_HOUR)}; CMB alert {alert.monitor} "
                f"({alert.value:g} > {alert.threshold:g}); override {entry.override.level} % "
                f"applied: SAPC path reached {len(paths['sapc']['reached'])}/{len(sapc)} "
                f"heaters (SRV 7.16 via the DCC), OpenADR path "
                f"{'ok' if paths['openadr']['ok'] else 'failed'}")

    async def lift(self) -> str:
        if self.log.override_id is None:
            raise DemoError("no override to lift")
        entry = await self.stack.cmb.lift(self.log.override_id, "operator", self.stack.clock())
        agg = self.stack.aggregator("hot-water")
        book = agg.side.world.book
        later = self.stack.clock() + timedelta(minutes=30)
        await until(lambda: all((c := book.active(d.device_id, later)) is None
                                or c.primacy >= PLAN_PRIMACY for d in agg.devices),
                    "no heater capped any more")
        return (f"override {entry.override.override_id[:8]} {entry.override.status} through "
                f"the DCC (ECS102) and its OpenADR event cancelled; {len(agg.devices)} heaters "
                f"follow their aggregator's plans again")

    async def status(self) -> str:
        now = self.stack.clock()
        index = int((now - self.day) / HALF_HOUR)
        price = prices()[min(index, 47)]
        parts = []
        for a in self.stack.aggregators:
            physics = a.side.world.physics
            physics.advance(now)
            kw = sum(physics.telemetry(d.device_id).power_kw for d in a.devices)
            parts.append(f"{a.name} {kw:.1f} kW")
        return f"price {price:.2f} GBP/kWh; import " + ", ".join(parts)

