"""The CMB scenario suite: normal days and attacks in simulated time, judged by the CMB's inline
rules and fleet monitors (issue 5, Evaluation).

    python -m bench.cmb_scenarios [--aggregators 3] [--devices 2000] [--areas 4] [--normal-days 7]
                                  [--seed 1] [--prognosis-minutes 30] [--monitor FIELD=VALUE]
                                  [--sapc-concurrency all,8] [--dcc-per-minute N]
                                  [--json FILE]

Fleet: `--aggregators` aggregators of `--devices` devices each, spread over `--areas` network
areas; a third each hot-water heaters (3 kW, behind a SAPC), home batteries (5 kW import and
export, 5 kW/min ramp, IEEE 2030.5) and EV charge points (7 kW, behind a SAPC: proposal 1 puts
every qualifying device behind one).

A normal day (one seed; nothing reads the wall clock):
- Agile-like prices: 48 half-hourly prices (cheap overnight, peak 16:00-19:00, noise), published
  as a `Tariff` the CMB knows. 70 % of devices follow them: heaters and EVs charge in their
  cheapest 3-10 slots at 50-100 % of rated, batteries also discharge in their 2-4 dearest. Their
  day-ahead plans are submitted between 17:00 and 17:30 the day before, each with a routine
  random delay of 1-600 s: correlated switching, but at tariff boundaries.
- Users' own schedules: the other 30 % run a daily timer at a minute of the user's choosing
  (heaters 1-3 h from 04:00-08:00, EVs from 17:00-23:00, batteries self-consume); 30 % of
  heaters and EVs are also boosted once by their user (EVs around 18:00, sd 45 min; heaters
  06:00-22:00) for 1-3 h, submitted 10 s-3 min before, random delay 1-120 s.
- A grid-service dispatch: one hour between 16:00 and 18:30 (a `DispatchWindow` for one
  aggregator, known day-ahead); half its batteries and EVs get response-DSR plans (no random
  delay: batteries discharge at rated, EVs hold) submitted 5-60 s before the window, and a routine
  plan resuming their schedule (random delay 1-600 s) from the window's end.
- A staged firmware roll-out: one aggregator re-plans 25 % of its devices, spread evenly over
  08:00-20:00 (about 2 % of its fleet per hour): each holds 5 min (reboot) then resumes.
- Each aggregator's `Prognosis` per area (half-hourly means for the day, known day-ahead): its
  day-ahead and dispatch plans exactly, users and the roll-out as the mean of
  `--forecast-draws` independent draws of the same behaviour (an aggregator knows its plans, and
  its users only statistically).

Attacks, each injected into a normal day (seed = `--seed` + its index) at a known time:
- compromise (a): an aggregator re-plans 100 % of its fleet within one minute to full import,
  all starting in the same minute (random delay 1 s, the least the rule accepts);
- compromise_at_boundary (a'): the same, but starting exactly on a tariff boundary;
- firmware_flip (b): an aggregator's batteries, while charging overnight, are re-planned over
  two minutes with every charge step turned into a discharge;
- slow_ramp (c): an aggregator moves 1 % of its fleet per minute to full import for two hours
  (random delay 1-600 s): under the same-minute share and its MW/min cap, away from its prognosis;
- replay (d): 10 % of an aggregator's day-ahead plans re-sent within one minute, unchanged
  (earlier sequence numbers);
- cap_exceeded (e): an aggregator moves its whole fleet to full import spread over 8 minutes by
  random delays (12.5 % per minute, under the same-minute share), stepping about twice its
  MW/min cap.

The evaluator feeds every submission in order of receipt through `policies.cmb_rules.check_plan`
(its `PlanContext` tracks the last accepted sequence and power per device), the accepted ones'
`state_changes` into `FleetMonitors.observe`, and calls `FleetMonitors.tick` every simulated
minute. Thresholds: `MonitorConfig`'s defaults (or `--monitor FIELD=VALUE`), with per-aggregator
caps of `--cap-share` of the fleet's rated import per minute and per-area headroom of
`--headroom-share` of the area's rated import. An alert or rejection is caused by the attack
when it is a rejection of an attack plan, or it names the attacker (or an attacked device) and
comes after the attack's first submission; an area alert then counts as caused too when the
attack reaches that area. Everything else is false.

Time to detect: from the attack's first submission to the first rejection of an attack plan or
alert naming the attacker. Time until capped: detection plus the DCC round trip of a critical
command at `bridge.sim.dcc.REALISTIC` (4 x user_dcc + 2 x dcc_device = 22 s) for the first device;
for all the attacker's SAPC devices, `--sapc-concurrency` commands in flight (as
`vtn.cmb.override.SapcPath`) and at most `--dcc-per-minute` requests per rolling minute (the DCC
throttle; default none). A plan refused inline is never dispatched: nothing to cap. 2030.5
inverters take the override on their next poll, not modelled here.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import heapq
import itertools
import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Final

from bench.results import publish
from bridge.models import Channel, Device, Mode, Plan, PlanStep
from bridge.sim.dcc import REALISTIC
from policies.cmb_monitors import FleetMonitors, MonitorConfig
from policies.cmb_rules import PlanContext, check_plan, state_changes
from ven.fleet import DeviceClass
from ven.records import Purpose
from vtn.cmb.records import (
    DeviceRegistration,
    DispatchWindow,
    PlanSubmission,
    Prognosis,
    StateChange,
    Tariff,
)

DAY: Final = datetime(2026, 12, 1, tzinfo=UTC)  # the simulated day every scenario plays
SLOT: Final = timedelta(minutes=30)
MINUTE: Final = timedelta(minutes=1)
DCC_ROUND_TRIP: Final = timedelta(seconds=4 * REALISTIC.user_dcc + 2 * REALISTIC.dcc_device)
DETECT_TARGET: Final = timedelta(minutes=2)
DISPATCH_PROGRAM: Final = "dfs"
TARIFF_PROGRAM: Final = "agile"
# class, channel, rated import, rated export, ramp kW/min
_KINDS: Final = ((DeviceClass.HOT_WATER, Channel.SAPC, 3.0, 0.0, None),
                 (DeviceClass.BATTERY, Channel.IEEE_2030_5, 5.0, 5.0, 5.0),
                 (DeviceClass.EV, Channel.SAPC, 7.0, 0.0, None))
_PRICE_SHAPE: Final = (9, 8, 8, 7, 7, 7, 6, 6, 6, 7, 8, 9, 12, 15, 18, 19, 18, 17, 16, 15, 15, 14,
                       14, 14, 13, 13, 14, 15, 16, 18, 21, 24, 33, 36, 38, 37, 35, 30, 24, 21,
                       19, 18, 17, 15, 14, 12, 11, 10)  # p/kWh per half hour, Agile-like


# --- the fleet

@dataclass(frozen=True, slots=True, kw_only=True)
class FleetSpec:
    aggregators: int = 3
    devices: int = 2000  # per aggregator
    areas: int = 4

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f"agg-{a}" for a in range(self.aggregators))


def registry(spec: FleetSpec) -> dict[str, DeviceRegistration]:
    regs = {}
    for agg in spec.names:
        for i in range(spec.devices):
            cls, channel, rated, export, ramp = _KINDS[i % len(_KINDS)]
            device_id = f"{agg}-d{i}"
            regs[device_id] = DeviceRegistration(
                device_id=device_id, owner=agg, device_class=cls,
                network_area=f"area-{i % spec.areas}", channel=channel, reach=f"{device_id}.reach",
                rated_import_kw=rated, rated_export_kw=export, max_ramp_kw_per_min=ramp,
                ven_id=f"ven-{agg}", resource_id=f"{agg}-fleet")
    return regs


def declared(reg: DeviceRegistration) -> Device:
    """The device as its aggregator declares it in a submission (honestly)."""
    return Device(device_id=reg.device_id, resource_id=reg.resource_id or reg.owner,
                  device_class=reg.device_class, channel=reg.channel,
                  network_area=reg.network_area, address=reg.reach,
                  rated_import_kw=reg.rated_import_kw, rated_export_kw=reg.rated_export_kw,
                  capacity_kwh=10.0 if reg.device_class is DeviceClass.BATTERY else 0.0,
                  max_ramp_kw_per_min=reg.max_ramp_kw_per_min)


def monitor_config(regs: Mapping[str, DeviceRegistration], *, cap_share: float,
                   headroom_share: float) -> MonitorConfig:
    """Defaults, with each aggregator's MW/min cap and each area's headroom from the registry."""
    by_owner: dict[str, float] = {}
    by_area: dict[str, float] = {}
    for r in regs.values():
        by_owner[r.owner] = by_owner.get(r.owner, 0.0) + r.rated_import_kw
        by_area[r.network_area] = by_area.get(r.network_area, 0.0) + r.rated_import_kw
    return MonitorConfig(
        aggregator_cap_mw={a: cap_share * kw / 1000 for a, kw in by_owner.items()},
        area_headroom_kw={a: headroom_share * kw for a, kw in by_area.items()})


# --- a device's day: piecewise-constant (mode, kW) from the day's start

class _Schedule:
    __slots__ = ("points",)

    def __init__(self, mode: Mode, kw: float) -> None:
        self.points: list[tuple[datetime, Mode, float]] = [(DAY, mode, kw)]

    def copy(self) -> _Schedule:
        other = _Schedule(Mode.HOLD, 0.0)
        other.points = list(self.points)
        return other

    def at(self, t: datetime) -> tuple[Mode, float]:
        i = bisect.bisect_right(self.points, t, key=lambda p: p[0]) - 1
        _, mode, kw = self.points[max(i, 0)]
        return mode, kw

    def overlay(self, start: datetime, end: datetime, mode: Mode, kw: float) -> None:
        after = self.at(end)
        kept = [p for p in self.points if not start <= p[0] <= end]
        self.points = sorted(kept + [(start, mode, kw), (end, *after)], key=lambda p: p[0])

    def steps(self, start: datetime, end: datetime = DAY + timedelta(days=1)
              ) -> tuple[PlanStep, ...]:
        cuts = [start] + [p[0] for p in self.points if start < p[0] < end] + [end]
        out: list[PlanStep] = []
        for a, b in itertools.pairwise(cuts):
            mode, kw = self.at(a)
            power = kw if mode in (Mode.CHARGE, Mode.DISCHARGE) else None
            if out and out[-1].mode is mode and out[-1].power_kw == power:
                out[-1] = dataclasses.replace(out[-1], end=b)
            else:
                out.append(PlanStep(mode=mode, start=a, end=b, power_kw=power))
        return tuple(out)


def _at_minute(start: datetime, rng: random.Random, lo_h: float, hi_h: float) -> datetime:
    return start + timedelta(minutes=rng.randint(int(lo_h * 60), int(hi_h * 60)))


def _seconds(rng: random.Random, lo: float, hi: float) -> timedelta:
    return timedelta(seconds=rng.randint(int(lo), int(hi)))


def _submission(reg: DeviceRegistration, steps: tuple[PlanStep, ...], received: datetime,
                delay: timedelta, tag: str, *, purpose: Purpose = Purpose.ROUTINE,
                event_id: str | None = None, program: str | None = TARIFF_PROGRAM
                ) -> PlanSubmission:
    """Sequence 0: `_sequenced` numbers a device's plans in order of receipt."""
    plan = Plan(plan_id=f"{reg.device_id}:{tag}", device_id=reg.device_id, sequence=0,
                issuer=reg.owner, purpose=purpose, priority=0, steps=steps, random_delay=delay,
                event_id=event_id)
    return PlanSubmission(aggregator=reg.owner, plan=plan, device=declared(reg), program=program,
                          received=received)


