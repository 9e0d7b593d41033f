"""DUIS-like service requests for auxiliary proportional controllers (APC / SAPC), sans-IO.

What travels between a DCC service user, the DCC and a SAPC (domain.md section 5):

- Service requests: SRV 7.13 Set Auxiliary Controller State (GBCS ECS47a), SRV 7.16 Limit APC
  Level (ECS47e, Load Controller role), SRV 6.14.3 Auxiliary Controller calendar (ECS46d) and
  SRV 7.12 Set Randomised Offset Limit. RequestID = `<user EUI-64>:<device EUI-64>:<counter>`.
- Every request is signed (ECDSA P-256, SHA-256) over the exclusive C14N bytes of its `Request`
  element; the signature travels beside it in a `SignedRequest` envelope.
- 7.13, 7.16 and 6.14.3 are critical: the DCC answers the signed request (CommandVariant 1) with a
  pre-command (CommandVariant 4) which the user checks against what it asked for, signs and
  returns (CommandVariant 5). 7.12 goes straight through.
- A future-dated request is cancelled by sending it again (new counter, same service and body)
  with ExecutionDateTime 3000-12-31T00:00:00Z.

The element names follow DUIS; the namespace, response codes and exact layout are this project's
own (DUIS's XSD is not public in a form we can ship). Nothing here reads the clock or does I/O.

Benchmark: `frame(request, key)` is the whole per-frame cost (C14N, sign, serialise), e.g.
`[frame(r, key) for r in plan_requests(dispatch, user, device, first_counter, 1)]`.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from enum import IntEnum, StrEnum
from typing import ClassVar, Final, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from lxml import etree

from oadr.errors import AdrError
from oadr.schema import parse_xml

from .channel import ChannelError, Dispatch
from .models import Mode, Plan

NS: Final = "urn:adrgate:duis-sim:1"
SERVICES_PATH: Final = "/duis/services"  # where a DCC takes signed requests (HTTP POST)
MAX_FRAME_BYTES: Final = 65_536
CANCELLATION_DATE: Final = datetime(3000, 12, 31, tzinfo=UTC)
CONTROLLERS: Final = range(1, 6)  # an ESME hosts Auxiliary Controller[1..5]
LEVELS: Final = range(101)  # CommandedStateLevel, percent
MAX_OFFSET_LIMIT_S: Final = 86_400  # our sanity bound for SRV 7.12 (the GBCS example is 900 s)
MAX_COUNTER: Final = 2**64 - 1  # GBCS counters are 64-bit
COUNTERS_PER_PLAN: Final = 1024  # counter space per plan sequence: its 7.12, then one per step

_EUI64: Final = re.compile(r"[0-9A-F]{2}(?:-[0-9A-F]{2}){7}")
_COUNTER: Final = re.compile(r"0|[1-9][0-9]{0,19}")


class ResponseCode(StrEnum):
    """DUIS-like: I = information, E = error. The numbers are this project's."""

    SUCCESS = "I0"
    PRE_COMMAND = "I4"  # a critical request's pre-command, for the user to sign
    MALFORMED = "E10"  # not well-formed, wrong structure, DTD, too large
    INVALID = "E11"  # well-formed but a value is out of range (level, controller, dates, ID)
    BAD_SIGNATURE = "E20"
    UNKNOWN_USER = "E21"
    ROLE_NOT_ALLOWED = "E22"
    UNKNOWN_DEVICE = "E30"
    NOT_SUPPORTED = "E31"  # no controllable load on that controller
    REPLAYED_COUNTER = "E32"  # the device has seen a counter this high from this user
    NO_SUCH_COMMAND = "E33"  # a cancellation matching no held command
    NO_PRE_COMMAND = "E34"  # a CommandVariant 5 the DCC issued no matching pre-command for
    THROTTLED = "E40"  # the user's capacity for this minute is used up


