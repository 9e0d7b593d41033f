"""The SAPC channel: DUIS-like frames checked against domain.md section 5, and LIMIT plans
delivered through the DCC simulator to the SAPC simulator on loopback."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, date, datetime, time, timedelta

import aiohttp
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from bridge.channel import PLAN_PRIMACY, ChannelError, CommandBook, DeviceUnavailable, Dispatch
from bridge.duis import (
    CANCELLATION_DATE, COUNTERS_PER_PLAN, MAX_FRAME_BYTES, NS, SERVICES_PATH, Alert, AlertCode,
    AuxControllerCalendar, CalendarEntry, CommandVariant, DuisError, LimitApcLevel, RequestId,
    Response, ResponseCode, Service, ServiceRequest, SetAuxControllerState,
    SetRandomisedOffsetLimit, SignedRequest, Weekday, decode_request, decode_response,
    decode_signed, encode_request, encode_response, encode_signed, frame, offset_request,
    plan_counter, plan_requests, sign_pre_command, sign_request, verify)
from bridge.models import Mode, Plan
from bridge.sapc import SapcDriver
from bridge.sim.dcc import INSTANT, LIMIT_PRIMACY, DccSim, Latency, Role, SapcSim, ServiceUser
from tests.test_bridge_models import HEATER, T0, plan, step

H = timedelta(hours=1)
AGGREGATOR = "90-B3-D5-1F-30-01-00-00"
CMB = "90-B3-D5-1F-30-02-00-00"
SAPC = "00-DB-12-34-56-78-90-A0"
OTHER_SAPC = "00-DB-12-34-56-78-90-A1"
AGGREGATOR_KEY = ec.generate_private_key(ec.SECP256R1())
CMB_KEY = ec.generate_private_key(ec.SECP256R1())
HEATER_AT_SAPC = dataclasses.replace(HEATER, address=SAPC)
WAIT = 5.0  # bound on waiting for an alert


def limit_plan(*levels: int, sequence: int = 1, delay_s: int = 0, device: str = "hw-1") -> Plan:
    return plan(*(step(Mode.LIMIT, i, i + 1, level=lv) for i, lv in enumerate(levels)),
                device=device, sequence=sequence, random_delay=timedelta(seconds=delay_s))


def state(level: int = 40, *, controller: int = 1, start: datetime = T0,
          end: datetime = T0 + H) -> SetAuxControllerState:
    return SetAuxControllerState(controller=controller, start=start, end=end, level=level)


def request(body: SetAuxControllerState | LimitApcLevel | SetRandomisedOffsetLimit
            | AuxControllerCalendar, counter: int = 7, *, user: str = AGGREGATOR,
            device: str = SAPC, execution: datetime | None = None) -> ServiceRequest:
    return ServiceRequest(request_id=RequestId(user, device, counter), body=body,
                          execution=execution)


def level_at(book: CommandBook, device_id: str, at: datetime) -> int | None:
    setpoint = book.setpoint(device_id, at)
    return None if setpoint is None else setpoint.level


def fields(data: bytes) -> dict[str, str]:
    """Every leaf element of a frame by local name, read with lxml alone."""
    root = etree.fromstring(data)
    return {etree.QName(el).localname: el.text or "" for el in root.iter()
            if isinstance(el.tag, str) and len(el) == 0}


# -- identifiers ---------------------------------------------------------------------------------

def test_request_id_is_user_device_counter_with_hyphenated_eui64() -> None:
    rid = RequestId(AGGREGATOR, SAPC, 1002)
    assert str(rid) == "90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:1002"  # domain.md
    assert RequestId.parse(str(rid)) == rid
    assert RequestId.parse(f"{AGGREGATOR}:{SAPC}:{2**64 - 1}").counter == 2**64 - 1


@pytest.mark.parametrize("text", [
    "90-b3-d5-1f-30-01-00-00:00-DB-12-34-56-78-90-A0:1",  # lower case
    "90:B3:D5:1F:30:01:00:00:00-DB-12-34-56-78-90-A0:1",  # colons inside the EUI-64
    "90B3D51F30010000:00-DB-12-34-56-78-90-A0:1",  # no hyphens
    "90-B3-D5-1F-30-01-00:00-DB-12-34-56-78-90-A0:1",  # 7 bytes
    f"{AGGREGATOR}:{SAPC}",  # no counter
    f"{AGGREGATOR}:{SAPC}:-1", f"{AGGREGATOR}:{SAPC}:01", f"{AGGREGATOR}:{SAPC}:1.0",
    f"{AGGREGATOR}:{SAPC}:{2**64}", f"{AGGREGATOR}:{SAPC}:1:2", "",
])
def test_a_bad_request_id_is_refused(text: str) -> None:
    with pytest.raises(DuisError) as caught:
        RequestId.parse(text)
    assert caught.value.code is ResponseCode.INVALID


# -- frames field by field -----------------------------------------------------------------------

def test_a_7_13_frame_carries_each_field_of_ecs47a() -> None:
    body = dataclasses.replace(state(40), input_from_controlled_load=True)
    data = frame(request(body, 1002, execution=T0), AGGREGATOR_KEY)
    root = etree.fromstring(data)
    assert etree.QName(root).namespace == NS
    assert [etree.QName(el).localname for el in root] == ["Request", "Signature"]
    assert fields(data) == {
        "RequestID": "90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:1002",
        "CommandVariant": "1", "ServiceReference": "7.13", "ServiceReferenceVariant": "7.13",
        "ExecutionDateTime": "2026-11-27T17:00:00Z", "AuxControllerNumber": "1",
        "StartDateTime": "2026-11-27T17:00:00Z", "EndDateTime": "2026-11-27T18:00:00Z",
        "CommandedStateLevel": "40", "InputFromControlledLoad": "true",
        "Signature": fields(data)["Signature"]}
    assert decode_signed(data).request == request(body, 1002, execution=T0)


def test_a_cancellation_is_the_request_again_executed_on_3000_12_31() -> None:
    cancel = request(LimitApcLevel(controller=5, start=T0, end=T0 + H, level=0), 9,
                     user=CMB, execution=CANCELLATION_DATE)
    got = fields(encode_request(cancel))
    assert got["ExecutionDateTime"] == "3000-12-31T00:00:00Z"
    assert (got["ServiceReference"], got["ServiceReferenceVariant"]) == ("7.16", "7.16")
    assert decode_request(encode_request(cancel)).cancels
    assert not request(state()).cancels


def test_calendar_and_offset_limit_frames_round_trip() -> None:
    calendar = AuxControllerCalendar(entries=(
        CalendarEntry(controller=2, level=30, days=frozenset({Weekday.MON, Weekday.FRI}),
                      switch_time=time(16, 30), start_date=date(2026, 12, 1),
                      end_date=date(2027, 3, 31), special_days=(date(2026, 12, 25),)),
        CalendarEntry(controller=2, level=100, days=frozenset(Weekday), switch_time=time(19),
                      start_date=date(2026, 12, 1), end_date=date(2027, 3, 31))))
    data = encode_request(request(calendar))
    got = fields(data)
    assert (got["ServiceReference"], got["ServiceReferenceVariant"]) == ("6.14", "6.14.3")
    assert b"<DaysOfWeek>MON FRI</DaysOfWeek>" in data and b"<Date>2026-12-25</Date>" in data
    assert decode_request(data).body == calendar
    offset = encode_request(request(SetRandomisedOffsetLimit(seconds=900)))
    assert fields(offset)["RandomisedOffsetLimit"] == "900"
    assert decode_request(offset).body == SetRandomisedOffsetLimit(seconds=900)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: state(controller=0), "controller 0 outside 1..5"),
    (lambda: state(controller=6), "controller 6 outside 1..5"),
    (lambda: state(level=-1), "CommandedStateLevel -1 outside 0..100"),
    (lambda: state(level=101), "CommandedStateLevel 101 outside 0..100"),
    (lambda: state(end=T0), "not after StartDateTime"),
    (lambda: state(start=datetime(2026, 11, 27, 17)), "has no time zone"),
    (lambda: state(end=CANCELLATION_DATE), "not before 3000-12-31"),
    (lambda: SetRandomisedOffsetLimit(seconds=-1), "outside 0..86400"),
    (lambda: AuxControllerCalendar(entries=()), "no entries"),
    (lambda: request(state(), execution=datetime(3000, 12, 31)), "has no time zone"),
])
def test_values_outside_the_service_ranges_are_refused(make: Callable[[], object],
                                                       message: str) -> None:
    with pytest.raises(DuisError, match=message) as caught:
        make()
    assert caught.value.code is ResponseCode.INVALID


def test_range_bounds_are_accepted() -> None:
    for controller, level in [(1, 0), (5, 100)]:
        body = state(level, controller=controller)
        assert decode_request(encode_request(request(body))).body == body


# -- signatures and the critical flow ------------------------------------------------------------

def test_the_signature_verifies_and_fails_when_anything_is_tampered() -> None:
    data = frame(request(state(40)), AGGREGATOR_KEY)
    assert verify(decode_signed(data), AGGREGATOR_KEY.public_key())
    assert not verify(decode_signed(data), CMB_KEY.public_key())
    raised = data.replace(b"<CommandedStateLevel>40<", b"<CommandedStateLevel>41<")
    assert decode_signed(raised).request.body == state(41)
    assert not verify(decode_signed(raised), AGGREGATOR_KEY.public_key())
    signed = decode_signed(data)
    flipped = dataclasses.replace(signed, signature=signed.signature[:-1]
                                  + bytes([signed.signature[-1] ^ 1]))
    assert not verify(decode_signed(encode_signed(flipped)), AGGREGATOR_KEY.public_key())


def test_only_p256_keys_sign() -> None:
    with pytest.raises(TypeError, match="P-256"):
        sign_request(request(state()), ec.generate_private_key(ec.SECP384R1()))


def test_7_13_7_16_and_6_14_3_are_critical_7_12_is_not() -> None:
    assert {s for s in Service if s.critical} == {
        Service.SET_AUX_CONTROLLER_STATE, Service.LIMIT_APC_LEVEL,
        Service.AUX_CONTROLLER_CALENDAR}


def test_the_user_signs_a_pre_command_as_variant_5_only_if_it_is_what_it_asked() -> None:
    asked = request(state(40))
    pre = dataclasses.replace(asked, variant=CommandVariant.PRE_COMMAND)
    answer = Response(request_id=str(asked.request_id), code=ResponseCode.PRE_COMMAND,
                      pre_command=pre)
    wire = encode_response(answer)
    assert fields(wire)["CommandVariant"] == "4"
    assert decode_response(wire) == answer
    signed = sign_pre_command(asked, pre, AGGREGATOR_KEY)
    assert fields(encode_signed(signed))["CommandVariant"] == "5"
    assert verify(decode_signed(encode_signed(signed)), AGGREGATOR_KEY.public_key())
    with pytest.raises(DuisError, match="differs"):
        sign_pre_command(asked, dataclasses.replace(pre, body=state(100)), AGGREGATOR_KEY)
    with pytest.raises(DuisError, match="expected 4"):
        sign_pre_command(asked, asked, AGGREGATOR_KEY)


def resigned(data: bytes, key: ec.EllipticCurvePrivateKey = AGGREGATOR_KEY) -> bytes:
    """A Request element of the test's making, properly signed: its bad values reach the parser."""
    signature = key.sign(data, ec.ECDSA(hashes.SHA256()))
    return encode_signed(SignedRequest(request=request(state()), signed_bytes=data,
                                       signature=signature))


