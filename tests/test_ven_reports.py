"""The VEN report engine (ven/reports.py) and its default telemetry model (ven/telemetry.py).

Every message built here goes through `codec.serialize` (XSD) and `conformance.check`, and must
come back from `codec.parse` equal.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pytest

from oadr import codec, conformance
from oadr.errors import InvalidData, ReportNotSupported
from oadr.messages import (
    LoadControlState, Message, OptReason, OptType, RegisterReport, ReportRequest,
    SpecifierPayload, UpdateReport,
)
from ven.fleet import AvailabilitySpec, DeviceClass, ResourceSpec, VenSpec
from ven.records import GridSignal, Purpose, RequestState, Sample, SignalInterval
from ven.reports import (
    HISTORY_USAGE, TELEMETRY_STATUS, TELEMETRY_USAGE, Reading, TelemetrySource, accept,
    build_update, due, history_window, metadata_reports, next_wakeup, rid, take_samples,
)
from ven.telemetry import ModelTelemetry, declared_availability

NOW = datetime(2024, 6, 3, 12, 0, tzinfo=timezone.utc)
S, M, H = timedelta(seconds=1), timedelta(minutes=1), timedelta(hours=1)
BATTERY = ResourceSpec(resource_id="battery-1", device_class=DeviceClass.BATTERY, rated_kw=10,
                       baseline_kw=4, flexible_kw=3)
EV = ResourceSpec(resource_id="ev-1", device_class=DeviceClass.EV, rated_kw=7, baseline_kw=5,
                  flexible_kw=5)
SPEC = VenSpec(name="ven-a", vtn_url="https://vtn.test/OpenADR2/Simple/2.0b",
               resources=(BATTERY, EV), report_min_period=10 * S, report_jitter=0.1)
USAGE_RIDS = (rid("battery-1", "power"), rid("battery-1", "energy"), rid("ev-1", "power"),
              rid("ev-1", "energy"))
STATUS_RIDS = (rid("battery-1", "status"), rid("ev-1", "status"))


def conformant(msg: Message, now: datetime) -> Message:
    xml = codec.serialize(msg)
    assert conformance.check(xml, now=now) == []
    parsed = codec.parse(xml).message
    assert parsed == msg
    return parsed


def request(specifier: str, rids: Sequence[str], granularity: timedelta,
            report_back: timedelta, *, request_id: str = "rr-1", dtstart: datetime | None = None,
            duration: timedelta | None = None) -> ReportRequest:
    return ReportRequest(report_request_id=request_id, report_specifier_id=specifier,
                         granularity=granularity, report_back_duration=report_back,
                         specifiers=tuple(SpecifierPayload(r_id=r) for r in rids),
                         dtstart=dtstart, duration=duration)


@dataclass
class RampSource:
    """Power rises 1 kW a minute from NOW; energy is its exact integral; `capacity_from` puts
    the resources under an oadrCapacity 0.5 load control from that time on."""

    capacity_from: datetime | None = None
    calls: list[tuple[str, datetime]] = field(default_factory=list)

    def read(self, resource: ResourceSpec, now: datetime) -> Reading:
        self.calls.append((resource.resource_id, now))
        minutes = (now - NOW) / M
        controlled = self.capacity_from is not None and now >= self.capacity_from
        return Reading(power_kw=minutes, energy_kwh=minutes * minutes / 120, online=True,
                       manual_override=resource.resource_id == "ev-1",
                       load_control=LoadControlState(kind="oadrCapacity", current=0.5)
                       if controlled and resource is BATTERY else None)


@dataclass
class Sent:
    at: datetime
    update: UpdateReport
    jitter: timedelta  # how long after its window closed the update went out


def drive(state: RequestState, until: datetime, rng: random.Random, *,
          source: TelemetrySource | None = None, store: list[Sample] | None = None
          ) -> tuple[RequestState, list[Sent]]:
    """Run one request as an agent would: wake at `next_wakeup`, sample, report when due.
    Samples go to `store` (shared between requests when given); every update must conform."""
    source = source or RampSource()
    store = [] if store is None else store
    sent: list[Sent] = []
    while (t := next_wakeup(state)) is not None and t <= until:
        state, samples = take_samples(state, SPEC, source, t)
        store.extend(samples)
        if due(state, t):
            n = state.sent
            state, update = build_update(state, store, SPEC, t, rng, ven_id="ven-1",
                                         request_id=f"req-{n}", report_id=f"rep-{n}")
            assert update is not None
            conformant(update, t)
            report = update.reports[0]
            assert report.dtstart is not None and report.duration is not None
            sent.append(Sent(t, update, t - report.dtstart - report.duration))
    return state, sent


# --- metadata ---------------------------------------------------------------------------


def test_metadata_reports_conform_and_offer_every_resource() -> None:
    reports = metadata_reports(SPEC, NOW)
    conformant(RegisterReport(request_id="reg-1", ven_id="ven-1", reports=reports), NOW)
    assert [r.report_name for r in reports] == [
        "METADATA_TELEMETRY_USAGE", "METADATA_TELEMETRY_STATUS", "METADATA_HISTORY_USAGE"]
    assert [r.report_specifier_id for r in reports] == [
        TELEMETRY_USAGE, TELEMETRY_STATUS, HISTORY_USAGE]
    usage, status, history = reports
    assert tuple(d.r_id for d in usage.descriptions) == USAGE_RIDS
    assert tuple(d.r_id for d in status.descriptions) == STATUS_RIDS
    assert [d.r_id for d in history.descriptions] == ["battery-1/power", "ev-1/power"]
    for report in reports:
        assert not report.intervals and report.dtstart is None and report.report_id is None
        for d in report.descriptions:
            assert d.min_period == SPEC.report_min_period and d.max_period == H
            assert d.resource_id == d.r_id.split("/")[0]
    assert {(d.report_type, d.reading_type) for d in status.descriptions} == {
        ("x-resourceStatus", "x-notApplicable")}
    kinds = {d.r_id: d.item_base.kind for d in usage.descriptions if d.item_base}
    assert kinds["battery-1/power"] == "powerReal" and kinds["battery-1/energy"] == "energyReal"


def test_the_request_our_vtn_makes_is_accepted() -> None:
    usage = metadata_reports(SPEC, NOW)[0]
    rids = [d.r_id for d in usage.descriptions]  # the VTN asks for every offered rID
    state = accept(request(usage.report_specifier_id, rids, M, M), SPEC, NOW,
                   random.Random(1))
    assert state.report_name == TELEMETRY_USAGE and not state.one_shot


# --- refusals ---------------------------------------------------------------------------


def test_unknown_specifier_is_461() -> None:
    with pytest.raises(ReportNotSupported) as exc:
        accept(request("TELEMETRY_VOLTAGE", ["battery-1/power"], M, M), SPEC, NOW,
               random.Random(1))
    assert exc.value.code == 461 and "TELEMETRY_VOLTAGE" in exc.value.description


def test_unknown_rids_are_461_naming_them() -> None:
    rids = ["battery-1/power", "pv-9/power", "battery-1/status"]
    with pytest.raises(ReportNotSupported) as exc:
        accept(request(TELEMETRY_USAGE, rids, M, M), SPEC, NOW, random.Random(1))
    assert exc.value.code == 461
    assert "pv-9/power" in exc.value.description and "battery-1/status" in exc.value.description


def test_granularity_below_the_minimum_period_is_454_naming_both() -> None:
    with pytest.raises(InvalidData) as exc:
        accept(request(TELEMETRY_STATUS, STATUS_RIDS, 5 * S, M), SPEC, NOW, random.Random(1))
    assert exc.value.code == 454
    assert "PT5S" in exc.value.description and "PT10S" in exc.value.description


def test_periodic_without_a_sampling_step_is_454() -> None:
    spec = VenSpec(name="ven-b", vtn_url=SPEC.vtn_url, resources=(BATTERY,),
                   report_min_period=S * 0)
    with pytest.raises(InvalidData):
        accept(request(TELEMETRY_USAGE, ["battery-1/power"], S * 0, M), spec, NOW,
               random.Random(1))


def test_history_without_a_window_is_454() -> None:
    with pytest.raises(InvalidData):
        accept(request(HISTORY_USAGE, ["ev-1/power"], S * 0, S * 0), SPEC, NOW,
               random.Random(1))


# --- schedules --------------------------------------------------------------------------


def test_one_shot_reports_one_reading_now() -> None:
    state = accept(request(TELEMETRY_USAGE, USAGE_RIDS[:2], S * 0, S * 0), SPEC, NOW,
                   random.Random(1))
    assert state.one_shot and due(state, NOW) and next_wakeup(state) == NOW
    state, samples = take_samples(state, SPEC, RampSource(), NOW)
    assert [s.r_id for s in samples] == list(USAGE_RIDS[:2])
    state, update = build_update(state, samples, SPEC, NOW, random.Random(1), ven_id="ven-1",
                                 request_id="req-1", report_id="rep-1")
    assert update is not None
    conformant(update, NOW)
    (report,) = update.reports
    assert report.report_name == TELEMETRY_USAGE and report.report_request_id == "rr-1"
    assert report.dtstart == NOW and report.duration == S * 0
    (interval,) = report.intervals
    assert [p.r_id for p in interval.points] == list(USAGE_RIDS[:2])
    assert state.next_report is None and next_wakeup(state) is None and state.sent == 1


def test_periodic_reports_one_interval_per_step_and_point_per_rid() -> None:
    state = accept(request(TELEMETRY_USAGE, USAGE_RIDS, 10 * S, M), SPEC, NOW,
                   random.Random(7))
    state, sent = drive(state, NOW + 3 * M + 30 * S, random.Random(7))
    assert len(sent) == 3 and state.sent == 3
    for k, s in enumerate(sent):
        report = s.update.reports[0]
        assert report.dtstart == NOW + k * M and report.duration == M
        assert len(report.intervals) == 6  # reportBackDuration / granularity
        for i, interval in enumerate(report.intervals):
            assert interval.dtstart == NOW + k * M + i * 10 * S
            assert interval.duration == 10 * S
            assert tuple(p.r_id for p in interval.points) == USAGE_RIDS
        power = [i.points[0].value for i in report.intervals]
        assert power == [(k * 60 + i * 10) / 60 for i in range(6)]


def test_jitter_stays_within_bounds_and_differs_per_report_and_per_request() -> None:
    rng = random.Random(42)
    state = accept(request(TELEMETRY_USAGE, USAGE_RIDS, 10 * S, M), SPEC, NOW, rng)
    _, sent = drive(state, NOW + 10 * M, rng)
    jitters = [s.jitter for s in sent]
    assert len(jitters) >= 9
    assert all(S * 0 <= j <= SPEC.report_jitter * M for j in jitters)
    assert len(set(jitters)) == len(jitters)
    firsts = {accept(request(TELEMETRY_USAGE, USAGE_RIDS, 10 * S, M, request_id=f"rr-{n}"),
                     SPEC, NOW, rng).next_report for n in range(5)}
    assert len(firsts) == 5
    again = accept(request(TELEMETRY_USAGE, USAGE_RIDS, 10 * S, M), SPEC, NOW,
                   random.Random(42))
    assert again == accept(request(TELEMETRY_USAGE, USAGE_RIDS, 10 * S, M), SPEC, NOW,
                           random.Random(42))  # seeded: reproducible


def test_two_requests_keep_independent_schedules() -> None:
    """openleadr kept one rID list for all requests; here each request reports only its own
    rIDs on its own grid, even with both sampling into one shared store."""
    rng, source = random.Random(3), RampSource()
    store: list[Sample] = []
    fast = accept(request(TELEMETRY_USAGE, ["battery-1/power"], 10 * S, M, request_id="fast"),
                  SPEC, NOW, rng)
    slow = accept(request(TELEMETRY_USAGE, ["ev-1/energy", "battery-1/power"], 30 * S, 2 * M,
                          request_id="slow"), SPEC, NOW + 5 * S, rng)
    log: list[tuple[str, Sent]] = []
    until = NOW + 6 * M + 30 * S
    while True:
        wakeups = [(t, name) for name, st in (("fast", fast), ("slow", slow))
                   if (t := next_wakeup(st)) is not None and t <= until]
        if not wakeups:
            break
        t, name = min(wakeups)
        state = fast if name == "fast" else slow
        state, sent = drive_once(state, t, rng, source, store)
        if sent is not None:
            log.append((name, sent))
        fast, slow = (state, slow) if name == "fast" else (fast, state)
    fast_reports = [s.update.reports[0] for name, s in log if name == "fast"]
    slow_reports = [s.update.reports[0] for name, s in log if name == "slow"]
    assert len(fast_reports) == 6 and len(slow_reports) == 3
    for k, report in enumerate(fast_reports):
        assert report.report_request_id == "fast" and report.dtstart == NOW + k * M
        assert len(report.intervals) == 6
        assert all([p.r_id for p in i.points] == ["battery-1/power"] for i in report.intervals)
    for k, report in enumerate(slow_reports):
        assert report.report_request_id == "slow" and report.dtstart == NOW + 5 * S + k * 2 * M
        assert len(report.intervals) == 4
        assert all([p.r_id for p in i.points] == ["ev-1/energy", "battery-1/power"]
                   for i in report.intervals)


def drive_once(state: RequestState, t: datetime, rng: random.Random, source: TelemetrySource,
               store: list[Sample]) -> tuple[RequestState, Sent | None]:
    state, samples = take_samples(state, SPEC, source, t)
    store.extend(samples)
    if not due(state, t):
        return state, None
    state, update = build_update(state, store, SPEC, t, rng, ven_id="ven-1",
                                 request_id=f"req-{state.sent}", report_id=f"rep-{state.sent}")
    assert update is not None
    conformant(update, t)
    return state, Sent(t, update, S * 0)


def test_a_request_duration_ends_the_schedule() -> None:
    req = request(TELEMETRY_USAGE, USAGE_RIDS[:1], 10 * S, M, dtstart=NOW + M,
                  duration=2 * M + 30 * S)
    state = accept(req, SPEC, NOW, random.Random(5))
    assert state.next_sample == NOW + M
    state, sent = drive(state, NOW + H, random.Random(5))
    reports = [s.update.reports[0] for s in sent]
    assert [len(r.intervals) for r in reports] == [6, 6, 3]
    assert reports[-1].dtstart == NOW + 3 * M and reports[-1].duration == 30 * S
    assert state.next_sample is None and state.next_report is None
    assert next_wakeup(state) is None


def test_a_request_already_over_has_nothing_to_do() -> None:
    req = request(TELEMETRY_USAGE, USAGE_RIDS[:1], 10 * S, M, dtstart=NOW - H, duration=M)
    assert next_wakeup(accept(req, SPEC, NOW, random.Random(5))) is None


def test_a_late_vens_catch_up_is_bounded_to_the_last_closed_window() -> None:
    source = RampSource()
    state = accept(request(TELEMETRY_USAGE, USAGE_RIDS[:1], 10 * S, M), SPEC, NOW,
                   random.Random(9))
    late = NOW + H + 25 * S
    state, samples = take_samples(state, SPEC, source, late)
    # the closed window [H - 1 min, H) and the running one up to `late`
    assert [s.at for s in samples] == [NOW + H - M + i * 10 * S for i in range(9)]
    state, update = build_update(state, samples, SPEC, late, random.Random(9), ven_id="ven-1",
                                 request_id="req-1", report_id="rep-1")
    assert update is not None
    conformant(update, late)
    report = update.reports[0]
    assert report.dtstart == NOW + H - M and len(report.intervals) == 6
    assert state.next_report is not None and NOW + H + M <= state.next_report


# --- HISTORY_USAGE ----------------------------------------------------------------------


def stored_history() -> list[Sample]:
    """Battery power every 10 s over the last 10 minutes, plus ev power off the window."""
    return [Sample(r_id="battery-1/power", at=NOW - 10 * M + i * 10 * S, value=float(i))
            for i in range(60)] + [Sample(r_id="ev-1/power", at=NOW - 4 * M, value=99.0)]


def test_history_usage_reports_the_stored_samples_in_the_window() -> None:
    req = request(HISTORY_USAGE, ["battery-1/power"], S * 0, S * 0, dtstart=NOW - 5 * M,
                  duration=2 * M)
    state = accept(req, SPEC, NOW, random.Random(1))
    assert state.one_shot and due(state, NOW) and state.next_sample is None
    state, update = build_update(state, stored_history(), SPEC, NOW, random.Random(1),
                                 ven_id="ven-1", request_id="req-1", report_id="rep-1")
    assert update is not None
    conformant(update, NOW)
    report = update.reports[0]
    assert report.report_name == HISTORY_USAGE and report.dtstart == NOW - 5 * M
    assert [i.points[0].value for i in report.intervals] == [float(v) for v in range(30, 42)]
    assert [i.duration for i in report.intervals] == [10 * S] * 11 + [S * 0]
    assert report.duration == 110 * S
    assert state.next_report is None and state.sent == 1


def test_history_usage_with_a_granularity_resamples_on_its_grid() -> None:
    req = request(HISTORY_USAGE, ["battery-1/power"], 30 * S, S * 0, dtstart=NOW - 5 * M,
                  duration=2 * M)
    state = accept(req, SPEC, NOW, random.Random(1))
    _, update = build_update(state, stored_history(), SPEC, NOW, random.Random(1),
                             ven_id="ven-1", request_id="req-1", report_id="rep-1")
    assert update is not None
    conformant(update, NOW)
    report = update.reports[0]
    assert [i.points[0].value for i in report.intervals] == [32.0, 35.0, 38.0, 41.0]
    assert report.duration == 2 * M


def test_history_of_samples_taken_between_whole_seconds_has_whole_second_durations() -> None:
    """Samples are taken at any instant; xcal durations have no fractional seconds (XSD)."""
    samples = [Sample(r_id="battery-1/power", at=NOW - 4 * M + i * timedelta(seconds=10.25),
                      value=float(i)) for i in range(8)]
    req = request(HISTORY_USAGE, ["battery-1/power"], S * 0, S * 0, dtstart=NOW - 5 * M,
                  duration=2 * M)
    _, update = build_update(accept(req, SPEC, NOW, random.Random(1)), samples, SPEC, NOW,
                             random.Random(1), ven_id="ven-1", request_id="req-1",
                             report_id="rep-1")
    assert update is not None
    conformant(update, NOW)  # serialized and checked against the XSD
    report = update.reports[0]
    assert [i.dtstart for i in report.intervals] == [
        s.at.replace(microsecond=0) for s in samples if s.at < NOW - 3 * M]
    assert sum((i.duration for i in report.intervals), S * 0) == report.duration == 51 * S


def test_history_without_a_duration_runs_up_to_its_acceptance() -> None:
    req = request(HISTORY_USAGE, ["battery-1/power"], S * 0, S * 0, dtstart=NOW - 5 * M)
    state = accept(req, SPEC, NOW, random.Random(1))
    assert history_window(state) == (NOW - 5 * M, NOW)
    _, update = build_update(state, stored_history(), SPEC, NOW + M, random.Random(1),
                             ven_id="ven-1", request_id="req-1", report_id="rep-1")
    assert update is not None
    conformant(update, NOW + M)
    assert len(update.reports[0].intervals) == 30


def test_history_of_a_running_window_waits_for_its_end_and_empty_is_none() -> None:
    req = request(HISTORY_USAGE, ["ev-1/power"], S * 0, S * 0, dtstart=NOW - M, duration=2 * M)
    state = accept(req, SPEC, NOW, random.Random(1))
    assert state.next_report == NOW + M and not due(state, NOW)
    state, update = build_update(state, stored_history(), SPEC, NOW + M, random.Random(1),
                                 ven_id="ven-1", request_id="req-1", report_id="rep-1")
    assert update is None and state.next_report is None


# --- TELEMETRY_STATUS -------------------------------------------------------------------


def test_status_reports_carry_load_control_state_in_every_interval() -> None:
    state = accept(request(TELEMETRY_STATUS, STATUS_RIDS, 10 * S, M), SPEC, NOW,
                   random.Random(2))
    _, sent = drive(state, NOW + 2 * M + 30 * S, random.Random(2),
                    source=RampSource(capacity_from=NOW + 90 * S))
    before, during = (s.update.reports[0] for s in sent)
    assert all(p.status is not None and p.status.load_control is None
               for i in before.intervals for p in i.points)
    capacities = []
    for interval in during.intervals:
        battery, ev = interval.points
        assert battery.status is not None and ev.status is not None
        assert battery.status.load_control is not None and ev.status.load_control is not None
        assert ev.status.manual_override and ev.status.load_control.current == 1.0
        assert battery.status.online and battery.status.load_control.kind == "oadrCapacity"
        capacities.append(battery.status.load_control.current)
    assert capacities == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5]


# --- ModelTelemetry ---------------------------------------------------------------------


def grid(name: str, signal_type: str, value: float, *, start: datetime = NOW,
         end: datetime | None = None, priority: int = 1, unit: str | None = None,
         event_id: str = "event-1") -> GridSignal:
    return GridSignal(program="flex", event_id=event_id, modification_number=0,
                      priority=priority, signal_name=name, signal_type=signal_type,
                      signal_id="0", unit=unit,
                      intervals=(SignalInterval(start=start, end=end, value=value),),
                      resources=("battery-1",), purpose=Purpose.RESPONSE)


def model(*signals: GridSignal, availability: tuple[bool, bool] = (True, False)
          ) -> ModelTelemetry:
    return ModelTelemetry(lambda rid_, now: [s for s in signals if rid_ in s.resources],
                          lambda rid_, now: availability)


def test_model_follows_the_baseline_without_signals() -> None:
    reading = model().read(BATTERY, NOW)
    assert reading == Reading(power_kw=4.0, energy_kwh=0.0, online=True, manual_override=False,
                              load_control=None)


@pytest.mark.parametrize(("signal", "power", "capacity"), [
    (grid("LOAD_CONTROL", "x-loadControlCapacity", 0.2), 2.0, 0.2),
    (grid("LOAD_CONTROL", "x-loadControlCapacity", 0.9), 4.0, 0.9),
    (grid("LOAD_DISPATCH", "setpoint", 6.0, unit="kW"), 6.0, None),
    (grid("LOAD_DISPATCH", "setpoint", 9000.0, unit="W"), 7.0, None),
    (grid("LOAD_DISPATCH", "setpoint", -5.0), 1.0, None),
    (grid("SIMPLE", "level", 2), 2.0, None),
    (grid("ELECTRICITY_PRICE", "price", 0.5), 4.0, None),
    (grid("LOAD_CONTROL", "x-loadControlCapacity", 0.2, start=NOW + H), 4.0, None),
], ids=["capacity-caps", "capacity-above-baseline", "setpoint", "setpoint-in-W-clamped",
        "setpoint-clamped-low", "simple-level-2", "price-ignored", "not-yet-started"])
def test_model_power_under_one_signal(signal: GridSignal, power: float,
                                      capacity: float | None) -> None:
    reading = model(signal).read(BATTERY, NOW)
    assert reading.power_kw == pytest.approx(power)
    expected = None if capacity is None else LoadControlState(kind="oadrCapacity",
                                                              current=capacity)
    assert reading.load_control == expected


def test_model_lowest_nonzero_priority_wins() -> None:
    signals = (grid("SIMPLE", "level", 3, priority=0, event_id="a"),
               grid("LOAD_CONTROL", "x-loadControlCapacity", 0.1, priority=2, event_id="b"),
               grid("SIMPLE", "level", 1, priority=1, event_id="c"))
    assert model(*signals).read(BATTERY, NOW).power_kw == pytest.approx(3.0)


def test_model_energy_integrates_monotonically() -> None:
    telemetry = model(grid("LOAD_CONTROL", "x-loadControlCapacity", 0.2, start=NOW + 30 * M))
    energy = [telemetry.read(BATTERY, NOW + k * 15 * M).energy_kwh for k in range(5)]
    assert energy == pytest.approx([0.0, 1.0, 2.0, 2.5, 3.0])  # 4 kW, then 2 kW
    # an earlier reading (another request's grid) is interpolated, never going back
    assert telemetry.read(BATTERY, NOW + 40 * M).energy_kwh == pytest.approx(2 + 1 / 3)
    assert telemetry.read(BATTERY, NOW + H + M).energy_kwh > energy[-1]
    assert telemetry.read(EV, NOW).energy_kwh == 0.0  # one counter per resource


@pytest.mark.parametrize("availability", [(False, False), (True, True)],
                         ids=["offline", "manual-override"])
def test_model_availability_flags_and_signals_ignored(availability: tuple[bool, bool]) -> None:
    telemetry = model(grid("LOAD_CONTROL", "x-loadControlCapacity", 0.2),
                      availability=availability)
    reading = telemetry.read(BATTERY, NOW)
    assert (reading.online, reading.manual_override) == availability
    assert reading.power_kw == 4.0 and reading.load_control is None


def test_model_feeds_conformant_reports() -> None:
    telemetry = model(grid("LOAD_CONTROL", "x-loadControlCapacity", 0.5, start=NOW + M))
    usage = accept(request(TELEMETRY_USAGE, USAGE_RIDS, 10 * S, M), SPEC, NOW, random.Random(4))
    _, sent = drive(usage, NOW + 2 * M + 30 * S, random.Random(4), source=telemetry)
    energy = [p.value or 0.0 for s in sent for i in s.update.reports[0].intervals
              for p in i.points if p.r_id == "battery-1/energy"]
    assert len(energy) == 12 and energy == sorted(energy) and energy[-1] > 0
    status = accept(request(TELEMETRY_STATUS, STATUS_RIDS, 10 * S, M), SPEC, NOW,
                    random.Random(4))
    _, sent = drive(status, NOW + 2 * M + 30 * S, random.Random(4), source=telemetry)
    assert len(sent) == 2


def test_sampling_steps_that_do_not_divide_a_minute_are_kept_exactly() -> None:
    # openleadr's client rounds sampling intervals to cron fields; 7 s must stay 7 s.
    start = NOW + 3 * S  # not on a minute boundary either
    spec = dataclasses.replace(SPEC, report_min_period=S)
    state = accept(request(TELEMETRY_USAGE, USAGE_RIDS, 7 * S, 21 * S), spec, start,
                   random.Random(3))
    state, sent = drive(state, start + 70 * S, random.Random(3))
    assert len(sent) >= 3
    starts = [i.dtstart for s in sent for i in s.update.reports[0].intervals]
    assert starts == [start + k * 7 * S for k in range(len(starts))]


def test_declared_availability_follows_the_fleet_file_windows() -> None:
    outage = AvailabilitySpec(opt_id="o", opt_type=OptType.OPT_OUT,
                              reason=OptReason.OUTAGE_RUN_STATUS, start=NOW, duration=H,
                              resources=("battery-1",))
    override = AvailabilitySpec(opt_id="u", opt_type=OptType.OPT_OUT,
                                reason=OptReason.OVERRIDE_STATUS, start=NOW + 2 * H, duration=H)
    available = declared_availability([outage, override])
    assert available("battery-1", NOW) == (False, False)
    assert available("ev-1", NOW) == (True, False)  # the outage names one resource only
    assert available("battery-1", NOW + H) == (True, False)  # the window has ended
    assert available("ev-1", NOW + 2 * H) == (True, True)  # no resources named: all of them
