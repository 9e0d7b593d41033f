"""Interop: our VEN fleet against openleadr 0.5.36's `OpenADRServer`, an independent VTN.

The server is used as shipped (its constructor, handlers, `add_event`, `add_raw_event`,
`cancel_event`), on 127.0.0.1 and a free port, in this process. openleadr has no API for two
things the tests need, so they edit the queued event the way its own `cancel_event` does (change
the event, bump modificationNumber, flag the VEN's queue as updated): an event modification, and
an activePeriod tolerance/startafter (`add_raw_event` rebuilds the activePeriod from the intervals,
dropping it; domain.md section 9).

What openleadr's VTN does, and these tests rely on:
- it answers oadrQueryRegistration and accepts a pre-allocated venID when its
  `on_create_party_registration` handler returns it;
- it requests reports in oadrRegisteredReport (from `on_register_report`); an oadrCreateReport on
  a poll only comes from an `on_poll` handler, which also turns `add_event` off;
- event delivery is fire-once, opt callbacks are keyed by event ID and fire once;
- it answers oadrRequestEvent with an oadrResponse when it has no event for the VEN;
- it has no EiOpt route (HTTP 404).
Every message our fleet sends is checked for conformance by `running_fleet`. openleadr keeps
`ven_lookup` on its VTNService class: the fixture puts back what was there before.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from openleadr import OpenADRServer, objects, utils  # type: ignore[import-untyped]
from openleadr.service import VTNService  # type: ignore[import-untyped]

from oadr import codec
from oadr.messages import CreatedEvent, EventStatus, OptReason, OptType
from ven.fleet import AvailabilitySpec
from ven.records import GridSignal, RegState, SignalInterval, VenEvent
from ven.signals import winning

from tests.venkit import PROGRAM, RunningFleet, battery, running_fleet, ven_spec
from tests.vtnkit import utcnow, wait_for

VTN_ID = "OL-VTN-1"
POLL = timedelta(seconds=1)  # openleadr writes durations in whole seconds


@dataclass
class Update:
    """One oadrUpdateReport report as openleadr's VTN handed it over."""

    arrived: datetime
    request_id: str  # reportRequestID
    values: list[tuple[datetime, str, float]]  # (interval dtstart, rID, value)


@dataclass
class OpenleadrVtn:
    server: Any  # OpenADRServer: openleadr ships no type information
    url: str
    vens: dict[str, dict[str, Any]] = field(default_factory=dict)  # venID -> VEN record
    registrations: list[dict[str, Any]] = field(default_factory=list)  # payloads received
    opts: list[tuple[str, str, str]] = field(default_factory=list)  # (venID, eventID, optType)

    def ven_id(self, name: str) -> str | None:
        return next((v for v, r in self.vens.items() if r["ven_name"] == name), None)

    def on_opt(self, ven_id: str, event_id: str, opt_type: str) -> None:
        self.opts.append((ven_id, event_id, opt_type))

    def opt_of(self, ven_id: str, event_id: str) -> str | None:
        return next((o for v, e, o in self.opts if (v, e) == (ven_id, event_id)), None)

    def add_event(self, ven_id: str, signal_name: str, signal_type: str,
                  intervals: Sequence[tuple[datetime, timedelta, float]], **kw: Any) -> str:
        """openleadr's `add_event`, in PROGRAM, with our opt callback."""
        kw.setdefault("market_context", PROGRAM)
        event_id: str = self.server.add_event(
            ven_id=ven_id, signal_name=signal_name, signal_type=signal_type,
            intervals=[{"dtstart": s, "duration": d, "signal_payload": v} for s, d, v in intervals],
            callback=self.on_opt, **kw)
        return event_id

    def add_raw_event(self, ven_id: str, signals: Sequence[objects.EventSignal], *,
                      priority: int = 0, test_event: bool = False) -> str:
        """openleadr's `add_raw_event`: for measurements, several signals, priority, testEvent."""
        event_id = str(utils.generate_id())
        event = objects.Event(
            event_descriptor=objects.EventDescriptor(
                event_id=event_id, modification_number=0, market_context=PROGRAM,
                event_status="far", priority=priority, test_event=test_event),
            event_signals=list(signals), targets=[objects.Target(ven_id=ven_id)])
        self.server.add_raw_event(ven_id=ven_id, event=event, callback=self.on_opt)
        return event_id

    def queued(self, ven_id: str, event_id: str) -> Any:
        event = utils.find_by(self.server.events[ven_id], "event_descriptor.event_id", event_id)
        assert event, f"openleadr has no event {event_id} queued for {ven_id}"
        return event

    def modify(self, ven_id: str, event_id: str, change: Callable[[Any], None]) -> int:
        """Change a queued event as `cancel_event` does: edit it, bump modificationNumber, flag
        the VEN's queue; returns the new modificationNumber."""
        event = self.queued(ven_id, event_id)
        change(event)
        mod: int = utils.increment_event_modification_number(event)
        self.server.events_updated[ven_id] = True
        return mod


