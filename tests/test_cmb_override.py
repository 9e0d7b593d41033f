"""The CMB's control override over loopback against the real simulators: a highest-priority
OpenADR event at the VTN, SRV 7.16 through the DCC as the Load Controller, and a CMB-primacy
DERControl for 2030.5 inverters; each beats the aggregator's plans, lifting restores them, and
one path failing leaves the others working."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from bridge.channel import ChannelError, CommandBook, Dispatch, Setpoint
from bridge.duis import Alert, AlertCode, LimitApcLevel, RequestId
from bridge.ieee2030_5 import Ieee20305Driver, Ieee20305Server
from bridge.models import Channel, Device, Mode, Plan, PlanStep
from bridge.sapc import SapcDriver
from bridge.sim.dcc import INSTANT, DccSim, Role, SapcSim, ServiceUser
from bridge.sim.inverter import SimInverter
from tests.vtnkit import running_vtn
from ven.fleet import DeviceClass
from ven.records import Purpose
from vtn.cmb.override import (
    CMB_PROGRAM, OPEN_ENDED, ClockCounters, Ieee20305Path, OpenAdrPath, OverrideExecutor,
    PathResult, SapcPath, event_id, resolve)
from vtn.cmb.records import DeviceRegistration, Override, OverrideTarget

AGGREGATOR_EUI = "90-B3-D5-1F-30-01-00-00"
CMB_EUI = "90-B3-D5-1F-30-0C-00-00"
HW1_EUI = "00-DB-12-34-56-78-90-A0"
HW2_EUI = "00-DB-12-34-56-78-90-A1"
LFDI = "3E4F45AB31EDFE5B67E343E5E4562E31984E23E5"
AGGREGATOR_KEY = ec.generate_private_key(ec.SECP256R1())
CMB_KEY = ec.generate_private_key(ec.SECP256R1())
WAIT = 5.0  # bound on waiting for an alert or an acknowledgement
PLAN_WINDOW = timedelta(hours=1)


def reg(device_id: str, owner: str, *, area: str = "north",
        device_class: DeviceClass = DeviceClass.HOT_WATER, channel: Channel = Channel.SAPC,
        reach: str = "", rated: float = 3.0, ven_id: str | None = None,
        resource_id: str | None = None) -> DeviceRegistration:
    return DeviceRegistration(device_id=device_id, owner=owner, device_class=device_class,
                              network_area=area, channel=channel, reach=reach or device_id,
                              rated_import_kw=rated, ven_id=ven_id, resource_id=resource_id)


def as_device(r: DeviceRegistration) -> Device:
    """The device as its aggregator's bridge knows it."""
    return Device(device_id=r.device_id, resource_id=r.resource_id or "group",
                  device_class=r.device_class, channel=r.channel, network_area=r.network_area,
                  address=r.reach, rated_import_kw=r.rated_import_kw,
                  rated_export_kw=r.rated_export_kw, capacity_kwh=10.0)


AGG_A = OverrideTarget(aggregator="agg-a")


def override(level: int, *, start: datetime, target: OverrideTarget = AGG_A,
             energized: bool = True, override_id: str = "ov-1") -> Override:
    return Override(override_id=override_id, target=target, level=level, start=start,
                    energized=energized, reason="test")


def aggregator_plan(device_id: str, sequence: int, start: datetime, *, mode: Mode = Mode.LIMIT,
                    level: int | None = None, power_kw: float | None = None) -> Plan:
    return Plan(plan_id=f"{device_id}-p{sequence}", device_id=device_id, sequence=sequence,
                issuer="agg-a", purpose=Purpose.ROUTINE, priority=0,
                steps=(PlanStep(mode=mode, start=start, end=start + PLAN_WINDOW, level=level,
                                power_kw=power_kw),))


def only(results: list[PathResult], path: str) -> PathResult:
    (result,) = [r for r in results if r.path == path]
    return result


# -- targets -------------------------------------------------------------------------------------