GOOD = encode_request(request(state(40)))
BOMB = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><r>&b;</r>')


@pytest.mark.parametrize(("data", "code"), [
    (b"not xml", ResponseCode.MALFORMED),
    (BOMB, ResponseCode.MALFORMED),
    (b"<SignedRequest xmlns='%s'>" % NS.encode() + b" " * MAX_FRAME_BYTES + b"</SignedRequest>",
     ResponseCode.MALFORMED),
    (frame(request(state()), AGGREGATOR_KEY).replace(NS.encode(), b"urn:other"),
     ResponseCode.MALFORMED),
    (resigned(GOOD.replace(b"<CommandedStateLevel>40<", b"<CommandedStateLevel>101<")),
     ResponseCode.INVALID),
    (resigned(GOOD.replace(b"<CommandedStateLevel>40<", b"<CommandedStateLevel>4O<")),
     ResponseCode.INVALID),
    (resigned(GOOD.replace(b"<AuxControllerNumber>1<", b"<AuxControllerNumber>6<")),
     ResponseCode.INVALID),
    (resigned(GOOD.replace(b"2026-11-27T18:00:00Z", b"2026-11-27T18:00:00")),
     ResponseCode.INVALID),
    (resigned(GOOD.replace(AGGREGATOR.encode(), AGGREGATOR.lower().encode())),
     ResponseCode.INVALID),
    (resigned(GOOD.replace(b"<CommandVariant>1<", b"<CommandVariant>3<")), ResponseCode.INVALID),
    (resigned(GOOD.replace(b">7.13<", b">7.99<")), ResponseCode.NOT_SUPPORTED),
    (resigned(GOOD.replace(b"<ServiceReference>7.13<", b"<ServiceReference>7.16<")),
     ResponseCode.INVALID),
    (resigned(GOOD.replace(b"<CommandedStateLevel>40</CommandedStateLevel>", b"")),
     ResponseCode.MALFORMED),
    (resigned(GOOD.replace(b"</SetAuxControllerState>", b"<Extra/></SetAuxControllerState>")),
     ResponseCode.MALFORMED),
    (frame(request(state()), AGGREGATOR_KEY).replace(b"<Signature>", b"<Signature>!"),
     ResponseCode.BAD_SIGNATURE),
], ids=["not-xml", "entity-bomb", "oversize", "namespace", "level-101", "level-not-int",
        "controller-6", "naive-date", "lower-case-eui", "variant-3", "unknown-service",
        "service-reference-mismatch", "missing-level", "extra-element", "signature-not-base64"])
