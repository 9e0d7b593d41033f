"""The sans-IO VEN agent (ven/agent.py), scripted from the VTN side with typed messages.

No sockets and no real clock: a `Script` holds a fixed `now` the test moves, drives the agent the
way `ven.runner` does (tick, next_message, on_reply/on_refused/on_unreachable) and keeps every
change record the agent hands out. Every message the agent emits goes through
`codec.serialize` (XSD) and `conformance.check` in `Script.take`, so no test can forget it;
every VTN reply is sent through the codec both ways, so the agent sees what the wire gives it.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from oadr import codec, conformance
from oadr.events import at, ordered
from oadr.messages import (
    SERVICE_OF, ActivePeriod, CanceledOpt, CanceledPartyRegistration, CanceledReport, CancelOpt,
    CancelPartyRegistration, CancelReport, CreatedEvent, CreatedOpt, CreatedPartyRegistration,
    CreatedReport, CreateOpt, CreatePartyRegistration, CreateReport, DistributeEvent, Event,
    EventSignal, EventStatus, Interval, ItemBase, Message, OptReason, OptType, Poll,
    QueryRegistration, RegisteredReport, RegisterReport, ReportRequest, RequestEvent,
    RequestReregistration, Response, ResponseMessage, ResponseRequired, SpecifierPayload, Target,
    UpdatedReport, UpdateReport,
)
from adrgate.services import make_engine
from ven.agent import BadReply, History, Outgoing, VenAgent
from ven.fleet import AvailabilitySpec, ResourceSpec, VenSpec
from ven.records import Changes, RegState, VenSnapshot
from ven.reports import HISTORY_USAGE, TELEMETRY_STATUS, TELEMETRY_USAGE, Reading, rid
from ven.signals import winning
from ven.states import backoff
from ven.store import FleetStore

from tests.venkit import PROGRAM, battery, ven_spec

T0 = datetime(2024, 6, 3, 12, 0, tzinfo=UTC)
S, M, H = timedelta(seconds=1), timedelta(minutes=1), timedelta(hours=1)
URL = "http://127.0.0.1:1/OpenADR2/Simple/2.0b"
VTN = "VTN-1"
VEN_ID = "ven-assigned"
REG_ID = "reg-1"
POLL = timedelta(seconds=30)  # the VTN's oadrRequestedOadrPollFreq (the spec polls every 0.3 s)
TO_VEN = Target(ven_ids=(VEN_ID,))
KW = ItemBase(kind="powerReal", description="RealPower", units="W", si_scale="k", hertz=50,
              voltage=230, ac=True)

Msg = TypeVar("Msg")


def spec(**fields: Any) -> VenSpec:
    return ven_spec(URL, "agg-1", **fields)


# --- the scripted VTN -------------------------------------------------------------------


class Meter:
    """A TelemetrySource: every resource draws its baseline; energy counts from T0."""

    def read(self, resource: ResourceSpec, now: datetime) -> Reading:
        hours = (now - T0) / H
        return Reading(power_kw=resource.baseline_kw, energy_kwh=resource.baseline_kw * hours,
                       online=True, manual_override=False)


def wire(msg: Message) -> Message:
    """A VTN message as the agent gets it: through the XSD and back."""
    return codec.parse(codec.serialize(msg)).message


def apply(snapshot: VenSnapshot, changes: Changes) -> VenSnapshot:
    """What the store does with one `take_changes()` batch."""
    if changes.registration is not None:
        snapshot.registration = changes.registration
    for event_id in changes.dropped_events:
        snapshot.events.pop(event_id, None)
    snapshot.events.update(changes.events)
    snapshot.opts.update(changes.opts)
    for request_id in changes.dropped_requests:
        snapshot.requests.pop(request_id, None)
    snapshot.requests.update(changes.requests)
    return snapshot


def make_agent(ven: VenSpec, snapshot: VenSnapshot | None = None, *, seed: int = 7,
               history: History = lambda r_ids, start, end: []) -> VenAgent:
    counter = itertools.count(1)
    return VenAgent(ven, snapshot if snapshot is not None else VenSnapshot(),
                    rng=random.Random(seed), new_id=lambda: f"id-{next(counter)}",
                    telemetry=Meter(), history=history)


@dataclass
class Script:
    """Drives one agent as `ven.runner` does, at a clock the test moves."""

    agent: VenAgent
    now: datetime = T0
    sent: list[Outgoing] = field(default_factory=list)
    snapshot: VenSnapshot = field(default_factory=VenSnapshot)  # the store, kept up to date

    def advance(self, by: timedelta) -> None:
        self.now += by

    def flush(self) -> None:
        apply(self.snapshot, self.agent.take_changes())

    def take(self) -> Outgoing | None:
        """What the agent sends at `now` (ticking first, as the runner does), checked: every
        message passes the XSD and the certification rules."""
        self.agent.tick(self.now)
        out = self.agent.next_message(self.now)
        if out is not None:
            xml = codec.serialize(out.message)
            violations = conformance.check(xml, now=self.now)
            assert violations == [], violations
            self.sent.append(out)
        return out

    def expect(self, cls: type[Msg], *, service: str | None = None) -> tuple[Outgoing, Msg]:
        """The agent's next message at `now`: of type `cls`, on its service, conformant."""
        out = self.take()
        assert out is not None, f"expected {cls.__name__} at {self.now}, the agent is quiet"
        assert isinstance(out.message, cls), \
            f"expected {cls.__name__}, got {type(out.message).__name__}: {out.message}"
        assert out.service == (service or SERVICE_OF[cls])
        return out, out.message

    def reply(self, out: Outgoing, reply: Message) -> None:
        self.agent.on_reply(out, wire(reply), self.now)
        self.flush()

    def exchange(self, cls: type[Msg], answer: Callable[[Msg], Message]) -> Msg:
        out, msg = self.expect(cls)
        self.reply(out, answer(msg))
        return msg

    def quiet(self) -> None:
        out = self.take()
        assert out is None, f"expected silence, the agent sends {out}"

    def poll(self, reply: Message | None = None) -> None:
        """Wait for the next poll and answer it (nothing to deliver by default)."""
        assert self.agent.next_poll is not None
        self.now = max(self.now, self.agent.next_poll)
        self.exchange(Poll, lambda _: reply if reply is not None else ok(""))

    def run(self, until: datetime, *,
            on_update: Callable[[UpdateReport], Message] | None = None) -> list[UpdateReport]:
        """Let time pass to `until`, waking when the agent asks, answering polls with nothing
        and updates with oadrUpdatedReport (or `on_update`); returns the updates sent."""
        updates: list[UpdateReport] = []
        for _ in range(10_000):
            out = self.take()
            if out is None:
                wake = self.agent.next_wakeup(self.now)
                assert wake is None or wake > self.now, "awake with nothing to send"
                if wake is None or wake > until:
                    self.now = until
                    return updates
                self.now = wake
            elif isinstance(out.message, Poll):
                self.reply(out, ok(""))
            else:
                update = out.message
                assert isinstance(update, UpdateReport), update
                updates.append(update)
                self.reply(out, on_update(update) if on_update else UpdatedReport(
                    response=Response(request_id=update.request_id), ven_id=update.ven_id))
        raise AssertionError("the agent never went quiet")


