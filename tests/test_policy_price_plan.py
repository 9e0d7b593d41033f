"""policies.price_plan: battery+PV, EV and hot-water plans for ELECTRICITY_PRICE signals, and the
re-planning trigger. Plans are checked by simulating them, not by reading their internals."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from bridge.models import MAX_VALIDITY, Channel, Device, Mode, Plan, validate
from policies.price_plan import (
    EXPORT_PRICE_FRACTION,
    HOT_WATER_DEADBAND_C,
    HOT_WATER_KWH_PER_C,
    HOT_WATER_LOSS_C_PER_H,
    SOC_MAX,
    SOC_MIN,
    TankState,
    battery_pv_plan,
    ev_plan,
    hot_water_plan,
    hot_water_temperatures,
    needs_replan,
    tank_step,
)
from ven.fleet import DeviceClass
from ven.records import Purpose, SignalInterval

T0 = datetime(2024, 2, 1, 0, 0, tzinfo=UTC)
STEP = timedelta(minutes=30)
H = STEP / timedelta(hours=1)
CHEAP, DEAR = 0.07, 0.35

BATTERY = Device(device_id="bat-1", resource_id="bats", device_class=DeviceClass.BATTERY,
                 channel=Channel.BATTERY_HUB, network_area="A", rated_import_kw=3.0,
                 rated_export_kw=3.0, capacity_kwh=10.0)
EV = Device(device_id="ev-1", resource_id="evs", device_class=DeviceClass.EV,
            channel=Channel.OCPP, network_area="A", rated_import_kw=7.0, capacity_kwh=60.0)
TANK = Device(device_id="tank-1", resource_id="tanks", device_class=DeviceClass.HOT_WATER,
              channel=Channel.SAPC, network_area="A", rated_import_kw=3.0,
              comfort_min_c=45.0, comfort_max_c=65.0)


def curve(*values: float) -> tuple[SignalInterval, ...]:
    return tuple(SignalInterval(start=T0 + i * STEP, end=T0 + (i + 1) * STEP, value=v)
                 for i, v in enumerate(values))


TWO_LEVEL = curve(*([CHEAP] * 8 + [DEAR] * 8))  # 4 h cheap, then 4 h dear


def common(purpose: Purpose = Purpose.ROUTINE) -> dict[str, object]:
    return {"sequence": 3, "issuer": "agg", "purpose": purpose, "priority": 1,
            "rng": random.Random(5), "event_id": "e1"}


def per_step(plan: Plan) -> list[tuple[Mode, float | None, int | None]]:
    """The plan's (mode, power, level) in each STEP, merged steps spread out again."""
    out = []
    for s in plan.steps:
        out += [(s.mode, s.power_kw, s.level)] * round((s.end - s.start) / STEP)
    return out


def battery(soc: float = 0.5, pv: float = 0.0, load: float = 1.0, n: int = 16,
            prices: tuple[SignalInterval, ...] = TWO_LEVEL) -> Plan:
    return battery_pv_plan(BATTERY, prices, [pv] * n, [load] * n, soc=soc, step=STEP, start=T0,
                           sequence=3, issuer="agg", purpose=Purpose.ROUTINE, priority=1,
                           rng=random.Random(5), event_id="e1")


def simulate_battery(plan: Plan, soc: float, pv: float, load: float) -> tuple[list[float], float]:
    """SoC after each step (BALANCE stops at the plan's bounds, as the device does; CHARGE and
    DISCHARGE run as planned, unclamped) and the grid cost over TWO_LEVEL."""
    socs, cost = [], 0.0
    prices = [i.value for i in TWO_LEVEL]
    for i, (mode, power, _) in enumerate(per_step(plan)):
        b = 0.0
        if mode is Mode.CHARGE:
            b = power or 0.0
        elif mode is Mode.DISCHARGE:
            b = -(power or 0.0)
        elif mode is Mode.BALANCE:
            b = min(max(pv - load, -BATTERY.rated_export_kw), BATTERY.rated_import_kw)
            b = min(max(b, (SOC_MIN - soc) * BATTERY.capacity_kwh / H),
                    (SOC_MAX - soc) * BATTERY.capacity_kwh / H)
        soc += b * H / BATTERY.capacity_kwh
        socs.append(soc)
        grid = (load - pv + b) * H
        cost += grid * prices[i] * (1 if grid >= 0 else EXPORT_PRICE_FRACTION)
    return socs, cost


