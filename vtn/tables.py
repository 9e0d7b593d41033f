"""SQLModel tables of the VTN store and their conversion to and from typed records.

Only `vtn.store` uses these; rows never travel further.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import Any, TypeVar

from sqlalchemy import JSON, Column, Row
from sqlalchemy import DateTime as SaDateTime
from sqlmodel import Field, SQLModel

from oadr.isotime import format_duration, parse_duration
from oadr.messages import (
    EventStatus, ItemBase, LoadControlState, OptType, ReportDescription, ResourceStatus,
)

from .eventjson import event_from_json, targets_from_json
from .records import (
    Delivery, EventRecord, OptRecord, OutboxItem, OutboxKind, ReportRequestRecord, ReportValue,
    VenRecord, VenStatus,
)




def _ts() -> Any:
    return Field(default=None, sa_column=Column(SaDateTime(timezone=True), nullable=True))


def _json(default: Any = None) -> Any:
    return Field(default=default, sa_column=Column(JSON, nullable=True))


_Dt = TypeVar("_Dt", datetime, datetime | None)


def as_utc(dt: _Dt) -> _Dt:
    # SQLite returns naive datetimes; everything stored is UTC
    if dt is None or dt.tzinfo is not None:
        return dt
    return dt.replace(tzinfo=timezone.utc)


class VenRow(SQLModel, table=True):
    __tablename__ = "ven"
    ven_id: str = Field(primary_key=True)
    ven_name: str = Field(index=True, unique=True)
    status: str
    registration_id: str | None = Field(default=None, index=True)
    fingerprint: str | None = None
    http_pull_model: bool = True
    transport_address: str | None = None
    xml_signature: bool = False
    report_only: bool = False
    profile_name: str = "2.0b"
    party_id: str | None = None
    programs: list[str] | None = _json()
    groups: list[str] | None = _json()
    resources: list[str] | None = _json()
    created: datetime | None = _ts()
    registered_at: datetime | None = _ts()


class VenPollRow(SQLModel, table=True):
    """When each VEN last polled: its own table, so a database made before it gains it."""

    __tablename__ = "last_poll"  # not "ven_...": that prefix is the VEN fleet's tables
    ven_id: str = Field(primary_key=True)
    last_poll: datetime | None = _ts()


class ProgramRow(SQLModel, table=True):
    __tablename__ = "program"
    market_context: str = Field(primary_key=True)
    name: str
    description: str = ""


class EventRow(SQLModel, table=True):
    __tablename__ = "event"
    event_id: str = Field(primary_key=True)
    modification_number: int
    cancelled: bool = False
    created: datetime | None = _ts()
    modified: datetime | None = _ts()
    modification_reason: str | None = None
    body: dict[str, Any] | None = _json()


class DeliveryRow(SQLModel, table=True):
    __tablename__ = "delivery"
    ven_id: str = Field(primary_key=True)
    event_id: str = Field(primary_key=True, index=True)
    delivered_mod: int = -1
    delivered_at: datetime | None = _ts()
    acked_mod: int = -1
    opt_type: str | None = None
    response_code: int | None = None
    responded_at: datetime | None = _ts()
    removed: bool = False
    finished: bool = False  # completed, or cancelled and acknowledged: kept as history
    # a distribute is owed to this VEN (new modification not yet delivered or acknowledged)
    due: bool = Field(default=True, index=True)


class OutboxRow(SQLModel, table=True):
    __tablename__ = "outbox"
    id: int | None = Field(default=None, primary_key=True)
    ven_id: str = Field(index=True)
    kind: str
    ref: str
    created: datetime | None = _ts()
    sent_at: datetime | None = _ts()
    acked_at: datetime | None = _ts()


class PushStateRow(SQLModel, table=True):
    """How pushing to one push VEN goes; no row means it never failed."""

    __tablename__ = "push_state"
    ven_id: str = Field(primary_key=True)
    failures: int = 0  # consecutive failed pushes
    unreachable: bool = False
    next_attempt: datetime | None = _ts()  # backing off until then
    last_error: str | None = None


class ReportMetaRow(SQLModel, table=True):
    __tablename__ = "report_metadata"
    ven_id: str = Field(primary_key=True)
    report_specifier_id: str = Field(primary_key=True)
    report_name: str
    descriptions: list[dict[str, Any]] | None = _json()


class ReportRequestRow(SQLModel, table=True):
    __tablename__ = "report_request"
    report_request_id: str = Field(primary_key=True)
    ven_id: str = Field(index=True)
    report_specifier_id: str
    report_name: str
    granularity_s: int
    report_back_s: int
    r_ids: list[str] | None = _json()
    status: str = "requested"
    via: str = "registered"
    created: datetime | None = _ts()


class ReportValueRow(SQLModel, table=True):
    __tablename__ = "report_value"
    id: int | None = Field(default=None, primary_key=True)
    ven_id: str = Field(index=True)
    report_request_id: str
    report_specifier_id: str
    report_name: str
    r_id: str
    resource_id: str | None = None
    dtstart: datetime | None = _ts()
    duration_s: float | None = None
    value: float | None = None
    online: bool | None = None
    manual_override: bool | None = None
    load_control: dict[str, Any] | None = _json()


class OptRow(SQLModel, table=True):
    __tablename__ = "opt"
    ven_id: str = Field(primary_key=True)
    opt_id: str = Field(primary_key=True)
    opt_type: str
    opt_reason: str
    created: datetime | None = _ts()
    market_context: str | None = None
    event_id: str | None = None
    modification_number: int | None = None
    availability: list[list[Any]] | None = _json()
    targets: dict[str, Any] | None = _json()
    cancelled_at: datetime | None = _ts()


# --- row <-> record ---------------------------------------------------------------------

def ven_record(row: VenRow | Row[Any]) -> VenRecord:
    # also reads Core rows of the ven table (the poll hot path)
    return VenRecord(
        ven_id=row.ven_id, ven_name=row.ven_name, status=VenStatus(row.status),
        registration_id=row.registration_id, fingerprint=row.fingerprint,
        http_pull_model=row.http_pull_model, transport_address=row.transport_address,
        xml_signature=row.xml_signature, report_only=row.report_only,
        profile_name=row.profile_name, party_id=row.party_id,
        programs=tuple(row.programs or ()), groups=tuple(row.groups or ()),
        resources=tuple(row.resources or ()), created=as_utc(row.created),
        registered_at=as_utc(row.registered_at),
    )


def event_record(row: EventRow) -> EventRecord:
    ev = event_from_json(
        row.body or {}, event_id=row.event_id, created=as_utc(row.created) or datetime.now(timezone.utc),
        modification_number=row.modification_number,
        status=EventStatus.CANCELLED if row.cancelled else EventStatus.FAR,
        modification_reason=row.modification_reason, modified=as_utc(row.modified),
    )
    return EventRecord(event=ev, cancelled=row.cancelled)


def delivery_record(row: DeliveryRow) -> Delivery:
    return Delivery(
        ven_id=row.ven_id, event_id=row.event_id, delivered_mod=row.delivered_mod,
        delivered_at=as_utc(row.delivered_at), acked_mod=row.acked_mod,
        opt_type=OptType(row.opt_type) if row.opt_type else None,
        response_code=row.response_code, responded_at=as_utc(row.responded_at),
        removed=row.removed,
    )


def outbox_item(row: OutboxRow) -> OutboxItem:
    assert row.id is not None
    return OutboxItem(id=row.id, ven_id=row.ven_id, kind=OutboxKind(row.kind), ref=row.ref,
                      created=as_utc(row.created) or datetime.min.replace(tzinfo=timezone.utc),
                      sent_at=as_utc(row.sent_at), acked_at=as_utc(row.acked_at))


def request_record(row: ReportRequestRow) -> ReportRequestRecord:
    return ReportRequestRecord(
        report_request_id=row.report_request_id, ven_id=row.ven_id,
        report_specifier_id=row.report_specifier_id, report_name=row.report_name,
        granularity_s=row.granularity_s, report_back_s=row.report_back_s,
        r_ids=tuple(row.r_ids or ()), status=row.status, via=row.via, created=as_utc(row.created),
    )


def description_to_json(d: ReportDescription) -> dict[str, Any]:
    out = dataclasses.asdict(d)
    for key in ("min_period", "max_period"):
        out[key] = None if out[key] is None else format_duration(out[key])
    return out


def description_from_json(d: dict[str, Any]) -> ReportDescription:
    item = d.get("item_base")
    return ReportDescription(
        r_id=d["r_id"], report_type=d["report_type"], reading_type=d["reading_type"],
        resource_id=d.get("resource_id"), market_context=d.get("market_context"),
        item_base=ItemBase(**item) if item else None,
        min_period=parse_duration(d["min_period"]) if d.get("min_period") else None,
        max_period=parse_duration(d["max_period"]) if d.get("max_period") else None,
        on_change=bool(d.get("on_change")),
    )


def value_record(row: ReportValueRow) -> ReportValue:
    status = None
    if row.online is not None:
        lc = row.load_control
        status = ResourceStatus(online=row.online, manual_override=bool(row.manual_override),
                                load_control=LoadControlState(**lc) if lc else None)
    return ReportValue(
        ven_id=row.ven_id, report_request_id=row.report_request_id,
        report_specifier_id=row.report_specifier_id, r_id=row.r_id,
        report_name=row.report_name, dtstart=as_utc(row.dtstart) or datetime.min,
        duration_s=row.duration_s, resource_id=row.resource_id, value=row.value, status=status,
    )


def opt_record(row: OptRow) -> OptRecord:
    return OptRecord(
        opt_id=row.opt_id, ven_id=row.ven_id, opt_type=OptType(row.opt_type),
        opt_reason=row.opt_reason, created=as_utc(row.created) or datetime.min,
        market_context=row.market_context, event_id=row.event_id,
        modification_number=row.modification_number,
        availability=tuple((as_utc(datetime.fromisoformat(a)), float(s))
                           for a, s in (row.availability or ())),
        targets=targets_from_json(row.targets or {}), cancelled_at=as_utc(row.cancelled_at),
    )