def ok(request_id: str, code: int = 200) -> ResponseMessage:
    return ResponseMessage(response=Response(code=code, description="OK" if code == 200
                                             else "refused", request_id=request_id),
                           ven_id=VEN_ID)


def signal(name: str = "SIMPLE", type_: str = "level", payloads: Sequence[float] = (1.0,),
           *, step: timedelta = 10 * M, item_base: ItemBase | None = None) -> EventSignal:
    return EventSignal(signal_name=name, signal_type=type_, signal_id="s0",
                       intervals=tuple(Interval(uid=i, duration=step, payload=p)
                                       for i, p in enumerate(payloads)),
                       item_base=item_base)


def event(event_id: str = "e1", mod: int = 0, *, sig: EventSignal | None = None,
          start: datetime = T0 + H, status: EventStatus | None = None,
          targets: Target = TO_VEN, priority: int = 0,
          test_event: bool = False, start_after: timedelta | None = None,
          response_required: ResponseRequired = ResponseRequired.ALWAYS) -> Event:
    sig = sig or signal()
    duration = sum((iv.duration for iv in sig.intervals), timedelta(0))
    return Event(event_id=event_id, modification_number=mod, market_context=PROGRAM,
                 created=T0, status=status or EventStatus.FAR,
                 active_period=ActivePeriod(dtstart=start, duration=duration,
                                            start_after=start_after),
                 signals=(sig,), targets=targets, priority=priority, test_event=test_event,
                 response_required=response_required)


def distribute(request_id: str, *events: Event, now: datetime = T0) -> DistributeEvent:
    """All the events that apply to the VEN, rendered at `now` (status, currentValue), ordered."""
    return DistributeEvent(request_id=request_id, vtn_id=VTN,
                           events=tuple(ordered(at(e, now) for e in events)))


def usage_request(request_id: str, granularity: timedelta, report_back: timedelta,
                  specifier: str = TELEMETRY_USAGE,
                  rids: Sequence[str] = (rid("battery-1", "power"),)) -> ReportRequest:
    return ReportRequest(report_request_id=request_id, report_specifier_id=specifier,
                         granularity=granularity, report_back_duration=report_back,
                         specifiers=tuple(SpecifierPayload(r_id=r) for r in rids))


def register(h: Script, *, requests: Sequence[ReportRequest] = (),
             events: Sequence[Event] = ()) -> None:
    """The registration conversation up to the answer to oadrRequestEvent."""
    h.exchange(QueryRegistration, lambda q: CreatedPartyRegistration(
        response=Response(request_id=q.request_id), vtn_id=VTN, poll_freq=POLL))
    h.exchange(CreatePartyRegistration, lambda c: CreatedPartyRegistration(
        response=Response(request_id=c.request_id), vtn_id=VTN, registration_id=REG_ID,
        ven_id=c.ven_id or VEN_ID, poll_freq=POLL))
    h.exchange(RegisterReport, lambda r: RegisteredReport(
        response=Response(request_id=r.request_id), ven_id=VEN_ID,
        report_requests=tuple(requests)))
    if requests:
        h.exchange(CreatedReport, lambda c: ok(c.response.request_id))
    h.exchange(RequestEvent, lambda r: distribute("dist-0", *events, now=h.now))


