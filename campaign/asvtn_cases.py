"""The VEN-role cases: the harness plays the VTN, the VEN under test is judged.

Our own numbering and wording, written from the intent of the public 2.0b certification test
plan's families (domain.md section 2). Each case is one async function of a `VtnContext`; where
the transport matters it is generated twice from the same code, pull ("1") and push ("0").

Rules of this file:
- A case sends what it needs (`ctx.send`, `ctx.publish`), waits bounded for the VEN's answers
  (`ctx.wait_for`), and judges them with `ctx.expect` and the pure rules of `ven_rules`; every
  message from the VEN is also judged by `Context.conformant` as it arrives.
- Cases leave no running requests behind (the context cancels open report requests), and the
  VTN-side cancellation of the registration runs last: a VEN that honours it stops talking.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from oadr.messages import (
    ActivePeriod, CanceledPartyRegistration, CanceledReport, CancelOpt, CancelPartyRegistration,
    Message,
    CancelReport, CreatedEvent, CreatedReport, CreateOpt, CreatePartyRegistration, CreateReport,
    Event, EventSignal, EventStatus, Interval, ItemBase, Poll, QueryRegistration,
    RegisterReport, Report, ReportRequest, RequestReregistration,
    ResponseMessage, ResponseRequired, SpecifierPayload, Target, UpdateReport,
)

from . import ven_rules
from .asvtn_harness import VtnContext
from .model import Case, Direction, Family, Role, Transport, twins

MARKET: Final = "http://adrgate.campaign/programs/a"
MARKET_B: Final = "http://adrgate.campaign/programs/b"
NO_SUCH_RESOURCE: Final = "adrgate-campaign-no-such-resource"
NOT_OFFERED: Final = "ADRGATE_NOT_OFFERED"
EVENT_START: Final = timedelta(minutes=10)  # events start in the future: answered, not run
EVENT_LENGTH: Final = timedelta(minutes=30)
UPDATES_WANTED: Final = 2  # periodic updates observed before judging their rate
POLLS_OBSERVED: Final = 3  # poll periods watched to judge the poll rate

POWER_KW: Final = ItemBase(kind="powerReal", description="RealPower", units="W", si_scale="k",
                           hertz=50, voltage=230, ac=True)
ENERGY_KWH: Final = ItemBase(kind="energyReal", description="RealEnergy", units="Wh",
                             si_scale="k")
PRICE_EUR_KWH: Final = ItemBase(kind="currencyPerKWh", description="currencyPerKWh",
                                units="EUR", si_scale="none")

CaseFn = Callable[[VtnContext], Awaitable[None]]


class NotApplicable(Exception):
    """The VEN under test offers nothing this case could request (the case ends as ERROR)."""


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# --- events -------------------------------------------------------------------------------

def _signal(name: str, kind: str, payload: float, item: ItemBase | None = None,
            duration: timedelta = EVENT_LENGTH) -> EventSignal:
    return EventSignal(signal_name=name, signal_type=kind, signal_id=f"{name.lower()}-0",
                       intervals=(Interval(uid=0, duration=duration, payload=payload),),
                       item_base=item)


def _event(ctx: VtnContext, *, signal: EventSignal | None = None, offset: int = 0,
           market: str = MARKET, priority: int = 0, start_after: timedelta | None = None,
           response_required: ResponseRequired = ResponseRequired.ALWAYS,
           targets: Target | None = None) -> Event:
    """A far event for the VEN under test; `offset` places it that many event lengths later, so
    that events of one market context do not overlap."""
    reg = ctx.core.registration
    assert reg is not None  # ctx.registered() first
    return Event(
        event_id=_id("ev"), modification_number=0, market_context=market, created=ctx.now(),
        status=EventStatus.FAR,
        active_period=ActivePeriod(dtstart=ctx.now() + EVENT_START + offset * EVENT_LENGTH,
                                   duration=EVENT_LENGTH, start_after=start_after),
        signals=(signal or _signal("SIMPLE", "level", 1.0),),
        targets=targets or Target(ven_ids=(reg.ven_id,)), priority=priority,
        response_required=response_required)


def _modified(ev: Event, ctx: VtnContext, **fields: object) -> Event:
    return dataclasses.replace(ev, modification_number=ev.modification_number + 1,
                               modification_date_time=ctx.now(), **fields)  # type: ignore[arg-type]


def _names(created: CreatedEvent, event_id: str, mod: int | None = None) -> bool:
    return any(r.event_id == event_id and (mod is None or r.modification_number == mod)
               for r in created.event_responses)


async def _answers(ctx: VtnContext, since: int, wanted: Sequence[Event]) -> list[CreatedEvent]:
    """Wait until each of `wanted` is named by an oadrCreatedEvent sent since `since` (at its
    current modificationNumber), judge that each got one answer, and return every
    oadrCreatedEvent since then."""
    def done() -> bool:
        created = [m for _, m in ctx.received(CreatedEvent, since)]
        return all(any(_names(c, e.event_id, e.modification_number) for c in created)
                   for e in wanted)

    await ctx.harness.until(done, ctx.patience_s)
    created = [m for _, m in ctx.received(CreatedEvent, since)]
    ctx.failures.extend(ven_rules.one_response_per_event([e.event_id for e in wanted], created))
    return created


async def _publish_answered(ctx: VtnContext, *events: Event,
                            wanted: Sequence[Event] | None = None) -> list[CreatedEvent]:
    """Distribute `events` and judge the answers: one per event wanting one, each naming the
    event's current modificationNumber."""
    await ctx.registered()
    since = ctx.mark()
    await ctx.publish(*events)
    wanted = [e for e in events if e.response_required is ResponseRequired.ALWAYS] \
        if wanted is None else wanted
    created = await _answers(ctx, since, wanted)
    ctx.failures.extend(ven_rules.created_event_modification(
        {e.event_id: e.modification_number for e in events}, created))
    return created


