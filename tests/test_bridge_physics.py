"""bridge.sim.physics: device physics under commands, device telemetry, per-resource readings
(the VEN's TelemetrySource) and the flexibility the bridge dispatches with."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from bridge.channel import PLAN_PRIMACY, Command, CommandBook, Setpoint
from bridge.models import Channel, Device, Mode
from bridge.sim.physics import (
    FLEX_HORIZON,
    ROUND_TRIP_EFFICIENCY,
    EvSession,
    LoadProfile,
    SimulatedFleet,
    SiteProfile,
    TankProfile,
)
from oadr.messages import ReportRequest, SpecifierPayload
from policies.dispatch import allocate
from policies.price_plan import (
    HOT_WATER_KWH_PER_C,
    HOT_WATER_LOSS_C_PER_H,
    SOC_MAX,
    SOC_MIN,
    hot_water_plan,
)
from ven.fleet import DeviceClass, ResourceSpec, VenSpec
from ven.records import Purpose, RequestState, Sample, SignalInterval
from ven.reports import (
    TELEMETRY_STATUS,
    TELEMETRY_USAGE,
    Reading,
    accept,
    rid,
    take_samples,
)

T0 = datetime(2024, 6, 1, tzinfo=UTC)  # midnight UTC
MIN = timedelta(minutes=1)
H = timedelta(hours=1)
TOL = 1e-9

BATTERY = Device(device_id="bat-1", resource_id="sites", device_class=DeviceClass.BATTERY,
                 channel=Channel.BATTERY_HUB, network_area="A", rated_import_kw=3.0,
                 rated_export_kw=2.5, capacity_kwh=10.0)
EV = Device(device_id="ev-1", resource_id="evs", device_class=DeviceClass.EV,
            channel=Channel.OCPP, network_area="A", rated_import_kw=7.0, capacity_kwh=60.0)
TANK = Device(device_id="tank-1", resource_id="tanks", device_class=DeviceClass.HOT_WATER,
              channel=Channel.SAPC, network_area="A", rated_import_kw=3.0,
              comfort_min_c=45.0, comfort_max_c=60.0)
HEAT_PUMP = Device(device_id="hp-1", resource_id="pumps", device_class=DeviceClass.HEAT_PUMP,
                   channel=Channel.SAPC, network_area="A", rated_import_kw=4.0)
DARK = SiteProfile(pv_peak_kw=0.0, load_base_kw=0.0, load_morning_kw=0.0, load_evening_kw=0.0)
SUNNY = SiteProfile(soc=0.5, pv_peak_kw=5.0, load_base_kw=0.4)


def resource(resource_id: str) -> ResourceSpec:
    return ResourceSpec(resource_id=resource_id, rated_kw=10.0, baseline_kw=1.0, flexible_kw=1.0)


def order(book: CommandBook, device: Device, setpoint: Setpoint, start: datetime,
          end: datetime | None = None, *, source: str = "plan-1") -> Command:
    command = Command(device_id=device.device_id, setpoint=setpoint, start=start, end=end,
                      source=source, received_at=start, primacy=PLAN_PRIMACY)
    book.record(command)
    return command


def fleet(*devices: Device, book: CommandBook | None = None, seed: int = 1,
          **profiles: SiteProfile | EvSession | TankProfile | LoadProfile) -> SimulatedFleet:
    return SimulatedFleet(devices, book or CommandBook(), start=T0, seed=seed,
                          profiles={k.replace("_", "-"): v for k, v in profiles.items()})


def minutes(sim: SimulatedFleet, n: int) -> Iterator[datetime]:
    """Advance `n` one-minute steps, yielding each step's start once it has run."""
    for _ in range(n):
        start = sim.now
        sim.advance(start + MIN)
        yield start


def battery_kw(profile: SiteProfile, site_kw: float, step_start: datetime) -> float:
    """The battery's share of the site's import: site = load - PV + battery (clear sky)."""
    hour = step_start.hour + step_start.minute / 60
    return site_kw - profile.load_kw(hour) + profile.clear_sky_pv_kw(hour)