def ready(ven: VenSpec | None = None, *, seed: int = 7, **kw: Any) -> Script:
    """A registered agent that has answered its first poll."""
    h = Script(make_agent(ven or spec(ven_id=VEN_ID), seed=seed))
    register(h, **kw)
    h.poll()
    return h


def created_event(h: Script) -> CreatedEvent:
    return h.exchange(CreatedEvent, lambda c: ok(c.response.request_id))


def deliver(h: Script, request_id: str, *events: Event) -> None:
    h.poll(distribute(request_id, *events, now=h.now))


# --- 1. registration ----------------------------------------------------------------------


def test_registration_conversation_then_events_then_polls_at_the_vtn_frequency() -> None:
    h = Script(make_agent(spec(ven_id="ven-pre")))
    e1 = event()

    q = h.exchange(QueryRegistration, lambda q: CreatedPartyRegistration(
        response=Response(request_id=q.request_id), vtn_id=VTN, poll_freq=POLL))
    assert (h.agent.reg.state, h.agent.reg.vtn_id) == (RegState.QUERIED, VTN)
    c = h.exchange(CreatePartyRegistration, lambda c: CreatedPartyRegistration(
        response=Response(request_id=c.request_id), vtn_id=VTN, registration_id=REG_ID,
        ven_id="ven-pre", poll_freq=POLL))
    assert (c.ven_name, c.ven_id, c.registration_id, c.http_pull_model) == \
        ("agg-1", "ven-pre", None, True)
    assert c.request_id != q.request_id
    r = h.exchange(RegisterReport, lambda r: RegisteredReport(
        response=Response(request_id=r.request_id), ven_id="ven-pre",
        report_requests=(usage_request("rr-1", 10 * M, 10 * M),)))
    assert r.ven_id == "ven-pre"
    assert {rep.report_name for rep in r.reports} == {
        "METADATA_TELEMETRY_USAGE", "METADATA_TELEMETRY_STATUS", "METADATA_HISTORY_USAGE"}
    assert all(not rep.intervals for rep in r.reports)
    assert set(h.agent.requests) == {"rr-1"}  # style 1: requested in oadrRegisteredReport
    created = h.exchange(CreatedReport, lambda c: ok(c.response.request_id))
    assert (created.response.code, created.response.request_id, created.pending_reports) == \
        (200, r.request_id, ("rr-1",))
    ask = h.exchange(RequestEvent, lambda _: distribute("dist-0", e1, now=h.now))
    assert ask.ven_id == "ven-pre"
    answer = created_event(h)
    assert [(er.event_id, er.request_id) for er in answer.event_responses] == [("e1", "dist-0")]

    # the first poll comes at a random phase within the period, so a fleet does not poll at once
    first = h.agent.next_poll
    assert first is not None and h.now <= first < h.now + POLL
    h.quiet()
    h.poll()
    assert h.agent.reg.state is RegState.READY
    # then at a fixed rate from that phase: oadrRequestedOadrPollFreq, not the spec's 0.3 s
    assert h.agent.next_wakeup(h.now) == first + POLL
    h.advance(POLL + 20 * S)  # a late poll ...
    h.exchange(Poll, lambda p: ok(""))
    assert h.agent.next_poll == first + 2 * POLL  # ... does not shift the phase


def test_without_a_preallocated_ven_id_the_vtn_assigns_one() -> None:
    h = Script(make_agent(spec()))
    h.exchange(QueryRegistration, lambda q: CreatedPartyRegistration(
        response=Response(request_id=q.request_id), vtn_id=VTN, poll_freq=POLL))
    c = h.exchange(CreatePartyRegistration, lambda c: CreatedPartyRegistration(
        response=Response(request_id=c.request_id), vtn_id=VTN, registration_id=REG_ID,
        ven_id="vtn-made", poll_freq=POLL))
    assert c.ven_id is None
    _, r = h.expect(RegisterReport)
    assert r.ven_id == "vtn-made" and h.agent.reg.registration_id == REG_ID


@pytest.mark.parametrize("refusal", ["created", "bare-response"])
def test_refused_registration_backs_off_instead_of_retrying_at_once(refusal: str) -> None:
    # An allowlist VTN refuses an unknown venName with 463, in a CreatedPartyRegistration or
    # (as ours does) a bare oadrResponse: the VEN retries only after a backoff.
    h = Script(make_agent(spec()))
    h.exchange(QueryRegistration, lambda q: CreatedPartyRegistration(
        response=Response(request_id=q.request_id), vtn_id=VTN, poll_freq=POLL))

    def refuse(c: CreatePartyRegistration) -> Message:
        if refusal == "created":
            return CreatedPartyRegistration(response=Response(
                code=463, description="not provisioned", request_id=c.request_id), vtn_id=VTN)
        return ok(c.request_id, code=463)

    h.exchange(CreatePartyRegistration, refuse)
    assert h.agent.reg.state is RegState.QUERIED
    assert "463" in (h.agent.last_error or "")
    h.quiet()
    h.advance(timedelta(seconds=1))
    h.expect(CreatePartyRegistration)