async def simple_event(ctx: VtnContext) -> None:
    created = await _publish_answered(ctx, _event(ctx))
    ctx.failures.extend(ven_rules.created_event_codes(created))


async def modified_event(ctx: VtnContext) -> None:
    ev = _event(ctx)
    await _publish_answered(ctx, ev)
    changed = _modified(ev, ctx, signals=(_signal("SIMPLE", "level", 2.0),))
    created = await _publish_answered(ctx, changed)
    ctx.failures.extend(ven_rules.created_event_codes(created))


async def cancelled_event(ctx: VtnContext) -> None:
    ev = _event(ctx)
    await _publish_answered(ctx, ev)
    created = await _publish_answered(ctx, _modified(ev, ctx, status=EventStatus.CANCELLED))
    ctx.failures.extend(ven_rules.created_event_codes(created))


async def implicitly_cancelled_event(ctx: VtnContext) -> None:
    dropped = _event(ctx)
    await _publish_answered(ctx, dropped)
    since = ctx.mark()
    other = _event(ctx, offset=1)
    await _publish_answered(ctx, other)
    await ctx.quiet(ctx.harness.ven.poll_freq.total_seconds())
    ctx.failures.extend(ven_rules.implicit_cancel(
        [dropped.event_id], [m for _, m in ctx.received(CreatedEvent, since)]))


async def signal_types(ctx: VtnContext) -> None:
    await ctx.registered()
    signals = (_signal("LOAD_CONTROL", "x-loadControlCapacity", 0.5),
               _signal("LOAD_DISPATCH", "setpoint", 40.0, POWER_KW),
               _signal("ELECTRICITY_PRICE", "price", 0.25, PRICE_EUR_KWH),
               _signal("CHARGE_STATE", "setpoint", 80.0, ENERGY_KWH))
    events = [_event(ctx, signal=s, offset=i) for i, s in enumerate(signals)]
    created = await _publish_answered(ctx, *events)
    ctx.failures.extend(ven_rules.created_event_codes(
        created, allowed=frozenset({ven_rules.OK, ven_rules.SIGNAL_NOT_SUPPORTED})))