@asynccontextmanager
async def openleadr_vtn(*, vtn_id: str = VTN_ID, poll_freq: timedelta = POLL,
                        preallocated: Mapping[str, str] | None = None,
                        handlers: Mapping[str, Callable[..., Any]] | None = None,
                        ) -> AsyncIterator[OpenleadrVtn]:
    """openleadr's VTN on 127.0.0.1 (a free port). It registers every VEN; a VEN that brings a
    venID is accepted only with the one `preallocated` gives its venName."""
    known = dict(preallocated or {})
    # openleadr writes ven_lookup onto the VTNService class: put back what was there before.
    before = vars(VTNService).get("ven_lookup")
    vens: dict[str, dict[str, Any]] = {}

    def ven_lookup(ven_id: str) -> dict[str, Any] | None:  # called with ven_id=...
        return vens.get(ven_id)

    server = OpenADRServer(vtn_id=vtn_id, http_host="127.0.0.1", http_port=0,
                           requested_poll_freq=poll_freq, ven_lookup=ven_lookup)
    vtn = OpenleadrVtn(server=server, url="", vens=vens)

    def on_create_party_registration(payload: dict[str, Any]) -> tuple[str, str] | bool:
        vtn.registrations.append(payload)
        name, ven_id = payload["ven_name"], payload.get("ven_id")
        if ven_id is not None and known.get(name) != ven_id:
            return False
        ven_id = ven_id or uuid.uuid4().hex
        registration_id = uuid.uuid4().hex
        vtn.vens[ven_id] = {"ven_id": ven_id, "ven_name": name, "registration_id": registration_id}
        return ven_id, registration_id

    server.add_handler("on_create_party_registration", on_create_party_registration)
    for name, handler in (handlers or {}).items():
        server.add_handler(name, handler)
    await server.run()
    vtn.url = f"http://127.0.0.1:{server.app_runner.addresses[0][1]}/OpenADR2/Simple/2.0b"
    try:
        yield vtn
    finally:
        await server.stop()
        if before is None:
            del VTNService.ven_lookup
        else:
            VTNService.ven_lookup = before


async def registered(vtn: OpenleadrVtn, running: RunningFleet, name: str) -> str:
    """Wait until `name` is registered and has registered its reports; its venID."""
    agent = running.agent(name)
    await wait_for(lambda: agent.reg.state is RegState.READY, what=f"{name} registered")
    ven_id = vtn.ven_id(name)
    assert ven_id is not None and agent.reg.ven_id == ven_id
    return ven_id


async def wait_for_or_none(predicate: Callable[[], Any], *, timeout: float) -> Any:
    """`wait_for`, returning None at the timeout so the assertion can show what happened."""
    try:
        return await wait_for(predicate, timeout=timeout)
    except AssertionError:
        return None


def minute(n: int = 1) -> datetime:
    """A whole-second UTC time `n` minutes ahead: openleadr writes microseconds, we keep them."""
    return (utcnow() + timedelta(minutes=n)).replace(microsecond=0)


def signals_of(running: RunningFleet, name: str, event_id: str) -> list[GridSignal]:
    return [s for s in running.agent(name).signals(utcnow()) if s.event_id == event_id]


def ven_event(running: RunningFleet, name: str, event_id: str) -> VenEvent | None:
    ve: VenEvent | None = running.agent(name).events.get(event_id)
    return ve


def answered(running: RunningFleet, name: str, event_id: str, mod: int) -> VenEvent | None:
    """The VEN's event once the VTN has acknowledged our answer to modification `mod`."""
    ve = ven_event(running, name, event_id)
    return ve if ve is not None and ve.answered_mod == mod else None