REGISTRY = (
    reg("hw-1", "agg-a"),
    reg("hw-2", "agg-a", area="south"),
    reg("bat-1", "agg-a", device_class=DeviceClass.BATTERY, channel=Channel.IEEE_2030_5),
    reg("hw-3", "agg-b"),
    reg("bat-2", "agg-b", area="south", device_class=DeviceClass.BATTERY,
        channel=Channel.IEEE_2030_5),
)


@pytest.mark.parametrize(("target", "expected"), [
    (OverrideTarget(aggregator="agg-a"), ["hw-1", "hw-2", "bat-1"]),
    (OverrideTarget(network_area="south"), ["hw-2", "bat-2"]),
    (OverrideTarget(device_class=DeviceClass.BATTERY), ["bat-1", "bat-2"]),
    (OverrideTarget(devices=("hw-3", "bat-1", "not-registered")), ["bat-1", "hw-3"]),
    (OverrideTarget(aggregator="agg-b", network_area="south"), ["bat-2"]),
    (OverrideTarget(aggregator="agg-a", device_class=DeviceClass.HOT_WATER,
                    devices=("hw-2", "hw-3")), ["hw-2"]),
    (OverrideTarget(aggregator="agg-c"), []),
], ids=["aggregator", "area", "class", "list", "aggregator+area", "aggregator+class+list",
        "nobody"])
def test_a_target_resolves_to_the_registered_devices_it_names(
        target: OverrideTarget, expected: list[str]) -> None:
    assert [r.device_id for r in resolve(target, REGISTRY)] == expected


def test_counters_strictly_increase_and_a_restart_starts_above_the_last() -> None:
    t0 = datetime(2026, 11, 27, 17, tzinfo=UTC)
    clock = [t0]
    before = ClockCounters(lambda: clock[0])
    burst = [before.next() for _ in range(5)]  # the clock has not moved: one more each time
    assert burst == sorted(set(burst)) and len(burst) == 5
    clock[0] += timedelta(milliseconds=1)
    restarted = ClockCounters(lambda: clock[0])
    assert restarted.next() > burst[-1]
    clock[0] -= timedelta(seconds=1)  # the clock stepping back never repeats a counter
    assert restarted.next() > burst[-1] + 1


# -- the smart-metering path ---------------------------------------------------------------------

@dataclass
class Metering:
    dcc: DccSim
    book: CommandBook
    alerts: asyncio.Queue[Alert]
    aggregator: SapcDriver
    cmb: SapcDriver


@pytest.fixture
async def metering() -> AsyncIterator[Metering]:
    book, alerts = CommandBook(), asyncio.Queue[Alert]()
    sapc = SapcSim(book, {HW1_EUI: {1: "hw-1"}, HW2_EUI: {1: "hw-2"}}, rng=random.Random(1))
    dcc = DccSim(sapc, latency=INSTANT)
    dcc.add_user(ServiceUser(AGGREGATOR_EUI, AGGREGATOR_KEY.public_key(),
                             frozenset({Role.SUPPLIER})))
    dcc.add_user(ServiceUser(CMB_EUI, CMB_KEY.public_key(), frozenset({Role.LOAD_CONTROLLER}),
                             alerts=alerts.put))
    url = await dcc.start()
    net = Metering(dcc, book, alerts,
                   SapcDriver(user_eui=AGGREGATOR_EUI, key=AGGREGATOR_KEY, dcc_url=url),
                   SapcDriver(user_eui=CMB_EUI, key=CMB_KEY, dcc_url=url))
    yield net
    await net.aggregator.aclose()
    await net.cmb.aclose()
    await dcc.close()


SAPC_DEVICES = [reg("hw-1", "agg-a", reach=HW1_EUI), reg("hw-2", "agg-a", reach=HW2_EUI)]