def test_a_bad_frame_is_refused_with_a_code(data: bytes, code: ResponseCode) -> None:
    with pytest.raises(DuisError) as caught:
        decode_signed(data)
    assert caught.value.code is code


GOOD_FRAME = frame(request(state(40), 5, execution=T0), AGGREGATOR_KEY)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_corruption_of_a_frame_is_refused_or_fails_verification(data: st.DataObject) -> None:
    good = GOOD_FRAME  # one frame: ECDSA signatures differ in length from one signing to another
    at = data.draw(st.integers(0, len(good) - 1))
    corrupt = good[:at] + data.draw(st.binary(max_size=4)) + good[at + 1:]
    try:
        parsed = decode_signed(corrupt)
    except DuisError as exc:
        assert exc.code in ResponseCode
    else:  # only an untouched Request element with its own signature verifies
        original = decode_signed(good)
        intact = (parsed.signed_bytes, parsed.signature) == (original.signed_bytes,
                                                             original.signature)
        assert verify(parsed, AGGREGATOR_KEY.public_key()) is intact


# -- plans to requests ---------------------------------------------------------------------------

def test_a_limit_plan_becomes_one_7_13_per_step_with_its_own_times() -> None:
    limits = limit_plan(40, 70, 0, sequence=3, delay_s=300)
    requests = plan_requests(Dispatch(plan=limits, device=HEATER_AT_SAPC), AGGREGATOR, SAPC,
                             first_counter=plan_counter(limits) + 1, controller=2)
    assert [(r.service, r.variant, r.request_id) for r in requests] == [
        (Service.SET_AUX_CONTROLLER_STATE, CommandVariant.REQUEST,
         RequestId(AGGREGATOR, SAPC, 3 * COUNTERS_PER_PLAN + 1 + i)) for i in range(3)]
    assert [r.body for r in requests] == [
        state(level, controller=2, start=s.start, end=s.end)
        for level, s in zip((40, 70, 0), limits.steps)]
    assert [r.execution for r in requests] == [s.start for s in limits.steps]
    one = plan_requests(Dispatch(plan=limits, device=HEATER_AT_SAPC, step=2), AGGREGATOR, SAPC,
                        first_counter=100, controller=1)
    assert [(r.request_id.counter, r.body) for r in one] == [
        (102, state(0, start=T0 + 2 * H, end=T0 + 3 * H))]
    assert offset_request(limits, AGGREGATOR, SAPC) == request(
        SetRandomisedOffsetLimit(seconds=300), 3 * COUNTERS_PER_PLAN)