def _sequenced(subs: Iterable[PlanSubmission]) -> tuple[PlanSubmission, ...]:
    ordered = sorted(subs, key=lambda s: (s.received, s.plan.plan_id))
    counters: dict[str, int] = {}
    out = []
    for s in ordered:
        n = counters[s.plan.device_id] = counters.get(s.plan.device_id, 0) + 1
        out.append(dataclasses.replace(s, plan=dataclasses.replace(s.plan, sequence=n)))
    return tuple(out)


# --- a normal day

@dataclass(frozen=True, slots=True)
class _Habits:
    """What a device does on the day, drawn from the day's seed (the aggregator knows it)."""

    follower: bool
    slots: int  # cheapest slots it charges in (followers)
    share: float  # of rated import when charging
    discharge_slots: int  # dearest slots a battery discharges in (followers)
    timer: datetime  # own schedule start (non-followers)
    timer_hours: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Day:
    seed: int
    spec: FleetSpec
    registry: Mapping[str, DeviceRegistration]
    submissions: tuple[PlanSubmission, ...]  # in order of receipt, sequenced
    tariff: Tariff
    window: DispatchWindow
    prognoses: tuple[Prognosis, ...]
    rollout: str  # the aggregator rolling out firmware


def prices(rng: random.Random) -> list[float]:
    return [p * rng.uniform(0.85, 1.15) + rng.gauss(0, 1.0) for p in _PRICE_SHAPE]