# --- battery + PV -------------------------------------------------------------------------

def test_battery_plan_validates_and_keeps_the_signal_identity() -> None:
    plan = battery()
    assert validate(plan, BATTERY) == []
    assert (plan.device_id, plan.sequence, plan.event_id, plan.priority) == ("bat-1", 3, "e1", 1)
    assert plan.start == T0 and plan.end == T0 + 16 * STEP
    assert all(s.soc_min == SOC_MIN and s.soc_max == SOC_MAX for s in plan.steps)


def test_battery_charges_cheap_and_discharges_or_balances_dear() -> None:
    plan = battery(soc=0.2)
    assert len(plan.steps) <= 5  # hold, charge, discharge runs merged
    modes = [m for m, _, _ in per_step(plan)]
    assert Mode.CHARGE in modes[:8]
    assert all(m in (Mode.CHARGE, Mode.HOLD) for m in modes[:8])
    assert all(m in (Mode.DISCHARGE, Mode.BALANCE, Mode.HOLD) for m in modes[8:])
    assert any(m in (Mode.DISCHARGE, Mode.BALANCE) for m in modes[8:])


@pytest.mark.parametrize("soc", [0.1, 0.5, 0.93, 0.95],
                         ids=["empty", "half", "off-grid", "full"])
@pytest.mark.parametrize("pv,load", [(0.0, 1.0), (4.0, 0.5), (1.0, 2.5)],
                         ids=["night", "sunny", "cloudy"])
def test_battery_plan_never_leaves_soc_bounds_and_beats_doing_nothing(
        soc: float, pv: float, load: float) -> None:
    plan = battery(soc=soc, pv=pv, load=load)
    assert validate(plan, BATTERY) == []
    socs, cost = simulate_battery(plan, soc, pv, load)
    assert all(SOC_MIN - 1e-9 <= s <= SOC_MAX + 1e-9 for s in socs), socs
    idle = sum(((load - pv) * H) * p.value * (1 if load >= pv else EXPORT_PRICE_FRACTION)
               for p in TWO_LEVEL)
    assert cost <= idle + 1e-9


def test_battery_merges_identical_steps_and_caps_validity_at_48h() -> None:
    flat = (SignalInterval(start=T0, end=None, value=0.2),)
    plan = battery(n=200, prices=flat, pv=0.0, load=0.0)
    assert plan.end - plan.start == MAX_VALIDITY
    assert len(plan.steps) == 1 and plan.steps[0].mode is Mode.HOLD


def test_battery_without_storage_or_matching_forecasts_is_refused() -> None:
    with pytest.raises(ValueError, match="no storage"):
        battery_pv_plan(replace(BATTERY, capacity_kwh=0), TWO_LEVEL, [0.0], [0.0], soc=0.5,
                        step=STEP, start=T0, sequence=1, issuer="agg",
                        purpose=Purpose.ROUTINE, priority=0, rng=random.Random(1))
    with pytest.raises(ValueError, match="forecasts"):
        battery_pv_plan(BATTERY, TWO_LEVEL, [0.0], [0.0, 1.0], soc=0.5, step=STEP, start=T0,
                        sequence=1, issuer="agg", purpose=Purpose.ROUTINE, priority=0,
                        rng=random.Random(1))


# --- EV -----------------------------------------------------------------------------------

def ev(needed: float, prices: tuple[SignalInterval, ...], steps: int) -> tuple[Plan, float]:
    result = ev_plan(EV, prices, energy_kwh_needed=needed, start=T0,
                     departure=T0 + steps * STEP, step=STEP, sequence=3, issuer="agg",
                     purpose=Purpose.ROUTINE, priority=1, rng=random.Random(5))
    return result.plan, result.shortfall_kwh


