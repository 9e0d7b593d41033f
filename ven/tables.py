"""SQLModel tables of the VEN fleet store and their conversion to and from `ven.records`.

Only `ven.store` uses these; rows never leave it. OpenADR objects are stored as the codec writes
them (an Event inside an oadrDistributeEvent, a ReportRequest inside an oadrCreateReport, a
CreateOpt as itself): one serializer to trust, no second mapping to keep in step with the
messages. The plain columns beside the XML are what `status` shows without parsing it.

The tables have their own `MetaData` and a ``ven_`` prefix, so the fleet and a VTN may share one
database without either creating or dropping the other's tables.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeVar

from sqlalchemy import JSON, Column, DateTime, Dialect, MetaData, Table, Text, TypeDecorator
from sqlmodel import Field, SQLModel

from oadr.codec import parse, serialize
from oadr.messages import CreateOpt, CreateReport, DistributeEvent, Event, OptType, ReportRequest

from .records import OptState, Registration, RegState, RequestState, Sample, VenEvent

FLEET_METADATA = MetaData()
_STORED = "stored"  # requestID/vtnID of the envelopes: only their one child matters


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC in and out: SQLite keeps no zone and PostgreSQL answers in the session's zone.

    Binding normalises to UTC (also in comparisons), so SQLite's text timestamps sort by time.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()}: the store keeps aware UTC")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def ts_field(*, nullable: bool = True, primary_key: bool = False, index: bool = False) -> Any:
    return Field(default=None, sa_column=Column(UtcDateTime(), primary_key=primary_key,
                                                index=index, nullable=nullable))


class FleetTable(SQLModel):
    """Base of the fleet's tables: keeps them in `FLEET_METADATA`, apart from the VTN's."""

    metadata: ClassVar[MetaData] = FLEET_METADATA
    __table__: ClassVar[Table]


class RegistrationRow(FleetTable, table=True):
    __tablename__ = "ven_registration"
    ven_name: str = Field(primary_key=True)
    state: str
    vtn_id: str | None = None
    ven_id: str | None = None
    registration_id: str | None = None
    poll_freq_s: float | None = None
    resync: bool = False


class EventRow(FleetTable, table=True):
    __tablename__ = "ven_event"
    ven_name: str = Field(primary_key=True)
    event_id: str = Field(primary_key=True)
    modification_number: int
    xml: str = Field(sa_column=Column(Text, nullable=False))
    received: datetime = ts_field(nullable=False)
    request_id: str
    opt: str
    opt_reason: str
    response_code: int
    answered_mod: int
    start_offsets: list[tuple[str, float]] = Field(sa_column=Column(JSON, nullable=False))


class OptRow(FleetTable, table=True):
    __tablename__ = "ven_opt"
    ven_name: str = Field(primary_key=True)
    opt_id: str = Field(primary_key=True)
    xml: str = Field(sa_column=Column(Text, nullable=False))
    opt_type: str
    opt_reason: str
    acked: bool
    cancelled: bool
    cancel_acked: bool


class RequestRow(FleetTable, table=True):
    __tablename__ = "ven_request"
    ven_name: str = Field(primary_key=True)
    report_request_id: str = Field(primary_key=True)
    xml: str = Field(sa_column=Column(Text, nullable=False))
    report_name: str
    granularity_s: float
    created: datetime = ts_field(nullable=False)
    next_sample: datetime | None = ts_field()
    next_report: datetime | None = ts_field()
    one_shot: bool
    sent: int


class SampleRow(FleetTable, table=True):
    # the key (ven_name, r_id, at) serves range reads; the index on `at` serves pruning
    __tablename__ = "ven_sample"
    ven_name: str = Field(primary_key=True)
    r_id: str = Field(primary_key=True)
    at: datetime = ts_field(nullable=False, primary_key=True, index=True)
    value: float | None = None
    online: bool | None = None
    manual_override: bool | None = None


class HeartbeatRow(FleetTable, table=True):
    __tablename__ = "ven_heartbeat"
    ven_name: str = Field(primary_key=True)
    last_poll: datetime | None = ts_field()
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


# --- XML of OpenADR objects ---------------------------------------------------------------

_M = TypeVar("_M")


def _stored(xml: str, cls: type[_M]) -> _M:
    msg = parse(xml.encode()).message
    if not isinstance(msg, cls):
        raise TypeError(f"stored {type(msg).__name__} where a {cls.__name__} belongs")
    return msg


def _xml(msg: DistributeEvent | CreateOpt | CreateReport) -> str:
    return serialize(msg).decode()


def _seconds(d: timedelta | None) -> float | None:
    return None if d is None else d.total_seconds()


# --- record <-> row -----------------------------------------------------------------------

def registration_row(ven_name: str, reg: Registration) -> RegistrationRow:
    return RegistrationRow(ven_name=ven_name, state=str(reg.state), vtn_id=reg.vtn_id,
                           ven_id=reg.ven_id, registration_id=reg.registration_id,
                           poll_freq_s=_seconds(reg.poll_freq), resync=reg.resync)


def registration_record(row: RegistrationRow) -> Registration:
    return Registration(
        state=RegState(row.state), vtn_id=row.vtn_id, ven_id=row.ven_id,
        registration_id=row.registration_id,
        poll_freq=None if row.poll_freq_s is None else timedelta(seconds=row.poll_freq_s),
        resync=row.resync)


def event_row(ven_name: str, ve: VenEvent) -> EventRow:
    ev = ve.event
    return EventRow(
        ven_name=ven_name, event_id=ev.event_id, modification_number=ev.modification_number,
        xml=_xml(DistributeEvent(request_id=_STORED, vtn_id=_STORED, events=(ev,))),
        received=ve.received, request_id=ve.request_id, opt=str(ve.opt),
        opt_reason=ve.opt_reason, response_code=ve.response_code, answered_mod=ve.answered_mod,
        start_offsets=[(r, d.total_seconds()) for r, d in ve.start_offsets])


def event_record(row: EventRow) -> VenEvent:
    ev: Event = _stored(row.xml, DistributeEvent).events[0]
    return VenEvent(
        event=ev, received=row.received, request_id=row.request_id, opt=OptType(row.opt),
        opt_reason=row.opt_reason, response_code=row.response_code, answered_mod=row.answered_mod,
        start_offsets=tuple((r, timedelta(seconds=s)) for r, s in row.start_offsets))


def opt_row(ven_name: str, opt: OptState) -> OptRow:
    o = opt.opt
    return OptRow(ven_name=ven_name, opt_id=o.opt_id, xml=_xml(o), opt_type=str(o.opt_type),
                  opt_reason=str(o.opt_reason), acked=opt.acked, cancelled=opt.cancelled,
                  cancel_acked=opt.cancel_acked)


def opt_record(row: OptRow) -> OptState:
    return OptState(opt=_stored(row.xml, CreateOpt), acked=row.acked, cancelled=row.cancelled,
                    cancel_acked=row.cancel_acked)


def request_row(ven_name: str, rs: RequestState) -> RequestRow:
    req = rs.request
    return RequestRow(
        ven_name=ven_name, report_request_id=req.report_request_id,
        xml=_xml(CreateReport(request_id=_STORED, report_requests=(req,))),
        report_name=rs.report_name, granularity_s=req.granularity.total_seconds(),
        created=rs.created, next_sample=rs.next_sample, next_report=rs.next_report,
        one_shot=rs.one_shot, sent=rs.sent)


def request_record(row: RequestRow) -> RequestState:
    req: ReportRequest = _stored(row.xml, CreateReport).report_requests[0]
    return RequestState(request=req, report_name=row.report_name, created=row.created,
                        next_sample=row.next_sample, next_report=row.next_report,
                        one_shot=row.one_shot, sent=row.sent)


def sample_row(ven_name: str, s: Sample) -> SampleRow:
    return SampleRow(ven_name=ven_name, r_id=s.r_id, at=s.at, value=s.value, online=s.online,
                     manual_override=s.manual_override)


def sample_record(row: SampleRow) -> Sample:
    return Sample(r_id=row.r_id, at=row.at, value=row.value, online=row.online,
                  manual_override=row.manual_override)
