"""The VEN's report engine, sans-IO: what a VEN offers, which requests it accepts, when it samples
and reports, and the oadrUpdateReport it sends. No I/O and no clock: `now` and a seeded
`random.Random` are parameters, and the caller stores the `RequestState`s and `Sample`s.

Every request keeps its own schedule in its own `RequestState` (openleadr shared one rID list
between requests, so a second request changed the first one's reports):
- anchor t0 = max(accepted at, requested dtstart); samples every `granularity` from t0;
- a report covers the window [t0 + k*R, t0 + (k+1)*R), R = reportBackDuration (at least one
  sampling step), and is sent at the window's end plus a fresh random delay (`report_jitter`
  share of R) so a fleet does not report in lockstep;
- a request with a duration stops sampling at dtstart + duration; its last window ends there.
- granularity 0 and reportBackDuration 0: one sample, reported at once (one-shot);
- HISTORY_USAGE: one report, at the end of the requested window, built from stored samples.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Protocol

from oadr.errors import InvalidData, ReportNotSupported
from oadr.isotime import format_duration
from oadr.messages import (
    ItemBase, LoadControlState, Report, ReportDescription, ReportInterval, ReportPoint,
    ReportRequest, ResourceStatus, UpdateReport,
)

from .fleet import ResourceSpec, VenSpec
from .records import RequestState, Sample

TELEMETRY_USAGE: Final = "TELEMETRY_USAGE"
TELEMETRY_STATUS: Final = "TELEMETRY_STATUS"
HISTORY_USAGE: Final = "HISTORY_USAGE"

POWER_KW: Final = ItemBase(kind="powerReal", description="RealPower", units="W", si_scale="k",
                           hertz=50, voltage=230, ac=True)
# power:energyReal fixes itemDescription RealEnergy and itemUnits Wh; siScaleCode k makes kWh.
ENERGY_KWH: Final = ItemBase(kind="energyReal", description="RealEnergy", units="Wh",
                             si_scale="k")

# The rID kinds (suffix after the resourceID) each offered report carries, per resource.
REPORT_KINDS: Final[dict[str, tuple[str, ...]]] = {
    TELEMETRY_USAGE: ("power", "energy"),
    TELEMETRY_STATUS: ("status",),
    HISTORY_USAGE: ("power",),
}
MAX_PERIOD: Final = timedelta(hours=1)
# A delay of a whole window or more would push a report past the next window's end, which
# is then reported instead; half a window keeps every window reported.
MAX_JITTER_SHARE: Final = 0.5
_ZERO: Final = timedelta(0)
_TICK: Final = timedelta(microseconds=1)


def rid(resource_id: str, kind: str) -> str:
    """The rID of one data point: `<resourceID>/power`, `/energy` or `/status`."""
    return f"{resource_id}/{kind}"


def _split(r_id: str) -> tuple[str, str]:
    resource_id, _, kind = r_id.rpartition("/")
    return resource_id, kind


# --- what the VEN offers ------------------------------------------------------------------


def _description(resource: ResourceSpec, kind: str, spec: VenSpec) -> ReportDescription:
    min_period, max_period = spec.report_min_period, max(spec.report_min_period, MAX_PERIOD)
    if kind == "status":
        return ReportDescription(
            r_id=rid(resource.resource_id, kind), report_type="x-resourceStatus",
            reading_type="x-notApplicable", resource_id=resource.resource_id,
            min_period=min_period, max_period=max_period)
    # Direct Read: "read from a device that increases monotonically" fits the energy counter;
    # usage for power follows the Profile Specification's TELEMETRY_USAGE example.
    return ReportDescription(
        r_id=rid(resource.resource_id, kind), report_type="usage", reading_type="Direct Read",
        resource_id=resource.resource_id, item_base=POWER_KW if kind == "power" else ENERGY_KWH,
        min_period=min_period, max_period=max_period)


def metadata_reports(spec: VenSpec, now: datetime) -> tuple[Report, ...]:
    """METADATA_TELEMETRY_USAGE, METADATA_TELEMETRY_STATUS and METADATA_HISTORY_USAGE for every
    resource of `spec`: no intervals, dtstart or eiReportID, reportRequestID 0."""
    return tuple(
        Report(report_specifier_id=name, report_name=f"METADATA_{name}", created=now,
               duration=_ZERO,
               descriptions=tuple(_description(resource, kind, spec)
                                  for resource in spec.resources for kind in kinds))
        for name, kinds in REPORT_KINDS.items())


def _offered(spec: VenSpec, name: str) -> frozenset[str]:
    return frozenset(rid(r.resource_id, kind) for r in spec.resources
                     for kind in REPORT_KINDS[name])


# --- accepting a request and its schedule ---------------------------------------------------


def accept(req: ReportRequest, spec: VenSpec, now: datetime, rng: random.Random) -> RequestState:
    """Check a report request against what `spec` offers and schedule it.

    Raises:
        ReportNotSupported: the reportSpecifierID or some rIDs are not offered (461).
        InvalidData: a telemetry granularity below the offered minimum period, or a
            HISTORY_USAGE request without a reportInterval (454).
    """
    name = req.report_specifier_id
    if name not in REPORT_KINDS:
        raise ReportNotSupported(f"reportSpecifierID {name!r} is not offered by {spec.name}")
    unknown = sorted({s.r_id for s in req.specifiers} - _offered(spec, name))
    if unknown:
        raise ReportNotSupported(f"{name}: rID not offered: {', '.join(unknown)}")
    if name == HISTORY_USAGE:
        if req.dtstart is None:
            raise InvalidData(f"{name} request {req.report_request_id} needs a reportInterval")
        state = RequestState(request=req, report_name=name, created=now, next_sample=None,
                             next_report=now, one_shot=True)
        # A window still running is reported when it closes.
        return dataclasses.replace(state, next_report=max(now, history_window(state)[1]))
    start = max(now, req.dtstart) if req.dtstart is not None else now
    if not req.granularity and not req.report_back_duration:
        return RequestState(request=req, report_name=name, created=now, next_sample=start,
                            next_report=start, one_shot=True)
    if req.granularity <= _ZERO or req.granularity < spec.report_min_period:
        raise InvalidData(
            f"{name}: granularity {format_duration(req.granularity)} is below the minimum "
            f"period {format_duration(spec.report_min_period)} offered")
    state = RequestState(request=req, report_name=name, created=now, next_sample=start,
                         next_report=None)
    end = _end(state)
    if end is not None and start >= end:  # the requested interval is already over
        return dataclasses.replace(state, next_sample=None)
    first = start + _report_back(req)
    if end is not None:
        first = min(first, end)
    return dataclasses.replace(state, next_report=first + _jitter(state, spec, rng))


def _report_back(req: ReportRequest) -> timedelta:
    # A report back shorter than the sampling step would send reports with no interval.
    return max(req.report_back_duration, req.granularity)


def _anchor(state: RequestState) -> datetime:
    dtstart = state.request.dtstart
    return state.created if dtstart is None else max(state.created, dtstart)


def _end(state: RequestState) -> datetime | None:
    req = state.request
    return req.dtstart + req.duration if req.dtstart is not None and req.duration else None


def _jitter(state: RequestState, spec: VenSpec, rng: random.Random) -> timedelta:
    share = min(max(spec.report_jitter, 0.0), MAX_JITTER_SHARE)
    limit = share * _report_back(state.request).total_seconds()
    return timedelta(seconds=rng.uniform(0, limit))


def _window_start(state: RequestState, at: datetime) -> datetime:
    """Start of the report window holding `at`."""
    t0 = _anchor(state)
    period = _report_back(state.request)
    return t0 + max((at - t0) // period, 0) * period


def cut_short(state: RequestState, now: datetime) -> RequestState:
    """The request as if it had been asked to end at `now`: its last window, the one still open,
    closes now (a cancellation with reportToFollow sends that window)."""
    anchor = _anchor(state)
    request = dataclasses.replace(state.request, dtstart=anchor,
                                  duration=max(now - anchor, _TICK))
    return dataclasses.replace(state, request=request)


def history_window(state: RequestState) -> tuple[datetime, datetime]:
    """[start, end) of a HISTORY_USAGE request: its reportInterval, up to its acceptance when
    the interval has no duration."""
    start = state.request.dtstart or state.created
    return start, start + state.request.duration if state.request.duration else state.created


def report_window(state: RequestState, now: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the samples the update sent at `now` covers: the latest window that has
    closed (a late VEN skips older windows; HISTORY_USAGE covers them). Samples from `end` on
    belong to the next update."""
    if state.report_name == HISTORY_USAGE:
        return history_window(state)
    if state.one_shot:  # its single sample is taken at the anchor
        return _anchor(state), _anchor(state) + _TICK
    end = _end(state)
    closed = end if end is not None and now >= end else _window_start(state, now)
    return max(_anchor(state), _window_start(state, closed - _TICK)), closed