def ev_energy_and_cost(plan: Plan, prices: tuple[SignalInterval, ...]) -> tuple[float, float]:
    energy = cost = 0.0
    for i, (mode, power, _) in enumerate(per_step(plan)):
        if mode is Mode.CHARGE:
            energy += (power or 0.0) * H
            cost += (power or 0.0) * H * prices[i].value
    return energy, cost


def test_ev_gets_its_energy_by_departure_cheaper_than_charging_now() -> None:
    prices = curve(*([DEAR] * 4 + [CHEAP] * 10 + [DEAR] * 2))  # 10 cheap steps hold 35 kWh
    plan, shortfall = ev(30.0, prices, 16)
    assert validate(plan, EV) == [] and shortfall == 0
    assert plan.end <= T0 + 16 * STEP
    energy, cost = ev_energy_and_cost(plan, prices)
    assert energy == pytest.approx(30.0)
    naive = 0.0  # charge now: full power from the start until the energy is in
    remaining = 30.0
    for p in prices:
        e = min(remaining, EV.rated_import_kw * H)
        naive, remaining = naive + e * p.value, remaining - e
    assert cost < naive - 1e-9
    assert cost == pytest.approx(30.0 * CHEAP)  # all of it in the cheap steps


def test_ev_that_cannot_be_filled_charges_at_full_power_and_reports_the_shortfall() -> None:
    plan, shortfall = ev(40.0, TWO_LEVEL, 4)  # 4 steps x 3.5 kWh = 14 kWh
    assert validate(plan, EV) == []
    assert shortfall == pytest.approx(26.0)
    assert per_step(plan) == [(Mode.CHARGE, EV.rated_import_kw, None)] * 4


def test_ev_needing_nothing_holds() -> None:
    plan, shortfall = ev(0.0, TWO_LEVEL, 8)
    assert shortfall == 0 and [s.mode for s in plan.steps] == [Mode.HOLD]


# --- hot water ----------------------------------------------------------------------------

SECOND = 1 / 3600  # hours


def simulate_tank(plan: Plan, temp: float, loss: float = HOT_WATER_LOSS_C_PER_H) -> list[float]:
    """Tank temperature at each step end, an independent copy of the documented model run in
    one-second steps: the thermostat calls at or below the cut-in and stops at the cut-out; a
    plan's level 100 only switches the supply on."""
    assert TANK.comfort_min_c is not None and TANK.comfort_max_c is not None
    cut_in = max(TANK.comfort_min_c, TANK.comfort_max_c - HOT_WATER_DEADBAND_C)
    temps, calling = [], False
    for _, _, level in per_step(plan):
        for _ in range(round(H / SECOND)):
            calling = temp < TANK.comfort_max_c and (calling or temp <= cut_in)
            temp -= loss * SECOND
            if calling and level == 100:
                temp = min(temp + TANK.rated_import_kw * SECOND / HOT_WATER_KWH_PER_C,
                           TANK.comfort_max_c)
        temps.append(temp)
    return temps


@pytest.mark.parametrize("temp", [46.0, 55.0, 64.0], ids=["cool", "mid", "hot"])
@pytest.mark.parametrize("loss", [1.0, 6.0], ids=["standing", "heavy-draw"])
def test_hot_water_stays_in_its_band_heating_in_cheap_steps(temp: float, loss: float) -> None:
    prices = curve(*([DEAR, CHEAP] * 24))  # alternating, 24 h
    plan = hot_water_plan(TANK, prices, temp_c=temp, start=T0, step=STEP, sequence=3,
                          issuer="agg", purpose=Purpose.ROUTINE, priority=1,
                          rng=random.Random(5), loss_c_per_h=loss)
    assert validate(plan, TANK) == []
    assert plan.end == T0 + 48 * STEP
    temps = simulate_tank(plan, temp, loss)
    # within a second's loss of the band: the copy runs in whole seconds, the model continuously
    assert all(45.0 - loss * SECOND <= t <= 65.0 for t in temps), temps
    heated = [i for i, (_, _, level) in enumerate(per_step(plan)) if level == 100]
    assert heated  # 24 h of loss needs heat
    # Each heating step is cheap unless the one before it could not have held the minimum.
    assert sum(prices[i].value == CHEAP for i in heated) >= len(heated) / 2


