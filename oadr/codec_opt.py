"""EiOpt service: oadrCreateOpt, oadrCreatedOpt, oadrCancelOpt, oadrCanceledOpt.

Rules of this file (oadr_20b.xsd oadrCreateOptType extends ei:EiOptType, so the EiOpt fields
come first, then requestID, qualifiedEventID, eiTarget):
- An opt is either event-scoped (qualifiedEventID: eventID *and* modificationNumber) or an
  availability schedule (xcal:vavailability of xcal:available dtstart+duration components);
  `CreateOpt.__post_init__` enforces the either/or, so decoding a message that breaks it is 454.
- An event-scoped opt without a modification number cannot be written (the schema needs one):
  our bug, reported as LocalAdrError, never guessed as 0.
- eiTarget is always written (empty allowed). oadrDeviceClass is read past, not modelled.
- optReason: a spec enumeration becomes `OptReason`; an `x-` extension stays a plain string.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from .codec_common import (
    Element, children, duration_prop, find, get_datetime, get_dtstart, get_response, get_target,
    need, opt_text, put, put_datetime, put_duration_prop, put_dtstart, put_opt, put_response,
    put_target, sub, text, to_int,
)
from .errors import InvalidData
from .messages import (
    Availability, CanceledOpt, CancelOpt, CreatedOpt, CreateOpt, OptReason, OptType,
)
from .schema import EI, EMIX, OADR, PYLD, XCAL

_REASONS: Final = {r.value: r for r in OptReason}


def put_availability(parent: Element, schedule: tuple[Availability, ...]) -> None:
    components = sub(sub(parent, XCAL, "vavailability"), XCAL, "components")
    for a in schedule:
        props = sub(sub(components, XCAL, "available"), XCAL, "properties")
        put_dtstart(props, a.dtstart)
        put_duration_prop(props, XCAL, "duration", a.duration)


def get_availability(el: Element) -> tuple[Availability, ...]:
    vavailability = find(el, XCAL, "vavailability")
    if vavailability is None:
        return ()
    out = []
    for available in children(need(vavailability, XCAL, "components"), XCAL, "available"):
        props = need(available, XCAL, "properties")
        dtstart, duration = get_dtstart(props), duration_prop(props, XCAL, "duration")
        if dtstart is None or duration is None:
            raise InvalidData("vavailability component without dtstart or duration")
        out.append(Availability(dtstart=dtstart, duration=duration))
    return tuple(out)


def _enc_create_opt(parent: Element, m: CreateOpt) -> None:
    el = sub(parent, OADR, "oadrCreateOpt")
    put(el, EI, "optID", m.opt_id)
    put(el, EI, "optType", m.opt_type.value)
    put(el, EI, "optReason", str(m.opt_reason))
    put_opt(el, EMIX, "marketContext", m.market_context)
    put(el, EI, "venID", m.ven_id)
    if m.availability:
        put_availability(el, m.availability)
    put_datetime(el, EI, "createdDateTime", m.created)
    put(el, PYLD, "requestID", m.request_id)
    if m.event_id is not None:
        if m.modification_number is None:
            raise ValueError(f"opt {m.opt_id}: event-scoped opt needs a modification_number")
        qualified = sub(el, EI, "qualifiedEventID")
        put(qualified, EI, "eventID", m.event_id)
        put(qualified, EI, "modificationNumber", str(m.modification_number))
    put_target(el, m.targets)


def _dec_create_opt(el: Element) -> CreateOpt:
    qualified = find(el, EI, "qualifiedEventID")
    reason = text(el, EI, "optReason")
    return CreateOpt(
        request_id=text(el, PYLD, "requestID"),
        opt_id=text(el, EI, "optID"),
        opt_type=OptType(text(el, EI, "optType")),
        opt_reason=_REASONS.get(reason, reason),
        ven_id=text(el, EI, "venID"),
        created=get_datetime(el, EI, "createdDateTime"),
        market_context=opt_text(el, EMIX, "marketContext"),
        event_id=None if qualified is None else text(qualified, EI, "eventID"),
        modification_number=(None if qualified is None
                             else to_int(text(qualified, EI, "modificationNumber"))),
        availability=get_availability(el),
        targets=get_target(need(el, EI, "eiTarget")),
    )


def _enc_created_opt(parent: Element, m: CreatedOpt) -> None:
    el = sub(parent, OADR, "oadrCreatedOpt")
    put_response(el, m.response)
    put(el, EI, "optID", m.opt_id)


def _dec_created_opt(el: Element) -> CreatedOpt:
    return CreatedOpt(response=get_response(el), opt_id=text(el, EI, "optID"))


def _enc_cancel_opt(parent: Element, m: CancelOpt) -> None:
    el = sub(parent, OADR, "oadrCancelOpt")
    put(el, PYLD, "requestID", m.request_id)
    put(el, EI, "optID", m.opt_id)
    put(el, EI, "venID", m.ven_id)


def _dec_cancel_opt(el: Element) -> CancelOpt:
    return CancelOpt(request_id=text(el, PYLD, "requestID"), opt_id=text(el, EI, "optID"),
                     ven_id=text(el, EI, "venID"))


def _enc_canceled_opt(parent: Element, m: CanceledOpt) -> None:
    el = sub(parent, OADR, "oadrCanceledOpt")
    put_response(el, m.response)
    if m.opt_id:
        put(el, EI, "optID", m.opt_id)


def _dec_canceled_opt(el: Element) -> CanceledOpt:
    return CanceledOpt(response=get_response(el), opt_id=opt_text(el, EI, "optID") or "")


ENCODERS: Final[dict[type, Callable[[Element, Any], None]]] = {
    CreateOpt: _enc_create_opt,
    CreatedOpt: _enc_created_opt,
    CancelOpt: _enc_cancel_opt,
    CanceledOpt: _enc_canceled_opt,
}
DECODERS: Final[dict[type, Callable[[Element], Any]]] = {
    CreateOpt: _dec_create_opt,
    CreatedOpt: _dec_created_opt,
    CancelOpt: _dec_cancel_opt,
    CanceledOpt: _dec_canceled_opt,
}
