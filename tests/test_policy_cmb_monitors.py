"""The CMB's fleet monitors: each raises on the fleet behaviour it watches for, once, with the
numbers, threshold, window and devices; expected correlation (tariff boundaries, dispatched
windows, plans that follow the prognosis) raises nothing."""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest

from bridge.models import Channel
from policies.cmb_monitors import FleetMonitors, MonitorConfig
from ven.fleet import DeviceClass
from vtn.cmb.records import (Alert, DeviceRegistration, DispatchWindow, Prognosis, StateChange,
                             Tariff)

T0 = datetime(2026, 11, 27, 3, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
FLEET = 100


def registry(n: int = FLEET, owner: str = "agg-a") -> dict[str, DeviceRegistration]:
    return {f"{owner}-{i}": DeviceRegistration(
        device_id=f"{owner}-{i}", owner=owner, device_class=DeviceClass.BATTERY,
        network_area="area-1", channel=Channel.BATTERY_HUB, reach=f"hub/{i}",
        rated_import_kw=3.0, rated_export_kw=3.0) for i in range(n)}


def change(device: str, at: datetime, from_kw: float, to_kw: float, *,
           spread: timedelta = timedelta(0), plan: str = "p1", event_id: str | None = None,
           program: str | None = "agile", aggregator: str = "agg-a") -> StateChange:
    return StateChange(device_id=device, aggregator=aggregator, network_area="area-1", at=at,
                       spread=spread, from_kw=from_kw, to_kw=to_kw, plan_id=plan,
                       event_id=event_id, program=program)


def fleet_switch(devices: Iterable[str], at: datetime, to_kw: float = 3.0, *,
                 spread: timedelta = timedelta(0), rng: random.Random | None = None,
                 **kw: object) -> list[StateChange]:
    """Each device steps 0 -> `to_kw` at `at`, with its own random delay up to `spread`."""
    return [change(d, at, 0.0, to_kw, spread=timedelta(seconds=rng.randint(
        0, int(spread.total_seconds()))) if rng else spread, **kw)  # type: ignore[arg-type]
        for d in devices]


def monitors(config: MonitorConfig | None = None, **kw: object) -> FleetMonitors:
    return FleetMonitors(config or MonitorConfig(), registry(), **kw)  # type: ignore[arg-type]


def by_monitor(alerts: list[Alert]) -> dict[str, list[Alert]]:
    out: dict[str, list[Alert]] = {}
    for a in alerts:
        out.setdefault(a.monitor, []).append(a)
    return out


def half_hourly(start: datetime, hours: int = 24) -> Tariff:
    return Tariff(tariff_id="agile", boundaries=tuple(start + timedelta(minutes=30 * i)
                                                      for i in range(2 * hours)))


def test_a_whole_fleet_switching_in_one_minute_outside_any_window_alarms_once() -> None:
    m = monitors(tariffs=(half_hourly(T0),))
    at = T0 + timedelta(minutes=7, seconds=20)
    alerts = by_monitor(m.observe(fleet_switch(registry(), at), now=T0))
    (alert,) = alerts["same_minute_share"]
    assert (alert.value, alert.threshold, alert.aggregator) == (100, 20, "agg-a")
    assert alert.window_start == T0 + timedelta(minutes=7) and alert.at == T0
    assert "100.0 of agg-a's 100 registered devices (100%)" in alert.detail
    assert "above 20% (20.0)" in alert.detail
    assert alert.devices == tuple(sorted(registry()))
    again = m.observe([change("agg-a-0", at, 3.0, 0.0, plan="p2")])
    assert "same_minute_share" not in by_monitor(again)


def test_agile_switching_at_the_half_hour_with_random_delays_does_not_alarm() -> None:
    """80 % of the fleet switching at a tariff boundary, each with its own random delay of up to
    10 min: expected; the same switching ten minutes off the boundary steps the aggregate
    (budget set low here) and does alarm."""
    config = MonitorConfig(national_mw_step_per_min=0.01)
    devices = list(registry())[:80]
    at_boundary = monitors(config, tariffs=(half_hourly(T0),))
    changes = fleet_switch(devices, T0 + timedelta(minutes=30), spread=timedelta(minutes=10),
                           rng=random.Random(5))
    assert at_boundary.observe(changes) == []
    off = fleet_switch(devices, T0 + timedelta(minutes=40), spread=timedelta(minutes=10),
                       rng=random.Random(5))
    assert "mw_step" in by_monitor(monitors(config, tariffs=(half_hourly(T0),)).observe(off))


def test_synchronous_switching_at_a_tariff_boundary_is_not_price_driven() -> None:
    m = monitors(tariffs=(half_hourly(T0),))
    alerts = m.observe(fleet_switch(registry(), T0 + timedelta(minutes=30)))
    assert [a.monitor for a in alerts] == ["same_minute_share"]


def test_a_dispatched_windows_synchronous_response_does_not_alarm() -> None:
    window = DispatchWindow(event_id="ev-1", program="dfs", start=T0, end=T0 + 60 * MINUTE,
                            aggregators=("agg-a",))
    config = MonitorConfig(national_mw_step_per_min=0.01, flip_share=0.05)
    inside = fleet_switch(registry(), T0 + 5 * MINUTE, to_kw=-3.0, event_id="ev-1",
                          program="dfs")
    assert monitors(config, windows=(window,)).observe(inside) == []
    after = fleet_switch(registry(), T0 + 65 * MINUTE, to_kw=-3.0, event_id="ev-1",
                         program="dfs")
    assert {"same_minute_share", "mw_step"} <= set(
        by_monitor(monitors(config, windows=(window,)).observe(after)))


def test_a_window_covers_only_its_aggregators_and_event() -> None:
    window = DispatchWindow(event_id="ev-1", program="dfs", start=T0, end=T0 + 60 * MINUTE,
                            aggregators=("agg-b",))
    alerts = monitors(windows=(window,)).observe(
        fleet_switch(registry(), T0 + 5 * MINUTE, event_id="ev-1", program="dfs"))
    assert "same_minute_share" in by_monitor(alerts)


def test_the_national_mw_step_budget_and_an_aggregators_cap() -> None:
    """100 devices x 3 kW in one minute = 0.3 MW against a 0.2 MW budget and a 0.1 MW cap."""
    config = MonitorConfig(national_mw_step_per_min=0.2, aggregator_cap_mw={"agg-a": 0.1},
                           same_minute_share=1.0)
    alerts = by_monitor(monitors(config).observe(fleet_switch(registry(), T0)))
    assert set(alerts) == {"mw_step", "aggregator_cap"}
    (step,) = alerts["mw_step"]
    assert (round(step.value, 6), step.threshold, step.aggregator) == (0.3, 0.2, None)
    assert "0.30 MW in the minute from 2026-11-27 03:00, above the 0.2 MW/min national budget" \
        in step.detail
    assert alerts["aggregator_cap"][0].threshold == 0.1
    assert len(alerts["aggregator_cap"][0].devices) == FLEET
    roomy = MonitorConfig(national_mw_step_per_min=0.4, aggregator_cap_mw={"agg-a": 0.5},
                          same_minute_share=1.0)
    assert monitors(roomy).observe(fleet_switch(registry(), T0)) == []


def test_randomised_starts_are_not_synchronous() -> None:
    """The whole fleet starting anywhere in 30 min: about 3 % of it (10 kW) per minute."""
    m = monitors(MonitorConfig(national_mw_step_per_min=0.02))
    assert m.observe(fleet_switch(registry(), T0, spread=timedelta(minutes=30))) == []


def test_a_fleet_whose_planned_charging_flips_to_discharging_alarms() -> None:
    """Day-ahead plans charge at 02:00; revised plans (a firmware bug) discharge then instead."""
    night = T0 - timedelta(hours=1)
    m = monitors(tariffs=(half_hourly(night - timedelta(hours=1)),))
    spread = timedelta(minutes=10)
    assert m.observe(fleet_switch(registry(), night, spread=spread, rng=random.Random(1))) == []
    flipped = fleet_switch(list(registry())[:30], night, to_kw=-3.0, spread=spread,
                           rng=random.Random(1), plan="p2")
    alerts = by_monitor(m.observe(flipped))
    (alert,) = alerts["sign_flip"]
    assert (alert.value, alert.threshold) == (30, 10)
    assert alert.devices == tuple(sorted(list(registry())[:30]))
    assert "flip between charging and discharging in the 30 min from 2026-11-27 02:00" \
        in alert.detail


def test_flips_inside_a_dispatched_window_or_price_driven_at_a_boundary_do_not_alarm() -> None:
    night = T0 - timedelta(hours=1)
    window = DispatchWindow(event_id="ev-1", program="dfs", start=night - MINUTE,
                            end=night + 30 * MINUTE)
    m = monitors(windows=(window,))
    m.observe(fleet_switch(registry(), night, spread=timedelta(minutes=5)))
    assert m.observe(fleet_switch(registry(), night, to_kw=-3.0, plan="p2", event_id="ev-1",
                                  program="dfs")) == []
    evening = T0 + timedelta(hours=13)  # 16:00, the peak starts: charging turns to discharging
    agile = monitors(tariffs=(half_hourly(T0, hours=20),))
    arbitrage = [change(d, evening, 2.0, -3.0, spread=timedelta(minutes=10), plan="p3")
                 for d in registry()]
    assert "sign_flip" not in by_monitor(agile.observe(arbitrage))
    off_boundary = [change(d, evening + 10 * MINUTE, 2.0, -3.0, spread=timedelta(minutes=10))
                    for d in registry()]
    assert "sign_flip" in by_monitor(monitors().observe(off_boundary))


def test_a_slow_ramp_under_every_per_minute_limit_departs_from_the_prognosis() -> None:
    """One device a minute adds 0.4 kW: 0.4 kW/min, far under every per-minute threshold, but
    20 kW (the 20 % of a 100 kW prognosis) away from it after 50 minutes."""
    config = MonitorConfig(national_mw_step_per_min=0.001, prognosis_floor_kw=10.0)
    flat = Prognosis(aggregator="agg-a", network_area="area-1", start=T0, step=30 * MINUTE,
                     kw=(100.0,) * 8)
    m = monitors(config, prognoses=(flat,))
    devices = list(registry())
    ramp = [change(d, T0 + (i + 1) * MINUTE, 1.0, 1.4) for i, d in enumerate(devices)]
    assert m.observe(ramp, now=T0) == []
    raised: list[tuple[int, Alert]] = []
    for minute in range(90):
        raised += [(minute, a) for a in m.tick(T0 + minute * MINUTE)]
    ((minute, alert),) = raised
    assert alert.monitor == "prognosis_deviation" and 50 <= minute <= 52
    assert alert.value > alert.threshold == 20
    assert (alert.aggregator, alert.network_area) == ("agg-a", "area-1")
    assert "from its prognosis of 100.0 kW" in alert.detail
    assert set(alert.devices) == set(devices[:minute])


def test_plans_that_follow_the_prognosis_do_not_alarm() -> None:
    follows = Prognosis(aggregator="agg-a", network_area="area-1", start=T0, step=MINUTE,
                        kw=tuple(100.0 + 0.4 * i for i in range(120)))
    m = monitors(MonitorConfig(prognosis_floor_kw=5.0), prognoses=(follows,))
    devices = list(registry())
    m.observe([change(d, T0 - MINUTE, 0.0, 1.0, plan="p0") for d in devices])
    m.observe([change(d, T0 + (i + 1) * MINUTE, 1.0, 1.4) for i, d in enumerate(devices)])
    assert [a for minute in range(120) for a in m.tick(T0 + minute * MINUTE)] == []


def test_area_headroom_alarms_once_per_breach() -> None:
    config = MonitorConfig(area_headroom_kw={"area-1": 50.0}, same_minute_share=1.0)
    m = monitors(config)
    m.observe(fleet_switch(list(registry())[:20], T0, spread=timedelta(minutes=5),
                           rng=random.Random(3)))
    assert m.tick(T0) == []
    alerts = m.tick(T0 + 10 * MINUTE)
    (alert,) = alerts
    assert (alert.monitor, alert.threshold) == ("area_headroom", 50.0)
    assert alert.value == pytest.approx(60.0)
    assert alert.network_area == "area-1" and len(alert.devices) == 20
    assert m.tick(T0 + 11 * MINUTE) == []
    within = monitors(config)
    within.observe(fleet_switch(list(registry())[:15], T0))
    assert within.tick(T0 + 10 * MINUTE) == []


def test_a_revised_plan_replaces_the_older_one_instead_of_adding_to_it() -> None:
    """20 devices planned to charge 3 kW at 03:00 are replanned from 02:30 to charge at 05:00
    instead: at 04:00 the area draws nothing, so its 30 kW headroom holds; at 05:00 it is
    exceeded. Without the plan's start the revision only replaces from its first change."""
    config = MonitorConfig(area_headroom_kw={"area-1": 30.0}, same_minute_share=1.0)
    m, unaware = monitors(config), monitors(config)
    devices = list(registry())[:20]
    for each in (m, unaware):
        each.observe(fleet_switch(devices, T0, spread=timedelta(minutes=5)))
    m.observe(fleet_switch(devices, T0 + timedelta(hours=2), plan="p2"),
              starts={"p2": T0 - 30 * MINUTE})
    unaware.observe(fleet_switch(devices, T0 + timedelta(hours=2), plan="p2"))
    assert m.tick(T0 + timedelta(hours=1)) == []
    assert [a.value for a in unaware.tick(T0 + timedelta(hours=1))] == [pytest.approx(60.0)]
    assert [a.value for a in m.tick(T0 + timedelta(hours=2, minutes=1))] == [pytest.approx(60.0)]


def test_small_fleets_are_not_judged_by_share() -> None:
    small = FleetMonitors(MonitorConfig(min_devices=20), registry(10))
    assert small.observe(fleet_switch(registry(10), T0)) == []


def test_windows_behind_now_are_pruned() -> None:
    m = monitors()
    for hour in range(6):
        m.tick(T0 + timedelta(hours=hour))
        m.observe(fleet_switch(registry(), T0 + timedelta(hours=hour), spread=timedelta(minutes=20),
                               plan=f"p{hour}"))
    m.tick(T0 + timedelta(hours=8))
    assert m._count["agg-a"] == {} and m._step["agg-a"] == {}
    assert all(len(t.changes) <= 3 for t in m._tracks.values())
