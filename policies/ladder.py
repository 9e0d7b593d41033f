"""Level signals to import limits: the SIMPLE ladder, LOAD_CONTROL capacity and thermostat offsets.

Pure: frozen values in, a `Plan` (or a number) out; no I/O, no clock, randomness only from the
`random.Random` passed in. Every plan is a LIMIT plan (import capped at a percentage of rated,
the one thing a SAPC can do, domain.md section 5), so it runs on every channel.

The SIMPLE ladder (domain.md section 3), percent of rated import allowed at each level:

| class     | 0 normal | 1 moderate | 2 high | 3 special | why                                   |
|-----------|----------|------------|--------|-----------|---------------------------------------|
| battery   | 100      | 60         | 30     | 0         | stored energy rides through           |
| ev        | 100      | 50         | 20     | 0         | charging defers; departure has slack  |
| heat_pump | 100      | 75         | 50     | 30        | building inertia, but comfort limits  |
| hot_water | 100      | 50         | 0      | 0         | the tank holds hours of heat          |
| hvac      | 100      | 75         | 50     | 30        | as a heat pump                        |
| generic   | 100      | 85         | 70     | 50        | unknown load: the gentlest steps      |
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from typing import Final

from bridge.models import MAX_VALIDITY, Device, Mode, Plan, PlanStep
from policies.random_delay import random_delay
from ven.fleet import DeviceClass
from ven.records import GridSignal, SignalInterval

LADDER: Final[Mapping[DeviceClass, tuple[int, int, int, int]]] = {
    DeviceClass.BATTERY: (100, 60, 30, 0),
    DeviceClass.EV: (100, 50, 20, 0),
    DeviceClass.HEAT_PUMP: (100, 75, 50, 30),
    DeviceClass.HOT_WATER: (100, 50, 0, 0),
    DeviceClass.HVAC: (100, 75, 50, 30),
    DeviceClass.GENERIC: (100, 85, 70, 50),
}
MAX_SIMPLE_LEVEL: Final = 3
_NORMAL: Final = 100  # the level a gap between intervals falls back to: no limit


def simple_level_to_limit(device_class: DeviceClass, level: int) -> int:
    """The percent of rated import `device_class` may draw at SIMPLE `level` (the LADDER table).

    Raises:
        ValueError: `level` is outside 0..3.
    """
    if not 0 <= level <= MAX_SIMPLE_LEVEL:
        raise ValueError(f"SIMPLE level {level} outside 0..{MAX_SIMPLE_LEVEL}")
    return LADDER[device_class][level]


def capacity_to_level(capacity: float) -> int:
    """The SAPC level for an x-loadControlCapacity value (1.0 = 100 % of max load, 0 = off):
    round(100 x value), clamped to 0..100.

    Raises:
        ValueError: `capacity` is NaN.
    """
    if math.isnan(capacity):
        raise ValueError("x-loadControlCapacity is NaN")
    return round(100 * min(max(capacity, 0.0), 1.0))


def offset_setpoint(device: Device, current_setpoint_c: float, offset_c: float) -> float:
    """The setpoint an x-loadControlLevelOffset of `offset_c` degrees gives, clamped to the
    device's comfort band (a side the device does not declare is not clamped). A setpoint already
    outside the band is brought back into it: comfort outranks the request."""
    setpoint = current_setpoint_c + offset_c
    if device.comfort_max_c is not None:
        setpoint = min(setpoint, device.comfort_max_c)
    if device.comfort_min_c is not None:
        setpoint = max(setpoint, device.comfort_min_c)
    return setpoint


def plan_for_signal(signal: GridSignal, device: Device, *, sequence: int, issuer: str,
                    rng: random.Random) -> Plan | None:
    """A LIMIT plan following `signal`'s schedule for the device's resource: one step per
    interval, a gap between intervals filled with an unlimited (100 %) step. An open-ended last
    interval, and anything beyond, is cut at 48 h from the start: the bridge re-plans before then.
    Routine DSR carries a random delay drawn from `rng`.

    None when the signal is a test event, does not reach the device's resource, is neither SIMPLE
    level nor LOAD_CONTROL x-loadControlCapacity, or has no interval inside the 48 h.

    Raises:
        ValueError: an interval's value is NaN.
    """
    if signal.test_event or device.resource_id not in signal.resources:
        return None
    level = _level_fn(signal, device.device_class)
    if level is None:
        return None
    steps = _steps(signal.schedule(device.resource_id), level)
    if not steps:
        return None
    return Plan(
        plan_id=f"{signal.event_id}/{signal.modification_number}/{signal.signal_id}"
                f"/{device.device_id}/{sequence}",
        device_id=device.device_id, sequence=sequence, issuer=issuer, purpose=signal.purpose,
        priority=signal.priority, steps=steps, random_delay=random_delay(signal.purpose, rng),
        event_id=signal.event_id)


def _level_fn(signal: GridSignal, device_class: DeviceClass) -> Callable[[float], int] | None:
    kind = (signal.signal_name, signal.signal_type)
    if kind == ("LOAD_CONTROL", "x-loadControlCapacity"):
        return capacity_to_level
    if kind != ("SIMPLE", "level"):
        return None

    def rung(value: float) -> int:
        # A SIMPLE level is an integer 0..3; anything else is read as the nearest rung.
        if math.isnan(value):
            raise ValueError("SIMPLE level is NaN")
        return simple_level_to_limit(device_class, round(min(max(value, 0.0), MAX_SIMPLE_LEVEL)))

    return rung


def _steps(schedule: tuple[SignalInterval, ...],
           level: Callable[[float], int]) -> tuple[PlanStep, ...]:
    if not schedule:
        return ()
    horizon = schedule[0].start + MAX_VALIDITY
    steps: list[PlanStep] = []
    for interval in schedule:
        # Intervals overlapping the one before start where it ends, so steps stay contiguous.
        start = max(interval.start, steps[-1].end) if steps else interval.start
        end = horizon if interval.end is None else min(interval.end, horizon)
        if end <= start:  # empty, or past the horizon
            continue
        if steps and steps[-1].end < start:
            steps.append(PlanStep(mode=Mode.LIMIT, start=steps[-1].end, end=start, level=_NORMAL))
        steps.append(PlanStep(mode=Mode.LIMIT, start=start, end=end, level=level(interval.value)))
    return tuple(steps)