# --- battery + PV site ------------------------------------------------------------------------

@pytest.mark.parametrize("profile", [DARK, SUNNY], ids=["dark", "sunny"])
def test_battery_energy_is_conserved_with_the_round_trip_efficiency(profile: SiteProfile) -> None:
    book = CommandBook()
    order(book, BATTERY, Setpoint(mode=Mode.CHARGE, power_kw=2.0), T0 + 2 * H, T0 + 4 * H)
    order(book, BATTERY, Setpoint(mode=Mode.DISCHARGE, power_kw=2.5), T0 + 16 * H, T0 + 17 * H)
    sim = fleet(BATTERY, book=book, bat_1=profile)
    soc0 = sim.telemetry("bat-1").soc
    charged = discharged = 0.0
    for start in minutes(sim, 24 * 60):
        b = battery_kw(profile, sim.telemetry("bat-1").power_kw, start) / 60
        charged, discharged = charged + max(b, 0.0), discharged + max(-b, 0.0)
    soc1 = sim.telemetry("bat-1").soc
    assert soc0 is not None and soc1 is not None
    assert charged > 1 and discharged > 1  # both directions ran
    assert (soc1 - soc0) * BATTERY.capacity_kwh == pytest.approx(
        charged * ROUND_TRIP_EFFICIENCY - discharged, abs=1e-6)


def test_state_of_charge_and_power_stay_within_the_battery_limits() -> None:
    book, rng = CommandBook(), random.Random(7)
    for i in range(48):  # half-hour commands, many far beyond the ratings
        mode = rng.choice([Mode.CHARGE, Mode.DISCHARGE, Mode.HOLD, Mode.BALANCE, Mode.LIMIT])
        setpoint = Setpoint(mode=mode, power_kw=rng.uniform(0, 9), level=rng.randint(0, 100))
        order(book, BATTERY, setpoint, T0 + i * H / 2, T0 + (i + 1) * H / 2, source=f"p{i}")
    sim = fleet(BATTERY, book=book, bat_1=SUNNY)
    socs = []
    for start in minutes(sim, 24 * 60):
        t = sim.telemetry("bat-1")
        assert t.soc is not None
        socs.append(t.soc)
        assert SOC_MIN - TOL <= t.soc <= SOC_MAX + TOL
        assert -BATTERY.rated_export_kw - TOL <= battery_kw(SUNNY, t.power_kw, start) \
            <= BATTERY.rated_import_kw + TOL
    assert max(socs) == pytest.approx(SOC_MAX) or min(socs) == pytest.approx(SOC_MIN)


def test_balance_covers_the_load_from_pv_and_battery_while_the_charge_allows() -> None:
    low = replace(SUNNY, soc=0.15)  # empties before dawn, fills by noon
    sim = fleet(BATTERY, bat_1=low)  # no command: balance is the day job
    covered = empty = full = 0
    prev_soc = low.soc
    for start in minutes(sim, 24 * 60):
        t = sim.telemetry("bat-1")
        assert t.soc is not None
        hour = start.hour + start.minute / 60
        net = low.load_kw(hour) - low.clear_sky_pv_kw(hour)
        within = -BATTERY.rated_import_kw <= net <= BATTERY.rated_export_kw
        free = all(SOC_MIN + 1e-6 < soc < SOC_MAX - 1e-6 for soc in (prev_soc, t.soc))
        if within and free:
            covered += 1
            assert t.power_kw == pytest.approx(0.0, abs=TOL)
        elif prev_soc <= SOC_MIN + TOL and net > 0:
            empty += 1  # the load is imported: nothing hides it
            assert t.power_kw == pytest.approx(net)
        elif prev_soc >= SOC_MAX - TOL and net < 0:
            full += 1  # spare PV is exported
            assert t.power_kw == pytest.approx(net)
        prev_soc = t.soc
    assert covered > 6 * 60 and empty > 30 and full > 30


