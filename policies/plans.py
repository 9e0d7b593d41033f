"""From one grid signal to a plan per device: which policy answers which signal.

Pure: the signal, the devices and what is known of them now (`DeviceView`) in; plans out. No I/O,
no clock (`now` is given), randomness only from the `random.Random` passed in.

| signal                                  | policy                                        |
|-----------------------------------------|-----------------------------------------------|
| SIMPLE level, LOAD_CONTROL capacity     | the ladder (policies/ladder.py): LIMIT plans  |
| LOAD_DISPATCH setpoint / delta (power)  | allocation by flexibility (policies/dispatch) |
| ELECTRICITY_PRICE price                 | battery+PV, EV, hot-water plans (price_plan)  |

A cap (a LIMIT plan from the ladder) over a device that already follows a plan from another event
(its price plan, a dispatch) caps that plan rather than replacing it (`cap_over`), a price plan or
a dispatch made while a cap is in force keeps under it (`under_cap`), and withdrawing either hands
the device back to the other (`resumed`): a device runs only the newest plan it was sent where two
overlap (IEEE 2030.5 at equal primacy, OCPP at equal stack level and SAPC all replace), so the
bridge, which knows both, combines them before sending. A cap is the network's constraint: a
dispatch (a grid service) keeps under it too, a shed keeping the lower import and a turn-up cut to
the cap.

LOAD_DISPATCH: each interval's target is shared across the available devices of the signal's
resources (`allocate`); a device's step follows its share: a device that can export is told to
CHARGE or DISCHARGE at its expected power, any other gets a LIMIT at its expected share of rated
import. Intervals where a device has no share leave it to its day job (BALANCE for storage, no
limit otherwise).
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, TypedDict

from bridge.models import Device, Mode, Plan, PlanStep
from policies.dispatch import Allocation, DeviceState, Share, allocate
from policies.flexibility import signal_kw
from policies.ladder import plan_for_signal
from policies.price_plan import battery_pv_plan, ev_plan, hot_water_plan
from policies.random_delay import random_delay
from ven.fleet import DeviceClass
from ven.records import GridSignal, Purpose, SignalInterval

PRICE_STEP: Final = timedelta(minutes=30)
OPEN_END: Final = timedelta(hours=1)  # how long a dispatch interval without an end is planned for

# (device, start, step, steps) -> (pv_kw, load_kw) per step: the site's forecast
Forecast = Callable[[Device, datetime, timedelta, int], tuple[Sequence[float], Sequence[float]]]


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceView:
    """What the bridge knows of a device now."""

    state: DeviceState
    uncontrolled_kw: float = 0.0  # import behind its meter no plan moves (a site's load - PV)
    soc: float | None = None  # storage, 0..1
    temp_c: float | None = None  # hot water
    energy_needed_kwh: float | None = None  # EV, until departure
    departure: datetime | None = None  # EV


@dataclass(frozen=True, slots=True, kw_only=True)
class Planned:
    plan: Plan
    requested_kw: float | None = None  # the change in import asked of the device (dispatch)


@dataclass(frozen=True, slots=True, kw_only=True)
class SignalPlans:
    plans: tuple[Planned, ...]
    allocations: tuple[tuple[SignalInterval, Allocation], ...] = ()  # LOAD_DISPATCH per interval
    skipped: tuple[tuple[str, str], ...] = ()  # (device_id, why no plan)


def plans_for_signal(signal: GridSignal, views: Mapping[str, DeviceView], *,
                     sequences: Mapping[str, int], issuer: str, now: datetime,
                     rng: random.Random, forecast: Forecast,
                     caps: Mapping[str, Sequence[Plan]] | None = None) -> SignalPlans:
    """Plans for the devices of `views` that `signal` reaches; `sequences` gives each device's
    next sequence number. Test events and signals no policy answers give no plans. A
    LOAD_DISPATCH shares no turn-up beyond the `caps` of other events on a device
    (`within_caps`)."""
    devices = [v.state.device for v in views.values()
               if v.state.device.resource_id in signal.resources]
    if signal.test_event or not devices:
        return SignalPlans(plans=())
    name = signal.signal_name.upper()
    if name == "LOAD_DISPATCH" and signal.signal_type in ("setpoint", "delta"):
        return _dispatch(signal, [views[d.device_id] for d in devices], sequences=sequences,
                         issuer=issuer, rng=rng, caps=caps or {})
    planned: list[Planned] = []
    skipped: list[tuple[str, str]] = []
    for device in devices:
        seq = sequences[device.device_id]
        if name == "ELECTRICITY_PRICE":
            plan, why = _price_plan(signal, views[device.device_id], sequence=seq, issuer=issuer,
                                    now=now, rng=rng, forecast=forecast)
        else:
            plan = plan_for_signal(signal, device, sequence=seq, issuer=issuer, rng=rng)
            why = "no policy for this signal" if plan is None else ""
        if plan is None:
            skipped.append((device.device_id, why))
        else:
            planned.append(Planned(plan=plan))
    return SignalPlans(plans=tuple(planned), skipped=tuple(skipped))


def cap_over(cap: Plan, beneath: Plan, device: Device, *,
             uncontrolled_kw: float | None = None) -> Plan:
    """`cap` (LIMIT steps) over the plan the device follows outside it: in each part of a cap
    step, the lower of the two. A LIMIT beneath keeps the lower level; a CHARGE beneath keeps
    charging, at no more than the cap's share of rated import; a HOLD or DISCHARGE of a device
    that cannot export draws nothing, under any cap, and stays. A storage site holding,
    balancing or discharging takes the cap: its meter shows its household, which neither a fixed
    discharge nor balancing (which may empty the battery before the window ends) keeps under the
    cap, while peak shaving (LIMIT on a site) saves the battery for the import above it.

    A dispatch beneath sizes a site's battery at the meter, given the import behind it that no
    plan moves (`uncontrolled_kw`): its charge or discharge stays where the meter then imports
    no more than the cap allows (a shed: the grid service asked it), and is sized to bring the
    meter to the cap's import where it would import more (a turn-up)."""
    return dataclasses.replace(cap, steps=_merged(
        _capped(c, under, device, start, end, uncontrolled_kw)
        for c, under, start, end in _pieces(cap.steps, beneath.steps)))