async def several_events(ctx: VtnContext) -> None:
    await ctx.registered()
    created = await _publish_answered(ctx, *(_event(ctx, offset=i) for i in range(3)))
    ctx.failures.extend(ven_rules.created_event_codes(created))


async def response_never(ctx: VtnContext) -> None:
    await ctx.registered()
    never = _event(ctx, response_required=ResponseRequired.NEVER)
    always = _event(ctx, offset=1)
    since = ctx.mark()
    await _publish_answered(ctx, never, always)
    await ctx.quiet(ctx.harness.ven.poll_freq.total_seconds())
    ctx.failures.extend(ven_rules.no_response_when_never(
        [never.event_id], [m for _, m in ctx.received(CreatedEvent, since)]))


async def target_mismatch(ctx: VtnContext) -> None:
    await ctx.registered()
    ev = _event(ctx, targets=Target(resource_ids=(NO_SUCH_RESOURCE,)))
    created = await _publish_answered(ctx, ev)
    ctx.failures.extend(ven_rules.not_opted_in([ev.event_id], created))


async def randomised_start(ctx: VtnContext) -> None:
    await ctx.registered()
    created = await _publish_answered(ctx, _event(ctx, start_after=timedelta(minutes=5)))
    ctx.failures.extend(ven_rules.created_event_codes(created))


async def overlapping_priorities(ctx: VtnContext) -> None:
    await ctx.registered()
    first = _event(ctx, priority=1)
    second = _event(ctx, market=MARKET_B, priority=2)
    created = await _publish_answered(ctx, first, second)
    ctx.failures.extend(ven_rules.created_event_codes(created))


# --- registration -------------------------------------------------------------------------

def _replay_registration(ctx: VtnContext) -> None:
    """Registration happened before any case: bring its exchanges into this transcript, and
    judge the VEN's messages in it."""
    for exchange in ctx.harness.wire:
        if exchange.endpoint == "EiRegisterParty" and exchange not in ctx.transcript:
            ctx.transcript.append(exchange)
            if exchange.direction is Direction.RECEIVED:
                ctx.conformant(exchange.body)


async def registration(ctx: VtnContext) -> None:
    await ctx.registered()
    _replay_registration(ctx)
    creates = [(i, m) for i, m in ctx.received(CreatePartyRegistration, 0)
               if getattr(getattr(i.reply, "response", None), "code", None) == 200]
    ctx.require(bool(creates), "ven.registration", "an accepted oadrCreatePartyRegistration",
                "none")
    first, create = creates[0]
    queried = [i for i, _ in ctx.received(QueryRegistration, 0) if i.seq < first.seq]
    ctx.expect(bool(queried), "ven.query-registration",
               "oadrQueryRegistration before oadrCreatePartyRegistration", "no query first")
    ctx.failures.extend(ven_rules.registration(create, push=ctx.push))


async def poll_frequency(ctx: VtnContext) -> None:
    await ctx.registered()
    period = ctx.harness.ven.poll_freq
    await ctx.quiet(POLLS_OBSERVED * period.total_seconds())
    polls = [ven_rules.PollSeen(i.at, i.delivered is None and isinstance(i.reply, ResponseMessage))
             for i, _ in ctx.received(Poll)]
    ctx.failures.extend(ven_rules.poll_frequency(polls, period, until=ctx.now()))


async def reregistration(ctx: VtnContext) -> None:
    reg = await ctx.registered()
    since = ctx.mark()
    await ctx.send(RequestReregistration(ven_id=reg.ven_id))
    create = await ctx.wait_for(CreatePartyRegistration, since=since)
    ctx.require(create is not None, "ven.reregistration",
                "oadrCreatePartyRegistration after oadrRequestReregistration", "none came")
    again = await ctx.wait_for(RegisterReport, since=since)
    ctx.expect(again is not None, "ven.reregistration",
               "oadrRegisterReport after registering again", "none came")