def test_limit_caps_site_import_by_discharging_only_the_excess() -> None:
    book = CommandBook()
    evening = T0 + 18 * H
    order(book, BATTERY, Setpoint(mode=Mode.LIMIT, level=10), evening, evening + H)
    heavy = replace(SUNNY, load_base_kw=0.5, soc=0.9)  # the load alone is beyond the cap
    sim = fleet(BATTERY, book=book, bat_1=heavy)
    sim.advance(evening)
    cap = BATTERY.rated_import_kw * 0.10
    for start in minutes(sim, 60):
        hour = start.hour + start.minute / 60
        assert heavy.load_kw(hour) - heavy.clear_sky_pv_kw(hour) > cap
        assert sim.telemetry("bat-1").power_kw == pytest.approx(cap)  # no more discharged
    reading = sim.read(resource("sites"), sim.now - MIN)
    assert reading.load_control is not None and reading.load_control.current == pytest.approx(0.1)


def test_limit_caps_an_ev_and_a_heat_pump_and_the_resource_reports_the_share() -> None:
    book = CommandBook()
    pump2 = replace(HEAT_PUMP, device_id="hp-2")
    for device, level in ((EV, 50), (HEAT_PUMP, 25), (pump2, 75)):
        order(book, device, Setpoint(mode=Mode.LIMIT, level=level), T0 + H, T0 + 2 * H)
    sim = fleet(EV, HEAT_PUMP, pump2, book=book, hp_1=LoadProfile(baseline_kw=3.0),
                hp_2=LoadProfile(baseline_kw=2.0))
    sim.advance(T0 + H + 30 * MIN)
    assert sim.telemetry("ev-1").power_kw == pytest.approx(EV.rated_import_kw / 2)
    assert sim.telemetry("hp-1").power_kw == pytest.approx(HEAT_PUMP.rated_import_kw / 4)
    assert sim.telemetry("hp-2").power_kw == pytest.approx(2.0)  # under its cap of 3 kW
    pumps = sim.read(resource("pumps"), sim.now)
    assert pumps.power_kw == pytest.approx(1.0 + 2.0)
    assert pumps.load_control is not None and pumps.load_control.current == pytest.approx(0.5)
    sim.advance(T0 + 2 * H + MIN)  # the commands ended: back to the day job, no load control
    assert sim.telemetry("ev-1").power_kw == pytest.approx(EV.rated_import_kw)
    assert sim.read(resource("pumps"), sim.now).load_control is None


def test_a_cease_to_energize_switches_the_inverter_off_but_the_load_still_draws() -> None:
    book = CommandBook()
    noon = T0 + 12 * H
    order(book, BATTERY, Setpoint(mode=Mode.BALANCE, energized=False), noon, noon + H)
    sim = fleet(BATTERY, book=book, bat_1=SUNNY)
    sim.advance(noon)
    soc = sim.telemetry("bat-1").soc
    for start in minutes(sim, 30):
        assert sim.telemetry("bat-1").power_kw == pytest.approx(SUNNY.load_kw(
            start.hour + start.minute / 60))
    assert sim.telemetry("bat-1").soc == soc


# --- EV ---------------------------------------------------------------------------------------

def test_ev_meets_its_need_by_departure_and_stops_when_full() -> None:
    session = EvSession(arrival=T0 + H, departure=T0 + 9 * H, energy_kwh=20.0)
    sim = fleet(EV, ev_1=session)
    powers = []
    for _ in range(10 * 60):
        start = sim.now
        sim.advance(start + MIN)
        powers.append((start, sim.telemetry("ev-1").power_kw))
    assert all(p == 0 for start, p in powers if start < session.arrival)
    assert all(0 <= p <= EV.rated_import_kw + TOL for _, p in powers)
    t = sim.telemetry("ev-1")
    assert t.energy_kwh == pytest.approx(session.energy_kwh)
    assert t.energy_needed_kwh == pytest.approx(0.0) and t.power_kw == 0
    full_at = session.arrival + timedelta(hours=session.energy_kwh / EV.rated_import_kw)
    assert all(p == 0 for start, p in powers if start >= full_at)


