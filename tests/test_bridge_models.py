"""Plans a device cannot execute are refused with the reasons, before any dispatch."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from bridge.models import Channel, Device, Mode, Plan, PlanStep, validate
from ven.fleet import DeviceClass
from ven.records import Purpose

T0 = datetime(2026, 11, 27, 17, tzinfo=UTC)
H = timedelta(hours=1)
BATTERY = Device(device_id="bat-1", resource_id="batteries", device_class=DeviceClass.BATTERY,
                 channel=Channel.BATTERY_HUB, network_area="north", rated_import_kw=5.0,
                 rated_export_kw=5.0, capacity_kwh=10.0)
HEATER = Device(device_id="hw-1", resource_id="heaters", device_class=DeviceClass.HOT_WATER,
                channel=Channel.SAPC, network_area="north", rated_import_kw=3.0)


def plan(*steps: PlanStep, device: str = "bat-1", **fields: object) -> Plan:
    base = dict(plan_id="p1", device_id=device, sequence=1, issuer="agg", purpose=Purpose.ROUTINE,
                priority=0, steps=steps)
    return Plan(**(base | fields))  # type: ignore[arg-type]


def step(mode: Mode, start: int, end: int, **fields: object) -> PlanStep:
    return PlanStep(mode=mode, start=T0 + start * H, end=T0 + end * H, **fields)  # type: ignore[arg-type]


def test_an_executable_plan_has_no_reasons() -> None:
    good = plan(step(Mode.CHARGE, 0, 2, power_kw=5.0), step(Mode.BALANCE, 2, 5),
                step(Mode.DISCHARGE, 5, 6, power_kw=3.0), step(Mode.HOLD, 6, 8),
                random_delay=timedelta(seconds=300))
    assert validate(good, BATTERY) == []
    assert validate(plan(step(Mode.LIMIT, 0, 1, level=40), device="hw-1"), HEATER) == []


@pytest.mark.parametrize(("bad", "device", "expected"), [
    (plan(step(Mode.CHARGE, 0, 1, power_kw=6.0)), BATTERY, "power 6.0 kW outside 0..5 kW rated import"),
    (plan(step(Mode.DISCHARGE, 0, 1, power_kw=1.0), device="hw-1"), HEATER, "cannot discharge"),
    (plan(step(Mode.BALANCE, 0, 1), device="hw-1"), HEATER, "balance needs storage"),
    (plan(step(Mode.LIMIT, 0, 1, level=120)), BATTERY, "level 120 outside 0..100"),
    (plan(step(Mode.HOLD, 0, 1), step(Mode.HOLD, 2, 3)), BATTERY, "the next starts at"),
    (plan(step(Mode.HOLD, 1, 1)), BATTERY, "ends at or before it starts"),
    (plan(step(Mode.HOLD, 0, 49)), BATTERY, "more than 2 days"),
    (plan(step(Mode.HOLD, 0, 1), purpose=Purpose.RESPONSE, random_delay=timedelta(seconds=5)),
     BATTERY, "response DSR takes no random delay"),
    (plan(step(Mode.HOLD, 0, 1)), HEATER, "plan is for bat-1, not hw-1"),
    (plan(), BATTERY, "plan has no steps"),
], ids=["over-rating", "no-export", "no-storage", "level", "gap", "empty-step", "validity",
        "response-delay", "wrong-device", "no-steps"])
def test_refused_with_a_reason(bad: Plan, device: Device, expected: str) -> None:
    reasons = validate(bad, device)
    assert any(expected in r for r in reasons), reasons


def test_every_problem_is_named_not_only_the_first() -> None:
    bad = plan(step(Mode.CHARGE, 0, 1, power_kw=9.0), step(Mode.LIMIT, 2, 3, level=-1))
    assert len(validate(bad, BATTERY)) == 3  # rating, gap, level
    assert validate(dataclasses.replace(bad, steps=bad.steps[:1]), BATTERY) != []
