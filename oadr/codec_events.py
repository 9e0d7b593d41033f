"""EiEvent service: oadrDistributeEvent, oadrRequestEvent, oadrCreatedEvent.

Rules of this file (oadr_ei_20b.xsd eiEventType/eiEventSignalType, plus the conformance rules the
certification harness checks on top of the schema; domain reference, section 2):
- Signal intervals carry a duration, a uid 0,1,2,... in order, and exactly one
  signalPayload/payloadFloat. We never emit xcal:dtstart inside a signal interval (harness rule;
  openleadr does). On input an interval dtstart is tolerated and ignored, a missing uid reads as
  the interval's position, and a sole interval without duration lasts the active period.
- currentValue is always emitted (0.0 when the signal has none: "0 when not active").
- eiTarget is always emitted, empty when the event targets everybody (the schema requires it).
- testEvent is an xs:string: present and not "false"/"0" reads as a test event (some VTNs put
  test parameters in it); we write true/false.
- eiEventBaseline is not modelled: ignored on input, never emitted.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, Final

from lxml import etree

from .codec_common import (
    XSI, Element, duration_prop, find, fmt_bool, get_datetime, get_dtstart, get_item_base,
    get_response,
    get_target, need, opt_datetime, opt_text, payload_float, put, put_datetime, put_dtstart,
    put_duration_prop, put_item_base, put_payload_float, put_response, put_target, sub, text,
    text_of, to_int,
)
from .errors import InvalidData
from .isotime import format_duration, parse_datetime, parse_duration
from .messages import (
    ActivePeriod, CreatedEvent, DistributeEvent, Event, EventResponse, EventSignal, EventStatus,
    Interval, OptType, RequestEvent, ResponseRequired,
)
from .schema import EI, EMIX, OADR, PYLD, STRM, XCAL

# --- sub-codecs ---------------------------------------------------------------------------


def put_active_period(parent: Element, p: ActivePeriod) -> None:
    period = sub(parent, EI, "eiActivePeriod")
    props = sub(period, XCAL, "properties")
    put_dtstart(props, p.dtstart)
    put_duration_prop(props, XCAL, "duration", p.duration)
    if p.start_after is not None:
        tolerate = sub(sub(props, XCAL, "tolerance"), XCAL, "tolerate")
        put(tolerate, XCAL, "startafter", format_duration(p.start_after))
    for name, value in (("x-eiNotification", p.notification), ("x-eiRampUp", p.ramp_up),
                        ("x-eiRecovery", p.recovery)):
        if value is not None:
            put_duration_prop(props, EI, name, value)
    # xcal:components is required, nillable and carries nothing in 2.0b: written xsi:nil.
    components = etree.SubElement(period, f"{{{XCAL}}}components", nsmap={"xsi": XSI})
    components.set(f"{{{XSI}}}nil", "true")


def get_active_period(el: Element) -> ActivePeriod:
    props = need(need(el, EI, "eiActivePeriod"), XCAL, "properties")
    dtstart = need(props, XCAL, "dtstart")
    after = props.find(f"{{{XCAL}}}tolerance/{{{XCAL}}}tolerate/{{{XCAL}}}startafter")
    start_after = None if after is None else parse_duration(text_of(after))
    return ActivePeriod(
        dtstart=parse_datetime(text(dtstart, XCAL, "date-time")),
        duration=duration_prop(props, XCAL, "duration") or timedelta(0),
        start_after=start_after,
        notification=duration_prop(props, EI, "x-eiNotification"),
        ramp_up=duration_prop(props, EI, "x-eiRampUp"),
        recovery=duration_prop(props, EI, "x-eiRecovery"),
    )


def put_signal(parent: Element, s: EventSignal) -> None:
    el = sub(parent, EI, "eiEventSignal")
    intervals = sub(el, STRM, "intervals")
    for interval in s.intervals:
        iv = sub(intervals, EI, "interval")
        if interval.dtstart is not None:  # only ever a peer's, kept as received
            put_dtstart(iv, interval.dtstart)
        put_duration_prop(iv, XCAL, "duration", interval.duration)
        put(sub(iv, XCAL, "uid"), XCAL, "text", str(interval.uid))
        put_payload_float(sub(iv, EI, "signalPayload"), interval.payload)
    if s.targets is not None:
        put_target(el, s.targets)
    put(el, EI, "signalName", s.signal_name)
    put(el, EI, "signalType", s.signal_type)
    put(el, EI, "signalID", s.signal_id)
    if s.item_base is not None:
        put_item_base(el, s.item_base)
    put_payload_float(sub(el, EI, "currentValue"),
                      0.0 if s.current_value is None else s.current_value)


def get_signal(el: Element, period: ActivePeriod) -> EventSignal:
    raw = list(need(el, STRM, "intervals").iterfind(f"{{{EI}}}interval"))
    intervals = tuple(_interval(iv, i, period.duration if len(raw) == 1 else None)
                      for i, iv in enumerate(raw))
    target = find(el, EI, "eiTarget")
    current = find(el, EI, "currentValue")
    return EventSignal(
        signal_name=text(el, EI, "signalName"),
        signal_type=text(el, EI, "signalType"),
        signal_id=text(el, EI, "signalID"),
        intervals=intervals,
        current_value=None if current is None else payload_float(current),
        item_base=get_item_base(el),
        targets=None if target is None else get_target(target),
    )


def _interval(el: Element, position: int, default: timedelta | None) -> Interval:
    payloads = list(el.iterfind(f"{{{EI}}}signalPayload"))
    if len(payloads) != 1:
        raise InvalidData(f"signal interval {position}: {len(payloads)} signalPayloads, need one")
    duration = duration_prop(el, XCAL, "duration")
    if duration is None:
        if default is None:
            raise InvalidData(f"signal interval {position}: no duration")
        duration = default
    uid = find(el, XCAL, "uid")
    return Interval(
        uid=position if uid is None else to_int(text(uid, XCAL, "text")),
        duration=duration,
        payload=payload_float(payloads[0]),
        dtstart=get_dtstart(el),
    )


def put_event(parent: Element, e: Event) -> None:
    wrapper = sub(parent, OADR, "oadrEvent")
    ev = sub(wrapper, EI, "eiEvent")
    d = sub(ev, EI, "eventDescriptor")
    put(d, EI, "eventID", e.event_id)
    put(d, EI, "modificationNumber", str(e.modification_number))
    if e.modification_date_time is not None:
        put_datetime(d, EI, "modificationDateTime", e.modification_date_time)
    if e.modification_reason is not None:
        put(d, EI, "modificationReason", e.modification_reason)
    put(d, EI, "priority", str(e.priority))
    put(sub(d, EI, "eiMarketContext"), EMIX, "marketContext", e.market_context)
    put_datetime(d, EI, "createdDateTime", e.created)
    put(d, EI, "eventStatus", e.status.value)
    put(d, EI, "testEvent", fmt_bool(e.test_event))
    if e.vtn_comment is not None:
        put(d, EI, "vtnComment", e.vtn_comment)
    put_active_period(ev, e.active_period)
    signals = sub(ev, EI, "eiEventSignals")
    for signal in e.signals:
        put_signal(signals, signal)
    put_target(ev, e.targets)
    put(wrapper, OADR, "oadrResponseRequired", e.response_required.value)


def get_event(wrapper: Element) -> Event:
    ev = need(wrapper, EI, "eiEvent")
    d = need(ev, EI, "eventDescriptor")
    period = get_active_period(ev)
    test = opt_text(d, EI, "testEvent")
    priority = opt_text(d, EI, "priority")
    required = opt_text(wrapper, OADR, "oadrResponseRequired") or "always"
    return Event(
        event_id=text(d, EI, "eventID"),
        modification_number=to_int(text(d, EI, "modificationNumber")),
        modification_date_time=opt_datetime(d, EI, "modificationDateTime"),
        modification_reason=opt_text(d, EI, "modificationReason"),
        priority=0 if priority is None else to_int(priority),
        market_context=text(need(d, EI, "eiMarketContext"), EMIX, "marketContext"),
        created=get_datetime(d, EI, "createdDateTime"),
        status=EventStatus(text(d, EI, "eventStatus")),
        test_event=test is not None and test.lower() not in ("false", "0"),
        vtn_comment=opt_text(d, EI, "vtnComment"),
        active_period=period,
        signals=tuple(get_signal(s, period) for s in
                      need(ev, EI, "eiEventSignals").iterfind(f"{{{EI}}}eiEventSignal")),
        targets=get_target(need(ev, EI, "eiTarget")),
        response_required=ResponseRequired(required),
    )


# --- messages -----------------------------------------------------------------------------


def _enc_distribute_event(parent: Element, m: DistributeEvent) -> None:
    el = sub(parent, OADR, "oadrDistributeEvent")
    if m.response is not None:
        put_response(el, m.response)
    put(el, PYLD, "requestID", m.request_id)
    put(el, EI, "vtnID", m.vtn_id)
    for event in m.events:
        put_event(el, event)


def _dec_distribute_event(el: Element) -> DistributeEvent:
    return DistributeEvent(
        response=get_response(el) if find(el, EI, "eiResponse") is not None else None,
        request_id=text(el, PYLD, "requestID"),
        vtn_id=text(el, EI, "vtnID"),
        events=tuple(get_event(e) for e in el.iterfind(f"{{{OADR}}}oadrEvent")),
    )


def _enc_request_event(parent: Element, m: RequestEvent) -> None:
    el = sub(sub(parent, OADR, "oadrRequestEvent"), PYLD, "eiRequestEvent")
    put(el, PYLD, "requestID", m.request_id)
    put(el, EI, "venID", m.ven_id)
    if m.reply_limit is not None:
        put(el, PYLD, "replyLimit", str(m.reply_limit))


def _dec_request_event(el: Element) -> RequestEvent:
    body = need(el, PYLD, "eiRequestEvent")
    limit = opt_text(body, PYLD, "replyLimit")
    return RequestEvent(request_id=text(body, PYLD, "requestID"), ven_id=text(body, EI, "venID"),
                        reply_limit=None if limit is None else to_int(limit))


def _enc_created_event(parent: Element, m: CreatedEvent) -> None:
    el = sub(sub(parent, OADR, "oadrCreatedEvent"), PYLD, "eiCreatedEvent")
    put_response(el, m.response)
    if m.event_responses:
        responses = sub(el, EI, "eventResponses")
        for r in m.event_responses:
            er = sub(responses, EI, "eventResponse")
            put(er, EI, "responseCode", f"{r.code:03d}")
            put(er, EI, "responseDescription", r.description)
            put(er, PYLD, "requestID", r.request_id)
            qualified = sub(er, EI, "qualifiedEventID")
            put(qualified, EI, "eventID", r.event_id)
            put(qualified, EI, "modificationNumber", str(r.modification_number))
            put(er, EI, "optType", r.opt_type.value)
    put(el, EI, "venID", m.ven_id)


def _dec_created_event(el: Element) -> CreatedEvent:
    body = need(el, PYLD, "eiCreatedEvent")
    responses = find(body, EI, "eventResponses")  # optional, and may be empty
    return CreatedEvent(
        response=get_response(body),
        ven_id=opt_text(body, EI, "venID") or "",
        event_responses=() if responses is None else tuple(
            _event_response(r) for r in responses.iterfind(f"{{{EI}}}eventResponse")),
    )


def _event_response(el: Element) -> EventResponse:
    qualified = need(el, EI, "qualifiedEventID")
    return EventResponse(
        code=int(text(el, EI, "responseCode")),
        description=opt_text(el, EI, "responseDescription") or "",
        request_id=text(el, PYLD, "requestID"),
        event_id=text(qualified, EI, "eventID"),
        modification_number=to_int(text(qualified, EI, "modificationNumber")),
        opt_type=OptType(text(el, EI, "optType")),
    )


ENCODERS: Final[dict[type, Callable[[Element, Any], None]]] = {
    DistributeEvent: _enc_distribute_event,
    RequestEvent: _enc_request_event,
    CreatedEvent: _enc_created_event,
}
DECODERS: Final[dict[type, Callable[[Element], Any]]] = {
    DistributeEvent: _dec_distribute_event,
    RequestEvent: _dec_request_event,
    CreatedEvent: _dec_created_event,
}
