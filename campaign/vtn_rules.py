"""Rules across messages a VTN under test must keep (domain.md section 2), as pure functions.

Single-message rules (XSD, signal types, interval dtstart, requestID...) are `oadr.conformance`'s
and run on every message through `Context.conformant`. The rules here need more than one message
or what the harness asked for: each takes parsed messages (`oadr.messages`) and returns the
failures, empty when the rule holds. Rule ids are stable; the texts name the eventIDs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from oadr.messages import (
    DistributeEvent,
    Event,
    EventStatus,
    Message,
    ReportDescription,
    ReportRequest,
    ResponseMessage,
)

from .hooks import EventRequest
from .model import Failure

LIVE = frozenset({EventStatus.FAR, EventStatus.NEAR, EventStatus.ACTIVE})


def _find(distribute: DistributeEvent, event_id: str) -> Event | None:
    return next((e for e in distribute.events if e.event_id == event_id), None)


def response_code(msg: Message | None) -> int | None:
    """The eiResponse code a message carries, None when it carries none."""
    response = getattr(msg, "response", None)
    return None if response is None else int(response.code)


def modification_increases(before: Event, after: DistributeEvent) -> list[Failure]:
    """A modified event is resent with a higher modificationNumber."""
    seen = _find(after, before.event_id)
    if seen is None:
        return [Failure("vtn.modification-increases",
                        f"the modified event {before.event_id} is in the next distribute",
                        "it is missing")]
    if seen.modification_number <= before.modification_number:
        return [Failure("vtn.modification-increases",
                        f"event {before.event_id} carries a modificationNumber above "
                        f"{before.modification_number} after its modification",
                        f"modificationNumber {seen.modification_number}")]
    return []


def cancellation_resent(before: Event, after: DistributeEvent) -> list[Failure]:
    """An explicitly cancelled event is resent as cancelled, with a higher modificationNumber."""
    seen = _find(after, before.event_id)
    if seen is None:
        return [Failure("vtn.cancel-resent", f"the cancelled event {before.event_id} is resent "
                                             "with eventStatus cancelled", "it is missing")]
    out = []
    if seen.status is not EventStatus.CANCELLED:
        out.append(Failure("vtn.cancel-resent", f"event {before.event_id} is resent with "
                                                "eventStatus cancelled", f"eventStatus {seen.status}"))
    if seen.modification_number <= before.modification_number:
        out.append(Failure("vtn.modification-increases",
                           f"the cancelled event {before.event_id} carries a modificationNumber "
                           f"above {before.modification_number}",
                           f"modificationNumber {seen.modification_number}"))
    return out


def cancelled_stays_cancelled(cancelled: Iterable[str], later: DistributeEvent) -> list[Failure]:
    """Once cancelled, an event is omitted (implicit) or still cancelled, never live again."""
    return [Failure("vtn.cancelled-stays", f"event {e.event_id}, cancelled and acknowledged, is "
                                           "omitted or still cancelled",
                    f"it came back with eventStatus {e.status}")
            for e in later.events if e.event_id in set(cancelled) and e.status in LIVE]


def events_present(previous: DistributeEvent, current: DistributeEvent, now: datetime,
                   removed: Iterable[str] = ()) -> list[Failure]:
    """Every far/near/active event of the previous distribute that has not ended by `now` (and
    was not deliberately `removed`) is in the current one."""
    gone = set(removed)
    out = []
    for e in previous.events:
        end = e.active_period.end
        if e.status in LIVE and e.event_id not in gone and (end is None or end > now) \
                and _find(current, e.event_id) is None:
            out.append(Failure("vtn.events-present", f"the {e.status} event {e.event_id} is in "
                                                     "every distribute", "it was left out"))
    return out


def no_overlap(distribute: DistributeEvent) -> list[Failure]:
    """No two live events of one market context overlap in time."""
    live = [e for e in distribute.events if e.status in LIVE]
    out = []
    for i, a in enumerate(live):
        for b in live[i + 1:]:
            if a.market_context != b.market_context:
                continue
            a_end, b_end = a.active_period.end, b.active_period.end
            if (a_end is None or b.active_period.dtstart < a_end) and \
                    (b_end is None or a.active_period.dtstart < b_end):
                out.append(Failure("vtn.no-overlap", f"events {a.event_id} and {b.event_id} of "
                                                     f"{a.market_context} do not overlap",
                                   "both are live over a common period"))
    return out


def unregistered_refused(http_status: int, msg: Message | None) -> list[Failure]:
    """A message from an unregistered venID gets 463, or an HTTP refusal (4xx) with no OpenADR
    answer; never a 200, and a server error (5xx) is no refusal."""
    code = response_code(msg)
    if msg is None and 400 <= http_status < 500:
        return []
    if code == 463:
        return []
    what = "no OpenADR answer" if msg is None else \
        f"{type(msg).__name__} with code {code}" if code is not None else type(msg).__name__
    return [Failure("vtn.unregistered-463", "a message from an unregistered venID is answered "
                                            "463 (or not at all)", f"HTTP {http_status}, {what}")]


def answered(msg: Message | None, expected: type, request_id: str | None,
             code: int = 200) -> list[Failure]:
    """The VTN answered with `expected` carrying `code` (and, when given, echoing the requestID
    of the request)."""
    name = expected.__name__
    if not isinstance(msg, expected):
        return [Failure("vtn.answer-type", f"the VTN answers with {name}",
                        "no OpenADR answer" if msg is None else type(msg).__name__)]
    out = []
    got = response_code(msg)
    if got != code:
        out.append(Failure("vtn.answer-code", f"{name} carries responseCode {code}",
                           f"responseCode {got}"))
    echoed = getattr(getattr(msg, "response", None), "request_id", None)
    if request_id is not None and echoed != request_id:
        out.append(Failure("vtn.answer-request-id", f"{name} echoes requestID {request_id}",
                           f"requestID {echoed!r}"))
    return out


def redelivered(event_id: str, modification: int, later: Sequence[DistributeEvent]
                ) -> list[Failure]:
    """An event whose oadrCreatedEvent was lost is delivered again."""
    if any((e := _find(d, event_id)) is not None and e.modification_number >= modification
           for d in later):
        return []
    return [Failure("vtn.redelivery", f"event {event_id} (modification {modification}), never "
                                      "answered, is delivered again",
                    f"{len(later)} later distribute(s) without it")]


def not_redelivered(event_id: str, modification: int, later: Sequence[DistributeEvent]
                    ) -> list[Failure]:
    """Once the VEN answered an event's modification, the VTN does not send it again as new."""
    again = sum(1 for d in later if (e := _find(d, event_id)) is not None
                and e.modification_number == modification)
    if not again:
        return []
    return [Failure("vtn.ack-recorded", f"event {event_id} modification {modification} is not "
                                        "delivered again after the VEN answered it",
                    f"delivered again {again} time(s)")]