class DuisError(ValueError):
    """A frame or value that breaks the rules; `code` is what the receiver answers."""

    def __init__(self, code: ResponseCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class Service(StrEnum):
    SET_RANDOMISED_OFFSET_LIMIT = "7.12"
    SET_AUX_CONTROLLER_STATE = "7.13"
    LIMIT_APC_LEVEL = "7.16"
    AUX_CONTROLLER_CALENDAR = "6.14.3"

    @property
    def critical(self) -> bool:
        return self is not Service.SET_RANDOMISED_OFFSET_LIMIT

    @property
    def reference(self) -> str:
        """DUIS ServiceReference: the variant without its third part (6.14.3 -> 6.14)."""
        return ".".join(self.value.split(".")[:2])


class CommandVariant(IntEnum):
    REQUEST = 1  # the user's signed service request
    PRE_COMMAND = 4  # the DCC's answer to a critical request
    SIGNED_PRE_COMMAND = 5  # the pre-command, checked and signed by the user


class Weekday(IntEnum):
    MON = 1
    TUE = 2
    WED = 3
    THU = 4
    FRI = 5
    SAT = 6
    SUN = 7


# -- identifiers ---------------------------------------------------------------------------------

def eui64(text: str) -> str:
    """`text` if it is a hyphenated, upper-case EUI-64 (`00-DB-12-34-56-78-90-A0`)."""
    if not _EUI64.fullmatch(text):
        raise DuisError(ResponseCode.INVALID, f"not a hyphenated upper-case EUI-64: {text!r}")
    return text


@dataclass(frozen=True, slots=True)
class RequestId:
    """`<user EUI-64>:<device EUI-64>:<counter>`; the counter is what the device's anti-replay
    check compares."""

    user: str
    device: str
    counter: int

    def __post_init__(self) -> None:
        eui64(self.user)
        eui64(self.device)
        if not 0 <= self.counter <= MAX_COUNTER:
            raise DuisError(ResponseCode.INVALID, f"counter {self.counter} outside 0..2^64-1")

    def __str__(self) -> str:
        return f"{self.user}:{self.device}:{self.counter}"

    @classmethod
    def parse(cls, text: str) -> RequestId:
        parts = text.split(":")
        if len(parts) != 3 or not _COUNTER.fullmatch(parts[2]):
            raise DuisError(ResponseCode.INVALID, f"not a RequestID: {text!r}")
        return cls(parts[0], parts[1], int(parts[2]))


# -- service request bodies ----------------------------------------------------------------------

def _check(ok: bool, message: str) -> None:
    if not ok:
        raise DuisError(ResponseCode.INVALID, message)


def _aware(name: str, value: datetime) -> None:
    _check(value.tzinfo is not None, f"{name} {value} has no time zone")


@dataclass(frozen=True, slots=True, kw_only=True)
class ControllerLevel:
    """ECS47a / ECS47e: controller n at CommandedStateLevel percent from start until end."""

    service: ClassVar[Service]
    element: ClassVar[str]

    controller: int
    start: datetime
    end: datetime
    level: int
    input_from_controlled_load: bool | None = None  # meaning undocumented; carried as given

    def __post_init__(self) -> None:
        _check(self.controller in CONTROLLERS, f"controller {self.controller} outside 1..5")
        _check(self.level in LEVELS, f"CommandedStateLevel {self.level} outside 0..100")
        _aware("StartDateTime", self.start)
        _aware("EndDateTime", self.end)
        _check(self.start < self.end,
               f"EndDateTime {self.end} not after StartDateTime {self.start}")
        _check(self.end < CANCELLATION_DATE, f"EndDateTime {self.end} not before 3000-12-31")


@dataclass(frozen=True, slots=True, kw_only=True)
class SetAuxControllerState(ControllerLevel):
    service = Service.SET_AUX_CONTROLLER_STATE
    element = "SetAuxControllerState"


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitApcLevel(ControllerLevel):
    service = Service.LIMIT_APC_LEVEL
    element = "LimitAPCLevel"


@dataclass(frozen=True, slots=True, kw_only=True)
class CalendarEntry:
    """ECS46d: from start_date to end_date, on `days` (and `special_days`), switch controller
    n to `level` at `switch_time`."""

    controller: int
    level: int
    days: frozenset[Weekday]
    switch_time: time
    start_date: date
    end_date: date
    special_days: tuple[date, ...] = ()

    def __post_init__(self) -> None:
        _check(self.controller in CONTROLLERS, f"controller {self.controller} outside 1..5")
        _check(self.level in LEVELS, f"CommandedStateLevel {self.level} outside 0..100")
        _check(bool(self.days or self.special_days), "calendar entry applies on no day")
        _check(self.start_date <= self.end_date, f"EndDate {self.end_date} before StartDate")


@dataclass(frozen=True, slots=True, kw_only=True)
class AuxControllerCalendar:
    service: ClassVar[Service] = Service.AUX_CONTROLLER_CALENDAR
    element: ClassVar[str] = "AuxControllerCalendar"

    entries: tuple[CalendarEntry, ...]

    def __post_init__(self) -> None:
        _check(bool(self.entries), "calendar has no entries")


@dataclass(frozen=True, slots=True, kw_only=True)
class SetRandomisedOffsetLimit:
    service: ClassVar[Service] = Service.SET_RANDOMISED_OFFSET_LIMIT
    element: ClassVar[str] = "SetRandomisedOffsetLimit"

    seconds: int

    def __post_init__(self) -> None:
        _check(0 <= self.seconds <= MAX_OFFSET_LIMIT_S,
               f"RandomisedOffsetLimit {self.seconds} s outside 0..{MAX_OFFSET_LIMIT_S}")


Body = SetAuxControllerState | LimitApcLevel | AuxControllerCalendar | SetRandomisedOffsetLimit


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceRequest:
    request_id: RequestId
    body: Body
    execution: datetime | None = None  # future-dated; CANCELLATION_DATE cancels
    variant: CommandVariant = CommandVariant.REQUEST

    def __post_init__(self) -> None:
        if self.execution is not None:
            _aware("ExecutionDateTime", self.execution)

    @property
    def service(self) -> Service:
        return self.body.service

    @property
    def cancels(self) -> bool:
        return self.execution == CANCELLATION_DATE


# -- responses and alerts ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    request_id: str  # as received: a refused request's ID may not parse
    code: ResponseCode
    detail: str = ""
    pre_command: ServiceRequest | None = None  # with PRE_COMMAND

    @property
    def ok(self) -> bool:
        return self.code in (ResponseCode.SUCCESS, ResponseCode.PRE_COMMAND)


class AlertCode(StrEnum):
    LIMIT_PROCESSED = "ECS101"
    LIMIT_ENDED = "ECS102"  # ended or cancelled


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    code: AlertCode
    request_id: RequestId  # the 7.16 request it is about
    controller: int
    at: datetime
    reason: str = ""  # for ECS102: "ended" or "cancelled"


# -- planning ------------------------------------------------------------------------------------

def plan_counter(plan: Plan) -> int:
    """The counter of a plan's 7.12; its step i uses `plan_counter(plan) + 1 + i`. Sequences
    increase per device, so counters strictly increase across the device's plans."""
    return plan.sequence * COUNTERS_PER_PLAN


def offset_request(plan: Plan, user_eui: str, device_eui: str) -> ServiceRequest:
    """SRV 7.12: the SAPC randomises each switch by up to the plan's random delay."""
    return ServiceRequest(
        request_id=RequestId(user_eui, device_eui, plan_counter(plan)),
        body=SetRandomisedOffsetLimit(seconds=round(plan.random_delay.total_seconds())))


def plan_requests(dispatch: Dispatch, user_eui: str, device_eui: str, first_counter: int,
                  controller: int) -> list[ServiceRequest]:
    """One SRV 7.13 per dispatched step of a LIMIT plan; step i gets counter first_counter + i.

    Start and End are the step's own: the SAPC adds its randomised offset (set by 7.12).
    Raises ChannelError(retryable=False) for anything a SAPC cannot do (it only caps load).
    """
    steps = dispatch.plan.steps
    indices = range(len(steps)) if dispatch.step is None else [dispatch.step]
    if dispatch.step is not None and not 0 <= dispatch.step < len(steps):
        raise ChannelError(f"plan {dispatch.plan.plan_id} has no step {dispatch.step}",
                           retryable=False)
    if len(steps) >= COUNTERS_PER_PLAN:
        raise ChannelError(f"{len(steps)} steps exceed {COUNTERS_PER_PLAN - 1} per plan",
                           retryable=False)
    requests = []
    for i in indices:
        step = steps[i]
        if step.mode is not Mode.LIMIT or step.level is None:
            raise ChannelError(f"SAPC only caps load: step {i} is {step.mode}", retryable=False)
        try:
            body = SetAuxControllerState(controller=controller, start=step.start, end=step.end,
                                         level=step.level)
            rid = RequestId(user_eui, device_eui, first_counter + i)
        except DuisError as exc:
            raise ChannelError(f"step {i}: {exc}", retryable=False) from None
        requests.append(ServiceRequest(request_id=rid, body=body, execution=step.start))
    return requests


# -- XML -----------------------------------------------------------------------------------------

def _q(name: str) -> str:
    return f"{{{NS}}}{name}"


def _instant(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _sub(parent: etree._Element, name: str, text: object) -> None:
    etree.SubElement(parent, _q(name)).text = str(text)


def _request_element(request: ServiceRequest) -> etree._Element:
    root = etree.Element(_q("Request"), nsmap={None: NS})
    header = etree.SubElement(root, _q("Header"))
    _sub(header, "RequestID", request.request_id)
    _sub(header, "CommandVariant", int(request.variant))
    _sub(header, "ServiceReference", request.service.reference)
    _sub(header, "ServiceReferenceVariant", request.service.value)
    if request.execution is not None:
        _sub(header, "ExecutionDateTime", _instant(request.execution))
    body = etree.SubElement(etree.SubElement(root, _q("Body")), _q(request.body.element))
    match request.body:
        case ControllerLevel() as window:
            _sub(body, "AuxControllerNumber", window.controller)
            _sub(body, "StartDateTime", _instant(window.start))
            _sub(body, "EndDateTime", _instant(window.end))
            _sub(body, "CommandedStateLevel", window.level)
            if window.input_from_controlled_load is not None:
                _sub(body, "InputFromControlledLoad",
                     str(window.input_from_controlled_load).lower())
        case AuxControllerCalendar(entries=entries):
            for entry in entries:
                _calendar_entry(etree.SubElement(body, _q("CalendarEntry")), entry)
        case SetRandomisedOffsetLimit(seconds=seconds):
            _sub(body, "RandomisedOffsetLimit", seconds)
    return root


def _calendar_entry(el: etree._Element, entry: CalendarEntry) -> None:
    _sub(el, "AuxControllerNumber", entry.controller)
    _sub(el, "CommandedStateLevel", entry.level)
    _sub(el, "DaysOfWeek", " ".join(d.name for d in sorted(entry.days)))
    special = etree.SubElement(el, _q("SpecialDays"))
    for day in entry.special_days:
        _sub(special, "Date", day.isoformat())
    _sub(el, "SwitchTime", entry.switch_time.isoformat())
    _sub(el, "StartDate", entry.start_date.isoformat())
    _sub(el, "EndDate", entry.end_date.isoformat())


def canonical(element: etree._Element) -> bytes:
    """The bytes a signature covers: exclusive C14N 1.0 without comments."""
    return etree.tostring(element, method="c14n", exclusive=True, with_comments=False)


def encode_request(request: ServiceRequest) -> bytes:
    """The canonical bytes of the request, what is signed."""
    return canonical(_request_element(request))


# -- parsing -------------------------------------------------------------------------------------

T = TypeVar("T")


def _malformed(message: str) -> DuisError:
    return DuisError(ResponseCode.MALFORMED, message)


def _children(el: etree._Element, *names: str, optional: frozenset[str] = frozenset()
              ) -> dict[str, etree._Element]:
    """The element's children, which must be exactly `names` in order (optional ones may be
    missing) and carry no attributes of ours."""
    found = list(el)
    tags = [c.tag for c in found]
    expected = [_q(n) for n in names if _q(n) in tags or n not in optional]
    if tags != expected:
        local = [etree.QName(t).localname if isinstance(t, str) else "?" for t in tags]
        raise _malformed(f"{etree.QName(el).localname} has {local}, expected {list(names)}")
    return {etree.QName(c).localname: c for c in found}


def _tag(el: etree._Element) -> str:
    return etree.QName(el).text


def _value(el: etree._Element, kind: str, convert: Callable[[str], T]) -> T:
    text = (el.text or "").strip()
    try:
        return convert(text)
    except (ValueError, KeyError, OverflowError):
        raise DuisError(ResponseCode.INVALID,
                        f"{etree.QName(el).localname} {text!r} is not {kind}") from None


def _int(el: etree._Element) -> int:
    def convert(text: str) -> int:
        if not re.fullmatch(r"-?[0-9]{1,20}", text):
            raise ValueError(text)
        return int(text)
    return _value(el, "an integer", convert)


def _datetime(el: etree._Element) -> datetime:
    def convert(text: str) -> datetime:
        # DUIS date-times carry a zone: a naive one is refused, not guessed.
        if "T" not in text:
            raise ValueError(text)
        value = datetime.fromisoformat(text)
        if value.tzinfo is None:
            raise ValueError(text)
        return value.astimezone(UTC)
    return _value(el, "a date-time with a zone", convert)


def _bool(el: etree._Element) -> bool:
    def convert(text: str) -> bool:
        if text not in ("true", "false"):
            raise ValueError(text)
        return text == "true"
    return _value(el, "true or false", convert)


def _weekdays(el: etree._Element) -> frozenset[Weekday]:
    return _value(el, "weekday names (MON..SUN)",
                  lambda text: frozenset(Weekday[d] for d in text.split()))


_BODIES: Final[dict[str, type[Body]]] = {
    cls.service.value: cls
    for cls in (SetAuxControllerState, LimitApcLevel, AuxControllerCalendar,
                SetRandomisedOffsetLimit)
}


def _parse_request(root: etree._Element) -> ServiceRequest:
    if root.tag != _q("Request"):
        raise _malformed(f"expected Request in {NS}, found {_tag(root)}")
    parts = _children(root, "Header", "Body")
    header = _children(parts["Header"], "RequestID", "CommandVariant", "ServiceReference",
                       "ServiceReferenceVariant", "ExecutionDateTime",
                       optional=frozenset({"ExecutionDateTime"}))
    variant_text = (header["ServiceReferenceVariant"].text or "").strip()
    cls = _BODIES.get(variant_text)
    if cls is None:
        raise DuisError(ResponseCode.NOT_SUPPORTED, f"service {variant_text!r} not supported")
    if (header["ServiceReference"].text or "").strip() != cls.service.reference:
        raise DuisError(ResponseCode.INVALID, f"ServiceReference does not match {variant_text}")
    variant = _value(header["CommandVariant"], "a CommandVariant (1, 4, 5)",
                     lambda text: CommandVariant(int(text)))
    body_el = _children(parts["Body"], cls.element)[cls.element]
    execution = header.get("ExecutionDateTime")
    return ServiceRequest(
        request_id=RequestId.parse((header["RequestID"].text or "").strip()),
        body=_parse_body(cls, body_el),
        execution=None if execution is None else _datetime(execution),
        variant=variant)


def _parse_body(cls: type[Body], el: etree._Element) -> Body:
    if cls is SetRandomisedOffsetLimit:
        return SetRandomisedOffsetLimit(
            seconds=_int(_children(el, "RandomisedOffsetLimit")["RandomisedOffsetLimit"]))
    if cls is AuxControllerCalendar:
        entries = list(el)
        if any(e.tag != _q("CalendarEntry") for e in entries):
            raise _malformed("AuxControllerCalendar holds only CalendarEntry elements")
        return AuxControllerCalendar(entries=tuple(_parse_entry(e) for e in entries))
    assert issubclass(cls, ControllerLevel)
    f = _children(el, "AuxControllerNumber", "StartDateTime", "EndDateTime",
                  "CommandedStateLevel", "InputFromControlledLoad",
                  optional=frozenset({"InputFromControlledLoad"}))
    flag = f.get("InputFromControlledLoad")
    return cls(controller=_int(f["AuxControllerNumber"]), start=_datetime(f["StartDateTime"]),
               end=_datetime(f["EndDateTime"]), level=_int(f["CommandedStateLevel"]),
               input_from_controlled_load=None if flag is None else _bool(flag))


def _parse_entry(el: etree._Element) -> CalendarEntry:
    f = _children(el, "AuxControllerNumber", "CommandedStateLevel", "DaysOfWeek", "SpecialDays",
                  "SwitchTime", "StartDate", "EndDate")
    special = list(f["SpecialDays"])
    if any(d.tag != _q("Date") for d in special):
        raise _malformed("SpecialDays holds only Date elements")
    return CalendarEntry(
        controller=_int(f["AuxControllerNumber"]), level=_int(f["CommandedStateLevel"]),
        days=_weekdays(f["DaysOfWeek"]),
        special_days=tuple(_value(d, "a date", date.fromisoformat) for d in special),
        switch_time=_value(f["SwitchTime"], "a time", time.fromisoformat),
        start_date=_value(f["StartDate"], "a date", date.fromisoformat),
        end_date=_value(f["EndDate"], "a date", date.fromisoformat))


def _parse_root(data: bytes) -> etree._Element:
    """Untrusted bytes to an element: size limit, no DTD, no entities, no network."""
    try:
        return parse_xml(data, max_bytes=MAX_FRAME_BYTES)
    except AdrError as exc:
        raise _malformed(str(exc)) from None


def decode_request(data: bytes) -> ServiceRequest:
    """An unsigned Request element (as `encode_request` writes it)."""
    return _parse_request(_parse_root(data))


# -- signing -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class SignedRequest:
    request: ServiceRequest
    signed_bytes: bytes  # the canonical Request element the signature covers
    signature: bytes  # DER ECDSA-SHA256


def _p256(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> None:
    if not isinstance(key.curve, ec.SECP256R1):
        raise TypeError(f"DUIS signs with P-256, not {key.curve.name}")


def sign_request(request: ServiceRequest, key: ec.EllipticCurvePrivateKey) -> SignedRequest:
    _p256(key)
    data = encode_request(request)
    return SignedRequest(request=request, signed_bytes=data,
                         signature=key.sign(data, ec.ECDSA(hashes.SHA256())))


def verify(signed: SignedRequest, key: ec.EllipticCurvePublicKey) -> bool:
    _p256(key)
    try:
        key.verify(signed.signature, signed.signed_bytes, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def encode_signed(signed: SignedRequest) -> bytes:
    root = etree.Element(_q("SignedRequest"), nsmap={None: NS})
    root.append(etree.fromstring(signed.signed_bytes))
    _sub(root, "Signature", base64.b64encode(signed.signature).decode())
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def frame(request: ServiceRequest, key: ec.EllipticCurvePrivateKey) -> bytes:
    """The request signed and serialised, ready to send."""
    return encode_signed(sign_request(request, key))


def decode_signed(data: bytes) -> SignedRequest:
    """Parse a SignedRequest envelope. The signature is not checked here (`verify` does it
    with the sender's key), but it is bound to exactly the Request element parsed."""
    root = _parse_root(data)
    if root.tag != _q("SignedRequest"):
        raise _malformed(f"expected SignedRequest in {NS}, found {_tag(root)}")
    parts = _children(root, "Request", "Signature")
    try:
        signature = base64.b64decode((parts["Signature"].text or "").strip(), validate=True)
    except ValueError:  # binascii.Error, or characters outside ASCII
        raise DuisError(ResponseCode.BAD_SIGNATURE, "Signature is not base64") from None
    return SignedRequest(request=_parse_request(parts["Request"]),
                         signed_bytes=canonical(parts["Request"]), signature=signature)


def sign_pre_command(request: ServiceRequest, pre_command: ServiceRequest,
                     key: ec.EllipticCurvePrivateKey) -> SignedRequest:
    """CommandVariant 5: the DCC's pre-command, signed once the user has checked that it is
    exactly what it requested (the point of the critical flow: the DCC cannot alter it)."""
    if pre_command.variant is not CommandVariant.PRE_COMMAND:
        raise DuisError(ResponseCode.INVALID, f"CommandVariant {pre_command.variant}, expected 4")
    if dataclasses.replace(pre_command, variant=request.variant) != request:
        raise DuisError(ResponseCode.INVALID, "pre-command differs from the request")
    return sign_request(
        dataclasses.replace(pre_command, variant=CommandVariant.SIGNED_PRE_COMMAND), key)


# -- responses on the wire -----------------------------------------------------------------------

def encode_response(response: Response) -> bytes:
    root = etree.Element(_q("Response"), nsmap={None: NS})
    _sub(root, "RequestID", response.request_id)
    _sub(root, "ResponseCode", response.code.value)
    _sub(root, "Detail", response.detail)
    if response.pre_command is not None:
        etree.SubElement(root, _q("PreCommand")).append(_request_element(response.pre_command))
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def decode_response(data: bytes) -> Response:
    root = _parse_root(data)
    if root.tag != _q("Response"):
        raise _malformed(f"expected Response in {NS}, found {_tag(root)}")
    f = _children(root, "RequestID", "ResponseCode", "Detail", "PreCommand",
                  optional=frozenset({"PreCommand"}))
    code = _value(f["ResponseCode"], "a response code", ResponseCode)
    pre = f.get("PreCommand")
    return Response(
        request_id=(f["RequestID"].text or "").strip(), code=code,
        detail=f["Detail"].text or "",
        pre_command=None if pre is None else _parse_request(_children(pre, "Request")["Request"]))