def created_events(running: RunningFleet, name: str) -> list[CreatedEvent]:
    out = []
    for ven, service, body in running.wire.sent:
        if ven == name and service == "EiEvent":
            msg = codec.parse(body).message
            if isinstance(msg, CreatedEvent):
                out.append(msg)
    return out


def schedule(intervals: Sequence[tuple[datetime, timedelta, float]]) -> tuple[SignalInterval, ...]:
    return tuple(SignalInterval(start=s, end=s + d, value=v) for s, d, v in intervals)


KW = objects.Measurement(name="powerReal", description="RealPower", unit="W", scale="k",
                         power_attributes=objects.PowerAttributes(hertz=50, voltage=230, ac=True))
GBP_PER_KWH = objects.Measurement(name="currencyPerKWh", description="currencyPerKWh", unit="GBP",
                                  scale="none")


def signal(name: str, signal_type: str, intervals: Sequence[tuple[datetime, timedelta, float]],
           measurement: objects.Measurement | None = None) -> objects.EventSignal:
    return objects.EventSignal(
        intervals=[objects.Interval(dtstart=s, duration=d, signal_payload=v)
                   for s, d, v in intervals],
        signal_name=name, signal_type=signal_type, signal_id=utils.generate_id(),
        measurement=measurement)


def contiguous(start: datetime, step: timedelta, values: Sequence[float]
               ) -> list[tuple[datetime, timedelta, float]]:
    return [(start + i * step, step, v) for i, v in enumerate(values)]


# --- 1. registration ------------------------------------------------------------------------


async def test_registers_with_openleadr_vtn_by_ven_name() -> None:
    async with openleadr_vtn() as vtn, running_fleet([ven_spec(vtn.url, "agg-ol-1")]) as f:
        ven_id = await registered(vtn, f, "agg-ol-1")
        agent = f.agent("agg-ol-1")
        assert agent.reg.vtn_id == VTN_ID
        assert agent.reg.poll_freq == POLL
        assert agent.reg.registration_id == vtn.vens[ven_id]["registration_id"]
        [payload] = vtn.registrations
        assert payload["ven_name"] == "agg-ol-1" and payload.get("ven_id") is None
        assert payload["http_pull_model"] is True
        # METADATA reports reached openleadr's report service.
        names = {r["report_name"] for r in vtn.server.registered_reports[ven_id]}
        assert {"TELEMETRY_USAGE", "TELEMETRY_STATUS"} <= names
        types = f.wire.types("agg-ol-1")
        assert types[:3] == ["oadrQueryRegistration", "oadrCreatePartyRegistration",
                             "oadrRegisterReport"]
        # The VTN's oadrRequestedOadrPollFreq (1 s) replaces the fleet file's 0.3 s.
        before = f.wire.types("agg-ol-1").count("oadrPoll")
        await asyncio.sleep(3.2)
        assert 2 <= f.wire.types("agg-ol-1").count("oadrPoll") - before <= 4


async def test_pre_allocated_ven_id_accepted_by_openleadr_vtn() -> None:
    async with openleadr_vtn(preallocated={"agg-ol-pre": "PRE-ALLOCATED-7"}) as vtn, \
            running_fleet([ven_spec(vtn.url, "agg-ol-pre", ven_id="PRE-ALLOCATED-7")]) as f:
        ven_id = await registered(vtn, f, "agg-ol-pre")
        assert ven_id == "PRE-ALLOCATED-7"
        [payload] = vtn.registrations
        assert (payload["ven_name"], payload["ven_id"]) == ("agg-ol-pre", "PRE-ALLOCATED-7")


async def test_polls_when_openleadr_answers_request_event_with_oadr_response() -> None:
    """openleadr answers oadrRequestEvent with a plain oadrResponse (200) while it has no event
    for the VEN. That is "no events": the VEN must go on to poll, not retry the request."""
    async with openleadr_vtn() as vtn, running_fleet([ven_spec(vtn.url, "agg-ol-idle")]) as f:
        agent = f.agent("agg-ol-idle")
        await wait_for(lambda: agent.reg.state is RegState.READY, what="registered")
        polled = await wait_for_or_none(lambda: "oadrPoll" in f.wire.types("agg-ol-idle"),
                                        timeout=5)
        assert polled, (f.wire.types("agg-ol-idle"), agent.last_error)
        assert f.wire.types("agg-ol-idle").count("oadrRequestEvent") == 1
        assert agent.last_error is None