async def cancel_registration(ctx: VtnContext) -> None:
    reg = await ctx.registered()
    since = ctx.mark()
    cancel = CancelPartyRegistration(request_id=_id("req"), registration_id=reg.registration_id,
                                     ven_id=reg.ven_id)
    await ctx.send(cancel)
    done = await ctx.wait_for(CanceledPartyRegistration, since=since)
    ctx.require(done is not None, "ven.canceled-registration",
                "oadrCanceledPartyRegistration answers the VTN's cancellation", "none came")
    assert done is not None
    ctx.expect(done.response.code == 200 and done.registration_id == reg.registration_id,
               "ven.canceled-registration",
               f"responseCode 200 naming registrationID {reg.registration_id}",
               f"responseCode {done.response.code}, registrationID {done.registration_id}")


# --- reports ------------------------------------------------------------------------------

def _offered(ctx: VtnContext, name: str) -> Report | None:
    return next((r for r in ctx.core.metadata if r.report_name == f"METADATA_{name}"), None)


def _telemetry(ctx: VtnContext) -> list[Report]:
    found = [r for n in ven_rules.TELEMETRY if (r := _offered(ctx, n)) is not None]
    if not found or not any(r.descriptions for r in found):
        raise NotApplicable("the VEN offers no TELEMETRY_USAGE or TELEMETRY_STATUS data points")
    return [r for r in found if r.descriptions]


def _request(report: Report, r_ids: Sequence[str], *, granularity: timedelta = timedelta(0),
             back: timedelta = timedelta(0), dtstart: datetime | None = None,
             duration: timedelta | None = None) -> ReportRequest:
    return ReportRequest(report_request_id=_id("rr"),
                         report_specifier_id=report.report_specifier_id,
                         granularity=granularity, report_back_duration=back,
                         specifiers=tuple(SpecifierPayload(r_id=r) for r in r_ids),
                         dtstart=dtstart, duration=duration)


def _periodic(ctx: VtnContext, report: Report) -> ReportRequest:
    """A request for every data point of `report`, every poll period or the fastest the
    metadata allow."""
    fastest = max((d.min_period for d in report.descriptions if d.min_period is not None),
                  default=timedelta(0))
    step = max(fastest, ctx.harness.ven.poll_freq)
    return _request(report, [d.r_id for d in report.descriptions], granularity=step, back=step)


def _create_report(ctx: VtnContext, *requests: ReportRequest) -> CreateReport:
    reg = ctx.core.registration
    assert reg is not None
    return CreateReport(request_id=_id("req"), report_requests=requests, ven_id=reg.ven_id)


async def _created_report(ctx: VtnContext, since: int, *, refused: bool = False) -> None:
    created = await ctx.wait_for(CreatedReport, since=since)
    ctx.require(created is not None, "ven.created-report",
                "oadrCreatedReport answers the report request", "none came")
    assert created is not None
    code = created.response.code
    if refused:
        ctx.expect(code != 200, "ven.unknown-report-refused",
                   "a request for a report the VEN never offered is refused (e.g. 461)",
                   "responseCode 200")
    else:
        ctx.expect(code == 200, "ven.created-report", "oadrCreatedReport responseCode 200",
                   f"responseCode {code} ({created.response.description})")


def _updates(ctx: VtnContext, request_id: str, since: int | None = None
             ) -> list[tuple[datetime, Report]]:
    return [(i.at, r) for i, m in ctx.received(UpdateReport, since) for r in m.reports
            if r.report_request_id == request_id]


async def _wait_updates(ctx: VtnContext, request: ReportRequest, since: int, count: int
                        ) -> list[tuple[datetime, Report]]:
    period = max(request.granularity, request.report_back_duration).total_seconds()
    await ctx.harness.until(lambda: len(_updates(ctx, request.report_request_id, since)) >= count,
                            ctx.patience_s + count * period)
    updates = _updates(ctx, request.report_request_id, since)
    ctx.expect(len(updates) >= count, "ven.update-report",
               f"{count} oadrUpdateReport for request {request.report_request_id}",
               f"{len(updates)}")
    for _, report in updates:
        ctx.failures.extend(ven_rules.update_matches_request(request, report))
    return updates