async def test_the_metering_path_caps_the_plan_while_the_aggregator_keeps_sending(
        metering: Metering) -> None:
    now = datetime.now(UTC)
    start, at = now - timedelta(minutes=1), now + timedelta(minutes=10)
    for device in SAPC_DEVICES:
        await metering.aggregator.deliver(Dispatch(
            plan=aggregator_plan(device.device_id, 1, start, level=80), device=as_device(device)))
    assert metering.book.setpoint("hw-1", at) == Setpoint(mode=Mode.LIMIT, level=80)

    executor = OverrideExecutor(sapc=SapcPath(metering.cmb, concurrency=1))
    cap = override(20, start=now)
    (applied,) = await executor.apply(cap, SAPC_DEVICES)
    assert applied.ok and sorted(applied.reached) == ["hw-1", "hw-2"]
    assert applied.messages == 2 * 4  # each 7.16 is critical: four messages
    processed = [await asyncio.wait_for(metering.alerts.get(), WAIT) for _ in SAPC_DEVICES]
    assert {(a.code, a.request_id.user, a.request_id.device) for a in processed} == {
        (AlertCode.LIMIT_PROCESSED, CMB_EUI, HW1_EUI),
        (AlertCode.LIMIT_PROCESSED, CMB_EUI, HW2_EUI)}

    # The compromised aggregator keeps raising its devices to 100: the cap holds.
    for sequence in (2, 3):
        for device in SAPC_DEVICES:
            await metering.aggregator.deliver(Dispatch(
                plan=aggregator_plan(device.device_id, sequence, start, level=100),
                device=as_device(device)))
            setpoint = metering.book.setpoint(device.device_id, at)
            assert setpoint is not None and setpoint.level is not None
            assert setpoint.level <= 20 and setpoint.cap == 20
    with pytest.raises(ChannelError, match="ROLE_NOT_ALLOWED") as refused:
        await metering.aggregator.limit(HW1_EUI, LimitApcLevel(
            controller=1, start=now, end=now + PLAN_WINDOW, level=100), counter=10_000)
    assert not refused.value.retryable

    (lifted,) = await executor.lift(cap, SAPC_DEVICES)
    assert lifted.ok and sorted(lifted.reached) == ["hw-1", "hw-2"]
    ended = [await asyncio.wait_for(metering.alerts.get(), WAIT) for _ in SAPC_DEVICES]
    assert {(a.code, a.reason) for a in ended} == {(AlertCode.LIMIT_ENDED, "cancelled")}
    assert {a.request_id for a in ended} == {RequestId.parse(r) for r in applied.detail.split()}
    # The cancellations carry fresh counters, above the limits' (the devices refuse replays).
    assert min(RequestId.parse(r).counter for r in lifted.detail.split()) \
        > max(RequestId.parse(r).counter for r in applied.detail.split())
    for device in SAPC_DEVICES:
        assert metering.book.setpoint(device.device_id, at) == Setpoint(mode=Mode.LIMIT,
                                                                         level=100)
    # The cap lasted the open-ended window: no ECS102 had come before the lift.
    assert metering.alerts.empty()


async def test_ceasing_to_energize_on_the_metering_path_limits_to_zero(
        metering: Metering) -> None:
    now = datetime.now(UTC)
    device = SAPC_DEVICES[0]
    await metering.aggregator.deliver(Dispatch(
        plan=aggregator_plan("hw-1", 1, now - timedelta(minutes=1), level=60),
        device=as_device(device)))
    path = SapcPath(metering.cmb)
    (result,) = await OverrideExecutor(sapc=path).apply(
        override(50, start=now, energized=False), [device])
    assert result.ok
    assert metering.book.setpoint("hw-1", now + timedelta(minutes=5)) == Setpoint(
        mode=Mode.LIMIT, level=0, cap=0)


# -- the IEEE 2030.5 path ------------------------------------------------------------------------

INVERTER = reg("inv-1", "agg-a", device_class=DeviceClass.BATTERY, channel=Channel.IEEE_2030_5,
               reach=LFDI, rated=4.0)


@dataclass
class Inverters:
    server: Ieee20305Server
    book: CommandBook
    driver: Ieee20305Driver  # the aggregator's


@pytest.fixture
async def inverters() -> AsyncIterator[Inverters]:
    book = CommandBook()
    server = Ieee20305Server([LFDI], poll_rate_s=1)
    url = await server.start()
    inverter = SimInverter(url, as_device(INVERTER), book, period_s=0.02)
    await inverter.start()
    yield Inverters(server, book, Ieee20305Driver(server, ack_timeout_s=WAIT))
    await inverter.aclose()
    await server.close()