# --- 2. events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    name: str
    signal_type: str
    values: tuple[float, ...]
    measurement: objects.Measurement | None
    unit: str | None
    opt: str


KINDS = [
    pytest.param(Kind("SIMPLE", "level", (1.0,), None, None, "optIn"), id="simple"),
    pytest.param(Kind("LOAD_CONTROL", "x-loadControlCapacity", (0.4, 0.6), None, None, "optIn"),
                 id="load-control-capacity"),
    pytest.param(Kind("LOAD_DISPATCH", "setpoint", (20.0,), KW, "kW", "optIn"),
                 id="load-dispatch-kw"),
    # 60 kW baseline to -500 kW is far beyond the battery group's 50 kW of flexibility.
    pytest.param(Kind("LOAD_DISPATCH", "setpoint", (-500.0,), KW, "kW", "optOut"),
                 id="load-dispatch-beyond-flexibility"),
    pytest.param(Kind("ELECTRICITY_PRICE", "price", (0.12, 0.31, 0.08, 0.22, 0.15, 0.4),
                      GBP_PER_KWH, "GBP/kWh", "optIn"), id="price-6-intervals"),
]


@pytest.mark.parametrize("kind", KINDS)
async def test_event_answered_and_signals_match(kind: Kind) -> None:
    async with openleadr_vtn() as vtn, running_fleet([ven_spec(vtn.url, "agg-ol-ev")]) as f:
        ven_id = await registered(vtn, f, "agg-ol-ev")
        intervals = contiguous(minute(2), timedelta(minutes=15), kind.values)
        if kind.measurement is None:
            event_id = vtn.add_event(ven_id, kind.name, kind.signal_type, intervals)
        else:
            event_id = vtn.add_raw_event(
                ven_id, [signal(kind.name, kind.signal_type, intervals, kind.measurement)])
        opt = await wait_for(lambda: vtn.opt_of(ven_id, event_id), what="the VEN's opt")
        assert opt == kind.opt
        ve = await wait_for(lambda: answered(f, "agg-ol-ev", event_id, 0), what="reply taken")
        assert ve.opt == kind.opt
        if kind.opt == "optOut":
            assert signals_of(f, "agg-ol-ev", event_id) == []
            return
        [got] = signals_of(f, "agg-ol-ev", event_id)
        assert (got.program, got.signal_name, got.signal_type, got.unit) == (
            PROGRAM, kind.name, kind.signal_type, kind.unit)
        assert got.intervals == schedule(intervals)
        assert got.resources == ("battery-1",) and got.priority == 0 and not got.test_event


async def test_interval_dtstarts_with_a_gap_are_not_misread() -> None:
    """openleadr takes each interval's own dtstart (a gap between intervals is allowed there);
    OpenADR intervals follow each other. Either the VEN keeps openleadr's times or it refuses
    the event; it must not move the second interval to the end of the first."""
    async with openleadr_vtn() as vtn, running_fleet([ven_spec(vtn.url, "agg-ol-gap")]) as f:
        ven_id = await registered(vtn, f, "agg-ol-gap")
        start, step = minute(2), timedelta(minutes=15)
        intervals = [(start, step, 0.5), (start + 2 * step, step, 0.2)]  # a 15 minute gap
        event_id = vtn.add_event(ven_id, "LOAD_CONTROL", "x-loadControlCapacity", intervals)
        agent = f.agent("agg-ol-gap")
        await wait_for(lambda: vtn.opt_of(ven_id, event_id) or event_id in agent.events
                       or "(454)" in (agent.last_error or ""),
                       what="the event taken or refused")
        got = signals_of(f, "agg-ol-gap", event_id)
        assert got == [] or got[0].intervals == schedule(intervals), (
            f"sent {schedule(intervals)}, the VEN holds {got[0].intervals}")


