"""Rules across messages for a VEN under test: pure functions over parsed messages and times.

Rules of this file:
- No I/O, no clock: what the harness observed (parsed messages, arrival times) comes in, the
  broken rules come out as `Failure`s (empty: the rule holds).
- Single-message rules (XSD, metadata without intervals, opt scope...) are `oadr.conformance`'s;
  here are only those that need the request beside the answer, or several messages in time.
- Each rule has a stable id ("ven.<what>"), matched by tests and reports, never the wording.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Final

from oadr.isotime import format_duration
from oadr.messages import (
    CreatedEvent, CreatePartyRegistration, EventResponse, OptType, Report, ReportRequest,
)

from .model import Failure

OK: Final = 200
SIGNAL_NOT_SUPPORTED: Final = 460
TELEMETRY: Final = ("TELEMETRY_USAGE", "TELEMETRY_STATUS")
# A VEN may wait a little less than the period asked for (its timer, a random phase) but not
# poll or report at twice the rate: half the period is the tolerance.
RATE_SLACK: Final = 0.5


def _responses(created: Iterable[CreatedEvent]) -> list[EventResponse]:
    return [r for c in created for r in c.event_responses]


# --- registration -------------------------------------------------------------------------

def registration(create: CreatePartyRegistration, *, push: bool) -> list[Failure]:
    """oadrCreatePartyRegistration: profile 2.0b, simpleHttp, the pull model for a pull VEN and
    a transport address for a push VEN."""
    out = []
    if create.profile_name != "2.0b":
        out.append(Failure("ven.registration-profile", "oadrProfileName 2.0b",
                           f"oadrProfileName {create.profile_name!r}"))
    if create.transport_name != "simpleHttp":
        out.append(Failure("ven.registration-transport", "oadrTransportName simpleHttp",
                           f"oadrTransportName {create.transport_name!r}"))
    if create.http_pull_model == push:
        want = "false (push)" if push else "true (pull)"
        out.append(Failure("ven.registration-pull-model", f"oadrHttpPullModel {want}",
                           f"oadrHttpPullModel {str(create.http_pull_model).lower()}"))
    if push and not create.transport_address:
        out.append(Failure("ven.push-transport-address",
                           "a push VEN gives its oadrTransportAddress", "no transport address"))
    return out


@dataclass(frozen=True, slots=True)
class PollSeen:
    at: datetime
    idle: bool  # answered with oadrResponse: nothing was queued for the VEN


def poll_frequency(polls: Sequence[PollSeen], period: timedelta, *,
                   until: datetime) -> list[Failure]:
    """The VEN polls at the oadrRequestedOadrPollFreq it was given: after an idle poll it waits
    at least half the period, and it keeps polling (the last poll is at most three periods
    before `until`). A poll answered with a message may be followed at once (draining a queue)."""
    out = []
    for before, after in pairwise(polls):
        gap = after.at - before.at
        if before.idle and gap < period * RATE_SLACK:
            out.append(Failure("ven.poll-frequency",
                               f"after an idle poll, the next one no sooner than half of "
                               f"{format_duration(period)}",
                               f"polled again after {gap.total_seconds():.3f} s at "
                               f"{after.at.isoformat()}"))
    last = polls[-1].at if polls else None
    if last is None or until - last > period * 3:
        out.append(Failure("ven.keeps-polling",
                           f"a poll at least every {format_duration(period)}",
                           "no poll at all" if last is None else
                           f"last poll at {last.isoformat()}, none until {until.isoformat()}"))
    return out


def queue_drained(queued: Sequence[str], fetched: Sequence[str], *, drained: bool
                  ) -> list[Failure]:
    """With several messages queued, the VEN polls until it has them all and then gets an idle
    oadrResponse (`drained`). `queued`/`fetched` are payload names, in order."""
    out = []
    missing = list((Counter(queued) - Counter(fetched)).elements())
    if missing:
        out.append(Failure("ven.queue-drained", f"the VEN fetches every queued message "
                                                f"({', '.join(queued)})",
                           f"never fetched: {', '.join(missing)}"))
    elif not drained:
        out.append(Failure("ven.queue-drained", "the VEN polls on until answered oadrResponse",
                           "no idle poll after the queued messages"))
    return out


# --- events -------------------------------------------------------------------------------

def created_event_modification(current: Mapping[str, int],
                               created: Iterable[CreatedEvent]) -> list[Failure]:
    """Every eventResponse for an event in `current` (eventID -> modificationNumber now) names
    that modificationNumber."""
    return [Failure("ven.created-event-modification",
                    f"oadrCreatedEvent for {r.event_id} names modificationNumber "
                    f"{current[r.event_id]}", f"it names {r.modification_number}")
            for r in _responses(created)
            if r.event_id in current and r.modification_number != current[r.event_id]]


def one_response_per_event(expected: Iterable[str],
                           created: Iterable[CreatedEvent]) -> list[Failure]:
    """Each event of `expected` (responseRequired=always) gets exactly one eventResponse."""
    counts = Counter(r.event_id for r in _responses(created))
    out = []
    for event_id in expected:
        if counts[event_id] != 1:
            out.append(Failure("ven.one-response-per-event",
                               f"one eventResponse for event {event_id}",
                               f"{counts[event_id]} eventResponses"))
    return out


def no_response_when_never(never: Iterable[str],
                           created: Iterable[CreatedEvent]) -> list[Failure]:
    """An event sent with responseRequired=never is not answered."""
    named = {r.event_id for r in _responses(created)}
    return [Failure("ven.response-required-never",
                    f"no oadrCreatedEvent for event {event_id} (responseRequired never)",
                    "the VEN answered it") for event_id in never if event_id in named]


def created_event_codes(created: Iterable[CreatedEvent],
                        allowed: frozenset[int] = frozenset({OK})) -> list[Failure]:
    """oadrCreatedEvent is answered 200 overall; each eventResponse carries a code of `allowed`,
    and a refusal (460) opts out."""
    out = []
    for c in created:
        if c.response.code != OK:
            out.append(Failure("ven.created-event-code", "oadrCreatedEvent responseCode 200",
                               f"responseCode {c.response.code} ({c.response.description})"))
        for r in c.event_responses:
            if r.code not in allowed:
                out.append(Failure("ven.created-event-code",
                                   f"event {r.event_id} answered with one of "
                                   f"{sorted(allowed)}", f"responseCode {r.code}"))
            elif r.code != OK and r.opt_type is not OptType.OPT_OUT:
                out.append(Failure("ven.created-event-code",
                                   f"event {r.event_id} refused ({r.code}) opts out",
                                   f"optType {r.opt_type}"))
    return out


def not_opted_in(event_ids: Iterable[str], created: Iterable[CreatedEvent]) -> list[Failure]:
    """An event the VEN cannot serve (its targets name nothing of the VEN) is answered with
    optOut or an error code, never a plain optIn."""
    responses = _responses(created)
    return [Failure("ven.target-mismatch",
                    f"event {r.event_id} targeting nothing of the VEN: optOut or an error code",
                    "optIn with responseCode 200")
            for event_id in event_ids for r in responses
            if r.event_id == event_id and r.code == OK and r.opt_type is OptType.OPT_IN]


def implicit_cancel(dropped: Iterable[str], created_after: Iterable[CreatedEvent]
                    ) -> list[Failure]:
    """An event left out of a distribute is implicitly cancelled: not answered again after."""
    named = {r.event_id for r in _responses(created_after)}
    return [Failure("ven.implicit-cancel",
                    f"no oadrCreatedEvent for event {event_id} once it is left out of the "
                    "distribute", "the VEN answered it again")
            for event_id in dropped if event_id in named]


# --- reports ------------------------------------------------------------------------------

def telemetry_offered(reports: Sequence[Report]) -> list[Failure]:
    """The VEN registers METADATA_TELEMETRY_USAGE or METADATA_TELEMETRY_STATUS, each data point
    with its sampling rate (oadrMinPeriod/oadrMaxPeriod)."""
    offered = [r for r in reports if r.report_name in {f"METADATA_{n}" for n in TELEMETRY}]
    if not offered:
        return [Failure("ven.telemetry-offered",
                        "METADATA_TELEMETRY_USAGE or METADATA_TELEMETRY_STATUS registered",
                        "offered: " + (", ".join(r.report_name for r in reports) or "nothing"))]
    return [Failure("ven.telemetry-offered", f"rID {d.r_id} of {r.report_name} has a "
                                             "sampling rate", "no oadrSamplingRate")
            for r in offered for d in r.descriptions
            if d.min_period is None or d.max_period is None]


def update_matches_request(request: ReportRequest, report: Report) -> list[Failure]:
    """An update names the request it answers and carries only the rIDs that request asked for."""
    out = []
    if report.report_specifier_id != request.report_specifier_id:
        out.append(Failure("ven.update-report-request",
                           f"reportSpecifierID {request.report_specifier_id}",
                           f"reportSpecifierID {report.report_specifier_id}"))
    asked = {s.r_id for s in request.specifiers}
    sent = {p.r_id for i in report.intervals for p in i.points}
    if sent - asked:
        out.append(Failure("ven.update-report-rids",
                           f"only the rIDs of request {request.report_request_id}: "
                           f"{', '.join(sorted(asked))}",
                           f"also {', '.join(sorted(sent - asked))}"))
    return out


def report_granularity(request: ReportRequest,
                       updates: Sequence[tuple[datetime, Report]]) -> list[Failure]:
    """Updates of a periodic request come no more often than its reportBackDuration (at least
    one granularity), and a report's intervals for one rID are at least a granularity apart."""
    out = []
    period = max(request.report_back_duration, request.granularity)
    for (before, _), (after, _) in pairwise(updates):
        if after - before < period * RATE_SLACK:
            out.append(Failure("ven.report-granularity",
                               f"updates of request {request.report_request_id} about every "
                               f"{format_duration(period)}",
                               f"two updates {(after - before).total_seconds():.3f} s apart"))
    if request.granularity > timedelta(0):
        for _, report in updates:
            times: dict[str, list[datetime]] = {}
            for interval in report.intervals:
                for point in interval.points:
                    times.setdefault(point.r_id, []).append(interval.dtstart)
            for r_id, starts in times.items():
                starts.sort()
                gaps = [b - a for a, b in pairwise(starts)]
                if any(g < request.granularity for g in gaps):
                    out.append(Failure("ven.report-granularity",
                                       f"rID {r_id} sampled every "
                                       f"{format_duration(request.granularity)}",
                                       f"intervals {min(gaps).total_seconds():.3f} s apart"))
    return out


def cancel_stops_updates(request_id: str, cancelled_at: datetime,
                         updates: Sequence[tuple[datetime, Report]], *, grace: timedelta
                         ) -> list[Failure]:
    """Once the VEN acknowledged oadrCancelReport (at `cancelled_at`), no update for that
    request arrives after `grace` (one in flight, or the reportToFollow one, may)."""
    late = [at for at, report in updates
            if report.report_request_id == request_id and at > cancelled_at + grace]
    return [Failure("ven.report-cancel", f"no update for request {request_id} after it was "
                                         "cancelled", f"update at {at.isoformat()}")
            for at in late]