def test_register_report_refused_463_registers_again_after_a_backoff() -> None:
    # The VTN restarted without the registration it gave a moment ago.
    h = Script(make_agent(spec()))
    h.exchange(QueryRegistration, lambda q: CreatedPartyRegistration(
        response=Response(request_id=q.request_id), vtn_id=VTN, poll_freq=POLL))
    h.exchange(CreatePartyRegistration, lambda c: CreatedPartyRegistration(
        response=Response(request_id=c.request_id), vtn_id=VTN, registration_id=REG_ID,
        ven_id=VEN_ID, poll_freq=POLL))
    h.exchange(RegisterReport, lambda r: ok(r.request_id, code=463))
    assert h.agent.reg.state is RegState.UNREGISTERED
    h.quiet()
    h.advance(timedelta(seconds=1))
    h.expect(QueryRegistration)


# --- 2. events ----------------------------------------------------------------------------


def test_event_answered_on_each_modification_and_cancellation_only() -> None:
    h = ready()
    deliver(h, "d-1", event(mod=0))
    first = created_event(h)
    (er,) = first.event_responses
    assert (er.event_id, er.modification_number, er.request_id, er.opt_type, er.code) == \
        ("e1", 0, "d-1", OptType.OPT_IN, 200)
    assert first.ven_id == VEN_ID
    h.quiet()

    deliver(h, "d-2", event(mod=1, sig=signal(payloads=(2.0,))))
    (er,) = created_event(h).event_responses
    assert (er.modification_number, er.request_id) == (1, "d-2")
    assert [s.intervals[0].value for s in h.agent.signals(h.now)] == [2.0]

    deliver(h, "d-3", event(mod=1, sig=signal(payloads=(2.0,))))  # the same again
    h.quiet()
    assert h.snapshot.events["e1"].request_id == "d-2"  # not taken as a new modification

    deliver(h, "d-4", event(mod=2, status=EventStatus.CANCELLED, sig=signal(payloads=(2.0,))))
    (er,) = created_event(h).event_responses
    assert (er.modification_number, er.request_id, er.opt_type) == (2, "d-4", OptType.OPT_IN)
    assert h.agent.signals(h.now) == ()


def test_event_absent_from_the_next_distribute_is_dropped() -> None:
    h = ready()
    e1, e2 = event("e1"), event("e2", start=T0 + 2 * H)
    deliver(h, "d-1", e1, e2)
    answer = created_event(h)
    assert {er.event_id for er in answer.event_responses} == {"e1", "e2"}
    assert {s.event_id for s in h.agent.signals(h.now)} == {"e1", "e2"}

    deliver(h, "d-2", e2)
    h.quiet()  # an implicit cancellation is not answered
    assert set(h.agent.events) == {"e2"} and "e1" not in h.snapshot.events
    assert {s.event_id for s in h.agent.signals(h.now)} == {"e2"}


def test_response_required_never_gets_no_created_event_but_is_executed() -> None:
    h = ready()
    deliver(h, "d-1", event(response_required=ResponseRequired.NEVER))
    h.quiet()
    assert [s.event_id for s in h.agent.signals(h.now)] == ["e1"]


@pytest.mark.parametrize("sig", [
    signal("BID_PRICE", "price", (0.1,),
           item_base=ItemBase(kind="currencyPerKWh", description="currencyPerKWh", units="GBP")),
    signal("x-flexUp", "level", (1.0,)),
], ids=["BID_PRICE", "x-extension"])
def test_unsupported_signal_answered_460_opt_out(sig: EventSignal) -> None:
    h = ready()
    deliver(h, "d-1", event(sig=sig))
    (er,) = created_event(h).event_responses
    assert (er.code, er.opt_type) == (460, OptType.OPT_OUT)
    assert sig.signal_name in er.description
    assert h.agent.signals(h.now) == ()


def test_test_event_opted_in_but_never_wins() -> None:
    h = ready()
    deliver(h, "d-1", event(test_event=True, start=T0))
    (er,) = created_event(h).event_responses
    assert er.opt_type is OptType.OPT_IN
    (sig,) = h.agent.signals(h.now)
    assert sig.test_event
    assert winning(h.agent.signals(h.now), "battery-1", "SIMPLE", h.now) is None


@pytest.mark.parametrize("setpoint,opt", [
    (-100.0, OptType.OPT_OUT),  # 160 kW below a 60 kW baseline; 50 kW flexible
    (30.0, OptType.OPT_IN),  # 30 kW below
], ids=["beyond", "within"])
def test_opt_decided_on_the_flexibility_asked_for(setpoint: float, opt: OptType) -> None:
    h = ready()
    dispatch = signal("LOAD_DISPATCH", "setpoint", (setpoint,), item_base=KW)
    deliver(h, "d-1", event(sig=dispatch))
    (er,) = created_event(h).event_responses
    assert er.opt_type is opt
    reason = h.snapshot.events["e1"].opt_reason
    asked = 60.0 - setpoint
    assert f"requested {asked:.1f} kW" in reason and "available 50.0 kW" in reason
    assert bool(h.agent.signals(h.now)) is (opt is OptType.OPT_IN)


def test_event_targeting_resources_we_do_not_have_is_opted_out() -> None:
    h = ready()
    deliver(h, "d-1", event(targets=Target(resource_ids=("heat-pump-9",))))
    (er,) = created_event(h).event_responses
    assert er.opt_type is OptType.OPT_OUT
    assert h.agent.signals(h.now) == ()