async def test_modification_and_cancellation_reach_the_ven() -> None:
    async with openleadr_vtn() as vtn, running_fleet([ven_spec(vtn.url, "agg-ol-mod")]) as f:
        ven_id = await registered(vtn, f, "agg-ol-mod")
        intervals = contiguous(minute(5), timedelta(minutes=10), (1.0, 2.0))
        event_id = vtn.add_event(ven_id, "SIMPLE", "level", intervals)
        await wait_for(lambda: vtn.opt_of(ven_id, event_id), what="answer to mod 0")

        def deeper(event: Any) -> None:
            for iv in event.event_signals[0].intervals:
                iv["signal_payload"] = 3.0

        mod = vtn.modify(ven_id, event_id, deeper)
        assert mod == 1

        ve = await wait_for(lambda: answered(f, "agg-ol-mod", event_id, 1),
                            what="modification 1 answered")
        assert ve.event.modification_number == 1 and ve.opt is OptType.OPT_IN
        [got] = signals_of(f, "agg-ol-mod", event_id)
        assert got.modification_number == 1 and [i.value for i in got.intervals] == [3.0, 3.0]
        assert vtn.queued(ven_id, event_id).event_descriptor.modification_number == 1

        vtn.server.cancel_event(ven_id, event_id)
        ve = await wait_for(lambda: answered(f, "agg-ol-mod", event_id, 2),
                            what="cancellation answered")
        assert ve.event.status is EventStatus.CANCELLED and ve.event.modification_number == 2
        assert signals_of(f, "agg-ol-mod", event_id) == []
        # openleadr drops a cancelled event once the VEN acknowledged the cancellation.
        await wait_for(lambda: not vtn.server.events[ven_id], what="openleadr dropped it")
        answers = [(r.event_id, r.modification_number, r.opt_type)
                   for m in created_events(f, "agg-ol-mod") for r in m.event_responses]
        assert answers == [(event_id, 0, OptType.OPT_IN), (event_id, 1, OptType.OPT_IN),
                           (event_id, 2, OptType.OPT_IN)]
        assert f.agent("agg-ol-mod").last_error is None


async def test_randomised_start_within_startafter_per_resource() -> None:
    resources = tuple(battery(f"battery-{i}") for i in range(1, 5))
    window = timedelta(minutes=5)
    async with openleadr_vtn() as vtn, \
            running_fleet([ven_spec(vtn.url, "agg-ol-rnd", resources=resources)]) as f:
        ven_id = await registered(vtn, f, "agg-ol-rnd")
        intervals = contiguous(minute(10), timedelta(minutes=30), (0.5,))
        event_id = vtn.add_event(ven_id, "LOAD_CONTROL", "x-loadControlCapacity", intervals)
        # add_event has no startafter; put it on the queued event before the VEN polls.
        vtn.queued(ven_id, event_id).active_period["tolerance"] = {"startafter": window}
        assert await wait_for(lambda: vtn.opt_of(ven_id, event_id), what="answer") == "optIn"
        ve = ven_event(f, "agg-ol-rnd", event_id)
        assert ve is not None and ve.event.active_period.start_after == window
        offsets = dict(ve.start_offsets)
        assert set(offsets) == {r.resource_id for r in resources}
        assert all(timedelta(0) <= o <= window for o in offsets.values()), offsets
        assert len(set(offsets.values())) > 1, offsets  # drawn per resource
        [got] = signals_of(f, "agg-ol-rnd", event_id)
        assert dict(got.start_offsets) == offsets
        for r in resources:
            first = got.schedule(r.resource_id)[0]
            assert first.start == intervals[0][0] + offsets[r.resource_id]


async def test_priority_and_test_event() -> None:
    async with openleadr_vtn() as vtn, running_fleet([ven_spec(vtn.url, "agg-ol-prio")]) as f:
        ven_id = await registered(vtn, f, "agg-ol-prio")
        start = utcnow().replace(microsecond=0) + timedelta(seconds=1)
        span = contiguous(start, timedelta(minutes=30), (0.7,))
        low = vtn.add_raw_event(ven_id, [signal("LOAD_CONTROL", "x-loadControlCapacity", span)],
                                priority=5)
        high = vtn.add_raw_event(ven_id, [signal("LOAD_CONTROL", "x-loadControlCapacity",
                                                 [(s, d, 0.3) for s, d, _ in span])], priority=1)
        test = vtn.add_raw_event(ven_id, [signal("LOAD_CONTROL", "x-loadControlCapacity",
                                                 [(s, d, 0.0) for s, d, _ in span])],
                                 test_event=True)
        await wait_for(lambda: all(vtn.opt_of(ven_id, e) for e in (low, high, test)),
                       what="three answers")
        assert [vtn.opt_of(ven_id, e) for e in (low, high, test)] == ["optIn"] * 3
        signals = f.agent("agg-ol-prio").signals(utcnow())
        by_event = {s.event_id: s for s in signals}
        assert (by_event[low].priority, by_event[high].priority) == (5, 1)
        assert by_event[test].test_event and not by_event[high].test_event
        await asyncio.sleep(max(0.0, (start - utcnow()).total_seconds()) + 0.1)
        won = winning(f.agent("agg-ol-prio").signals(utcnow()), "battery-1", "LOAD_CONTROL",
                      utcnow())
        assert won is not None and won.event_id == high


