"""The VEN fleet's durable state, on SQLite (default) or PostgreSQL; tables live in `ven.tables`.

After a restart each VEN resumes from its snapshot (registration, events and its answers, opts,
report requests) instead of registering again. Every public method is one transaction; typed
records from `ven.records` go in and out, rows never leave this module. Writes are upserts
(insert-on-conflict of the dialect), so one statement per table serves a whole batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy import Engine, delete
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from adrgate.services import upsert_values
from oadr.messages import OptType

from .records import Changes, Registration, RegState, Sample, VenSnapshot
from .tables import (
    FLEET_METADATA, EventRow, FleetTable, HeartbeatRow, OptRow, RegistrationRow, RequestRow,
    SampleRow, event_record, event_row, opt_record, opt_row, registration_record,
    registration_row, request_record, request_row, sample_record, sample_row,
)

_PER_VEN: tuple[type[FleetTable], ...] = (RegistrationRow, EventRow, OptRow, RequestRow,
                                          HeartbeatRow)  # what `forget` deletes: not samples


@dataclass(frozen=True, slots=True, kw_only=True)
class EventLine:
    event_id: str
    modification_number: int
    opt: OptType
    answered: bool  # the VTN acknowledged our answer to this modification


@dataclass(frozen=True, slots=True, kw_only=True)
class OptLine:
    opt_id: str
    opt_type: OptType
    reason: str
    acked: bool
    cancelled: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestLine:
    report_request_id: str
    report_name: str
    granularity: timedelta
    next_report: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class VenStatusRow:
    """One VEN as `adrgate ven status` shows it."""

    name: str
    ven_id: str | None = None
    registration_id: str | None = None
    state: RegState = RegState.UNREGISTERED
    poll_freq: timedelta | None = None
    last_poll: datetime | None = None
    last_error: str | None = None
    events: tuple[EventLine, ...] = ()
    opts: tuple[OptLine, ...] = ()
    requests: tuple[RequestLine, ...] = ()


_Row = TypeVar("_Row", bound=FleetTable)


def _upsert(s: Session, rows: Sequence[FleetTable]) -> None:
    """Insert rows of one table, replacing those whose key exists."""
    if not rows:
        return
    table = type(rows[0]).__table__
    names = [c.name for c in table.columns]
    # in order: the last of a key wins
    upsert_values(s, table, [{n: getattr(r, n) for n in names} for r in rows])


def _of(model: type[_Row], ven_name: str | None) -> SelectOfScalar[_Row]:
    """SELECT of the model's rows, of one VEN or all, in key order."""
    table = model.__table__
    q = select(model).order_by(*table.primary_key.columns)
    return q if ven_name is None else q.where(table.c.ven_name == ven_name)