def test_ev_charges_at_the_commanded_power_and_leaves_short_when_held() -> None:
    book = CommandBook()
    session = EvSession(arrival=T0, departure=T0 + 4 * H, energy_kwh=20.0)
    order(book, EV, Setpoint(mode=Mode.CHARGE, power_kw=3.0), T0, T0 + 2 * H)
    order(book, EV, Setpoint(mode=Mode.HOLD), T0 + 2 * H, None, source="plan-2")
    sim = fleet(EV, book=book, ev_1=session)
    sim.advance(T0 + 5 * H)
    t = sim.telemetry("ev-1")
    assert t.energy_kwh == pytest.approx(3.0 * 2)
    assert t.energy_needed_kwh == pytest.approx(session.energy_kwh - 6.0)


# --- hot water --------------------------------------------------------------------------------

def test_heat_loss_lowers_the_temperature_without_heating() -> None:
    book = CommandBook()
    order(book, TANK, Setpoint(mode=Mode.HOLD), T0, None)
    sim = fleet(TANK, book=book, tank_1=TankProfile(temp_c=58.0))
    sim.advance(T0 + 6 * H)  # past the thermostat's switch-on point, but held off
    t = sim.telemetry("tank-1")
    assert t.temp_c == pytest.approx(58.0 - 6 * HOT_WATER_LOSS_C_PER_H)
    assert t.energy_kwh == 0 and not t.manual_override


def test_hot_water_keeps_its_comfort_band_under_limit_zero_and_reports_the_override() -> None:
    book = CommandBook()
    order(book, TANK, Setpoint(mode=Mode.LIMIT, level=0), T0, T0 + 8 * H)
    assert TANK.comfort_min_c is not None and TANK.comfort_max_c is not None
    sim = fleet(TANK, book=book, tank_1=TankProfile(temp_c=TANK.comfort_min_c + 1.0))
    overridden = []
    for _ in minutes(sim, 8 * 60):
        t = sim.telemetry("tank-1")
        assert t.temp_c is not None
        assert TANK.comfort_min_c - TOL <= t.temp_c <= TANK.comfort_max_c
        overridden.append(t.manual_override)
    assert not overridden[0] and overridden[-1]  # once it had to heat, it says so
    # It heats only to hold the minimum: the energy replaces the standing loss below it.
    t = sim.telemetry("tank-1")
    assert t.energy_kwh == pytest.approx(
        ((t.temp_c or 0) - (TANK.comfort_min_c + 1.0) + 8 * HOT_WATER_LOSS_C_PER_H)
        * HOT_WATER_KWH_PER_C)
    (state,) = sim.states()
    assert not state.available
    reading = sim.read(resource("tanks"), sim.now)
    assert reading.manual_override and reading.load_control is not None
    sim.advance(T0 + 8 * H + 2 * MIN)  # the command ended
    assert not sim.telemetry("tank-1").manual_override


def test_hot_water_thermostat_heats_to_the_top_of_its_band_by_default() -> None:
    profile = TankProfile(temp_c=50.0)
    sim = fleet(TANK, tank_1=profile)
    temps = []
    for _ in minutes(sim, 4 * 60):
        temp = sim.telemetry("tank-1").temp_c
        assert temp is not None
        temps.append(temp)
    assert TANK.comfort_max_c is not None
    top = temps.index(max(temps))
    # heated straight up to the cut-out, reached within a minute (then it cools)
    assert TANK.comfort_max_c - HOT_WATER_LOSS_C_PER_H / 60 <= max(temps) <= TANK.comfort_max_c
    assert temps[:top] == sorted(temps[:top])
    # then it cools, and the thermostat waits for the deadband before heating again
    assert temps[top:] == sorted(temps[top:], reverse=True)
    assert min(temps[top:]) >= TANK.comfort_max_c - profile.deadband_c
    assert not sim.telemetry("tank-1").manual_override


# GB day-ahead shape (GBP/kWh from the hour): cheap night, morning bump, solar dip, 16-19 peak.
AGILE_LIKE = ((0, 0.10), (5, 0.14), (7, 0.24), (9, 0.18), (11, 0.11), (15, 0.20), (16, 0.36),
              (19, 0.22), (22, 0.13))