async def registered_reports(ctx: VtnContext) -> None:
    await ctx.registered()
    registers = ctx.received(RegisterReport, 0)
    ctx.require(bool(registers), "ven.register-reports",
                "oadrRegisterReport after registering", "none came")
    inbound, last = registers[-1]
    ctx.record(Direction.RECEIVED, inbound.service, inbound.body)
    ctx.conformant(inbound.body)
    ctx.failures.extend(ven_rules.telemetry_offered(last.reports))


async def one_shot_report(ctx: VtnContext) -> None:
    await ctx.registered()
    for report in _telemetry(ctx):
        request = _request(report, [d.r_id for d in report.descriptions])
        since = ctx.mark()
        await ctx.send(_create_report(ctx, request))
        await _created_report(ctx, since)
        await _wait_updates(ctx, request, since, 1)


async def _cancel_judged(ctx: VtnContext, request: ReportRequest) -> None:
    """Cancel `request` and judge that its updates stop."""
    reg = ctx.core.registration
    assert reg is not None
    since = ctx.mark()
    cancel = CancelReport(request_id=_id("req"), report_request_ids=(request.report_request_id,),
                          ven_id=reg.ven_id)
    await ctx.send(cancel)
    await ctx.wait_for(CanceledReport, since=since)
    acked = [i.at for i, _ in ctx.received(CanceledReport, since)]
    ctx.require(bool(acked), "ven.canceled-report", "oadrCanceledReport answers oadrCancelReport",
                "none came")
    ctx.open_requests.discard(request.report_request_id)
    period = max(request.granularity, request.report_back_duration)
    await ctx.quiet((1 + ven_rules.RATE_SLACK) * period.total_seconds())  # the next one is due
    ctx.failures.extend(ven_rules.cancel_stops_updates(
        request.report_request_id, acked[0], _updates(ctx, request.report_request_id, since),
        grace=period * ven_rules.RATE_SLACK))


async def periodic_report(ctx: VtnContext) -> None:
    await ctx.registered()
    request = _periodic(ctx, _telemetry(ctx)[0])
    since = ctx.mark()
    ctx.open_requests.add(request.report_request_id)
    await ctx.send(_create_report(ctx, request))
    await _created_report(ctx, since)
    updates = await _wait_updates(ctx, request, since, UPDATES_WANTED)
    ctx.failures.extend(ven_rules.report_granularity(request, updates))
    await _cancel_judged(ctx, request)


async def report_in_registered_report(ctx: VtnContext) -> None:
    reg = await ctx.registered()
    request = _periodic(ctx, _telemetry(ctx)[0])
    since = ctx.mark()
    ctx.open_requests.add(request.report_request_id)
    ctx.core.registered_requests = [request]
    await ctx.send(RequestReregistration(ven_id=reg.ven_id))
    answered = await ctx.wait_for(RegisterReport, since=since)
    ctx.require(answered is not None and not ctx.core.registered_requests, "ven.reregistration",
                "oadrRegisterReport after registering again (answered by an "
                "oadrRegisteredReport carrying the request)", "none came")
    await _created_report(ctx, since)
    updates = await _wait_updates(ctx, request, since, UPDATES_WANTED)
    ctx.failures.extend(ven_rules.report_granularity(request, updates))
    await _cancel_judged(ctx, request)


async def two_requests(ctx: VtnContext) -> None:
    await ctx.registered()
    report = next((r for r in _telemetry(ctx) if len(r.descriptions) >= 2), None)
    if report is None:
        raise NotApplicable("no telemetry report with two data points to request apart")
    first, second = (_request(report, [d.r_id]) for d in report.descriptions[:2])
    since = ctx.mark()
    await ctx.send(_create_report(ctx, first, second))
    await _created_report(ctx, since)
    for request in (first, second):
        await _wait_updates(ctx, request, since, 1)


