"""Typed records the VTN store takes and returns (no ORM rows leave the store)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from oadr.messages import Event, OptType, ReportDescription, ResourceStatus, Target


class VenStatus(StrEnum):
    PROVISIONED = "provisioned"  # known to the VTN (allowlist / pre-allocated venID), not registered
    PENDING = "pending"  # asked to register under the approval policy; waits for an operator
    REGISTERED = "registered"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True, kw_only=True)
class VenRecord:
    ven_id: str
    ven_name: str
    status: VenStatus
    registration_id: str | None = None
    fingerprint: str | None = None
    http_pull_model: bool = True
    transport_address: str | None = None
    xml_signature: bool = False
    report_only: bool = False
    profile_name: str = "2.0b"
    party_id: str | None = None
    programs: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    created: datetime | None = None
    registered_at: datetime | None = None

    @property
    def is_registered(self) -> bool:
        return self.status is VenStatus.REGISTERED and self.registration_id is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """One event's delivery and response state for one VEN."""

    ven_id: str
    event_id: str
    delivered_mod: int = -1  # modificationNumber last sent to this VEN
    delivered_at: datetime | None = None
    acked_mod: int = -1  # modificationNumber this VEN last answered with oadrCreatedEvent
    opt_type: OptType | None = None
    response_code: int | None = None
    responded_at: datetime | None = None
    removed: bool = False  # no longer targeted: one more distribute without it (implicit cancel)


class OutboxKind(StrEnum):
    """Messages the VTN queues for a VEN's next poll, rebuilt from state when sent."""

    CREATE_REPORT = "oadrCreateReport"
    CANCEL_REPORT = "oadrCancelReport"
    REREGISTER = "oadrRequestReregistration"
    CANCEL_REGISTRATION = "oadrCancelPartyRegistration"


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxItem:
    id: int
    ven_id: str
    kind: OutboxKind
    ref: str  # reportRequestID(s, comma-separated) or registrationID
    created: datetime
    sent_at: datetime | None = None
    acked_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportRequestRecord:
    report_request_id: str
    ven_id: str
    report_specifier_id: str
    report_name: str
    granularity_s: int
    report_back_s: int
    r_ids: tuple[str, ...]
    status: str = "requested"  # requested | active | cancelling | cancelled
    via: str = "registered"  # registered (oadrRegisteredReport) | create (oadrCreateReport)
    created: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MetadataReport:
    ven_id: str
    report_specifier_id: str
    report_name: str
    descriptions: tuple[ReportDescription, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportValue:
    ven_id: str
    report_request_id: str
    report_specifier_id: str
    r_id: str
    report_name: str
    dtstart: datetime
    duration_s: float | None = None
    resource_id: str | None = None
    value: float | None = None
    status: ResourceStatus | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OptRecord:
    opt_id: str
    ven_id: str
    opt_type: OptType
    opt_reason: str
    created: datetime
    market_context: str | None = None
    event_id: str | None = None
    modification_number: int | None = None
    availability: tuple[tuple[datetime, float], ...] = ()  # (dtstart, duration seconds)
    targets: Target = field(default_factory=Target)
    cancelled_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EventRecord:
    event: Event
    cancelled: bool = False


class RegistrationPolicy(StrEnum):
    OPEN = "open"
    ALLOWLIST = "allowlist"
    APPROVAL = "approval"


class ReportVia(StrEnum):
    REGISTERED = "registered"  # report requests inside oadrRegisteredReport
    CREATE = "create"  # oadrCreateReport queued for the VEN's next poll
