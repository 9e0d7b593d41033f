"""Conformance checks for every OpenADR 2.0b message adrgate emits.

Rules of this file:
- `check(xml, now=...)` validates the whole oadrPayload against the 2.0b XSD (`schema.XSD`), then
  applies the rules of the payload inside `oadrSignedObject`, chosen through one table
  (`CHECKERS`). `assert_conformant` is the same check for tests, and for the VTN before it
  accepts an event from the operator API.
- Only rules decidable on one message live here: the certification harness checks beyond the
  XSD (domain.md section 2). Rules across messages (every far/near/active event in every
  distribute, no overlapping events in one market context, registrationID matching the active
  registration, granularity versus the metadata minimum period, transport address of push
  VENs) belong to the state layer. "CR n" marks the Profile Specification's conformance rule
  numbers as openleadr's preflight cites them; other checks cite the harness rule.
- Each rule has a short stable id (`Violation.rule`); callers and tests match on the id, never on
  the message text, which names the element, eventID, signal or report.
- A value that cannot be read (duration, date-time, number) is reported once, under "format"
  unless the rule is about that very value, and the checks needing it are skipped. Checks
  never raise on a malformed tree: the XSD reports structure.
- The clock is a parameter (`now`, timezone-aware); no I/O, no `datetime.now()`.
- Date-times and durations are read by `oadr.isotime` (lenient, as for peers), except that a
  duration with no component at all (`P`, `PT`) is flagged: we write `PT0S`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Final, TypeVar

from lxml import etree

from .errors import InvalidData, MalformedMessage
from .isotime import parse_datetime, parse_duration
from .schema import EI, NSMAP, OADR, POWER, PYLD, STRM, parse_xml, schema_errors


@dataclass(frozen=True, slots=True)
class Violation:
    rule: str
    message: str


# --- readers ------------------------------------------------------------------------------

T = TypeVar("T")


def _duration(text: str) -> timedelta:
    # isotime reads `P` and `PT` alone as zero (openleadr writes them); we emit `PT0S`.
    if not any(c.isdigit() for c in text):
        raise InvalidData(f"duration {text!r} has no component (write PT0S)")
    return parse_duration(text)


def _x(el: etree._Element | None, path: str) -> list[etree._Element]:
    found = [] if el is None else el.xpath(path, namespaces=NSMAP)
    return [e for e in found if isinstance(e, etree._Element)] if isinstance(found, list) else []


def _first(el: etree._Element | None, path: str) -> etree._Element | None:
    found = _x(el, path)
    return found[0] if found else None


def _text(el: etree._Element | None, path: str) -> str | None:
    found = _first(el, path)
    return None if found is None else (found.text or "").strip()


def _tags(ns: str, *names: str) -> frozenset[str]:
    return frozenset(f"{{{ns}}}{n}" for n in names)


def _dupes(values: Iterable[str | None]) -> list[str]:
    return sorted(v for v, n in Counter(v for v in values if v is not None).items() if n > 1)


@dataclass(slots=True)
class _Out:
    """Collects violations; `read` records an unreadable value under `rule` and returns None."""

    violations: list[Violation] = field(default_factory=list)

    def add(self, rule: str, message: str) -> None:
        self.violations.append(Violation(rule, message))

    def read(self, el: etree._Element | None, what: str, parse: Callable[[str], T],
             rule: str = "format") -> T | None:
        if el is None:
            return None
        try:
            return parse(el.text or "")
        except (InvalidData, ValueError) as exc:  # float() raises ValueError
            self.add(rule, f"{what}: {exc}")
            return None

    def created_near(self, el: etree._Element | None, now: datetime, limit: timedelta,
                     rule: str, what: str) -> None:
        created = self.read(el, what, parse_datetime)
        if created is not None and abs(created - now) > limit:
            self.add(rule, f"{what} {created.isoformat()} is more than {limit} from now "
                           f"({now.isoformat()})")


# --- every payload ------------------------------------------------------------------------

def _request_ids(root: etree._Element, out: _Out) -> None:
    # Harness rule "requestID present": a message's own requestID is a real value, never empty
    # and never a stringified null. An eiResponse echoes the request it answers, which may
    # legitimately have had none (oadrResponse to an oadrPoll), so there only "None" is wrong.
    for el in root.iter(f"{{{PYLD}}}requestID", f"{{{EI}}}requestID"):
        text = (el.text or "").strip()
        parent = el.getparent()
        echoed = parent is not None and parent.tag == f"{{{EI}}}eiResponse"
        where = f"{etree.QName(parent).localname if parent is not None else ''}/requestID"
        if text == "None":
            out.add("request-id", f"{where} is the literal 'None'")
        elif not text and not echoed:
            out.add("request-id", f"{where} is empty")


# --- oadrDistributeEvent ------------------------------------------------------------------

_STATUSES: Final = frozenset({"none", "far", "near", "active", "completed", "cancelled"})
_SIMPLE_LEVELS: Final = frozenset({0.0, 1.0, 2.0, 3.0})
_CURRENCY: Final = _tags(OADR, "currency", "currencyPerKWh", "currencyPerKW", "currencyPerThm")
_POWER_ITEMS: Final = _tags(POWER, "powerReal", "powerApparent", "powerReactive", "powerItem")
_ENERGY_ITEMS: Final = _tags(POWER, "energyReal", "energyApparent", "energyReactive", "energyItem")
_PRICES: Final = frozenset({"price", "priceRelative", "priceMultiplier"})


@dataclass(frozen=True, slots=True)
class _SignalRule:
    types: frozenset[str]
    units: frozenset[str] | None = None           # allowed itemBase tags; None: any or none
    unit_required: frozenset[str] = frozenset()   # signalTypes that must carry a unit


# The Profile Specification's signal table (harness: signalType and units valid for the
# signalName). Names outside it (x-...) are not checked.
SIGNAL_RULES: Final[dict[str, _SignalRule]] = {
    "SIMPLE": _SignalRule(frozenset({"level"})),
    "ELECTRICITY_PRICE": _SignalRule(_PRICES, _CURRENCY, frozenset({"price"})),
    "ENERGY_PRICE": _SignalRule(_PRICES, _CURRENCY, frozenset({"price"})),
    "DEMAND_CHARGE": _SignalRule(frozenset({"price"}), _CURRENCY, frozenset({"price"})),
    "BID_PRICE": _SignalRule(frozenset({"price"}), _CURRENCY, frozenset({"price"})),
    "BID_LOAD": _SignalRule(frozenset({"setpoint"}), _POWER_ITEMS),
    "BID_ENERGY": _SignalRule(frozenset({"setpoint"}), _ENERGY_ITEMS),
    "CHARGE_STATE": _SignalRule(frozenset({"setpoint", "delta", "level"}), _ENERGY_ITEMS),
    "LOAD_DISPATCH": _SignalRule(frozenset({"setpoint", "delta"}), _POWER_ITEMS,
                                 frozenset({"setpoint", "delta"})),
    "LOAD_CONTROL": _SignalRule(frozenset({
        "x-loadControlCapacity", "x-loadControlLevelOffset", "x-loadControlPercentOffset",
        "x-loadControlSetpoint"})),
}
_SIGNAL_PARTS: Final = _tags(EI, "eiTarget", "signalName", "signalType", "signalID",
                             "currentValue") | _tags(STRM, "intervals")


def _distribute_event(payload: etree._Element, now: datetime, out: _Out) -> None:
    ids: list[str | None] = []
    order: list[tuple[bool, datetime, str]] = []
    for event in _x(payload, "oadr:oadrEvent/ei:eiEvent"):
        eid = _text(event, "ei:eventDescriptor/ei:eventID")
        ids.append(eid)
        where = f"event {eid}"
        status = _text(event, "ei:eventDescriptor/ei:eventStatus") or ""
        if status not in _STATUSES:
            out.add("event.status", f"{where}: eventStatus {status!r} is not one of "
                                    f"{'|'.join(sorted(_STATUSES))}")
        # Harness: createdDateTime within 5 minutes of the harness clock.
        out.created_near(_first(event, "ei:eventDescriptor/ei:createdDateTime"), now,
                         timedelta(minutes=5), "event.created-date-time",
                         f"{where} createdDateTime")
        props = _first(event, "ei:eiActivePeriod/xcal:properties")
        start = out.read(_first(props, "xcal:dtstart/xcal:date-time"), f"{where} dtstart",
                         parse_datetime)
        total = out.read(_first(props, "xcal:duration/xcal:duration"), f"{where} duration",
                         _duration)
        # x-eiNotification precedes the event: a non-negative duration.
        notice = out.read(_first(props, "ei:x-eiNotification/xcal:duration"),
                          f"{where} x-eiNotification", _duration, rule="event.notification")
        if notice is not None and notice < timedelta(0):
            out.add("event.notification", f"{where}: x-eiNotification is negative")
        for target in _x(event, ".//ei:eiTarget"):
            if len(_x(target, "ei:venID")) > 1:  # harness: at most one venID in a target
                out.add("event.target-ven", f"{where}: eiTarget names several venIDs")
        if start is not None:
            order.append((status != "active", start, str(eid)))
        _signals(event, where, status, start, total, now, out)
    for eid in _dupes(ids):
        out.add("event.id-unique", f"eventID {eid} appears more than once")
    # Harness: active events first, then the others by ascending dtstart.
    for before, after in zip(order, order[1:]):
        if after[:2] < before[:2]:
            out.add("event.order", f"event {after[2]} is listed after event {before[2]}")


def _signals(event: etree._Element, where: str, status: str, start: datetime | None,
             total: timedelta | None, now: datetime, out: _Out) -> None:
    signal_ids: list[str | None] = []
    for signal in _x(event, "ei:eiEventSignals/ei:eiEventSignal"):
        name = _text(signal, "ei:signalName") or ""
        sid = _text(signal, "ei:signalID")
        signal_ids.append(sid)
        here = f"{where} signal {sid} ({name})"
        _signal_kind(signal, name, here, out)
        durations, values = _intervals(_x(signal, "strm:intervals/ei:interval"), here, out)
        # Profile CR 8: interval durations add up to the active period (0 = open-ended).
        if total and durations and None not in durations:
            span = sum((d for d in durations if d is not None), timedelta(0))
            if span != total:
                out.add("event.duration-sum",
                        f"{here}: intervals last {span}, the active period {total}")
        current = out.read(_first(signal, "ei:currentValue/ei:payloadFloat/ei:value"),
                           f"{here} currentValue", float)
        # Profile CR 9: SIMPLE payloads (and so the current value) are levels 0..3.
        if name.upper() == "SIMPLE":
            for v in [*values, current]:
                if v is not None and v not in _SIMPLE_LEVELS:
                    out.add("event.simple-payload", f"{here}: payload {v:g} is not 0, 1, 2 or 3")
        if current is None:
            continue
        # Profile CR 14: currentValue is 0 unless the event is active; when active it is the
        # payload of the interval containing now (intervals run back to back from dtstart).
        if status != "active":
            if current != 0:
                out.add("event.current-value", f"{here}: currentValue {current:g} while {status}")
        elif start is not None and None not in durations:
            expected = _value_at(start, durations, values, now)
            if expected is not None and expected != current:
                out.add("event.current-value",
                        f"{here}: currentValue {current:g}, current interval payload {expected:g}")
    for sid in _dupes(signal_ids):
        out.add("event.signal-id-unique", f"{where}: signalID {sid} appears more than once")
    for base in _x(event, "ei:eiEventSignals/ei:eiEventBaseline"):
        bid = _text(base, "ei:baselineID")
        _intervals(_x(base, "strm:intervals/ei:interval"), f"{where} baseline {bid}", out)


def _signal_kind(signal: etree._Element, name: str, here: str, out: _Out) -> None:
    rule = SIGNAL_RULES.get("SIMPLE" if name == "simple" else name)
    if rule is None:
        return
    stype = _text(signal, "ei:signalType") or ""
    if stype not in rule.types:
        out.add("event.signal-type", f"{here}: signalType {stype!r} is not one of "
                                     f"{'|'.join(sorted(rule.types))}")
    unit = next((c for c in signal if isinstance(c.tag, str) and c.tag not in _SIGNAL_PARTS),
                None)
    if unit is None:
        if stype in rule.unit_required:
            out.add("event.signal-unit", f"{here}: signalType {stype} needs a unit (itemBase)")
    elif rule.units is not None and unit.tag not in rule.units:
        out.add("event.signal-unit",
                f"{here}: unit {etree.QName(unit).localname} does not fit the signal")


def _intervals(intervals: list[etree._Element], here: str,
               out: _Out) -> tuple[list[timedelta | None], list[float | None]]:
    durations: list[timedelta | None] = []
    values: list[float | None] = []
    for index, interval in enumerate(intervals):
        at = f"{here} interval {index}"
        # Harness: signal and baseline intervals carry no dtstart; their start follows from
        # the active period (openleadr's template writes one: the defect this rule catches).
        if _x(interval, "xcal:dtstart"):
            out.add("event.interval-dtstart", f"{at} carries an xcal:dtstart")
        uid = _text(interval, "xcal:uid/xcal:text")
        if uid != str(index):  # harness: uids 0, 1, 2 ... in order
            out.add("event.interval-uid", f"{at} has uid {uid!r}, expected '{index}'")
        duration_el = _first(interval, "xcal:duration/xcal:duration")
        if duration_el is None:
            out.add("event.duration-sum", f"{at} has no duration")
        durations.append(out.read(duration_el, f"{at} duration", _duration))
        floats = _x(interval, "ei:signalPayload/ei:payloadFloat/ei:value")
        if len(floats) != 1:  # harness: exactly one payloadFloat per interval
            out.add("event.payload-count", f"{at} has {len(floats)} payloadFloat values")
        values.append(out.read(floats[0], f"{at} payload", float) if len(floats) == 1 else None)
    return durations, values


def _value_at(start: datetime, durations: list[timedelta | None], values: list[float | None],
              now: datetime) -> float | None:
    for duration, value in zip(durations, values):
        if duration is None:
            return None
        if start <= now < start + duration:
            return value
        start += duration
    return None


# --- registration -------------------------------------------------------------------------

def _created_party_registration(payload: etree._Element, now: datetime, out: _Out) -> None:
    # Harness: pull VENs get a poll frequency; a registration names the VEN it registered.
    # One message does not tell pull from push, so every successful registration carries it
    # (a push VEN ignores it).
    if _text(payload, "ei:eiResponse/ei:responseCode") != "200":
        return
    registration = _text(payload, "ei:registrationID")
    if not registration:
        return
    freq = _first(payload, "oadr:oadrRequestedOadrPollFreq/xcal:duration")
    if freq is None:
        out.add("registration.poll-freq",
                f"registration {registration} has no oadrRequestedOadrPollFreq")
    out.read(freq, "oadrRequestedOadrPollFreq", _duration)
    if not _text(payload, "ei:venID"):
        out.add("registration.ven-id", f"registration {registration} has no venID")


# --- reports ------------------------------------------------------------------------------

def _register_report(payload: etree._Element, now: datetime, out: _Out) -> None:
    specifiers: list[str | None] = []
    for report in _x(payload, "oadr:oadrReport"):
        spec = _text(report, "ei:reportSpecifierID")
        specifiers.append(spec)
        name = _text(report, "ei:reportName") or ""
        where = f"report {spec} ({name})"
        request = _text(report, "ei:reportRequestID") or ""
        if request not in ("", "0"):  # harness: a registered report answers no request
            out.add("register-report.request-id", f"{where}: reportRequestID {request!r}")
        if name.startswith("METADATA"):  # harness: metadata carry no data, start or id
            for path, what in (("strm:intervals/ei:interval", "intervals"),
                               ("xcal:dtstart", "a dtstart"), ("ei:eiReportID[text()]",
                                                                "an eiReportID")):
                if _x(report, path):
                    out.add("register-report.metadata", f"{where} carries {what}")
        for rid in _dupes(_text(d, "ei:rID") for d in _x(report, "oadr:oadrReportDescription")):
            out.add("report.rid-unique", f"{where}: rID {rid} appears more than once")
    for spec in _dupes(specifiers):
        out.add("report.specifier-id-unique", f"reportSpecifierID {spec} appears more than once")


def _report_requests(payload: etree._Element, now: datetime, out: _Out) -> None:
    requests = _x(payload, "oadr:oadrReportRequest")
    for request in requests:
        where = f"report request {_text(request, 'ei:reportRequestID')}"
        spec = _first(request, "ei:reportSpecifier")
        granularity = _first(spec, "xcal:granularity/xcal:duration")
        if granularity is None:
            out.add("report-request.granularity", f"{where} has no granularity")
        out.read(granularity, f"{where} granularity", _duration, rule="report-request.granularity")
        out.read(_first(spec, "ei:reportBackDuration/xcal:duration"), f"{where} reportBackDuration",
                 _duration)
        for sp in _x(spec, "ei:specifierPayload"):
            reading = _text(sp, "ei:readingType")
            if reading != "x-notApplicable":  # harness: readingType x-notApplicable in requests
                out.add("report-request.reading-type",
                        f"{where} rID {_text(sp, 'ei:rID')}: readingType {reading!r}")
    for rid in _dupes(_text(r, "ei:reportRequestID") for r in requests):
        out.add("report-request.id-unique", f"reportRequestID {rid} appears more than once")


def _update_report(payload: etree._Element, now: datetime, out: _Out) -> None:
    # Harness: data reports carry dtstart, intervals and a report name without METADATA_.
    for report in _x(payload, "oadr:oadrReport"):
        where = f"report {_text(report, 'ei:eiReportID')}"
        if _first(report, "xcal:dtstart") is None:
            out.add("update-report.dtstart", f"{where} has no dtstart")
        out.read(_first(report, "xcal:dtstart/xcal:date-time"), f"{where} dtstart", parse_datetime)
        intervals = _x(report, "strm:intervals/ei:interval")
        if not intervals:
            out.add("update-report.intervals", f"{where} has no intervals")
        name = _text(report, "ei:reportName")
        if not name or name.startswith("METADATA"):
            out.add("update-report.name", f"{where}: reportName {name!r}")
        # Harness: oadrLoadControlState in every interval if it is in one.
        with_state = sum(1 for i in intervals if _x(i, ".//oadr:oadrLoadControlState"))
        if 0 < with_state < len(intervals):
            out.add("update-report.load-control-state",
                    f"{where}: oadrLoadControlState in {with_state} of {len(intervals)} intervals")


# --- opt ----------------------------------------------------------------------------------

_NOT_IN_AVAILABILITY: Final = ("xcal:tolerance", "ei:x-eiNotification", "ei:x-eiRampUp",
                               "ei:x-eiRecovery")


def _create_opt(payload: etree._Element, now: datetime, out: _Out) -> None:
    opt = _text(payload, "ei:optID")
    if not opt:
        out.add("opt.id", "oadrCreateOpt has an empty optID")
    where = f"opt {opt}"
    # Harness: an opt for one event names neither an availability schedule nor a market context.
    if _x(payload, "ei:qualifiedEventID"):
        for path in ("xcal:vavailability", "emix:marketContext"):
            if _x(payload, path):
                out.add("opt.event-scope", f"{where} names an event and {path.split(':')[1]}")
    for index, props in enumerate(_x(payload, "xcal:vavailability/xcal:components/"
                                              "xcal:available/xcal:properties")):
        for path in _NOT_IN_AVAILABILITY:
            if _x(props, path):
                out.add("opt.vavailability", f"{where} component {index} carries {path}")
    out.created_near(_first(payload, "ei:createdDateTime"), now, timedelta(minutes=1),
                     "opt.created-date-time", f"{where} createdDateTime")


# --- entry points -------------------------------------------------------------------------

Checker = Callable[[etree._Element, datetime, _Out], None]

CHECKERS: Final[dict[str, Checker]] = {
    "oadrDistributeEvent": _distribute_event,
    "oadrCreatedPartyRegistration": _created_party_registration,
    "oadrRegisterReport": _register_report,
    "oadrCreateReport": _report_requests,
    "oadrRegisteredReport": _report_requests,
    "oadrUpdateReport": _update_report,
    "oadrCreateOpt": _create_opt,
}


def check(xml: bytes | etree._Element, *, now: datetime) -> list[Violation]:
    """Return every conformance violation of one oadrPayload (empty when conformant).

    Raises:
        ValueError: `now` is not timezone-aware.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now = now.astimezone(timezone.utc)
    if isinstance(xml, bytes):
        try:
            root = parse_xml(xml)
        except MalformedMessage as exc:
            return [Violation("xml", str(exc))]
    else:
        root = xml
    out = _Out([Violation("xsd", e) for e in schema_errors(root)])
    if root.tag != f"{{{OADR}}}oadrPayload":
        out.add("payload", f"root is {etree.QName(root).localname}, not oadrPayload")
    _request_ids(root, out)
    for payload in _x(root, "oadr:oadrSignedObject/*"):
        checker = CHECKERS.get(etree.QName(payload).localname)
        if checker is not None:
            checker(payload, now, out)
    return out.violations


def assert_conformant(xml: bytes | etree._Element, *, now: datetime) -> None:
    """Check `xml` and fail listing every violation.

    Raises:
        AssertionError: at least one violation, all of them listed one per line.
    """
    violations = check(xml, now=now)
    if violations:
        lines = "\n".join(f"  [{v.rule}] {v.message}" for v in violations)
        raise AssertionError(f"{len(violations)} conformance violation(s):\n{lines}")