def test_counters_strictly_increase_across_a_devices_plans() -> None:
    counters: list[int] = []
    for sequence in (1, 2, 5):
        limits = limit_plan(*range(0, 100, 4), sequence=sequence)  # 25 steps
        counters.append(offset_request(limits, AGGREGATOR, SAPC).request_id.counter)
        counters += [r.request_id.counter for r in plan_requests(
            Dispatch(plan=limits, device=HEATER_AT_SAPC), AGGREGATOR, SAPC,
            plan_counter(limits) + 1, 1)]
    assert counters == sorted(set(counters)) and len(counters) == 78


@pytest.mark.parametrize(("bad", "message"), [
    (plan(step(Mode.LIMIT, 0, 1, level=40), step(Mode.CHARGE, 1, 2, power_kw=1.0),
          device="hw-1"), "SAPC only caps load: step 1 is charge"),
    (plan(step(Mode.HOLD, 0, 1), device="hw-1"), "SAPC only caps load"),
    (limit_plan(101), "CommandedStateLevel 101 outside 0..100"),
])
def test_what_a_sapc_cannot_do_is_refused_for_good(bad: Plan, message: str) -> None:
    with pytest.raises(ChannelError, match=message) as caught:
        plan_requests(Dispatch(plan=bad, device=HEATER_AT_SAPC), AGGREGATOR, SAPC, 1, 1)
    assert caught.value.retryable is False


