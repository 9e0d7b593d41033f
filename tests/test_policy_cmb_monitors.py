"""The CMB's fleet monitors: each raises on the fleet behaviour it watches for, once, with the
numbers, threshold, window and devices; expected correlation (tariff boundaries, dispatched
windows, plans that follow the prognosis) raises nothing."""

from __future__ import annotations

import dataclasses
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


def test_a_fleet_switching_on_a_tariff_boundary_with_a_token_delay_is_not_exempt() -> None:
    """A 1 s random delay passes the inline rule, but puts every change in the boundary's first
    minute: boundary_spread names it, and the changes then count for same_minute_share."""
    m = monitors(tariffs=(half_hourly(T0),))
    alerts = by_monitor(m.observe(fleet_switch(registry(), T0 + 30 * MINUTE,
                                               spread=timedelta(seconds=1)), now=T0))
    (spread,) = alerts["boundary_spread"]
    assert (spread.value, spread.threshold, spread.aggregator) == (1.0, 0.75, "agg-a")
    assert spread.window_start == T0 + 30 * MINUTE and len(spread.devices) == FLEET
    assert ("100 of agg-a's 100 registered devices change state at the tariff boundary "
            "2026-11-27 03:30, 100.0 of them (100%) within 60 s") in spread.detail
    assert "above 75% once at least 20 changed" in spread.detail
    (share,) = alerts["same_minute_share"]
    assert share.value == pytest.approx(100.0) and len(share.devices) == FLEET
    later = m.observe([change("agg-a-0", T0 + 30 * MINUTE, 3.0, 0.0, plan="p2",
                              spread=timedelta(seconds=1))])
    assert later == []  # once per boundary


def test_routine_delays_or_few_quick_changes_at_a_boundary_are_price_driven() -> None:
    """The whole fleet with delays up to 600 s (a third of the mass within a minute); or 15
    devices with 1 s delays, fewer than min_devices: neither alarms."""
    rng = random.Random(2)
    routine = [change(d, T0 + 30 * MINUTE, 0.0, 3.0,
                      spread=timedelta(seconds=rng.randint(1, 600))) for d in registry()]
    assert monitors(tariffs=(half_hourly(T0),)).observe(routine) == []
    few = fleet_switch(list(registry())[:15], T0 + 30 * MINUTE, spread=timedelta(seconds=1))
    assert monitors(tariffs=(half_hourly(T0),)).observe(few) == []


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


PER_MINUTE = dict(prognosis_noise_kw=0.0, prognosis_persist=timedelta(0),
                  prognosis_lookahead=timedelta(0))


def test_a_slow_ramp_under_every_per_minute_limit_departs_from_the_prognosis() -> None:
    """One device a minute adds 0.4 kW: 0.4 kW/min, far under every per-minute threshold, but
    20 kW (the 20 % of a 100 kW prognosis) away from it after 50 minutes."""
    config = MonitorConfig(national_mw_step_per_min=0.001, prognosis_floor_kw=10.0,
                           **PER_MINUTE)  # type: ignore[arg-type]
    flat = Prognosis(aggregator="agg-a", network_area="area-1", start=T0, step=MINUTE,
                     kw=(100.0,) * 120)
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
    assert set(devices[:minute]) <= set(alert.devices)


def test_plans_that_follow_the_prognosis_do_not_alarm() -> None:
    follows = Prognosis(aggregator="agg-a", network_area="area-1", start=T0, step=MINUTE,
                        kw=tuple(100.0 + 0.4 * i for i in range(120)))
    m = monitors(MonitorConfig(prognosis_floor_kw=5.0, **PER_MINUTE),  # type: ignore[arg-type]
                 prognoses=(follows,))
    devices = list(registry())
    m.observe([change(d, T0 - MINUTE, 0.0, 1.0, plan="p0") for d in devices])
    m.observe([change(d, T0 + (i + 1) * MINUTE, 1.0, 1.4) for i, d in enumerate(devices)])
    assert [a for minute in range(120) for a in m.tick(T0 + minute * MINUTE)] == []


def half_hour_prognosis(kw: tuple[float, float]) -> Prognosis:
    """Nothing in the step 03:00-03:30, then `kw` on average in 03:30-04:00 and 04:00-04:30."""
    return Prognosis(aggregator="agg-a", network_area="area-1", start=T0, step=30 * MINUTE,
                     kw=(0.0, *kw, 0.0))


