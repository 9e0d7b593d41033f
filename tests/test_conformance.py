"""Tests for oadr.conformance: valid samples pass, one mutation per rule flags exactly that rule.

The samples are built with lxml, element order taken from the 2.0b XSD shipped in openleadr and
from openleadr's templates, except that signal and baseline intervals carry no dtstart (the
templates write one, a defect this checker exists to catch).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest
from lxml import etree

from oadr.conformance import assert_conformant, check
from oadr.schema import EI, NSMAP, OADR

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)

Child = etree._Element | str | None


# --- builders -----------------------------------------------------------------------------

def E(tag: str, *children: Child) -> etree._Element:
    """Element `prefix:local` (prefixes from oadr.schema.NSMAP); strings become its text."""
    prefix, local = tag.split(":")
    el = etree.Element(f"{{{NSMAP[prefix]}}}{local}")
    for child in children:
        if isinstance(child, str):
            el.text = child
        elif child is not None:
            el.append(child)
    return el


def ts(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def payload(body: etree._Element) -> etree._Element:
    body.set(f"{{{EI}}}schemaVersion", "2.0b")
    signed = E("oadr:oadrSignedObject", body)
    signed.set(f"{{{OADR}}}Id", "oadrSignedObject")
    root = E("oadr:oadrPayload", signed)
    etree.cleanup_namespaces(root, top_nsmap=NSMAP)
    return root


def value(v: float) -> etree._Element:
    return E("ei:payloadFloat", E("ei:value", f"{v:g}"))


def interval(uid: int, v: float, duration: str = "PT1H") -> etree._Element:
    return E("ei:interval", E("xcal:duration", E("xcal:duration", duration)),
             E("xcal:uid", E("xcal:text", str(uid))), E("ei:signalPayload", value(v)))


def currency_per_kwh() -> etree._Element:
    return E("oadr:currencyPerKWh", E("oadr:itemDescription", "currencyPerKWh"),
             E("oadr:itemUnits", "EUR"), E("scale:siScaleCode", "none"))


def power_real() -> etree._Element:
    return E("power:powerReal", E("power:itemDescription", "RealPower"), E("power:itemUnits", "W"),
             E("scale:siScaleCode", "k"),
             E("power:powerAttributes", E("power:hertz", "50"), E("power:voltage", "230"),
                   E("power:ac", "true")))


def signal(values: list[float], *, name: str = "SIMPLE", type: str = "level", sid: str = "0",
           current: float | None = 0, unit: etree._Element | None = None) -> etree._Element:
    return E("ei:eiEventSignal",
             E("strm:intervals", *[interval(i, v) for i, v in enumerate(values)]),
             E("ei:signalName", name), E("ei:signalType", type), E("ei:signalID", sid), unit,
             None if current is None else E("ei:currentValue", value(current)))


def baseline(start: datetime, values: list[float]) -> etree._Element:
    return E("ei:eiEventBaseline", E("xcal:dtstart", E("xcal:date-time", ts(start))),
             E("xcal:duration", E("xcal:duration", f"PT{len(values)}H")),
             E("strm:intervals", *[interval(i, v) for i, v in enumerate(values)]),
             E("ei:baselineID", "base-1"), E("ei:baselineName", "usual load"), power_real())


def event(eid: str, *, status: str, start: datetime, signals: list[etree._Element],
          duration: str = "PT2H", created: datetime = NOW, notification: str | None = None,
          ven_ids: tuple[str, ...] = ("ven-1",), extra: etree._Element | None = None,
          ) -> etree._Element:
    notice = None if notification is None else E("ei:x-eiNotification",
                                                 E("xcal:duration", notification))
    return E("oadr:oadrEvent",
             E("ei:eiEvent",
               E("ei:eventDescriptor", E("ei:eventID", eid), E("ei:modificationNumber", "0"),
                 E("ei:priority", "0"),
                 E("ei:eiMarketContext", E("emix:marketContext", "http://dso.example/flex")),
                 E("ei:createdDateTime", ts(created)), E("ei:eventStatus", status),
                 E("ei:testEvent", "false")),
               E("ei:eiActivePeriod",
                 E("xcal:properties", E("xcal:dtstart", E("xcal:date-time", ts(start))),
                   E("xcal:duration", E("xcal:duration", duration)), notice),
                 E("xcal:components")),
               E("ei:eiEventSignals", *signals, extra),
               E("ei:eiTarget", *[E("ei:venID", v) for v in ven_ids])),
             E("oadr:oadrResponseRequired", "always"))


def distribute(*events: etree._Element, request_id: str = "req-1") -> etree._Element:
    return payload(E("oadr:oadrDistributeEvent", E("pyld:requestID", request_id),
                     E("ei:vtnID", "vtn-1"), *events))


def active_event() -> etree._Element:
    # started 30 minutes ago: now is in interval 0, whose payload is 1
    return event("evt-active", status="active", start=NOW - HOUR / 2,
                 signals=[signal([1, 2], current=1)])


def far_event() -> etree._Element:
    start = NOW + timedelta(days=1)
    return event("evt-far", status="far", start=start, notification="P1D",
                 signals=[signal([2, 3]),
                          signal([0.21, 0.25], name="ELECTRICITY_PRICE", type="price", sid="1",
                                 unit=currency_per_kwh())],
                 extra=baseline(start, [40, 42]))


def valid_distribute() -> etree._Element:
    return distribute(active_event(), far_event())


def response(request_id: str = "") -> etree._Element:
    return payload(E("oadr:oadrResponse",
                     E("ei:eiResponse", E("ei:responseCode", "200"),
                       E("ei:responseDescription", "OK"), E("pyld:requestID", request_id)),
                     E("ei:venID", "ven-1")))


def created_party_registration() -> etree._Element:
    return payload(E(
        "oadr:oadrCreatedPartyRegistration",
        E("ei:eiResponse", E("ei:responseCode", "200"), E("ei:responseDescription", "OK"),
          E("pyld:requestID", "req-1")),
        E("ei:registrationID", "reg-1"), E("ei:venID", "ven-1"), E("ei:vtnID", "vtn-1"),
        E("oadr:oadrProfiles",
          E("oadr:oadrProfile", E("oadr:oadrProfileName", "2.0b"),
            E("oadr:oadrTransports",
              E("oadr:oadrTransport", E("oadr:oadrTransportName", "simpleHttp"))))),
        E("oadr:oadrRequestedOadrPollFreq", E("xcal:duration", "PT10S"))))


def description(rid: str, report_type: str, reading: str,
                unit: etree._Element | None = None) -> etree._Element:
    return E("oadr:oadrReportDescription", E("ei:rID", rid),
             E("ei:reportDataSource", E("ei:resourceID", "battery-1")),
             E("ei:reportType", report_type), unit, E("ei:readingType", reading),
             E("oadr:oadrSamplingRate", E("oadr:oadrMinPeriod", "PT1M"),
               E("oadr:oadrMaxPeriod", "PT1H"), E("oadr:oadrOnChange", "false")))


def metadata(spec: str, name: str, *descriptions: etree._Element) -> etree._Element:
    return E("oadr:oadrReport", *descriptions, E("ei:reportRequestID", "0"),
             E("ei:reportSpecifierID", spec), E("ei:reportName", name),
             E("ei:createdDateTime", ts(NOW)))


def register_report() -> etree._Element:
    return payload(E(
        "oadr:oadrRegisterReport", E("pyld:requestID", "req-1"),
        metadata("spec-status", "METADATA_TELEMETRY_STATUS",
                 description("status-1", "x-resourceStatus", "x-notApplicable")),
        metadata("spec-usage", "METADATA_TELEMETRY_USAGE",
                 description("power-1", "usage", "Direct Read", power_real()),
                 description("power-2", "usage", "Direct Read", power_real())),
        E("ei:venID", "ven-1")))


def report_request(request_id: str, spec: str, *rids: str) -> etree._Element:
    return E("oadr:oadrReportRequest", E("ei:reportRequestID", request_id),
             E("ei:reportSpecifier", E("ei:reportSpecifierID", spec),
               E("xcal:granularity", E("xcal:duration", "PT1M")),
               E("ei:reportBackDuration", E("xcal:duration", "PT1M")),
               *[E("ei:specifierPayload", E("ei:rID", rid), E("ei:readingType", "x-notApplicable"))
                 for rid in rids]))


def create_report() -> etree._Element:
    return payload(E("oadr:oadrCreateReport", E("pyld:requestID", "req-1"),
                     report_request("rr-1", "spec-status", "status-1"),
                     report_request("rr-2", "spec-usage", "power-1", "power-2"),
                     E("ei:venID", "ven-1")))


def status_interval(start: datetime) -> etree._Element:
    state = E("oadr:oadrLoadControlState", E("oadr:oadrCapacity", E("oadr:oadrCurrent", "1")))
    return E("ei:interval", E("xcal:dtstart", E("xcal:date-time", ts(start))),
             E("xcal:duration", E("xcal:duration", "PT1M")),
             E("oadr:oadrReportPayload", E("ei:rID", "status-1"),
               E("oadr:oadrPayloadResourceStatus", E("oadr:oadrOnline", "true"),
                 E("oadr:oadrManualOverride", "false"), state)))


def update_report() -> etree._Element:
    start = NOW - timedelta(minutes=2)
    return payload(E(
        "oadr:oadrUpdateReport", E("pyld:requestID", "req-1"),
        E("oadr:oadrReport", E("xcal:dtstart", E("xcal:date-time", ts(start))),
          E("xcal:duration", E("xcal:duration", "PT2M")),
          E("strm:intervals", status_interval(start),
            status_interval(start + timedelta(minutes=1))),
          E("ei:eiReportID", "rep-1"), E("ei:reportRequestID", "rr-1"),
          E("ei:reportSpecifierID", "spec-status"), E("ei:reportName", "TELEMETRY_STATUS"),
          E("ei:createdDateTime", ts(NOW))),
        E("ei:venID", "ven-1")))


def create_opt(*, event_id: str | None = None) -> etree._Element:
    """An availability schedule, or (with `event_id`) an opt-out of one event."""
    schedule = None if event_id else E(
        "xcal:vavailability",
        E("xcal:components",
          E("xcal:available",
            E("xcal:properties", E("xcal:dtstart", E("xcal:date-time", ts(NOW + HOUR))),
              E("xcal:duration", E("xcal:duration", "PT4H"))))))
    qualified = None if event_id is None else E(
        "ei:qualifiedEventID", E("ei:eventID", event_id), E("ei:modificationNumber", "0"))
    return payload(E(
        "oadr:oadrCreateOpt", E("ei:optID", "opt-1"), E("ei:optType", "optOut"),
        E("ei:optReason", "participating" if event_id else "x-schedule"),
        None if event_id else E("emix:marketContext", "http://dso.example/flex"),
        E("ei:venID", "ven-1"), schedule, E("ei:createdDateTime", ts(NOW)),
        E("pyld:requestID", "req-1"), qualified, E("ei:eiTarget", E("ei:resourceID", "battery-1"))))


# --- mutation helpers ---------------------------------------------------------------------

Mutation = Callable[[etree._Element], object]


def nodes(root: etree._Element, path: str) -> list[etree._Element]:
    found = root.xpath(path, namespaces=NSMAP)
    assert isinstance(found, list) and found, f"no match for {path}"
    return [e for e in found if isinstance(e, etree._Element)]


def set_text(path: str, text: str) -> Mutation:
    def mutate(root: etree._Element) -> None:
        nodes(root, path)[0].text = text
    return mutate


def remove(path: str) -> Mutation:
    def mutate(root: etree._Element) -> None:
        el = nodes(root, path)[0]
        parent = el.getparent()
        assert parent is not None
        parent.remove(el)
    return mutate


def insert(path: str, index: int, make: Callable[[], etree._Element]) -> Mutation:
    def mutate(root: etree._Element) -> None:
        nodes(root, path)[0].insert(index, make())
    return mutate


def swap_events(root: etree._Element) -> None:
    first, second = nodes(root, "//oadr:oadrEvent")[:2]
    second.addnext(first)  # lxml moves the element


def duplicate(path: str) -> Mutation:
    def mutate(root: etree._Element) -> None:
        el = nodes(root, path)[0]
        el.addnext(etree.fromstring(etree.tostring(el)))
    return mutate


def dtstart() -> etree._Element:
    return E("xcal:dtstart", E("xcal:date-time", ts(NOW)))


ACTIVE_SIG = "//ei:eiEvent[ei:eventDescriptor/ei:eventID='evt-active']//ei:eiEventSignal"
FAR = "//ei:eiEvent[ei:eventDescriptor/ei:eventID='evt-far']"
FAR_SIMPLE = f"{FAR}//ei:eiEventSignal[ei:signalID='0']"
FAR_PRICE = f"{FAR}//ei:eiEventSignal[ei:signalID='1']"
PROPS = f"{FAR}/ei:eiActivePeriod/xcal:properties"
STATUS_IVS = "//oadr:oadrReport/strm:intervals/ei:interval"

SAMPLES: dict[str, Callable[[], etree._Element]] = {
    "distribute": valid_distribute, "response": response,
    "created-party-registration": created_party_registration,
    "register-report": register_report, "create-report": create_report,
    "update-report": update_report, "opt-schedule": create_opt,
    "opt-event": lambda: create_opt(event_id="evt-far"),
}


def rules(root: bytes | etree._Element) -> set[str]:
    return {v.rule for v in check(root, now=NOW)}


# --- tests --------------------------------------------------------------------------------

@pytest.mark.parametrize("build", SAMPLES.values(), ids=SAMPLES.keys())
def test_valid_samples_conform(build: Callable[[], etree._Element]) -> None:
    root = build()
    assert check(root, now=NOW) == []
    assert check(etree.tostring(root), now=NOW) == []
    assert_conformant(root, now=NOW)


def test_empty_distribute_and_registered_report_conform() -> None:
    assert rules(distribute()) == set()
    registered = payload(E("oadr:oadrRegisteredReport",
                           E("ei:eiResponse", E("ei:responseCode", "200"),
                             E("ei:responseDescription", "OK"), E("pyld:requestID", "req-1")),
                           report_request("rr-1", "spec-status", "status-1"),
                           E("ei:venID", "ven-1")))
    assert rules(registered) == set()


def p(build: Callable[[], etree._Element], mutate: Mutation, *expected: str, id: str) -> object:
    return pytest.param(build, mutate, set(expected), id=id)


D, R, RR, CR, U = (valid_distribute, created_party_registration, register_report,
                   create_report, update_report)
OPT, OPT_EVENT = SAMPLES["opt-schedule"], SAMPLES["opt-event"]

CASES = [
    p(D, remove("//ei:vtnID"), "xsd", id="xsd"),
    p(D, set_text("//pyld:requestID", "None"), "request-id", id="request-id-None"),
    p(D, set_text("//pyld:requestID", " "), "request-id", id="request-id-empty"),
    p(response, set_text("//pyld:requestID", "None"), "request-id", id="response-request-id-None"),
    p(D, set_text(f"{FAR}//ei:eventID", "evt-active"), "event.id-unique", id="event.id-unique"),
    # the XSD enumerates eventStatus too: both report it
    p(D, set_text(f"{FAR}//ei:eventStatus", "pending"), "xsd", "event.status", id="event.status"),
    p(D, swap_events, "event.order", id="event.order-active-first"),
    p(lambda: distribute(active_event(), far_event(),
                         event("evt-soon", status="near", start=NOW + HOUR,
                               signals=[signal([1, 1])])),
      lambda r: None, "event.order", id="event.order-by-dtstart"),
    p(D, set_text(f"{FAR_SIMPLE}/ei:currentValue//ei:value", "1"), "event.current-value",
      id="event.current-value-not-active"),
    p(D, set_text(f"{ACTIVE_SIG}/ei:currentValue//ei:value", "2"), "event.current-value",
      id="event.current-value-active"),
    p(D, set_text(f"{FAR_SIMPLE}//ei:interval[2]//ei:value", "4"), "event.simple-payload",
      id="event.simple-payload"),
    p(D, set_text(f"{FAR_SIMPLE}//ei:interval[1]//ei:value", "1.5"), "event.simple-payload",
      id="event.simple-payload-fraction"),
    p(D, set_text(f"{FAR_SIMPLE}/ei:signalType", "price"), "event.signal-type",
      id="event.signal-type"),
    p(D, set_text(f"{FAR_PRICE}/ei:signalType", "level"), "event.signal-type",
      id="event.signal-type-price"),
    p(D, remove(f"{FAR_PRICE}/oadr:currencyPerKWh"), "event.signal-unit",
      id="event.signal-unit-price-without-currency"),
    p(lambda: distribute(event("evt-1", status="far", start=NOW + HOUR, signals=[
        signal([5, 3], name="LOAD_DISPATCH", type="setpoint")])), lambda r: None,
      "event.signal-unit", id="event.signal-unit-dispatch-without-power"),
    p(lambda: distribute(event("evt-1", status="far", start=NOW + HOUR, signals=[
        signal([5, 3], name="LOAD_DISPATCH", type="setpoint", unit=currency_per_kwh())])),
      lambda r: None, "event.signal-unit", id="event.signal-unit-dispatch-currency"),
    p(D, set_text(f"{FAR_PRICE}/ei:signalID", "0"), "event.signal-id-unique",
      id="event.signal-id-unique"),
    p(D, duplicate(f"{FAR_SIMPLE}//ei:interval[1]/ei:signalPayload"), "event.payload-count",
      id="event.payload-count"),
    p(D, set_text(f"{FAR_SIMPLE}//ei:interval[1]/xcal:uid/xcal:text", "1"), "event.interval-uid",
      id="event.interval-uid"),
    p(D, set_text(f"{PROPS}/xcal:duration/xcal:duration", "PT3H"), "event.duration-sum",
      id="event.duration-sum"),
    p(D, set_text(f"{FAR_SIMPLE}//ei:interval[2]/xcal:duration/xcal:duration", "PT30M"),
      "event.duration-sum", id="event.duration-sum-interval"),
    p(D, insert(f"{FAR_SIMPLE}//ei:interval[1]", 0, dtstart), "event.interval-dtstart",
      id="event.interval-dtstart"),
    p(D, insert(f"{FAR}//ei:eiEventBaseline//ei:interval[1]", 0, dtstart),
      "event.interval-dtstart", id="event.interval-dtstart-baseline"),
    p(D, insert(f"{FAR}/ei:eiTarget", 1, lambda: E("ei:venID", "ven-2")), "event.target-ven",
      id="event.target-ven"),
    p(D, set_text(f"{PROPS}/ei:x-eiNotification/xcal:duration", "-PT1H"), "event.notification",
      id="event.notification-negative"),
    p(D, set_text(f"{PROPS}/ei:x-eiNotification/xcal:duration", "PT"), "event.notification",
      id="event.notification-empty"),
    p(D, set_text(f"{FAR}//ei:createdDateTime", ts(NOW - timedelta(minutes=6))),
      "event.created-date-time", id="event.created-date-time"),
    p(D, set_text(f"{PROPS}/xcal:duration/xcal:duration", "P"), "format", id="format-duration"),
    p(R, remove("//oadr:oadrRequestedOadrPollFreq"), "registration.poll-freq",
      id="registration.poll-freq"),
    p(R, set_text("//ei:venID", ""), "registration.ven-id", id="registration.ven-id"),
    p(RR, set_text("//oadr:oadrReport[1]/ei:reportRequestID", "rr-7"),
      "register-report.request-id", id="register-report.request-id"),
    p(RR, insert("//oadr:oadrReport[1]", 0, lambda: E("ei:eiReportID", "rep-1")),
      "register-report.metadata", id="register-report.metadata-report-id"),
    p(RR, insert("//oadr:oadrReport[1]", 0, dtstart), "register-report.metadata",
      id="register-report.metadata-dtstart"),
    p(RR, insert("//oadr:oadrReport[1]", 0, lambda: E("strm:intervals", status_interval(NOW))),
      "register-report.metadata", id="register-report.metadata-intervals"),
    p(RR, set_text("//oadr:oadrReport[2]//ei:rID", "power-2"), "report.rid-unique",
      id="report.rid-unique"),
    p(RR, set_text("//oadr:oadrReport[2]/ei:reportSpecifierID", "spec-status"),
      "report.specifier-id-unique", id="report.specifier-id-unique"),
    p(CR, set_text("//ei:specifierPayload/ei:readingType", "Direct Read"),
      "report-request.reading-type", id="report-request.reading-type"),
    p(CR, set_text("//xcal:granularity/xcal:duration", "PT"), "report-request.granularity",
      id="report-request.granularity"),
    p(CR, set_text("//oadr:oadrReportRequest[2]/ei:reportRequestID", "rr-1"),
      "report-request.id-unique", id="report-request.id-unique"),
    p(U, remove("//oadr:oadrReport/xcal:dtstart"), "update-report.dtstart",
      id="update-report.dtstart"),
    p(U, remove("//oadr:oadrReport/strm:intervals"), "update-report.intervals",
      id="update-report.intervals"),
    p(U, set_text("//ei:reportName", "METADATA_TELEMETRY_STATUS"), "update-report.name",
      id="update-report.name"),
    p(U, remove(f"{STATUS_IVS}[2]//oadr:oadrLoadControlState"),
      "update-report.load-control-state", id="update-report.load-control-state"),
    p(OPT, set_text("//ei:optID", ""), "opt.id", id="opt.id"),
    p(OPT_EVENT, insert("//oadr:oadrCreateOpt", 3,
                        lambda: E("emix:marketContext", "http://dso.example/flex")),
      "opt.event-scope", id="opt.event-scope-market-context"),
    p(OPT, insert("//oadr:oadrCreateOpt", 8, lambda: E(
        "ei:qualifiedEventID", E("ei:eventID", "evt-far"), E("ei:modificationNumber", "0"))),
      "opt.event-scope", id="opt.event-scope-vavailability"),
    p(OPT, insert("//xcal:available/xcal:properties", 2, lambda: E(
        "xcal:tolerance", E("xcal:tolerate", E("xcal:startafter", "PT5M")))),
      "opt.vavailability", id="opt.vavailability-tolerance"),
    p(OPT, insert("//xcal:available/xcal:properties", 2,
                  lambda: E("ei:x-eiRampUp", E("xcal:duration", "PT5M"))),
      "opt.vavailability", id="opt.vavailability-ramp-up"),
    p(OPT, set_text("//ei:createdDateTime", ts(NOW + timedelta(seconds=61))),
      "opt.created-date-time", id="opt.created-date-time"),
]


@pytest.mark.parametrize("build, mutate, expected", CASES)
def test_rule(build: Callable[[], etree._Element], mutate: Mutation, expected: set[str]) -> None:
    root = build()
    mutate(root)
    violations = check(root, now=NOW)
    assert {v.rule for v in violations} == expected, violations


def test_each_violation_names_its_subject() -> None:
    root = valid_distribute()
    set_text(f"{FAR_SIMPLE}//ei:interval[2]//ei:value", "4")(root)
    [violation] = check(root, now=NOW)
    assert violation.rule == "event.simple-payload"
    assert "event evt-far signal 0 (SIMPLE)" in violation.message and "4" in violation.message


def test_malformed_bytes_and_wrong_root() -> None:
    assert rules(b"<oadr:oadrPayload") == {"xml"}
    signed = nodes(valid_distribute(), "//oadr:oadrSignedObject")[0]
    assert rules(signed) == {"payload"}


def test_assert_conformant_lists_every_violation() -> None:
    root = valid_distribute()
    set_text("//pyld:requestID", "None")(root)
    set_text(f"{FAR}//ei:createdDateTime", ts(NOW - HOUR))(root)
    with pytest.raises(AssertionError) as info:
        assert_conformant(root, now=NOW)
    assert "[request-id]" in str(info.value)
    assert "[event.created-date-time]" in str(info.value)


def test_now_must_be_aware() -> None:
    with pytest.raises(ValueError):
        check(valid_distribute(), now=NOW.replace(tzinfo=None))


def test_open_ended_event_skips_duration_sum() -> None:
    root = distribute(event("evt-1", status="far", start=NOW + HOUR, duration="PT0S",
                            signals=[signal([1])]))
    assert rules(root) == set()


def test_current_value_outside_every_interval_is_not_judged() -> None:
    # active but already past its last interval: which payload is current is undefined here
    root = distribute(event("evt-1", status="active", start=NOW - 3 * HOUR,
                            signals=[signal([1, 2], current=2)]))
    assert rules(root) == set()


@pytest.mark.parametrize("text", ["PT2H", "P0DT2H", "PT120M", "PT7200S", "PT1H60M"])
def test_duration_spellings(text: str) -> None:
    root = valid_distribute()
    set_text(f"{PROPS}/xcal:duration/xcal:duration", text)(root)
    assert rules(root) == set()


@pytest.mark.parametrize("stamp", ["2026-11-27T10:00:00Z", "2026-11-27T10:00:00+00:00",
                                   "2026-11-27T10:00:00.123456Z", "2026-11-27T11:00:00+01:00"])
def test_datetime_spellings(stamp: str) -> None:
    root = valid_distribute()
    set_text(f"{FAR}//ei:createdDateTime", stamp)(root)
    # +00:00 offsets are outside the 2.0b XSD date-time pattern; the rule itself reads them
    assert rules(root) <= {"xsd"}


def test_openleadr_distribute_event_is_flagged_for_interval_dtstart() -> None:
    """Regression proof of openleadr's template defect: it writes dtstart into intervals."""
    from openleadr import objects  # type: ignore[import-untyped]
    from openleadr.messaging import create_message  # type: ignore[import-untyped]

    start = NOW + HOUR
    evt = objects.Event(
        event_descriptor=objects.EventDescriptor(
            event_id="evt-1", modification_number=0, market_context="http://dso.example/flex",
            event_status="far", created_date_time=NOW, modification_date_time=NOW),
        event_signals=[objects.EventSignal(
            intervals=[objects.Interval(dtstart=start + i * HOUR, duration=HOUR,
                                        signal_payload=v) for i, v in enumerate([1, 2])],
            signal_name="SIMPLE", signal_type="level", signal_id="sig-1", current_value=0)],
        targets=[objects.Target(ven_id="ven-1")],
        active_period=objects.ActivePeriod(dtstart=start, duration=2 * HOUR))
    xml = create_message("oadrDistributeEvent", request_id="req-1", vtn_id="vtn-1", events=[evt])
    violations = check(xml.encode(), now=NOW)
    assert {v.rule for v in violations} == {"event.interval-dtstart"}, violations
    assert len(violations) == 2  # one per interval