def under_cap(plan: Plan, cap: Plan, device: Device, *,
              uncontrolled_kw: float | None = None) -> Plan:
    """`plan` (a price plan, or a dispatch sized on `uncontrolled_kw`), made while `cap` is in
    force, with the cap applied where they overlap (as `cap_over`) and unchanged elsewhere."""
    return dataclasses.replace(plan, steps=_merged(
        dataclasses.replace(s, start=start, end=end) if c is None
        else _capped(c, s, device, start, end, uncontrolled_kw)
        for s, c, start, end in _pieces(plan.steps, cap.steps)))


def within_caps(state: DeviceState, caps: Sequence[Plan], start: datetime, end: datetime
                ) -> DeviceState:
    """`state`, for sharing a dispatch over [start, end) while `caps` are in force on the
    device: it can turn up no further than the lowest cap's import there. A share beyond it
    would be cut from its plan (`under_cap`), then read as a deviation and moved, again and
    again."""
    levels = [100 if s.level is None else s.level
              for c in caps for s in c.steps if s.start < end and start < s.end]
    if not levels:
        return state
    ceiling = state.device.rated_import_kw * min(levels) / 100
    return dataclasses.replace(state, flex_up_kw=max(0.0, min(state.flex_up_kw,
                                                              ceiling - state.current_kw)))


def resumed(device: Device, beneath: Plan | None, start: datetime, end: datetime
            ) -> tuple[PlanStep, ...]:
    """The steps that hand a device back over [start, end) when a plan over it is withdrawn:
    the plan beneath where it runs, its day job elsewhere."""
    day_job = (dispatch_step(device, None, start, end),)
    if beneath is None:
        return day_job
    return _merged(dataclasses.replace(b or s, start=a, end=e)
                   for s, b, a, e in _pieces(day_job, beneath.steps))