@pytest.mark.parametrize("temp", [46.0, 52.5, 58.0, 60.0])
def test_hot_water_following_its_price_plan_keeps_its_band_without_overriding(
        temp: float) -> None:
    # The plan is made with the tank's own model (thermostat cut-in and cut-out included), so
    # the tank never has to go against it: it stays in its band and never reports an override.
    half_hour = timedelta(minutes=30)
    prices = [SignalInterval(start=T0 + i * half_hour, end=T0 + (i + 1) * half_hour,
                             value=next(p for h, p in reversed(AGILE_LIKE) if i / 2 >= h))
              for i in range(48)]
    plan = hot_water_plan(TANK, prices, temp_c=temp, start=T0, step=half_hour, sequence=1,
                          issuer="agg", purpose=Purpose.RESPONSE, priority=0,
                          rng=random.Random(1))
    book = CommandBook()
    for step in plan.steps:
        order(book, TANK, Setpoint(mode=step.mode, level=step.level), step.start, step.end,
              source=plan.plan_id)
    sim = fleet(TANK, book=book, tank_1=TankProfile(temp_c=temp))
    assert TANK.comfort_min_c is not None and TANK.comfort_max_c is not None
    heated_at = set()
    for start in minutes(sim, 24 * 60):
        t = sim.telemetry("tank-1")
        assert t.temp_c is not None and not t.manual_override, (start, t)
        assert TANK.comfort_min_c <= t.temp_c <= TANK.comfort_max_c, (start, t)
        if t.power_kw > 0:
            heated_at.add(start)
    # It heats only where the plan lets it, and does heat (a day's loss needs it).
    assert heated_at
    allowed = [(s.start, s.end) for s in plan.steps if s.level == 100]
    assert all(any(a <= at < b for a, b in allowed) for at in heated_at)


# --- failures and overrides -------------------------------------------------------------------

def test_failed_device_reports_offline_and_ignores_commands_until_it_recovers() -> None:
    book = CommandBook()
    order(book, BATTERY, Setpoint(mode=Mode.CHARGE, power_kw=3.0), T0 + H, None)
    sim, twin = fleet(BATTERY, book=book, bat_1=SUNNY), fleet(BATTERY, bat_1=SUNNY)
    sim.fail("bat-1")
    for _ in range(90):
        sim.advance(sim.now + MIN)
        twin.advance(sim.now)
        assert sim.telemetry("bat-1").power_kw == twin.telemetry("bat-1").power_kw
    assert not sim.telemetry("bat-1").online
    assert not sim.read(resource("sites"), sim.now).online
    assert not sim.states()[0].available
    sim.recover("bat-1")
    sim.advance(sim.now + MIN)
    assert sim.telemetry("bat-1").online
    assert battery_kw(SUNNY, sim.telemetry("bat-1").power_kw, sim.now - MIN) == pytest.approx(3.0)


def test_user_override_ignores_commands_and_is_reported() -> None:
    book = CommandBook()
    order(book, HEAT_PUMP, Setpoint(mode=Mode.LIMIT, level=0), T0, None)
    sim = fleet(HEAT_PUMP, book=book, hp_1=LoadProfile(baseline_kw=2.0))
    sim.advance(T0 + 10 * MIN)
    assert sim.telemetry("hp-1").power_kw == 0
    sim.override("hp-1")
    sim.advance(T0 + 20 * MIN)
    t = sim.telemetry("hp-1")
    assert t.power_kw == 2.0 and t.manual_override and t.online
    assert sim.read(resource("pumps"), sim.now).manual_override
    sim.override("hp-1", on=False)
    sim.advance(T0 + 30 * MIN)
    assert sim.telemetry("hp-1").power_kw == 0 and not sim.telemetry("hp-1").manual_override


# --- readings ---------------------------------------------------------------------------------