class FleetStore:
    """All VEN fleet state. Methods are synchronous, short, and each runs in one transaction."""

    def __init__(self, engine: Engine) -> None:
        """Open the store, creating the tables that are missing (an existing database, maybe in
        use by another process, is left as it is)."""
        self.engine = engine
        FLEET_METADATA.create_all(engine, checkfirst=True)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    # --- snapshots ----------------------------------------------------------------------

    def load_all(self) -> dict[str, VenSnapshot]:
        """Every VEN's snapshot, by venName.

        Raises:
            oadr.errors.AdrError: a stored OpenADR object no longer parses (a corrupt row).
        """
        with self._tx() as s:
            return self._load(s, None)

    def load(self, ven_name: str) -> VenSnapshot:
        """One VEN's snapshot; an empty one (unregistered) if nothing is stored.

        Raises:
            oadr.errors.AdrError: a stored OpenADR object no longer parses (a corrupt row).
        """
        with self._tx() as s:
            return self._load(s, ven_name).get(ven_name) or VenSnapshot()

    @staticmethod
    def _load(s: Session, ven_name: str | None) -> dict[str, VenSnapshot]:
        snaps: dict[str, VenSnapshot] = {}

        def snap(name: str) -> VenSnapshot:
            return snaps.setdefault(name, VenSnapshot())

        for reg in s.exec(_of(RegistrationRow, ven_name)):
            snap(reg.ven_name).registration = registration_record(reg)
        for ev in s.exec(_of(EventRow, ven_name)):
            snap(ev.ven_name).events[ev.event_id] = event_record(ev)
        for opt in s.exec(_of(OptRow, ven_name)):
            snap(opt.ven_name).opts[opt.opt_id] = opt_record(opt)
        for req in s.exec(_of(RequestRow, ven_name)):
            snap(req.ven_name).requests[req.report_request_id] = request_record(req)
        return snaps

    def save(self, ven_name: str, changes: Changes) -> None:
        """Apply one VEN's changes in one transaction: all are written, or none.

        Raises:
            oadr.errors.LocalAdrError: an OpenADR object cannot be serialized (nothing written).
            sqlalchemy.exc.SQLAlchemyError: the database refused a write (nothing written).
        """
        if changes.empty():
            return
        # serialize before the transaction: it stays short, and a bad object writes nothing
        upserts: list[list[FleetTable]] = [
            [registration_row(ven_name, changes.registration)] if changes.registration else [],
            [event_row(ven_name, e) for e in changes.events.values()],
            [opt_row(ven_name, o) for o in changes.opts.values()],
            [request_row(ven_name, r) for r in changes.requests.values()],
            [sample_row(ven_name, x) for x in changes.samples],
        ]
        with self._tx() as s:
            if changes.dropped_events:
                s.exec(delete(EventRow).where(col(EventRow.ven_name) == ven_name,
                                              col(EventRow.event_id).in_(changes.dropped_events)))
            if changes.dropped_requests:
                s.exec(delete(RequestRow).where(
                    col(RequestRow.ven_name) == ven_name,
                    col(RequestRow.report_request_id).in_(changes.dropped_requests)))
            for rows in upserts:
                _upsert(s, rows)

    def forget(self, ven_name: str) -> None:
        """Delete everything of a VEN whose registration was cancelled, except its samples
        (history that reports may still be asked for)."""
        with self._tx() as s:
            for model in _PER_VEN:
                s.exec(delete(model.__table__).where(model.__table__.c.ven_name == ven_name))

    # --- samples ------------------------------------------------------------------------

    def samples(self, ven_name: str, r_ids: Sequence[str], start: datetime,
                end: datetime) -> list[Sample]:
        """The VEN's samples of `r_ids` with start <= at < end, oldest first."""
        with self._tx() as s:
            rows = s.exec(select(SampleRow).where(
                col(SampleRow.ven_name) == ven_name, col(SampleRow.r_id).in_(r_ids),
                col(SampleRow.at) >= start, col(SampleRow.at) < end,
            ).order_by(col(SampleRow.at), col(SampleRow.r_id)))
            return [sample_record(r) for r in rows]

    def prune_samples(self, before: datetime) -> int:
        """Delete every VEN's samples older than `before`; returns how many."""
        with self._tx() as s:
            return s.exec(delete(SampleRow).where(col(SampleRow.at) < before)).rowcount

    # --- liveness and status ------------------------------------------------------------

    def save_heartbeats(self, beats: Mapping[str, tuple[datetime | None, str | None]]) -> None:
        """Record many VENs' last poll and last error (None: no error since) in one
        transaction: the fleet writes these in batches, never per poll."""
        with self._tx() as s:
            upsert_values(s, HeartbeatRow.__table__, [
                {"ven_name": name, "last_poll": at, "last_error": error}
                for name, (at, error) in beats.items()])

    def status(self) -> list[VenStatusRow]:
        """A summary of every VEN with stored state, by name; reads only, without parsing XML,
        so it serves `adrgate ven status` on a database the fleet is writing."""
        with self._tx() as s:
            regs = {r.ven_name: r for r in s.exec(_of(RegistrationRow, None))}
            beats = {b.ven_name: b for b in s.exec(_of(HeartbeatRow, None))}
            events: dict[str, list[EventLine]] = {}
            for ev in s.exec(_of(EventRow, None)):
                events.setdefault(ev.ven_name, []).append(EventLine(
                    event_id=ev.event_id, modification_number=ev.modification_number,
                    opt=OptType(ev.opt), answered=ev.answered_mod >= ev.modification_number))
            opts: dict[str, list[OptLine]] = {}
            for opt in s.exec(_of(OptRow, None)):
                opts.setdefault(opt.ven_name, []).append(OptLine(
                    opt_id=opt.opt_id, opt_type=OptType(opt.opt_type), reason=opt.opt_reason,
                    acked=opt.acked, cancelled=opt.cancelled))
            requests: dict[str, list[RequestLine]] = {}
            for req in s.exec(_of(RequestRow, None)):
                requests.setdefault(req.ven_name, []).append(RequestLine(
                    report_request_id=req.report_request_id, report_name=req.report_name,
                    granularity=timedelta(seconds=req.granularity_s),
                    next_report=req.next_report))
        rows = []
        for name in sorted(regs.keys() | beats.keys() | events.keys() | opts.keys()
                           | requests.keys()):
            reg = registration_record(regs[name]) if name in regs else Registration()
            beat = beats.get(name)
            rows.append(VenStatusRow(
                name=name, ven_id=reg.ven_id, registration_id=reg.registration_id,
                state=reg.state, poll_freq=reg.poll_freq,
                last_poll=beat.last_poll if beat else None,
                last_error=beat.last_error if beat else None,
                events=tuple(events.get(name, ())), opts=tuple(opts.get(name, ())),
                requests=tuple(requests.get(name, ()))))
        return rows