async def history_report(ctx: VtnContext) -> None:
    await ctx.registered()
    report = _offered(ctx, "HISTORY_USAGE")
    if report is None or not report.descriptions:
        raise NotApplicable("the VEN offers no METADATA_HISTORY_USAGE")
    start = ctx.harness.started_at
    # xcal durations are whole seconds (the XSD pattern has no fraction)
    request = _request(report, [d.r_id for d in report.descriptions], dtstart=start,
                       duration=timedelta(seconds=math.ceil((ctx.now() - start).total_seconds())))
    since = ctx.mark()
    await ctx.send(_create_report(ctx, request))
    await _created_report(ctx, since)
    for _, update in await _wait_updates(ctx, request, since, 1):
        outside = [i.dtstart for i in update.intervals
                   if not start <= i.dtstart <= start + (request.duration or timedelta(0))]
        ctx.expect(not outside, "ven.history-window",
                   "history intervals inside the requested reportInterval",
                   f"intervals at {', '.join(t.isoformat() for t in outside)}")


async def unknown_report(ctx: VtnContext) -> None:
    await ctx.registered()
    fake = Report(report_specifier_id=NOT_OFFERED, report_name=f"METADATA_{NOT_OFFERED}",
                  created=ctx.now())
    since = ctx.mark()
    await ctx.send(_create_report(ctx, _request(fake, ["adrgate-no-such-rid"])))
    await _created_report(ctx, since, refused=True)


# --- opt ----------------------------------------------------------------------------------

ASK_AVAILABILITY: Final = ("Make the VEN send an oadrCreateOpt with an availability schedule "
                           "(vavailability, optOut) for a window in the coming hours.")
ASK_CANCEL_OPT: Final = "Make the VEN cancel its opt {opt_id} (oadrCancelOpt)."
ASK_EVENT_OPT: Final = ("Make the VEN opt out of event {event_id} with an event-scoped "
                        "oadrCreateOpt.")


async def availability_opt(ctx: VtnContext) -> None:
    await ctx.registered()
    since = ctx.mark()
    await ctx.ask(ASK_AVAILABILITY)
    opt = await ctx.wait_for(CreateOpt, since=since, where=lambda o: bool(o.availability))
    ctx.require(opt is not None, "ven.opt-availability",
                "an oadrCreateOpt with a vavailability schedule", "none came")
    assert opt is not None
    ctx.expect(all(a.duration > timedelta(0) for a in opt.availability), "ven.opt-availability",
               "every available component has a duration", "a component lasting 0")


async def cancel_opt(ctx: VtnContext) -> None:
    await ctx.registered()
    opts = ctx.received(CreateOpt, 0)
    if not opts:
        raise NotApplicable("the VEN sent no opt to cancel")
    opt_id = opts[-1][1].opt_id
    since = ctx.mark()
    await ctx.ask(ASK_CANCEL_OPT.format(opt_id=opt_id))
    cancel = await ctx.wait_for(CancelOpt, since=since, where=lambda c: c.opt_id == opt_id)
    ctx.expect(cancel is not None, "ven.cancel-opt", f"oadrCancelOpt naming opt {opt_id}",
               "none came")


async def event_opt(ctx: VtnContext) -> None:
    ev = _event(ctx)  # registered: `_event` needs the venID
    await _publish_answered(ctx, ev)
    since = ctx.mark()
    await ctx.ask(ASK_EVENT_OPT.format(event_id=ev.event_id))
    opt = await ctx.wait_for(CreateOpt, since=since, where=lambda o: o.event_id == ev.event_id)
    ctx.require(opt is not None, "ven.opt-event",
                f"an event-scoped oadrCreateOpt for event {ev.event_id}", "none came")
    assert opt is not None
    ctx.expect(opt.modification_number in (None, ev.modification_number), "ven.opt-event",
               f"the opt names modificationNumber {ev.modification_number}",
               f"it names {opt.modification_number}")


# --- general ------------------------------------------------------------------------------

