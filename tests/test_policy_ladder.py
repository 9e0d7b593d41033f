"""policies.ladder and policies.random_delay: the SIMPLE ladder, capacity levels, thermostat
offsets, level plans, and the routine-DSR random delay."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bridge.models import MAX_VALIDITY, Channel, Device, Mode, Plan, validate
from policies.ladder import (
    LADDER,
    capacity_to_level,
    offset_setpoint,
    plan_for_signal,
    simple_level_to_limit,
)
from policies.random_delay import random_delay
from ven.fleet import DeviceClass
from ven.records import GridSignal, Purpose, SignalInterval

T0 = datetime(2024, 2, 1, 17, 0, tzinfo=UTC)
M = timedelta(minutes=1)

BATTERY = Device(device_id="bat-1", resource_id="bats", device_class=DeviceClass.BATTERY,
                 channel=Channel.SAPC, network_area="A", rated_import_kw=5.0)
TANK = Device(device_id="tank-1", resource_id="tanks", device_class=DeviceClass.HOT_WATER,
              channel=Channel.SAPC, network_area="A", rated_import_kw=3.0,
              comfort_min_c=45.0, comfort_max_c=65.0)


def signal(name: str, type_: str, *values: float, purpose: Purpose = Purpose.RESPONSE,
           resources: tuple[str, ...] = ("bats", "tanks"), test_event: bool = False,
           open_end: bool = False, minutes: int = 10,
           offsets: tuple[tuple[str, timedelta], ...] = ()) -> GridSignal:
    intervals = tuple(
        SignalInterval(start=T0 + minutes * i * M,
                       end=None if open_end and i == len(values) - 1
                       else T0 + minutes * (i + 1) * M,
                       value=v)
        for i, v in enumerate(values))
    return GridSignal(program="p", event_id="e1", modification_number=2, priority=3,
                      signal_name=name, signal_type=type_, signal_id="s1", unit=None,
                      intervals=intervals, resources=resources, purpose=purpose,
                      start_offsets=offsets, test_event=test_event)


def simple(*values: float, **kw: Any) -> GridSignal:
    return signal("SIMPLE", "level", *values, **kw)


def capacity(*values: float, **kw: Any) -> GridSignal:
    return signal("LOAD_CONTROL", "x-loadControlCapacity", *values, **kw)


def plan(sig: GridSignal, device: Device = BATTERY, seed: int = 1) -> Plan | None:
    return plan_for_signal(sig, device, sequence=7, issuer="agg", rng=random.Random(seed))


# --- the ladder -------------------------------------------------------------------------

@pytest.mark.parametrize("device_class,level,expected", [
    (DeviceClass.BATTERY, 0, 100), (DeviceClass.BATTERY, 1, 60),
    (DeviceClass.BATTERY, 2, 30), (DeviceClass.BATTERY, 3, 0),
    (DeviceClass.HOT_WATER, 2, 0), (DeviceClass.HEAT_PUMP, 3, 30),
    (DeviceClass.GENERIC, 1, 85), (DeviceClass.EV, 2, 20),
], ids=lambda v: str(v))
def test_simple_level_to_limit(device_class: DeviceClass, level: int, expected: int) -> None:
    assert simple_level_to_limit(device_class, level) == expected


@pytest.mark.parametrize("device_class", list(DeviceClass), ids=str)
def test_every_class_has_a_ladder_from_100_that_never_rises(device_class: DeviceClass) -> None:
    limits = [simple_level_to_limit(device_class, level) for level in range(4)]
    assert limits[0] == 100
    assert limits == sorted(limits, reverse=True)
    assert all(0 <= limit <= 100 for limit in limits)
    assert limits[3] < 100  # special must ask for something


@pytest.mark.parametrize("level", [-1, 4], ids=["below", "above"])
def test_simple_level_outside_0_to_3_is_refused(level: int) -> None:
    with pytest.raises(ValueError, match="outside 0..3"):
        simple_level_to_limit(DeviceClass.BATTERY, level)


def test_ladder_covers_exactly_the_device_classes() -> None:
    assert set(LADDER) == set(DeviceClass)


# --- capacity and offsets ---------------------------------------------------------------

@pytest.mark.parametrize("value,expected", [
    (1.0, 100), (0.0, 0), (0.5, 50), (0.294, 29), (0.296, 30), (0.29, 29),
    (1.7, 100), (-0.2, 0), (math.inf, 100), (-math.inf, 0),
], ids=lambda v: str(v))
def test_capacity_to_level(value: float, expected: int) -> None:
    assert capacity_to_level(value) == expected


def test_capacity_nan_is_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        capacity_to_level(math.nan)


@pytest.mark.parametrize("device,current,offset,expected", [
    (TANK, 55.0, -3.0, 52.0),
    (TANK, 55.0, 4.5, 59.5),
    (TANK, 47.0, -5.0, 45.0),  # floor of the comfort band
    (TANK, 63.0, 5.0, 65.0),  # ceiling
    (TANK, 40.0, 0.0, 45.0),  # already outside: brought back in
    (BATTERY, 20.0, -30.0, -10.0),  # no band declared: not clamped
], ids=["down", "up", "floor", "ceiling", "outside", "no-band"])
def test_offset_setpoint(device: Device, current: float, offset: float, expected: float) -> None:
    assert offset_setpoint(device, current, offset) == pytest.approx(expected)


# --- plans ------------------------------------------------------------------------------

def levels(p: Plan | None) -> list[int | None]:
    assert p is not None
    return [step.level for step in p.steps]


@pytest.mark.parametrize("sig,device,expected", [
    (simple(0, 1, 2, 3), BATTERY, [100, 60, 30, 0]),
    (simple(1, 2), TANK, [50, 0]),
    (simple(2.4, 7, -1), BATTERY, [30, 0, 100]),  # nearest rung, clamped
    (capacity(0.5, 0.0, 1.2), BATTERY, [50, 0, 100]),
    (capacity(0.333), TANK, [33]),
], ids=["simple-battery", "simple-tank", "simple-clamped", "capacity", "capacity-round"])
def test_plan_follows_the_schedule(sig: GridSignal, device: Device, expected: list[int]) -> None:
    p = plan(sig, device)
    assert levels(p) == expected
    assert p is not None and validate(p, device) == []
    assert all(step.mode is Mode.LIMIT for step in p.steps)
    assert p.start == T0 and p.end == T0 + 10 * len(expected) * M
    assert (p.device_id, p.sequence, p.issuer, p.priority, p.event_id, p.purpose) == (
        device.device_id, 7, "agg", 3, "e1", Purpose.RESPONSE)
    assert p.random_delay == timedelta(0)


def test_plan_uses_the_resource_start_offset() -> None:
    p = plan(capacity(0.5, 0.2, offsets=(("bats", timedelta(seconds=90)),)))
    assert p is not None
    assert p.start == T0 + timedelta(seconds=90)
    assert p.steps[1].start == T0 + 10 * M + timedelta(seconds=90)


@pytest.mark.parametrize("sig", [
    simple(1, resources=("tanks",)),
    simple(1, test_event=True),
    signal("LOAD_CONTROL", "x-loadControlLevelOffset", 2.0),
    signal("LOAD_DISPATCH", "delta", -5.0),
    signal("SIMPLE", "level"),  # no intervals
], ids=["other-resource", "test-event", "offset-signal", "dispatch-signal", "no-intervals"])
def test_no_plan(sig: GridSignal) -> None:
    assert plan(sig) is None


def test_routine_plan_takes_a_seeded_random_delay() -> None:
    routine = simple(1, purpose=Purpose.ROUTINE)
    delays = {p.random_delay for seed in range(20) if (p := plan(routine, seed=seed))}
    assert len(delays) > 1  # drawn, not fixed
    assert all(timedelta(0) <= d <= timedelta(seconds=600) for d in delays)
    first, again = plan(routine, seed=5), plan(routine, seed=5)
    assert first is not None and again is not None
    assert first.random_delay == again.random_delay
    assert validate(first, BATTERY) == []


def test_open_ended_interval_is_cut_at_48_hours() -> None:
    p = plan(capacity(0.5, 0.2, open_end=True))
    assert p is not None
    assert p.end == T0 + MAX_VALIDITY
    assert validate(p, BATTERY) == []


def test_schedule_longer_than_48_hours_is_cut() -> None:
    p = plan(simple(1, 2, 3, minutes=24 * 60))  # 72 h
    assert levels(p) == [60, 30]
    assert p is not None and p.end == T0 + MAX_VALIDITY and validate(p, BATTERY) == []


def test_gap_is_filled_with_no_limit_and_overlap_is_clipped() -> None:
    gapped = replace(simple(1), intervals=(
        SignalInterval(start=T0, end=T0 + 10 * M, value=2),
        SignalInterval(start=T0 + 20 * M, end=T0 + 30 * M, value=3),
        SignalInterval(start=T0 + 25 * M, end=T0 + 40 * M, value=1)))
    p = plan(gapped)
    assert levels(p) == [30, 100, 0, 60]
    assert p is not None
    assert [(s.start, s.end) for s in p.steps] == [
        (T0, T0 + 10 * M), (T0 + 10 * M, T0 + 20 * M), (T0 + 20 * M, T0 + 30 * M),
        (T0 + 30 * M, T0 + 40 * M)]
    assert validate(p, BATTERY) == []


def test_nan_level_is_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        plan(simple(math.nan))


# --- random delay -----------------------------------------------------------------------

def test_response_dsr_takes_no_delay() -> None:
    rng = random.Random(3)
    assert random_delay(Purpose.RESPONSE, rng, limit=timedelta(seconds=1800)) == timedelta(0)


@pytest.mark.parametrize("limit", [timedelta(seconds=600), timedelta(seconds=1800),
                                   timedelta(seconds=5)], ids=["default", "max", "short"])
def test_routine_delay_is_whole_seconds_within_the_limit(limit: timedelta) -> None:
    rng = random.Random(42)
    delays = [random_delay(Purpose.ROUTINE, rng, limit=limit) for _ in range(2000)]
    assert all(timedelta(0) <= d <= limit for d in delays)
    assert all(d.microseconds == 0 for d in delays)
    # Uniform over the whole range: both ends are reached on a short limit, the spread is wide.
    assert max(delays) > limit * 0.9 and min(delays) < limit * 0.1
    if limit == timedelta(seconds=5):
        assert {d.seconds for d in delays} == set(range(6))


def test_default_limit_is_600_seconds() -> None:
    rng = random.Random(0)
    longest = max(random_delay(Purpose.ROUTINE, rng) for _ in range(2000))
    assert timedelta(seconds=540) < longest <= timedelta(seconds=600)


def test_seeded_delay_repeats() -> None:
    first = [random_delay(Purpose.ROUTINE, random.Random(9)) for _ in range(3)]
    assert len(set(first)) == 1
    a, b = random.Random(9), random.Random(9)
    assert ([random_delay(Purpose.ROUTINE, a) for _ in range(50)]
            == [random_delay(Purpose.ROUTINE, b) for _ in range(50)])


@pytest.mark.parametrize("limit", [timedelta(seconds=1801), timedelta(seconds=-1)],
                         ids=["above-1800", "negative"])
@pytest.mark.parametrize("purpose", list(Purpose), ids=str)
def test_limit_outside_0_to_1800_is_refused(limit: timedelta, purpose: Purpose) -> None:
    with pytest.raises(ValueError, match="limit"):
        random_delay(purpose, random.Random(0), limit=limit)