def test_hot_water_supply_on_above_the_cut_in_heats_nothing() -> None:
    # A SAPC switches the element's supply; the thermostat decides. Above its cut-in the tank
    # only cools, however long the supply is on; at the cut-in it heats back to the cut-out.
    assert TANK.comfort_max_c is not None
    cut_in = TANK.comfort_max_c - HOT_WATER_DEADBAND_C
    start = cut_in + 2 * H * HOT_WATER_LOSS_C_PER_H  # reaches the cut-in after two steps
    temps = hot_water_temperatures(TANK, [True] * 3, temp_c=start, step=STEP)
    assert temps[:2] == pytest.approx([start - HOT_WATER_LOSS_C_PER_H * H,
                                       start - 2 * HOT_WATER_LOSS_C_PER_H * H])
    assert temps[2] > temps[1]
    tank, kwh = tank_step(TANK, TankState(start), kw=TANK.rated_import_kw, hours=2 * H)
    assert kwh == 0 and tank.temp_c == pytest.approx(cut_in)


@pytest.mark.parametrize("kw,boost", [(3.0, False), (1.0, False), (0.0, False), (3.0, True)])
@pytest.mark.parametrize("temp", [46.0, 58.0, 65.0])
def test_tank_step_is_the_same_in_one_step_or_in_many(kw: float, boost: bool,
                                                      temp: float) -> None:
    # The simulators run the model minute by minute, the plans in half hours: they must agree.
    one, one_kwh = tank_step(TANK, TankState(temp), kw=kw, hours=12.0, boost=boost)
    tank, kwh = TankState(temp), 0.0
    for _ in range(12 * 60):
        tank, used = tank_step(TANK, tank, kw=kw, hours=1 / 60, boost=boost)
        kwh += used
    assert tank.temp_c == pytest.approx(one.temp_c, abs=1e-9)
    assert kwh == pytest.approx(one_kwh, abs=1e-9)
    assert TANK.comfort_min_c is not None and TANK.comfort_max_c is not None
    assert one.temp_c <= max(temp, TANK.comfort_max_c)


def test_hot_water_needs_a_comfort_band() -> None:
    with pytest.raises(ValueError, match="comfort band"):
        hot_water_plan(replace(TANK, comfort_min_c=None), TWO_LEVEL, temp_c=50.0, start=T0,
                       step=STEP, sequence=1, issuer="agg", purpose=Purpose.ROUTINE,
                       priority=0, rng=random.Random(1))


# --- response DSR and re-planning ---------------------------------------------------------

def test_routine_plans_take_a_random_delay_response_plans_none() -> None:
    assert battery().random_delay > timedelta(0)
    plan = hot_water_plan(TANK, TWO_LEVEL, temp_c=50.0, start=T0, step=STEP, sequence=1,
                          issuer="agg", purpose=Purpose.RESPONSE, priority=0,
                          rng=random.Random(1))
    assert plan.random_delay == timedelta(0) and validate(plan, TANK) == []


@pytest.mark.parametrize("measured,margin,expected", [
    ([1.0, 2.0, 3.0], 0.5, False),
    ([1.2, 2.4, 2.6], 0.5, False),
    ([1.0, 2.6], 0.5, True),
    ([1.0, 2.0, 3.0, 4.0], 0.5, True),  # beyond the forecast
    ([1.0, 2.0, 2.0], 0.5, True),
    ([1.0, 2.0, 2.0], 1.0, False),
    ([], 0.0, False),
], ids=lambda v: str(v))
def test_needs_replan(measured: list[float], margin: float, expected: bool) -> None:
    assert needs_replan([1.0, 2.0, 3.0], measured, margin=margin) is expected


def test_needs_replan_refuses_a_negative_margin() -> None:
    with pytest.raises(ValueError, match="margin"):
        needs_replan([1.0], [1.0], margin=-0.1)