def _pieces(steps: Sequence[PlanStep], others: Sequence[PlanStep]
            ) -> Iterator[tuple[PlanStep, PlanStep | None, datetime, datetime]]:
    """`steps` cut where a step of `others` starts or ends: each piece with the step of
    `others` in force over it (None: none) and its bounds."""
    for s in steps:
        cuts = sorted({s.start, s.end} | {t for o in others for t in (o.start, o.end)
                                          if s.start < t < s.end})
        for start, end in itertools.pairwise(cuts):
            yield s, next((o for o in others if o.start <= start < o.end), None), start, end


def _merged(steps: Iterable[PlanStep]) -> tuple[PlanStep, ...]:
    """Adjacent pieces that say the same thing as one step."""
    merged: list[PlanStep] = []
    for s in steps:
        if merged and dataclasses.replace(merged[-1], end=s.end) == dataclasses.replace(
                s, start=merged[-1].start):
            merged[-1] = dataclasses.replace(merged[-1], end=s.end)
        else:
            merged.append(s)
    return tuple(merged)


def _capped(cap: PlanStep, under: PlanStep | None, device: Device, start: datetime,
            end: datetime, uncontrolled_kw: float | None) -> PlanStep:
    level = 100 if cap.level is None else cap.level
    out = dataclasses.replace(cap, start=start, end=end)
    if under is None:
        return out
    if uncontrolled_kw is not None and device.rated_export_kw > 0 \
            and under.mode in (Mode.CHARGE, Mode.DISCHARGE):
        power = under.power_kw or 0.0
        asked = uncontrolled_kw + (power if under.mode is Mode.CHARGE else -power)
        ceiling = device.rated_import_kw * level / 100
        return dataclasses.replace(under, start=start, end=end) if asked <= ceiling \
            else _at_meter(device, ceiling, uncontrolled_kw, start, end)
    if under.mode is Mode.LIMIT:
        return dataclasses.replace(out, level=min(level, 100 if under.level is None
                                                  else under.level))
    rated = device.rated_import_kw
    if under.mode is Mode.CHARGE:
        power = round(min(rated if under.power_kw is None else under.power_kw,
                          rated * level / 100), 3)
        return out if power <= 0 else dataclasses.replace(under, start=start, end=end,
                                                          power_kw=power)
    if under.mode in (Mode.HOLD, Mode.DISCHARGE) and device.rated_export_kw <= 0:
        return dataclasses.replace(under, start=start, end=end)
    return out


def dispatch_step(device: Device, share: Share | None, start: datetime, end: datetime, *,
                  uncontrolled_kw: float = 0.0) -> PlanStep:
    """The step that makes `device` deliver `share` (None: its day job). Storage is told the
    battery power that brings its meter to the share's expected import, given the import behind
    the meter that no plan moves."""
    storage = device.rated_export_kw > 0
    if share is None:
        return PlanStep(mode=Mode.BALANCE, start=start, end=end) if storage and \
            device.capacity_kwh > 0 else PlanStep(mode=Mode.LIMIT, start=start, end=end, level=100)
    expected = share.expected_kw
    if storage:
        return _at_meter(device, expected, uncontrolled_kw, start, end)
    rated = device.rated_import_kw
    level = 0 if rated <= 0 else round(100 * min(max(expected, 0.0), rated) / rated)
    return PlanStep(mode=Mode.LIMIT, start=start, end=end, level=level)


def _at_meter(device: Device, meter_kw: float, uncontrolled_kw: float, start: datetime,
              end: datetime) -> PlanStep:
    """The battery step that brings a storage site's meter to `meter_kw` over the import behind
    it that no plan moves."""
    battery = meter_kw - uncontrolled_kw
    if battery >= 0:
        return PlanStep(mode=Mode.CHARGE, start=start, end=end,
                        power_kw=round(min(battery, device.rated_import_kw), 3))
    return PlanStep(mode=Mode.DISCHARGE, start=start, end=end,
                    power_kw=round(min(-battery, device.rated_export_kw), 3))


