"""policies.plans: which policy answers which signal, and LOAD_DISPATCH shares turned into steps."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from datetime import datetime, timedelta

import pytest

from bridge.models import Channel, Device, Mode, Plan, PlanStep, validate
from policies.dispatch import DeviceState
from policies.plans import (
    DeviceView,
    SignalPlans,
    cap_over,
    plans_for_signal,
    resumed,
    under_cap,
)
from tests.test_policy_ladder import T0, TANK, capacity, signal, simple
from ven.fleet import DeviceClass
from ven.records import GridSignal, Purpose

M = timedelta(minutes=1)
STORE = Device(device_id="bat-1", resource_id="bats", device_class=DeviceClass.BATTERY,
               channel=Channel.BATTERY_HUB, network_area="A", rated_import_kw=5.0,
               rated_export_kw=5.0, capacity_kwh=10.0)
EV = Device(device_id="ev-1", resource_id="evs", device_class=DeviceClass.EV,
            channel=Channel.OCPP, network_area="A", rated_import_kw=7.0, capacity_kwh=60.0)


def view(device: Device, *, current: float, down: float, up: float = 0.0,
         available: bool = True, **known: object) -> DeviceView:
    return DeviceView(state=DeviceState(device=device, available=available, flex_down_kw=down,
                                        flex_up_kw=up, current_kw=current), **known)  # type: ignore[arg-type]


def flat(device: Device, start: datetime, step: timedelta, n: int
         ) -> tuple[Sequence[float], Sequence[float]]:
    return [0.0] * n, [0.5] * n


def plans(sig: GridSignal, views: dict[str, DeviceView]) -> SignalPlans:
    return plans_for_signal(sig, views, sequences=dict.fromkeys(views, 5), issuer="agg", now=T0,
                            rng=random.Random(1), forecast=flat)


def test_simple_levels_take_the_ladder_on_every_device_reached() -> None:
    views = {"tank-1": view(TANK, current=3.0, down=3.0),
             "ev-1": view(EV, current=7.0, down=7.0)}  # EV's resource is not targeted
    result = plans(simple(2, 0), views)
    assert [p.plan.device_id for p in result.plans] == ["tank-1"]
    steps = result.plans[0].plan.steps
    assert [(s.mode, s.level) for s in steps] == [(Mode.LIMIT, 0), (Mode.LIMIT, 100)]


def test_test_events_and_unknown_signals_plan_nothing() -> None:
    views = {"tank-1": view(TANK, current=3.0, down=3.0)}
    assert plans(simple(2, test_event=True), views).plans == ()
    result = plans(signal("CHARGE_STATE", "setpoint", 0.8), views)
    assert result.plans == () and result.skipped == (
        ("tank-1", "no policy for this signal"),)


def test_load_dispatch_shares_the_target_and_turns_shares_into_steps() -> None:
    tanks = [dataclasses.replace(TANK, device_id=f"tank-{i}") for i in range(3)]
    battery = dataclasses.replace(STORE, resource_id="tanks")
    views = {d.device_id: view(d, current=3.0, down=3.0) for d in tanks}
    views["bat-1"] = view(battery, current=1.0, down=4.0)  # can go to -3 kW (discharge)
    # a fleet import of 13 kW, asked to fall by 6.5 kW, then by 13 kW
    sig = dataclasses.replace(signal("LOAD_DISPATCH", "delta", -6.5, -13.0), unit="kW")
    result = plans(sig, views)
    by_device = {p.plan.device_id: p for p in result.plans}
    assert set(by_device) == set(views)
    for (_, allocation), target in zip(result.allocations, (-6.5, -13.0)):
        assert allocation.delivered_kw == pytest.approx(target)
    heater = by_device["tank-0"].plan
    assert [(s.mode, s.level) for s in heater.steps] == [(Mode.LIMIT, 50), (Mode.LIMIT, 0)]
    assert by_device["tank-0"].requested_kw == pytest.approx(-3.0)
    store = by_device["bat-1"].plan
    assert [(s.mode, s.power_kw) for s in store.steps] == [
        (Mode.DISCHARGE, pytest.approx(1.0)), (Mode.DISCHARGE, pytest.approx(3.0))]
    devices = {d.device_id: d for d in [*tanks, battery]}
    assert all(validate(p.plan, devices[p.plan.device_id]) == [] for p in result.plans)


def test_a_setpoint_is_measured_from_the_import_now_and_unavailable_devices_take_nothing() -> None:
    tanks = [dataclasses.replace(TANK, device_id=f"tank-{i}") for i in range(2)]
    views = {"tank-0": view(tanks[0], current=3.0, down=3.0),
             "tank-1": view(tanks[1], current=3.0, down=3.0, available=False)}
    sig = dataclasses.replace(signal("LOAD_DISPATCH", "setpoint", 4.5), unit="kW")
    result = plans(sig, views)
    assert [p.plan.device_id for p in result.plans] == ["tank-0"]
    assert result.plans[0].plan.steps[0].level == 50


def test_prices_plan_storage_evs_and_tanks_from_what_is_known_of_them() -> None:
    prices = dataclasses.replace(
        signal("ELECTRICITY_PRICE", "price", 0.30, 0.05, 0.40, 0.10, minutes=30,
               resources=("bats", "tanks", "evs")), unit="GBP/kWh")
    views = {
        "bat-1": view(dataclasses.replace(STORE, resource_id="bats"), current=0.0, down=5.0,
                      soc=0.5),
        "ev-1": view(EV, current=0.0, down=0.0, energy_needed_kwh=7.0,
                     departure=T0 + 120 * M),
        "tank-1": view(TANK, current=0.0, down=0.0, temp_c=50.0),
        "tank-2": view(dataclasses.replace(TANK, device_id="tank-2"), current=0.0, down=0.0),
    }
    result = plans(prices, views)
    by_device = {p.plan.device_id: p.plan for p in result.plans}
    assert set(by_device) == {"bat-1", "ev-1", "tank-1"}
    ev = by_device["ev-1"]
    charging = [s for s in ev.steps if s.mode is Mode.CHARGE]
    assert [s.start for s in charging] == [T0 + 30 * M, T0 + 90 * M]  # the two cheapest
    assert result.skipped[0][0] == "tank-2"
    assert "no telemetry" in result.skipped[0][1]
    assert all(p.random_delay <= timedelta(seconds=600) for p in by_device.values())


def test_storage_is_told_the_battery_power_that_brings_its_meter_to_the_share() -> None:
    site = dataclasses.replace(STORE, resource_id="tanks")
    # the site imports 2 kW: 1.5 kW of load less PV, 0.5 kW charging the battery
    views = {"bat-1": view(site, current=2.0, down=6.5, uncontrolled_kw=1.5)}
    sig = dataclasses.replace(signal("LOAD_DISPATCH", "delta", -3.0), unit="kW")
    (planned,) = plans(sig, views).plans
    # the meter must show -1 kW: the battery discharges 2.5 kW under 1.5 kW of load
    assert [(s.mode, s.power_kw) for s in planned.plan.steps] == [
        (Mode.DISCHARGE, pytest.approx(2.5))]


def steps_of(device: Device, *steps: tuple[int, int, Mode, float | None, int | None]) -> Plan:
    """A plan of (start minute, end minute, mode, power, level) steps from T0."""
    return Plan(plan_id=f"p/{device.device_id}", device_id=device.device_id, sequence=1,
                issuer="agg", purpose=Purpose.ROUTINE, priority=1, event_id="price",
                steps=tuple(PlanStep(mode=m, start=T0 + a * M, end=T0 + b * M, power_kw=p,
                                     level=lv) for a, b, m, p, lv in steps))


def spread(plan: Plan) -> list[tuple[int, int, Mode, float | None, int | None]]:
    return [(round((s.start - T0) / M), round((s.end - T0) / M), s.mode, s.power_kw, s.level)
            for s in plan.steps]


def test_a_cap_caps_the_plan_beneath_it_rather_than_lifting_it() -> None:
    # A tank's price plan allows heat until minute 20 and holds it off at the peak after; a 50 %
    # cap over minutes 10-40 must not let it heat in the peak.
    cap = plans(capacity(0.5, 0.5, 0.5, resources=("tanks",)),
                {"tank-1": view(TANK, current=3.0, down=3.0)}).plans[0].plan
    price = steps_of(TANK, (0, 20, Mode.LIMIT, None, 100), (20, 60, Mode.LIMIT, None, 0))
    capped = cap_over(cap, price, TANK)
    assert spread(capped) == [(0, 20, Mode.LIMIT, None, 50), (20, 30, Mode.LIMIT, None, 0)]
    assert (capped.plan_id, capped.sequence, capped.event_id) == (
        cap.plan_id, cap.sequence, cap.event_id)
    assert validate(capped, TANK) == []


def test_a_cap_over_charging_and_holding_keeps_the_lower_import() -> None:
    cap = dataclasses.replace(
        plans(capacity(0.5, 0.5, 0.5, resources=("tanks",)),
              {"tank-1": view(TANK, current=3.0, down=3.0)}).plans[0].plan, device_id="ev-1")
    ev = steps_of(EV, (0, 10, Mode.CHARGE, 7.0, None), (10, 20, Mode.HOLD, None, None),
                  (20, 25, Mode.CHARGE, 2.0, None))
    assert spread(cap_over(cap, ev, EV)) == [
        (0, 10, Mode.CHARGE, 3.5, None), (10, 20, Mode.HOLD, None, None),
        (20, 25, Mode.CHARGE, 2.0, None), (25, 30, Mode.LIMIT, None, 50)]
    # A storage site's meter shows its household: holding or discharging under a cap is the
    # cap's peak shaving.
    site = dataclasses.replace(cap, device_id="bat-1")
    held = steps_of(STORE, (0, 30, Mode.HOLD, None, None))
    assert spread(cap_over(site, held, STORE)) == [(0, 30, Mode.LIMIT, None, 50)]


def test_a_plan_made_under_a_cap_keeps_under_it_and_a_withdrawn_plan_resumes_the_one_beneath(
        ) -> None:
    cap = dataclasses.replace(
        plans(capacity(0.5, 0.5, 0.5, resources=("tanks",)),
              {"tank-1": view(TANK, current=3.0, down=3.0)}).plans[0].plan, device_id="ev-1")
    price = steps_of(EV, (0, 20, Mode.CHARGE, 7.0, None), (20, 60, Mode.HOLD, None, None))
    kept = under_cap(price, cap, EV)
    assert spread(kept) == [(0, 20, Mode.CHARGE, 3.5, None), (20, 60, Mode.HOLD, None, None)]
    assert (kept.plan_id, kept.event_id) == (price.plan_id, price.event_id)
    late = steps_of(EV, (20, 40, Mode.CHARGE, 7.0, None))
    assert spread(under_cap(late, cap, EV)) == [(20, 30, Mode.CHARGE, 3.5, None),
                                                (30, 40, Mode.CHARGE, 7.0, None)]
    # Withdrawn at minute 5 with its plan running to 50: the price plan until it ends at 60
    # where it runs, the day job (no limit) before it starts.
    assert spread(dataclasses.replace(price, steps=resumed(EV, price, T0 + 5 * M,
                                                           T0 + 50 * M))) == [
        (5, 20, Mode.CHARGE, 7.0, None), (20, 50, Mode.HOLD, None, None)]
    assert spread(dataclasses.replace(late, steps=resumed(EV, late, T0, T0 + 30 * M))) == [
        (0, 20, Mode.LIMIT, None, 100), (20, 30, Mode.CHARGE, 7.0, None)]
    assert spread(dataclasses.replace(late, steps=resumed(EV, None, T0, T0 + 30 * M))) == [
        (0, 30, Mode.LIMIT, None, 100)]


def test_a_dispatch_keeps_under_a_cap_a_shed_the_lower_import_a_turn_up_cut_to_the_cap(
        ) -> None:
    cap = plans(capacity(0.5, 0.5, 0.5, resources=("tanks",)),
                {"tank-1": view(TANK, current=3.0, down=3.0)}).plans[0].plan  # 50 %, 0-30
    # A heater's dispatch: a turn-up (80 %), a shed (20 %), a turn-up running past the cap.
    heater = steps_of(TANK, (0, 10, Mode.LIMIT, None, 80), (10, 20, Mode.LIMIT, None, 20),
                      (20, 40, Mode.LIMIT, None, 100))
    assert spread(under_cap(heater, cap, TANK, uncontrolled_kw=0.0)) == [
        (0, 10, Mode.LIMIT, None, 50), (10, 20, Mode.LIMIT, None, 20),
        (20, 30, Mode.LIMIT, None, 50), (30, 40, Mode.LIMIT, None, 100)]
    # A storage site (5 kW rated: the cap lets its meter import 2.5 kW) with 1 kW of household
    # load behind the meter: a discharge (-1 kW at the meter) and a small charge (2 kW) import
    # less than the cap and stay; a 4 kW charge (5 kW) is cut to 1.5 kW (2.5 kW at the meter).
    site = dataclasses.replace(cap, device_id="bat-1")
    dispatch = steps_of(STORE, (0, 10, Mode.DISCHARGE, 2.0, None),
                        (10, 20, Mode.CHARGE, 1.0, None), (20, 40, Mode.CHARGE, 4.0, None))
    kept = [(0, 10, Mode.DISCHARGE, 2.0, None), (10, 20, Mode.CHARGE, 1.0, None),
            (20, 30, Mode.CHARGE, 1.5, None)]
    assert spread(under_cap(dispatch, site, STORE, uncontrolled_kw=1.0)) == [
        *kept, (30, 40, Mode.CHARGE, 4.0, None)]
    # The same whichever came first: a cap over the dispatch.
    assert spread(cap_over(site, dispatch, STORE, uncontrolled_kw=1.0)) == kept
    # With 4 kW of household load, the cap's import needs the battery to discharge 1.5 kW.
    assert spread(under_cap(steps_of(STORE, (0, 10, Mode.CHARGE, 1.0, None)), site, STORE,
                            uncontrolled_kw=4.0)) == [(0, 10, Mode.DISCHARGE, 1.5, None)]
    # A price plan's discharge is not sized at the meter: the site takes the cap's peak shaving.
    assert spread(under_cap(dispatch, site, STORE))[0] == (0, 10, Mode.LIMIT, None, 50)
    assert validate(under_cap(dispatch, site, STORE, uncontrolled_kw=4.0), STORE) == []


def test_a_dispatch_shares_no_turn_up_beyond_a_cap_on_a_device() -> None:
    # Two 3 kW tanks drawing 1 kW; one is capped at 50 % (1.5 kW) over the first 10 minutes.
    tanks = [dataclasses.replace(TANK, device_id=f"tank-{i}") for i in range(2)]
    views = {d.device_id: view(d, current=1.0, down=1.0, up=2.0) for d in tanks}
    cap = plans(capacity(0.5, resources=("tanks",)), views).plans[0].plan
    sig = dataclasses.replace(signal("LOAD_DISPATCH", "delta", 2.0, 2.0), unit="kW")
    result = plans_for_signal(sig, views, sequences=dict.fromkeys(views, 5), issuer="agg",
                              now=T0, rng=random.Random(1), forecast=flat,
                              caps={"tank-0": [cap]})
    (_, capped), (_, after) = result.allocations
    assert cap.end == T0 + 10 * M and capped.delivered_kw == pytest.approx(2.0)
    # under the cap, tank-0 can rise 0.5 kW (to 1.5 kW), tank-1 its 2 kW: shared 1 : 4
    assert capped.shares["tank-0"].kw == pytest.approx(0.4)
    assert capped.shares["tank-0"].expected_kw <= 1.5
    assert after.shares["tank-0"].kw == pytest.approx(1.0)  # the cap has ended