# --- 3. reports -----------------------------------------------------------------------------


def power_request(granularity: timedelta, back: timedelta | None = None,
                  into: list[Update] | None = None) -> Callable[[dict[str, Any]], Any]:
    """An `on_register_report` (full mode) asking TELEMETRY_USAGE for every power rID."""
    def on_register_report(report: dict[str, Any]) -> list[tuple[Any, ...]] | None:
        if report["report_name"] != "METADATA_TELEMETRY_USAGE":
            return None
        out: list[tuple[Any, ...]] = []
        for rd in report["report_descriptions"]:
            if rd["r_id"].endswith("/power"):
                r_id = rd["r_id"]

                def got(values: list[tuple[datetime, float]], r_id: str = r_id) -> None:
                    assert into is not None
                    into.append(Update(arrived=utcnow(), request_id="",
                                       values=[(t, r_id, v) for t, v in values]))

                out.append((r_id, got, granularity) if back is None
                           else (r_id, got, granularity, back))
        return out

    return on_register_report


def gaps(times: Sequence[datetime]) -> list[float]:
    return [round((b - a).total_seconds(), 3) for a, b in zip(times, times[1:])]


async def test_report_requested_at_registration_reaches_openleadr_callbacks() -> None:
    received: list[Update] = []
    handlers = {"on_register_report": power_request(timedelta(seconds=2), into=received)}
    async with openleadr_vtn(handlers=handlers) as vtn, \
            running_fleet([ven_spec(vtn.url, "agg-ol-rep")]) as f:
        await registered(vtn, f, "agg-ol-rep")
        await wait_for(lambda: len(received) >= 3, timeout=15, what="three updates")
        for u in received:
            assert {r for _, r, _ in u.values} == {"battery-1/power"}
            assert all(isinstance(v, float) for _, _, v in u.values)
        dtstarts = sorted(t for u in received for t, _, _ in u.values)
        assert set(gaps(dtstarts)) == {2.0}, dtstarts
        assert "oadrUpdateReport" in f.wire.types("agg-ol-rep")
        assert f.agent("agg-ol-rep").last_error is None


def create_report_poll(requests: Sequence[objects.ReportRequest]
                       ) -> Callable[[str], Any]:
    """An `on_poll` delivering one oadrCreateReport with `requests`, then nothing."""
    sent: set[str] = set()

    def on_poll(ven_id: str) -> tuple[str, dict[str, Any]] | None:
        if ven_id in sent:
            return None
        sent.add(ven_id)
        return "oadrCreateReport", {"report_requests": list(requests)}

    return on_poll


def usage_request(request_id: str, r_id: str, granularity: timedelta,
                  back: timedelta) -> objects.ReportRequest:
    return objects.ReportRequest(
        report_request_id=request_id,
        report_specifier=objects.ReportSpecifier(
            report_specifier_id="TELEMETRY_USAGE", granularity=granularity,
            report_back_duration=back,
            specifier_payloads=[objects.SpecifierPayload(r_id=r_id, reading_type="x-notApplicable")]))