def due(state: RequestState, now: datetime) -> bool:
    """Whether the request's next update is to be sent at `now`."""
    return state.next_report is not None and now >= state.next_report


def next_wakeup(state: RequestState) -> datetime | None:
    """When the request next needs a sample or a report; None when it is finished."""
    return min((t for t in (state.next_sample, state.next_report) if t is not None),
               default=None)


# --- sampling ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Reading:
    """What one resource measures at one moment."""

    power_kw: float
    energy_kwh: float  # a monotone counter
    online: bool
    manual_override: bool
    load_control: LoadControlState | None = None


class TelemetrySource(Protocol):
    def read(self, resource: ResourceSpec, now: datetime) -> Reading: ...


def _requested(state: RequestState) -> tuple[str, ...]:
    return tuple(dict.fromkeys(s.r_id for s in state.request.specifiers))


def _due_steps(state: RequestState, now: datetime) -> tuple[tuple[datetime, ...],
                                                            datetime | None]:
    """The sampling steps due at `now`, and the next step after them (None: no more)."""
    first = state.next_sample
    if first is None or now < first:
        return (), first
    if state.one_shot:
        return (first,), None
    step, t0, end = state.request.granularity, _anchor(state), _end(state)
    # Catch up only from the start of the latest closed window: that is all a report sends.
    floor = _window_start(state, _window_start(state, now) - _TICK)
    if floor > first:
        first = t0 + -((t0 - floor) // step) * step  # first step at or after `floor`
    steps = []
    while first <= now and (end is None or first < end):
        steps.append(first)
        first += step
    return tuple(steps), first if end is None or first < end else None


def take_samples(state: RequestState, spec: VenSpec, source: TelemetrySource,
                 now: datetime) -> tuple[RequestState, tuple[Sample, ...]]:
    """Read every sampling step of the request that has come due; one reading per resource
    and step serves all its rIDs. Resources no longer in `spec` are skipped."""
    steps, next_sample = _due_steps(state, now)
    resources = {r.resource_id: r for r in spec.resources}
    samples: list[Sample] = []
    for at in steps:
        readings: dict[str, Reading] = {}
        for r_id in _requested(state):
            resource_id, kind = _split(r_id)
            resource = resources.get(resource_id)
            if resource is None:
                continue
            if resource_id not in readings:
                readings[resource_id] = source.read(resource, at)
            samples.append(_sample(r_id, kind, at, readings[resource_id]))
    return dataclasses.replace(state, next_sample=next_sample), tuple(samples)


def _sample(r_id: str, kind: str, at: datetime, reading: Reading) -> Sample:
    if kind == "status":
        # A Sample holds one number: the capacity share of an oadrCapacity load control state.
        lc = reading.load_control
        capacity = lc.current if lc is not None and lc.kind == "oadrCapacity" else None
        return Sample(r_id=r_id, at=at, value=capacity, online=reading.online,
                      manual_override=reading.manual_override)
    return Sample(r_id=r_id, at=at,
                  value=reading.power_kw if kind == "power" else reading.energy_kwh)


# --- updates ----------------------------------------------------------------------------


def _grouped(state: RequestState, samples: Sequence[Sample], start: datetime, end: datetime
             ) -> list[tuple[datetime, tuple[ReportPoint, ...]]]:
    """The requested samples in [start, end), as points by time (the last sample of an rID at
    a time wins), each time's points in request order."""
    wanted = _requested(state)
    chosen = sorted((s for s in samples if s.r_id in wanted and start <= s.at < end),
                    key=lambda s: s.at)
    # Harness: oadrLoadControlState in every interval if in one. Once a status sample carries
    # a capacity, every status point carries one; an unrestricted resource has all of it.
    with_capacity = any(_split(s.r_id)[1] == "status" and s.value is not None for s in chosen)
    by_time: dict[datetime, dict[str, ReportPoint]] = {}
    for s in chosen:
        point = _point(s, with_capacity)
        if point is not None:
            by_time.setdefault(s.at, {})[s.r_id] = point
    return [(at, tuple(points[r] for r in wanted if r in points))
            for at, points in by_time.items()]


def _point(s: Sample, with_capacity: bool) -> ReportPoint | None:
    if _split(s.r_id)[1] != "status":
        return None if s.value is None else ReportPoint(r_id=s.r_id, value=s.value)
    if s.online is None or s.manual_override is None:
        return None
    capacity = 1.0 if s.value is None else s.value
    lc = LoadControlState(kind="oadrCapacity", current=capacity) if with_capacity else None
    return ReportPoint(r_id=s.r_id, status=ResourceStatus(
        online=s.online, manual_override=s.manual_override, load_control=lc))


def _update(state: RequestState, intervals: Sequence[ReportInterval], *, now: datetime,
            ven_id: str, request_id: str, report_id: str) -> UpdateReport | None:
    if not intervals:
        return None
    first, last = intervals[0], intervals[-1]
    report = Report(
        report_specifier_id=state.request.report_specifier_id, report_name=state.report_name,
        created=now, report_request_id=state.request.report_request_id, report_id=report_id,
        dtstart=first.dtstart,
        duration=last.dtstart + (last.duration or _ZERO) - first.dtstart,
        intervals=tuple(intervals))
    return UpdateReport(request_id=request_id, reports=(report,), ven_id=ven_id)


def history(state: RequestState, samples: Sequence[Sample], *, now: datetime, ven_id: str,
            request_id: str, report_id: str) -> UpdateReport | None:
    """The HISTORY_USAGE update from the stored `samples` inside the requested window; None when
    none is stored there (a report needs one interval). With a granularity the samples are
    resampled on that grid (the last sample of each step); without one, each stored sample time
    is an interval lasting until the next one, the last an instant."""
    start, end = history_window(state)
    step = state.request.granularity
    if step > _ZERO:
        samples = [dataclasses.replace(s, at=start + ((s.at - start) // step) * step)
                   for s in samples if start <= s.at < end]
    else:  # each sample's time starts an interval: on whole seconds, as xcal durations are
        samples = [dataclasses.replace(s, at=s.at.replace(microsecond=0)) for s in samples]
    grouped = _grouped(state, samples, start, end)
    times = [at for at, _ in grouped]
    intervals = [
        ReportInterval(dtstart=at, points=points,
                       duration=min(step, end - at) if step > _ZERO
                       else (times[i + 1] - at if i + 1 < len(times) else _ZERO))
        for i, (at, points) in enumerate(grouped)]
    return _update(state, intervals, now=now, ven_id=ven_id, request_id=request_id,
                   report_id=report_id)


def build_update(state: RequestState, samples: Sequence[Sample], spec: VenSpec, now: datetime,
                 rng: random.Random, *, ven_id: str, request_id: str, report_id: str
                 ) -> tuple[RequestState, UpdateReport | None]:
    """The oadrUpdateReport due at `now` for one request, from `samples` (those outside
    `report_window` or off the request's sampling grid are ignored), and the request's next state: the next window's end plus a fresh
    random delay, or finished (next_report None) after a one-shot, a HISTORY_USAGE or the last
    window of a request with a duration. The update is None when no sample falls in the
    window; the schedule moves on all the same."""
    sent = state.sent + 1
    if state.report_name == HISTORY_USAGE or state.one_shot:
        done = dataclasses.replace(state, next_sample=None, next_report=None, sent=sent)
        if state.report_name == HISTORY_USAGE:
            return done, history(state, samples, now=now, ven_id=ven_id, request_id=request_id,
                                 report_id=report_id)
        # A one-shot reports its single reading as an instant.
        intervals = [ReportInterval(dtstart=at, duration=_ZERO, points=points)
                     for at, points in _grouped(state, samples, *report_window(state, now))]
        return done, _update(done, intervals, now=now, ven_id=ven_id, request_id=request_id,
                             report_id=report_id)
    start, closed = report_window(state, now)
    step, t0 = state.request.granularity, _anchor(state)
    # Samples of these rIDs taken for other requests (a shared store) are off this grid.
    own = [s for s in samples if (s.at - t0) % step == _ZERO]
    intervals = [ReportInterval(dtstart=at, points=points, duration=min(step, closed - at))
                 for at, points in _grouped(state, own, start, closed)]
    end = _end(state)
    following = closed + _report_back(state.request)
    if end is not None and closed >= end:
        after = dataclasses.replace(state, next_sample=None, next_report=None, sent=sent)
    else:
        nominal = following if end is None else min(following, end)
        after = dataclasses.replace(state, next_report=nominal + _jitter(state, spec, rng),
                                    sent=sent)
    return after, _update(after, intervals, now=now, ven_id=ven_id, request_id=request_id,
                          report_id=report_id)
