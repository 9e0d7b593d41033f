"""The VTN's durable state, on SQLite (default) or PostgreSQL; tables live in `vtn.tables`.

Every public method is one transaction, so a failed request never leaves a half-written record.
Typed records from `vtn.records` go in and out; rows never leave this module. Fast handler tests
use the same store on an in-memory SQLite database, so there is one implementation to trust.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BindParameter,
    Boolean,
    Connection,
    Engine,
    Integer,
    String,
    and_,
    bindparam,
    delete,
    exists,
    func,
    or_,
    update,
)
from sqlalchemy import select as sa_select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.dml import Update
from sqlmodel import Session, SQLModel, col, select

from adrgate.services import upsert_values
from oadr.messages import Event, OptType

from .eventjson import event_to_json, targets_to_json
from .records import (
    Delivery,
    EventRecord,
    MetadataReport,
    OptRecord,
    OutboxItem,
    OutboxKind,
    ReportRequestRecord,
    ReportValue,
    VenRecord,
    VenStatus,
)
from .tables import (
    DeliveryRow,
    EventRow,
    OptRow,
    OutboxRow,
    ProgramRow,
    PushStateRow,
    ReportMetaRow,
    ReportRequestRow,
    ReportValueRow,
    VenPollRow,
    VenRow,
    as_utc,
    delivery_record,
    description_from_json,
    description_to_json,
    event_record,
    opt_record,
    outbox_item,
    request_record,
    value_record,
    ven_record,
)


@dataclass(frozen=True, slots=True)
class PollState:
    """What a poll needs to know, read in one query: who polls and whether anything waits."""

    registered: bool
    fingerprint: str | None = None
    http_pull_model: bool = True
    due: bool = False  # an event distribute is owed
    outbox: bool = False  # a queued message is ready to (re)send


@dataclass(frozen=True, slots=True, kw_only=True)
class PushState:
    """How pushing to one push VEN goes (the default: never failed)."""

    ven_id: str
    failures: int = 0  # consecutive failed pushes
    unreachable: bool = False
    next_attempt: datetime | None = None  # backing off until then
    last_error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PushWork:
    """A push VEN and what it is owed, as one sweep read them."""

    ven: VenRecord
    distribute: bool  # a distribute is owed (see `_push_owed`)
    outbox: bool  # a queued message is ready to (re)send


def _push_owed(ven_id: Any, resend_before: Any) -> Any:
    """A distribute is owed to a push VEN: an event it has not been sent at its current
    modification (or an omission), or one still unacknowledged since `resend_before`."""
    return exists().where(
        col(DeliveryRow.ven_id) == ven_id, col(DeliveryRow.due),
        col(EventRow.event_id) == col(DeliveryRow.event_id),
        or_(col(DeliveryRow.removed), col(DeliveryRow.delivered_at).is_(None),
            col(DeliveryRow.delivered_mod) < col(EventRow.modification_number),
            col(DeliveryRow.delivered_at) < resend_before))


def _outbox_ready(ven_id: Any, resend_before: Any) -> Any:
    """A queued message is ready to (re)send: never sent, or sent before `resend_before`."""
    return exists().where(
        col(OutboxRow.ven_id) == ven_id, col(OutboxRow.acked_at).is_(None),
        or_(col(OutboxRow.sent_at).is_(None), col(OutboxRow.sent_at) < resend_before))


_VEN: BindParameter[str] = bindparam("ven_id", type_=String)
_POLL_STATE = sa_select(
    col(VenRow.status), col(VenRow.registration_id), col(VenRow.fingerprint),
    col(VenRow.http_pull_model),
    exists().where(col(DeliveryRow.ven_id) == _VEN, col(DeliveryRow.due)).label("owed"),
    _outbox_ready(_VEN, bindparam("resend")).label("queued"),
).where(col(VenRow.ven_id) == _VEN)


# one delivery recorded as pushed: a newer modification, or an unmet acknowledgement, stays owed
_MARK_DISTRIBUTED = update(DeliveryRow).where(
    col(DeliveryRow.ven_id) == bindparam("v_id"),
    col(DeliveryRow.event_id) == bindparam("e_id"),
    col(DeliveryRow.removed) == False,  # noqa: E712
).values(
    delivered_mod=bindparam("mod", type_=Integer), delivered_at=bindparam("at"),
    due=or_(and_(bindparam("needs_ack", type_=Boolean),
                 col(DeliveryRow.acked_mod) < bindparam("mod", type_=Integer)),
            func.coalesce(sa_select(col(EventRow.modification_number)).where(
                col(EventRow.event_id) == col(DeliveryRow.event_id)).scalar_subquery(),
                bindparam("mod", type_=Integer)) > bindparam("mod", type_=Integer)))


def _push_state(row: PushStateRow) -> PushState:
    return PushState(ven_id=row.ven_id, failures=row.failures, unreachable=row.unreachable,
                     next_attempt=as_utc(row.next_attempt), last_error=row.last_error)


def _put_ven(s: Session, ven: VenRecord) -> None:
    data = dataclasses.asdict(ven)
    data["status"] = str(ven.status)
    for key in ("programs", "groups", "resources"):
        data[key] = list(data[key])
    row = s.get(VenRow, ven.ven_id)
    if row is None:
        s.add(VenRow(**data))
    else:
        for key, value in data.items():
            setattr(row, key, value)


def _owe(s: Session, ven_id: str, event_ids: Sequence[str]) -> None:
    for event_id in event_ids:
        if s.get(DeliveryRow, (ven_id, event_id)) is None:
            s.add(DeliveryRow(ven_id=ven_id, event_id=event_id))


def _ack(ven_id: str, kind: OutboxKind) -> Update:
    """The update that acknowledges a VEN's unacknowledged outbox items of one kind."""
    return update(OutboxRow).where(col(OutboxRow.ven_id) == ven_id,
                                   col(OutboxRow.kind) == str(kind),
                                   col(OutboxRow.acked_at).is_(None))