# -- end to end over loopback --------------------------------------------------------------------

@dataclasses.dataclass
class Network:
    url: str
    dcc: DccSim
    sapc: SapcSim
    book: CommandBook
    alerts: asyncio.Queue[Alert]
    clock: list[float]  # the DCC's monotonic clock, for the capacity window

    def driver(self, user: str = AGGREGATOR, key: ec.EllipticCurvePrivateKey = AGGREGATOR_KEY,
               *, timeout: float = 30.0, controller: int = 1) -> SapcDriver:
        return SapcDriver(user_eui=user, key=key, dcc_url=self.url, timeout=timeout,
                          controller=controller)


async def serve(latency: Latency = INSTANT, capacity: int | None = None) -> Network:
    book, alerts, clock = CommandBook(), asyncio.Queue[Alert](), [0.0]
    sapc = SapcSim(book, {SAPC: {1: "hw-1", 2: "hw-2"}, OTHER_SAPC: {1: "hw-9"}},
                   rng=random.Random(4))
    dcc = DccSim(sapc, latency=latency, capacity_per_minute=capacity,
                 monotonic=lambda: clock[0])
    dcc.add_user(ServiceUser(AGGREGATOR, AGGREGATOR_KEY.public_key(),
                             frozenset({Role.SUPPLIER})))
    dcc.add_user(ServiceUser(CMB, CMB_KEY.public_key(), frozenset({Role.LOAD_CONTROLLER}),
                             alerts=alerts.put))
    return Network(await dcc.start(), dcc, sapc, book, alerts, clock)


@pytest.fixture
async def net() -> AsyncIterator[Network]:
    network = await serve()
    yield network
    await network.dcc.close()


async def test_a_plan_reaches_the_sapc_and_its_levels_are_in_force_with_the_offset(
        net: Network) -> None:
    limits = limit_plan(40, 70, sequence=2, delay_s=600)
    driver = net.driver()
    delivery = await driver.deliver(Dispatch(plan=limits, device=HEATER_AT_SAPC))
    await driver.aclose()
    # 7.12: request + response; each 7.13: request, pre-command, signed pre-command, response.
    assert delivery.messages == 2 + 2 * 4
    assert delivery.detail.split() == [str(RequestId(AGGREGATOR, SAPC, 2 * COUNTERS_PER_PLAN + i))
                                       for i in range(3)]
    assert (delivery.key, delivery.device_id) == ("p1#2#plan", "hw-1")
    assert net.dcc.hops == {"user->dcc": 5, "dcc->user": 5, "dcc->device": 3, "device->dcc": 3}
    assert net.sapc.offset_limit(SAPC) == 600
    commands = net.book.commands("hw-1")
    assert [c.setpoint.level for c in commands] == [40, 70]
    assert any(c.start != s.start for c, s in zip(commands, limits.steps))  # randomised
    for command, s in zip(commands, limits.steps):
        offset = command.start - s.start
        assert timedelta(0) <= offset <= timedelta(seconds=600)
        assert command.end == s.end + offset and command.primacy == PLAN_PRIMACY
        assert level_at(net.book, "hw-1", command.start) == command.setpoint.level
        assert net.book.active("hw-1", command.start - timedelta(seconds=1)) != command