async def queued_messages(ctx: VtnContext) -> None:
    await ctx.registered()
    report = _telemetry(ctx)[0]
    ev = _event(ctx)
    ctx.core.events = {ev.event_id: ev}
    queued: list[Message] = [ctx.core.distribute(ctx.now()),
              _create_report(ctx, _request(report, [report.descriptions[0].r_id]))]
    since = ctx.mark()
    for msg in queued:
        ctx.core.note_sent(msg)
        ctx.core.queue.append(msg)

    def fetched() -> list[str]:
        return [type(i.delivered).__name__ for i in ctx.core.log[since:] if i.delivered]

    def drained() -> bool:
        log = ctx.core.log[since:]
        last = max((n for n, i in enumerate(log) if i.delivered), default=None)
        return last is not None and any(isinstance(i.message, Poll) and i.delivered is None
                                        for i in log[last + 1:])

    period = ctx.harness.ven.poll_freq.total_seconds()
    await ctx.harness.until(lambda: drained() and len(fetched()) == len(queued),
                            ctx.patience_s + (len(queued) + 1) * period)
    ctx.failures.extend(ven_rules.queue_drained([type(m).__name__ for m in queued], fetched(),
                                                drained=drained()))
    await _answers(ctx, since, [ev])
    await _created_report(ctx, since)


TLS_SUITES: Final = frozenset({"ECDHE-ECDSA-AES128-SHA256", "AES128-SHA256"})


async def tls_suites(ctx: VtnContext) -> None:
    await ctx.registered()
    seen = ctx.harness.tls_seen
    bad = sorted(f"{v} {c}" for v, c in seen if v != "TLSv1.2" or c not in TLS_SUITES)
    ctx.expect(bool(seen) and not bad, "ven.tls",
               "TLS 1.2 with TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256 or "
               "TLS_RSA_WITH_AES_128_CBC_SHA256 on every connection",
               ", ".join(bad) or "no connection seen")


async def signed_messages(ctx: VtnContext) -> None:
    await ctx.registered()
    unsigned = sorted({type(i.message).__name__ for i in ctx.core.log
                       if i.message is not None and not i.signed})
    ctx.expect(not unsigned, "ven.signed", "every message from the VEN carries a valid XML "
                                           "signature", "unsigned: " + ", ".join(unsigned))


# --- the table ----------------------------------------------------------------------------

BOTH: Final = (Transport.PULL, Transport.PUSH)


@dataclass(frozen=True, slots=True)
class _Spec:
    family: Family
    number: int
    title: str
    intent: str
    run: CaseFn
    transports: tuple[Transport, ...] = BOTH
    needs: frozenset[str] = frozenset()


