"""EiOpt and EiReport against a running VTN, message by message (certification families P, R).

Every reply the VTN emits is checked for conformance by `RawVen.post`; what the VTN recorded is
read back through the operator API.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from oadr.messages import (
    Availability, CanceledOpt, CanceledReport, CancelOpt, CancelReport, CreatedOpt, CreatedReport,
    CreateOpt, CreateReport, DistributeEvent, LoadControlState, OptReason, OptType,
    Report, ReportInterval, ReportPoint, ResourceStatus,
    Response, ResponseMessage, Target, UpdatedReport, UpdateReport,
)
from vtn.records import ReportVia

from tests.rawven import RawVen, code, new_id, telemetry_metadata
from tests.vtnkit import Vtn, api, running_vtn, simple_event, utcnow

PROGRAM = "http://dso.example/programs/flex"
POLL = timedelta(seconds=1)


# --- helpers ------------------------------------------------------------------------------

async def registered(vtn: Vtn, name: str) -> RawVen:
    ven = RawVen(vtn, name)
    await ven.register()
    return ven


async def reports_of(vtn: Vtn, ven: RawVen) -> dict[str, Any]:
    status, body = await api(vtn, "GET", f"/api/vens/{ven.ven_id}/reports")
    assert status == 200, body
    return body


def status_report(request_id: str, at: datetime) -> Report:
    """One TELEMETRY_STATUS interval: online, no override, level offset 1 of 0..3."""
    point = ReportPoint(r_id="status-1", status=ResourceStatus(
        online=True, manual_override=False,
        load_control=LoadControlState(kind="oadrLevelOffset", current=1, min=0, max=3, normal=0)))
    minute = timedelta(minutes=1)
    return Report(report_specifier_id="spec-status", report_name="TELEMETRY_STATUS",
                  created=at, report_request_id=request_id, report_id=new_id(), dtstart=at,
                  duration=minute,
                  intervals=(ReportInterval(dtstart=at, duration=minute, uid=0, points=(point,)),))


async def update_report(ven: RawVen, report: Report) -> UpdatedReport:
    assert ven.ven_id is not None
    reply = await ven.send(UpdateReport(request_id=new_id(), ven_id=ven.ven_id, reports=(report,)))
    assert isinstance(reply, UpdatedReport) and code(reply) == 200, reply
    return reply


async def requests_by_name(ven: RawVen, min_period: timedelta = timedelta(seconds=10)
                           ) -> dict[str, str]:
    """Register telemetry metadata; return reportRequestID by report specifier."""
    registered_report = await ven.register_reports(*telemetry_metadata(min_period))
    return {r.report_specifier_id: r.report_request_id
            for r in registered_report.report_requests}


def create_opt(ven: RawVen, **fields: Any) -> CreateOpt:
    assert ven.ven_id is not None
    fields.setdefault("opt_reason", OptReason.ECONOMIC)
    return CreateOpt(request_id=new_id(), opt_id=new_id(), ven_id=ven.ven_id, created=utcnow(),
                     **fields)


# --- opt ----------------------------------------------------------------------------------

async def test_availability_opt_is_stored_and_listed() -> None:
    async with running_vtn(poll_freq=POLL) as vtn:
        ven = await registered(vtn, "scheduler")
        start = (utcnow() + timedelta(hours=1)).replace(microsecond=0)
        opt = create_opt(ven, opt_type=OptType.OPT_OUT, opt_reason=OptReason.X_SCHEDULE,
                         market_context=PROGRAM,
                         availability=(Availability(dtstart=start, duration=timedelta(hours=2)),),
                         targets=Target(resource_ids=("battery-1",)))
        reply = await ven.send(opt)
        assert isinstance(reply, CreatedOpt) and code(reply) == 200, reply
        assert reply.opt_id == opt.opt_id

        status, listed = await api(vtn, "GET", f"/api/opts?ven_id={ven.ven_id}")
        assert status == 200, listed
        (shown,) = listed
        assert (shown["opt_id"], shown["opt_type"], shown["opt_reason"]) == (
            opt.opt_id, "optOut", "x-schedule")
        assert shown["market_context"] == PROGRAM and shown["event_id"] is None
        assert [(datetime.fromisoformat(a["dtstart"]), a["duration_s"])
                for a in shown["availability"]] == [(start, 7200)]
        assert shown["cancelled_at"] is None


async def test_event_opt_out_updates_that_vens_delivery() -> None:
    async with running_vtn(poll_freq=POLL) as vtn:
        ven = await registered(vtn, "changes-mind")
        other = await registered(vtn, "stays-in")
        status, ev = await api(vtn, "POST", "/api/events", simple_event(
            targets={"ven_ids": [ven.ven_id, other.ven_id]}, start_in=timedelta(minutes=5)))
        assert status == 201, ev
        for v in (ven, other):
            got = await v.poll()
            assert isinstance(got, DistributeEvent), got
            await v.created_event(got, OptType.OPT_IN)

        reply = await ven.send(create_opt(ven, opt_type=OptType.OPT_OUT, event_id=ev["event_id"],
                                          modification_number=0))
        assert isinstance(reply, CreatedOpt) and code(reply) == 200, reply
        status, shown = await api(vtn, "GET", f"/api/events/{ev['event_id']}")
        assert status == 200, shown
        assert {d["ven_id"]: d["opt"] for d in shown["deliveries"]} == {
            ven.ven_id: "optOut", other.ven_id: "optIn"}


async def test_cancel_opt_marks_it_cancelled() -> None:
    async with running_vtn(poll_freq=POLL) as vtn:
        ven = await registered(vtn, "undecided")
        opt = create_opt(ven, opt_type=OptType.OPT_OUT, market_context=PROGRAM, availability=(
            Availability(dtstart=utcnow() + timedelta(hours=1), duration=timedelta(hours=1)),))
        await ven.send(opt)
        assert ven.ven_id is not None
        reply = await ven.send(CancelOpt(request_id=new_id(), opt_id=opt.opt_id,
                                         ven_id=ven.ven_id))
        assert isinstance(reply, CanceledOpt) and code(reply) == 200, reply
        assert reply.opt_id == opt.opt_id
        status, listed = await api(vtn, "GET", "/api/opts")
        assert status == 200 and [o["opt_id"] for o in listed] == [opt.opt_id], listed
        assert listed[0]["cancelled_at"] is not None


# --- reports ------------------------------------------------------------------------------

GRANULARITY = [
    pytest.param(timedelta(seconds=60), timedelta(seconds=10), timedelta(seconds=60),
                 id="vtn-default-above-min-period"),
    pytest.param(timedelta(seconds=60), timedelta(minutes=5), timedelta(minutes=5),
                 id="raised-to-min-period"),
]


@pytest.mark.parametrize(("configured", "min_period", "expected"), GRANULARITY)
async def test_registered_report_requests_telemetry(
        configured: timedelta, min_period: timedelta, expected: timedelta) -> None:
    async with running_vtn(poll_freq=POLL, report_granularity=configured) as vtn:
        ven = await registered(vtn, "reporter")
        reply = await ven.register_reports(*telemetry_metadata(min_period))
        assert reply.ven_id == ven.ven_id
        by_spec = {r.report_specifier_id: r for r in reply.report_requests}
        assert set(by_spec) == {"spec-usage", "spec-status"}
        assert {s.r_id for s in by_spec["spec-usage"].specifiers} == {"usage-1"}
        assert {s.r_id for s in by_spec["spec-status"].specifiers} == {"status-1"}
        for request in reply.report_requests:
            assert {s.reading_type for s in request.specifiers} == {"x-notApplicable"}
            assert request.granularity == expected
            assert request.granularity >= min_period
        shown = await reports_of(vtn, ven)
        assert {m["report_name"] for m in shown["metadata"]} == {
            "METADATA_TELEMETRY_USAGE", "METADATA_TELEMETRY_STATUS"}


async def test_report_requests_sent_by_create_report_on_poll() -> None:
    async with running_vtn(poll_freq=POLL, report_via=ReportVia.CREATE) as vtn:
        ven = await registered(vtn, "create-reporter")
        reply = await ven.register_reports(*telemetry_metadata(timedelta(seconds=10)))
        assert reply.report_requests == ()
        create = await ven.poll()
        assert isinstance(create, CreateReport), create
        ids = tuple(r.report_request_id for r in create.report_requests)
        assert len(ids) == 2
        assert ven.ven_id is not None
        ack = await ven.send(CreatedReport(
            response=Response(code=200, description="OK", request_id=create.request_id),
            ven_id=ven.ven_id, pending_reports=ids))
        assert isinstance(ack, ResponseMessage) and code(ack) == 200, ack
        shown = await reports_of(vtn, ven)
        assert {r["status"] for r in shown["requests"]} == {"active"}


async def test_status_report_stored_and_shown() -> None:
    async with running_vtn(poll_freq=POLL) as vtn:
        ven = await registered(vtn, "status-reporter")
        request_id = (await requests_by_name(ven))["spec-status"]
        at = utcnow().replace(microsecond=0)
        await update_report(ven, status_report(request_id, at))
        (value,) = (await reports_of(vtn, ven))["values"]
        assert value == {
            "report_request_id": request_id, "report_name": "TELEMETRY_STATUS",
            "r_id": "status-1", "resource_id": "battery-1",
            "dtstart": value["dtstart"], "duration_s": 60.0, "value": None,
            "status": {"online": True, "manual_override": False, "load_control": {
                "kind": "oadrLevelOffset", "current": 1.0, "min": 0.0, "max": 3.0,
                "normal": 0.0}}}
        assert datetime.fromisoformat(value["dtstart"]) == at


async def test_operator_cancels_a_report_request() -> None:
    async with running_vtn(poll_freq=POLL) as vtn:
        ven = await registered(vtn, "cancelled-reporter")
        request_id = (await requests_by_name(ven))["spec-usage"]
        status, body = await api(vtn, "POST", f"/api/report-requests/{request_id}/cancel")
        assert status == 202 and body["status"] == "cancelling", body

        cancel = await ven.poll()
        assert isinstance(cancel, CancelReport), cancel
        assert cancel.report_request_ids == (request_id,) and cancel.ven_id == ven.ven_id
        assert ven.ven_id is not None
        ack = await ven.send(CanceledReport(
            response=Response(code=200, description="OK", request_id=cancel.request_id),
            ven_id=ven.ven_id))
        assert isinstance(ack, ResponseMessage) and code(ack) == 200, ack
        statuses = {r["report_request_id"]: r["status"]
                    for r in (await reports_of(vtn, ven))["requests"]}
        assert statuses[request_id] == "cancelled"
        assert set(statuses.values()) == {"cancelled", "requested"}
        reply = await ven.poll()
        assert isinstance(reply, ResponseMessage) and code(reply) == 200, reply


async def test_report_requests_survive_a_vtn_restart(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'vtn.db'}"
    async with running_vtn(database, poll_freq=POLL) as vtn:
        ven = await registered(vtn, "durable")
        request_id = (await requests_by_name(ven))["spec-status"]
    async with running_vtn(database, poll_freq=POLL) as restarted:
        again = RawVen(restarted, "durable")
        again.ven_id, again.registration_id = ven.ven_id, ven.registration_id
        await update_report(again, status_report(request_id, utcnow()))
        (value,) = (await reports_of(restarted, again))["values"]
        assert value["report_request_id"] == request_id
        assert value["status"]["online"] is True