async def test_7_12_is_sent_only_when_the_random_delay_changes(net: Network) -> None:
    driver = net.driver()
    sent = [await driver.deliver(Dispatch(plan=limit_plan(50, sequence=seq, delay_s=delay),
                                          device=HEATER_AT_SAPC))
            for seq, delay in [(1, 120), (2, 120), (3, 0)]]
    await driver.aclose()
    assert [d.messages for d in sent] == [6, 4, 6]
    assert net.sapc.offset_limit(SAPC) == 0
    assert level_at(net.book, "hw-1", T0 + H / 2) == 50


async def test_a_redelivered_dispatch_is_applied_once_even_by_a_restarted_driver(
        net: Network) -> None:
    dispatch = Dispatch(plan=limit_plan(30, 60, delay_s=60), device=HEATER_AT_SAPC)
    first = net.driver()
    await first.deliver(dispatch)
    again = await first.deliver(dispatch)
    await first.aclose()
    restarted = net.driver()
    after_restart = await restarted.deliver(dispatch)
    await restarted.aclose()
    assert [c.setpoint.level for c in net.book.commands("hw-1")] == [30, 60]
    assert again.detail.endswith("(already applied: 2)")
    assert after_restart.detail.endswith("(already applied: 3)")  # its 7.12 too


async def test_one_step_dispatches_follow_each_other(net: Network) -> None:
    limits = limit_plan(20, 80)
    driver = net.driver()
    for i in range(2):
        await driver.deliver(Dispatch(plan=limits, device=HEATER_AT_SAPC, step=i))
    await driver.aclose()
    assert level_at(net.book, "hw-1", T0 + 1.5 * H) == 80


async def next_alert(net: Network) -> Alert:
    return await asyncio.wait_for(net.alerts.get(), WAIT)


async def test_a_limit_beats_the_plan_until_cancelled_with_ecs101_and_ecs102(
        net: Network) -> None:
    start = datetime.now(UTC).replace(microsecond=0) + H
    limits = plan(step(Mode.LIMIT, 0, 2, level=70), device="hw-1")
    limits = dataclasses.replace(limits, steps=(dataclasses.replace(
        limits.steps[0], start=start, end=start + 2 * H),))
    aggregator, cmb = net.driver(), net.driver(CMB, CMB_KEY)
    await aggregator.deliver(Dispatch(plan=limits, device=HEATER_AT_SAPC))
    cap = LimitApcLevel(controller=1, start=start, end=start + H, level=20)
    exchange = await cmb.limit(SAPC, cap, counter=1)
    assert exchange.messages == 4 and exchange.request_ids == [str(RequestId(CMB, SAPC, 1))]
    in_force = net.book.active("hw-1", start + H / 2)
    assert in_force is not None and in_force.setpoint.level == 20
    assert in_force.primacy == LIMIT_PRIMACY < PLAN_PRIMACY
    processed = await next_alert(net)
    assert (processed.code, processed.request_id, processed.controller) == (
        AlertCode.LIMIT_PROCESSED, RequestId(CMB, SAPC, 1), 1)
    await cmb.cancel(SAPC, cap, counter=2)
    ended = await next_alert(net)
    assert (ended.code, ended.request_id, ended.reason) == (
        AlertCode.LIMIT_ENDED, RequestId(CMB, SAPC, 1), "cancelled")
    assert level_at(net.book, "hw-1", start + H / 2) == 70
    with pytest.raises(ChannelError, match="NO_SUCH_COMMAND") as caught:
        await cmb.cancel(SAPC, cap, counter=3)
    assert caught.value.retryable is False
    await aggregator.aclose()
    await cmb.aclose()


async def test_ecs102_arrives_when_the_limit_window_ends(net: Network) -> None:
    now = datetime.now(UTC)
    cmb = net.driver(CMB, CMB_KEY)
    await cmb.limit(SAPC, LimitApcLevel(controller=2, start=now, end=now + timedelta(
        seconds=0.2), level=0), counter=10)
    await cmb.aclose()
    processed, ended = await next_alert(net), await next_alert(net)
    assert processed.code is AlertCode.LIMIT_PROCESSED
    assert (ended.code, ended.reason, ended.controller) == (AlertCode.LIMIT_ENDED, "ended", 2)
    assert net.book.commands("hw-2")[0].primacy == LIMIT_PRIMACY