_SPECS: Final = (
    _Spec(Family.N, 10, "Registration", "The VEN queries, then registers profile 2.0b over "
          "simpleHttp with the pull model, or as a push VEN with its transport address.",
          registration),
    _Spec(Family.N, 20, "Poll frequency honoured", "The VEN polls at the frequency it was given, "
          "no faster than half of it, and keeps polling.", poll_frequency, (Transport.PULL,)),
    _Spec(Family.N, 30, "Registers again on request", "oadrRequestReregistration makes the VEN "
          "register again and register its reports again.", reregistration),
    _Spec(Family.E, 10, "SIMPLE event answered", "A SIMPLE event with responseRequired always "
          "gets one oadrCreatedEvent naming its modificationNumber, optIn or optOut.",
          simple_event),
    _Spec(Family.E, 20, "Modified event answered again", "An event modified "
          "(modificationNumber + 1) gets a new answer for the new modification.", modified_event),
    _Spec(Family.E, 30, "Explicit cancellation acknowledged", "A cancelled event (status "
          "cancelled, new modificationNumber) is answered for that modification.",
          cancelled_event),
    _Spec(Family.E, 40, "Implicit cancellation", "An event left out of the next distribute is "
          "cancelled: the VEN does not answer it again.", implicitly_cancelled_event),
    _Spec(Family.E, 50, "Every signal type", "LOAD_CONTROL, LOAD_DISPATCH, ELECTRICITY_PRICE and "
          "CHARGE_STATE events are accepted (200) or refused with 460, one answer each.",
          signal_types),
    _Spec(Family.E, 60, "Several events in one distribute", "A distribute of three events gets "
          "exactly one answer per event.", several_events),
    _Spec(Family.E, 70, "responseRequired never", "An event with responseRequired never gets no "
          "oadrCreatedEvent, while its neighbour does.", response_never),
    _Spec(Family.E, 80, "Target mismatch", "An event targeting a resource the VEN does not have "
          "is opted out or refused, never opted into.", target_mismatch),
    _Spec(Family.A_E, 10, "Randomised start", "An event with a start tolerance (startafter) is "
          "accepted.", randomised_start),
    _Spec(Family.A_E, 20, "Overlapping events, priorities", "Two overlapping events of two "
          "market contexts and priorities are each answered once.", overlapping_priorities),
    _Spec(Family.R, 10, "METADATA reports registered", "The VEN registers TELEMETRY_USAGE or "
          "TELEMETRY_STATUS metadata with sampling rates, reportRequestID 0, no data.",
          registered_reports),
    _Spec(Family.R, 20, "One-shot report", "A one-shot request by oadrCreateReport is answered "
          "oadrCreatedReport, then one oadrUpdateReport naming it.", one_shot_report),
    _Spec(Family.R, 30, "Periodic report, then cancelled", "A periodic request by "
          "oadrCreateReport gets updates no faster than asked, which oadrCancelReport stops.",
          periodic_report),
    _Spec(Family.R, 40, "Report requested in oadrRegisteredReport", "A request carried by "
          "oadrRegisteredReport is answered oadrCreatedReport and reported like one by "
          "oadrCreateReport.", report_in_registered_report),
    _Spec(Family.R, 50, "Two requests, two sets of rIDs", "Two requests in one oadrCreateReport, "
          "each for its own rID, get updates carrying only their own rID.", two_requests),
    _Spec(Family.R, 60, "History report", "A HISTORY_USAGE request for the campaign so far gets "
          "an update with intervals inside the requested window.", history_report),
    _Spec(Family.R, 70, "Unoffered report refused", "A request for a report the VEN never "
          "offered is refused in oadrCreatedReport.", unknown_report),
    _Spec(Family.P, 10, "Availability opt", "The VEN sends an availability schedule "
          "(vavailability with dtstart and duration, an optReason).", availability_opt,
          needs=frozenset({"hook"})),
    _Spec(Family.P, 20, "Opt cancelled", "The VEN cancels an opt it sent with oadrCancelOpt.",
          cancel_opt, needs=frozenset({"hook"})),
    _Spec(Family.P, 30, "Event-scoped opt", "The VEN opts out of one event with an oadrCreateOpt "
          "naming it (no vavailability, no marketContext).", event_opt,
          needs=frozenset({"hook"})),
    _Spec(Family.G, 10, "Several queued messages", "With an event and a report request queued, "
          "the VEN polls until it has both and an oadrResponse, and answers each.",
          queued_messages, (Transport.PULL,)),
    _Spec(Family.G, 20, "TLS 1.2 cipher suites", "Every connection of the VEN uses TLS 1.2 with "
          "one of the two OpenADR suites.", tls_suites, needs=frozenset({"tls"})),
    _Spec(Family.G, 30, "Signed messages", "Every message of the VEN carries a valid XML "
          "signature.", signed_messages, needs=frozenset({"signing"})),
    # Last: a VEN that honours it stops talking to the harness.
    _Spec(Family.N, 90, "VTN cancels the registration", "A VTN-initiated "
          "oadrCancelPartyRegistration is answered oadrCanceledPartyRegistration 200.",
          cancel_registration),
)


def _cases(specs: Sequence[_Spec]) -> tuple[Case, ...]:
    return tuple(case for t in BOTH for s in specs if t in s.transports
                 for case in twins(Role.VEN, s.family, s.number, s.title, s.intent, s.run,
                                   transports=(t,), needs=s.needs))


CASES: Final = _cases(_SPECS)
