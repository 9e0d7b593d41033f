"""Typed OpenADR 2.0b messages.

Rules of this file:
- One frozen dataclass per oadr payload, named without the `oadr` prefix (`DistributeEvent`).
- Tuples, not lists; aware UTC datetimes; `timedelta` durations; `StrEnum`s spelled as in the spec.
- `__post_init__` checks the invariants the 2.0b profile states for the payload and raises
  `InvalidData` (454), so a message that exists is a message we may act on or emit.
- No XML here: `codec` maps these to and from the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from .errors import InvalidData

_frozen = dict(frozen=True, slots=True, kw_only=True)


class EventStatus(StrEnum):
    NONE = "none"
    FAR = "far"
    NEAR = "near"
    ACTIVE = "active"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class ResponseRequired(StrEnum):
    ALWAYS = "always"
    NEVER = "never"


class OptType(StrEnum):
    OPT_IN = "optIn"
    OPT_OUT = "optOut"


class OptReason(StrEnum):
    ECONOMIC = "economic"
    EMERGENCY = "emergency"
    MUST_RUN = "mustRun"
    NOT_PARTICIPATING = "notParticipating"
    OUTAGE_RUN_STATUS = "outageRunStatus"
    OVERRIDE_STATUS = "overrideStatus"
    PARTICIPATING = "participating"
    X_SCHEDULE = "x-schedule"


def _aware(name: str, value: datetime | None) -> None:
    if value is not None and value.utcoffset() is None:
        raise InvalidData(f"{name} must be timezone-aware")


# --- common -----------------------------------------------------------------------------

@dataclass(**_frozen)
class Response:
    """ei:eiResponse."""

    code: int = 200
    description: str = "OK"
    request_id: str = ""


@dataclass(**_frozen)
class Target:
    """ei:eiTarget: only the target kinds the VTN resolves."""

    ven_ids: tuple[str, ...] = ()
    group_ids: tuple[str, ...] = ()
    resource_ids: tuple[str, ...] = ()
    party_ids: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        return not (self.ven_ids or self.group_ids or self.resource_ids or self.party_ids)


@dataclass(**_frozen)
class ItemBase:
    """An EMIX item base (units): element name, description, units, SI scale."""

    kind: str  # e.g. "powerReal", "energyReal", "currencyPerKWh", "voltage"
    description: str
    units: str
    si_scale: str = "none"
    # powerReal/powerApparent/... carry powerAttributes
    hertz: float | None = None
    voltage: float | None = None
    ac: bool | None = None


# --- events -----------------------------------------------------------------------------

@dataclass(**_frozen)
class Interval:
    """An event signal interval: uid, duration, exactly one payloadFloat.

    2.0b intervals carry no dtstart and follow each other. `dtstart` keeps one a peer sent anyway
    (openleadr's VTN writes one into every interval and lets them leave gaps), so its times are
    not misread; events we create never have one (a certification rule)."""

    uid: int
    duration: timedelta
    payload: float
    dtstart: datetime | None = None

    def __post_init__(self) -> None:
        _aware("interval dtstart", self.dtstart)


@dataclass(**_frozen)
class EventSignal:
    signal_name: str
    signal_type: str
    signal_id: str
    intervals: tuple[Interval, ...]
    current_value: float | None = None
    item_base: ItemBase | None = None
    targets: Target | None = None

    def __post_init__(self) -> None:
        if not self.intervals:
            raise InvalidData(f"signal {self.signal_id}: at least one interval is required")


@dataclass(**_frozen)
class ActivePeriod:
    dtstart: datetime
    duration: timedelta  # 0 = until cancelled
    start_after: timedelta | None = None  # tolerance/tolerate/startafter: randomised start
    notification: timedelta | None = None
    ramp_up: timedelta | None = None
    recovery: timedelta | None = None

    def __post_init__(self) -> None:
        _aware("dtstart", self.dtstart)

    @property
    def end(self) -> datetime | None:
        return None if not self.duration else self.dtstart + self.duration


@dataclass(**_frozen)
class Event:
    event_id: str
    modification_number: int
    market_context: str
    created: datetime
    status: EventStatus
    active_period: ActivePeriod
    signals: tuple[EventSignal, ...]
    targets: Target
    priority: int = 0
    test_event: bool = False
    modification_reason: str | None = None
    modification_date_time: datetime | None = None
    vtn_comment: str | None = None
    response_required: ResponseRequired = ResponseRequired.ALWAYS

    def __post_init__(self) -> None:
        _aware("createdDateTime", self.created)
        if self.modification_number < 0:
            raise InvalidData("modificationNumber must be >= 0")
        if self.priority < 0:
            raise InvalidData("priority must be >= 0")


@dataclass(**_frozen)
class DistributeEvent:
    request_id: str
    vtn_id: str
    events: tuple[Event, ...] = ()
    response: Response | None = None


@dataclass(**_frozen)
class RequestEvent:
    request_id: str
    ven_id: str
    reply_limit: int | None = None


@dataclass(**_frozen)
class EventResponse:
    code: int
    description: str
    request_id: str
    event_id: str
    modification_number: int
    opt_type: OptType


@dataclass(**_frozen)
class CreatedEvent:
    response: Response
    ven_id: str
    event_responses: tuple[EventResponse, ...] = ()


# --- registration -----------------------------------------------------------------------

@dataclass(**_frozen)
class QueryRegistration:
    request_id: str


@dataclass(**_frozen)
class CreatePartyRegistration:
    request_id: str
    ven_name: str | None = None
    ven_id: str | None = None
    registration_id: str | None = None
    profile_name: str = "2.0b"
    transport_name: str = "simpleHttp"
    transport_address: str | None = None
    report_only: bool = False
    xml_signature: bool = False
    http_pull_model: bool = True


@dataclass(**_frozen)
class CreatedPartyRegistration:
    response: Response
    vtn_id: str
    registration_id: str | None = None
    ven_id: str | None = None
    poll_freq: timedelta | None = None
    profiles: tuple[str, ...] = ("2.0b",)


@dataclass(**_frozen)
class CancelPartyRegistration:
    request_id: str
    registration_id: str
    ven_id: str | None = None


@dataclass(**_frozen)
class CanceledPartyRegistration:
    response: Response
    registration_id: str | None = None
    ven_id: str | None = None


@dataclass(**_frozen)
class RequestReregistration:
    ven_id: str


@dataclass(**_frozen)
class ResponseMessage:
    """oadrResponse: the generic acknowledgement (also 'nothing to deliver' on a poll)."""

    response: Response
    ven_id: str | None = None


@dataclass(**_frozen)
class Poll:
    ven_id: str


# --- reports ----------------------------------------------------------------------------

@dataclass(**_frozen)
class ReportDescription:
    """oadrReportDescription in a METADATA report."""

    r_id: str
    report_type: str
    reading_type: str
    resource_id: str | None = None
    market_context: str | None = None
    item_base: ItemBase | None = None
    min_period: timedelta | None = None
    max_period: timedelta | None = None
    on_change: bool = False


@dataclass(**_frozen)
class LoadControlState:
    """oadrLoadControlState: one of the four load control kinds with its values."""

    kind: str  # oadrCapacity | oadrLevelOffset | oadrPercentOffset | oadrSetPoint
    current: float
    min: float | None = None
    max: float | None = None
    normal: float | None = None


@dataclass(**_frozen)
class ResourceStatus:
    online: bool
    manual_override: bool
    load_control: LoadControlState | None = None


@dataclass(**_frozen)
class ReportPoint:
    """One oadrReportPayload: a float value or a resource status."""

    r_id: str
    value: float | None = None
    status: ResourceStatus | None = None
    confidence: int | None = None
    accuracy: float | None = None

    def __post_init__(self) -> None:
        if (self.value is None) == (self.status is None):
            raise InvalidData(f"report payload {self.r_id}: exactly one of value/status")


@dataclass(**_frozen)
class ReportInterval:
    dtstart: datetime
    duration: timedelta | None
    points: tuple[ReportPoint, ...]
    uid: int | None = None


@dataclass(**_frozen)
class Report:
    """oadrReport: METADATA (descriptions, no intervals) or data (intervals)."""

    report_specifier_id: str
    report_name: str
    created: datetime
    report_request_id: str = "0"
    report_id: str | None = None  # eiReportID: only on data reports
    duration: timedelta | None = None
    dtstart: datetime | None = None
    descriptions: tuple[ReportDescription, ...] = ()
    intervals: tuple[ReportInterval, ...] = ()

    @property
    def is_metadata(self) -> bool:
        return self.report_name.startswith("METADATA_")


@dataclass(**_frozen)
class SpecifierPayload:
    r_id: str
    reading_type: str = "x-notApplicable"


@dataclass(**_frozen)
class ReportRequest:
    report_request_id: str
    report_specifier_id: str
    granularity: timedelta
    report_back_duration: timedelta
    specifiers: tuple[SpecifierPayload, ...]
    dtstart: datetime | None = None
    duration: timedelta | None = None  # 0 / None = until cancelled


@dataclass(**_frozen)
class RegisterReport:
    request_id: str
    reports: tuple[Report, ...]
    ven_id: str | None = None
    report_request_id: str | None = None


@dataclass(**_frozen)
class RegisteredReport:
    response: Response
    ven_id: str
    report_requests: tuple[ReportRequest, ...] = ()


@dataclass(**_frozen)
class CreateReport:
    request_id: str
    report_requests: tuple[ReportRequest, ...]
    ven_id: str | None = None


@dataclass(**_frozen)
class CreatedReport:
    response: Response
    ven_id: str
    pending_reports: tuple[str, ...] = ()


@dataclass(**_frozen)
class UpdateReport:
    request_id: str
    reports: tuple[Report, ...]
    ven_id: str | None = None


@dataclass(**_frozen)
class UpdatedReport:
    response: Response
    ven_id: str | None = None
    cancel_report: CancelReport | None = None


@dataclass(**_frozen)
class CancelReport:
    request_id: str
    report_request_ids: tuple[str, ...]
    report_to_follow: bool = False
    ven_id: str | None = None


@dataclass(**_frozen)
class CanceledReport:
    response: Response
    pending_reports: tuple[str, ...] = ()
    ven_id: str | None = None


# --- opt --------------------------------------------------------------------------------

@dataclass(**_frozen)
class Availability:
    """One xcal:available component of a vavailability schedule."""

    dtstart: datetime
    duration: timedelta


@dataclass(**_frozen)
class CreateOpt:
    """oadrCreateOpt: event-scoped (event_id) or an availability schedule (vavailability)."""

    request_id: str
    opt_id: str
    opt_type: OptType
    opt_reason: OptReason | str
    ven_id: str
    created: datetime
    market_context: str | None = None
    event_id: str | None = None
    modification_number: int | None = None
    availability: tuple[Availability, ...] = ()
    targets: Target = field(default_factory=Target)

    def __post_init__(self) -> None:
        if self.event_id is not None and (self.availability or self.market_context):
            raise InvalidData(
                f"opt {self.opt_id}: an event-scoped opt carries no vavailability or marketContext"
            )
        if self.event_id is None and not self.availability:
            raise InvalidData(f"opt {self.opt_id}: needs an eventID or a vavailability schedule")


@dataclass(**_frozen)
class CreatedOpt:
    response: Response
    opt_id: str


@dataclass(**_frozen)
class CancelOpt:
    request_id: str
    opt_id: str
    ven_id: str


@dataclass(**_frozen)
class CanceledOpt:
    response: Response
    opt_id: str


Message = (
    DistributeEvent | RequestEvent | CreatedEvent | QueryRegistration | CreatePartyRegistration
    | CreatedPartyRegistration | CancelPartyRegistration | CanceledPartyRegistration
    | RequestReregistration | ResponseMessage | Poll | RegisterReport | RegisteredReport
    | CreateReport | CreatedReport | UpdateReport | UpdatedReport | CancelReport | CanceledReport
    | CreateOpt | CreatedOpt | CancelOpt | CanceledOpt
)

# Spec tag (local name inside oadrSignedObject) -> class; the one table codec and router use.
MESSAGE_TYPES: dict[str, type] = {
    "oadrDistributeEvent": DistributeEvent,
    "oadrRequestEvent": RequestEvent,
    "oadrCreatedEvent": CreatedEvent,
    "oadrQueryRegistration": QueryRegistration,
    "oadrCreatePartyRegistration": CreatePartyRegistration,
    "oadrCreatedPartyRegistration": CreatedPartyRegistration,
    "oadrCancelPartyRegistration": CancelPartyRegistration,
    "oadrCanceledPartyRegistration": CanceledPartyRegistration,
    "oadrRequestReregistration": RequestReregistration,
    "oadrResponse": ResponseMessage,
    "oadrPoll": Poll,
    "oadrRegisterReport": RegisterReport,
    "oadrRegisteredReport": RegisteredReport,
    "oadrCreateReport": CreateReport,
    "oadrCreatedReport": CreatedReport,
    "oadrUpdateReport": UpdateReport,
    "oadrUpdatedReport": UpdatedReport,
    "oadrCancelReport": CancelReport,
    "oadrCanceledReport": CanceledReport,
    "oadrCreateOpt": CreateOpt,
    "oadrCreatedOpt": CreatedOpt,
    "oadrCancelOpt": CancelOpt,
    "oadrCanceledOpt": CanceledOpt,
}
TAG_OF: dict[type, str] = {cls: tag for tag, cls in MESSAGE_TYPES.items()}

# The service endpoint each message travels on (simpleHttp: /OpenADR2/Simple/2.0b/<service>).
SERVICE_OF: dict[type, str] = {
    **{cls: "EiRegisterParty" for cls in (
        QueryRegistration, CreatePartyRegistration, CreatedPartyRegistration,
        CancelPartyRegistration, CanceledPartyRegistration, RequestReregistration)},
    **{cls: "EiEvent" for cls in (DistributeEvent, RequestEvent, CreatedEvent)},
    **{cls: "EiReport" for cls in (
        RegisterReport, RegisteredReport, CreateReport, CreatedReport, UpdateReport,
        UpdatedReport, CancelReport, CanceledReport)},
    **{cls: "EiOpt" for cls in (CreateOpt, CreatedOpt, CancelOpt, CanceledOpt)},
    Poll: "OadrPoll",
    ResponseMessage: "OadrPoll",
}


def error_response(exc: Exception, *, request_id: str = "", ven_id: str | None = None
                   ) -> ResponseMessage:
    """The one place exceptions become OpenADR response codes: an `AdrError` carries its own
    code; anything else is our fault and answered 469 (the caller logs the traceback)."""
    from .errors import AdrError

    if isinstance(exc, AdrError):
        code, text = exc.code, exc.description or type(exc).__name__
        request_id = exc.request_id or request_id
    else:
        code, text = 469, "internal error"
    return ResponseMessage(response=Response(code=code, description=text, request_id=request_id),
                           ven_id=ven_id)