def mixed_fleet(book: CommandBook, seed: int = 3) -> SimulatedFleet:
    bat2 = replace(BATTERY, device_id="bat-2")
    ev2 = replace(EV, device_id="ev-2", resource_id="sites")
    order(book, BATTERY, Setpoint(mode=Mode.DISCHARGE, power_kw=2.0), T0 + 2 * H, T0 + 3 * H)
    order(book, EV, Setpoint(mode=Mode.LIMIT, level=30), T0 + H, T0 + 2 * H)
    return fleet(BATTERY, bat2, EV, ev2, TANK, HEAT_PUMP, book=book, seed=seed,
                 bat_1=replace(SUNNY, cloud=0.7), bat_2=SUNNY)


def test_energy_counters_are_monotone_and_readings_sum_the_resource_devices() -> None:
    sim = mixed_fleet(CommandBook())
    members = {"sites": ("bat-1", "bat-2", "ev-2"), "evs": ("ev-1",), "tanks": ("tank-1",),
               "pumps": ("hp-1",)}
    last: dict[str, float] = {}
    for step in range(6 * 12):
        now = T0 + step * 5 * MIN
        for resource_id, ids in members.items():
            reading = sim.read(resource(resource_id), now)
            tele = [sim.telemetry(i) for i in ids]
            assert reading.power_kw == pytest.approx(sum(t.power_kw for t in tele))
            assert reading.energy_kwh == pytest.approx(sum(t.energy_kwh for t in tele))
            assert reading.energy_kwh >= last.get(resource_id, 0.0)
            last[resource_id] = reading.energy_kwh
    assert all(v > 0 for v in last.values())
    assert sim.read(resource("nobody"), sim.now) == Reading(
        power_kw=0.0, energy_kwh=0.0, online=False, manual_override=False)


def test_a_resource_is_online_while_any_device_is() -> None:
    sim = mixed_fleet(CommandBook())
    sim.fail("bat-1")
    sim.fail("bat-2")
    sim.advance(T0 + MIN)
    assert sim.read(resource("sites"), sim.now).online
    sim.fail("ev-2")
    assert not sim.read(resource("sites"), T0 + 2 * MIN).online


def test_out_of_order_reads_come_from_history_and_agree_with_reads_in_order() -> None:
    times = [T0 + k * timedelta(seconds=37) for k in range(1, 400)]
    in_order = mixed_fleet(CommandBook())
    expected = {t: in_order.read(resource("sites"), t) for t in times}
    shuffled = mixed_fleet(CommandBook())
    rng = random.Random(11)
    picks = sorted(rng.sample(times, 200), key=lambda _: rng.random())
    latest = T0
    for t in picks:
        got = shuffled.read(resource("sites"), t)
        latest = max(latest, t)
        assert shuffled.now == latest  # an earlier read never runs the physics back
        want = expected[t]
        assert got.power_kw == pytest.approx(want.power_kw)
        assert got.energy_kwh == pytest.approx(want.energy_kwh)
        assert (got.online, got.manual_override, got.load_control) == \
            (want.online, want.manual_override, want.load_control)
        assert shuffled.read(resource("sites"), t) == got  # asking again: the same answer
    by_time = sorted((t, shuffled.read(resource("sites"), t).energy_kwh) for t in picks)
    assert all(a[1] <= b[1] + TOL for a, b in itertools.pairwise(by_time))


def test_same_seed_same_readings_and_clouds_only_take_pv_away() -> None:
    cloudy = replace(SUNNY, cloud=0.8)

    def run(seed: int) -> list[tuple[datetime, float]]:
        book = CommandBook()
        order(book, BATTERY, Setpoint(mode=Mode.HOLD), T0, None)  # the site shows load - PV
        sim = fleet(BATTERY, seed=seed, book=book, bat_1=cloudy)
        return [(start, sim.telemetry("bat-1").power_kw) for start in minutes(sim, 24 * 60)]

    first, again, other = run(5), run(5), run(6)
    assert first == again and first != other
    for start, kw in first:
        hour = start.hour + start.minute / 60
        assert cloudy.load_kw(hour) - cloudy.clear_sky_pv_kw(hour) - TOL <= kw <= \
            cloudy.load_kw(hour) + TOL


# --- flexibility ------------------------------------------------------------------------------

