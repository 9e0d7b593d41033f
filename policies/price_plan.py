"""ELECTRICITY_PRICE signals to device plans: battery+PV, EV charging, hot water, and re-planning.

Pure: frozen values in, a `Plan` out; no I/O, no clock (`start` is a parameter), randomness only
from the `random.Random` passed in (the routine-DSR random delay). Prices arrive as the absolute
intervals of `GridSignal.schedule(resource_id)`, one value per interval (e.g. GBP/kWh).

Common rules:
- The horizon is cut into steps of `step` from `start`; each step takes the price of the interval
  containing its start. The horizon ends at the first step with no price, at the end of the
  forecast or departure, and at 48 h (`MAX_VALIDITY`), whichever comes first.
- Consecutive steps with the same mode and settings are merged, so plans stay short.
- Every plan passes `bridge.models.validate` for the device it is made for.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from bridge.models import MAX_VALIDITY, Device, Mode, Plan, PlanStep
from policies.random_delay import random_delay
from ven.records import Purpose, SignalInterval

SOC_MIN: Final = 0.1  # the battery never plans below 10 % state of charge (cell health, backup)
SOC_MAX: Final = 0.95  # nor above 95 %
SOC_LEVELS: Final = 21  # the DP's discretisation of [SOC_MIN, SOC_MAX]
EXPORT_PRICE_FRACTION: Final = 0.5  # exported energy earns this fraction of the import price

HOT_WATER_LOSS_C_PER_H: Final = 1.0  # default standing loss plus typical draw, degrees per hour
HOT_WATER_KWH_PER_C: Final = 0.23  # default: about 200 l of water (4.19 kJ/kg/K)
# An immersion thermostat's differential: it cuts back in this far below its cut-out (rod
# thermostats: about 5-8 degrees). A supply switched on above the cut-in heats nothing.
HOT_WATER_DEADBAND_C: Final = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class EvPlan:
    """An EV charging plan and what it cannot deliver by departure (0 when it delivers all)."""

    plan: Plan
    shortfall_kwh: float
    reason: str


# --- shared -------------------------------------------------------------------------------

def _step_prices(prices: Sequence[SignalInterval], start: datetime, step: timedelta,
                 most: int) -> list[float]:
    """Prices of up to `most` steps from `start`, stopping at the first step without a price
    and at 48 h.

    Raises:
        ValueError: `step` is not positive, or a price is NaN.
    """
    if step <= timedelta(0):
        raise ValueError(f"step {step} is not positive")
    most = min(most, MAX_VALIDITY // step)
    out: list[float] = []
    for i in range(most):
        t = start + i * step
        value = next((p.value for p in prices
                      if p.start <= t and (p.end is None or t < p.end)), None)
        if value is None:
            break
        if math.isnan(value):
            raise ValueError(f"price at {t} is NaN")
        out.append(value)
    return out


def _merge(steps: Sequence[PlanStep]) -> tuple[PlanStep, ...]:
    merged: list[PlanStep] = []
    for s in steps:
        last = merged[-1] if merged else None
        if (last is not None and last.end == s.start and last.mode is s.mode
                and last.power_kw == s.power_kw and last.level == s.level
                and last.soc_min == s.soc_min and last.soc_max == s.soc_max):
            merged[-1] = PlanStep(mode=s.mode, start=last.start, end=s.end,
                                  power_kw=s.power_kw, level=s.level,
                                  soc_min=s.soc_min, soc_max=s.soc_max)
        else:
            merged.append(s)
    return tuple(merged)


def _plan(device: Device, steps: Sequence[PlanStep], *, sequence: int, issuer: str,
          purpose: Purpose, priority: int, rng: random.Random, event_id: str | None) -> Plan:
    if not steps:
        raise ValueError("no priced step in the horizon")
    return Plan(plan_id=f"{event_id or 'price'}/{device.device_id}/{sequence}",
                device_id=device.device_id, sequence=sequence, issuer=issuer, purpose=purpose,
                priority=priority, steps=_merge(steps),
                random_delay=random_delay(purpose, rng), event_id=event_id)


def _cost(grid_kwh: float, price: float) -> float:
    """What `grid_kwh` (positive: import, negative: export) costs at `price`."""
    return grid_kwh * price if grid_kwh >= 0 else grid_kwh * price * EXPORT_PRICE_FRACTION


# --- battery + PV ---------------------------------------------------------------------------

def battery_pv_plan(device: Device, prices: Sequence[SignalInterval], pv_kw: Sequence[float],
                    load_kw: Sequence[float], *, soc: float, step: timedelta, start: datetime,
                    sequence: int, issuer: str, purpose: Purpose, priority: int,
                    rng: random.Random, event_id: str | None = None) -> Plan:
    """The least-grid-cost plan for a battery+PV site over the forecast (`pv_kw`, `load_kw`:
    mean kW per step), from state of charge `soc` (0..1).

    Dynamic programming, backwards over `SOC_LEVELS` evenly spaced levels of
    [`SOC_MIN`, `SOC_MAX`] (lossless battery; optimal for the discretisation). Per step the
    battery may HOLD, BALANCE (absorb spare PV or cover the load, within its ratings; the level
    it ends at is rounded down for the DP, so rounding never creates energy), CHARGE from the
    grid to any higher level within `rated_import_kw`, or DISCHARGE to any lower level within
    `rated_export_kw`. Grid import costs the step's price; export earns
    `EXPORT_PRICE_FRACTION` of it; energy stored at the horizon is worth the cheapest price in
    it (so it is not dumped at the end). A forward pass then follows the DP's choices from the
    true (continuous) state of charge, cutting a charge or discharge (to whole watts, rounded
    down) so the battery never leaves [`SOC_MIN`, `SOC_MAX`]; every step carries those bounds,
    which a BALANCE step keeps by stopping at them.

    Raises:
        ValueError: no storage, `soc` outside 0..1, forecasts of different lengths, no priced
        step, or a non-positive `step`.
    """
    if device.capacity_kwh <= 0:
        raise ValueError(f"{device.device_id} has no storage")
    if not 0.0 <= soc <= 1.0:
        raise ValueError(f"state of charge {soc} outside 0..1")
    if len(pv_kw) != len(load_kw):
        raise ValueError(f"{len(pv_kw)} PV forecasts for {len(load_kw)} load forecasts")
    price = _step_prices(prices, start, step, len(pv_kw))
    n, hours, cap = len(price), step / timedelta(hours=1), device.capacity_kwh
    level_soc = [SOC_MIN + k * (SOC_MAX - SOC_MIN) / (SOC_LEVELS - 1) for k in range(SOC_LEVELS)]

    def nearest(s: float) -> int:
        return min(range(SOC_LEVELS), key=lambda k: abs(level_soc[k] - s))

    def below(s: float) -> int:
        return max((k for k in range(SOC_LEVELS) if level_soc[k] <= s + 1e-9), default=0)

    def balance_kw(i: int, s: float) -> float:
        """Battery power (positive: charging) under BALANCE from `s` in step `i`."""
        b = min(max(pv_kw[i] - load_kw[i], -device.rated_export_kw), device.rated_import_kw)
        floor_kw = min(0.0, (SOC_MIN - s) * cap / hours)  # never below SOC_MIN (nor lower)
        ceiling_kw = max(0.0, (SOC_MAX - s) * cap / hours)
        return min(max(b, floor_kw), ceiling_kw)

    # value[k]: least cost from the start of step i at level k to the horizon. Energy left at
    # the horizon is worth the cheapest price (what refilling it would cost), so the plan does
    # not dump it at the end.
    value = [-(level_soc[k] - SOC_MIN) * cap * min(price, default=0.0) for k in range(SOC_LEVELS)]
    policy: list[list[tuple[Mode, int]]] = [[] for _ in range(n)]
    for i in reversed(range(n)):
        new_value: list[float] = []
        for k in range(SOC_LEVELS):
            net = load_kw[i] - pv_kw[i]
            b = balance_kw(i, level_soc[k])
            after_balance = below(level_soc[k] + b * hours / cap)
            options = [(_cost(net * hours, price[i]) + value[k], Mode.HOLD, k),
                       (_cost((net + b) * hours, price[i]) + value[after_balance],
                        Mode.BALANCE, k)]
            for j in range(SOC_LEVELS):
                p = (level_soc[j] - level_soc[k]) * cap / hours  # battery power, + charging
                if j > k and p <= device.rated_import_kw + 1e-9:
                    options.append((_cost((net + p) * hours, price[i]) + value[j], Mode.CHARGE, j))
                elif j < k and -p <= device.rated_export_kw + 1e-9:
                    options.append((_cost((net + p) * hours, price[i]) + value[j],
                                    Mode.DISCHARGE, j))
            # Least cost; ties go to the simplest mode (HOLD, then BALANCE), in list order.
            best = min(range(len(options)), key=lambda o: (options[o][0] + 1e-12 * o))
            new_value.append(options[best][0])
            policy[i].append((options[best][1], options[best][2]))
        value = new_value

    steps: list[PlanStep] = []
    s = soc
    for i in range(n):
        k = nearest(s)
        mode, target = policy[i][k]
        power: float | None = None
        if mode is Mode.CHARGE:
            power = min((level_soc[target] - level_soc[k]) * cap / hours,
                        (SOC_MAX - s) * cap / hours, device.rated_import_kw)
        elif mode is Mode.DISCHARGE:
            power = min((level_soc[k] - level_soc[target]) * cap / hours,
                        (s - SOC_MIN) * cap / hours, device.rated_export_kw)
        elif mode is Mode.BALANCE:
            s += balance_kw(i, s) * hours / cap
        if power is not None:  # whole watts, rounded down: merges steps, keeps the bounds
            power = math.floor(power * 1000 + 1e-6) / 1000
            s += (power if mode is Mode.CHARGE else -power) * hours / cap
        if power is not None and power <= 0:
            mode, power = Mode.HOLD, None
        steps.append(PlanStep(mode=mode, start=start + i * step, end=start + (i + 1) * step,
                              power_kw=power, soc_min=SOC_MIN, soc_max=SOC_MAX))
    return _plan(device, steps, sequence=sequence, issuer=issuer, purpose=purpose,
                 priority=priority, rng=rng, event_id=event_id)


# --- EV -------------------------------------------------------------------------------------

def ev_plan(device: Device, prices: Sequence[SignalInterval], *, energy_kwh_needed: float,
            start: datetime, departure: datetime, step: timedelta, sequence: int, issuer: str,
            purpose: Purpose, priority: int, rng: random.Random,
            event_id: str | None = None) -> EvPlan:
    """Charge `energy_kwh_needed` in the cheapest whole steps before `departure`, each at up to
    `rated_import_kw` (greedy by price, earliest first on ties: optimal for a linear cost; the
    last step chosen may run at part power). HOLD in the other steps. A part step before
    departure is not used. When the steps cannot deliver the energy, charge at full power from
    the start and report the shortfall.

    Raises:
        ValueError: a negative `energy_kwh_needed`, no priced step before departure, or a
        non-positive `step`.
    """
    if energy_kwh_needed < 0:
        raise ValueError(f"negative energy needed: {energy_kwh_needed} kWh")
    whole = (departure - start) // step if step > timedelta(0) and departure > start else 0
    price = _step_prices(prices, start, step, whole)
    hours = step / timedelta(hours=1)
    full_kwh = device.rated_import_kw * hours
    energy = [0.0] * len(price)
    shortfall = max(0.0, energy_kwh_needed - full_kwh * len(price))
    if shortfall > 0:
        energy = [full_kwh] * len(price)
        reason = (f"{energy_kwh_needed:g} kWh cannot be delivered in {len(price)} steps at "
                  f"{device.rated_import_kw:g} kW: charging at full power, "
                  f"{shortfall:g} kWh short")
    else:
        remaining = energy_kwh_needed
        for i in sorted(range(len(price)), key=lambda i: (price[i], i)):
            if remaining <= 0:
                break
            energy[i] = min(full_kwh, remaining)
            remaining -= energy[i]
        reason = f"{energy_kwh_needed:g} kWh in the cheapest steps before {departure}"
    steps = [PlanStep(mode=Mode.CHARGE if e > 0 else Mode.HOLD, start=start + i * step,
                      end=start + (i + 1) * step, power_kw=e / hours if e > 0 else None)
             for i, e in enumerate(energy)]
    plan = _plan(device, steps, sequence=sequence, issuer=issuer, purpose=purpose,
                 priority=priority, rng=rng, event_id=event_id)
    return EvPlan(plan=plan, shortfall_kwh=shortfall, reason=reason)


# --- hot water ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TankState:
    """A tank's temperature and its thermostat's contacts: `calling` once it fell to the cut-in,
    until it reaches the cut-out (closed contacts stay closed while the supply is cut)."""

    temp_c: float
    calling: bool = False


def tank_step(device: Device, tank: TankState, *, kw: float, hours: float,
              loss_c_per_h: float = HOT_WATER_LOSS_C_PER_H,
              kwh_per_c: float = HOT_WATER_KWH_PER_C,
              deadband_c: float = HOT_WATER_DEADBAND_C,
              boost: bool = False) -> tuple[TankState, float]:
    """The tank after `hours` with `kw` reaching its element (0: supply cut), and the kWh drawn:
    the thermal model. It loses `loss_c_per_h` degrees an hour; its thermostat calls for heat
    at or below the cut-in, max(`comfort_min_c`, `comfort_max_c` - `deadband_c`), and heats at
    `kw` / `kwh_per_c` degrees an hour until the cut-out at `comfort_max_c`. A `boost` moves the
    cut-in to the cut-out: the tank is held at the top. Exact in continuous time, so one long
    step gives what many short ones give. The temperature's lowest point in the step is an end
    or the cut-in, so when both ends are in the band the whole step is.

    Raises:
        ValueError: the device declares no comfort band, or `kwh_per_c` is not positive.
    """
    low, high = device.comfort_min_c, device.comfort_max_c
    if low is None or high is None:
        raise ValueError(f"{device.device_id} declares no comfort band")
    if kwh_per_c <= 0:
        raise ValueError(f"kWh per degree {kwh_per_c} is not positive")
    kw, loss = max(kw, 0.0), loss_c_per_h
    cut_in = high if boost else min(max(low, high - deadband_c), high)
    net = kw / kwh_per_c - loss  # degrees an hour while heating
    temp, calling, left, kwh = tank.temp_c, tank.calling, hours, 0.0
    if cut_in >= high and temp >= high and kw > 0:  # no differential: held at the top
        if net >= 0:
            return TankState(high, calling=False), loss * kwh_per_c * left
        return TankState(temp + net * left, calling=True), kw * left
    cycled = False
    # Phases: cool to the cut-in, heat to the cut-out, skip whole cycles, cool, heat, and one
    # pass for rounding.
    for _ in range(6):
        if left <= 0:
            break
        calling = temp < high and (calling or temp <= cut_in)
        if calling and kw > 0:
            span = left if net <= 0 else min(left, (high - temp) / net)
            temp, kwh, left = temp + net * span, kwh + kw * span, left - span
            if left <= 0:
                break
            temp, calling = high, False  # the cut-out
            if cut_in >= high:  # no differential: held at the top, making up the loss
                kwh += loss * kwh_per_c * left
                break
            if loss <= 0:
                break  # it never cools back to the cut-in
            if not cycled:  # the thermostat now cycles between cut-in and cut-out
                heat_h = (high - cut_in) / net
                period = (high - cut_in) / loss + heat_h
                cycles = left // period
                left, kwh, cycled = left - cycles * period, kwh + cycles * kw * heat_h, True
        elif calling or loss <= 0:  # contacts closed but no supply, or nothing cools it
            temp -= loss * left
            break
        else:
            span = min(left, (temp - cut_in) / loss)
            temp, left = temp - loss * span, left - span
            if left > 0:
                temp, calling = cut_in, True
    return TankState(temp, calling=calling), kwh


def hot_water_temperatures(device: Device, heating: Sequence[bool], *, temp_c: float,
                           step: timedelta, loss_c_per_h: float = HOT_WATER_LOSS_C_PER_H,
                           kwh_per_c: float = HOT_WATER_KWH_PER_C,
                           deadband_c: float = HOT_WATER_DEADBAND_C) -> list[float]:
    """The tank temperature at the end of each step (`tank_step`, its thermostat's contacts open
    at the start): in a heating step the element's supply is on at `rated_import_kw` and the
    thermostat decides; otherwise the supply is cut."""
    hours = step / timedelta(hours=1)
    tank = TankState(temp_c)
    temps: list[float] = []
    for on in heating:
        tank, _ = tank_step(device, tank, kw=device.rated_import_kw if on else 0.0, hours=hours,
                            loss_c_per_h=loss_c_per_h, kwh_per_c=kwh_per_c,
                            deadband_c=deadband_c)
        temps.append(tank.temp_c)
    return temps


def hot_water_plan(device: Device, prices: Sequence[SignalInterval], *, temp_c: float,
                   start: datetime, step: timedelta, sequence: int, issuer: str,
                   purpose: Purpose, priority: int, rng: random.Random,
                   horizon: timedelta = MAX_VALIDITY,
                   loss_c_per_h: float = HOT_WATER_LOSS_C_PER_H,
                   kwh_per_c: float = HOT_WATER_KWH_PER_C,
                   deadband_c: float = HOT_WATER_DEADBAND_C,
                   event_id: str | None = None) -> Plan:
    """Keep the tank in [`comfort_min_c`, `comfort_max_c`] heating in the cheapest steps, with
    the model of `hot_water_temperatures`. A LIMIT plan (level 100 switches the element's supply
    on, 0 cuts it), so it runs on a SAPC too. A supply switch cannot make the thermostat heat:
    the plan counts on the thermostat's cut-in and cut-out (`deadband_c`), as the device will
    behave, not on the tank staying at the top while allowed. Its contacts are taken as open at
    the start (a tank already calling heats sooner than planned, never later).

    Greedy: while the simulated temperature first falls below the minimum at the end of step i,
    turn on heating in the cheapest step not yet heating at or before i (latest first on ties:
    less heat is lost). Each pass turns on one more step, so this ends; with every step on the
    thermostat holds the tank above its cut-in, so the plan keeps the band whenever the tank can;
    when no step is left, the plan heats all it can (best effort).

    Raises:
        ValueError: the device declares no comfort band, no priced step, or a non-positive
        `step` or `kwh_per_c`.
    """
    low, high = device.comfort_min_c, device.comfort_max_c
    if low is None or high is None:
        raise ValueError(f"{device.device_id} declares no comfort band")
    if kwh_per_c <= 0:
        raise ValueError(f"kWh per degree {kwh_per_c} is not positive")
    price = _step_prices(prices, start, step, horizon // step if step > timedelta(0) else 0)
    heating = [False] * len(price)
    for _ in range(len(price) + 1):
        temps = hot_water_temperatures(device, heating, temp_c=temp_c, step=step,
                                       loss_c_per_h=loss_c_per_h, kwh_per_c=kwh_per_c,
                                       deadband_c=deadband_c)
        cold = next((i for i, t in enumerate(temps) if t < low), None)
        if cold is None:
            break
        candidates = [j for j in range(cold + 1) if not heating[j]]
        if not candidates:
            break
        heating[min(candidates, key=lambda j: (price[j], -j))] = True
    steps = [PlanStep(mode=Mode.LIMIT, start=start + i * step, end=start + (i + 1) * step,
                      level=100 if on else 0) for i, on in enumerate(heating)]
    return _plan(device, steps, sequence=sequence, issuer=issuer, purpose=purpose,
                 priority=priority, rng=rng, event_id=event_id)


# --- re-planning ----------------------------------------------------------------------------

def needs_replan(forecast_kw: Sequence[float], measured_kw: Sequence[float], *,
                 margin: float) -> bool:
    """True when any measurement so far deviates from its forecast by more than `margin` kW
    (pairs compared in order; measurements beyond the forecast count as deviating).

    Raises:
        ValueError: `margin` is negative or NaN.
    """
    if not margin >= 0:
        raise ValueError(f"margin {margin} kW is not a non-negative number")
    if len(measured_kw) > len(forecast_kw):
        return True
    return any(not abs(m - f) <= margin for f, m in zip(forecast_kw, measured_kw))