_IN_CHUNK = 500  # ids per IN list, well under every database's bound-parameter limit

Answer = tuple[str, int, OptType, int]  # a VEN's answer: eventID, modificationNumber, opt, code

_ANSWER = update(DeliveryRow).where(
    col(DeliveryRow.ven_id) == bindparam("v_id"), col(DeliveryRow.event_id) == bindparam("e_id"),
).values(acked_mod=bindparam("acked", type_=Integer), opt_type=bindparam("opt"),
         response_code=bindparam("code", type_=Integer), responded_at=bindparam("at"),
         due=bindparam("still_due", type_=Boolean))


@dataclass(slots=True)
class _Answered:
    """A delivery as answers change it, before it is written back."""

    removed: bool
    acked: int
    delivered: int
    due: bool
    current: int | None  # the event's modificationNumber
    opt: str | None = None
    code: int | None = None
    at: datetime | None = None


def _record_answers(conn: Connection, batch: Sequence[tuple[str, Sequence[Answer], datetime]]
                    ) -> list[str | None]:
    """Record messages of answers (ven_id, answers, now), each all or nothing: per message,
    the first eventID that is not its VEN's (that message is not recorded), else None."""
    ven_ids = sorted({v for v, _, _ in batch})
    event_ids = sorted({a[0] for _, answers, _ in batch for a in answers})
    found: dict[tuple[str, str], _Answered] = {}
    for v in range(0, len(ven_ids), _IN_CHUNK):
        for e in range(0, len(event_ids), _IN_CHUNK):
            for row in conn.execute(sa_select(
                    col(DeliveryRow.ven_id), col(DeliveryRow.event_id), col(DeliveryRow.removed),
                    col(DeliveryRow.acked_mod), col(DeliveryRow.delivered_mod),
                    col(DeliveryRow.due), col(EventRow.modification_number)).outerjoin(
                    EventRow, col(EventRow.event_id) == col(DeliveryRow.event_id)).where(
                    col(DeliveryRow.ven_id).in_(ven_ids[v:v + _IN_CHUNK]),
                    col(DeliveryRow.event_id).in_(event_ids[e:e + _IN_CHUNK]))):
                found[(row[0], row[1])] = _Answered(
                    removed=row[2], acked=row[3], delivered=row[4], due=row[5], current=row[6])
    strangers: list[str | None] = []
    changed: dict[tuple[str, str], _Answered] = {}
    for ven_id, answers, now in batch:
        stranger = next((event_id for event_id, _, _, _ in answers
                         if (d := found.get((ven_id, event_id))) is None or d.removed), None)
        strangers.append(stranger)
        if stranger is not None:
            continue
        for event_id, mod, opt, code in answers:
            d = found[(ven_id, event_id)]
            current = d.current if d.current is not None else mod
            d.acked, d.opt, d.code, d.at = max(d.acked, mod), str(opt), code, now
            if d.acked >= current and d.delivered >= current:
                d.due = False
            changed[(ven_id, event_id)] = d
    if changed:
        conn.execute(_ANSWER, [
            {"v_id": v, "e_id": e, "acked": d.acked, "opt": d.opt, "code": d.code, "at": d.at,
             "still_due": d.due} for (v, e), d in changed.items()])
    return strangers