def dispatch_plan(device: Device, steps: Sequence[PlanStep], *, signal: GridSignal,
                  sequence: int, issuer: str, rng: random.Random) -> Plan:
    return Plan(plan_id=f"{signal.event_id}/{signal.modification_number}/{signal.signal_id}"
                        f"/{device.device_id}/{sequence}",
                device_id=device.device_id, sequence=sequence, issuer=issuer,
                purpose=signal.purpose, priority=signal.priority, steps=tuple(steps),
                random_delay=random_delay(signal.purpose, rng), event_id=signal.event_id)


def interval_target(signal: GridSignal, value: float, current_kw: float) -> float:
    """The change in import one interval asks: a setpoint is measured from the fleet's import
    now, a delta is the change itself."""
    kw = signal_kw(signal, value)
    return kw - current_kw if signal.signal_type == "setpoint" else kw


def _dispatch(signal: GridSignal, views: Sequence[DeviceView], *, sequences: Mapping[str, int],
              issuer: str, rng: random.Random, caps: Mapping[str, Sequence[Plan]]
              ) -> SignalPlans:
    current = sum(v.state.current_kw for v in views)
    allocations = []
    for interval in signal.intervals:
        target = interval_target(signal, interval.value, current)
        end = interval.end or interval.start + OPEN_END
        allocations.append((interval, allocate(target, [
            within_caps(v.state, caps.get(v.state.device.device_id, ()), interval.start, end)
            for v in views])))
    planned = []
    for view in views:
        device = view.state.device
        shares = [a.shares.get(device.device_id) for _, a in allocations]
        if all(s is None for s in shares):
            continue
        steps = [dispatch_step(device, share, interval.start,
                               interval.end or interval.start + OPEN_END,
                               uncontrolled_kw=view.uncontrolled_kw)
                 for (interval, _), share in zip(allocations, shares)]
        requested = max((s.kw for s in shares if s is not None), key=abs)
        planned.append(Planned(
            plan=dispatch_plan(device, steps, signal=signal,
                               sequence=sequences[device.device_id], issuer=issuer, rng=rng),
            requested_kw=requested))
    return SignalPlans(plans=tuple(planned), allocations=tuple(allocations))


class _PlanArgs(TypedDict):
    """What every price policy takes besides the device and its data."""

    sequence: int
    issuer: str
    purpose: Purpose
    priority: int
    rng: random.Random
    event_id: str | None


def _price_plan(signal: GridSignal, view: DeviceView, *, sequence: int, issuer: str,
                now: datetime, rng: random.Random, forecast: Forecast
                ) -> tuple[Plan | None, str]:
    device = view.state.device
    prices = signal.schedule(device.resource_id)
    common = _PlanArgs(sequence=sequence, issuer=issuer, purpose=signal.purpose,
                       priority=signal.priority, rng=rng, event_id=signal.event_id)
    start = max(now, prices[0].start) if prices else now
    try:
        if device.capacity_kwh > 0 and device.rated_export_kw > 0 and view.soc is not None:
            end = prices[-1].end or prices[-1].start + PRICE_STEP
            steps = max(1, -(-(end - start) // PRICE_STEP))
            pv, load = forecast(device, start, PRICE_STEP, steps)
            return battery_pv_plan(device, prices, pv, load, soc=view.soc, step=PRICE_STEP,
                                   start=start, **common), ""
        if device.device_class is DeviceClass.EV and view.departure is not None \
                and view.energy_needed_kwh is not None:
            ev = ev_plan(device, prices, energy_kwh_needed=view.energy_needed_kwh, start=start,
                         departure=view.departure, step=PRICE_STEP,
                         **common)
            return ev.plan, ev.reason
        if device.comfort_min_c is not None and view.temp_c is not None:
            return hot_water_plan(device, prices, temp_c=view.temp_c, start=start,
                                  step=PRICE_STEP, **common), ""
    except ValueError as exc:
        return None, str(exc)
    return None, "no price policy for this device or no telemetry to plan from"