async def test_the_2030_5_cap_and_cease_to_energize_beat_the_plan_until_lifted(
        inverters: Inverters) -> None:
    now = datetime.now(UTC)
    start, at = now - timedelta(minutes=1), now + timedelta(minutes=10)
    device = as_device(INVERTER)
    await inverters.driver.deliver(Dispatch(
        plan=aggregator_plan("inv-1", 1, start, mode=Mode.CHARGE, power_kw=3.0), device=device))
    executor = OverrideExecutor(ieee2030_5=Ieee20305Path(inverters.server, ack_timeout_s=WAIT))

    cap = override(20, start=now)
    (applied,) = await executor.apply(cap, [INVERTER])
    assert applied.ok and applied.reached == ("inv-1",) and applied.messages > 0
    assert inverters.book.setpoint("inv-1", at) == Setpoint(mode=Mode.CHARGE, power_kw=3.0,
                                                            cap=20)
    await inverters.driver.deliver(Dispatch(  # the aggregator asks for more: still capped
        plan=aggregator_plan("inv-1", 2, start, mode=Mode.CHARGE, power_kw=4.0), device=device))
    assert inverters.book.setpoint("inv-1", at) == Setpoint(mode=Mode.CHARGE, power_kw=4.0,
                                                            cap=20)
    (lifted,) = await executor.lift(cap, [INVERTER])
    assert lifted.ok and lifted.reached == ("inv-1",)
    restored = Setpoint(mode=Mode.CHARGE, power_kw=4.0)
    assert inverters.book.setpoint("inv-1", at) == restored

    cease = override(0, start=now, energized=False, override_id="ov-2")
    (ceased,) = await executor.apply(cease, [INVERTER])
    assert ceased.ok
    setpoint = inverters.book.setpoint("inv-1", at)
    assert setpoint is not None and setpoint.energized is False
    (again,) = await executor.apply(cease, [INVERTER])  # applied twice: nothing new published
    assert again.ok and len(inverters.book.commands("inv-1")) == len(
        {c.source for c in inverters.book.commands("inv-1")})
    await executor.lift(cease, [INVERTER])
    assert inverters.book.setpoint("inv-1", at) == restored


async def test_an_unknown_inverter_fails_alone(inverters: Inverters) -> None:
    stranger = reg("inv-9", "agg-a", channel=Channel.IEEE_2030_5, reach="not-served")
    (result,) = await OverrideExecutor(ieee2030_5=Ieee20305Path(
        inverters.server, ack_timeout_s=WAIT)).apply(
        override(10, start=datetime.now(UTC)), [INVERTER, stranger])
    assert result.reached == ("inv-1",) and not result.ok
    assert "unknown end device not-served" in (result.reason or "")


# -- the OpenADR path ----------------------------------------------------------------------------

FRONTED = [
    reg("hw-1", "agg-a", ven_id="ven-a1", resource_id="heaters-a"),
    reg("bat-1", "agg-a", device_class=DeviceClass.BATTERY, channel=Channel.IEEE_2030_5,
        ven_id="ven-a2", resource_id="batteries-a"),
    reg("hw-9", "agg-a"),  # behind no VEN: only the direct paths reach it
]


