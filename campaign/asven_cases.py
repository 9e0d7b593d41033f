"""The VTN-role cases: what the harness VEN does and what it expects of the VTN under test.

Our own numbering and wording, from the intent of the public 2.0b certification test plan's
families (domain.md section 2). A case whose transport matters is written once and generated
twice, pull ("1") and push ("0"); the push twin needs the push listener.
Windows are counted in the VTN's own poll periods, so a VTN asking for a short poll frequency
gets a short campaign.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from oadr.messages import (
    SERVICE_OF,
    Availability,
    CanceledOpt,
    CanceledPartyRegistration,
    CancelOpt,
    CancelPartyRegistration,
    CancelReport,
    CreatedOpt,
    CreatedPartyRegistration,
    CreateOpt,
    CreatePartyRegistration,
    CreateReport,
    DistributeEvent,
    Event,
    EventStatus,
    ItemBase,
    Message,
    OptReason,
    OptType,
    Poll,
    QueryRegistration,
    RegisteredReport,
    RegisterReport,
    Report,
    ReportDescription,
    ReportInterval,
    ReportPoint,
    ReportRequest,
    RequestEvent,
    ResourceStatus,
    ResponseMessage,
    UpdatedReport,
    UpdateReport,
)

from . import asven_tls as tls
from . import vtn_rules
from .asven_wire import VenContext, new_id
from .hooks import EventRequest, HookRefused, SignalRequest
from .model import Case, Direction, Failure, Family, Role, Transport, twins

REDELIVERY_POLLS = 5  # poll periods within which an unanswered event must come again
MARKET = "http://campaign.adrgate.example/programs/"
HOUR = timedelta(hours=1)

CaseRun = Callable[[VenContext], Awaitable[None]]


# --- windows and helpers ------------------------------------------------------------------

def delivery_window(ctx: VenContext) -> timedelta:
    """How long a VTN may take to deliver what it was just asked to: three poll periods."""
    return ctx.poll_freq * 3 + timedelta(seconds=2)


def redelivery_window(ctx: VenContext) -> timedelta:
    return ctx.poll_freq * REDELIVERY_POLLS + timedelta(seconds=1)


def whole_second(dt: datetime) -> datetime:
    return dt.replace(microsecond=0)


def simple(level: float = 1.0, minutes: int = 30) -> SignalRequest:
    return SignalRequest(name="SIMPLE", type="level",
                         intervals=((timedelta(minutes=minutes), level),))


def event_request(ctx: VenContext, *, start_in: timedelta = HOUR,
                  signals: tuple[SignalRequest, ...] | None = None) -> EventRequest:
    assert ctx.ven_id is not None
    return EventRequest(ven_id=ctx.ven_id, market_context=MARKET + ctx.case.case_id,
                        start=whole_second(ctx.clock() + start_in),
                        signals=signals or (simple(),))


def find(msg: Message | None, event_id: str) -> Event | None:
    if not isinstance(msg, DistributeEvent):
        return None
    return next((e for e in msg.events if e.event_id == event_id), None)


async def delivered(ctx: VenContext, event_id: str,
                    wanted: Callable[[Event], bool] = lambda e: True) -> tuple[DistributeEvent, Event]:
    """The next distribute carrying `event_id` (as `wanted`), or stop the case."""
    within = delivery_window(ctx)
    msg = await ctx.receive_until(lambda m: (e := find(m, event_id)) is not None and wanted(e),
                                  within)
    event = find(msg, event_id)
    ctx.require(event is not None, "vtn.event-delivered",
                f"event {event_id} is delivered within {within.total_seconds():g} s",
                "it was not")
    assert isinstance(msg, DistributeEvent) and event is not None
    return msg, event


async def created(ctx: VenContext, request: EventRequest) -> tuple[DistributeEvent, Event]:
    event_id = await ctx.hook.create(request)
    return await delivered(ctx, event_id)


async def collect(ctx: VenContext, within: timedelta) -> list[DistributeEvent]:
    """Every distribute the VTN sends within `within` (each answered as a VEN does)."""
    before = len(ctx.distributes)
    await ctx.receive_until(lambda m: False, within)
    return ctx.distributes[before:]


def extend(ctx: VenContext, failures: list[Failure]) -> None:
    ctx.failures.extend(failures)


# --- N: registration ----------------------------------------------------------------------

async def query_before_registering(ctx: VenContext) -> None:
    answer = await ctx.call(QueryRegistration(request_id=new_id()), CreatedPartyRegistration)
    if answer is not None:
        ctx.expect("2.0b" in answer.profiles, "vtn.profile",
                   "the VTN offers the 2.0b profile", f"profiles {answer.profiles}")


async def create_registration(ctx: VenContext) -> None:
    answer = await ctx.register()
    ctx.expect(ctx.push or answer.poll_freq is not None, "vtn.poll-freq",
               "a pull VEN is given a poll frequency", "no oadrRequestedOadrPollFreq")
    # the registration works: the VEN may ask for its events
    assert ctx.ven_id is not None
    reply = await ctx.send(RequestEvent(request_id=new_id(), ven_id=ctx.ven_id))
    ctx.expect(vtn_rules.response_code(reply) in (None, 200) and reply is not None,
               "vtn.registered-works", "a registered VEN's oadrRequestEvent is served",
               repr(reply))


async def push_without_address(ctx: VenContext) -> None:
    reply = await ctx.send(CreatePartyRegistration(
        request_id=new_id(), ven_name=ctx.ven_name, http_pull_model=False))
    code = vtn_rules.response_code(reply)
    ctx.expect(code is not None and code != 200, "vtn.push-needs-address",
               "a push registration without oadrTransportAddress is refused",
               f"answered {type(reply).__name__} with code {code}")
    if isinstance(reply, CreatedPartyRegistration) and reply.registration_id:
        ctx.ven_id, ctx.registration_id = reply.ven_id, reply.registration_id  # cleanup


async def expect_refused(ctx: VenContext, ven_id: str, *, poll: bool) -> None:
    """oadrRequestEvent (and oadrPoll when `poll`) from `ven_id` get 463, never a 200."""
    probes: list[Message] = [RequestEvent(request_id=new_id(), ven_id=ven_id)]
    if poll:
        probes.append(Poll(ven_id=ven_id))
    for msg in probes:
        status, body = await ctx.post(SERVICE_OF[type(msg)], ctx.encode(msg))
        # an HTTP refusal without a body is allowed ("or no response"); a 200 is read and judged
        reply = ctx.read(body, f"{type(msg).__name__} from a VEN that is not registered") \
            if status == 200 and body.strip() else None
        extend(ctx, vtn_rules.unregistered_refused(status, reply))


async def unregistered_ven(ctx: VenContext) -> None:
    await expect_refused(ctx, new_id("never-registered"), poll=True)


async def wrong_registration_id(ctx: VenContext) -> None:
    await ctx.register()
    reply = await ctx.send(CancelPartyRegistration(
        request_id=new_id(), registration_id=new_id("bogus-registration"), ven_id=ctx.ven_id))
    code = vtn_rules.response_code(reply)
    ctx.expect(code == 452, "vtn.invalid-id-452",
               "cancelling with a registrationID that is not the VEN's is answered 452",
               f"{type(reply).__name__} with code {code}")


async def ven_cancels(ctx: VenContext) -> None:
    await ctx.register()
    assert ctx.ven_id is not None and ctx.registration_id is not None
    ven_id = ctx.ven_id
    await ctx.call(CancelPartyRegistration(request_id=new_id(),
                                           registration_id=ctx.registration_id, ven_id=ven_id),
                   CanceledPartyRegistration)
    ctx.registration_id = None
    await expect_refused(ctx, ven_id, poll=not ctx.push)


async def reregistration(ctx: VenContext) -> None:
    first = await ctx.register()
    again = await ctx.call(CreatePartyRegistration(
        request_id=new_id(), ven_name=ctx.ven_name, ven_id=first.ven_id,
        registration_id=first.registration_id, http_pull_model=not ctx.push,
        transport_address=ctx.listener.address(ctx.token) if ctx.push and ctx.listener else None,
        xml_signature=ctx.target.signing_key is not None), CreatedPartyRegistration)
    if again is not None:
        ctx.expect(again.ven_id == first.ven_id, "vtn.reregistration",
                   "re-registering keeps the venID", f"venID {again.ven_id}")
        ctx.registration_id = again.registration_id or ctx.registration_id
    assert ctx.ven_id is not None
    reply = await ctx.send(RequestEvent(request_id=new_id(), ven_id=ctx.ven_id))
    ctx.expect(reply is not None and vtn_rules.response_code(reply) in (None, 200),
               "vtn.reregistration", "the re-registered VEN is served", repr(reply))


# --- E: events ----------------------------------------------------------------------------

async def event_delivered(ctx: VenContext) -> None:
    await ctx.register()
    request = event_request(ctx)
    _, event = await created(ctx, request)
    extend(ctx, vtn_rules.event_fidelity(request, event))


async def response_recorded(ctx: VenContext) -> None:
    await ctx.register()
    _, event = await created(ctx, event_request(ctx))
    later = await collect(ctx, redelivery_window(ctx))
    extend(ctx, vtn_rules.not_redelivered(event.event_id, event.modification_number, later))


async def modification(ctx: VenContext) -> None:
    await ctx.register()
    _, before = await created(ctx, event_request(ctx))
    changed = dataclasses.replace(event_request(ctx), start=before.active_period.dtstart,
                                  signals=(simple(level=2.0),))
    await ctx.hook.modify(before.event_id, changed)
    after, event = await delivered(ctx, before.event_id, lambda e: e != before)
    extend(ctx, vtn_rules.modification_increases(before, after))
    extend(ctx, vtn_rules.event_fidelity(changed, event))


async def cancel_and_see(ctx: VenContext) -> Event:
    await ctx.register()
    _, before = await created(ctx, event_request(ctx))
    await ctx.hook.cancel(before.event_id)
    msg = await ctx.receive_until(lambda m: isinstance(m, DistributeEvent),
                                  delivery_window(ctx))
    ctx.require(isinstance(msg, DistributeEvent), "vtn.cancel-resent",
                f"a distribute follows the cancellation of {before.event_id}", "none came")
    assert isinstance(msg, DistributeEvent)
    extend(ctx, vtn_rules.cancellation_resent(before, msg))
    return before


async def explicit_cancel(ctx: VenContext) -> None:
    await cancel_and_see(ctx)


async def implicit_cancel(ctx: VenContext) -> None:
    cancelled = await cancel_and_see(ctx)
    later = await ctx.hook.create(event_request(ctx, start_in=3 * HOUR))
    msg, _ = await delivered(ctx, later)
    extend(ctx, vtn_rules.cancelled_stays_cancelled([cancelled.event_id], msg))


async def all_events_present(ctx: VenContext) -> None:
    await ctx.register()
    first, active = await created(ctx, event_request(ctx, start_in=timedelta(0),
                                                     signals=(simple(minutes=60),)))
    second, _ = await created(ctx, event_request(ctx, start_in=3 * HOUR))
    extend(ctx, vtn_rules.events_present(first, second, ctx.clock()))
    ctx.expect(any(e.status is EventStatus.ACTIVE for e in second.events),
               "vtn.events-present", f"the active event {active.event_id} is listed as active",
               f"statuses {[str(e.status) for e in second.events]}")


async def lost_response(ctx: VenContext) -> None:
    await ctx.register()
    ctx.answer_events = False
    _, event = await created(ctx, event_request(ctx))
    later = await ctx.receive_until(lambda m: find(m, event.event_id) is not None,
                                    redelivery_window(ctx))
    extend(ctx, vtn_rules.redelivered(event.event_id, event.modification_number,
                                      [later] if isinstance(later, DistributeEvent) else []))


def signal_case(signal: SignalRequest) -> CaseRun:
    async def run(ctx: VenContext) -> None:
        await ctx.register()
        request = event_request(ctx, signals=(signal,))
        _, event = await created(ctx, request)
        extend(ctx, vtn_rules.event_fidelity(request, event))
    return run


def _minutes(*payloads: float) -> tuple[tuple[timedelta, float], ...]:
    return tuple((timedelta(minutes=15), p) for p in payloads)


SIGNALS: tuple[tuple[str, SignalRequest], ...] = (
    ("SIMPLE level", SignalRequest(name="SIMPLE", type="level", intervals=_minutes(1, 2, 3))),
    ("LOAD_CONTROL x-loadControlCapacity", SignalRequest(
        name="LOAD_CONTROL", type="x-loadControlCapacity", intervals=_minutes(0.5, 0.7))),
    ("LOAD_DISPATCH setpoint in powerReal", SignalRequest(
        name="LOAD_DISPATCH", type="setpoint", intervals=_minutes(50.0, 40.0),
        item_base=ItemBase(kind="powerReal", description="RealPower", units="W", si_scale="k",
                           hertz=50.0, voltage=230.0, ac=True))),
    ("ELECTRICITY_PRICE price with currency", SignalRequest(
        name="ELECTRICITY_PRICE", type="price", intervals=_minutes(0.25, 0.31),
        item_base=ItemBase(kind="currencyPerKWh", description="currencyPerKWh", units="EUR"))),
    ("CHARGE_STATE setpoint in energyReal", SignalRequest(
        name="CHARGE_STATE", type="setpoint", intervals=_minutes(80.0),
        item_base=ItemBase(kind="energyReal", description="RealEnergy", units="Wh",
                           si_scale="k"))),
)


# --- A_E: advanced events -----------------------------------------------------------------

def fidelity_case(**fields: Any) -> CaseRun:
    """A case asking for an event with `fields` (EventRequest's) and judging they arrive."""
    async def run(ctx: VenContext) -> None:
        await ctx.register()
        request = dataclasses.replace(event_request(ctx), **fields)
        _, event = await created(ctx, request)
        extend(ctx, vtn_rules.event_fidelity(request, event))
    return run


async def overlapping(ctx: VenContext) -> None:
    await ctx.register()
    await created(ctx, event_request(ctx, signals=(simple(minutes=60),)))
    try:
        second = await ctx.hook.create(event_request(ctx, start_in=HOUR + timedelta(minutes=30),
                                                     signals=(simple(level=2.0),)))
    except HookRefused:
        return  # the VTN refused the overlap: the rule holds
    msg = await ctx.receive_until(lambda m: find(m, second) is not None, delivery_window(ctx))
    if isinstance(msg, DistributeEvent):
        extend(ctx, vtn_rules.no_overlap(msg))


# --- R: reports ---------------------------------------------------------------------------

GRANULE = timedelta(seconds=90)  # the minimum period offered: finer requests break the rule


def metadata(ctx: VenContext) -> tuple[Report, ...]:
    now = ctx.clock()
    power = ItemBase(kind="powerReal", description="RealPower", units="W", si_scale="none",
                     hertz=50.0, voltage=230.0, ac=True)
    energy = ItemBase(kind="energyReal", description="RealEnergy", units="Wh", si_scale="none")

    def report(name: str, rid: str, rtype: str, reading: str, item: ItemBase | None,
               min_period: timedelta | None) -> Report:
        return Report(report_specifier_id=f"spec-{rid}", report_name=f"METADATA_{name}",
                      created=now, descriptions=(ReportDescription(
                          r_id=rid, report_type=rtype, reading_type=reading,
                          resource_id="campaign-resource", item_base=item,
                          min_period=min_period, max_period=None if min_period is None else HOUR),))

    return (report("TELEMETRY_USAGE", "usage", "usage", "Direct Read", power, GRANULE),
            report("TELEMETRY_STATUS", "status", "x-resourceStatus", "x-notApplicable", None,
                   GRANULE),
            report("HISTORY_USAGE", "history", "usage", "Direct Read", energy, GRANULE))


async def register_reports(ctx: VenContext) -> list[ReportRequest]:
    """Offer the metadata; the VTN's requests, in oadrRegisteredReport or by oadrCreateReport."""
    answer = await ctx.call(RegisterReport(request_id=new_id(), reports=metadata(ctx),
                                           ven_id=ctx.ven_id), RegisteredReport)
    if answer is not None and answer.report_requests:
        ctx.report_requests.extend(answer.report_requests)
    else:  # the other style: oadrCreateReport on a poll (or pushed)
        await ctx.receive_until(lambda m: isinstance(m, CreateReport),
                                ctx.poll_freq * (2 if ctx.push else 1) + timedelta(seconds=1))
    offered = {r.report_specifier_id: {d.r_id: d for d in r.descriptions}
               for r in metadata(ctx)}
    names = {r.report_specifier_id: r.report_name for r in metadata(ctx)}
    extend(ctx, vtn_rules.granularity_respected(ctx.report_requests, offered, names))
    return ctx.report_requests


async def reports_requested(ctx: VenContext) -> None:
    await ctx.register()
    await register_reports(ctx)


async def requested_one(ctx: VenContext) -> ReportRequest:
    await ctx.register()
    requests = await register_reports(ctx)
    telemetry = [r for r in requests if r.report_specifier_id in ("spec-usage", "spec-status")]
    ctx.require(bool(telemetry), "vtn.report-requested",
                "the VTN requests a TELEMETRY report the VEN offered",
                f"{len(requests)} requests, none for TELEMETRY_USAGE or TELEMETRY_STATUS")
    return telemetry[0]


async def update_report(ctx: VenContext) -> None:
    request = await requested_one(ctx)
    now = whole_second(ctx.clock())
    granularity = request.granularity or GRANULE
    usage = request.report_specifier_id == "spec-usage"
    points = tuple(ReportPoint(r_id=s.r_id, value=1234.0) if usage else
                   ReportPoint(r_id=s.r_id, status=ResourceStatus(online=True,
                                                                  manual_override=False))
                   for s in request.specifiers)
    start = now - granularity
    report = Report(report_specifier_id=request.report_specifier_id,
                    report_name="TELEMETRY_USAGE" if usage else "TELEMETRY_STATUS",
                    created=now, report_request_id=request.report_request_id,
                    report_id=new_id("report"), dtstart=start, duration=granularity,
                    intervals=(ReportInterval(dtstart=start, duration=granularity,
                                              points=points),))
    await ctx.call(UpdateReport(request_id=new_id(), reports=(report,), ven_id=ctx.ven_id),
                   UpdatedReport)


async def cancel_report(ctx: VenContext) -> None:
    request = await requested_one(ctx)
    assert ctx.ven_id is not None
    await ctx.hook.cancel_report(ctx.ven_id, request.report_request_id)
    # `behave` answers it with oadrCanceledReport and judges the VTN's oadrResponse
    msg = await ctx.receive_until(
        lambda m: isinstance(m, CancelReport) and request.report_request_id in m.report_request_ids,
        delivery_window(ctx))
    ctx.expect(msg is not None, "vtn.cancel-report", f"the VTN sends oadrCancelReport for "
               f"{request.report_request_id}", "none came")


# --- P: opt -------------------------------------------------------------------------------

def availability_opt(ctx: VenContext) -> CreateOpt:
    assert ctx.ven_id is not None
    return CreateOpt(request_id=new_id(), opt_id=new_id("opt"), opt_type=OptType.OPT_OUT,
                     opt_reason=OptReason.NOT_PARTICIPATING, ven_id=ctx.ven_id,
                     created=ctx.clock(), market_context=MARKET + ctx.case.case_id,
                     availability=(Availability(dtstart=whole_second(ctx.clock() + HOUR),
                                                duration=2 * HOUR),))


def opt_id_echoed(ctx: VenContext, sent: str, got: str | None) -> None:
    ctx.expect(got == sent, "vtn.opt-id", f"the answer names optID {sent}", f"optID {got!r}")


async def event_opt(ctx: VenContext) -> None:
    await ctx.register()
    _, event = await created(ctx, event_request(ctx))
    assert ctx.ven_id is not None
    opt = CreateOpt(request_id=new_id(), opt_id=new_id("opt"), opt_type=OptType.OPT_OUT,
                    opt_reason=OptReason.ECONOMIC, ven_id=ctx.ven_id, created=ctx.clock(),
                    event_id=event.event_id, modification_number=event.modification_number)
    answer = await ctx.call(opt, CreatedOpt)
    if answer is not None:
        opt_id_echoed(ctx, opt.opt_id, answer.opt_id)


async def schedule_opt(ctx: VenContext) -> None:
    await ctx.register()
    opt = availability_opt(ctx)
    answer = await ctx.call(opt, CreatedOpt)
    if answer is not None:
        opt_id_echoed(ctx, opt.opt_id, answer.opt_id)


async def cancel_opt(ctx: VenContext) -> None:
    await ctx.register()
    assert ctx.ven_id is not None
    opt = availability_opt(ctx)
    await ctx.call(opt, CreatedOpt)
    answer = await ctx.call(CancelOpt(request_id=new_id(), opt_id=opt.opt_id,
                                      ven_id=ctx.ven_id), CanceledOpt)
    if answer is not None:
        opt_id_echoed(ctx, opt.opt_id, answer.opt_id)


# --- G: general and security --------------------------------------------------------------

MAX_DRAIN = 10  # polls: more queued messages than this for one fresh VEN is a runaway queue


async def queued_messages(ctx: VenContext) -> None:
    await ctx.register()
    await ctx.call(RegisterReport(request_id=new_id(), reports=metadata(ctx),
                                  ven_id=ctx.ven_id), RegisteredReport)
    await ctx.hook.create(event_request(ctx))
    answers: list[Message | None] = []
    for _ in range(MAX_DRAIN):
        msg = await ctx.poll()
        answers.append(msg)
        if msg is None or isinstance(msg, ResponseMessage):
            break
        await ctx.behave(msg)
    extend(ctx, vtn_rules.queue_drained(answers, (DistributeEvent,)))


# a body that is not XML, and a well-formed oadrPayload whose oadrPoll lacks its venID
MALFORMED = (
    b"<oadrPayload><not closed",
    (b'<?xml version="1.0" encoding="UTF-8"?>\n'
     b'<oadr:oadrPayload xmlns:oadr="http://openadr.org/oadr-2.0b/2012/07">'
     b'<oadr:oadrSignedObject><oadr:oadrPoll ei:schemaVersion="2.0b" '
     b'xmlns:ei="http://docs.oasis-open.org/ns/energyinterop/201110"/>'
     b'</oadr:oadrSignedObject></oadr:oadrPayload>'),
)


async def malformed(ctx: VenContext) -> None:
    for body in MALFORMED:
        status, answer = await ctx.post("OadrPoll", body)
        code = None
        if status == 200:
            code = vtn_rules.response_code(ctx.read(answer, "a malformed message"))
        ctx.expect(400 <= status < 500 or (status == 200 and code not in (None, 200)),
                   "vtn.bad-input", "malformed XML gets an HTTP 4xx or an OpenADR error code",
                   f"HTTP {status}" + (f", code {code}" if status == 200 else ""))
    await ctx.call(QueryRegistration(request_id=new_id()), CreatedPartyRegistration)


def _host_port(ctx: VenContext) -> tuple[str, int]:
    parts = urlsplit(ctx.target.url)
    return parts.hostname or "127.0.0.1", parts.port or 443


def suite_case(suite: int) -> CaseRun:
    async def run(ctx: VenContext) -> None:
        host, port = _host_port(ctx)
        name = tls.SUITE_NAMES[suite]
        ctx.record(Direction.SENT, "tls", f"ClientHello TLS 1.2 offering {name}".encode())
        answer = await tls.probe(host, port, tls.Version.TLS1_2, (suite,))
        ctx.record(Direction.RECEIVED, "tls", repr(answer).encode())
        ctx.expect(answer.accepted and answer.suite == suite
                   and answer.version == tls.Version.TLS1_2, "vtn.tls-suite",
                   f"the VTN negotiates {name} at TLS 1.2", answer.detail or repr(answer))
    return run


async def legacy_tls(ctx: VenContext) -> None:
    host, port = _host_port(ctx)
    for version in (tls.Version.TLS1_0, tls.Version.TLS1_1):
        ctx.record(Direction.SENT, "tls", f"ClientHello {version.name}".encode())
        answer = await tls.probe(host, port, version, tls.LEGACY_SUITES)
        ctx.record(Direction.RECEIVED, "tls", repr(answer).encode())
        ctx.expect(not answer.accepted, "vtn.tls-legacy", f"the VTN refuses {version.name}",
                   f"it accepted with suite 0x{answer.suite or 0:04X}")


# --- the table ----------------------------------------------------------------------------

def _cases(family: Family, number: int, title: str, intent: str, run: CaseRun, *,
           needs: frozenset[str] = frozenset(),
           transports: tuple[Transport, ...] = (Transport.PULL,)) -> Iterator[Case]:
    return twins(Role.VTN, family, number, title, intent, run, transports=transports,
                 needs=needs)


BOTH = (Transport.PULL, Transport.PUSH)
HOOK = frozenset({"hook"})


def all_cases() -> tuple[Case, ...]:
    n, e, a, r, p, g = Family.N, Family.E, Family.A_E, Family.R, Family.P, Family.G
    table: list[Iterator[Case]] = [
        _cases(n, 10, "Query registration before registering", "An unregistered VEN's "
               "oadrQueryRegistration is answered oadrCreatedPartyRegistration 200 with the "
               "2.0b profile.", query_before_registering),
        _cases(n, 20, "Create a registration", "A CreatePartyRegistration gets a registrationID, "
               "a venID and, for a pull VEN, a poll frequency, and the VEN is then served.",
               create_registration, transports=BOTH),
        _cases(n, 30, "Push registration without a transport address", "A push "
               "registration that gives no oadrTransportAddress is refused.",
               push_without_address, transports=(Transport.PUSH,)),
        _cases(n, 40, "Unregistered venID", "Polls and requests from a venID the VTN never "
               "registered get 463, never a 200.", unregistered_ven),
        _cases(n, 50, "Cancel with a wrong registrationID", "A cancellation naming a "
               "registrationID that is not the VEN's is answered 452.", wrong_registration_id),
        _cases(n, 60, "VEN cancels its registration", "After oadrCanceledPartyRegistration 200 "
               "the VEN's messages are refused with 463.", ven_cancels, transports=BOTH),
        _cases(n, 70, "Re-registration", "Registering again with the registrationID keeps the "
               "venID and the VEN keeps being served.", reregistration, transports=BOTH),
        _cases(e, 10, "Event delivery", "An event created for the VEN is delivered, with a real "
               "requestID and what the operator asked for.", event_delivered, needs=HOOK,
               transports=BOTH),
        _cases(e, 20, "Response recorded", "Once the VEN answered oadrCreatedEvent, the VTN "
               "does not deliver the same modification again.", response_recorded, needs=HOOK,
               transports=BOTH),
        _cases(e, 30, "Modification", "A modified event comes again with a higher "
               "modificationNumber and the new signal.", modification, needs=HOOK,
               transports=BOTH),
        _cases(e, 40, "Explicit cancellation", "A cancelled event is resent with eventStatus "
               "cancelled and a higher modificationNumber.", explicit_cancel, needs=HOOK,
               transports=BOTH),
        _cases(e, 50, "Implicit cancellation", "Once its cancellation is acknowledged, an event "
               "is left out of later distributes (or stays cancelled), never live again.",
               implicit_cancel, needs=HOOK, transports=BOTH),
        _cases(e, 60, "Every live event in every distribute", "A distribute sent for a new event "
               "still carries the VEN's active event.", all_events_present, needs=HOOK,
               transports=BOTH),
        *(_cases(e, 70 + 10 * i, f"Signal {label}", f"A {label} signal is delivered with the "
                 "signalType and units the profile gives its signalName.", signal_case(signal),
                 needs=HOOK) for i, (label, signal) in enumerate(SIGNALS)),
        _cases(e, 120, "Lost oadrCreatedEvent", f"An event the VEN never answered is delivered "
               f"again within {REDELIVERY_POLLS} poll periods.", lost_response, needs=HOOK,
               transports=BOTH),
        _cases(a, 10, "Randomised start", "An event's tolerance/startafter reaches the VEN.",
               fidelity_case(start_after=timedelta(minutes=5)), needs=HOOK),
        _cases(a, 20, "Priority", "An event's priority reaches the VEN.",
               fidelity_case(priority=3), needs=HOOK),
        _cases(a, 30, "Overlapping events", "Two events overlapping in one market context are "
               "not both live for the VEN.", overlapping, needs=HOOK),
        _cases(a, 40, "Notification, ramp-up and recovery", "An event's x-eiNotification, "
               "x-eiRampUp and x-eiRecovery reach the VEN.",
               fidelity_case(notification=timedelta(minutes=30), ramp_up=timedelta(minutes=10),
                             recovery=timedelta(minutes=5)), needs=HOOK),
        _cases(r, 10, "Report registration and requests", "METADATA reports are registered and "
               "the VTN's requests (in oadrRegisteredReport or oadrCreateReport) name offered "
               "rIDs, respect the minimum period and ask history with granularity 0.",
               reports_requested, transports=BOTH),
        _cases(r, 20, "Update report", "An oadrUpdateReport for a request of the VTN is "
               "answered oadrUpdatedReport 200.", update_report, transports=BOTH),
        _cases(r, 30, "Cancel report", "A report request the operator cancels reaches the VEN as "
               "oadrCancelReport, and its oadrCanceledReport is acknowledged.", cancel_report,
               needs=frozenset({"hook", "report-hook"}), transports=BOTH),
        _cases(p, 10, "Event opt", "An opt out of one event is answered oadrCreatedOpt 200 with "
               "its optID.", event_opt, needs=HOOK),
        _cases(p, 20, "Availability schedule opt", "An availability schedule opt is answered "
               "oadrCreatedOpt 200 with its optID.", schedule_opt),
        _cases(p, 30, "Cancel opt", "oadrCancelOpt is answered oadrCanceledOpt 200 with the "
               "optID.", cancel_opt),
        _cases(g, 10, "Several queued messages", "What is queued for a VEN comes one message per "
               "poll until an empty oadrResponse.", queued_messages, needs=HOOK),
        _cases(g, 20, "Malformed messages", "Malformed XML gets a 4xx or an OpenADR error, never "
               "a 500, and the VTN keeps serving.", malformed),
        _cases(g, 30, "TLS suite ECDHE-ECDSA", "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256 is "
               "negotiated at TLS 1.2 (ECC server certificate).",
               suite_case(tls.ECDHE_ECDSA_AES128_SHA256), needs=frozenset({"tls"})),
        _cases(g, 40, "TLS suite RSA", "TLS_RSA_WITH_AES_128_CBC_SHA256 is negotiated at TLS 1.2 "
               "(RSA server certificate).", suite_case(tls.RSA_AES128_SHA256),
               needs=frozenset({"tls"})),
        _cases(g, 50, "No TLS 1.0 or 1.1", "TLS 1.0 and 1.1 handshakes are refused.", legacy_tls,
               needs=frozenset({"tls"})),
    ]
    return tuple(case for group in table for case in group)