def test_startafter_gives_each_resource_an_offset_within_it() -> None:
    resources = tuple(battery(f"battery-{n}") for n in range(1, 6))
    h = ready(spec(ven_id=VEN_ID, resources=resources))
    deliver(h, "d-1", event(start_after=10 * M))
    created_event(h)
    offsets = dict(h.agent.events["e1"].start_offsets)
    assert set(offsets) == {r.resource_id for r in resources}
    assert all(timedelta(0) <= o <= 10 * M and o.microseconds == 0 for o in offsets.values())
    assert len(set(offsets.values())) > 1  # randomised, not one shared delay
    (sig,) = h.agent.signals(h.now)
    for resource_id, offset in offsets.items():
        assert sig.schedule(resource_id)[0].start == T0 + H + offset


def test_overlapping_events_the_lower_priority_number_wins() -> None:
    h = ready()
    low = event("e-low", priority=2, sig=signal(payloads=(1.0, 1.0, 1.0)))
    high = event("e-high", priority=1, sig=signal(payloads=(3.0,)), start=T0 + H + 10 * M)
    deliver(h, "d-1", low, high)
    created_event(h)
    during = T0 + H + 15 * M
    win = winning(h.agent.signals(h.now), "battery-1", "SIMPLE", during)
    assert win is not None and (win.event_id, win.intervals[0].value) == ("e-high", 3.0)
    after = T0 + H + 25 * M  # the priority-1 event is over: the other governs again
    win = winning(h.agent.signals(h.now), "battery-1", "SIMPLE", after)
    assert win is not None and win.event_id == "e-low"


# --- 3. VTN requests on a poll ------------------------------------------------------------


def create_report(request_id: str, *requests: ReportRequest) -> CreateReport:
    return CreateReport(request_id=request_id, report_requests=requests, ven_id=VEN_ID)


def test_create_report_answered_then_updates_on_the_request_schedule() -> None:
    h = ready()
    h.poll(create_report("cr-1", usage_request("rr-1", M, 5 * M)))
    created = h.exchange(CreatedReport, lambda c: ok(c.response.request_id))
    assert (created.response.code, created.response.request_id, created.pending_reports) == \
        (200, "cr-1", ("rr-1",))
    accepted = h.now

    updates = h.run(accepted + 16 * M)
    assert len(updates) == 3
    for k, update in enumerate(updates):
        (report,) = update.reports
        assert report.report_request_id == "rr-1" and report.report_name == TELEMETRY_USAGE
        window = accepted + k * 5 * M
        assert [iv.dtstart for iv in report.intervals] == [window + i * M for i in range(5)]
        end = window + 5 * M  # sent at the window's end plus up to 10 % jitter
        assert end <= report.created <= end + 0.1 * 5 * M


def test_two_requests_keep_independent_schedules() -> None:
    h = ready()
    h.poll(create_report("cr-1", usage_request("fast", 10 * S, M),
                         usage_request("slow", M, 5 * M, rids=(rid("battery-1", "energy"),))))
    created = h.exchange(CreatedReport, lambda c: ok(c.response.request_id))
    assert set(created.pending_reports) == {"fast", "slow"}
    updates = h.run(h.now + 10 * M + 30 * S)
    by_request: dict[str, list[UpdateReport]] = {}
    for u in updates:
        by_request.setdefault(u.reports[0].report_request_id, []).append(u)
    assert len(by_request["fast"]) == 10 and len(by_request["slow"]) == 2
    for u in by_request["fast"]:
        starts = [iv.dtstart for iv in u.reports[0].intervals]
        assert len(starts) == 6 and {b - a for a, b in itertools.pairwise(starts)} == {10 * S}
        assert {p.r_id for iv in u.reports[0].intervals for p in iv.points} == \
            {rid("battery-1", "power")}
    for u in by_request["slow"]:
        starts = [iv.dtstart for iv in u.reports[0].intervals]
        assert len(starts) == 5 and {b - a for a, b in itertools.pairwise(starts)} == {M}
        assert {p.r_id for iv in u.reports[0].intervals for p in iv.points} == \
            {rid("battery-1", "energy")}


def test_cancel_report_acknowledged_and_updates_stop() -> None:
    h = ready()
    h.poll(create_report("cr-1", usage_request("rr-1", M, 2 * M)))
    h.exchange(CreatedReport, lambda c: ok(c.response.request_id))
    assert len(h.run(h.now + 5 * M)) == 2
    h.poll(CancelReport(request_id="cancel-1", report_request_ids=("rr-1",), ven_id=VEN_ID))
    canceled = h.exchange(CanceledReport, lambda c: ok(c.response.request_id))
    assert (canceled.response.request_id, canceled.pending_reports) == ("cancel-1", ())
    assert h.run(h.now + 10 * M) == []
    assert "rr-1" not in h.snapshot.requests


