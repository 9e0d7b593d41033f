"""EiReport service: register, request, update and cancel reports.

Rules of this file (oadr_20b.xsd oadrReportType, oadrReportDescriptionType,
oadrReportPayloadType; oadr_ei_20b.xsd ReportSpecifierType):
- oadrReport extends strm:StreamBaseType, so its own dtstart/duration/intervals come *first*,
  then eiReportID, descriptions, reportRequestID, reportSpecifierID, reportName, createdDateTime.
- Report intervals (unlike event signal intervals) do carry xcal:dtstart. On input a missing one is
  derived from the previous interval (or the report's dtstart for the first); failing that, 454.
- A report payload is either ei:payloadFloat or oadr:oadrPayloadResourceStatus (TELEMETRY_STATUS:
  oadrOnline, oadrManualOverride, optional oadrLoadControlState with one of oadrCapacity |
  oadrLevelOffset | oadrPercentOffset | oadrSetPoint, each oadrMin?/oadrMax?/oadrCurrent/
  oadrNormal?). oadrDataQuality is read past, not modelled.
- A report description's resource is ei:reportDataSource/ei:resourceID (where openleadr puts it).
- oadrSamplingRate needs both periods: a description with only one writes it for both.
- A report request's reportInterval needs dtstart and duration: a request with a duration but no
  dtstart is our bug (LocalAdrError via ValueError).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Final

from .codec_common import (
    Element, children, duration_prop, find, fmt_bool, fmt_float, get_datetime, get_dtstart,
    get_item_base, get_response, local, need, opt_text, payload_float, put, put_datetime,
    put_duration_prop, put_dtstart, put_item_base, put_payload_float, put_response, sub, text,
    text_of, texts, to_bool, to_float, to_int,
)
from .errors import InvalidData
from .isotime import format_duration, parse_duration
from .messages import (
    CanceledReport, CancelReport, CreatedReport, CreateReport, LoadControlState, RegisteredReport,
    RegisterReport, Report, ReportDescription, ReportInterval, ReportPoint, ReportRequest,
    ResourceStatus, SpecifierPayload, UpdatedReport, UpdateReport,
)
from .schema import EI, EMIX, OADR, PYLD, STRM, XCAL

LOAD_CONTROL_KINDS: Final = ("oadrCapacity", "oadrLevelOffset", "oadrPercentOffset", "oadrSetPoint")
_LOAD_CONTROL_TAGS: Final = frozenset(f"{{{OADR}}}{kind}" for kind in LOAD_CONTROL_KINDS)

# --- report payloads and intervals ----------------------------------------------------------


def put_point(parent: Element, p: ReportPoint) -> None:
    el = sub(parent, OADR, "oadrReportPayload")
    put(el, EI, "rID", p.r_id)
    if p.confidence is not None:
        put(el, EI, "confidence", str(p.confidence))
    if p.accuracy is not None:
        put(el, EI, "accuracy", fmt_float(p.accuracy))
    if p.status is not None:
        status = sub(el, OADR, "oadrPayloadResourceStatus")
        put(status, OADR, "oadrOnline", fmt_bool(p.status.online))
        put(status, OADR, "oadrManualOverride", fmt_bool(p.status.manual_override))
        lc = p.status.load_control
        if lc is not None:
            if lc.kind not in LOAD_CONTROL_KINDS:
                raise ValueError(f"load control kind {lc.kind!r} not in {LOAD_CONTROL_KINDS}")
            state = sub(sub(status, OADR, "oadrLoadControlState"), OADR, lc.kind)
            for name, value in (("oadrMin", lc.min), ("oadrMax", lc.max),
                                ("oadrCurrent", lc.current), ("oadrNormal", lc.normal)):
                if value is not None:
                    put(state, OADR, name, fmt_float(value))
    elif p.value is not None:
        put_payload_float(el, p.value)


def get_point(el: Element) -> ReportPoint:
    confidence = opt_text(el, EI, "confidence")
    accuracy = opt_text(el, EI, "accuracy")
    status = find(el, OADR, "oadrPayloadResourceStatus")
    return ReportPoint(
        r_id=text(el, EI, "rID"),
        confidence=None if confidence is None else to_int(confidence),
        accuracy=None if accuracy is None else to_float(accuracy),
        value=payload_float(el) if status is None else None,
        status=None if status is None else _status(status),
    )


def _status(el: Element) -> ResourceStatus:
    state = find(el, OADR, "oadrLoadControlState")
    kinds = [] if state is None else [k for k in state if k.tag in _LOAD_CONTROL_TAGS]
    return ResourceStatus(
        online=to_bool(text(el, OADR, "oadrOnline")),
        manual_override=to_bool(text(el, OADR, "oadrManualOverride")),
        load_control=_load_control(kinds[0]) if kinds else None,
    )


def _load_control(el: Element) -> LoadControlState:
    def value(name: str) -> float | None:
        found = opt_text(el, OADR, name)
        return None if found is None else to_float(found)

    return LoadControlState(
        kind=local(el.tag), current=to_float(text(el, OADR, "oadrCurrent")),
        min=value("oadrMin"), max=value("oadrMax"), normal=value("oadrNormal"),
    )


def put_report_interval(parent: Element, i: ReportInterval) -> None:
    el = sub(parent, EI, "interval")
    put_dtstart(el, i.dtstart)
    if i.duration is not None:
        put_duration_prop(el, XCAL, "duration", i.duration)
    if i.uid is not None:
        put(sub(el, XCAL, "uid"), XCAL, "text", str(i.uid))
    for point in i.points:
        put_point(el, point)


def _report_intervals(el: Element, report_start: datetime | None) -> tuple[ReportInterval, ...]:
    out: list[ReportInterval] = []
    for position, iv in enumerate(children(el, EI, "interval")):
        dtstart = get_dtstart(iv)
        if dtstart is None:
            if out and out[-1].duration is not None:
                dtstart = out[-1].dtstart + out[-1].duration
            elif not out and report_start is not None:
                dtstart = report_start
            else:
                raise InvalidData(f"report interval {position}: no dtstart and none derivable")
        uid = find(iv, XCAL, "uid")
        out.append(ReportInterval(
            dtstart=dtstart,
            duration=duration_prop(iv, XCAL, "duration"),
            uid=None if uid is None else to_int(text(uid, XCAL, "text")),
            points=tuple(get_point(p) for p in children(iv, OADR, "oadrReportPayload")),
        ))
    return tuple(out)


# --- descriptions and reports -------------------------------------------------------------


def put_description(parent: Element, d: ReportDescription) -> None:
    el = sub(parent, OADR, "oadrReportDescription")
    put(el, EI, "rID", d.r_id)
    if d.resource_id is not None:
        put(sub(el, EI, "reportDataSource"), EI, "resourceID", d.resource_id)
    put(el, EI, "reportType", d.report_type)
    if d.item_base is not None:
        put_item_base(el, d.item_base)
    put(el, EI, "readingType", d.reading_type)
    if d.market_context is not None:
        put(el, EMIX, "marketContext", d.market_context)
    periods = [p for p in (d.min_period, d.max_period) if p is not None]
    if periods:  # one given: it is both bounds
        rate = sub(el, OADR, "oadrSamplingRate")
        put(rate, OADR, "oadrMinPeriod", format_duration(periods[0]))
        put(rate, OADR, "oadrMaxPeriod", format_duration(periods[-1]))
        put(rate, OADR, "oadrOnChange", fmt_bool(d.on_change))


def get_description(el: Element) -> ReportDescription:
    source = find(el, EI, "reportDataSource")
    resource = None if source is None else opt_text(source, EI, "resourceID")
    rate = find(el, OADR, "oadrSamplingRate")
    return ReportDescription(
        r_id=text(el, EI, "rID"),
        report_type=text(el, EI, "reportType"),
        reading_type=text(el, EI, "readingType"),
        resource_id=resource,
        market_context=opt_text(el, EMIX, "marketContext"),
        item_base=get_item_base(el),
        min_period=None if rate is None else parse_duration(text(rate, OADR, "oadrMinPeriod")),
        max_period=None if rate is None else parse_duration(text(rate, OADR, "oadrMaxPeriod")),
        on_change=False if rate is None else to_bool(text(rate, OADR, "oadrOnChange")),
    )


def put_report(parent: Element, r: Report) -> None:
    el = sub(parent, OADR, "oadrReport")
    if r.dtstart is not None:
        put_dtstart(el, r.dtstart)
    if r.duration is not None:
        put_duration_prop(el, XCAL, "duration", r.duration)
    if r.intervals:
        intervals = sub(el, STRM, "intervals")
        for interval in r.intervals:
            put_report_interval(intervals, interval)
    if r.report_id is not None:
        put(el, EI, "eiReportID", r.report_id)
    for description in r.descriptions:
        put_description(el, description)
    put(el, EI, "reportRequestID", r.report_request_id)
    put(el, EI, "reportSpecifierID", r.report_specifier_id)
    if r.report_name:
        put(el, EI, "reportName", r.report_name)
    put_datetime(el, EI, "createdDateTime", r.created)


def get_report(el: Element) -> Report:
    dtstart = get_dtstart(el)
    intervals = find(el, STRM, "intervals")
    report_id = find(el, EI, "eiReportID")
    return Report(
        report_specifier_id=text(el, EI, "reportSpecifierID"),
        report_name=opt_text(el, EI, "reportName") or "",
        created=get_datetime(el, EI, "createdDateTime"),
        report_request_id=text(el, EI, "reportRequestID"),
        report_id=None if report_id is None else text_of(report_id),
        duration=duration_prop(el, XCAL, "duration"),
        dtstart=dtstart,
        descriptions=tuple(get_description(d) for d in children(el, OADR, "oadrReportDescription")),
        intervals=() if intervals is None else _report_intervals(intervals, dtstart),
    )


# --- report requests ----------------------------------------------------------------------


def put_report_request(parent: Element, r: ReportRequest) -> None:
    el = sub(parent, OADR, "oadrReportRequest")
    put(el, EI, "reportRequestID", r.report_request_id)
    spec = sub(el, EI, "reportSpecifier")
    put(spec, EI, "reportSpecifierID", r.report_specifier_id)
    put_duration_prop(spec, XCAL, "granularity", r.granularity)
    put_duration_prop(spec, EI, "reportBackDuration", r.report_back_duration)
    if r.dtstart is not None:
        props = sub(sub(spec, EI, "reportInterval"), XCAL, "properties")
        put_dtstart(props, r.dtstart)
        put(sub(props, XCAL, "duration"), XCAL, "duration", format_duration(r.duration or _ZERO))
    elif r.duration is not None:
        raise ValueError(f"report request {r.report_request_id}: a duration needs a dtstart")
    for p in r.specifiers:
        payload = sub(spec, EI, "specifierPayload")
        put(payload, EI, "rID", p.r_id)
        put(payload, EI, "readingType", p.reading_type)


def get_report_request(el: Element) -> ReportRequest:
    spec = need(el, EI, "reportSpecifier")
    props = spec.find(f"{{{EI}}}reportInterval/{{{XCAL}}}properties")
    return ReportRequest(
        report_request_id=text(el, EI, "reportRequestID"),
        report_specifier_id=text(spec, EI, "reportSpecifierID"),
        granularity=_required_duration(spec, XCAL, "granularity"),
        report_back_duration=_required_duration(spec, EI, "reportBackDuration"),
        specifiers=tuple(
            SpecifierPayload(r_id=text(p, EI, "rID"), reading_type=text(p, EI, "readingType"))
            for p in children(spec, EI, "specifierPayload")),
        dtstart=None if props is None else get_dtstart(props),
        duration=None if props is None else duration_prop(props, XCAL, "duration"),
    )


def _report_requests(el: Element) -> tuple[ReportRequest, ...]:
    return tuple(get_report_request(r) for r in children(el, OADR, "oadrReportRequest"))


def _required_duration(el: Element, ns: str, name: str) -> timedelta:
    value = duration_prop(el, ns, name)
    if value is None:
        raise InvalidData(f"{name} missing")
    return value


_ZERO: Final = timedelta(0)

# --- messages -----------------------------------------------------------------------------


def _enc_register_report(parent: Element, m: RegisterReport) -> None:
    el = sub(parent, OADR, "oadrRegisterReport")
    put(el, PYLD, "requestID", m.request_id)
    for report in m.reports:
        put_report(el, report)
    if m.ven_id is not None:
        put(el, EI, "venID", m.ven_id)
    if m.report_request_id is not None:
        put(el, EI, "reportRequestID", m.report_request_id)


def _dec_register_report(el: Element) -> RegisterReport:
    return RegisterReport(
        request_id=text(el, PYLD, "requestID"),
        reports=tuple(get_report(r) for r in children(el, OADR, "oadrReport")),
        ven_id=opt_text(el, EI, "venID"),
        report_request_id=_opt_raw(el, EI, "reportRequestID"),
    )


def _opt_raw(el: Element, ns: str, name: str) -> str | None:
    """An optional element whose empty value is meaningful (reportRequestID "" or "0")."""
    found = find(el, ns, name)
    return None if found is None else text_of(found)


def _enc_registered_report(parent: Element, m: RegisteredReport) -> None:
    el = sub(parent, OADR, "oadrRegisteredReport")
    put_response(el, m.response)
    for request in m.report_requests:
        put_report_request(el, request)
    if m.ven_id:
        put(el, EI, "venID", m.ven_id)


def _dec_registered_report(el: Element) -> RegisteredReport:
    return RegisteredReport(
        response=get_response(el),
        report_requests=_report_requests(el),
        ven_id=opt_text(el, EI, "venID") or "",
    )


def _enc_create_report(parent: Element, m: CreateReport) -> None:
    el = sub(parent, OADR, "oadrCreateReport")
    put(el, PYLD, "requestID", m.request_id)
    for request in m.report_requests:
        put_report_request(el, request)
    if m.ven_id is not None:
        put(el, EI, "venID", m.ven_id)


def _dec_create_report(el: Element) -> CreateReport:
    return CreateReport(
        request_id=text(el, PYLD, "requestID"),
        report_requests=_report_requests(el),
        ven_id=opt_text(el, EI, "venID"),
    )


def _put_pending(el: Element, pending: tuple[str, ...]) -> None:
    reports = sub(el, OADR, "oadrPendingReports")
    for request_id in pending:
        put(reports, EI, "reportRequestID", request_id)


def _get_pending(el: Element) -> tuple[str, ...]:
    return texts(need(el, OADR, "oadrPendingReports"), EI, "reportRequestID")


def _enc_created_report(parent: Element, m: CreatedReport) -> None:
    el = sub(parent, OADR, "oadrCreatedReport")
    put_response(el, m.response)
    _put_pending(el, m.pending_reports)
    if m.ven_id:
        put(el, EI, "venID", m.ven_id)


def _dec_created_report(el: Element) -> CreatedReport:
    return CreatedReport(response=get_response(el), pending_reports=_get_pending(el),
                         ven_id=opt_text(el, EI, "venID") or "")


def _enc_update_report(parent: Element, m: UpdateReport) -> None:
    el = sub(parent, OADR, "oadrUpdateReport")
    put(el, PYLD, "requestID", m.request_id)
    for report in m.reports:
        put_report(el, report)
    if m.ven_id is not None:
        put(el, EI, "venID", m.ven_id)


def _dec_update_report(el: Element) -> UpdateReport:
    return UpdateReport(
        request_id=text(el, PYLD, "requestID"),
        reports=tuple(get_report(r) for r in children(el, OADR, "oadrReport")),
        ven_id=opt_text(el, EI, "venID"),
    )


def _enc_updated_report(parent: Element, m: UpdatedReport) -> None:
    el = sub(parent, OADR, "oadrUpdatedReport")
    put_response(el, m.response)
    if m.cancel_report is not None:
        _enc_cancel_report(el, m.cancel_report)  # a piggy-backed oadrCancelReport
    if m.ven_id is not None:
        put(el, EI, "venID", m.ven_id)


def _dec_updated_report(el: Element) -> UpdatedReport:
    cancel = find(el, OADR, "oadrCancelReport")
    return UpdatedReport(
        response=get_response(el),
        cancel_report=None if cancel is None else _dec_cancel_report(cancel),
        ven_id=opt_text(el, EI, "venID"),
    )


def _enc_cancel_report(parent: Element, m: CancelReport) -> None:
    el = sub(parent, OADR, "oadrCancelReport")
    put(el, PYLD, "requestID", m.request_id)
    for request_id in m.report_request_ids:
        put(el, EI, "reportRequestID", request_id)
    put(el, PYLD, "reportToFollow", fmt_bool(m.report_to_follow))
    if m.ven_id is not None:
        put(el, EI, "venID", m.ven_id)


def _dec_cancel_report(el: Element) -> CancelReport:
    return CancelReport(
        request_id=text(el, PYLD, "requestID"),
        report_request_ids=texts(el, EI, "reportRequestID"),
        report_to_follow=to_bool(text(el, PYLD, "reportToFollow")),
        ven_id=opt_text(el, EI, "venID"),
    )


def _enc_canceled_report(parent: Element, m: CanceledReport) -> None:
    el = sub(parent, OADR, "oadrCanceledReport")
    put_response(el, m.response)
    _put_pending(el, m.pending_reports)
    if m.ven_id is not None:
        put(el, EI, "venID", m.ven_id)


def _dec_canceled_report(el: Element) -> CanceledReport:
    return CanceledReport(response=get_response(el), pending_reports=_get_pending(el),
                          ven_id=opt_text(el, EI, "venID"))


ENCODERS: Final[dict[type, Callable[[Element, Any], None]]] = {
    RegisterReport: _enc_register_report,
    RegisteredReport: _enc_registered_report,
    CreateReport: _enc_create_report,
    CreatedReport: _enc_created_report,
    UpdateReport: _enc_update_report,
    UpdatedReport: _enc_updated_report,
    CancelReport: _enc_cancel_report,
    CanceledReport: _enc_canceled_report,
}
DECODERS: Final[dict[type, Callable[[Element], Any]]] = {
    RegisterReport: _dec_register_report,
    RegisteredReport: _dec_registered_report,
    CreateReport: _dec_create_report,
    CreatedReport: _dec_created_report,
    UpdateReport: _dec_update_report,
    UpdatedReport: _dec_updated_report,
    CancelReport: _dec_cancel_report,
    CanceledReport: _dec_canceled_report,
}
