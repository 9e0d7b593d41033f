"""EiRegisterParty and OadrPoll services, and the generic oadrResponse.

Rules of this file (oadr_20b.xsd registration and poll payloads; domain reference, section 2):
- oadrCreatedPartyRegistration must list oadrProfiles (schema: one or more oadrProfile); each
  profile we list is offered over simpleHttp, the only transport we implement.
- oadrRequestedOadrPollFreq is written whenever we have one (mandatory for pull VENs).
- oadrServiceSpecificInfo and oadrExtensions are read past, not modelled.
- oadrHttpPullModel absent reads as true (pull is the 2.0b default and the harness' assumption).
- An empty optional registrationID/venID reads as absent (openleadr writes `<ei:venID />`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from .codec_common import (
    Element, children, duration_prop, fmt_bool, get_response, opt_text, put, put_duration_prop,
    put_opt, put_response, sub, text, to_bool,
)
from .messages import (
    CanceledPartyRegistration, CancelPartyRegistration, CreatedPartyRegistration,
    CreatePartyRegistration, Poll, QueryRegistration, RequestReregistration, ResponseMessage,
)
from .schema import EI, OADR, PYLD

TRANSPORT: Final = "simpleHttp"


def _enc_query_registration(parent: Element, m: QueryRegistration) -> None:
    put(sub(parent, OADR, "oadrQueryRegistration"), PYLD, "requestID", m.request_id)


def _dec_query_registration(el: Element) -> QueryRegistration:
    return QueryRegistration(request_id=text(el, PYLD, "requestID"))


def _enc_create_party_registration(parent: Element, m: CreatePartyRegistration) -> None:
    el = sub(parent, OADR, "oadrCreatePartyRegistration")
    put(el, PYLD, "requestID", m.request_id)
    put_opt(el, EI, "registrationID", m.registration_id)
    put_opt(el, EI, "venID", m.ven_id)
    put(el, OADR, "oadrProfileName", m.profile_name)
    put(el, OADR, "oadrTransportName", m.transport_name)
    put_opt(el, OADR, "oadrTransportAddress", m.transport_address)
    put(el, OADR, "oadrReportOnly", fmt_bool(m.report_only))
    put(el, OADR, "oadrXmlSignature", fmt_bool(m.xml_signature))
    put_opt(el, OADR, "oadrVenName", m.ven_name)
    put(el, OADR, "oadrHttpPullModel", fmt_bool(m.http_pull_model))


def _dec_create_party_registration(el: Element) -> CreatePartyRegistration:
    pull = opt_text(el, OADR, "oadrHttpPullModel")
    return CreatePartyRegistration(
        request_id=text(el, PYLD, "requestID"),
        registration_id=opt_text(el, EI, "registrationID"),
        ven_id=opt_text(el, EI, "venID"),
        profile_name=text(el, OADR, "oadrProfileName"),
        transport_name=text(el, OADR, "oadrTransportName"),
        transport_address=opt_text(el, OADR, "oadrTransportAddress"),
        report_only=to_bool(text(el, OADR, "oadrReportOnly")),
        xml_signature=to_bool(text(el, OADR, "oadrXmlSignature")),
        ven_name=opt_text(el, OADR, "oadrVenName"),
        http_pull_model=True if pull is None else to_bool(pull),
    )


def _enc_created_party_registration(parent: Element, m: CreatedPartyRegistration) -> None:
    el = sub(parent, OADR, "oadrCreatedPartyRegistration")
    put_response(el, m.response)
    put_opt(el, EI, "registrationID", m.registration_id)
    put_opt(el, EI, "venID", m.ven_id)
    put(el, EI, "vtnID", m.vtn_id)
    profiles = sub(el, OADR, "oadrProfiles")
    for name in m.profiles:
        profile = sub(profiles, OADR, "oadrProfile")
        put(profile, OADR, "oadrProfileName", name)
        transport = sub(sub(profile, OADR, "oadrTransports"), OADR, "oadrTransport")
        put(transport, OADR, "oadrTransportName", TRANSPORT)
    if m.poll_freq is not None:
        put_duration_prop(el, OADR, "oadrRequestedOadrPollFreq", m.poll_freq)


def _dec_created_party_registration(el: Element) -> CreatedPartyRegistration:
    profiles = el.find(f"{{{OADR}}}oadrProfiles")
    names = () if profiles is None else tuple(
        text(p, OADR, "oadrProfileName") for p in children(profiles, OADR, "oadrProfile"))
    return CreatedPartyRegistration(
        response=get_response(el),
        registration_id=opt_text(el, EI, "registrationID"),
        ven_id=opt_text(el, EI, "venID"),
        vtn_id=text(el, EI, "vtnID"),
        profiles=names,
        poll_freq=duration_prop(el, OADR, "oadrRequestedOadrPollFreq"),
    )


def _enc_cancel_party_registration(parent: Element, m: CancelPartyRegistration) -> None:
    el = sub(parent, OADR, "oadrCancelPartyRegistration")
    put(el, PYLD, "requestID", m.request_id)
    put(el, EI, "registrationID", m.registration_id)
    put_opt(el, EI, "venID", m.ven_id)


def _dec_cancel_party_registration(el: Element) -> CancelPartyRegistration:
    return CancelPartyRegistration(
        request_id=text(el, PYLD, "requestID"),
        registration_id=text(el, EI, "registrationID"),
        ven_id=opt_text(el, EI, "venID"),
    )


def _enc_canceled_party_registration(parent: Element, m: CanceledPartyRegistration) -> None:
    el = sub(parent, OADR, "oadrCanceledPartyRegistration")
    put_response(el, m.response)
    put_opt(el, EI, "registrationID", m.registration_id)
    put_opt(el, EI, "venID", m.ven_id)


def _dec_canceled_party_registration(el: Element) -> CanceledPartyRegistration:
    return CanceledPartyRegistration(
        response=get_response(el),
        registration_id=opt_text(el, EI, "registrationID"),
        ven_id=opt_text(el, EI, "venID"),
    )


def _enc_request_reregistration(parent: Element, m: RequestReregistration) -> None:
    put(sub(parent, OADR, "oadrRequestReregistration"), EI, "venID", m.ven_id)


def _dec_request_reregistration(el: Element) -> RequestReregistration:
    return RequestReregistration(ven_id=text(el, EI, "venID"))


def _enc_response(parent: Element, m: ResponseMessage) -> None:
    el = sub(parent, OADR, "oadrResponse")
    put_response(el, m.response)
    put_opt(el, EI, "venID", m.ven_id)


def _dec_response(el: Element) -> ResponseMessage:
    return ResponseMessage(response=get_response(el), ven_id=opt_text(el, EI, "venID"))


def _enc_poll(parent: Element, m: Poll) -> None:
    put(sub(parent, OADR, "oadrPoll"), EI, "venID", m.ven_id)


def _dec_poll(el: Element) -> Poll:
    return Poll(ven_id=text(el, EI, "venID"))


ENCODERS: Final[dict[type, Callable[[Element, Any], None]]] = {
    QueryRegistration: _enc_query_registration,
    CreatePartyRegistration: _enc_create_party_registration,
    CreatedPartyRegistration: _enc_created_party_registration,
    CancelPartyRegistration: _enc_cancel_party_registration,
    CanceledPartyRegistration: _enc_canceled_party_registration,
    RequestReregistration: _enc_request_reregistration,
    ResponseMessage: _enc_response,
    Poll: _enc_poll,
}
DECODERS: Final[dict[type, Callable[[Element], Any]]] = {
    QueryRegistration: _dec_query_registration,
    CreatePartyRegistration: _dec_create_party_registration,
    CreatedPartyRegistration: _dec_created_party_registration,
    CancelPartyRegistration: _dec_cancel_party_registration,
    CanceledPartyRegistration: _dec_canceled_party_registration,
    RequestReregistration: _dec_request_reregistration,
    ResponseMessage: _dec_response,
    Poll: _dec_poll,
}