def _habits(reg: DeviceRegistration, rng: random.Random) -> _Habits:
    if reg.device_class is DeviceClass.HOT_WATER:
        timer = _at_minute(DAY, rng, 4, 8)
    elif reg.device_class is DeviceClass.EV:
        timer = _at_minute(DAY, rng, 17, 23)
    else:
        timer = DAY
    return _Habits(follower=rng.random() < 0.7, slots=rng.randint(3, 10),
                   share=rng.uniform(0.5, 1.0), discharge_slots=rng.randint(2, 4),
                   timer=timer, timer_hours=rng.randint(1, 3))


def _day_ahead(reg: DeviceRegistration, h: _Habits, price: Sequence[float]) -> _Schedule:
    battery = reg.device_class is DeviceClass.BATTERY
    schedule = _Schedule(Mode.BALANCE if battery and not h.follower else Mode.HOLD, 0.0)
    if h.follower:
        order = sorted(range(len(price)), key=price.__getitem__)
        for i in order[:h.slots]:
            schedule.overlay(DAY + i * SLOT, DAY + (i + 1) * SLOT, Mode.CHARGE,
                             round(h.share * reg.rated_import_kw, 2))
        for i in order[-h.discharge_slots:] if battery else ():
            schedule.overlay(DAY + i * SLOT, DAY + (i + 1) * SLOT, Mode.DISCHARGE,
                             round(h.share * reg.rated_export_kw, 2))
    elif not battery:
        end = min(h.timer + timedelta(hours=h.timer_hours), DAY + timedelta(days=1))
        schedule.overlay(h.timer, end, Mode.CHARGE, reg.rated_import_kw)
    return schedule