def test_a_full_battery_offers_no_charging_and_an_empty_one_no_discharging() -> None:
    full, empty = replace(DARK, soc=SOC_MAX), replace(DARK, soc=SOC_MIN)
    bat2 = replace(BATTERY, device_id="bat-2")
    sim = fleet(BATTERY, bat2, bat_1=full, bat_2=empty)
    sim.advance(T0 + MIN)
    states = {s.device.device_id: s for s in sim.states()}
    assert states["bat-1"].flex_up_kw == 0 and states["bat-1"].flex_down_kw > 0
    assert states["bat-2"].flex_down_kw == 0
    assert states["bat-2"].flex_up_kw == pytest.approx(BATTERY.rated_import_kw)
    assert all(s.available for s in states.values())


@pytest.mark.parametrize("soc", [SOC_MIN + 0.02, 0.5])
def test_a_battery_delivers_the_flexibility_it_offers_for_the_whole_horizon(soc: float) -> None:
    horizon = timedelta(minutes=15)
    book = CommandBook()
    sim = fleet(BATTERY, book=book, bat_1=replace(DARK, soc=soc))
    sim.advance(T0 + MIN)
    (state,) = sim.states(horizon=horizon)
    share = allocate(-state.flex_down_kw, [state]).shares["bat-1"]
    order(book, BATTERY, Setpoint(mode=Mode.DISCHARGE, power_kw=-share.expected_kw), sim.now,
          sim.now + horizon)
    for _ in range(round(horizon / MIN)):
        sim.advance(sim.now + MIN)
        assert sim.telemetry("bat-1").power_kw == pytest.approx(share.expected_kw)
    # Near empty, the charge left limits what it offers; otherwise its rating does.
    near_empty = soc < 0.2
    assert (-share.expected_kw < BATTERY.rated_export_kw) == near_empty


def test_flexibility_of_ev_tank_and_offline_devices_follows_their_state() -> None:
    away = EvSession(arrival=T0 + 5 * H, departure=None, energy_kwh=10.0)
    bat2 = replace(BATTERY, device_id="bat-2")
    sim = fleet(EV, TANK, HEAT_PUMP, bat2, ev_1=away, tank_1=TankProfile(temp_c=60.0),
                hp_1=LoadProfile(baseline_kw=1.0))
    sim.fail("bat-2")
    sim.advance(T0 + MIN)
    states = {s.device.device_id: s for s in sim.states()}
    assert (states["ev-1"].flex_down_kw, states["ev-1"].flex_up_kw) == (0, 0)  # not plugged in
    # A tank near the top can only heat back to it and make up what it loses meanwhile.
    temp, hours = sim.telemetry("tank-1").temp_c, FLEX_HORIZON / H
    assert temp is not None and TANK.comfort_max_c is not None
    assert states["tank-1"].flex_up_kw == pytest.approx(
        ((TANK.comfort_max_c - temp) / hours + HOT_WATER_LOSS_C_PER_H) * HOT_WATER_KWH_PER_C)
    assert (states["hp-1"].flex_down_kw, states["hp-1"].flex_up_kw) == (1.0, 3.0)
    assert not states["bat-2"].available and states["hp-1"].available


@pytest.mark.parametrize("devices, profiles", [
    ((BATTERY, BATTERY), {}),
    ((replace(BATTERY, capacity_kwh=0.0),), {}),
    ((replace(TANK, comfort_min_c=None),), {}),
    ((EV,), {"someone": TankProfile()}),
])
def test_a_fleet_that_cannot_be_simulated_is_refused(devices: Sequence[Device],
                                                     profiles: dict[str, TankProfile]) -> None:
    with pytest.raises(ValueError):
        SimulatedFleet(devices, CommandBook(), start=T0, profiles=profiles)


def test_a_profile_of_the_wrong_kind_is_refused() -> None:
    with pytest.raises(TypeError, match="EvSession"):
        SimulatedFleet((EV,), CommandBook(), start=T0, profiles={"ev-1": TankProfile()})


def test_a_naive_start_is_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        SimulatedFleet((HEAT_PUMP,), CommandBook(), start=T0.replace(tzinfo=None))