def test_cancel_report_with_report_to_follow_sends_the_open_window_once() -> None:
    h = ready()
    h.poll(create_report("cr-1", usage_request("rr-1", M, 2 * M)))
    h.exchange(CreatedReport, lambda c: ok(c.response.request_id))
    h.run(h.now + 5 * M)  # windows [0, 2M) and [2M, 4M) sent; [4M, 6M) open
    started = h.now
    h.poll(CancelReport(request_id="cancel-1", report_request_ids=("rr-1",),
                        report_to_follow=True, ven_id=VEN_ID))
    h.exchange(CanceledReport, lambda c: ok(c.response.request_id))
    last = h.exchange(UpdateReport, lambda u: UpdatedReport(
        response=Response(request_id=u.request_id), ven_id=VEN_ID))
    (report,) = last.reports
    assert report.report_request_id == "rr-1"
    assert report.intervals and all(i.dtstart >= started - M for i in report.intervals)
    assert h.run(h.now + 10 * M) == []


def test_history_usage_answered_from_the_samples_in_the_store() -> None:
    store = FleetStore(make_engine("sqlite://"))
    h = Script(make_agent(spec(ven_id=VEN_ID), history=partial(store.samples, "agg-1")))

    def flush() -> None:  # as the runner does: every change set goes to the store
        changes = h.agent.take_changes()
        store.save("agg-1", changes)
        apply(h.snapshot, changes)

    h.flush = flush  # type: ignore[method-assign]
    register(h, requests=(usage_request("rr-1", M, 5 * M),))
    h.run(h.now + 11 * M)  # telemetry sampled every minute, stored as it goes
    since = T0
    h.poll(create_report("cr-2", ReportRequest(
        report_request_id="rr-h", report_specifier_id=HISTORY_USAGE, granularity=timedelta(0),
        report_back_duration=timedelta(0), dtstart=since, duration=10 * M,
        specifiers=(SpecifierPayload(r_id=rid("battery-1", "power")),))))
    h.exchange(CreatedReport, lambda c: ok(c.response.request_id))
    (history,) = [u for u in h.run(h.now + M) if u.reports[0].report_request_id == "rr-h"]
    report = history.reports[0]
    assert report.report_name == HISTORY_USAGE
    stored = store.samples("agg-1", [rid("battery-1", "power")], since, since + 10 * M)
    assert len(stored) >= 9
    assert [i.dtstart for i in report.intervals] == [s.at for s in stored]
    assert all(i.points[0].value == battery().baseline_kw for i in report.intervals)
    store.close()


def test_unknown_report_specifier_answered_461() -> None:
    h = ready()
    h.poll(create_report("cr-1", usage_request("rr-x", M, M, specifier="NO_SUCH_REPORT"),
                         usage_request("rr-1", M, M, specifier=TELEMETRY_STATUS,
                                       rids=(rid("battery-1", "status"),))))
    created = h.exchange(CreatedReport, lambda c: ok(c.response.request_id))
    assert created.response.code == 461
    assert created.pending_reports == ("rr-1",)  # the acceptable one is taken all the same


def test_piggy_backed_cancel_in_updated_report_stops_that_request() -> None:
    h = ready()
    h.poll(create_report("cr-1", usage_request("rr-1", M, 2 * M),
                         usage_request("rr-2", M, 2 * M, rids=(rid("battery-1", "energy"),))))
    h.exchange(CreatedReport, lambda c: ok(c.response.request_id))

    def cancel_rr1(update: UpdateReport) -> Message:
        cancel = None
        if update.reports[0].report_request_id == "rr-1":
            cancel = CancelReport(request_id="cancel-1", report_request_ids=("rr-1",))
        return UpdatedReport(response=Response(request_id=update.request_id), ven_id=VEN_ID,
                             cancel_report=cancel)

    updates = h.run(h.now + 9 * M, on_update=cancel_rr1)
    ids = [u.reports[0].report_request_id for u in updates]
    assert ids.count("rr-1") == 1 and ids.count("rr-2") == 4
    assert set(h.agent.requests) == {"rr-2"}


def test_request_reregistration_acknowledged_then_registers_with_the_same_ids() -> None:
    h = ready()
    h.poll(RequestReregistration(ven_id=VEN_ID))
    _, ack = h.expect(ResponseMessage, service="EiRegisterParty")
    assert ack.response.code == 200
    h.reply(h.sent[-1], ok(""))
    c = h.exchange(CreatePartyRegistration, lambda c: CreatedPartyRegistration(
        response=Response(request_id=c.request_id), vtn_id=VTN, registration_id=REG_ID,
        ven_id=VEN_ID, poll_freq=POLL))
    assert (c.ven_id, c.registration_id) == (VEN_ID, REG_ID)
    h.exchange(RegisterReport, lambda r: RegisteredReport(
        response=Response(request_id=r.request_id), ven_id=VEN_ID))
    h.expect(RequestEvent)


def test_cancel_party_registration_acknowledged_then_silence() -> None:
    h = ready()
    h.poll(CancelPartyRegistration(request_id="cpr-1", registration_id=REG_ID, ven_id=VEN_ID))
    canceled = h.exchange(CanceledPartyRegistration, lambda c: ok(c.response.request_id))
    assert (canceled.response.request_id, canceled.registration_id) == ("cpr-1", REG_ID)
    assert h.agent.reg.state is RegState.CANCELLED
    assert h.snapshot.registration.state is RegState.CANCELLED
    h.advance(H)
    h.quiet()
    assert h.agent.next_wakeup(h.now) is None