def granularity_respected(requests: Iterable[ReportRequest],
                          offered: dict[str, dict[str, ReportDescription]],
                          names: dict[str, str]) -> list[Failure]:
    """Report requests name reports and rIDs the VEN offered (`offered`: reportSpecifierID ->
    rID -> description, `names`: reportSpecifierID -> reportName) and ask no finer granularity
    than the minimum period; HISTORY_* requests have granularity and reportBackDuration 0."""
    out = []
    for rq in requests:
        descriptions = offered.get(rq.report_specifier_id)
        where = f"report request {rq.report_request_id}"
        if descriptions is None:
            out.append(Failure("vtn.report-request-known", f"{where} names a report the VEN "
                               "registered", f"reportSpecifierID {rq.report_specifier_id}"))
            continue
        unknown = [s.r_id for s in rq.specifiers if s.r_id not in descriptions]
        if unknown:
            out.append(Failure("vtn.report-request-known", f"{where} names rIDs the VEN "
                                                           "registered", f"unknown rIDs {unknown}"))
        if names.get(rq.report_specifier_id, "").removeprefix("METADATA_").startswith("HISTORY_"):
            if rq.granularity or rq.report_back_duration:
                out.append(Failure("vtn.history-request", f"{where} for a history report has "
                                   "granularity and reportBackDuration 0",
                                   f"granularity {rq.granularity}, reportBackDuration "
                                   f"{rq.report_back_duration}"))
            continue
        floor = max((d.min_period for s in rq.specifiers
                     if (d := descriptions.get(s.r_id)) is not None and d.min_period),
                    default=timedelta(0))
        if rq.granularity and rq.granularity < floor:
            out.append(Failure("vtn.granularity", f"{where} asks no finer granularity than the "
                               f"minimum period {floor}", f"granularity {rq.granularity}"))
    return out


def queue_drained(answers: Sequence[Message | None], expected: Iterable[type]) -> list[Failure]:
    """Messages queued for a VEN come one per poll (or push) until an empty oadrResponse: every
    `expected` kind arrives, and the queue empties."""
    kinds = {type(a) for a in answers if a is not None}
    out = [Failure("vtn.queue-drained", f"the queued {k.__name__} is delivered",
                   f"got {sorted(x.__name__ for x in kinds)}")
           for k in expected if k not in kinds]
    if not answers or not isinstance(answers[-1], ResponseMessage):
        out.append(Failure("vtn.queue-drained", "the queue ends with an empty oadrResponse",
                           f"{len(answers)} answers, the last "
                           f"{type(answers[-1]).__name__ if answers else 'none'}"))
    return out


def event_fidelity(request: EventRequest, event: Event) -> list[Failure]:
    """The delivered event carries what the operator asked for: market context, priority,
    randomisation, notification, ramp-up, recovery, and each signal's name, type and payloads."""
    ap = event.active_period
    pairs: list[tuple[str, object, object]] = [
        ("marketContext", request.market_context, event.market_context),
        ("priority", request.priority, event.priority),
        ("dtstart", request.start.replace(microsecond=0), ap.dtstart.replace(microsecond=0)),
        ("duration", request.duration, ap.duration),
        ("tolerance/startafter", request.start_after, ap.start_after),
        ("x-eiNotification", request.notification, ap.notification),
        ("x-eiRampUp", request.ramp_up, ap.ramp_up),
        ("x-eiRecovery", request.recovery, ap.recovery),
        ("signals", [(s.name, s.type, [v for _, v in s.intervals]) for s in request.signals],
         [(s.signal_name, s.signal_type, [i.payload for i in s.intervals])
          for s in event.signals]),
    ]
    return [Failure("vtn.event-fidelity", f"event {event.event_id} carries the requested {name} "
                                          f"{want!r}", f"{got!r}")
            for name, want, got in pairs if want != got]
