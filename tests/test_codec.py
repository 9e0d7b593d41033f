"""Codec tests: golden files both ways, openleadr interop, hostile input, properties.

One case table (`CASES`, h11's SIMPLE_CASES style) drives both directions: each golden file
validates against the XSD, parses to the expected dataclass, and the expected dataclass serializes
to XSD-valid bytes that parse back equal. `TOLERATED` holds shapes other implementations send that
we read but would write differently, so they run one way only.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree
from openleadr import enums as ol_enums
from openleadr import objects as ol
from openleadr.messaging import create_message, parse_message

from oadr.codec import DECODERS, ENCODERS, Received, parse, serialize
from oadr.errors import (
    AdrError, BodyTooLarge, InvalidData, LocalAdrError, MalformedMessage, UnknownMessage,
)
from oadr.isotime import format_datetime, format_duration, parse_datetime, parse_duration
from oadr.messages import (
    MESSAGE_TYPES, ActivePeriod, Availability, CanceledOpt, CanceledPartyRegistration,
    CanceledReport, CancelOpt, CancelPartyRegistration, CancelReport, CreatedEvent, CreatedOpt,
    CreatedPartyRegistration, CreatedReport, CreateOpt, CreatePartyRegistration, CreateReport,
    DistributeEvent, Event, EventResponse, EventSignal, EventStatus, Interval, ItemBase,
    LoadControlState, OptReason, OptType, Poll, QueryRegistration, RegisteredReport,
    RegisterReport, Report, ReportDescription, ReportInterval, ReportPoint, ReportRequest,
    RequestEvent, RequestReregistration, ResourceStatus, Response, ResponseMessage,
    ResponseRequired, SpecifierPayload, Target, UpdatedReport, UpdateReport,
)
from oadr.schema import EI, STRM, XCAL, XSD, parse_xml
from oadr.signing import Verified

GOLDEN = Path(__file__).parent / "golden"
VEN = "VEN-AGG-01"
VTN = "DSO-VTN"
FLEX = "http://dso.example/programs/flex"


def at(day: int, hour: int, minute: int = 0, second: int = 0, us: int = 0) -> datetime:
    """31 is 31 January 2024, anything else a day of February 2024."""
    return datetime(2024, 1 if day == 31 else 2, day, hour, minute, second, us, tzinfo=UTC)


H = timedelta(hours=1)
M = timedelta(minutes=1)
S = timedelta(seconds=1)
OK = Response(code=200, description="OK", request_id="")


def ok(request_id: str) -> Response:
    return Response(code=200, description="OK", request_id=request_id)


def event(event_id: str, *, signals: tuple[EventSignal, ...], period: ActivePeriod,
          targets: Target = Target(), **kw: object) -> Event:
    base: dict[str, object] = dict(modification_number=0, market_context=FLEX,
                                   created=at(31, 16), status=EventStatus.FAR)
    base.update(kw)
    return Event(event_id=event_id, signals=signals, active_period=period, targets=targets,
                 **base)  # type: ignore[arg-type]


def intervals(*pairs: tuple[timedelta, float]) -> tuple[Interval, ...]:
    return tuple(Interval(uid=i, duration=d, payload=p) for i, (d, p) in enumerate(pairs))


POWER_REAL_KW = ItemBase(kind="powerReal", description="RealPower", units="W", si_scale="k",
                         hertz=50.0, voltage=230.0, ac=True)

SIMPLE_EVENT = event(
    "evt-simple-1", modification_number=2, modification_date_time=at(31, 16, 5),
    modification_reason="level raised", priority=1, status=EventStatus.NEAR, test_event=True,
    vtn_comment="evening peak",
    period=ActivePeriod(dtstart=at(31, 17), duration=2 * H),
    signals=(EventSignal(signal_name="SIMPLE", signal_type="level", signal_id="sig-simple",
                         intervals=intervals((H, 1.0), (H, 2.0)), current_value=0.0,
                         targets=Target(resource_ids=("battery-17",))),),
    targets=Target(group_ids=("south-west", "feeder-12"), resource_ids=("battery-17",),
                   ven_ids=(VEN,), party_ids=("party-9",)),
)
CAPACITY_EVENT = event(
    "evt-cap-1", market_context="http://dso.example/programs/constraint",
    created=at(31, 16, us=250_000), status=EventStatus.ACTIVE,
    response_required=ResponseRequired.NEVER,
    period=ActivePeriod(dtstart=at(31, 17), duration=90 * M, start_after=10 * M,
                        notification=timedelta(days=1), ramp_up=5 * M, recovery=15 * M),
    signals=(EventSignal(signal_name="LOAD_CONTROL", signal_type="x-loadControlCapacity",
                         signal_id="sig-cap", intervals=intervals((H, 0.6), (30 * M, 0.8)),
                         current_value=0.6),),
)
DISPATCH_EVENT = event(
    "evt-dispatch-1", modification_number=1, priority=3,
    market_context="http://eso.example/services/dispatch",
    period=ActivePeriod(dtstart=at(1, 6), duration=30 * M),
    signals=(EventSignal(signal_name="LOAD_DISPATCH", signal_type="setpoint",
                         signal_id="sig-dispatch", intervals=intervals((15 * M, -250.5),
                                                                       (15 * M, 150.0)),
                         current_value=0.0, item_base=POWER_REAL_KW),),
    targets=Target(ven_ids=(VEN,)),
)
PRICE_EVENT = event(
    "evt-price-20240201", market_context="http://supplier.example/tariffs/agile",
    response_required=ResponseRequired.NEVER,
    period=ActivePeriod(dtstart=at(1, 0), duration=timedelta(days=1)),
    signals=(EventSignal(
        signal_name="ELECTRICITY_PRICE", signal_type="price", signal_id="sig-price",
        intervals=intervals(*((H, round(0.15 + 0.01 * i, 2)) for i in range(24))),
        current_value=0.0,
        item_base=ItemBase(kind="currencyPerKWh", description="currencyPerKWh", units="GBP")),),
    targets=Target(group_ids=("agile-customers",)),
)

USAGE_METADATA = Report(
    report_specifier_id="usage-site-1", report_name="METADATA_TELEMETRY_USAGE",
    created=at(31, 16), report_request_id="0", duration=2 * H,
    descriptions=(
        ReportDescription(r_id="site-1-power", report_type="usage", reading_type="Direct Read",
                          resource_id="site-1", market_context=FLEX, item_base=POWER_REAL_KW,
                          min_period=10 * S, max_period=5 * M),
        ReportDescription(r_id="site-1-energy", report_type="usage", reading_type="Summed",
                          resource_id="site-1",
                          item_base=ItemBase(kind="energyReal", description="RealEnergy",
                                             units="Wh", si_scale="k"),
                          min_period=M, max_period=H, on_change=True),
        ReportDescription(r_id="site-1-voltage", report_type="reading", reading_type="x-RMS",
                          item_base=ItemBase(kind="voltage", description="Voltage", units="V")),
        ReportDescription(r_id="site-1-soc", report_type="storedEnergy",
                          reading_type="Direct Read",
                          item_base=ItemBase(kind="customUnit", description="stateOfCharge",
                                             units="%")),
    ),
)
STATUS_METADATA = Report(
    report_specifier_id="status-site-1", report_name="METADATA_TELEMETRY_STATUS",
    created=at(31, 16), report_request_id="0",
    descriptions=(ReportDescription(r_id="site-1-status", report_type="x-resourceStatus",
                                    reading_type="x-notApplicable", resource_id="site-1",
                                    min_period=30 * S, max_period=5 * M, on_change=True),),
)
USAGE_REQUEST = ReportRequest(
    report_request_id="req-usage-1", report_specifier_id="usage-site-1", granularity=M,
    report_back_duration=5 * M,
    specifiers=(SpecifierPayload(r_id="site-1-power"), SpecifierPayload(r_id="site-1-energy")),
)
USAGE_DATA = Report(
    report_specifier_id="usage-site-1", report_name="TELEMETRY_USAGE", created=at(31, 17, 2),
    report_request_id="req-usage-1", report_id="rpt-usage-77", dtstart=at(31, 17), duration=2 * M,
    intervals=(
        ReportInterval(dtstart=at(31, 17), duration=M, uid=0, points=(
            ReportPoint(r_id="site-1-power", value=3.25, confidence=95, accuracy=0.5),
            ReportPoint(r_id="site-1-energy", value=1204.5))),
        ReportInterval(dtstart=at(31, 17, 1), duration=M, uid=1, points=(
            ReportPoint(r_id="site-1-power", value=-1.75),)),
    ),
)
STATUS_DATA = Report(
    report_specifier_id="status-site-1", report_name="TELEMETRY_STATUS", created=at(31, 17, 0, 5),
    report_request_id="req-status-1", report_id="rpt-status-12", dtstart=at(31, 17),
    intervals=(ReportInterval(dtstart=at(31, 17), duration=None, points=(
        ReportPoint(r_id="site-1-status", status=ResourceStatus(
            online=True, manual_override=False,
            load_control=LoadControlState(kind="oadrCapacity", current=0.6, min=0.0, max=1.0,
                                          normal=1.0))),
        ReportPoint(r_id="heat-pump-8-status",
                    status=ResourceStatus(online=False, manual_override=True)),
        ReportPoint(r_id="tank-2-status", status=ResourceStatus(
            online=True, manual_override=False,
            load_control=LoadControlState(kind="oadrSetPoint", current=55.0))),
    )),),
)

# (golden file, expected message): every class in MESSAGE_TYPES appears at least once.
CASES: list[tuple[str, object]] = [
    ("oadrDistributeEvent_simple.xml", DistributeEvent(
        response=ok("poll-7"), request_id="de-0001", vtn_id=VTN, events=(SIMPLE_EVENT,))),
    ("oadrDistributeEvent_load_control.xml", DistributeEvent(
        request_id="de-0002", vtn_id=VTN, events=(CAPACITY_EVENT,))),
    ("oadrDistributeEvent_load_dispatch.xml", DistributeEvent(
        request_id="de-0003", vtn_id=VTN, events=(DISPATCH_EVENT,))),
    ("oadrDistributeEvent_price24.xml", DistributeEvent(
        request_id="de-0005", vtn_id=VTN, events=(PRICE_EVENT,))),
    ("oadrDistributeEvent_no_events.xml", DistributeEvent(request_id="de-0004", vtn_id=VTN)),
    ("oadrRequestEvent.xml", RequestEvent(request_id="re-1", ven_id=VEN, reply_limit=10)),
    ("oadrCreatedEvent.xml", CreatedEvent(response=ok("de-0001"), ven_id=VEN, event_responses=(
        EventResponse(code=200, description="OK", request_id="de-0001", event_id="evt-simple-1",
                      modification_number=2, opt_type=OptType.OPT_IN),
        EventResponse(code=460, description="signal not supported", request_id="de-0001",
                      event_id="evt-dispatch-1", modification_number=1,
                      opt_type=OptType.OPT_OUT)))),
    ("oadrCreatedEvent_empty_responses.xml", CreatedEvent(response=ok("de-0004"), ven_id=VEN)),
    ("oadrQueryRegistration.xml", QueryRegistration(request_id="qr-1")),
    ("oadrCreatePartyRegistration.xml", CreatePartyRegistration(
        request_id="cpr-1", ven_name="aggregator-west")),
    ("oadrCreatePartyRegistration_push.xml", CreatePartyRegistration(
        request_id="cpr-2", registration_id="reg-42", ven_id=VEN,
        transport_address="https://ven.aggregator.example:8443/OpenADR2/Simple/2.0b",
        report_only=True, xml_signature=True, ven_name="aggregator-west",
        http_pull_model=False)),
    ("oadrCreatedPartyRegistration.xml", CreatedPartyRegistration(
        response=ok("cpr-1"), registration_id="reg-42", ven_id=VEN, vtn_id=VTN,
        profiles=("2.0a", "2.0b"), poll_freq=10 * S)),
    ("oadrCancelPartyRegistration.xml", CancelPartyRegistration(
        request_id="cxr-1", registration_id="reg-42", ven_id=VEN)),
    ("oadrCanceledPartyRegistration.xml", CanceledPartyRegistration(
        response=ok("cxr-1"), registration_id="reg-42", ven_id=VEN)),
    ("oadrRequestReregistration.xml", RequestReregistration(ven_id=VEN)),
    ("oadrResponse.xml", ResponseMessage(response=OK, ven_id=VEN)),
    ("oadrPoll.xml", Poll(ven_id=VEN)),
    ("oadrRegisterReport.xml", RegisterReport(
        request_id="rr-1", reports=(USAGE_METADATA, STATUS_METADATA), ven_id=VEN,
        report_request_id="0")),
    ("oadrRegisteredReport.xml", RegisteredReport(
        response=ok("rr-1"), ven_id=VEN, report_requests=(USAGE_REQUEST,))),
    ("oadrCreateReport.xml", CreateReport(request_id="cr-1", ven_id=VEN, report_requests=(
        ReportRequest(report_request_id="req-status-1", report_specifier_id="status-site-1",
                      granularity=30 * S, report_back_duration=M, dtstart=at(31, 17),
                      duration=2 * H, specifiers=(SpecifierPayload(r_id="site-1-status"),)),
        ReportRequest(report_request_id="req-history-1", report_specifier_id="usage-site-1",
                      granularity=timedelta(0), report_back_duration=timedelta(0),
                      specifiers=(SpecifierPayload(r_id="site-1-energy"),)),
    ))),
    ("oadrCreatedReport.xml", CreatedReport(
        response=ok("cr-1"), ven_id=VEN, pending_reports=("req-usage-1", "req-status-1"))),
    ("oadrUpdateReport.xml", UpdateReport(
        request_id="ur-1", reports=(USAGE_DATA, STATUS_DATA), ven_id=VEN)),
    ("oadrUpdatedReport.xml", UpdatedReport(response=ok("ur-1"), ven_id=VEN, cancel_report=(
        CancelReport(request_id="cxl-9", report_request_ids=("req-usage-1",), ven_id=VEN)))),
    ("oadrCancelReport.xml", CancelReport(
        request_id="cxl-10", report_request_ids=("req-usage-1", "req-status-1"),
        report_to_follow=True, ven_id=VEN)),
    ("oadrCanceledReport.xml", CanceledReport(
        response=ok("cxl-10"), pending_reports=("req-status-1",), ven_id=VEN)),
    ("oadrCreateOpt_availability.xml", CreateOpt(
        request_id="opt-req-1", opt_id="opt-1", opt_type=OptType.OPT_OUT,
        opt_reason=OptReason.X_SCHEDULE, ven_id=VEN, created=at(31, 16, 30), market_context=FLEX,
        availability=(Availability(dtstart=at(1, 7), duration=2 * H),
                      Availability(dtstart=at(1, 18), duration=210 * M)),
        targets=Target(resource_ids=("ev-charger-3",)))),
    ("oadrCreateOpt_event.xml", CreateOpt(
        request_id="opt-req-3", opt_id="opt-2", opt_type=OptType.OPT_OUT,
        opt_reason=OptReason.OVERRIDE_STATUS, ven_id=VEN, created=at(31, 17, 5),
        event_id="evt-cap-1", modification_number=0,
        targets=Target(resource_ids=("heat-pump-8",), ven_ids=(VEN,)))),
    ("oadrCreatedOpt.xml", CreatedOpt(response=ok("opt-req-1"), opt_id="opt-1")),
    ("oadrCancelOpt.xml", CancelOpt(request_id="opt-req-2", opt_id="opt-1", ven_id=VEN)),
    ("oadrCanceledOpt.xml", CanceledOpt(response=ok("opt-req-2"), opt_id="opt-1")),
]
CASE_IDS = [name.removesuffix(".xml") for name, _ in CASES]

TOLERATED: list[tuple[str, object]] = [
    ("tolerated_oadrDistributeEvent.xml", DistributeEvent(request_id="de-t1", vtn_id=VTN, events=(
        event("evt-t1", created=at(31, 16), status=EventStatus.ACTIVE, test_event=True,
              period=ActivePeriod(dtstart=at(31, 17), duration=timedelta(0)),
              signals=(
                  # a sole interval without duration lasts the active period; no uid: position;
                  # a dtstart (openleadr writes one) is kept, so gaps are not misread
                  EventSignal(signal_name="SIMPLE", signal_type="level", signal_id="sig-t1",
                              intervals=(Interval(uid=0, duration=timedelta(0), payload=2.0,
                                                  dtstart=at(31, 17)),)),
                  EventSignal(signal_name="x-CUSTOM_SIGNAL", signal_type="level",
                              signal_id="sig-t2",
                              intervals=(Interval(uid=1, duration=H, payload=7.0),),
                              item_base=ItemBase(kind="pulseCount", description="pulse count",
                                                 units="count")),
              ),
              targets=Target(ven_ids=(VEN,))),))),
    ("tolerated_oadrUpdateReport.xml", UpdateReport(request_id="ur-t1", reports=(Report(
        report_specifier_id="usage-site-1", report_name="", created=at(31, 17, 1, 0, 500_000),
        report_request_id="req-usage-1", report_id="", dtstart=at(31, 17),
        intervals=(
            ReportInterval(dtstart=at(31, 17), duration=30 * S, points=(
                ReportPoint(r_id="p", value=1.0),)),
            ReportInterval(dtstart=at(31, 17, 0, 30), duration=30 * S, uid=1, points=(
                ReportPoint(r_id="p", value=2.0),)),
        )),))),
]


def golden(name: str) -> bytes:
    return (GOLDEN / name).read_bytes()


def valid(data: bytes) -> bool:
    return bool(XSD.validate(parse_xml(data)))


# --- golden files, both directions ----------------------------------------------------------


def test_cases_cover_every_message_type() -> None:
    assert {type(m) for _, m in CASES} == set(MESSAGE_TYPES.values())
    assert set(ENCODERS) == set(DECODERS) == set(MESSAGE_TYPES.values())


def test_every_golden_file_is_in_a_table() -> None:
    listed = {name for name, _ in CASES + TOLERATED}
    assert {p.name for p in GOLDEN.glob("*.xml")} == listed


@pytest.mark.parametrize(("name", "expected"), CASES + TOLERATED,
                         ids=CASE_IDS + [n for n, _ in TOLERATED])
def test_golden_parses_to_expected(name: str, expected: object) -> None:
    data = golden(name)
    assert valid(data), XSD.error_log
    assert parse(data) == Received(message=expected, signature=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "expected"), CASES, ids=CASE_IDS)
def test_serialize_round_trips(name: str, expected: object) -> None:
    data = serialize(expected)  # type: ignore[arg-type]
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    assert valid(data)
    assert parse(data).message == expected


@pytest.mark.parametrize(("name", "expected"), CASES, ids=CASE_IDS)
def test_serialize_is_stable(name: str, expected: object) -> None:
    assert serialize(parse(golden(name)).message) == serialize(expected)  # type: ignore[arg-type]


# --- what we emit -------------------------------------------------------------------------

EVENT_CASES = [m for _, m in CASES if isinstance(m, DistributeEvent) and m.events]


@pytest.mark.parametrize("msg", EVENT_CASES, ids=lambda m: m.request_id)
def test_event_output_follows_conformance_rules(msg: DistributeEvent) -> None:
    data = serialize(msg)
    root = parse_xml(data)
    # harness rule: no xcal:dtstart inside signal intervals
    assert all(iv.find(f"{{{XCAL}}}dtstart") is None for iv in root.iter(f"{{{EI}}}interval"))
    signals = list(root.iter(f"{{{EI}}}eiEventSignal"))
    assert signals
    for signal in signals:
        found = signal.findall(f"{{{STRM}}}intervals/{{{EI}}}interval")
        assert found
        for uid, interval in enumerate(found):
            assert interval.findtext(f"{{{XCAL}}}uid/{{{XCAL}}}text") == str(uid)
            assert len(interval.findall(f"{{{EI}}}signalPayload/{{{EI}}}payloadFloat")) == 1
        assert signal.find(f"{{{EI}}}currentValue/{{{EI}}}payloadFloat/{{{EI}}}value") is not None
    assert all(e.find(f"{{{EI}}}eiTarget") is not None for e in root.iter(f"{{{EI}}}eiEvent"))
    assert b">None<" not in data


def test_missing_current_value_is_written_as_zero() -> None:
    signal = EventSignal(signal_name="SIMPLE", signal_type="level", signal_id="s",
                         intervals=intervals((H, 1.0)))
    msg = DistributeEvent(request_id="r", vtn_id=VTN, events=(event(
        "e", signals=(signal,), period=ActivePeriod(dtstart=at(31, 17), duration=H)),))
    parsed = parse(serialize(msg)).message
    assert isinstance(parsed, DistributeEvent)
    assert parsed.events[0].signals[0].current_value == 0.0


def test_power_item_without_attributes_gets_defaults() -> None:
    item = ItemBase(kind="powerReal", description="RealPower", units="W", si_scale="k")
    report = Report(report_specifier_id="s", report_name="METADATA_TELEMETRY_USAGE",
                    created=at(31, 16), descriptions=(ReportDescription(
                        r_id="r", report_type="usage", reading_type="Direct Read",
                        item_base=item),))
    parsed = parse(serialize(RegisterReport(request_id="x", reports=(report,)))).message
    assert isinstance(parsed, RegisterReport)
    got = parsed.reports[0].descriptions[0].item_base
    assert got == ItemBase(kind="powerReal", description="RealPower", units="W", si_scale="k",
                           hertz=50.0, voltage=230.0, ac=True)


def test_unknown_item_kind_falls_back_to_custom_unit() -> None:
    item = ItemBase(kind="stateOfCharge", description="SoC", units="%")
    report = Report(report_specifier_id="s", report_name="METADATA_TELEMETRY_USAGE",
                    created=at(31, 16), descriptions=(ReportDescription(
                        r_id="r", report_type="storedEnergy", reading_type="Direct Read",
                        item_base=item),))
    parsed = parse(serialize(RegisterReport(request_id="x", reports=(report,)))).message
    assert isinstance(parsed, RegisterReport)
    assert parsed.reports[0].descriptions[0].item_base == ItemBase(
        kind="customUnit", description="SoC", units="%")


@pytest.mark.parametrize("msg", [
    # fixed itemDescription of power:voltage is "Voltage"
    RegisterReport(request_id="x", reports=(Report(
        report_specifier_id="s", report_name="METADATA_TELEMETRY_USAGE", created=at(31, 16),
        descriptions=(ReportDescription(r_id="r", report_type="reading", reading_type="Direct Read",
                                        item_base=ItemBase(kind="voltage", description="volts",
                                                           units="V")),)),)),
    # a signalName outside the enumeration and not an x- extension
    DistributeEvent(request_id="r", vtn_id=VTN, events=(event(
        "e", period=ActivePeriod(dtstart=at(31, 17), duration=H),
        signals=(EventSignal(signal_name="NOT_A_SIGNAL", signal_type="level", signal_id="s",
                             intervals=intervals((H, 1.0))),)),)),
    # xcal durations admit no fractional seconds
    CreatedPartyRegistration(response=OK, vtn_id=VTN, poll_freq=timedelta(milliseconds=500)),
    # no profiles: the schema needs at least one
    CreatedPartyRegistration(response=OK, vtn_id=VTN, profiles=()),
    # an event-scoped opt needs the modification number
    CreateOpt(request_id="r", opt_id="o", opt_type=OptType.OPT_IN,
              opt_reason=OptReason.PARTICIPATING, ven_id=VEN, created=at(31, 16), event_id="e"),
    # naive datetime
    CreateOpt(request_id="r", opt_id="o", opt_type=OptType.OPT_IN,
              opt_reason=OptReason.PARTICIPATING, ven_id=VEN, created=at(31, 16),
              availability=(Availability(dtstart=datetime(2024, 2, 1), duration=H),)),
], ids=["fixed-description", "bad-signal-name", "fractional-duration", "no-profiles",
        "opt-without-modification", "naive-datetime"])
def test_invalid_output_is_our_bug(msg: object) -> None:
    with pytest.raises(LocalAdrError):
        serialize(msg)  # type: ignore[arg-type]
    assert not issubclass(LocalAdrError, AdrError)


def test_serialize_rejects_non_messages() -> None:
    with pytest.raises(LocalAdrError):
        serialize(Response())  # type: ignore[arg-type]


def test_sign_hook_receives_the_standalone_signed_object() -> None:
    seen: list[etree._Element] = []

    def sign(signed: etree._Element) -> etree._Element:
        seen.append(signed)
        assert signed.getparent() is None
        root = etree.Element("{http://openadr.org/oadr-2.0b/2012/07}oadrPayload")
        root.append(signed)
        return root

    msg = Poll(ven_id=VEN)
    assert parse(serialize(msg, sign=sign)).message == msg
    assert seen and seen[0].get("{http://openadr.org/oadr-2.0b/2012/07}Id") == "oadrSignedObject"


def test_verify_hook_runs_after_schema_and_names_the_signer() -> None:
    calls: list[str] = []
    checked = Verified(signer="aa:bb:cc", replay_key="oadr:nonce:x", replay_ttl=timedelta(1))

    def verify(root: etree._Element) -> Verified:
        calls.append(etree.QName(root).localname)
        return checked

    assert parse(golden("oadrPoll.xml"), verify=verify) == Received(
        message=Poll(ven_id=VEN), signature=checked)
    assert calls == ["oadrPayload"]
    with pytest.raises(InvalidData):
        parse(golden("oadrPoll.xml").replace(b"ei:venID", b"ei:vtnID"), verify=verify)
    assert len(calls) == 1

    class BadSignature(AdrError):
        code = 463

    def reject(root: etree._Element) -> Verified:
        raise BadSignature("bad signature")

    with pytest.raises(BadSignature):
        parse(golden("oadrPoll.xml"), verify=reject)


# --- interop with openleadr -----------------------------------------------------------------

T0 = at(31, 17)


def _ol_report_description() -> ol.ReportDescription:
    return ol.ReportDescription(
        r_id="rid1", market_context=FLEX, reading_type="Direct Read",
        report_subject=ol.Target(resource_id="dev1"),
        report_data_source=ol.Target(resource_id="dev1"),
        report_type="usage", measurement=ol_enums.MEASUREMENTS.POWER_REAL,
        sampling_rate=ol.SamplingRate(min_period=10 * S, max_period=5 * M, on_change=False))


OPENLEADR_MESSAGES = [
    # (message type, payload as openleadr.client.OpenADRClient builds it, expected)
    ("oadrCreatePartyRegistration",
     dict(request_id="req-1", ven_name="ven123", ven_id=None, http_pull_model=True,
          xml_signature=False, report_only=False, profile_name="2.0b",
          transport_name="simpleHttp", transport_address="http://localhost", registration_id=None),
     CreatePartyRegistration(request_id="req-1", ven_name="ven123",
                             transport_address="http://localhost")),
    ("oadrPoll", dict(ven_id="ven123"), Poll(ven_id="ven123")),
    ("oadrCreatedEvent",
     dict(ven_id="ven123",
          response={"response_code": 200, "response_description": "OK", "request_id": "r1"},
          event_responses=[{"response_code": 200, "response_description": "OK",
                            "request_id": "r1", "event_id": "e1", "modification_number": 3,
                            "opt_type": "optIn"}]),
     # openleadr empties the eiResponse requestID when it sends event responses (its defect)
     CreatedEvent(response=OK, ven_id="ven123", event_responses=(
         EventResponse(code=200, description="OK", request_id="r1", event_id="e1",
                       modification_number=3, opt_type=OptType.OPT_IN),))),
    ("oadrRegisterReport",
     dict(request_id="rr1", ven_id="ven123", report_request_id=0, reports=[ol.Report(
         report_specifier_id="spec1", report_name="TELEMETRY_USAGE", report_request_id=0,
         created_date_time=T0, report_descriptions=[_ol_report_description()])]),
     RegisterReport(request_id="rr1", ven_id="ven123", reports=(Report(
         report_specifier_id="spec1", report_name="METADATA_TELEMETRY_USAGE", created=T0,
         descriptions=(ReportDescription(
             r_id="rid1", report_type="usage", reading_type="Direct Read", resource_id="dev1",
             market_context=FLEX, min_period=10 * S, max_period=5 * M,
             item_base=ItemBase(kind="powerReal", description="RealPower", units="W",
                                hertz=50.0, voltage=230.0, ac=True)),)),))),
    ("oadrUpdateReport",
     dict(request_id="ur1", ven_id="ven123", reports=[ol.Report(
         report_specifier_id="spec1", report_name="TELEMETRY_USAGE", report_request_id="req1",
         created_date_time=T0, dtstart=T0, intervals=[
             ol.ReportInterval(dtstart=T0, duration=M,
                               report_payload=ol.ReportPayload(r_id="rid1", value=1.5)),
             ol.ReportInterval(dtstart=T0 + M, duration=M, report_payload=ol.ReportPayload(
                 r_id="rid1", value=2.5, confidence=90, accuracy=1))])]),
     UpdateReport(request_id="ur1", ven_id="ven123", reports=(Report(
         report_specifier_id="spec1", report_name="TELEMETRY_USAGE", created=T0,
         report_request_id="req1", report_id="", dtstart=T0, intervals=(
             ReportInterval(dtstart=T0, duration=M, points=(ReportPoint(r_id="rid1", value=1.5),)),
             ReportInterval(dtstart=T0 + M, duration=M, points=(
                 ReportPoint(r_id="rid1", value=2.5, confidence=90, accuracy=1.0),)))),))),
    ("oadrCreateOpt",
     dict(request_id="o-req", ven_id="ven123", **asdict(ol.Opt(
         opt_id="o1", opt_type="optOut", opt_reason="participating", created_date_time=T0,
         targets=[ol.Target(resource_id="dev1")],
         vavailability=ol.Vavailability(components=[
             ol.VavailabilityComponent(dtstart=T0, duration=H)])))),
     CreateOpt(request_id="o-req", opt_id="o1", opt_type=OptType.OPT_OUT,
               opt_reason=OptReason.PARTICIPATING, ven_id="ven123", created=T0,
               availability=(Availability(dtstart=T0, duration=H),),
               targets=Target(resource_ids=("dev1",)))),
    ("oadrCreateOpt",
     dict(request_id="o-req2", ven_id="ven123", **asdict(ol.Opt(
         opt_id="o2", opt_type="optIn", opt_reason="participating", created_date_time=T0,
         event_id="e1", modification_number=2, targets=[ol.Target(ven_id="ven123")]))),
     CreateOpt(request_id="o-req2", opt_id="o2", opt_type=OptType.OPT_IN,
               opt_reason=OptReason.PARTICIPATING, ven_id="ven123", created=T0, event_id="e1",
               modification_number=2, targets=Target(ven_ids=("ven123",)))),
]


@pytest.mark.parametrize(("message_type", "payload", "expected"), OPENLEADR_MESSAGES,
                         ids=[f"{t}-{i}" for i, (t, _, _) in enumerate(OPENLEADR_MESSAGES)])
def test_openleadr_output_parses(message_type: str, payload: dict[str, object],
                                 expected: object) -> None:
    data = create_message(message_type, **payload).encode()
    assert parse(data).message == expected


def test_openleadr_reads_our_distribute_event() -> None:
    msg = DistributeEvent(request_id="de-1", vtn_id=VTN, events=(CAPACITY_EVENT, DISPATCH_EVENT))
    kind, payload = parse_message(serialize(msg))
    assert kind == "oadrDistributeEvent"
    assert payload["request_id"] == "de-1" and payload["vtn_id"] == VTN
    first, second = payload["events"]
    assert first["event_descriptor"]["event_id"] == "evt-cap-1"
    assert first["active_period"]["dtstart"] == at(31, 17)
    assert first["active_period"]["duration"] == 90 * M
    assert [i["signal_payload"] for i in first["event_signals"][0]["intervals"]] == [0.6, 0.8]
    assert first["response_required"] == "never"
    assert second["event_signals"][0]["measurement"]["name"] == "powerReal"


def test_openleadr_reads_our_registration_and_reports() -> None:
    kind, payload = parse_message(serialize(CASES[11][1]))  # type: ignore[arg-type]
    assert kind == "oadrCreatedPartyRegistration"
    assert payload["registration_id"] == "reg-42" and payload["ven_id"] == VEN
    assert payload["requested_oadr_poll_freq"] == 10 * S

    kind, payload = parse_message(serialize(RegisteredReport(
        response=ok("rr-1"), ven_id=VEN, report_requests=(USAGE_REQUEST,))))
    assert kind == "oadrRegisteredReport"
    request = payload["report_requests"][0]
    assert request["report_request_id"] == "req-usage-1"
    assert request["report_specifier"]["granularity"] == M
    assert [p["r_id"] for p in request["report_specifier"]["specifier_payloads"]] == [
        "site-1-power", "site-1-energy"]

    kind, payload = parse_message(serialize(CASES[19][1]))  # type: ignore[arg-type]
    assert kind == "oadrCreateReport"
    assert [r["report_request_id"] for r in payload["report_requests"]] == [
        "req-status-1", "req-history-1"]

    kind, payload = parse_message(serialize(ResponseMessage(response=ok("p-1"), ven_id=VEN)))
    assert kind == "oadrResponse"
    assert payload["response"]["response_code"] == 200
    assert payload["response"]["request_id"] == "p-1"


# --- hostile and broken input ---------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<oadr:oadrPayload xmlns:oadr="http://openadr.org/oadr-2.0b/2012/07">&lol3;</oadr:oadrPayload>"""
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE p [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<oadr:oadrPayload xmlns:oadr="http://openadr.org/oadr-2.0b/2012/07">&x;</oadr:oadrPayload>"""
UNKNOWN_PAYLOAD = golden("oadrPoll.xml").replace(b"oadr:oadrPoll", b"oadr:oadrGossip")
INVALID_POLL = golden("oadrPoll.xml").replace(b"<ei:venID>VEN-AGG-01</ei:venID>",
                                              b"<pyld:requestID>p-9</pyld:requestID>")
BAD_VALUES = golden("oadrCreatedEvent.xml").replace(b">2<", b">99999999999<")


@pytest.mark.parametrize(("data", "error"), [
    (b"", MalformedMessage),
    (b"not xml", MalformedMessage),
    (b"\xff\xfe<\x00", MalformedMessage),
    (BILLION_LAUGHS, MalformedMessage),
    (XXE, MalformedMessage),
    (b"<a>" + b" " * 2_000_000 + b"</a>", BodyTooLarge),
    (b'<html xmlns="http://www.w3.org/1999/xhtml"><body/></html>', MalformedMessage),
    (b'<oadr:oadrPayload xmlns:oadr="http://openadr.org/oadr-2.0b/2012/07"/>', MalformedMessage),
    (UNKNOWN_PAYLOAD, UnknownMessage),
    (golden("oadrPoll.xml").replace(b"oadr:oadrPoll", b"ei:oadrPoll"), UnknownMessage),
    (INVALID_POLL, InvalidData),
    (BAD_VALUES, InvalidData),
    (b"<a>" * 100 + b"</a>" * 100, MalformedMessage),
], ids=["empty", "not-xml", "binary", "billion-laughs", "xxe", "2MB", "foreign-root",
        "no-signed-object", "unknown-payload", "payload-wrong-namespace", "schema-invalid-poll",
        "unsigned-int-overflow", "too-deep"])
def test_bad_input_raises_adr_errors(data: bytes, error: type[AdrError]) -> None:
    with pytest.raises(error) as info:
        parse(data)
    assert isinstance(info.value, AdrError)


def test_status_codes_of_envelope_errors() -> None:
    with pytest.raises(UnknownMessage) as unknown:
        parse(UNKNOWN_PAYLOAD)
    assert unknown.value.http_status == 400
    with pytest.raises(InvalidData) as invalid:
        parse(INVALID_POLL)
    assert invalid.value.code == 454 and invalid.value.http_status == 200
    assert invalid.value.request_id == "p-9"
    assert "schema:" in invalid.value.description


def test_decode_errors_carry_the_request_id() -> None:
    data = golden("oadrDistributeEvent_simple.xml").replace(
        b"<ei:value>1</ei:value>", b"<ei:value>1</ei:value></ei:payloadFloat></ei:signalPayload>"
        b"<ei:signalPayload><ei:payloadFloat><ei:value>5</ei:value>")
    assert valid(data)
    with pytest.raises(InvalidData) as info:
        parse(data)
    assert info.value.request_id == "poll-7"
    assert "signalPayload" in info.value.description


def test_decoded_invariants_become_invalid_data() -> None:
    # schema-valid, but an event-scoped opt may not carry a vavailability (CreateOpt invariant)
    data = golden("oadrCreateOpt_availability.xml").replace(
        b"<ei:eiTarget>", b"<ei:qualifiedEventID><ei:eventID>e</ei:eventID>"
        b"<ei:modificationNumber>1</ei:modificationNumber></ei:qualifiedEventID><ei:eiTarget>")
    assert valid(data)
    with pytest.raises(InvalidData) as info:
        parse(data)
    assert info.value.request_id == "opt-req-1"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_raise_only_adr_errors(data: bytes) -> None:
    try:
        parse(data)
    except AdrError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([golden(name) for name, _ in CASES]), st.data())
def test_mutated_goldens_raise_only_adr_errors(data: bytes, draw: st.DataObject) -> None:
    start = draw.draw(st.integers(0, len(data) - 1))
    length = draw.draw(st.integers(0, 40))
    junk = draw.draw(st.binary(max_size=20))
    try:
        parse(data[:start] + junk + data[start + length:])
    except AdrError:
        pass


# --- isotime --------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("2024-01-31T17:00:00Z", at(31, 17)),
    ("2024-01-31T17:00:00.250Z", at(31, 17, us=250_000)),
    ("2024-01-31T17:00:00.123456789Z", at(31, 17, us=123_456)),
    ("2024-01-31T18:30:00+01:30", at(31, 17)),
    ("2024-01-31T12:00:00-0500", at(31, 17)),
    ("2024-01-31T17:00:00", at(31, 17)),
    ("2024-01-31T24:00:00Z", at(1, 0)),
])
def test_parse_datetime(text: str, expected: datetime) -> None:
    assert parse_datetime(text) == expected
    assert parse_datetime(text).tzinfo is UTC


@pytest.mark.parametrize("text", ["", "yesterday", "2024-13-01T00:00:00Z",
                                  "2024-01-01T00:00:00+25:00", "2024-01-01T24:00:01Z",
                                  "0000-01-01T00:00:00Z"])
def test_parse_datetime_rejects_garbage(text: str) -> None:
    with pytest.raises(InvalidData):
        parse_datetime(text)


def test_format_datetime() -> None:
    assert format_datetime(at(31, 17)) == "2024-01-31T17:00:00Z"
    assert format_datetime(at(31, 17, us=250_000)) == "2024-01-31T17:00:00.25Z"
    assert format_datetime(parse_datetime("2024-01-31T18:00:00+01:00")) == "2024-01-31T17:00:00Z"
    with pytest.raises(ValueError):
        format_datetime(datetime(2024, 1, 31))


@pytest.mark.parametrize(("text", "expected", "canonical"), [
    ("PT1H30M", 90 * M, "PT1H30M"),
    ("P1D", timedelta(days=1), "P1D"),
    ("P1DT2H", timedelta(days=1, hours=2), "P1DT2H"),
    ("PT0S", timedelta(0), "PT0S"),
    ("P", timedelta(0), "PT0S"),
    ("-PT5M", -5 * M, "-PT5M"),
    ("+PT10S", 10 * S, "PT10S"),
    ("PT0.5S", timedelta(milliseconds=500), "PT0.5S"),
    ("P2W", timedelta(days=14), "P14D"),
    ("P0Y0M1DT0H0M0S", timedelta(days=1), "P1D"),
])
def test_durations(text: str, expected: timedelta, canonical: str) -> None:
    assert parse_duration(text) == expected
    assert format_duration(expected) == canonical
    assert parse_duration(format_duration(expected)) == expected


@pytest.mark.parametrize("text", ["", "1H", "PT1X", "P1Y", "P2M", "PTH", "P" + "9" * 30 + "D"])
def test_parse_duration_rejects_garbage(text: str) -> None:
    with pytest.raises(InvalidData):
        parse_duration(text)
