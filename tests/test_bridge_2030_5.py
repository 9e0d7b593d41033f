"""The IEEE 2030.5 channel: DERControl documents (valid for envoy-schema), and the driver, server
and simulated inverters on loopback: the device pulls, acknowledges and does what is in force."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from envoy_schema.server.schema.sep2.der import (
    DERControlBase, DERControlListResponse, DERControlResponse, DERProgramListResponse)
from envoy_schema.server.schema.sep2.der_control_types import ActivePower
from envoy_schema.server.schema.sep2.event import EventStatusType
from envoy_schema.server.schema.sep2.response import DERControlResponse as ControlResponse
from envoy_schema.server.schema.sep2.response import ResponseType

from bridge.channel import (
    PLAN_PRIMACY, ChannelError, CommandBook, DeviceUnavailable, Dispatch, Setpoint)
from bridge.ieee2030_5 import (
    CONTENT_TYPE, Ieee20305Driver, Ieee20305Server, cease_to_energize, control_mrid, lfdi,
    plan_controls, setpoint, step_base)
from bridge.models import Channel, Device, Mode, Plan, PlanStep
from bridge.sim.inverter import SimInverter
from tests.test_bridge_models import BATTERY, T0, plan, step

H = timedelta(hours=1)
LFDI = "3E4F45AB31EDFE5B67E343E5E4562E31984E23E5"
INVERTER = dataclasses.replace(BATTERY, device_id="inv-1", channel=Channel.IEEE_2030_5,
                               address=LFDI, rated_import_kw=4.0)
SHORT = dataclasses.replace(INVERTER, device_id="inv-2", address="")
DAY = plan(step(Mode.CHARGE, 0, 1, power_kw=2.0), step(Mode.DISCHARGE, 1, 2, power_kw=3.0),
           step(Mode.HOLD, 2, 3), step(Mode.LIMIT, 3, 4, level=25), step(Mode.BALANCE, 4, 5),
           device="inv-1", sequence=3, random_delay=timedelta(seconds=900))


def watts(value: int) -> ActivePower:
    return ActivePower(multiplier=0, value=value)


def test_each_step_becomes_one_control_field_by_field() -> None:
    now = T0 + H / 2  # during the first step
    controls = plan_controls(DAY, INVERTER, now=now)
    assert [c.mRID for c in controls] == [control_mrid(DAY, i) for i in range(5)]
    assert len({c.mRID for c in controls}) == 5
    assert all(len(c.mRID) == 32 and int(c.mRID, 16) >= 0 for c in controls)
    assert [(c.interval.start, c.interval.duration) for c in controls] == [
        (int((T0 + i * H).timestamp()), 3600) for i in range(5)]
    assert {c.randomizeStart for c in controls} == {900}
    assert [c.EventStatus_.currentStatus for c in controls] == [
        EventStatusType.Active] + [EventStatusType.Scheduled] * 4
    assert {(c.creationTime, c.EventStatus_.dateTime) for c in controls} == {
        (int(now.timestamp()),) * 2}
    assert {c.responseRequired for c in controls} == {"03"}
    assert controls[1].description == "p1#3 step 1"
    assert [c.DERControlBase_ for c in controls] == [
        DERControlBase(opModTargetW=watts(-2000)),  # charging: absorbed, negative
        DERControlBase(opModTargetW=watts(3000)),
        DERControlBase(opModTargetW=watts(0)),
        DERControlBase(opModImpLimW=watts(1000)),  # 25 % of 4 kW rated import
        DERControlBase(opModEnergize=True)]  # balance: energized, under its own control


def test_mrids_are_stable_for_a_resend_and_new_for_a_new_sequence() -> None:
    assert control_mrid(DAY, 2) == control_mrid(dataclasses.replace(DAY), 2)
    assert control_mrid(DAY, 2) != control_mrid(dataclasses.replace(DAY, sequence=4), 2)
    assert control_mrid(DAY, 2) != control_mrid(DAY, 3)


def test_controls_are_valid_2030_5_documents_that_round_trip() -> None:
    controls = plan_controls(DAY, INVERTER, now=T0)
    controls.append(cease_to_energize(INVERTER, T0, T0 + H, "ab" * 16, now=T0))
    document = DERControlListResponse(href="/derc", all_=6, results=6, DERControl=controls)
    xml = document.to_xml(skip_empty=True)
    assert isinstance(xml, bytes) and b'xmlns="urn:ieee:std:2030.5:ns"' in xml
    assert b"<csipaus:opModImpLimW>" in xml and b"<opModEnergize>false</opModEnergize>" in xml
    assert DERControlListResponse.from_xml(xml) == document
    for control in controls:
        assert DERControlResponse.from_xml(control.to_xml(skip_empty=True)) == control


def test_the_device_reads_back_what_each_step_asked() -> None:
    for s in DAY.steps:
        assert setpoint(step_base(s, INVERTER), INVERTER) == Setpoint(
            mode=s.mode, power_kw=s.power_kw, level=s.level)
    ceased = cease_to_energize(INVERTER, T0, T0 + H, "cd" * 16)
    assert ceased.DERControlBase_.opModEnergize is False and ceased.randomizeStart is None
    assert setpoint(ceased.DERControlBase_, INVERTER) == Setpoint(mode=Mode.HOLD, energized=False)


def test_a_random_delay_beyond_an_hour_or_a_missing_step_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="exceeds 3600 s"):
        plan_controls(dataclasses.replace(DAY, random_delay=timedelta(seconds=3601)), INVERTER,
                      now=T0)
    with pytest.raises(ValueError, match="no step"):
        plan_controls(DAY, INVERTER, now=T0, steps=[-1])


def test_an_lfdi_is_used_as_given_and_a_short_id_gets_one() -> None:
    assert lfdi(LFDI) == LFDI.lower()
    derived = lfdi("inv-2")
    assert len(derived) == 40 and int(derived, 16) >= 0 and derived != lfdi("inv-3")


def upcoming(*steps: tuple[Mode, dict[str, float]], device: Device = INVERTER,
             **fields: object) -> Plan:
    """A plan of one-hour steps starting at the next whole minute (2030.5 times are seconds)."""
    t0 = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    return plan(*(PlanStep(mode=mode, start=t0 + i * H, end=t0 + (i + 1) * H,
                           **values)  # type: ignore[arg-type]
                  for i, (mode, values) in enumerate(steps)), device=device.device_id, **fields)


SOON = upcoming((Mode.CHARGE, {"power_kw": 2.0}), (Mode.DISCHARGE, {"power_kw": 3.0}),
                (Mode.BALANCE, {}))


@dataclasses.dataclass
class Rig:
    server: Ieee20305Server
    driver: Ieee20305Driver
    book: CommandBook
    inverters: dict[str, SimInverter]
    url: str


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    server = Ieee20305Server([INVERTER.reach, SHORT.reach, "offline"], poll_rate_s=1)
    url = await server.start()
    book = CommandBook()
    inverters = {d.device_id: SimInverter(url, d, book, period_s=0.02, rng=random.Random(3))
                 for d in (INVERTER, SHORT)}
    for inverter in inverters.values():
        await inverter.start()
    yield Rig(server, Ieee20305Driver(server, ack_timeout_s=5), book, inverters, url)
    for inverter in inverters.values():
        await inverter.aclose()
    await server.close()


def in_force(book: CommandBook, p: Plan, device: str = "inv-1") -> list[Setpoint | None]:
    return [book.setpoint(device, s.start + (s.end - s.start) / 2) for s in p.steps]


def as_asked(p: Plan) -> list[Setpoint]:
    return [Setpoint(mode=s.mode, power_kw=s.power_kw, level=s.level) for s in p.steps]


async def eventually(condition: Callable[[], bool]) -> None:
    for _ in range(250):  # up to ~5 s
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition never held")


async def test_the_inverter_pulls_acknowledges_and_follows_the_plan(rig: Rig) -> None:
    delivery = await rig.driver.deliver(Dispatch(plan=SOON, device=INVERTER))
    assert (delivery.key, delivery.channel, delivery.plan_id) == ("p1#1#plan", "ieee_2030_5", "p1")
    assert delivery.detail.startswith("3 new of 3 controls")
    assert delivery.messages >= 2 * (1 + 1 + 3)  # program list, control list, three Responses
    assert delivery.messages % 2 == 0 and delivery.messages <= 2 * rig.server.requests(LFDI)
    assert in_force(rig.book, SOON) == as_asked(SOON)
    assert {c.primacy for c in rig.book.commands("inv-1")} == {PLAN_PRIMACY}
    for i in range(3):
        assert ResponseType.EVENT_RECEIVED in rig.server.responses(LFDI, control_mrid(SOON, i))
    assert rig.book.commands("inv-2") == ()


async def test_a_short_id_device_and_a_single_step_dispatch(rig: Rig) -> None:
    p = upcoming((Mode.HOLD, {}), (Mode.LIMIT, {"level": 50}), device=SHORT)
    delivery = await rig.driver.deliver(Dispatch(plan=p, device=SHORT, step=1))
    assert delivery.detail == f"1 new of 1 controls: {control_mrid(p, 1)}"
    assert in_force(rig.book, p, "inv-2") == [None, Setpoint(mode=Mode.LIMIT, level=50)]


async def test_the_server_serves_sep_xml_that_envoy_schema_reads(rig: Rig) -> None:
    await rig.driver.deliver(Dispatch(plan=SOON, device=INVERTER))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{rig.url}/edev/{LFDI}/derp") as r:
            assert r.headers["Content-Type"] == CONTENT_TYPE
            programs = DERProgramListResponse.from_xml(await r.read())
        assert [p.primacy for p in programs.DERProgram or []] == [PLAN_PRIMACY]
        assert programs.pollRate == 1
        link = (programs.DERProgram or [])[0].DERControlListLink
        assert link is not None and link.all_ == 3
        async with session.get(f"{rig.url}{link.href}") as r:
            assert r.headers["Content-Type"] == CONTENT_TYPE
            listed = DERControlListResponse.from_xml(await r.read())
    assert [c.mRID for c in listed.DERControl or []] == [control_mrid(SOON, i) for i in range(3)]
    assert {c.replyTo for c in listed.DERControl or []} == {f"/edev/{LFDI}/rsp"}


async def test_a_resent_plan_is_applied_once(rig: Rig) -> None:
    await rig.driver.deliver(Dispatch(plan=SOON, device=INVERTER))
    again = await rig.driver.deliver(Dispatch(plan=SOON, device=INVERTER))
    assert again.detail.startswith("0 new of 3 controls")
    await eventually(lambda: rig.inverters["inv-1"].polls >= 3)
    assert len(rig.book.commands("inv-1")) == len(SOON.steps)


async def test_a_newer_plan_supersedes_the_old_controls_and_an_older_one_is_refused(
        rig: Rig) -> None:
    await rig.driver.deliver(Dispatch(plan=SOON, device=INVERTER))
    newer = dataclasses.replace(SOON, sequence=2, steps=(
        dataclasses.replace(SOON.steps[0], mode=Mode.HOLD, power_kw=None),))
    await rig.driver.deliver(Dispatch(plan=newer, device=INVERTER))
    old = control_mrid(SOON, 0)
    await eventually(lambda: ResponseType.EVENT_SUPERSEDED in rig.server.responses(LFDI, old))
    # Only the overlapping control is superseded; the later steps stay in force.
    assert in_force(rig.book, SOON) == [Setpoint(mode=Mode.HOLD), *as_asked(SOON)[1:]]
    assert old not in {c.source for c in rig.book.commands("inv-1")}
    with pytest.raises(ChannelError, match="older") as refused:
        await rig.driver.deliver(Dispatch(plan=SOON, device=INVERTER))
    assert not refused.value.retryable


async def test_cease_to_energize_beats_the_plan(rig: Rig) -> None:
    await rig.driver.deliver(Dispatch(plan=SOON, device=INVERTER))
    override = cease_to_energize(INVERTER, SOON.start, SOON.start + 2 * H, "0f" * 16)
    rig.server.publish(LFDI, [override], primacy=1)
    await rig.server.received(LFDI, [override.mRID], timeout_s=5)
    ceased = Setpoint(mode=Mode.HOLD, energized=False)
    assert in_force(rig.book, SOON) == [ceased, ceased, as_asked(SOON)[2]]
    assert rig.book.active("inv-1", SOON.start + H / 2).primacy == 1  # type: ignore[union-attr]


async def test_the_inverter_honours_randomize_start_and_keeps_steps_back_to_back(
        rig: Rig) -> None:
    delayed = dataclasses.replace(SOON, random_delay=timedelta(seconds=900))
    await rig.driver.deliver(Dispatch(plan=delayed, device=INVERTER))
    commands = rig.book.commands("inv-1")
    shifts = {c.start - s.start for c, s in zip(commands, delayed.steps, strict=True)}
    assert len(shifts) == 1
    (shift,) = shifts
    assert timedelta(0) <= shift <= delayed.random_delay
    assert all(a.end == b.start for a, b in itertools.pairwise(commands))


async def test_the_inverter_reports_start_and_completion(rig: Rig) -> None:
    device_clock = [datetime.now(UTC)]  # the device's own clock, moved by the test
    await rig.inverters["inv-2"].aclose()
    rig.inverters["inv-2"] = SimInverter(rig.url, SHORT, rig.book, period_s=0.02,
                                         clock=lambda: device_clock[0])
    await rig.inverters["inv-2"].start()
    p = upcoming((Mode.HOLD, {}), device=SHORT)
    await rig.driver.deliver(Dispatch(plan=p, device=SHORT))
    mrid = control_mrid(p, 0)
    assert rig.server.responses("inv-2", mrid) == {ResponseType.EVENT_RECEIVED}
    device_clock[0] = p.end + timedelta(seconds=1)
    await eventually(lambda: {ResponseType.EVENT_STARTED, ResponseType.EVENT_COMPLETED}
                     <= rig.server.responses("inv-2", mrid))


async def test_an_inverter_that_never_polls_is_unavailable(rig: Rig) -> None:
    offline = dataclasses.replace(INVERTER, device_id="inv-9", address="offline")
    driver = Ieee20305Driver(rig.server, ack_timeout_s=0.2)
    with pytest.raises(DeviceUnavailable) as failed:
        await driver.deliver(Dispatch(plan=SOON, device=offline))
    assert failed.value.retryable


async def test_a_control_the_device_rejects_fails_for_good(rig: Rig) -> None:
    offline = dataclasses.replace(INVERTER, device_id="inv-9", address="offline")
    p = dataclasses.replace(SOON, steps=SOON.steps[:1])
    delivering = asyncio.create_task(rig.driver.deliver(Dispatch(plan=p, device=offline)))
    await asyncio.sleep(0)  # the driver publishes before it first waits
    rejection = response_xml(control_mrid(p, 0), device_lfdi=lfdi("offline"),
                             status=ResponseType.REJECTED_INVALID_EVENT)
    async with (aiohttp.ClientSession() as session,
                session.post(f"{rig.url}/edev/offline/rsp", data=rejection) as r):
        assert r.status == 201
    with pytest.raises(ChannelError, match="rejected") as refused:
        await delivering
    assert not refused.value.retryable


@pytest.mark.parametrize(("device", "p", "reason"), [
    (dataclasses.replace(INVERTER, address="ghost"), SOON, "unknown end device ghost"),
    (INVERTER, dataclasses.replace(SOON, random_delay=timedelta(hours=2)), "exceeds 3600 s"),
], ids=["unknown-device", "random-delay"])
async def test_what_the_channel_cannot_carry_is_refused(rig: Rig, device: Device, p: Plan,
                                                        reason: str) -> None:
    with pytest.raises(ChannelError, match=reason) as refused:
        await rig.driver.deliver(Dispatch(plan=p, device=device))
    assert not refused.value.retryable


def response_xml(subject: str, *, device_lfdi: str = LFDI,
                 status: ResponseType | None = ResponseType.EVENT_RECEIVED) -> bytes:
    xml = ControlResponse(endDeviceLFDI=device_lfdi, subject=subject, status=status).to_xml(
        skip_empty=True)
    assert isinstance(xml, bytes)
    return xml


@pytest.mark.parametrize(("method", "path", "body", "status", "reason"), [
    ("GET", "/edev/ghost/derp", b"", 404, "unknown end device 'ghost'"),
    ("GET", f"/edev/{LFDI}/derp/x/derc", b"", 404, "no such program"),
    ("GET", f"/edev/{LFDI}/derp/7/derc", b"", 404, "no such program"),
    ("POST", f"/edev/{LFDI}/rsp", b"<DERControlResponse", 400, "not a DERControlResponse"),
    ("POST", f"/edev/{LFDI}/rsp", b"<Response/>", 400, "not a DERControlResponse"),
    ("POST", f"/edev/{LFDI}/rsp", response_xml("ab" * 16, device_lfdi="12" * 20), 400,
     "is not 3E4F"),
    ("POST", f"/edev/{LFDI}/rsp", response_xml("ab" * 16, status=None), 400, "without status"),
    ("POST", f"/edev/{LFDI}/rsp", response_xml("ab" * 16), 400, "no control abab"),
], ids=["unknown-device", "bad-primacy", "no-program", "xml", "wrong-root", "wrong-lfdi",
        "no-status", "unknown-control"])
async def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(
        rig: Rig, method: str, path: str, body: bytes, status: int, reason: str) -> None:
    async with (aiohttp.ClientSession() as session,
                session.request(method, f"{rig.url}{path}", data=body) as r):
        assert r.status == status
        assert reason in await r.text()
    delivery = await rig.driver.deliver(Dispatch(plan=SOON, device=INVERTER))
    assert in_force(rig.book, SOON) == as_asked(SOON) and delivery.messages > 0
