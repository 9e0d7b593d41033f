"""The OCPP channel: plans as charging profiles (sans-IO), valid for the ocpp package's schemas,
and end to end over loopback: OcppDriver -> CentralSystem -> simulated charge point."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from jsonschema.exceptions import ValidationError as SchemaError
from ocpp.charge_point import remove_nones, serialize_as_dict, snake_to_camel_case
from ocpp.exceptions import OCPPError
from ocpp.messages import MessageType, get_validator
from ocpp.v16 import call, call_result, datatypes, enums
from ocpp.v201 import call as call201
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from bridge.channel import ChannelError, CommandBook, DeviceUnavailable, Dispatch, Setpoint
from bridge.models import Channel, Device, Mode, Plan, PlanStep
from bridge.ocpp_cs import (
    OCPP16, CentralSystem, OcppDriver, charging_profile, charging_profile_v201, check_composite,
    plan_profile_id, profile_schedule)
from bridge.sim.chargepoint import ChargePointSim, Ev, InstalledProfile, composite, limit_at
from ven.fleet import DeviceClass
from ven.records import Purpose

MIN = timedelta(minutes=1)
T0 = datetime(2026, 11, 27, 17, 0, tzinfo=UTC)
RATED_KW = 7.4


def ev_device(cp_id: str, *, device_id: str | None = None) -> Device:
    return Device(device_id=device_id or f"ev-{cp_id}", resource_id="evs",
                  device_class=DeviceClass.EV, channel=Channel.OCPP, network_area="area-1",
                  address=cp_id, rated_import_kw=RATED_KW, capacity_kwh=60)


def three_steps(start: datetime) -> tuple[PlanStep, ...]:
    """LIMIT 50 % for 10 min, CHARGE 3.3333 kW for 10 min, HOLD for 10 min."""
    return (PlanStep(mode=Mode.LIMIT, start=start, end=start + 10 * MIN, level=50),
            PlanStep(mode=Mode.CHARGE, start=start + 10 * MIN, end=start + 20 * MIN,
                     power_kw=3.3333),
            PlanStep(mode=Mode.HOLD, start=start + 20 * MIN, end=start + 30 * MIN))


def dispatch_for(device: Device, steps: tuple[PlanStep, ...], *, plan_id: str = "plan-1",
                 sequence: int = 1, delay: timedelta = timedelta(0), step: int | None = None,
                 ) -> Dispatch:
    plan = Plan(plan_id=plan_id, device_id=device.device_id, sequence=sequence, issuer="agg",
                purpose=Purpose.ROUTINE if delay else Purpose.RESPONSE, priority=1, steps=steps,
                random_delay=delay)
    return Dispatch(plan=plan, device=device, step=step)


def wire_dict(payload: object) -> Any:
    """What ocpp puts on the wire for a payload dataclass, parsed as the validator reads it."""
    text = json.dumps(snake_to_camel_case(remove_nones(serialize_as_dict(payload))))
    return json.loads(text, parse_float=Decimal)


def validate(payload: object, action: str, version: str, kind: int = MessageType.Call) -> None:
    get_validator(kind, action, version, parse_float=Decimal).validate(wire_dict(payload))


def now_floor() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# --- sans-IO ----------------------------------------------------------------------------------


def test_plan_becomes_a_tx_default_profile_field_by_field() -> None:
    delay = timedelta(seconds=137)
    profile = charging_profile(dispatch_for(ev_device("CP1"), three_steps(T0), delay=delay),
                               profile_id=42, stack_level=3)
    schedule = profile.charging_schedule
    assert (profile.charging_profile_id, profile.stack_level) == (42, 3)
    assert profile.charging_profile_purpose == enums.ChargingProfilePurposeType.tx_default_profile
    assert profile.charging_profile_kind == enums.ChargingProfileKindType.absolute
    assert schedule.charging_rate_unit == enums.ChargingRateUnitType.watts
    assert schedule.start_schedule == profile.valid_from == "2026-11-27T17:02:17Z"
    assert profile.valid_to == "2026-11-27T17:32:17Z"
    assert schedule.duration == 30 * 60
    periods = [(p.start_period, p.limit) for p in schedule.charging_schedule_period]
    assert periods == [(0, 0.5 * RATED_KW * 1000), (600, 3333.3), (1200, 0.0)]
    assert all(Decimal(str(limit)) % Decimal("0.1") == 0 for _, limit in periods)


def test_one_step_dispatch_carries_that_step_only() -> None:
    profile = charging_profile(dispatch_for(ev_device("CP1"), three_steps(T0), step=1),
                               profile_id=1, stack_level=1)
    assert profile.charging_schedule.start_schedule == "2026-11-27T17:10:00Z"
    assert [(p.start_period, p.limit) for p in
            profile.charging_schedule.charging_schedule_period] == [(0, 3333.3)]


@pytest.mark.parametrize("mode", [Mode.DISCHARGE, Mode.BALANCE])
def test_a_1_6_charge_point_cannot_discharge(mode: Mode) -> None:
    steps = (PlanStep(mode=mode, start=T0, end=T0 + MIN, power_kw=1.0),)
    with pytest.raises(ChannelError) as caught:
        charging_profile(dispatch_for(ev_device("CP1"), steps), profile_id=1, stack_level=1)
    assert not caught.value.retryable


def test_profile_id_follows_the_plan_not_its_sequence() -> None:
    ids = {plan_profile_id(f"plan-{i}") for i in range(200)}
    assert len(ids) == 200 and all(1 <= i < 2 ** 31 for i in ids)
    device = ev_device("CP1")
    first = dispatch_for(device, three_steps(T0), sequence=1)
    again = dispatch_for(device, three_steps(T0 + MIN), sequence=2)
    assert plan_profile_id(first.plan.plan_id) == plan_profile_id(again.plan.plan_id)


def test_payloads_are_valid_for_the_ocpp_schemas() -> None:
    dispatch = dispatch_for(ev_device("CP1"), three_steps(T0), delay=timedelta(seconds=5))
    profile = charging_profile(dispatch, profile_id=7, stack_level=1)
    validate(call.SetChargingProfile(connector_id=1, cs_charging_profiles=profile),
             "SetChargingProfile", "1.6")
    validate(call.GetCompositeSchedule(connector_id=1, duration=1800,
                                       charging_rate_unit=enums.ChargingRateUnitType.watts),
             "GetCompositeSchedule", "1.6")
    v201 = charging_profile_v201(dispatch, profile_id=7, stack_level=1)
    assert v201.charging_profile_purpose == "ChargingStationExternalConstraints"
    assert v201.charging_schedule[0].start_schedule == profile.charging_schedule.start_schedule
    validate(call201.SetChargingProfile(evse_id=1, charging_profile=v201),
             "SetChargingProfile", "2.0.1")
    # The validator is not a rubber stamp: a limit that is no multiple of 0.1 fails it.
    profile.charging_schedule.charging_schedule_period[0].limit = 1.23
    with pytest.raises(SchemaError):
        validate(call.SetChargingProfile(connector_id=1, cs_charging_profiles=profile),
                 "SetChargingProfile", "1.6")


def installed(profile: datatypes.ChargingProfile, connector: int = 1) -> InstalledProfile:
    return InstalledProfile(connector, profile, profile_schedule(profile), None)


def composite_answer(profiles: list[InstalledProfile], start: datetime,
                     seconds: int) -> call_result.GetCompositeSchedule:
    schedule = composite(profiles, 1, start, timedelta(seconds=seconds), RATED_KW * 1000)
    return call_result.GetCompositeSchedule(
        status=enums.GetCompositeScheduleStatus.accepted, connector_id=1,
        schedule_start=start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        charging_schedule={"charging_rate_unit": "W", "duration": seconds,
                           "charging_schedule_period": [
                               {"start_period": int((p.start - start).total_seconds()),
                                "limit": p.limit_w} for p in schedule.periods]})


def test_composite_read_back_is_checked_against_the_profile() -> None:
    profile = charging_profile(dispatch_for(ev_device("CP1"), three_steps(T0)),
                               profile_id=9, stack_level=1)
    assert check_composite(profile, composite_answer([installed(profile)], T0, 1800)) == []
    # asked mid-way: only the part still ahead is compared
    assert check_composite(profile, composite_answer([installed(profile)],
                                                     T0 + 12 * MIN, 1080)) == []
    cap = charging_profile(dispatch_for(ev_device("CP1"),
                                        (PlanStep(mode=Mode.CHARGE, start=T0, end=T0 + 30 * MIN,
                                                  power_kw=2.0),)),
                           profile_id=10, stack_level=1)
    cap.charging_profile_purpose = enums.ChargingProfilePurposeType.charge_point_max_profile
    capped = composite_answer([installed(profile), installed(cap, connector=0)], T0, 1800)
    reasons = check_composite(profile, capped)
    assert reasons == ["at 2026-11-27T17:00:00Z: limit 2000 W in force, 3700 W sent",
                       "at 2026-11-27T17:10:00Z: limit 2000 W in force, 3333.3 W sent"]
    short = composite_answer([installed(profile)], T0, 600)
    assert check_composite(profile, short) == [
        "composite ends at 2026-11-27T17:10:00Z, the profile at 2026-11-27T17:30:00Z"]
    rejected = call_result.GetCompositeSchedule(status=enums.GetCompositeScheduleStatus.rejected)
    assert check_composite(profile, rejected) == ["composite schedule Rejected"]


def test_simulator_stacking_rules() -> None:
    rated = RATED_KW * 1000

    def flat(pid: int, limit_kw: float, stack: int,
             purpose: enums.ChargingProfilePurposeType) -> datatypes.ChargingProfile:
        step = PlanStep(mode=Mode.CHARGE, start=T0, end=T0 + 10 * MIN, power_kw=limit_kw)
        p = charging_profile(dispatch_for(ev_device("CP1"), (step,), plan_id=f"p{pid}"),
                             profile_id=pid, stack_level=stack)
        p.charging_profile_purpose = purpose
        return p

    default, cp_max = (enums.ChargingProfilePurposeType.tx_default_profile,
                       enums.ChargingProfilePurposeType.charge_point_max_profile)
    at = T0 + MIN
    assert limit_at([], 1, at, rated) == rated
    all_connectors = installed(flat(1, 5.0, 1, default), connector=0)
    higher = installed(flat(2, 4.0, 2, default), connector=0)
    assert limit_at([all_connectors], 1, at, rated) == 5000.0
    assert limit_at([all_connectors, higher], 1, at, rated) == 4000.0
    this_connector = installed(flat(3, 6.0, 1, default))
    assert limit_at([all_connectors, higher, this_connector], 1, at, rated) == 6000.0
    assert limit_at([this_connector, installed(flat(4, 3.0, 1, cp_max), connector=0)],
                    1, at, rated) == 3000.0
    assert limit_at([this_connector], 1, T0 + 11 * MIN, rated) == rated  # after its end


# --- over loopback ----------------------------------------------------------------------------


@pytest.fixture
async def central() -> AsyncIterator[CentralSystem]:
    cs = CentralSystem(response_timeout=0.5, heartbeat_interval=60)
    await cs.start()
    yield cs
    await cs.aclose()


SimFactory = Callable[..., Any]


@pytest.fixture
async def sims(central: CentralSystem) -> AsyncIterator[tuple[CommandBook, SimFactory]]:
    book = CommandBook()
    started: list[ChargePointSim] = []

    async def start(cp_id: str, **kwargs: Any) -> ChargePointSim:
        sim = ChargePointSim(cp_id, book=book, rated_w=RATED_KW * 1000,
                             device_id=f"ev-{cp_id}", meter_interval=0.02,
                             response_timeout=0.5, **kwargs)
        await sim.connect(central.url)
        started.append(sim)
        return sim

    yield book, start
    for sim in started:
        await sim.aclose()


async def eventually(check: Callable[[], bool], *, tries: int = 200) -> None:
    """Bounded wait (at most tries x 10 ms) for something the other side does on its own."""
    for _ in range(tries):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_dispatch_reaches_the_charge_point_and_is_confirmed(
        central: CentralSystem, sims: tuple[CommandBook, SimFactory]) -> None:
    book, start = sims
    sim = await start("CP1", ev=Ev(present=True, max_rate_w=11_000, need_wh=50_000))
    device = ev_device("CP1")
    begin = now_floor() - MIN
    dispatch = dispatch_for(device, three_steps(begin))
    delivery = await OcppDriver(central).deliver(dispatch)

    profile_id = plan_profile_id("plan-1")
    assert (delivery.key, delivery.plan_id, delivery.device_id) == (dispatch.key, "plan-1",
                                                                    device.device_id)
    assert delivery.channel is Channel.OCPP and delivery.messages == 4
    assert delivery.sent_at <= delivery.acked_at
    assert delivery.detail.startswith(f"profile {profile_id} stack 1 on CP1/1; composite: ")
    assert "3700 W" in delivery.detail and "3333.3 W" in delivery.detail
    half = 0.5 * RATED_KW
    assert book.setpoint(device.device_id, datetime.now(UTC)) == Setpoint(
        mode=Mode.LIMIT, level=50, power_kw=half)
    assert book.setpoint(device.device_id, begin + 25 * MIN) == Setpoint(
        mode=Mode.LIMIT, level=0, power_kw=0.0)
    assert [c.source for c in book.commands(device.device_id)] == [f"ocpp-profile-{profile_id}"] * 3
    assert sim.limit_w(datetime.now(UTC)) == half * 1000
    # the EV draws the limit, and the central system hears it in MeterValues
    await eventually(lambda: central.power_w("CP1") == half * 1000)
    await eventually(lambda: central.session("CP1") is not None
                     and central.session("CP1").status.get(1) == "Charging")  # type: ignore[union-attr]


async def test_resending_a_dispatch_replaces_its_profile(
        central: CentralSystem, sims: tuple[CommandBook, SimFactory]) -> None:
    book, start = sims
    sim = await start("CP1")
    device = ev_device("CP1")
    driver = OcppDriver(central)
    dispatch = dispatch_for(device, three_steps(now_floor()))
    first = await driver.deliver(dispatch)
    again = await driver.deliver(dispatch)
    assert first.detail == again.detail
    assert len(sim.profiles) == 1 and len(book.commands(device.device_id)) == 3
    # a new sequence of the same plan replaces it too
    newer = dispatch_for(device, (PlanStep(mode=Mode.LIMIT, start=now_floor() - MIN,
                                           end=now_floor() + 5 * MIN, level=20),), sequence=2)
    await driver.deliver(newer)
    assert len(sim.profiles) == 1
    assert [c.setpoint.level for c in book.commands(device.device_id)] == [20]


async def test_discharge_never_reaches_the_wire(
        central: CentralSystem, sims: tuple[CommandBook, SimFactory]) -> None:
    book, start = sims
    await start("CP1")
    steps = (PlanStep(mode=Mode.DISCHARGE, start=now_floor(), end=now_floor() + MIN,
                      power_kw=1.0),)
    with pytest.raises(ChannelError) as caught:
        await OcppDriver(central).deliver(dispatch_for(ev_device("CP1"), steps))
    assert not caught.value.retryable and not isinstance(caught.value, DeviceUnavailable)
    assert book.commands("ev-CP1") == ()


async def test_rejected_profile_is_not_retryable(
        central: CentralSystem, sims: tuple[CommandBook, SimFactory]) -> None:
    book, start = sims
    sim = await start("CP1")
    sim.reject_profiles = True
    with pytest.raises(ChannelError, match="Rejected") as caught:
        await OcppDriver(central).deliver(dispatch_for(ev_device("CP1"), three_steps(now_floor())))
    assert not caught.value.retryable and not isinstance(caught.value, DeviceUnavailable)
    assert sim.profiles == [] and book.commands("ev-CP1") == ()


async def test_unconnected_silent_or_gone_charge_points_are_unavailable(
        central: CentralSystem, sims: tuple[CommandBook, SimFactory]) -> None:
    _, start = sims
    driver = OcppDriver(central)
    with pytest.raises(DeviceUnavailable, match="NOBODY is not connected"):
        await driver.deliver(dispatch_for(ev_device("NOBODY"), three_steps(now_floor())))
    silent = await start("SILENT")
    silent.silent = True
    with pytest.raises(DeviceUnavailable, match="no answer"):
        await driver.deliver(dispatch_for(ev_device("SILENT"), three_steps(now_floor())))
    assert silent.profiles == []
    gone = await start("GONE")
    await gone.aclose()
    await eventually(lambda: "GONE" not in central.connected())
    with pytest.raises(DeviceUnavailable):
        await driver.deliver(dispatch_for(ev_device("GONE"), three_steps(now_floor())))


async def test_ocpp_validates_what_it_sends_and_receives(
        central: CentralSystem, sims: tuple[CommandBook, SimFactory]) -> None:
    book, start = sims
    sim = await start("CP1")
    profile = charging_profile(dispatch_for(ev_device("CP1"), three_steps(now_floor())),
                               profile_id=5, stack_level=1)
    profile.charging_schedule.charging_schedule_period[0].limit = 1.23
    session = central.session("CP1")
    assert session is not None
    with pytest.raises(OCPPError):  # refused before it is sent
        await session.call(call.SetChargingProfile(connector_id=1, cs_charging_profiles=profile),
                           suppress=False)
    assert sim.profiles == [] and book.commands("ev-CP1") == ()
    async with connect(f"{central.url}/RAW", subprotocols=[OCPP16]) as ws:
        await ws.send(json.dumps([2, "b1", "BootNotification", {"chargePointVendor": "x"}]))
        answer = json.loads(await ws.recv())
        assert answer[:3] == [4, "b1", "ProtocolError"]
        with pytest.raises(DeviceUnavailable, match="not connected and booted"):
            await OcppDriver(central).deliver(dispatch_for(ev_device("RAW"),
                                                           three_steps(now_floor())))


async def test_clear_charging_profile_withdraws_its_commands(
        central: CentralSystem, sims: tuple[CommandBook, SimFactory]) -> None:
    book, start = sims
    sim = await start("CP1")
    await OcppDriver(central).deliver(dispatch_for(ev_device("CP1"), three_steps(now_floor())))
    session = central.session("CP1")
    assert session is not None
    answer = await session.call(call.ClearChargingProfile(id=plan_profile_id("plan-1")),
                                suppress=False)
    assert answer.status == enums.ClearChargingProfileStatus.accepted
    assert sim.profiles == [] and book.commands("ev-CP1") == ()
    again = await session.call(call.ClearChargingProfile(id=plan_profile_id("plan-1")),
                               suppress=False)
    assert again.status == enums.ClearChargingProfileStatus.unknown


async def test_a_misbehaving_client_does_not_break_the_server(
        central: CentralSystem, sims: tuple[CommandBook, SimFactory]) -> None:
    _, start = sims
    await start("GOOD")
    with pytest.raises(InvalidStatus) as not_found:
        async with connect(f"{central.url}/a/b", subprotocols=[OCPP16]):
            pass
    assert not_found.value.response.status_code == 404
    with pytest.raises(InvalidStatus) as no_subprotocol:
        async with connect(f"{central.url}/BAD"):
            pass
    assert no_subprotocol.value.response.status_code == 400
    async with connect(f"{central.url}/BAD", subprotocols=[OCPP16]) as ws:
        junk_frames: list[str | bytes] = [
            "not json", b"\xff\xfe\x00", "[]", "[9]", '{"a": 1}', '[2, "x"]',
            json.dumps([3, "nobody-asked", {}])]
        for junk in junk_frames:
            await ws.send(junk)
        await ws.send(json.dumps([2, "u1", "NoSuchAction", {}]))
        assert json.loads(await ws.recv())[:3] == [4, "u1", "NotSupported"]
        await ws.send(json.dumps([2, "u2", "Heartbeat", []]))
        assert json.loads(await ws.recv())[:2] == [4, "u2"]
        await ws.send(json.dumps([2, "u3", "Heartbeat", {}]))
        heartbeat = json.loads(await ws.recv())
        assert heartbeat[:2] == [3, "u3"] and "currentTime" in heartbeat[2]
        # the well-behaved charge point is served all along
        delivery = await OcppDriver(central).deliver(
            dispatch_for(ev_device("GOOD"), three_steps(now_floor())))
        assert delivery.device_id == "ev-GOOD"
    await eventually(lambda: central.connected() == {"GOOD"})


async def test_a_reconnect_replaces_the_older_connection(
        central: CentralSystem, sims: tuple[CommandBook, SimFactory]) -> None:
    _, start = sims
    await start("CP1")
    first = central.session("CP1")
    second_sim = await start("CP1")
    assert central.session("CP1") is not first and central.connected() == {"CP1"}
    await OcppDriver(central).deliver(dispatch_for(ev_device("CP1"), three_steps(now_floor())))
    assert len(second_sim.profiles) == 1