@pytest.mark.parametrize(("user", "key", "make"), [
    (AGGREGATOR, AGGREGATOR_KEY,
     lambda d: d.limit(SAPC, LimitApcLevel(controller=1, start=T0, end=T0 + H, level=0),
                       counter=1)),
    (CMB, CMB_KEY, lambda d: d.deliver(Dispatch(plan=limit_plan(10), device=HEATER_AT_SAPC))),
], ids=["aggregator-sends-7.16", "cmb-sends-7.13"])
async def test_a_service_outside_the_users_role_is_refused(
        net: Network, user: str, key: ec.EllipticCurvePrivateKey,
        make: Callable[[SapcDriver], Awaitable[object]]) -> None:
    driver = net.driver(user, key)
    with pytest.raises(ChannelError, match="ROLE_NOT_ALLOWED") as caught:
        await make(driver)
    await driver.aclose()
    assert caught.value.retryable is False and net.book.commands("hw-1") == ()


async def test_throttling_is_retryable_and_lifts_after_a_minute() -> None:
    network = await serve(capacity=2)
    driver = network.driver()
    try:
        await driver.deliver(Dispatch(plan=limit_plan(10, delay_s=5), device=HEATER_AT_SAPC))
        with pytest.raises(ChannelError, match="throttled") as caught:
            await driver.deliver(Dispatch(plan=limit_plan(20, sequence=2),
                                          device=HEATER_AT_SAPC))
        assert caught.value.retryable and not isinstance(caught.value, DeviceUnavailable)
        network.clock[0] += 60.0
        await driver.deliver(Dispatch(plan=limit_plan(20, sequence=2), device=HEATER_AT_SAPC))
        assert [c.setpoint.level for c in network.book.commands("hw-1")] == [10, 20]
    finally:
        await driver.aclose()
        await network.dcc.close()


async def test_no_answer_in_time_marks_the_device_unavailable() -> None:
    network = await serve(Latency(user_dcc=0.0, dcc_device=0.3))
    driver = network.driver(timeout=0.05)
    try:
        with pytest.raises(DeviceUnavailable) as caught:
            await driver.deliver(Dispatch(plan=limit_plan(10), device=HEATER_AT_SAPC))
        assert caught.value.retryable
    finally:
        await driver.aclose()
        await network.dcc.close()


async def test_an_unknown_device_or_controller_is_refused_for_good(net: Network) -> None:
    driver = net.driver()
    stranger = dataclasses.replace(HEATER_AT_SAPC, address="00-00-00-00-00-00-00-01")
    with pytest.raises(ChannelError, match="UNKNOWN_DEVICE") as unknown:
        await driver.deliver(Dispatch(plan=limit_plan(10), device=stranger))
    other = net.driver(controller=3)
    with pytest.raises(ChannelError, match="NOT_SUPPORTED") as unwired:
        await other.deliver(Dispatch(plan=limit_plan(10), device=HEATER_AT_SAPC))
    not_eui = dataclasses.replace(HEATER_AT_SAPC, address="hw-1")
    with pytest.raises(ChannelError, match="EUI-64") as bad_address:
        await driver.deliver(Dispatch(plan=limit_plan(10), device=not_eui))
    await driver.aclose()
    await other.aclose()
    assert not any(e.value.retryable for e in (unknown, unwired, bad_address))


# -- bad input against the DCC -------------------------------------------------------------------

async def post(session: aiohttp.ClientSession, url: str, data: bytes,
               method: str = "POST") -> tuple[int, Response | None]:
    async with session.request(method, url + SERVICES_PATH, data=data) as http:
        body = await http.read()
        try:
            return http.status, decode_response(body)
        except DuisError:
            return http.status, None


def signed(body: SetAuxControllerState | LimitApcLevel | SetRandomisedOffsetLimit,
           counter: int, *, user: str = AGGREGATOR, key: ec.EllipticCurvePrivateKey =
           AGGREGATOR_KEY, device: str = SAPC, variant: CommandVariant = CommandVariant.REQUEST,
           execution: datetime | None = None) -> bytes:
    return frame(dataclasses.replace(request(body, counter, user=user, device=device,
                                             execution=execution), variant=variant), key)


Send = Callable[[bytes], Awaitable[tuple[int, Response | None]]]


async def replayed(send: Send) -> bytes:
    await send(signed(SetRandomisedOffsetLimit(seconds=0), 50))
    return signed(SetRandomisedOffsetLimit(seconds=0), 50)