def test_unknown_devices_are_named() -> None:
    sim = fleet(HEAT_PUMP)
    with pytest.raises(KeyError, match="ghost"):
        sim.fail("ghost")
    assert math.isfinite(sim.telemetry("hp-1").power_kw)


def test_the_ven_report_engine_samples_the_fleet_on_two_grids() -> None:
    """Two requests on different grids, the coarse one sampled first: the fine one's readings
    come from history and agree with the coarse one's where their grids meet."""
    book = CommandBook()
    order(book, HEAT_PUMP, Setpoint(mode=Mode.LIMIT, level=40), T0 + 2 * MIN, None)
    sim = mixed_fleet(book)
    sites, pumps = ResourceSpec(resource_id="sites", rated_kw=20.0, baseline_kw=5.0,
                                flexible_kw=5.0), resource("pumps")
    spec = VenSpec(name="ven-a", vtn_url="https://vtn.test/OpenADR2/Simple/2.0b",
                   resources=(sites, pumps), report_min_period=timedelta(seconds=10))
    rids = (rid("sites", "energy"), rid("pumps", "power"), rid("pumps", "status"))

    def requested(name: str, granularity: timedelta) -> RequestState:
        req = ReportRequest(report_request_id=name, report_specifier_id=TELEMETRY_USAGE,
                            granularity=granularity, report_back_duration=5 * MIN,
                            specifiers=tuple(SpecifierPayload(r_id=r) for r in rids[:2]))
        return accept(req, spec, T0, random.Random(1))

    coarse, fine = requested("coarse", MIN), requested("fine", timedelta(seconds=10))
    late = T0 + 4 * MIN + timedelta(seconds=30)
    _, coarse_samples = take_samples(coarse, spec, sim, late)
    _, fine_samples = take_samples(fine, spec, sim, late)
    assert sim.now == late

    def series(samples: Sequence[Sample], r_id: str) -> dict[datetime, float]:
        out: dict[datetime, float] = {}
        for s in samples:
            if s.r_id == r_id:
                assert s.value is not None
                out[s.at] = s.value
        return out

    fine_energy = series(fine_samples, rid("sites", "energy"))
    assert len(fine_energy) > len(series(coarse_samples, rid("sites", "energy"))) > 1
    for t, value in series(coarse_samples, rid("sites", "energy")).items():
        assert fine_energy[t] == pytest.approx(value)
    values = [v for _, v in sorted(fine_energy.items())]
    assert values == sorted(values)
    pump_power = series(fine_samples, rid("pumps", "power"))
    assert pump_power[T0 + 4 * MIN] == pytest.approx(HEAT_PUMP.rated_import_kw * 0.4)
    status = accept(ReportRequest(report_request_id="status", report_specifier_id=TELEMETRY_STATUS,
                                  granularity=timedelta(0), report_back_duration=timedelta(0),
                                  specifiers=(SpecifierPayload(r_id=rids[2]),)),
                    spec, late, random.Random(1))
    (sample,) = take_samples(status, spec, sim, late)[1]
    assert sample.online and sample.value == pytest.approx(0.4)


def test_an_override_cap_holds_a_charging_plan_under_it_until_lifted() -> None:
    book = CommandBook()
    order(book, EV, Setpoint(mode=Mode.CHARGE), T0, T0 + 3 * H)  # flat out
    book.record(Command(device_id="ev-1", setpoint=Setpoint(mode=Mode.LIMIT, level=25),
                        start=T0 + H, end=None, source="cmb", received_at=T0, primacy=0))
    sim = fleet(EV, book=book)
    sim.advance(T0 + 30 * MIN)
    assert sim.telemetry("ev-1").power_kw == pytest.approx(EV.rated_import_kw)
    sim.advance(T0 + H + 30 * MIN)
    assert sim.telemetry("ev-1").power_kw == pytest.approx(EV.rated_import_kw / 4)
    book.withdraw("ev-1", "cmb")  # lifted: the plan again
    sim.advance(T0 + 2 * H)
    assert sim.telemetry("ev-1").power_kw == pytest.approx(EV.rated_import_kw)