def test_cancellation_answered_463_still_leaves_the_ven_cancelled() -> None:
    # The VTN that cancelled us may no longer know us when our answer arrives.
    h = ready()
    h.poll(CancelPartyRegistration(request_id="cpr-1", registration_id=REG_ID, ven_id=VEN_ID))
    h.exchange(CanceledPartyRegistration, lambda c: ok(c.response.request_id, code=463))
    assert h.agent.reg.state is RegState.CANCELLED
    h.advance(H)
    h.quiet()


def test_poll_answered_463_registers_again_from_query_registration() -> None:
    h = ready(requests=(usage_request("rr-1", 10 * M, 10 * M),))
    h.poll(ok("", code=463))
    h.expect(QueryRegistration)
    assert h.agent.requests == {}  # the VTN's requests went with its memory of us
    register(h)
    assert h.agent.reg.state is RegState.READY


def test_answer_refused_463_is_dropped_and_the_agent_registers_again() -> None:
    h = ready()
    h.poll(create_report("cr-1", usage_request("rr-1", M, M)))
    h.exchange(CreatedReport, lambda c: ok(c.response.request_id, code=463))
    h.exchange(QueryRegistration, lambda q: CreatedPartyRegistration(
        response=Response(request_id=q.request_id), vtn_id=VTN, poll_freq=POLL))
    h.expect(CreatePartyRegistration)  # not the stale oadrCreatedReport again


def test_request_event_answered_with_an_empty_oadr_response_goes_on_to_poll() -> None:
    # openleadr's VTN answers oadrResponse instead of an empty oadrDistributeEvent.
    h = ready()
    deliver(h, "d-1", event())
    assert set(h.agent.events) == {"e1"}
    h.agent.start(h.now)  # as after a restart: resync
    h.exchange(RequestEvent, lambda r: ok(r.request_id))
    assert not h.snapshot.registration.resync
    assert h.agent.events == {} and "e1" not in h.snapshot.events  # no events: none held
    h.poll()


def test_request_event_refused_with_an_error_code_backs_off() -> None:
    h = ready()
    h.agent.start(h.now)
    out, ask = h.expect(RequestEvent)
    with pytest.raises(BadReply):
        h.agent.on_reply(out, wire(ok(ask.request_id, code=452)), h.now)
    h.agent.on_refused(out, "BadReply", h.now)
    h.quiet()
    assert h.agent.reg.resync


# --- 4. opts ------------------------------------------------------------------------------

MAINTENANCE = AvailabilitySpec(opt_id="maint-1", opt_type=OptType.OPT_OUT,
                               reason=OptReason.NOT_PARTICIPATING, start=T0 + 2 * H,
                               duration=2 * H, resources=("battery-1",))


def test_availability_sent_as_create_opt_stamped_when_sent_and_acked() -> None:
    h = Script(make_agent(spec(ven_id=VEN_ID, availability=(MAINTENANCE,))))
    register(h)
    h.advance(3 * M)  # createdDateTime must be the sending time, not the decision time
    out, opt = h.expect(CreateOpt)
    assert (opt.opt_id, opt.opt_type, opt.opt_reason, opt.event_id) == \
        ("maint-1", OptType.OPT_OUT, OptReason.NOT_PARTICIPATING, None)
    assert opt.created == h.now
    assert [(a.dtstart, a.duration) for a in opt.availability] == [(T0 + 2 * H, 2 * H)]
    assert opt.targets.resource_ids == ("battery-1",)
    h.reply(out, CreatedOpt(response=Response(request_id=opt.request_id), opt_id="maint-1"))
    assert h.snapshot.opts["maint-1"].acked
    h.expect(Poll)


def test_restart_without_the_window_cancels_the_opt() -> None:
    h = Script(make_agent(spec(ven_id=VEN_ID, availability=(MAINTENANCE,))))
    register(h)
    h.exchange(CreateOpt, lambda o: CreatedOpt(response=Response(request_id=o.request_id),
                                               opt_id=o.opt_id))
    h.poll()

    again = Script(make_agent(spec(ven_id=VEN_ID), h.snapshot), now=h.now + M,
                   snapshot=h.snapshot)
    again.agent.start(again.now)
    again.exchange(RequestEvent, lambda r: distribute("dist-1", now=again.now))
    cancel = again.exchange(CancelOpt, lambda c: CanceledOpt(
        response=Response(request_id=c.request_id), opt_id=c.opt_id))
    assert (cancel.opt_id, cancel.ven_id) == ("maint-1", VEN_ID)
    assert again.snapshot.opts["maint-1"].cancel_acked
    again.quiet()  # nothing more owed: the next message is the poll, at its phase
    again.poll()