def agile_step(share_kw: float = 3.0) -> tuple[list[StateChange], tuple[float, float]]:
    """The fleet switching on for the half hour from 03:30, each with its own random delay of
    up to 10 min, and its mean import over that half hour and the next (switching off)."""
    rng = random.Random(7)
    changes = []
    for d in registry():
        spread = timedelta(seconds=rng.randint(1, 600))
        on, off = T0 + 30 * MINUTE, T0 + 60 * MINUTE
        changes += [change(d, on, 0.0, share_kw, spread=spread),
                    change(d, off, share_kw, 0.0, spread=spread)]
    means = [0.0, 0.0]
    for c in changes:
        width = c.spread.total_seconds() / 60
        for k in (0, 1):
            start = (c.at - T0 - (30 + 30 * k) * MINUTE).total_seconds() / 60
            # the share of each minute's bucket reached by its end, as the monitors count it
            means[k] += (c.to_kw - c.from_kw) * sum(
                min(1.0, max(0.0, (m + 1 - start) / width)) for m in range(30)) / 30
    return changes, (means[0], means[1])


def test_a_half_hourly_prognosis_is_met_by_the_half_hours_mean_not_each_minute() -> None:
    """Switching spread over 10 min after the boundary: the first minutes are far below the
    half hour's mean, the mean is as forecast: no alert all the while."""
    changes, mean = agile_step()
    m = monitors(MonitorConfig(prognosis_noise_kw=0.0, prognosis_floor_kw=1.0,
                               prognosis_fraction=0.02),
                 prognoses=(half_hour_prognosis(mean),), tariffs=(half_hourly(T0),))
    assert m.observe(changes, now=T0 + 25 * MINUTE) == []
    assert [a for minute in range(25, 32) for a in m.tick(T0 + minute * MINUTE)] == []
    assert m._levels["agg-a", "area-1"].past[_minute(T0 + 30 * MINUTE)] < mean[0] / 2
    assert [a for minute in range(32, 70) for a in m.tick(T0 + minute * MINUTE)] == []