def _plans(regs: Mapping[str, DeviceRegistration], habits: Mapping[str, _Habits],
           price: Sequence[float], window: DispatchWindow, enrolled: frozenset[str],
           rollout: str, rng: random.Random) -> list[PlanSubmission]:
    """Every plan of the day: day-ahead (from the day's habits) and what `rng` draws (users'
    boosts and the firmware roll-out's timing)."""
    subs: list[PlanSubmission] = []
    day_before = DAY - timedelta(hours=7)
    for device_id, reg in regs.items():
        schedule = _day_ahead(reg, habits[device_id], price)
        subs.append(_submission(reg, schedule.steps(DAY), day_before + _seconds(rng, 0, 1800),
                                _seconds(rng, 1, 600), "day-ahead"))
        events: list[tuple[datetime, str]] = []
        if device_id in enrolled:
            events.append((window.start, "dispatch"))
        elif reg.device_class is not DeviceClass.BATTERY and rng.random() < 0.3:
            boost = (DAY + timedelta(minutes=min(max(rng.gauss(18 * 60, 45), 0), 23 * 60))
                     if reg.device_class is DeviceClass.EV else _at_minute(DAY, rng, 6, 22))
            events.append((boost.replace(second=0, microsecond=0), "boost"))
        if reg.owner == rollout and rng.random() < 0.25:
            update = _at_minute(DAY, rng, 8, 20)
            if not (device_id in enrolled and window.start <= update <= window.end):
                events.append((update, "firmware"))
        for at, what in sorted(events):
            subs += _event(reg, schedule, at, what, window, rng)
    return subs


def _event(reg: DeviceRegistration, schedule: _Schedule, at: datetime, what: str,
           window: DispatchWindow, rng: random.Random) -> list[PlanSubmission]:
    if what == "dispatch":
        battery = reg.device_class is DeviceClass.BATTERY
        step = PlanStep(mode=Mode.DISCHARGE if battery else Mode.HOLD, start=window.start,
                        end=window.end, power_kw=reg.rated_export_kw if battery else None)
        response = _submission(reg, (step,), window.start - _seconds(rng, 5, 60), timedelta(0),
                               window.event_id, purpose=Purpose.RESPONSE,
                               event_id=window.event_id, program=window.program)
        resume = _submission(reg, schedule.steps(window.end),
                             window.end - _seconds(rng, 5, 60), _seconds(rng, 1, 600), "resume")
        return [response, resume]
    if what == "boost":
        end = min(at + timedelta(hours=rng.randint(1, 3)), DAY + timedelta(days=1))
        schedule.overlay(at, end, Mode.CHARGE, reg.rated_import_kw)
        return [_submission(reg, schedule.steps(at), at - _seconds(rng, 10, 180),
                            _seconds(rng, 1, 120), f"boost-{at:%H%M}")]
    reboot = schedule.copy()
    reboot.overlay(at, at + 5 * MINUTE, Mode.HOLD, 0.0)
    return [_submission(reg, reboot.steps(at), at - _seconds(rng, 10, 60), _seconds(rng, 1, 60),
                        f"firmware-{at:%H%M}")]


def normal_day(spec: FleetSpec, seed: int, *, forecast_draws: int = 4,
               prognosis_step: timedelta = SLOT) -> Day:
    rng = random.Random(seed)
    regs = registry(spec)
    price = prices(rng)
    habits = {d: _habits(r, rng) for d, r in regs.items()}
    start = DAY + rng.choice(range(32, 38)) * SLOT
    window = DispatchWindow(event_id=f"dfs-{seed}", program=DISPATCH_PROGRAM, start=start,
                            end=start + 2 * SLOT, aggregators=(rng.choice(spec.names),))
    enrolled = frozenset(d for d, r in regs.items() if r.owner in window.aggregators
                         and r.device_class is not DeviceClass.HOT_WATER and rng.random() < 0.5)
    rollout = rng.choice(spec.names)
    actual = _plans(regs, habits, price, window, enrolled, rollout,
                    random.Random(f"{seed}:actual"))
    forecasts = [_plans(regs, habits, price, window, enrolled, rollout,
                        random.Random(f"{seed}:forecast:{i}")) for i in range(forecast_draws)]
    return Day(seed=seed, spec=spec, registry=regs, submissions=_sequenced(actual),
               tariff=Tariff(tariff_id=TARIFF_PROGRAM,
                             boundaries=tuple(DAY + i * SLOT for i in range(49))),
               window=window, prognoses=prognoses(regs, forecasts, prognosis_step),
               rollout=rollout)


class _Timeline:
    """A device's planned changes as the CMB holds them: a newer plan replaces the older one
    from its start on."""

    __slots__ = ("changes",)

    def __init__(self) -> None:
        self.changes: list[StateChange] = []

    def kw_before(self, t: datetime) -> float:
        kw = 0.0
        for c in self.changes:
            if c.at >= t:
                break
            kw = c.to_kw
        return kw

    def replace(self, start: datetime, changes: Sequence[StateChange]) -> None:
        self.changes = [c for c in self.changes if c.at < start] + list(changes)


