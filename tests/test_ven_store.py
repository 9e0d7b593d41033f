"""The VEN fleet store on SQLite and on a real PostgreSQL: what a restarted fleet reads back."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import StatementError

from adrgate.services import make_engine
from oadr.errors import AdrError
from oadr.messages import (
    ActivePeriod, Availability, CreateOpt, Event, EventSignal, EventStatus, Interval, ItemBase,
    OptReason, OptType, ReportRequest, ResponseRequired, SpecifierPayload, Target,
)
from ven.records import (
    Changes, OptState, Registration, RegState, RequestState, Sample, VenEvent, VenSnapshot,
)
from ven.store import EventLine, FleetStore, OptLine, RequestLine, VenStatusRow
from vtn.store import VtnStore

T0 = datetime(2024, 2, 1, 16, tzinfo=UTC)
H = timedelta(hours=1)
M = timedelta(minutes=1)
CET = timezone(timedelta(hours=1))


@pytest.fixture
def store(database_url: str) -> Iterator[FleetStore]:
    s = FleetStore(make_engine(database_url))
    yield s
    s.close()


def reopen(database_url: str) -> FleetStore:
    """A second store on the same database: a restarted (or another) process."""
    return FleetStore(make_engine(database_url))


def event(event_id: str = "evt-1", mod: int = 0) -> Event:
    return Event(
        event_id=event_id, modification_number=mod, market_context="http://dso.example/flex",
        created=T0 - H, status=EventStatus.FAR, priority=2, test_event=False,
        modification_reason="moved" if mod else None,
        modification_date_time=T0 - M if mod else None, vtn_comment="evening peak",
        response_required=ResponseRequired.ALWAYS,
        active_period=ActivePeriod(dtstart=T0 + H, duration=90 * M, start_after=10 * M,
                                   notification=H, ramp_up=5 * M, recovery=15 * M),
        signals=(
            EventSignal(signal_name="LOAD_CONTROL", signal_type="x-loadControlCapacity",
                        signal_id="sig-cap", current_value=0.0,
                        intervals=(Interval(uid=0, duration=H, payload=0.6),
                                   Interval(uid=1, duration=30 * M, payload=0.8)),
                        targets=Target(resource_ids=("battery-1",))),
            EventSignal(signal_name="LOAD_DISPATCH", signal_type="setpoint", signal_id="sig-kw",
                        current_value=0.0, intervals=(Interval(uid=0, duration=90 * M,
                                                               payload=-250.5),),
                        item_base=ItemBase(kind="powerReal", description="RealPower", units="W",
                                           si_scale="k", hertz=50.0, voltage=230.0, ac=True)),
        ),
        targets=Target(ven_ids=("ven-a",), group_ids=("south",),
                       resource_ids=("battery-1", "ev-2")),
    )


def ven_event(event_id: str = "evt-1", mod: int = 0, **kw: Any) -> VenEvent:
    base = VenEvent(event=event(event_id, mod), received=T0.astimezone(CET),
                    request_id=f"dist-{mod}", opt=OptType.OPT_IN,
                    opt_reason="capacity available", response_code=200, answered_mod=-1,
                    start_offsets=(("battery-1", timedelta(seconds=42.5)), ("ev-2", 3 * M)))
    return dataclasses.replace(base, **kw)


def schedule_opt(opt_id: str = "opt-1", **kw: Any) -> OptState:
    opt = CreateOpt(request_id="req-opt-1", opt_id=opt_id, opt_type=OptType.OPT_OUT,
                    opt_reason=OptReason.X_SCHEDULE, ven_id="VEN-ID-A", created=T0,
                    market_context="http://dso.example/flex",
                    availability=(Availability(dtstart=T0 + H, duration=2 * H),
                                  Availability(dtstart=T0 + 5 * H, duration=210 * M)),
                    targets=Target(resource_ids=("ev-2",)))
    return OptState(opt=opt, **kw)


def event_opt() -> OptState:
    return OptState(opt=CreateOpt(
        request_id="req-opt-2", opt_id="opt-2", opt_type=OptType.OPT_OUT,
        opt_reason=OptReason.OVERRIDE_STATUS, ven_id="VEN-ID-A", created=T0, event_id="evt-1",
        modification_number=0, targets=Target(resource_ids=("battery-1",))), acked=True,
        cancelled=True, cancel_acked=False)


def request(report_request_id: str = "rr-1", **kw: Any) -> RequestState:
    req = ReportRequest(report_request_id=report_request_id, report_specifier_id="usage-a",
                        granularity=M, report_back_duration=5 * M, dtstart=T0 - H,
                        duration=2 * H, specifiers=(SpecifierPayload(r_id="p-1"),
                                                    SpecifierPayload(r_id="e-1",
                                                                     reading_type="Summed")))
    base = RequestState(request=req, report_name="TELEMETRY_USAGE", created=T0,
                        next_sample=T0 + M, next_report=T0 + 5 * M, one_shot=False, sent=3)
    return dataclasses.replace(base, **kw)


def changes(*, registration: Registration | None = None, events: Sequence[VenEvent] = (),
            dropped_events: Sequence[str] = (), opts: Sequence[OptState] = (),
            requests: Sequence[RequestState] = (), dropped_requests: Sequence[str] = (),
            samples: Sequence[Sample] = ()) -> Changes:
    """Changes as the agent accumulates them."""
    out = Changes(registration=registration, samples=list(samples))
    for ve in events:
        out.put_event(ve)
    for event_id in dropped_events:
        out.drop_event(event_id)
    for opt in opts:
        out.put_opt(opt)
    for rs in requests:
        out.put_request(rs)
    for rid in dropped_requests:
        out.drop_request(rid)
    return out


REGISTERED = Registration(state=RegState.READY, vtn_id="DSO", ven_id="VEN-ID-A",
                          registration_id="reg-a", poll_freq=timedelta(seconds=7.5), resync=True)


def test_every_record_survives_a_restart(store: FleetStore, database_url: str) -> None:
    store.save("ven-a", changes(registration=REGISTERED, events=(ven_event(),),
                                opts=(schedule_opt(acked=True), event_opt()),
                                requests=(request(),)))
    expected = VenSnapshot(registration=REGISTERED, events={"evt-1": ven_event()},
                           opts={"opt-1": schedule_opt(acked=True), "opt-2": event_opt()},
                           requests={"rr-1": request()})
    again = reopen(database_url)
    try:
        assert again.load_all() == {"ven-a": expected}
        loaded = again.load("ven-a")
    finally:
        again.close()
    assert loaded == expected
    received = loaded.events["evt-1"].received
    assert received.tzinfo is UTC, "a CET datetime comes back as aware UTC"
    assert store.load("ven-unknown") == VenSnapshot()


def test_upserts_replace(store: FleetStore) -> None:
    store.save("ven-a", changes(registration=Registration(state=RegState.QUERIED, vtn_id="DSO"),
                                events=(ven_event(),), opts=(schedule_opt(),),
                                requests=(request(),)))
    newer = ven_event(mod=1, opt=OptType.OPT_OUT, answered_mod=1, response_code=460,
                      start_offsets=())
    store.save("ven-a", changes(registration=REGISTERED, events=(newer,),
                                opts=(schedule_opt(acked=True, cancelled=True),),
                                requests=(request(next_report=None, one_shot=True, sent=4),)))
    snap = store.load("ven-a")
    assert snap.registration == REGISTERED
    assert snap.events == {"evt-1": newer}
    assert snap.opts == {"opt-1": schedule_opt(acked=True, cancelled=True)}
    assert snap.requests == {"rr-1": request(next_report=None, one_shot=True, sent=4)}


def test_a_batch_may_repeat_a_sample_and_the_last_wins(store: FleetStore) -> None:
    store.save("ven-a", changes(samples=(Sample(r_id="p", at=T0, value=1.0),
                                         Sample(r_id="p", at=T0, value=2.0))))
    assert store.samples("ven-a", ["p"], T0, T0 + M) == [Sample(r_id="p", at=T0, value=2.0)]


def test_drops_remove_only_the_named_rows_of_that_ven(store: FleetStore) -> None:
    both = changes(events=(ven_event("evt-1"), ven_event("evt-2")),
                   requests=(request("rr-1"), request("rr-2")))
    store.save("ven-a", both)
    store.save("ven-b", both)
    store.save("ven-a", changes(dropped_events=("evt-1", "evt-unknown"),
                                dropped_requests=("rr-2",)))
    a, b = store.load("ven-a"), store.load("ven-b")
    assert list(a.events) == ["evt-2"] and list(a.requests) == ["rr-1"]
    assert list(b.events) == ["evt-1", "evt-2"] and list(b.requests) == ["rr-1", "rr-2"]


def test_load_reads_only_that_vens_rows(store: FleetStore) -> None:
    store.save("ven-a", changes(events=(ven_event(),)))
    store.save("ven-b", changes(events=(ven_event(),)))
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE ven_event SET xml = 'garbage' WHERE ven_name = 'ven-b'"))
    assert store.load("ven-a").events == {"evt-1": ven_event()}
    with pytest.raises(AdrError):
        store.load_all()


def test_forget_keeps_only_samples(store: FleetStore) -> None:
    full = changes(registration=REGISTERED, events=(ven_event(),), opts=(schedule_opt(),),
                   requests=(request(),), samples=(Sample(r_id="p", at=T0, value=1.0),))
    store.save("ven-a", full)
    store.save("ven-b", full)
    store.save_heartbeats({"ven-a": (T0, None), "ven-b": (T0, None)})
    store.forget("ven-a")
    assert store.load("ven-a") == VenSnapshot()
    assert store.load_all().keys() == {"ven-b"}
    assert [row.name for row in store.status()] == ["ven-b"], "its heartbeat went too"
    assert store.samples("ven-a", ["p"], T0, T0 + M) == [Sample(r_id="p", at=T0, value=1.0)]
    assert store.load("ven-b").registration == REGISTERED


def test_samples_by_range_and_prune(store: FleetStore) -> None:
    at = [T0 + i * M for i in range(5)]
    store.save("ven-a", changes(samples=tuple(
        Sample(r_id=r_id, at=t, value=float(i), online=i % 2 == 0, manual_override=False)
        for i, t in enumerate(at) for r_id in ("p", "e", "s"))))
    store.save("ven-b", changes(samples=(Sample(r_id="p", at=at[1], value=99.0),)))
    # a replaced reading, written in another zone: same instant, so the same key
    store.save("ven-a", changes(samples=(Sample(r_id="p", at=at[2].astimezone(CET), value=-1.0),)))
    got = store.samples("ven-a", ["p", "e"], at[1].astimezone(CET), at[3])
    assert [(s.r_id, s.at, s.value) for s in got] == [
        ("e", at[1], 1.0), ("p", at[1], 1.0), ("e", at[2], 2.0), ("p", at[2], -1.0)]
    assert got[0] == Sample(r_id="e", at=at[1], value=1.0, online=False, manual_override=False)
    assert all(s.at.tzinfo is UTC for s in got)
    assert store.prune_samples(at[2]) == 2 * 3 + 1
    assert [s.at for s in store.samples("ven-a", ["p"], T0 - H, T0 + H)] == at[2:]
    assert store.samples("ven-b", ["p"], T0 - H, T0 + H) == []


def test_heartbeats_are_upserted_in_one_batch(store: FleetStore) -> None:
    store.save_heartbeats({"ven-a": (T0, None), "ven-b": (None, "connect refused")})
    store.save_heartbeats({"ven-a": (T0 + M, "HTTP 503"), "ven-c": (T0, None)})
    rows = {row.name: (row.last_poll, row.last_error) for row in store.status()}
    assert rows == {"ven-a": (T0 + M, "HTTP 503"), "ven-b": (None, "connect refused"),
                    "ven-c": (T0, None)}
    store.save_heartbeats({})  # a quiet interval writes nothing and does not fail


def test_status_summarises_each_ven(store: FleetStore) -> None:
    store.save("ven-a", changes(
        registration=REGISTERED,
        events=(ven_event("evt-1", mod=1, answered_mod=1),
                ven_event("evt-2", mod=2, answered_mod=1, opt=OptType.OPT_OUT)),
        opts=(schedule_opt(acked=True), event_opt()), requests=(request(),)))
    store.save("ven-b", changes(events=(ven_event("evt-9"),)))
    store.save_heartbeats({"ven-a": (T0, None)})
    assert store.status() == [
        VenStatusRow(
            name="ven-a", ven_id="VEN-ID-A", registration_id="reg-a", state=RegState.READY,
            poll_freq=timedelta(seconds=7.5), last_poll=T0, last_error=None,
            events=(EventLine(event_id="evt-1", modification_number=1, opt=OptType.OPT_IN,
                              answered=True),
                    EventLine(event_id="evt-2", modification_number=2, opt=OptType.OPT_OUT,
                              answered=False)),
            opts=(OptLine(opt_id="opt-1", opt_type=OptType.OPT_OUT, reason="x-schedule",
                          acked=True, cancelled=False),
                  OptLine(opt_id="opt-2", opt_type=OptType.OPT_OUT, reason="overrideStatus",
                          acked=True, cancelled=True)),
            requests=(RequestLine(report_request_id="rr-1", report_name="TELEMETRY_USAGE",
                                  granularity=M, next_report=T0 + 5 * M),)),
        VenStatusRow(name="ven-b", events=(EventLine(
            event_id="evt-9", modification_number=0, opt=OptType.OPT_IN, answered=False),)),
    ]


def test_status_reads_beside_a_writer_in_another_process(store: FleetStore,
                                                         database_url: str) -> None:
    store.save("ven-a", changes(registration=REGISTERED))
    with store.engine.begin() as conn:  # the fleet, mid-transaction
        conn.execute(text("UPDATE ven_registration SET state = 'unregistered'"))
        conn.execute(text("DELETE FROM ven_heartbeat"))
        reader = reopen(database_url)  # `adrgate ven status`: tables exist, nothing to create
        try:
            assert [(r.name, r.state) for r in reader.status()] == [("ven-a", RegState.READY)]
        finally:
            reader.close()


def test_save_writes_all_or_nothing(store: FleetStore) -> None:
    before = changes(registration=REGISTERED, events=(ven_event(),), requests=(request(),),
                     samples=(Sample(r_id="p", at=T0, value=1.0),))
    store.save("ven-a", before)
    naive = T0.replace(tzinfo=None)
    broken = changes(registration=dataclasses.replace(REGISTERED, state=RegState.REGISTERED),
                     events=(ven_event("evt-2"),), dropped_events=("evt-1",),
                     opts=(schedule_opt(),), dropped_requests=("rr-1",),
                     samples=(Sample(r_id="p", at=T0, value=5.0),
                              Sample(r_id="p", at=naive + M, value=6.0)))
    with pytest.raises(StatementError, match="naive datetime"):
        store.save("ven-a", broken)
    snap = store.load("ven-a")
    assert snap == VenSnapshot(registration=REGISTERED, events={"evt-1": ven_event()},
                               requests={"rr-1": request()})
    assert store.samples("ven-a", ["p"], T0 - H, T0 + H) == [Sample(r_id="p", at=T0, value=1.0)]


def test_save_rolls_back_when_the_database_refuses_a_row(store: FleetStore) -> None:
    store.save("ven-a", changes(events=(ven_event(),)))
    # report_name is NOT NULL: the database refuses this row after the drop has run
    refused = dataclasses.replace(request(), report_name=None)  # type: ignore[arg-type]
    with pytest.raises(StatementError):
        store.save("ven-a", changes(registration=REGISTERED, dropped_events=("evt-1",),
                                    requests=(refused,)))
    assert store.load("ven-a") == VenSnapshot(events={"evt-1": ven_event()})


def test_fleet_and_vtn_share_a_database(database_url: str) -> None:
    vtn = VtnStore(make_engine(database_url))
    vtn.create_schema()
    fleet: FleetStore | None = None
    try:
        assert not [n for n in inspect(vtn.engine).get_table_names() if n.startswith("ven_")], \
            "the VTN creates only its own tables"
        fleet = reopen(database_url)
        fleet.save("ven-a", changes(registration=REGISTERED))
        names = set(inspect(fleet.engine).get_table_names())
        assert {"ven", "event", "opt", "ven_registration", "ven_event", "ven_opt"} <= names
        assert vtn.list_vens() == [] and fleet.load("ven-a").registration == REGISTERED
    finally:
        vtn.close()
        if fleet is not None:
            fleet.close()