async def test_two_create_report_requests_keep_their_own_schedules() -> None:
    """Two oadrCreateReport requests for the same rID at different granularities: each arrives
    on its own schedule (openleadr's client shared one rID list between requests)."""
    updates: list[Update] = []

    def on_update_report(report: dict[str, Any]) -> None:
        updates.append(Update(
            arrived=utcnow(), request_id=report["report_request_id"],
            values=[(iv["dtstart"], iv["report_payload"]["r_id"], iv["report_payload"]["value"])
                    for iv in report["intervals"]]))

    fast = usage_request("rr-fast", "battery-1/power", timedelta(seconds=1), timedelta(seconds=2))
    slow = usage_request("rr-slow", "battery-1/power", timedelta(seconds=2), timedelta(seconds=4))
    handlers: dict[str, Callable[..., Any]] = {"on_poll": create_report_poll([fast, slow]),
                                               "on_update_report": on_update_report}
    async with openleadr_vtn(handlers=handlers) as vtn, \
            running_fleet([ven_spec(vtn.url, "agg-ol-two", report_jitter=0.0)]) as f:
        await registered(vtn, f, "agg-ol-two")

        def of(request_id: str) -> list[Update]:
            return [u for u in updates if u.request_id == request_id]

        await wait_for(lambda: len(of("rr-slow")) >= 3, timeout=20, what="three slow updates")
        assert "oadrCreatedReport" in f.wire.types("agg-ol-two")
        for request_id, step, back in (("rr-fast", 1.0, 2.0), ("rr-slow", 2.0, 4.0)):
            mine = of(request_id)
            assert all({r for _, r, _ in u.values} == {"battery-1/power"} for u in mine)
            dtstarts = sorted(t for u in mine for t, _, _ in u.values)
            assert set(gaps(dtstarts)) == {step}, (request_id, dtstarts)
            # Arrival times, measured here: one report per reportBackDuration.
            arrivals = gaps([u.arrived for u in mine])
            assert all(back - 0.6 <= a <= back + 0.6 for a in arrivals), (request_id, arrivals)
        assert len(of("rr-fast")) >= 2 * len(of("rr-slow")) - 1


async def test_lowercase_vtn_id_registration_events_and_reports() -> None:
    """openleadr's own client answers 452 when the vtnID is all lower case; ours must not care."""
    received: list[Update] = []
    handlers = {"on_register_report": power_request(timedelta(seconds=1), into=received)}
    async with openleadr_vtn(vtn_id="ol-vtn-lower", handlers=handlers) as vtn, \
            running_fleet([ven_spec(vtn.url, "agg-ol-lower")]) as f:
        ven_id = await registered(vtn, f, "agg-ol-lower")
        assert f.agent("agg-ol-lower").reg.vtn_id == "ol-vtn-lower"
        event_id = vtn.add_event(ven_id, "SIMPLE", "level",
                                 contiguous(minute(2), timedelta(minutes=10), (2.0,)))
        assert await wait_for(lambda: vtn.opt_of(ven_id, event_id), what="answer") == "optIn"
        await wait_for(lambda: len(received) >= 2, timeout=15, what="two updates")
        assert f.agent("agg-ol-lower").last_error is None


# --- 4. opt schedules: openleadr has no EiOpt route -----------------------------------------


async def test_refused_availability_opt_is_not_resent_and_the_ven_carries_on() -> None:
    start = minute(60)
    window = AvailabilitySpec(opt_id="maintenance-1", opt_type=OptType.OPT_OUT,
                              reason=OptReason.NOT_PARTICIPATING, start=start,
                              duration=timedelta(hours=2))
    async with openleadr_vtn() as vtn, running_fleet(
            [ven_spec(vtn.url, "agg-ol-opt", availability=(window,))]) as f:
        ven_id = await registered(vtn, f, "agg-ol-opt")
        agent = f.agent("agg-ol-opt")
        await wait_for(lambda: "oadrCreateOpt" in f.wire.types("agg-ol-opt"), what="the opt")
        assert "404" in (agent.last_error or ""), agent.last_error
        polls = f.wire.types("agg-ol-opt").count("oadrPoll")
        await wait_for(lambda: f.wire.types("agg-ol-opt").count("oadrPoll") >= polls + 3,
                       timeout=10, what="three more polls")
        # An event outside the window is answered optIn, one inside it optOut.
        outside = vtn.add_event(ven_id, "SIMPLE", "level",
                                contiguous(minute(5), timedelta(minutes=10), (1.0,)))
        assert await wait_for(lambda: vtn.opt_of(ven_id, outside), what="answer") == "optIn"
        inside = vtn.add_event(ven_id, "SIMPLE", "level",
                               contiguous(start + timedelta(minutes=30), timedelta(minutes=10),
                                          (3.0,)))
        assert await wait_for(lambda: vtn.opt_of(ven_id, inside), what="answer") == "optOut"
        assert f.wire.types("agg-ol-opt").count("oadrCreateOpt") == 1
        assert "oadrCancelOpt" not in f.wire.types("agg-ol-opt")
        assert agent.reg.state is RegState.READY