async def altered_after_pre_command(send: Send) -> bytes:
    await send(signed(state(40), 60))  # the DCC issues a pre-command for level 40
    return signed(state(100), 60, variant=CommandVariant.SIGNED_PRE_COMMAND)


async def cancel_nothing(send: Send) -> bytes:
    asked = request(state(40, start=T0 + 9 * H, end=T0 + 10 * H), 70, execution=CANCELLATION_DATE)
    _, answer = await send(frame(asked, AGGREGATOR_KEY))
    assert answer is not None and answer.pre_command is not None
    return encode_signed(sign_pre_command(asked, answer.pre_command, AGGREGATOR_KEY))


def fixed(data: bytes) -> Callable[[Send], Awaitable[bytes]]:
    async def build(send: Send) -> bytes:
        return data
    return build


@pytest.mark.parametrize(("build", "status", "code"), [
    (fixed(b"not xml"), 400, ResponseCode.MALFORMED),
    (fixed(BOMB), 400, ResponseCode.MALFORMED),
    (fixed(b"<x>" + b" " * (MAX_FRAME_BYTES + 10) + b"</x>"), 413, ResponseCode.MALFORMED),
    (fixed(resigned(GOOD.replace(b">40<", b">101<"))), 400, ResponseCode.INVALID),
    (fixed(signed(state(), 1, user="90-B3-D5-1F-30-09-00-00")), 401, ResponseCode.UNKNOWN_USER),
    (fixed(signed(state(), 1, key=CMB_KEY)), 401, ResponseCode.BAD_SIGNATURE),
    (fixed(signed(state(40), 1).replace(b">40<", b">41<")), 401, ResponseCode.BAD_SIGNATURE),
    (fixed(signed(LimitApcLevel(controller=1, start=T0, end=T0 + H, level=0), 1)), 403,
     ResponseCode.ROLE_NOT_ALLOWED),
    (fixed(signed(state(), 1, device="00-00-00-00-00-00-00-02")), 404,
     ResponseCode.UNKNOWN_DEVICE),
    (fixed(signed(state(), 1, variant=CommandVariant.PRE_COMMAND)), 400, ResponseCode.INVALID),
    (fixed(signed(state(), 1, variant=CommandVariant.SIGNED_PRE_COMMAND)), 409,
     ResponseCode.NO_PRE_COMMAND),
    (altered_after_pre_command, 409, ResponseCode.NO_PRE_COMMAND),
    (replayed, 409, ResponseCode.REPLAYED_COUNTER),
    (cancel_nothing, 404, ResponseCode.NO_SUCH_COMMAND),
], ids=["not-xml", "entity-bomb", "oversize", "level-101", "unknown-user", "wrong-key",
        "tampered", "wrong-role", "unknown-device", "user-sends-variant-4",
        "variant-5-without-pre-command", "variant-5-altered", "replayed-counter",
        "cancel-nothing"])
async def test_bad_input_gets_a_clear_code_and_the_dcc_keeps_serving(
        net: Network, build: Callable[[Send], Awaitable[bytes]], status: int,
        code: ResponseCode) -> None:
    async with aiohttp.ClientSession() as session:
        async def send(data: bytes) -> tuple[int, Response | None]:
            return await post(session, net.url, data)
        got_status, answer = await send(await build(send))
        assert (got_status, answer is not None and answer.code) == (status, code)
        assert answer is not None and answer.detail
        assert await send(signed(SetRandomisedOffsetLimit(seconds=30), 10**6)) == (
            200, Response(request_id=str(RequestId(AGGREGATOR, SAPC, 10**6)),
                          code=ResponseCode.SUCCESS, detail=""))
        assert (await post(session, net.url, b"", method="GET"))[0] == 405
    assert net.book.commands("hw-1") == ()
    assert net.sapc.offset_limit(SAPC) == 30


def test_frames_encode_and_sign_for_the_benchmark() -> None:
    limits = limit_plan(*range(0, 100, 10), delay_s=60)
    frames = [frame(r, AGGREGATOR_KEY) for r in plan_requests(
        Dispatch(plan=limits, device=HEATER_AT_SAPC), AGGREGATOR, SAPC, 1, 1)]
    assert len(frames) == 10
    assert all(verify(decode_signed(f), AGGREGATOR_KEY.public_key()) for f in frames)
    assert base64.b64decode(fields(frames[0])["Signature"]) == decode_signed(frames[0]).signature