def _minute(t: datetime) -> int:
    return int(t.timestamp() // 60)


def test_a_step_planned_above_its_prognosis_is_caught_when_planned() -> None:
    """The plans arrive at 03:10 for 03:30: a third more than forecast is caught at once (no
    persistence asked), as an upward departure of the planned step."""
    changes, mean = agile_step(4.0)
    m = monitors(MonitorConfig(prognosis_noise_kw=0.0, prognosis_persist=timedelta(0)),
                 prognoses=(half_hour_prognosis((mean[0] * 3 / 4, mean[1])),), tariffs=(half_hourly(T0),))
    (alert,) = m.observe(changes, now=T0 + 10 * MINUTE)
    assert alert.monitor == "prognosis_deviation" and alert.window_start == T0 + 30 * MINUTE
    assert alert.value == pytest.approx(mean[0] / 4) and alert.threshold == pytest.approx(
        0.2 * mean[0] * 3 / 4)
    assert "planned for the step 03:30-04:00 (as of 03:10:00)" in alert.detail
    assert len(alert.devices) == FLEET


def test_a_step_planned_below_its_prognosis_waits_until_it_is_current() -> None:
    """Plans still to come (users', a dispatch's response) can only add to a planned step
    here: a shortfall ahead is not judged, the same shortfall in the current step is."""
    changes, mean = agile_step(2.0)
    m = monitors(MonitorConfig(prognosis_noise_kw=0.0, prognosis_persist=timedelta(0)),
                 prognoses=(half_hour_prognosis((mean[0] * 2, mean[1])),), tariffs=(half_hourly(T0),))
    assert m.observe(changes, now=T0 + 10 * MINUTE) == []
    assert m.tick(T0 + 29 * MINUTE) == []
    (alert,) = m.tick(T0 + 30 * MINUTE)
    assert "over the current step 03:30-04:00" in alert.detail


def test_a_planned_step_inside_a_dispatched_window_is_not_judged_ahead() -> None:
    changes, mean = agile_step(4.0)
    window = DispatchWindow(event_id="ev-1", program="dfs", start=T0 + 30 * MINUTE,
                            end=T0 + 60 * MINUTE, aggregators=("agg-a",))
    m = monitors(MonitorConfig(prognosis_noise_kw=0.0, prognosis_persist=timedelta(0)),
                 prognoses=(half_hour_prognosis((mean[0] / 2, mean[1])),), windows=(window,),
                 tariffs=(half_hourly(T0),))
    assert m.observe(changes, now=T0 + 10 * MINUTE) == []
    assert [a.monitor for a in m.tick(T0 + 30 * MINUTE)] == ["prognosis_deviation"]


def test_a_departure_must_last_before_it_alarms() -> None:
    """A shortfall lasting one minute (a burst of plans arriving late) is not an alert; one
    lasting the persistence is, once."""
    flat = Prognosis(aggregator="agg-a", network_area="area-1", start=T0, step=MINUTE,
                     kw=(100.0,) * 60)
    config = MonitorConfig(prognosis_noise_kw=0.0, prognosis_persist=2 * MINUTE,
                           prognosis_lookahead=timedelta(0))
    blip, lasting = monitors(config, prognoses=(flat,)), monitors(config, prognoses=(flat,))
    for m, minutes in ((blip, 1), (lasting, 10)):
        m.observe([change(d, T0 - MINUTE, 0.0, 1.0, plan="p0") for d in registry()])
        m.observe([change(d, T0 + 5 * MINUTE, 1.0, 0.0) for d in list(registry())[:50]]
                  + [change(d, T0 + (5 + minutes) * MINUTE, 0.0, 1.0)
                     for d in list(registry())[:50]])
    assert [a for minute in range(30) for a in blip.tick(T0 + minute * MINUTE)] == []
    raised = [(minute, a) for minute in range(30) for a in lasting.tick(T0 + minute * MINUTE)]
    assert [(minute, a.monitor) for minute, a in raised] == [(7, "prognosis_deviation")]


def test_the_noise_floor_grows_with_the_square_root_of_the_devices() -> None:
    """60 kW above the prognosis: beyond 5 kW x sqrt(100 devices) = 50 kW, within
    5 kW x sqrt(400) = 100 kW."""
    flat = Prognosis(aggregator="agg-a", network_area="area-1", start=T0, step=MINUTE,
                     kw=(0.0,) * 60)
    config = MonitorConfig(prognosis_noise_kw=5.0, prognosis_persist=timedelta(0),
                           prognosis_lookahead=timedelta(0))
    found = {}
    for n in (100, 400):
        m = FleetMonitors(config, registry(n), prognoses=(flat,))
        found[n] = m.observe([change(d, T0, 0.0, 3.0) for d in list(registry(n))[:20]],
                             now=T0 - MINUTE) + m.tick(T0 + MINUTE)
    (alert,) = found[100]
    assert alert.value == pytest.approx(60.0) and alert.threshold == pytest.approx(50.0)
    assert "5 kW x sqrt(100 devices)" in alert.detail
    assert found[400] == []


def test_an_aggregators_total_over_its_areas_is_judged_too() -> None:
    """35 kW over the prognosis in each of four areas of 25 devices, each within its
    8 kW x sqrt(25) = 40 kW; together 140 kW, beyond 8 kW x sqrt(100) = 80 kW."""
    areas = [f"area-{k}" for k in range(4)]
    regs = {f"agg-a-{i}": dataclasses.replace(r, network_area=areas[i % 4])
            for i, r in enumerate(registry().values())}
    prognoses = [Prognosis(aggregator="agg-a", network_area=a, start=T0, step=MINUTE,
                           kw=(0.0,) * 60) for a in areas]
    config = MonitorConfig(prognosis_noise_kw=8.0, prognosis_persist=timedelta(0),
                           prognosis_lookahead=timedelta(0), same_minute_share=1.0)
    m = FleetMonitors(config, regs, prognoses=prognoses)
    assert m.observe([dataclasses.replace(change(d, T0, 0.0, 3.5), network_area=r.network_area)
                      for d, r in list(regs.items())[:40]], now=T0 - MINUTE) == []
    (alert,) = m.tick(T0 + MINUTE)
    assert alert.network_area is None and alert.value == pytest.approx(140.0)
    assert alert.threshold == pytest.approx(80.0) and len(alert.devices) == 40
    assert "its 4 network areas together" in alert.detail


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


def test_a_registry_change_keeps_the_windows_and_measures_against_the_new_fleet() -> None:
    m = FleetMonitors(MonitorConfig(min_devices=20), registry(10))
    devices = list(registry(30))
    assert m.observe(fleet_switch(devices[:10], T0, plan="first")) == []  # too small to judge
    m.set_registry(registry(30))
    # ten more in the same minute: 20 of 30 devices now, with the first ten still counted
    alerts = by_monitor(m.observe(fleet_switch(devices[10:20], T0, plan="second")))
    alert = alerts["same_minute_share"][0]
    assert (alert.value, alert.threshold) == (20, pytest.approx(0.2 * 30))
