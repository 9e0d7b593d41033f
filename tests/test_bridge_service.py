"""The bridge service: signals become validated, stored plans handed to the channels; gone signals
release their devices; an unavailable device's share goes to the others."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import create_engine

from bridge.channel import Dispatch
from bridge.models import Channel, Device, Mode, Plan
from bridge.service import Bridge
from bridge.store import BridgeStore, PlanRecord, PlanStatus
from bridge.cmb_client import CmbUnavailable
from bridge.streams import DispatchResult, Outcome
from policies.dispatch import DeviceState
from policies.plans import DeviceView
from ven.fleet import DeviceClass, FleetSpec, ResourceSpec, VenSpec
from ven.records import GridSignal, Purpose, SignalInterval
from vtn.cmb.records import Decision, Finding, Verdict
from vtn.cmb.signing import Item

T0 = datetime(2026, 11, 27, 17, tzinfo=UTC)
M = timedelta(minutes=1)
FLEET = FleetSpec(vens=(VenSpec(name="agg", vtn_url="http://127.0.0.1:1/", resources=(
    ResourceSpec(resource_id="tanks", device_class=DeviceClass.HOT_WATER, devices=5,
                 rated_kw=15.0, baseline_kw=9.0, flexible_kw=9.0),
    ResourceSpec(resource_id="hubless", device_class=DeviceClass.BATTERY, devices=2,
                 rated_kw=10.0, baseline_kw=0.0, flexible_kw=10.0, export_kw=10.0,
                 time_limited_plans=False),
)),))


class Outlet:
    def __init__(self) -> None:
        self.sent: list[Dispatch] = []
        self.scheduled: list[Plan] = []

    async def enqueue(self, dispatch: Dispatch) -> None:
        self.sent.append(dispatch)

    def schedule(self, plan: Plan, device: Device) -> None:
        self.scheduled.append(plan)


class Devices:
    """Every device draws 60 % of its rating unless the step in force of the last plan it was
    sent is a LIMIT that caps it lower."""

    def __init__(self, outlet: Outlet) -> None:
        self.outlet = outlet
        self.uncontrolled_kw: dict[str, float] = {}  # load less PV behind a site's meter

    def __call__(self, devices: Sequence[Device], now: datetime) -> Mapping[str, DeviceView]:
        latest = {d.plan.device_id: d.plan for d in self.outlet.sent}
        views = {}
        for d in devices:
            plan = latest.get(d.device_id)
            cap = next((s.level for s in plan.steps if s.start <= now < s.end), None) \
                if plan is not None else None
            current = 0.6 * d.rated_import_kw * (1 if cap is None else min(1, cap / 60))
            views[d.device_id] = DeviceView(
                state=DeviceState(device=d, available=True, current_kw=current,
                                  flex_down_kw=current, flex_up_kw=d.rated_import_kw - current),
                soc=0.5 if d.capacity_kwh else None,
                uncontrolled_kw=self.uncontrolled_kw.get(d.device_id, 1.0))
        return views


def signal(name: str, type_: str, *values: float, mod: int = 0, minutes: int = 30,
           resources: tuple[str, ...] = ("tanks",), unit: str | None = None) -> GridSignal:
    return GridSignal(
        program="p", event_id="e1", modification_number=mod, priority=1, signal_name=name,
        signal_type=type_, signal_id="s1", unit=unit, purpose=Purpose.RESPONSE,
        resources=resources,
        intervals=tuple(SignalInterval(start=T0 + i * minutes * M,
                                       end=T0 + (i + 1) * minutes * M, value=v)
                        for i, v in enumerate(values)))


@pytest.fixture
def bridge(tmp_path: object) -> Bridge:
    store = BridgeStore(create_engine("sqlite://"))
    out = Outlet()
    return Bridge(FLEET, store, out, Devices(out), flat_forecast, clock=lambda: T0, seed=1)


def flat_forecast(device: Device, start: datetime, step: timedelta, n: int
                  ) -> tuple[list[float], list[float]]:
    """No PV, 1 kW of household load."""
    return [0.0] * n, [1.0] * n


def outlet(bridge: Bridge) -> Outlet:
    assert isinstance(bridge.outlet, Outlet)
    return bridge.outlet


async def test_signals_become_stored_plans_sent_whole_or_step_by_step(bridge: Bridge) -> None:
    records = await bridge.update("agg", [signal("SIMPLE", "level", 1, 2,
                                                 resources=("tanks", "hubless"))])
    assert len(records) == 7 and all(r.status is PlanStatus.DISPATCHED for r in records)
    assert sorted(d.plan.device_id for d in outlet(bridge).sent) == [
        f"agg/tanks/{i}" for i in range(5)]
    assert sorted(p.device_id for p in outlet(bridge).scheduled) == [
        "agg/hubless/0", "agg/hubless/1"]  # no time-limited plans: one command per step
    assert bridge.store.plans(event_id="e1") == sorted(
        records, key=lambda r: (r.plan.device_id, r.plan.sequence))
    # the same signals again: nothing new
    assert await bridge.update("agg", [signal("SIMPLE", "level", 1, 2,
                                              resources=("tanks", "hubless"))]) == []


async def test_a_plan_the_device_cannot_execute_is_refused_with_reasons_and_never_sent(
        bridge: Bridge) -> None:
    three_days = signal("SIMPLE", "level", 2, minutes=3 * 24 * 60)
    records = await bridge.update("agg", [dataclasses.replace(three_days)])
    # the ladder cuts plans at 48 h, so this one is valid; a dispatch is not cut:
    assert all(r.status is PlanStatus.DISPATCHED for r in records)
    outlet(bridge).sent.clear()
    long_dispatch = signal("LOAD_DISPATCH", "delta", -3.0, minutes=3 * 24 * 60, unit="kW")
    long_dispatch = dataclasses.replace(long_dispatch, event_id="e2")
    refused = await bridge.update("agg", [three_days, long_dispatch])
    assert refused and all(r.status is PlanStatus.REFUSED for r in refused)
    assert all("more than 2 days" in r.reasons[0] for r in refused)
    assert outlet(bridge).sent == []
    assert bridge.store.plans(event_id="e2", status=PlanStatus.REFUSED) == refused


async def test_cancelled_signal_releases_devices_and_a_modification_replans(
        bridge: Bridge) -> None:
    first = await bridge.update("agg", [signal("SIMPLE", "level", 2)])
    modified = await bridge.update("agg", [signal("SIMPLE", "level", 3, mod=1)])
    assert [r.plan.sequence for r in modified] == [r.plan.sequence + 1 for r in first]
    assert all(r.plan.steps[0].level == 0 for r in modified)
    released = await bridge.update("agg", [])
    assert len(released) == 5
    assert all([(s.mode, s.level) for s in r.plan.steps] == [(Mode.LIMIT, 100)]
               for r in released)  # back to the day job: no limit
    superseded = bridge.store.plans(event_id="e1", status=PlanStatus.SUPERSEDED)
    assert {r.plan.plan_id for r in superseded} == {r.plan.plan_id for r in modified}


async def test_an_unavailable_device_loses_its_share_to_the_others(bridge: Bridge) -> None:
    # 5 heaters at 1.8 kW each; shed 4.5 kW: each gives half its 1.8 kW
    records = await bridge.update("agg", [signal("LOAD_DISPATCH", "delta", -4.5, unit="kW")])
    assert [r.requested_kw for r in records] == pytest.approx([-0.9] * 5)
    gone = records[0].plan
    again = await bridge._redispatch(*next(iter(bridge._windows.items())))  # nothing changed
    assert again == []
    await bridge.on_results([DispatchResult(
        key=f"{gone.plan_id}#{gone.sequence}#plan", plan_id=gone.plan_id,
        device_id=gone.device_id, event_id="e1", channel=Channel.SAPC,
        outcome=Outcome.UNAVAILABLE, attempts=1, entry_id="1-0", enqueued_at=T0, finished_at=T0,
        reason="no answer in 25 s")])
    replanned = bridge.store.plans(event_id="e1", status=PlanStatus.DISPATCHED)
    latest = {r.plan.device_id: r for r in replanned}
    assert gone.device_id in bridge.unavailable
    shares = [latest[d].requested_kw for d in latest if d != gone.device_id]
    assert sum(shares) == pytest.approx(-4.5)  # the four others cover the target
    assert latest[gone.device_id].plan.steps[0].level == 100  # its share withdrawn
    assert bridge.store.outcomes([gone.plan_id])[0].outcome is Outcome.UNAVAILABLE


async def test_redispatch_before_the_window_opens_keeps_the_shares_not_yet_started() -> None:
    clock = [T0 - 60 * M]
    out = Outlet()
    bridge = Bridge(FLEET, BridgeStore(create_engine("sqlite://")), out, Devices(out),
                    flat_forecast, clock=lambda: clock[0], seed=1)
    # planned an hour ahead: the heaters draw their 9 kW until T0, whatever the plans say
    await bridge.update("agg", [signal("LOAD_DISPATCH", "delta", -4.5, unit="kW")])
    assert len(out.sent) == 5
    key, window = next(iter(bridge._windows.items()))
    for minutes in (-55, -50, -5, 5, 10):  # the re-dispatch ticks, before and in the window
        clock[0] = T0 + minutes * M
        assert await bridge._redispatch(key, window) == []
    assert len(out.sent) == 5  # nothing changed: no new plans
    # a heater lost before the window still gives its share to the others
    clock[0] = T0 - 30 * M
    bridge.unavailable.add("agg/tanks/0")
    moved = await bridge._redispatch(key, window)
    assert {r.plan.device_id for r in moved} == {f"agg/tanks/{i}" for i in range(5)}
    latest = {r.plan.device_id: r for r in moved}
    assert latest["agg/tanks/0"].requested_kw == 0.0
    assert sum(r.requested_kw or 0.0 for r in moved) == pytest.approx(-4.5)


async def test_power_samples_compare_what_was_asked_with_what_devices_show(
        bridge: Bridge) -> None:
    await bridge.update("agg", [signal("LOAD_DISPATCH", "delta", -4.5, unit="kW")])
    during = bridge.sample(T0 + 10 * M)
    assert [(s.event_id, s.devices, s.online) for s in during] == [("e1", 5, 5)]
    assert during[0].requested_kw == pytest.approx(-4.5)
    assert during[0].delivered_kw == pytest.approx(-4.5)
    after = bridge.sample(T0 + 31 * M)  # the window has ended: asked nothing, last sample
    assert after[0].requested_kw == 0.0
    assert bridge.sample(T0 + 32 * M) == []
    assert bridge.store.power("e1") == during + after


async def test_a_storage_site_is_asked_its_share_at_the_meter(bridge: Bridge) -> None:
    # two sites each import 3 kW, 1 kW of it household load: shed 2 kW, 1 kW each
    dispatch = signal("LOAD_DISPATCH", "delta", -2.0, unit="kW", resources=("hubless",))
    records = await bridge.update("agg", [dispatch])
    # the battery charges 1 kW (1 kW of load on top: 2 kW at the meter, 1 kW less than 3)
    assert [(s.mode, s.power_kw) for r in records for s in r.plan.steps] == [
        (Mode.CHARGE, 1.0)] * 2
    (during,) = bridge.sample(T0 + 10 * M)
    assert during.requested_kw == pytest.approx(-2.0)


async def test_a_site_whose_load_leaves_the_forecast_is_planned_again(bridge: Bridge) -> None:
    prices = dataclasses.replace(
        signal("ELECTRICITY_PRICE", "price", 0.30, 0.05, 0.40, 0.10, resources=("hubless",)),
        unit="GBP/kWh")
    first = await bridge.update("agg", [prices])
    assert len(first) == 2 and all(r.status is PlanStatus.DISPATCHED for r in first)
    devices = bridge.views
    assert isinstance(devices, Devices)
    devices.uncontrolled_kw["agg/hubless/0"] = 1.4  # within the 0.5 kW margin
    assert await bridge.replan_deviations(T0 + 10 * M) == []
    devices.uncontrolled_kw["agg/hubless/0"] = 2.5  # the kettle and the oven: 1.5 kW over
    again = await bridge.replan_deviations(T0 + 40 * M)
    assert [(r.plan.device_id, r.plan.sequence) for r in again] == [("agg/hubless/0", 2)]
    assert again[0].plan.start == T0 + 40 * M and again[0].status is PlanStatus.DISPATCHED
    # at most once per half-hour price step, however long the deviation lasts
    assert await bridge.replan_deviations(T0 + 50 * M) == []
    assert len(await bridge.replan_deviations(T0 + 70 * M)) == 1
    await bridge.update("agg", [])  # released: no longer watched
    devices.uncontrolled_kw["agg/hubless/0"] = 5.0
    assert await bridge.replan_deviations(T0 + 60 * M) == []


class Reviewer:
    """A CMB that rejects the devices in `reject`, and is down while `down` is set."""

    def __init__(self) -> None:
        self.reject: set[str] = set()
        self.down = False
        self.judged: list[str] = []

    async def immediate(self, plan: Plan, program: str | None) -> bool:
        return plan.purpose is Purpose.RESPONSE and plan.event_id is not None

    async def review(self, aggregator: str, items: Sequence[Item]) -> list[Verdict]:
        if self.down:
            raise CmbUnavailable("connection refused", retryable=True)
        self.judged += [i.plan.plan_id for i in items]
        return [Verdict(
            plan_id=i.plan.plan_id, device_id=i.plan.device_id, aggregator=aggregator,
            sequence=i.plan.sequence, at=T0,
            decision=Decision.REJECTED if i.plan.device_id in self.reject else Decision.ACCEPTED,
            findings=(Finding(rule="sender_owns_device", value=None, threshold=None,
                              detail=f"{i.plan.device_id} is not yours"),)
            if i.plan.device_id in self.reject else ()) for i in items]


def reviewed(reviewer: Reviewer) -> Bridge:
    out = Outlet()
    return Bridge(FLEET, BridgeStore(create_engine("sqlite://")), out, Devices(out),
                  flat_forecast, clock=lambda: T0, seed=1, reviewer=reviewer)


async def test_routine_plans_go_out_only_once_the_cmb_accepts_them() -> None:
    cmb = Reviewer()
    cmb.reject = {"agg/tanks/1"}
    bridge = reviewed(cmb)
    routine = dataclasses.replace(signal("SIMPLE", "level", 2), purpose=Purpose.ROUTINE)
    records = {r.plan.device_id: r for r in await bridge.update("agg", [routine])}
    assert len(cmb.judged) == 5
    assert records["agg/tanks/1"].status is PlanStatus.REFUSED
    assert records["agg/tanks/1"].reasons == (
        "CMB sender_owns_device: agg/tanks/1 is not yours",)
    assert sorted(d.plan.device_id for d in outlet(bridge).sent) == [
        f"agg/tanks/{i}" for i in (0, 2, 3, 4)]


async def test_an_unreachable_cmb_holds_routine_plans_until_it_answers() -> None:
    cmb = Reviewer()
    cmb.down = True
    bridge = reviewed(cmb)
    routine = dataclasses.replace(signal("SIMPLE", "level", 2), purpose=Purpose.ROUTINE)
    records = await bridge.update("agg", [routine])
    assert {r.status for r in records} == {PlanStatus.HELD} and outlet(bridge).sent == []
    assert bridge.store.plans(status=PlanStatus.HELD) == records  # nothing lost
    assert await bridge.retry_held(T0) == []  # still down: still held
    cmb.down = False
    sent = await bridge.retry_held(T0 + M)
    assert {r.status for r in sent} == {PlanStatus.DISPATCHED} and len(outlet(bridge).sent) == 5
    assert bridge.store.plans(status=PlanStatus.HELD) == []


async def test_response_plans_go_at_once_and_a_late_rejection_is_recorded() -> None:
    cmb = Reviewer()
    cmb.reject = {"agg/tanks/0"}
    bridge = reviewed(cmb)
    records = await bridge.update("agg", [signal("SIMPLE", "level", 2)])  # response DSR
    assert {r.status for r in records} == {PlanStatus.DISPATCHED}
    assert len(outlet(bridge).sent) == 5  # out before any verdict
    await asyncio.gather(*bridge._reviews)
    stored = {r.plan.device_id: r for r in bridge.store.plans(event_id="e1")}
    assert stored["agg/tanks/0"].status is PlanStatus.DISPATCHED
    assert stored["agg/tanks/0"].reasons == ("CMB sender_owns_device: agg/tanks/0 is not yours",)
    assert stored["agg/tanks/2"].reasons == ()


async def test_a_plan_sent_outside_the_signals_takes_the_bridge_sequence_and_path() -> None:
    cmb = Reviewer()
    bridge = reviewed(cmb)
    first = await bridge.update("agg", [signal("SIMPLE", "level", 2)])
    own = [Plan(plan_id=f"own/{r.plan.device_id}", device_id=r.plan.device_id,
                sequence=bridge.next_sequence(r.plan.device_id), issuer="agg",
                purpose=Purpose.ROUTINE, priority=0, event_id=None, steps=r.plan.steps)
           for r in first]
    sent = await bridge.send(own)
    assert [r.plan.sequence for r in sent] == [r.plan.sequence + 1 for r in first]
    assert {r.status for r in sent} == {PlanStatus.DISPATCHED}
    assert {p.plan_id for p in own} <= set(cmb.judged)  # judged by the CMB before it went out
    assert [d.plan.plan_id for d in outlet(bridge).sent[-5:]] == [p.plan_id for p in own]
    # the bridge's next plans follow them: no sequence number used twice
    later = await bridge.update("agg", [signal("SIMPLE", "level", 3, mod=1)])
    assert [r.plan.sequence for r in later] == [r.plan.sequence + 1 for r in sent]


async def test_the_sample_after_a_redispatch_sees_the_new_plans() -> None:
    reads = [T0 + 5 * M]

    def clock() -> datetime:
        """Every read is 10 s later: the awaits between two reads take demo time."""
        reads.append(reads[-1] + 10 * timedelta(seconds=1))
        return reads[-1]

    out = Outlet()
    bridge = Bridge(FLEET, BridgeStore(create_engine("sqlite://")), out, Devices(out),
                    flat_forecast, clock=clock, seed=1, redispatch_every=M,
                    sample_every=timedelta(seconds=1))
    await bridge.update("agg", [signal("LOAD_DISPATCH", "delta", -4.5, unit="kW")])
    bridge.unavailable.add("agg/tanks/0")  # its share goes to the others at the next tick
    ticker = asyncio.create_task(bridge._tick())
    try:
        for _ in range(200):  # bounded: the tick re-dispatches within a few iterations
            await asyncio.sleep(0.1)
            redispatched = [r for r in bridge.store.plans(event_id="e1") if r.plan.sequence == 2]
            if redispatched and len(bridge.store.power("e1")) >= 3:
                break
    finally:
        ticker.cancel()
    assert redispatched
    samples = bridge.store.power("e1")
    # every sample, including the one taken in the re-dispatch's tick, asks the whole target
    # (within the LIMIT levels' whole percent: 0.15 kW of each 15 kW heater)
    assert [s.requested_kw for s in samples] == pytest.approx([-4.5] * len(samples), abs=0.75)


async def test_a_cap_over_a_lower_plan_from_another_event_keeps_the_lower_one(
        bridge: Bridge) -> None:
    # The first event holds the tanks off for an hour (SIMPLE level 2: 0 % for hot water); a
    # 50 % cap from another event over its second half must not let them heat: each device runs
    # only the newest plan it is sent, so that plan carries the lower of the two.
    held = await bridge.update("agg", [signal("SIMPLE", "level", 2, 2)])
    assert {s.level for r in held for s in r.plan.steps} == {0}
    cap = dataclasses.replace(signal("LOAD_CONTROL", "x-loadControlCapacity", 0.5, 0.5, 0.5),
                              event_id="e2")
    cap = dataclasses.replace(cap, intervals=tuple(
        dataclasses.replace(iv, start=iv.start + 30 * M, end=(iv.end or iv.start) + 30 * M)
        for iv in cap.intervals))
    capped = await bridge.update("agg", [signal("SIMPLE", "level", 2, 2), cap])
    assert len(capped) == 5
    for r in capped:
        assert [(s.start, s.end, s.level) for s in r.plan.steps] == [
            (T0 + 30 * M, T0 + 60 * M, 0), (T0 + 60 * M, T0 + 120 * M, 50)]
    sent = {d.plan.device_id: d.plan for d in outlet(bridge).sent}
    assert {p.event_id for p in sent.values()} == {"e2"}


def hubless_prices() -> GridSignal:
    return dataclasses.replace(
        signal("ELECTRICITY_PRICE", "price", 0.30, 0.05, 0.40, 0.10, resources=("hubless",)),
        unit="GBP/kWh", event_id="prices")


def spans(plan: Plan) -> list[tuple[datetime, datetime, Mode, float | None, int | None]]:
    return [(s.start, s.end, s.mode, s.power_kw, s.level) for s in plan.steps]


async def test_a_price_plan_made_under_a_cap_keeps_under_it(bridge: Bridge) -> None:
    # SIMPLE level 2 caps the home batteries at 30 % of rated import for the first hour; the
    # price plan made meanwhile charges at no more than that there, and plans freely after.
    free = Bridge(FLEET, BridgeStore(create_engine("sqlite://")), Outlet(),
                  Devices(Outlet()), flat_forecast, clock=lambda: T0, seed=1)
    (uncapped, _) = [r.plan for r in await free.update("agg", [hubless_prices()])]
    cap = signal("SIMPLE", "level", 2, 2, resources=("hubless",))
    await bridge.update("agg", [cap])
    capped = await bridge.update("agg", [cap, hubless_prices()])
    plan = next(r.plan for r in capped if r.plan.device_id == uncapped.device_id)
    assert plan.event_id == "prices" and plan.steps != uncapped.steps
    hour = T0 + 60 * M
    rated = bridge._by_id[plan.device_id].rated_import_kw
    assert all(s.level == 30 if s.mode is Mode.LIMIT else
               s.mode is Mode.CHARGE and (s.power_kw or 0) <= 0.3 * rated + 1e-9
               for s in plan.steps if s.start < hour)
    assert any(s.mode is Mode.CHARGE for s in uncapped.steps if s.start < hour)
    assert [s for s in spans(plan) if s[0] >= hour] == [
        s for s in spans(uncapped) if s[0] >= hour]


async def test_a_withdrawn_cap_hands_its_devices_back_to_their_price_plans(
        bridge: Bridge) -> None:
    priced = {r.plan.device_id: r.plan for r in await bridge.update("agg", [hubless_prices()])}
    cap = signal("SIMPLE", "level", 2, 2, resources=("hubless",))
    await bridge.update("agg", [hubless_prices(), cap])
    released = await bridge.update("agg", [hubless_prices()])  # the cap is cancelled
    assert {r.plan.device_id for r in released} == set(priced)
    hour = T0 + 60 * M
    for r in released:
        price = priced[r.plan.device_id]
        assert r.plan.start == T0 and r.plan.end == hour
        # the price plan's own steps over the cap's hour, not "no limit"
        assert spans(r.plan) == [(s, min(e, hour), m, p, lv)
                                 for s, e, m, p, lv in spans(price) if s < hour]


async def test_after_a_restart_a_cap_still_keeps_the_price_plan_beneath_and_hands_back_to_it(
        ) -> None:
    # The same cap and withdrawal, once on a bridge that ran throughout and once on bridges
    # restarted before each, which know the price plans only from the store.
    cap = signal("SIMPLE", "level", 2, 2, resources=("hubless",))

    def started(store: BridgeStore) -> Bridge:
        out = Outlet()
        return Bridge(FLEET, store, out, Devices(out), flat_forecast, clock=lambda: T0, seed=1)

    def steps(records: Sequence[PlanRecord]) -> dict[str, list[object]]:
        return {r.plan.device_id: [r.plan.sequence, *spans(r.plan)] for r in records}

    throughout = started(BridgeStore(create_engine("sqlite://")))
    priced = {r.plan.device_id: r.plan for r in await throughout.update("agg", [hubless_prices()])}
    capped = steps(await throughout.update("agg", [hubless_prices(), cap]))
    released = steps(await throughout.update("agg", [hubless_prices()]))
    bare = await started(BridgeStore(create_engine("sqlite://"))).update("agg", [cap])
    assert steps(bare) != capped  # the price plan beneath changes the cap's plans

    store = BridgeStore(create_engine("sqlite://"))
    await started(store).update("agg", [hubless_prices()])
    assert steps(await started(store).update("agg", [hubless_prices(), cap])) == capped
    assert steps(await started(store).update("agg", [hubless_prices()])) == released
    hour = T0 + 60 * M
    assert {d: s[1:] for d, s in released.items()} == {
        d: [(s, min(e, hour), m, p, lv) for s, e, m, p, lv in spans(price) if s < hour]
        for d, price in priced.items()}


async def test_withdrawing_a_price_plan_after_its_cap_ends_hands_back_to_the_day_job(
        bridge: Bridge) -> None:
    # The cap's withdrawal handed the batteries back to their price plans; withdrawing those
    # must not hand them back to the price plan again (it is gone), but to their day job.
    cap = signal("SIMPLE", "level", 2, 2, resources=("hubless",))
    await bridge.update("agg", [hubless_prices()])
    await bridge.update("agg", [hubless_prices(), cap])
    await bridge.update("agg", [hubless_prices()])
    released = await bridge.update("agg", [])
    assert released and all(
        [s.mode for s in r.plan.steps] == [Mode.BALANCE] for r in released)


async def test_a_dispatch_during_a_cap_keeps_under_it(bridge: Bridge) -> None:
    # A 50 % cap on the 3 kW heaters for the hour (a network constraint), then a dispatch (a grid
    # service) that turns them up for the first half hour and sheds them in the second. Capped,
    # they draw what the cap allows: the turn-up finds no headroom (shortfall, no shares, the
    # cap kept), the shed keeps its lower import.
    cap = signal("LOAD_CONTROL", "x-loadControlCapacity", 0.5, 0.5)
    dispatch = dataclasses.replace(signal("LOAD_DISPATCH", "delta", 2.0, -4.0, unit="kW"),
                                   event_id="e2")
    (level,) = {s.level for r in await bridge.update("agg", [cap]) for s in r.plan.steps}
    records = await bridge.update("agg", [cap, dispatch])
    key, window = next(iter(bridge._windows.items()))
    (_, up), (_, down) = window.allocations
    assert up.shares == {} and up.shortfall_kw == pytest.approx(2.0)

    def shed(device_id: str) -> int:
        """The level the shed asks of the heater."""
        share = down.shares[device_id]
        return round(100 * share.expected_kw / bridge._by_id[device_id].rated_import_kw)

    assert len(records) == 5
    for r in records:
        assert shed(r.plan.device_id) < level
        assert [s.level for s in r.plan.steps] == [level, shed(r.plan.device_id)]
    # The heaters do what they were told: nothing to move, nothing sent again.
    assert await bridge._redispatch(key, window) == []
    # Re-dispatched when a heater is lost, the others take its share of the shed and keep the
    # cap where the turn-up would have lifted it.
    bridge.unavailable.add("agg/tanks/0")
    moved = await bridge._redispatch(key, window)
    (_, down) = window.allocations[1]
    assert len(moved) == 5
    for r in moved:
        if r.plan.device_id != "agg/tanks/0":
            assert [s.level for s in r.plan.steps] == [level, shed(r.plan.device_id)]