def test_window_opening_during_an_opted_in_event_sends_an_event_opt_out() -> None:
    e1 = event(start=T0 + H, sig=signal(payloads=(3.0,) * 12))  # T0+1h .. T0+3h
    h = Script(make_agent(spec(ven_id=VEN_ID)))
    register(h, events=(e1,))
    created_event(h)
    assert h.agent.events["e1"].opt is OptType.OPT_IN

    # The fleet file gains a maintenance window from T0+2h; the VEN restarts before it opens.
    again = Script(make_agent(spec(ven_id=VEN_ID, availability=(MAINTENANCE,)), h.snapshot),
                   now=h.now + M, snapshot=h.snapshot)
    again.agent.start(again.now)
    again.exchange(RequestEvent, lambda r: distribute("dist-1", e1, now=again.now))
    sent: list[CreateOpt] = []
    for _ in range(2):
        sent.append(again.exchange(CreateOpt, lambda o: CreatedOpt(
            response=Response(request_id=o.request_id), opt_id=o.opt_id)))
    event_opt = next(o for o in sent if o.event_id is not None)
    assert (event_opt.event_id, event_opt.modification_number, event_opt.opt_type) == \
        ("e1", 0, OptType.OPT_OUT)
    assert event_opt.market_context is None and event_opt.availability == ()
    assert event_opt.targets.resource_ids == ("battery-1",)
    assert again.agent.events["e1"].opt is OptType.OPT_OUT
    assert again.agent.signals(again.now) == ()

    again.now = MAINTENANCE.start  # the window opens: nothing more to say
    again.expect(Poll)
    again.reply(again.sent[-1], ok(""))
    again.quiet()


# --- 5. failures --------------------------------------------------------------------------


def test_unreachable_backs_off_exponentially_with_jitter_and_loses_nothing() -> None:
    h = ready()
    deliver(h, "d-1", event())
    delays = []
    first: CreatedEvent | None = None
    for _ in range(6):
        out, answer = h.expect(CreatedEvent)
        first = first or answer
        assert answer.event_responses == first.event_responses  # derived again, the same
        h.agent.on_unreachable(out, "connection refused", h.now)
        retry = h.agent.next_wakeup(h.now)
        assert retry is not None and retry > h.now
        delays.append(retry - h.now)
        h.advance(retry - h.now - timedelta(milliseconds=1))
        h.quiet()
        h.advance(timedelta(milliseconds=1))
    for n, delay in enumerate(delays):
        ceiling = S * 2 ** n
        assert ceiling / 2 <= delay <= ceiling
    assert len({d / (S * 2 ** n) for n, d in enumerate(delays)}) > 1  # jittered, not fixed
    created_event(h)
    assert h.agent.failures == 0
    assert h.snapshot.events["e1"].answered_mod == 0


def test_backoff_is_capped() -> None:
    rng = random.Random(1)
    assert all(backoff(n, rng) <= timedelta(minutes=5) for n in range(40))
    assert backoff(30, random.Random(2)) >= timedelta(minutes=2, seconds=30)


def test_create_opt_refused_by_a_vtn_without_eiopt_is_not_resent() -> None:
    h = Script(make_agent(spec(ven_id=VEN_ID, availability=(MAINTENANCE,))))
    register(h)
    out, _ = h.expect(CreateOpt)
    h.agent.on_refused(out, "HTTP 404", h.now)
    h.flush()
    h.run(h.now + 10 * M)
    assert [type(o.message) for o in h.sent].count(CreateOpt) == 1
    assert sum(isinstance(o.message, Poll) for o in h.sent) > 10  # polling carries on


def test_wrong_reply_type_is_a_refusal() -> None:
    h = Script(make_agent(spec(ven_id=VEN_ID)))
    out, _ = h.expect(QueryRegistration)
    with pytest.raises(BadReply):
        h.agent.on_reply(out, wire(ok("")), h.now)
    h.agent.on_refused(out, "BadReply", h.now)  # as ven.runner does
    h.quiet()  # backing off, not spinning
    wake = h.agent.next_wakeup(h.now)
    assert wake is not None and wake > h.now
    h.now = wake
    h.expect(QueryRegistration)


def test_create_opt_answered_with_the_wrong_type_is_settled_not_looped() -> None:
    h = Script(make_agent(spec(ven_id=VEN_ID, availability=(MAINTENANCE,))))
    register(h)
    out, _ = h.expect(CreateOpt)
    with pytest.raises(BadReply):
        h.agent.on_reply(out, wire(distribute("d-x", now=h.now)), h.now)
    h.agent.on_refused(out, "BadReply", h.now)
    h.quiet()  # not resent: the next message is the poll
    h.poll()


# --- 6. restart ---------------------------------------------------------------------------


def test_restart_from_the_stored_changes_resyncs_events_without_registering() -> None:
    h = Script(make_agent(spec(ven_id=VEN_ID, availability=(MAINTENANCE,))))
    e1 = event()
    register(h, requests=(usage_request("rr-1", M, 2 * M),), events=(e1,))
    created_event(h)
    h.exchange(CreateOpt, lambda o: CreatedOpt(response=Response(request_id=o.request_id),
                                               opt_id=o.opt_id))
    h.poll()
    stored = h.snapshot
    assert stored.registration.state is RegState.READY
    assert set(stored.events) == {"e1"} and set(stored.requests) == {"rr-1"}

    again = Script(make_agent(spec(ven_id=VEN_ID, availability=(MAINTENANCE,)), stored),
                   now=h.now + M, snapshot=stored)
    again.agent.start(again.now)
    ask = again.exchange(RequestEvent, lambda r: distribute("dist-1", e1, now=again.now))
    assert ask.ven_id == VEN_ID
    again.quiet()  # e1 already answered, the opt already acked: nothing owed but the poll
    again.poll()
    assert [s.event_id for s in again.agent.signals(again.now)] == ["e1"]
    updates = again.run(again.now + 3 * M)
    assert updates and all(u.reports[0].report_request_id == "rr-1" for u in updates)