def prognoses(regs: Mapping[str, DeviceRegistration],
              draws: Sequence[Sequence[PlanSubmission]], step: timedelta = SLOT
              ) -> tuple[Prognosis, ...]:
    """Each aggregator's mean import per area and `step` over the day, averaged over `draws`.
    A change is expected uniformly over its random delay: by the end of minute m, the share of
    its delay elapsed by then has happened."""
    minutes = 24 * 60
    full: dict[tuple[str, str], list[float]] = {}  # deltas in force from a minute on
    part: dict[tuple[str, str], list[float]] = {}  # in one minute only
    for subs in draws:
        timelines: dict[str, _Timeline] = {}
        for s in sorted(subs, key=lambda s: s.received):
            reg = regs[s.plan.device_id]
            line = timelines.setdefault(reg.device_id, _Timeline())
            line.replace(s.plan.start, state_changes(s, reg, line.kw_before(s.plan.start)))
        for device_id, line in timelines.items():
            reg = regs[device_id]
            cell = (reg.owner, reg.network_area)
            ins = full.setdefault(cell, [0.0] * (minutes + 1))
            partial = part.setdefault(cell, [0.0] * minutes)
            for c in line.changes:
                delta = (c.to_kw - c.from_kw) / len(draws)
                begin = (c.at - DAY).total_seconds()
                spread = c.spread.total_seconds()
                m = int(begin // 60)
                while spread and m * 60 + 60 < begin + spread and m < minutes:
                    if m >= 0:
                        partial[m] += delta * (m * 60 + 60 - begin) / spread
                    m += 1
                ins[min(max(m, 0), minutes)] += delta
    out = []
    per_step = int(step / MINUTE)
    for cell, ins in sorted(full.items()):
        level, levels = 0.0, []
        for m in range(minutes):
            level += ins[m]
            levels.append(level + part[cell][m])
        out.append(Prognosis(aggregator=cell[0], network_area=cell[1], start=DAY, step=step,
                             kw=tuple(sum(levels[i:i + per_step]) / per_step
                                      for i in range(0, minutes, per_step))))
    return tuple(out)


# --- attacks

class Kind(StrEnum):
    COMPROMISE = "compromise"
    COMPROMISE_AT_BOUNDARY = "compromise_at_boundary"
    FIRMWARE_FLIP = "firmware_flip"
    SLOW_RAMP = "slow_ramp"
    REPLAY = "replay"
    CAP_EXCEEDED = "cap_exceeded"


ATTACK_AT: Final[Mapping[Kind, timedelta]] = {  # into the day; off boundaries unless named
    Kind.COMPROMISE: timedelta(hours=14, minutes=7),
    Kind.COMPROMISE_AT_BOUNDARY: timedelta(hours=14, minutes=7),
    Kind.FIRMWARE_FLIP: timedelta(hours=2, minutes=13),
    Kind.SLOW_RAMP: timedelta(hours=10, minutes=3),
    Kind.REPLAY: timedelta(hours=12, minutes=20),
    Kind.CAP_EXCEEDED: timedelta(hours=20, minutes=13),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Attack:
    kind: Kind
    aggregator: str
    start: datetime  # its first submission
    first_change: datetime  # the earliest its plans act
    plan_ids: frozenset[str]
    devices: frozenset[str]
    areas: frozenset[str]


def inject(day: Day, kind: Kind, aggregator: str, rng: random.Random) -> tuple[Day, Attack]:
    """`day` with the attack's plans among its own, and what the evaluator knows of it."""
    at = DAY + ATTACK_AT[kind]
    fleet = [r for r in day.registry.values() if r.owner == aggregator]
    if kind is Kind.REPLAY:
        first: dict[str, PlanSubmission] = {}
        for s in day.submissions:
            if s.aggregator == aggregator:
                first.setdefault(s.plan.device_id, s)
        chosen = rng.sample(sorted(first), len(first) // 10)
        attack = [dataclasses.replace(first[d], received=at + _seconds(rng, 0, 60))
                  for d in chosen]
        merged = tuple(sorted(day.submissions + tuple(attack), key=lambda s: s.received))
    else:
        attack = _attack_plans(kind, day, fleet, at, rng)
        merged = _sequenced(day.submissions + tuple(attack))
    return dataclasses.replace(day, submissions=merged), Attack(
        kind=kind, aggregator=aggregator, start=min(s.received for s in attack),
        first_change=min(s.plan.start for s in attack),
        plan_ids=frozenset(s.plan.plan_id for s in attack),
        devices=frozenset(s.plan.device_id for s in attack),
        areas=frozenset(day.registry[s.plan.device_id].network_area for s in attack))


def _attack_plans(kind: Kind, day: Day, fleet: Sequence[DeviceRegistration], at: datetime,
                  rng: random.Random) -> list[PlanSubmission]:
    def full(reg: DeviceRegistration, received: datetime, start: datetime, delay: timedelta,
             tag: str) -> PlanSubmission:
        step = PlanStep(mode=Mode.CHARGE, start=start, end=start + timedelta(hours=2),
                        power_kw=reg.rated_import_kw)
        return _submission(reg, (step,), received, delay, tag)

    if kind in (Kind.COMPROMISE, Kind.COMPROMISE_AT_BOUNDARY, Kind.CAP_EXCEEDED):
        switch = at + 3 * MINUTE
        if kind is Kind.COMPROMISE_AT_BOUNDARY:
            switch = DAY + math.ceil((switch - DAY) / SLOT) * SLOT
        delay = timedelta(minutes=8) if kind is Kind.CAP_EXCEEDED else timedelta(seconds=1)
        return [full(r, at + _seconds(rng, 0, 59), switch, delay, "attack") for r in fleet]
    if kind is Kind.SLOW_RAMP:
        order = rng.sample(list(fleet), len(fleet))
        per_minute = max(1, len(fleet) // 100)
        return [full(r, at + (i // per_minute) * MINUTE + _seconds(rng, 0, 59),
                     at + (i // per_minute + 2) * MINUTE, _seconds(rng, 1, 600), "attack")
                for i, r in enumerate(order[:120 * per_minute])]
    # FIRMWARE_FLIP: every charge step of the batteries' plans in force becomes a discharge
    last = {s.plan.device_id: s for s in day.submissions if s.received < at}
    out = []
    for reg in fleet:
        if reg.device_class is not DeviceClass.BATTERY or reg.device_id not in last:
            continue
        received = at + _seconds(rng, 0, 119)
        start = received.replace(second=0, microsecond=0) + MINUTE
        steps = [dataclasses.replace(s, start=max(s.start, start))
                 for s in last[reg.device_id].plan.steps if s.end > start]
        flipped = tuple(dataclasses.replace(s, mode=Mode.DISCHARGE,
                                            power_kw=min(s.power_kw or 0.0, reg.rated_export_kw))
                        if s.mode is Mode.CHARGE else s for s in steps)
        if flipped:
            out.append(_submission(reg, flipped, received, _seconds(rng, 1, 60), "attack"))
    return out


# --- the evaluator

@dataclass(frozen=True, slots=True, kw_only=True)
class Flag:
    """An alert or a rejection, as the evaluator counts it."""

    at: datetime
    what: str  # "rule:<name>" or "monitor:<name>"
    aggregator: str | None
    area: str | None
    detail: str
    caused: bool  # by the attack (False on a normal day: a false alert)


def evaluate(day: Day, config: MonitorConfig, attack: Attack | None = None,
             *, until: timedelta = timedelta(days=1, hours=1)) -> list[Flag]:
    """Every rejection and alert of the day, in simulated time."""
    regs = day.registry
    sequences: dict[str, int] = {}
    last_kw: dict[str, float] = {}
    ctx = PlanContext(registry=regs, last_sequence=sequences, last_kw=last_kw,
                      response_programs=frozenset({DISPATCH_PROGRAM}))
    monitors = FleetMonitors(config, regs, tariffs=(day.tariff,), windows=(day.window,),
                             prognoses=day.prognoses)
    timelines: dict[str, _Timeline] = {}
    found: list[Flag] = []

    def caused(aggregator: str | None, area: str | None, devices: Iterable[str],
               at: datetime) -> bool:
        if attack is None or at < attack.start:
            return False
        return (aggregator == attack.aggregator or not attack.devices.isdisjoint(devices)
                or (aggregator is None and area in attack.areas))

    now = day.submissions[0].received.replace(second=0, microsecond=0)

    def advance(to: datetime) -> None:
        nonlocal now
        while now + MINUTE <= to:
            now += MINUTE
            found.extend(Flag(at=a.at, what=f"monitor:{a.monitor}", aggregator=a.aggregator,
                              area=a.network_area, detail=a.detail,
                              caused=caused(a.aggregator, a.network_area, a.devices, a.at))
                         for a in monitors.tick(now))

    for sub in day.submissions:
        advance(sub.received)
        device_id = sub.plan.device_id
        line = timelines.setdefault(device_id, _Timeline())
        last_kw[device_id] = line.kw_before(sub.plan.start)
        rejected = check_plan(sub, ctx)
        if rejected:
            hit = attack is not None and sub.plan.plan_id in attack.plan_ids
            found += [Flag(at=sub.received, what=f"rule:{f.rule}", aggregator=sub.aggregator,
                              area=regs[device_id].network_area if device_id in regs else None,
                              detail=f.detail, caused=hit) for f in rejected]
            continue
        sequences[device_id] = sub.plan.sequence
        changes = state_changes(sub, regs[device_id], last_kw[device_id])
        line.replace(sub.plan.start, changes)
        found += [Flag(at=a.at, what=f"monitor:{a.monitor}", aggregator=a.aggregator,
                          area=a.network_area, detail=a.detail,
                          caused=caused(a.aggregator, a.network_area, a.devices, a.at))
                  for a in monitors.observe(changes, now=sub.received)]
    advance(DAY + until)
    return found


def capping_time(devices: int, *, concurrency: int, per_minute: int | None,
                 round_trip: timedelta = DCC_ROUND_TRIP) -> timedelta:
    """From the override's start until the last of `devices` SAPCs confirms the 7.16: at most
    `concurrency` critical commands in flight, at most `per_minute` started per rolling minute."""
    if devices == 0:
        return timedelta(0)
    free = [0.0] * concurrency  # when each slot is next free, seconds
    started: list[float] = []
    last = 0.0
    for k in range(devices):
        start = heapq.heappop(free)
        if per_minute is not None and k >= per_minute:
            start = max(start, started[k - per_minute] + 60.0)
        started.append(start)
        last = start + round_trip.total_seconds()
        heapq.heappush(free, last)
    return timedelta(seconds=last)


# --- scenarios

@dataclass(frozen=True, slots=True)
class Outcome:
    """One scenario's result; times are simulated seconds (JSON-ready)."""

    scenario: str
    seed: int
    attacker: str | None
    attack_start: str | None
    attack_devices: int
    submissions: int
    rejections: int
    alerts: int
    detected: bool
    detected_by: str | None
    detect_s: float | None
    effect_s: float | None  # from its first submission until its plans first act
    capped_first_s: float | None
    capped_all_s: dict[str, float]  # SAPC commands in flight ("all": every device) -> seconds
    sapc_devices: int
    false_alerts: int
    false_by: dict[str, int]  # rule or monitor -> false alerts
    caught_by: dict[str, float]  # rule or monitor -> seconds from the attack's start to its first
    false_examples: list[str]

    @property
    def capped_in_round_trip(self) -> bool:
        """Every attacked SAPC device capped one DCC round trip after detection, at the first
        `--sapc-concurrency` (or refused inline: nothing to cap)."""
        if self.detect_s is None or not self.capped_all_s:
            return self.detected
        first = next(iter(self.capped_all_s.values()))
        return first - self.detect_s <= DCC_ROUND_TRIP.total_seconds()

    @property
    def met(self) -> bool:
        if self.attacker is None:
            return self.false_alerts == 0
        return (self.detected and self.detect_s is not None
                and self.detect_s <= DETECT_TARGET.total_seconds() and self.false_alerts == 0
                and self.capped_in_round_trip)


def outcome(name: str, day: Day, findings: Sequence[Flag], attack: Attack | None, *,
            concurrency: Sequence[int | None], per_minute: int | None) -> Outcome:
    """`concurrency`: the SAPC commands in flight to model (None: every device at once)."""
    false = [f for f in findings if not f.caused]
    first = min((f for f in findings if f.caused and (f.aggregator == attack.aggregator
                                                       if attack else False)),
                key=lambda f: f.at, default=None)
    sapc = (0 if attack is None else
            sum(day.registry[d].channel is Channel.SAPC for d in attack.devices))
    detect = None if first is None or attack is None else first.at - attack.start
    inline = first is not None and first.what.startswith("rule:")
    capped_first, capped_all = None, {}
    if detect is not None and not inline:
        capped_first = (detect + DCC_ROUND_TRIP).total_seconds()
        capped_all = {_in_flight(n): (detect + capping_time(
            sapc, concurrency=n or max(sapc, 1), per_minute=per_minute)).total_seconds()
            for n in concurrency}
    return Outcome(
        scenario=name, seed=day.seed, attacker=attack.aggregator if attack else None,
        attack_start=f"{attack.start:%H:%M:%S}" if attack else None,
        attack_devices=len(attack.devices) if attack else 0,
        submissions=len(day.submissions),
        rejections=sum(f.what.startswith("rule:") for f in findings),
        alerts=sum(f.what.startswith("monitor:") for f in findings),
        detected=first is not None, detected_by=first.what if first else None,
        detect_s=None if detect is None else detect.total_seconds(),
        effect_s=None if attack is None else max(
            0.0, (attack.first_change - attack.start).total_seconds()),
        capped_first_s=capped_first, capped_all_s=capped_all, sapc_devices=sapc,
        false_alerts=len(false), false_by=dict(Counter(f.what for f in false)),
        caught_by={} if attack is None else _first_by(findings, attack),
        false_examples=[f"{f.at:%H:%M} {f.what} {f.aggregator or f.area}: {f.detail}"
                        for f in false[:5]])


def _in_flight(concurrency: int | None) -> str:
    return "all" if concurrency is None else str(concurrency)


def _first_by(findings: Iterable[Flag], attack: Attack) -> dict[str, float]:
    first: dict[str, float] = {}
    for f in sorted(findings, key=lambda f: f.at):
        if f.caused:
            first.setdefault(f.what, (f.at - attack.start).total_seconds())
    return first


def scenario(opts: argparse.Namespace, spec: FleetSpec, seed: int,
             kind: Kind | None = None) -> Outcome:
    day = normal_day(spec, seed, forecast_draws=opts.forecast_draws,
                     prognosis_step=timedelta(minutes=opts.prognosis_minutes))
    config = monitor_config(day.registry, cap_share=opts.cap_share,
                            headroom_share=opts.headroom_share)
    config = dataclasses.replace(config, **dict(opts.monitor))
    attack = None
    if kind is not None:
        rng = random.Random(f"{seed}:{kind}")
        day, attack = inject(day, kind, rng.choice(spec.names), rng)
    name = f"normal day {seed}" if kind is None else kind.value
    return outcome(name, day, evaluate(day, config, attack), attack,
                   concurrency=opts.sapc_concurrency, per_minute=opts.dcc_per_minute)


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:,.0f} s"


def report(outcomes: Sequence[Outcome], concurrency: Sequence[int | None] = (None,)) -> str:
    labels = [_in_flight(n) for n in concurrency]
    lines = [("| scenario | seed | attacker (devices) | detected by | time to detect | "
              "attack acts after | capped: first device | "
              + "".join(f"capped: all SAPC devices, {'every one' if n == 'all' else n} in "
                        "flight | " for n in labels) + "false alerts | target |"),
             "|---|---|---|---|---|---|---|" + "---|" * len(labels) + "---|---|"]
    for o in outcomes:
        who = "-" if o.attacker is None else f"{o.attacker} ({o.attack_devices:,})"
        by = "-" if o.attacker is None else (o.detected_by or "NOT detected")
        capped_all = ["refused inline" if o.detected_by and o.detected_by.startswith("rule:")
                      else "no SAPC device" if o.detected and not o.sapc_devices
                      else f"{_s(o.capped_all_s.get(n))} ({o.sapc_devices:,})" if o.detected
                      else "-" for n in labels]
        lines.append(f"| {o.scenario} | {o.seed} | {who} | {by} | {_s(o.detect_s)} | "
                     f"{_s(o.effect_s)} | {_s(o.capped_first_s)} | "
                     + "".join(f"{c} | " for c in capped_all)
                     + f"{o.false_alerts} | {'met' if o.met else 'NOT met'} |")
    caught = [f"- {o.scenario}: " + ", ".join(f"{what} {_s(t)}" for what, t in o.caught_by.items())
              for o in outcomes if o.caught_by]
    if caught:
        lines += ["", "Every rule and monitor the attack set off, from its first submission:",
                  *caught]
    false = [f"- {o.scenario}: " + ", ".join(f"{what} {n}" for what, n in o.false_by.items())
             + "".join(f"\n  - {e}" for e in o.false_examples)
             for o in outcomes if o.false_alerts]
    if false:
        lines += ["", "False alerts by rule or monitor (and the first five):", *false]
    return "\n".join(lines)


def monitor_setting(text: str) -> tuple[str, float | int | timedelta]:
    """FIELD=VALUE for one of `MonitorConfig`'s numeric or duration thresholds."""
    name, _, value = text.partition("=")
    default = {f.name: f.default for f in dataclasses.fields(MonitorConfig)}.get(name)
    if isinstance(default, timedelta):
        return name, timedelta(seconds=float(value))
    if isinstance(default, bool) or not isinstance(default, int | float):
        raise argparse.ArgumentTypeError(f"{name} is not a numeric MonitorConfig threshold")
    return name, type(default)(value)


def in_flight(text: str) -> tuple[int | None, ...]:
    """'all,8' -> (None, 8): None sends to every device at once."""
    try:
        found = tuple(None if n.strip() == "all" else int(n) for n in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: counts or 'all', comma-separated") from exc
    if any(n is not None and n < 1 for n in found) or not found:
        raise argparse.ArgumentTypeError(f"{text!r}: counts must be at least 1")
    return found


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--aggregators", type=int, default=3)
    p.add_argument("--devices", type=int, default=2000, help="per aggregator")
    p.add_argument("--areas", type=int, default=4)
    p.add_argument("--normal-days", type=int, default=7)
    p.add_argument("--attacks", default=",".join(Kind),
                   help="comma-separated, of: " + ", ".join(Kind))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--forecast-draws", type=int, default=4)
    p.add_argument("--prognosis-minutes", type=int, default=30,
                   help="the prognosis step (30: a GB settlement period)")
    p.add_argument("--monitor", type=monitor_setting, action="append", default=[],
                   metavar="FIELD=VALUE", help="a MonitorConfig threshold other than its "
                   "default (durations in seconds), e.g. prognosis_floor_kw=200; repeatable")
    p.add_argument("--cap-share", type=float, default=0.05,
                   help="aggregator MW/min cap as a share of its fleet's rated import")
    p.add_argument("--headroom-share", type=float, default=0.7,
                   help="area headroom as a share of its devices' rated import")
    p.add_argument("--sapc-concurrency", type=in_flight, default=(None, 8),
                   help="SAPC commands in flight to model, comma-separated, 'all' for every "
                   "attacked device at once (the first decides the capping target); default "
                   "all,8")
    p.add_argument("--dcc-per-minute", type=int, default=None)
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args(argv)


def run(opts: argparse.Namespace) -> list[Outcome]:
    spec = FleetSpec(aggregators=opts.aggregators, devices=opts.devices, areas=opts.areas)
    kinds = [Kind(k) for k in opts.attacks.split(",") if k]
    return ([scenario(opts, spec, opts.seed + i) for i in range(opts.normal_days)]
            + [scenario(opts, spec, opts.seed + i, k) for i, k in enumerate(kinds)])


def main(argv: Sequence[str] | None = None) -> None:
    opts = parse_args(argv)
    outcomes = run(opts)
    attacks = [o for o in outcomes if o.attacker is not None]
    publish(report(outcomes, opts.sapc_concurrency), opts.json, opts,
            {"attacks_detected": sum(o.detected for o in attacks),
             "attacks": len(attacks),
             "false_alerts_normal_days": sum(o.false_alerts for o in outcomes
                                             if o.attacker is None)}, outcomes)


if __name__ == "__main__":
    main()