class _NotYours(Exception):
    def __init__(self, event_id: str) -> None:
        self.event_id = event_id


class VtnStore:
    """All VTN state. Methods are synchronous, short, and each runs in one transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # polls are most of the traffic: one long-lived autocommit connection serves their
        # single read (pool checkout/return per poll cost more than the query itself)
        self._hot: Connection | None = None
        self._hot_lock = threading.Lock()

    def close(self) -> None:
        with self._hot_lock:
            if self._hot is not None:
                self._hot.close()
                self._hot = None
        self.engine.dispose()

    def create_schema(self) -> None:
        SQLModel.metadata.create_all(self.engine)

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            with session.begin():
                yield session

    # --- VENs ---------------------------------------------------------------------------

    def get_ven(self, ven_id: str) -> VenRecord | None:
        with Session(self.engine) as s:
            row = s.get(VenRow, ven_id)
            return ven_record(row) if row else None

    def poll_state(self, ven_id: str, resend_before: datetime) -> PollState:
        """The poll hot path: one statement, compiled once, no ORM session, no pool round trip.

        Raises:
            sqlalchemy.exc.DBAPIError: the database failed twice (the connection is renewed once).
        """
        params = {"ven_id": ven_id, "resend": resend_before}
        with self._hot_lock:
            for attempt in (1, 2):
                if self._hot is None:
                    self._hot = self.engine.connect().execution_options(
                        isolation_level="AUTOCOMMIT")
                try:
                    row = self._hot.execute(_POLL_STATE, params).first()
                    break
                except DBAPIError:
                    self._hot.invalidate()
                    self._hot = None
                    if attempt == 2:
                        raise
        if row is None:
            return PollState(registered=False)
        registered = row.status == VenStatus.REGISTERED and row.registration_id is not None
        return PollState(registered=registered, fingerprint=row.fingerprint,
                         http_pull_model=row.http_pull_model, due=bool(row.owed),
                         outbox=bool(row.queued))

    def ven_by_name(self, ven_name: str) -> VenRecord | None:
        with Session(self.engine) as s:
            row = s.exec(select(VenRow).where(col(VenRow.ven_name) == ven_name)).first()
            return ven_record(row) if row else None

    def ven_by_registration(self, registration_id: str) -> VenRecord | None:
        with Session(self.engine) as s:
            row = s.exec(select(VenRow).where(
                col(VenRow.registration_id) == registration_id)).first()
            return ven_record(row) if row else None

    def ven_by_fingerprint(self, fingerprint: str) -> VenRecord | None:
        with Session(self.engine) as s:
            row = s.exec(select(VenRow).where(col(VenRow.fingerprint) == fingerprint)).first()
            return ven_record(row) if row else None

    def list_vens(self) -> list[VenRecord]:
        with Session(self.engine) as s:
            return [ven_record(r) for r in s.exec(select(VenRow).order_by(col(VenRow.ven_name)))]

    def record_polls(self, polls: Mapping[str, datetime]) -> None:
        """Remember when VENs last polled (a time never moves backwards)."""
        with self._tx() as s:
            upsert_values(s, VenPollRow.__table__,  # type: ignore[attr-defined]
                          [{"ven_id": v, "last_poll": at} for v, at in polls.items()],
                          newer="last_poll")

    def last_polls(self) -> dict[str, datetime]:
        with Session(self.engine) as s:
            return {r.ven_id: as_utc(r.last_poll) for r in s.exec(select(VenPollRow))
                    if r.last_poll is not None}

    def save_ven(self, ven: VenRecord) -> VenRecord:
        """Insert or replace a VEN record."""
        with self._tx() as s:
            _put_ven(s, ven)
        return ven

    def register(self, ven: VenRecord, owed_event_ids: Sequence[str], now: datetime) -> None:
        """Save a (re-)registration, settle a pending oadrRequestReregistration and owe the VEN
        the given live events, in one transaction."""
        with self._tx() as s:
            _put_ven(s, ven)
            s.exec(_ack(ven.ven_id, OutboxKind.REREGISTER).values(acked_at=now))
            _owe(s, ven.ven_id, owed_event_ids)

    def save_program(self, market_context: str, name: str, description: str = "") -> None:
        with self._tx() as s:
            s.merge(ProgramRow(market_context=market_context, name=name, description=description))

    def list_programs(self) -> list[tuple[str, str, str]]:
        with Session(self.engine) as s:
            return [(r.market_context, r.name, r.description)
                    for r in s.exec(select(ProgramRow).order_by(col(ProgramRow.name)))]

    # --- events and deliveries ----------------------------------------------------------

    def save_event(self, ev: Event, audience: Sequence[str], *, cancelled: bool = False) -> None:
        """Store a new or modified event and make its delivery due to every VEN in `audience`.

        VENs that had the event but are no longer in the audience get one more distribute
        without it (implicit cancellation).
        """
        body = event_to_json(ev)
        wanted = set(audience)
        with self._tx() as s:
            row = s.get(EventRow, ev.event_id)
            if row is None:
                row = EventRow(event_id=ev.event_id, modification_number=0, created=ev.created)
                s.add(row)
            row.modification_number = ev.modification_number
            row.cancelled = cancelled
            row.modified = ev.modification_date_time
            row.modification_reason = ev.modification_reason
            row.body = body
            existing = {d.ven_id: d for d in s.exec(
                select(DeliveryRow).where(col(DeliveryRow.event_id) == ev.event_id))}
            for ven_id in wanted:
                d = existing.get(ven_id)
                if d is None:
                    s.add(DeliveryRow(ven_id=ven_id, event_id=ev.event_id))
                else:
                    d.removed = d.finished = False
                    d.due = True
            for ven_id, d in existing.items():
                if ven_id not in wanted and not d.removed:
                    d.removed = True
                    d.due = True

    def add_deliveries(self, ven_id: str, event_ids: Sequence[str]) -> None:
        """Owe `ven_id` the given events (a VEN that registered after they were created)."""
        with self._tx() as s:
            _owe(s, ven_id, event_ids)

    def get_event(self, event_id: str) -> EventRecord | None:
        with Session(self.engine) as s:
            row = s.get(EventRow, event_id)
            return event_record(row) if row else None

    def list_events(self) -> list[EventRecord]:
        with Session(self.engine) as s:
            return [event_record(r) for r in s.exec(select(EventRow).order_by(col(EventRow.created)))]

    def deliveries_for_event(self, event_id: str) -> list[Delivery]:
        with Session(self.engine) as s:
            return [delivery_record(r) for r in s.exec(
                select(DeliveryRow).where(col(DeliveryRow.event_id) == event_id)
                .order_by(col(DeliveryRow.ven_id)))]

    def ven_events(self, ven_id: str) -> list[tuple[Delivery, EventRecord]]:
        """The VEN's open deliveries (not removed, not finished) with their events."""
        with Session(self.engine) as s:
            rows = s.exec(select(DeliveryRow, EventRow).join(
                EventRow, col(EventRow.event_id) == col(DeliveryRow.event_id)).where(
                col(DeliveryRow.ven_id) == ven_id, col(DeliveryRow.removed) == False,  # noqa: E712
                col(DeliveryRow.finished) == False))  # noqa: E712
            return [(delivery_record(d), event_record(e)) for d, e in rows]

    def mark_distributed(self, ven_id: str, sent: Sequence[tuple[str, int, bool]],
                         now: datetime) -> None:
        """Record a distribute sent to `ven_id`: (event_id, modificationNumber, needs_ack).

        Rows marked removed are closed: the distribute that omitted them has been sent.
        A push records its distribute only once the VEN took it, so the event may have changed
        meanwhile: a newer modification, or a removal, stays owed.
        """
        with self._tx() as s:
            for event_id, mod, needs_ack in sent:
                row = s.get(DeliveryRow, (ven_id, event_id))
                if row is None or row.removed:
                    continue
                event = s.get(EventRow, event_id)
                current = event.modification_number if event is not None else mod
                row.delivered_mod = mod
                row.delivered_at = now
                row.due = (needs_ack and row.acked_mod < mod) or current > mod
            s.exec(delete(DeliveryRow).where(
                col(DeliveryRow.ven_id) == ven_id, col(DeliveryRow.removed) == True,  # noqa: E712
                col(DeliveryRow.event_id).not_in([event_id for event_id, _, _ in sent])))

    def mark_distributed_many(
            self, batch: Sequence[tuple[str, Sequence[tuple[str, int, bool]], datetime]]
    ) -> list[None]:
        """`mark_distributed` for many distributes (ven_id, sent, now), in one transaction."""
        rows = [{"v_id": ven_id, "e_id": event_id, "mod": mod, "needs_ack": needs_ack, "at": now}
                for ven_id, sent, now in batch for event_id, mod, needs_ack in sent]
        by_sent: dict[frozenset[str], list[str]] = {}
        for ven_id, sent, _ in batch:
            by_sent.setdefault(frozenset(e for e, _, _ in sent), []).append(ven_id)
        with self.engine.begin() as conn:
            if rows:
                conn.execute(_MARK_DISTRIBUTED, rows)
            for event_ids, ven_ids in by_sent.items():  # one per distinct set of events sent
                for start in range(0, len(ven_ids), _IN_CHUNK):
                    conn.execute(delete(DeliveryRow).where(
                        col(DeliveryRow.ven_id).in_(ven_ids[start:start + _IN_CHUNK]),
                        col(DeliveryRow.removed) == True,  # noqa: E712
                        col(DeliveryRow.event_id).not_in(sorted(event_ids))))
        return [None] * len(batch)

    def record_event_responses(self, ven_id: str, answers: Sequence[Answer],
                               now: datetime) -> str | None:
        """Record a VEN's answers (event_id, modificationNumber, opt, code), all or nothing.

        Returns the first eventID that is not this VEN's (nothing recorded then), else None.
        """
        return self.record_event_responses_many([(ven_id, answers, now)])[0]

    def record_event_responses_many(
            self, batch: Sequence[tuple[str, Sequence[Answer], datetime]]) -> list[str | None]:
        """`record_event_responses` for many messages (ven_id, answers, now) in one
        transaction; each message is still all or nothing."""
        with self.engine.begin() as conn:
            return _record_answers(conn, batch)

    def close_finished(self, ven_id: str, event_ids: Sequence[str]) -> None:
        """Stop sending events that are over for this VEN (completed, or cancelled and
        acknowledged); their delivery and opt state stay queryable."""
        if not event_ids:
            return
        with self._tx() as s:
            s.exec(update(DeliveryRow).where(
                col(DeliveryRow.ven_id) == ven_id, col(DeliveryRow.event_id).in_(event_ids))
                .values(finished=True, due=False))

    # --- outbox -------------------------------------------------------------------------

    def enqueue(self, ven_id: str, kind: OutboxKind, ref: str, now: datetime) -> OutboxItem:
        with self._tx() as s:
            row = OutboxRow(ven_id=ven_id, kind=str(kind), ref=ref, created=now)
            s.add(row)
            s.flush()
            return outbox_item(row)

    def next_outbox(self, ven_id: str, resend_before: datetime) -> OutboxItem | None:
        """The oldest unacknowledged item never sent, or sent before `resend_before`."""
        with Session(self.engine) as s:
            rows = s.exec(select(OutboxRow).where(
                col(OutboxRow.ven_id) == ven_id, col(OutboxRow.acked_at) == None)  # noqa: E711
                .order_by(col(OutboxRow.id)))
            for row in rows:
                sent = as_utc(row.sent_at)
                if sent is None or sent < resend_before:
                    return outbox_item(row)
            return None

    def mark_sent(self, item_id: int, now: datetime) -> None:
        with self._tx() as s:
            s.exec(update(OutboxRow).where(col(OutboxRow.id) == item_id).values(sent_at=now))

    def ack_outbox(self, ven_id: str, kind: OutboxKind, now: datetime,
                   ref: str | None = None) -> int:
        """Acknowledge the VEN's pending items of `kind` (and `ref` if given); returns count."""
        q = _ack(ven_id, kind)
        if ref is not None:
            q = q.where(col(OutboxRow.ref) == ref)
        with self._tx() as s:
            return s.exec(q.values(acked_at=now)).rowcount

    def pending_outbox(self, ven_id: str) -> list[OutboxItem]:
        with Session(self.engine) as s:
            return [outbox_item(r) for r in s.exec(select(OutboxRow).where(
                col(OutboxRow.ven_id) == ven_id, col(OutboxRow.acked_at) == None)  # noqa: E711
                .order_by(col(OutboxRow.id)))]

    # --- push ---------------------------------------------------------------------------

    def push_work(self, now: datetime, resend_before: datetime, limit: int,
                  ven_id: str | None = None) -> list[PushWork]:
        """Registered push VENs owed a distribute or an outbox item and not backing off, with
        their records and what they are owed, in one query (only `ven_id`, when given)."""
        owed = _push_owed(col(VenRow.ven_id), resend_before)
        queued = _outbox_ready(col(VenRow.ven_id), resend_before)
        q = (sa_select(VenRow, owed.label("owed"), queued.label("queued")).outerjoin(
            PushStateRow, col(PushStateRow.ven_id) == col(VenRow.ven_id)).where(
            col(VenRow.status) == str(VenStatus.REGISTERED),
            col(VenRow.registration_id).is_not(None),
            col(VenRow.http_pull_model) == False,  # noqa: E712
            col(VenRow.transport_address).is_not(None),
            or_(col(PushStateRow.next_attempt).is_(None), col(PushStateRow.next_attempt) <= now),
            or_(owed, queued)).order_by(col(VenRow.ven_id)).limit(limit))
        if ven_id is not None:
            q = q.where(col(VenRow.ven_id) == ven_id)
        with Session(self.engine) as s:
            return [PushWork(ven=ven_record(ven), distribute=bool(due), outbox=bool(ready))
                    for ven, due, ready in s.execute(q)]

    def open_deliveries(self, ven_ids: Sequence[str]
                        ) -> dict[str, list[tuple[Delivery, EventRecord]]]:
        """`ven_events` for many VENs in few queries; each event is decoded once."""
        found: dict[str, list[tuple[Delivery, EventRecord]]] = {v: [] for v in ven_ids}
        decoded: dict[tuple[str, int], EventRecord] = {}
        with Session(self.engine) as s:
            for start in range(0, len(ven_ids), _IN_CHUNK):
                rows = s.exec(select(DeliveryRow, EventRow).join(
                    EventRow, col(EventRow.event_id) == col(DeliveryRow.event_id)).where(
                    col(DeliveryRow.ven_id).in_(ven_ids[start:start + _IN_CHUNK]),
                    col(DeliveryRow.removed) == False,  # noqa: E712
                    col(DeliveryRow.finished) == False))  # noqa: E712
                for d, e in rows:
                    key = (e.event_id, e.modification_number)
                    if key not in decoded:
                        decoded[key] = event_record(e)
                    found[d.ven_id].append((delivery_record(d), decoded[key]))
        return found

    def push_states(self) -> dict[str, PushState]:
        """The VENs whose last push failed (every other VEN is healthy)."""
        with Session(self.engine) as s:
            return {r.ven_id: _push_state(r) for r in s.exec(select(PushStateRow))}

    def save_push_state(self, state: PushState) -> None:
        with self._tx() as s:
            s.merge(PushStateRow(**dataclasses.asdict(state)))

    def clear_push_state(self, ven_id: str) -> None:
        """The VEN took a push: it is healthy again."""
        with self._tx() as s:
            s.exec(delete(PushStateRow).where(col(PushStateRow.ven_id) == ven_id))

    # --- reports ------------------------------------------------------------------------

    def save_metadata(self, reports: Sequence[MetadataReport]) -> None:
        with self._tx() as s:
            for rep in reports:
                s.merge(ReportMetaRow(
                    ven_id=rep.ven_id, report_specifier_id=rep.report_specifier_id,
                    report_name=rep.report_name,
                    descriptions=[description_to_json(d) for d in rep.descriptions]))

    def metadata(self, ven_id: str) -> list[MetadataReport]:
        with Session(self.engine) as s:
            return [MetadataReport(
                ven_id=r.ven_id, report_specifier_id=r.report_specifier_id,
                report_name=r.report_name,
                descriptions=tuple(description_from_json(d) for d in r.descriptions or ()))
                for r in s.exec(select(ReportMetaRow).where(col(ReportMetaRow.ven_id) == ven_id))]

    def save_report_requests(self, requests: Sequence[ReportRequestRecord]) -> None:
        with self._tx() as s:
            for rq in requests:
                data = dataclasses.asdict(rq)
                data["r_ids"] = list(rq.r_ids)
                s.merge(ReportRequestRow(**data))

    def report_requests(self, ven_id: str) -> list[ReportRequestRecord]:
        with Session(self.engine) as s:
            return [request_record(r) for r in s.exec(select(ReportRequestRow).where(
                col(ReportRequestRow.ven_id) == ven_id).order_by(col(ReportRequestRow.created)))]

    def get_report_request(self, report_request_id: str) -> ReportRequestRecord | None:
        with Session(self.engine) as s:
            row = s.get(ReportRequestRow, report_request_id)
            return request_record(row) if row else None

    def set_report_request_status(self, ids: Sequence[str], status: str) -> None:
        with self._tx() as s:
            s.exec(update(ReportRequestRow).where(
                col(ReportRequestRow.report_request_id).in_(ids))
                .values(status=status))

    def add_report_values(self, values: Sequence[ReportValue]) -> None:
        with self._tx() as s:
            for v in values:
                st = v.status
                s.add(ReportValueRow(
                    ven_id=v.ven_id, report_request_id=v.report_request_id,
                    report_specifier_id=v.report_specifier_id, report_name=v.report_name,
                    r_id=v.r_id, resource_id=v.resource_id, dtstart=v.dtstart,
                    duration_s=v.duration_s, value=v.value,
                    online=st.online if st else None,
                    manual_override=st.manual_override if st else None,
                    load_control=dataclasses.asdict(st.load_control)
                    if st and st.load_control else None))

    def report_values(self, ven_id: str, limit: int = 1000) -> list[ReportValue]:
        with Session(self.engine) as s:
            return [value_record(r) for r in s.exec(select(ReportValueRow).where(
                col(ReportValueRow.ven_id) == ven_id).order_by(col(ReportValueRow.id).desc())
                .limit(limit))]

    def count_report_values(self, ven_id: str) -> int:
        with Session(self.engine) as s:
            return s.exec(select(func.count()).select_from(ReportValueRow).where(
                col(ReportValueRow.ven_id) == ven_id)).one()

    # --- opts ---------------------------------------------------------------------------

    def save_opt(self, opt: OptRecord) -> str | None:
        """Store an opt; an event-scoped one also becomes the VEN's answer to that event, in the
        same transaction. Returns the eventID if it is not this VEN's (nothing stored then)."""
        try:
            with self._tx() as s:
                if opt.event_id is not None:
                    stranger = _record_answers(s.connection(), [(opt.ven_id, [(
                        opt.event_id, opt.modification_number or 0, opt.opt_type, 200)],
                        opt.created)])[0]
                    if stranger is not None:
                        raise _NotYours(stranger)
                self._put_opt(s, opt)
        except _NotYours as exc:
            return exc.event_id
        return None

    @staticmethod
    def _put_opt(s: Session, opt: OptRecord) -> None:
        s.merge(OptRow(
            ven_id=opt.ven_id, opt_id=opt.opt_id, opt_type=str(opt.opt_type),
            opt_reason=opt.opt_reason, created=opt.created,
            market_context=opt.market_context, event_id=opt.event_id,
            modification_number=opt.modification_number,
            availability=[[a.isoformat(), s_] for a, s_ in opt.availability],
            targets=targets_to_json(opt.targets), cancelled_at=opt.cancelled_at))

    def cancel_opt(self, ven_id: str, opt_id: str, now: datetime) -> bool:
        """Mark a VEN's opt cancelled; False if it has no such opt."""
        with self._tx() as s:
            row = s.get(OptRow, (ven_id, opt_id))
            if row is None:
                return False
            row.cancelled_at = now
            return True

    def get_opt(self, ven_id: str, opt_id: str) -> OptRecord | None:
        with Session(self.engine) as s:
            row = s.get(OptRow, (ven_id, opt_id))
            return opt_record(row) if row else None

    def list_opts(self, ven_id: str | None = None) -> list[OptRecord]:
        with Session(self.engine) as s:
            q = select(OptRow).order_by(col(OptRow.created))
            if ven_id is not None:
                q = q.where(col(OptRow.ven_id) == ven_id)
            return [opt_record(r) for r in s.exec(q)]