async def test_the_openadr_path_sends_a_priority_1_capacity_event_and_cancels_it() -> None:
    async with running_vtn() as vtn:
        now = datetime.now(UTC)
        for name, resources in [("ven-a1", ("heaters-a",)), ("ven-a2", ("batteries-a",)),
                                ("ven-b", ("heaters-b",))]:
            vtn.operator.provision_ven(ven_name=name, ven_id=name, now=now, resources=resources)
        executor = OverrideExecutor(openadr=OpenAdrPath(vtn.operator))
        cap = override(30, start=now)
        (applied,) = await executor.apply(cap, FRONTED)
        assert applied.ok and sorted(applied.reached) == ["bat-1", "hw-1"]
        record = vtn.store.get_event(event_id(cap))
        assert record is not None and not record.cancelled
        event = record.event
        assert (event.priority, event.market_context) == (1, CMB_PROGRAM)
        assert event.active_period.dtstart == now
        assert event.active_period.duration == OPEN_ENDED
        assert [(s.signal_name, s.signal_type, [i.payload for i in s.intervals])
                for s in event.signals] == [("LOAD_CONTROL", "x-loadControlCapacity", [0.3])]
        assert (set(event.targets.ven_ids), set(event.targets.resource_ids)) == (
            {"ven-a1", "ven-a2"}, {"heaters-a", "batteries-a"})
        assert {d.ven_id for d in vtn.store.deliveries_for_event(event.event_id)} == {
            "ven-a1", "ven-a2"}

        (lifted,) = await executor.lift(cap, FRONTED)
        assert lifted.ok and sorted(lifted.reached) == ["bat-1", "hw-1"]
        cancelled = vtn.store.get_event(event_id(cap))
        assert cancelled is not None and cancelled.cancelled
        assert cancelled.event.modification_number == 1


async def test_resource_ids_another_aggregator_shares_are_left_out_of_the_target() -> None:
    async with running_vtn() as vtn:
        now = datetime.now(UTC)
        for name in ("ven-a1", "ven-b"):  # both call their group "heaters"
            vtn.operator.provision_ven(ven_name=name, ven_id=name, now=now,
                                       resources=("heaters",))
        devices = [reg("hw-1", "agg-a", ven_id="ven-a1", resource_id="heaters"),
                   reg("hw-2", "agg-a", ven_id="ven-gone")]
        (applied,) = await OverrideExecutor(openadr=OpenAdrPath(vtn.operator)).apply(
            override(0, start=now), devices)
        event = vtn.store.get_event(event_id(override(0, start=now)))
        assert event is not None and event.event.targets.resource_ids == ()
        assert {d.ven_id for d in vtn.store.deliveries_for_event(event.event.event_id)} == {
            "ven-a1"}
        assert applied.reached == ("hw-1",)
        assert applied.failed == {"hw-2": "VEN ven-gone is unknown to the VTN"}


# -- one path down -------------------------------------------------------------------------------

async def test_with_the_dcc_down_the_other_paths_still_apply_and_the_failure_is_reported(
        inverters: Inverters) -> None:
    book = CommandBook()
    dead = DccSim(SapcSim(book, {HW1_EUI: {1: "hw-1"}}, rng=random.Random(0)))
    url = await dead.start()
    await dead.close()  # nothing listens there any more
    devices = [replace(SAPC_DEVICES[0], ven_id="ven-a1"),
               replace(INVERTER, ven_id="ven-a1")]
    async with running_vtn() as vtn, AsyncExitStack() as stack:
        now = datetime.now(UTC)
        vtn.operator.provision_ven(ven_name="ven-a1", ven_id="ven-a1", now=now)
        executor = OverrideExecutor(
            openadr=OpenAdrPath(vtn.operator),
            sapc=SapcPath(SapcDriver(user_eui=CMB_EUI, key=CMB_KEY, dcc_url=url),
                          attempts=2, backoff_s=0.01),
            ieee2030_5=Ieee20305Path(inverters.server, ack_timeout_s=WAIT))
        stack.push_async_callback(executor.aclose)
        results = await executor.apply(override(20, start=now), devices)
        assert [r.path for r in results] == ["openadr", "sapc", "ieee2030_5"]
        sapc = only(results, "sapc")
        assert not sapc.ok and sapc.reached == ()
        assert "DCC unreachable" in sapc.failed["hw-1"] and "hw-1" in (sapc.reason or "")
        assert only(results, "openadr").ok and only(results, "openadr").reached == (
            "hw-1", "inv-1")
        assert only(results, "ieee2030_5").ok
        setpoint = inverters.book.setpoint("inv-1", now + timedelta(minutes=1))
        assert setpoint is not None and setpoint.level == 20
        assert all(r.started <= r.finished for r in results)
