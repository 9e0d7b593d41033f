"""The CMB's durable state beside the VTN's, on SQLite or PostgreSQL; tables in `vtn.cmb.tables`.

Every public method is one transaction. `record_batch` writes everything a batch of submissions
caused (verdicts, sequences, alerts, overrides, audit entries) at once: a failure leaves none of
it. The audit log is append-only: entries are inserted and read, never changed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from pydantic import TypeAdapter
from sqlalchemy import Engine, insert
from sqlmodel import Session, SQLModel, col, select

from adrgate.services import upsert_values
from vtn.tables import as_utc

from .records import Alert, DeviceRegistration, Override, OverrideStatus, Prognosis, Tariff, Verdict
from .tables import (
    CmbAggregatorRow,
    CmbAlertRow,
    CmbAuditRow,
    CmbDeviceRow,
    CmbOverrideRow,
    CmbPrognosisRow,
    CmbSequenceRow,
    CmbTariffRow,
    CmbVerdictRow,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class AggregatorProfile:
    """An aggregator the CMB accepts plans from, and the CMB's policy for it."""

    aggregator: str
    public_key: str  # PEM public key or certificate: its plan batches are signed with this
    fingerprint: str | None = None  # its mutual-TLS client certificate (secure mode)
    auto_response: tuple[str, ...] = ()  # monitors whose alerts apply an override at once
    wait_programs: tuple[str, ...] = ()  # programs whose response plans still wait for verdicts
    override_level: int = 0  # the cap (percent of rated import) an alert's override sets


class Release(StrEnum):
    """When an aggregator may dispatch a plan (the policy per aggregator and program)."""

    AFTER_VERDICT = "after_verdict"  # routine: the aggregator waits; dispatch only if accepted
    IMMEDIATE = "immediate"  # response DSR in a dispatched window: out at once, checked alongside


@dataclass(frozen=True, slots=True, kw_only=True)
class Judged:
    verdict: Verdict
    release: Release


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    at: datetime
    actor: str  # an aggregator, "operator", or "cmb" (automatic)
    action: str  # plan_accepted, plan_rejected, alert, override_proposed, override_applied, ...
    subject: str  # the plan, alert, override, ... it is about
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class OverrideEntry:
    override: Override
    results: tuple[Any, ...] = ()  # JSON of each path's outcome, in order of application


_REG: Final = TypeAdapter(DeviceRegistration)
_PROFILE: Final = TypeAdapter(AggregatorProfile)
_VERDICT: Final = TypeAdapter(Verdict)
_ALERT: Final = TypeAdapter(Alert)
_OVERRIDE: Final = TypeAdapter(Override)
_PROGNOSIS: Final = TypeAdapter(Prognosis)
_TARIFF: Final = TypeAdapter(Tariff)


def _audit_row(e: AuditEntry) -> CmbAuditRow:
    return CmbAuditRow(at=e.at, actor=e.actor, action=e.action, subject=e.subject,
                       detail=dict(e.detail))


def _put_override(s: Session, o: Override, results: Sequence[Any] | None = None) -> None:
    row = s.get(CmbOverrideRow, o.override_id)
    if row is None:
        row = CmbOverrideRow(override_id=o.override_id, status=str(o.status), created=o.created,
                             results=[])
        s.add(row)
    row.status = str(o.status)
    row.body = _OVERRIDE.dump_python(o, mode="json")
    if results:
        row.results = [*(row.results or []), *results]


def _entry(row: CmbOverrideRow) -> OverrideEntry:
    return OverrideEntry(override=_OVERRIDE.validate_python(row.body),
                         results=tuple(row.results or ()))


class CmbStore:
    """All CMB state. Methods are synchronous and short; each runs in one transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create_schema(self) -> None:
        SQLModel.metadata.create_all(self.engine)

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            with session.begin():
                yield session

    # --- aggregators and the device registry --------------------------------------------

    def save_aggregator(self, profile: AggregatorProfile, audit: AuditEntry) -> None:
        with self._tx() as s:
            s.merge(CmbAggregatorRow(aggregator=profile.aggregator,
                                     body=_PROFILE.dump_python(profile, mode="json")))
            s.add(_audit_row(audit))

    def aggregators(self) -> dict[str, AggregatorProfile]:
        with Session(self.engine) as s:
            return {r.aggregator: _PROFILE.validate_python(r.body)
                    for r in s.exec(select(CmbAggregatorRow))}

    def put_devices(self, devices: Sequence[DeviceRegistration], audit: AuditEntry) -> None:
        """Insert or replace registrations; their accepted sequences are kept."""
        with self._tx() as s:
            for d in devices:
                s.merge(CmbDeviceRow(device_id=d.device_id, owner=d.owner,
                                     body=_REG.dump_python(d, mode="json")))
            s.add(_audit_row(audit))

    def registry(self) -> dict[str, DeviceRegistration]:
        with Session(self.engine) as s:
            return {r.device_id: _REG.validate_python(r.body) for r in s.exec(select(CmbDeviceRow))}

    def sequences(self) -> dict[str, int]:
        with Session(self.engine) as s:
            return {r.device_id: r.sequence for r in s.exec(select(CmbSequenceRow))}

    # --- submissions --------------------------------------------------------------------

    def record_batch(self, judged: Sequence[Judged], advanced: Mapping[str, int],
                     alerts: Sequence[Alert], overrides: Sequence[Override],
                     audit: Sequence[AuditEntry]) -> None:
        """Everything one batch caused, in one transaction: verdicts, the devices' new highest
        accepted sequences, alerts, the overrides they proposed or applied, the audit entries."""
        with self._tx() as s:
            # executemany inserts, not ORM objects: a batch of plans is the CMB's hot path
            if judged:
                s.execute(insert(CmbVerdictRow.__table__), [{  # type: ignore[attr-defined]
                    "plan_id": j.verdict.plan_id, "device_id": j.verdict.device_id,
                    "aggregator": j.verdict.aggregator, "decision": str(j.verdict.decision),
                    "release": str(j.release), "at": j.verdict.at,
                    "body": _VERDICT.dump_python(j.verdict, mode="json")} for j in judged])
            upsert_values(s, CmbSequenceRow.__table__,  # type: ignore[attr-defined]
                          [{"device_id": d, "sequence": n} for d, n in advanced.items()])
            self._add_alerts(s, alerts)
            for o in overrides:
                _put_override(s, o)
            if audit:
                s.execute(insert(CmbAuditRow.__table__), [  # type: ignore[attr-defined]
                    {"at": e.at, "actor": e.actor, "action": e.action, "subject": e.subject,
                     "detail": dict(e.detail)} for e in audit])

    @staticmethod
    def _add_alerts(s: Session, alerts: Sequence[Alert]) -> None:
        for a in alerts:
            s.add(CmbAlertRow(alert_id=a.alert_id, monitor=a.monitor, aggregator=a.aggregator,
                              at=a.at, body=_ALERT.dump_python(a, mode="json")))

    def record_alerts(self, alerts: Sequence[Alert], overrides: Sequence[Override],
                      audit: Sequence[AuditEntry]) -> None:
        """Alerts of the time-based monitors, with their overrides, in one transaction."""
        with self._tx() as s:
            self._add_alerts(s, alerts)
            for o in overrides:
                _put_override(s, o)
            s.add_all(_audit_row(e) for e in audit)

    def verdicts(self, *, aggregator: str | None = None, device_id: str | None = None,
                 plan_id: str | None = None, limit: int = 200) -> list[Judged]:
        """Newest first."""
        q = select(CmbVerdictRow).order_by(col(CmbVerdictRow.id).desc()).limit(limit)
        for column, value in ((CmbVerdictRow.aggregator, aggregator),
                              (CmbVerdictRow.device_id, device_id),
                              (CmbVerdictRow.plan_id, plan_id)):
            if value is not None:
                q = q.where(col(column) == value)
        with Session(self.engine) as s:
            return [Judged(verdict=_VERDICT.validate_python(r.body), release=Release(r.release))
                    for r in s.exec(q)]

    def alerts(self, *, aggregator: str | None = None, limit: int = 200) -> list[Alert]:
        """Newest first."""
        q = select(CmbAlertRow).order_by(col(CmbAlertRow.at).desc()).limit(limit)
        if aggregator is not None:
            q = q.where(col(CmbAlertRow.aggregator) == aggregator)
        with Session(self.engine) as s:
            return [_ALERT.validate_python(r.body) for r in s.exec(q)]

    # --- overrides ----------------------------------------------------------------------

    def save_override(self, override: Override, audit: AuditEntry,
                      results: Sequence[Any] = ()) -> None:
        """Insert or update an override (its status, resolved devices), appending `results`."""
        with self._tx() as s:
            _put_override(s, override, results)
            s.add(_audit_row(audit))

    def add_override_results(self, override_id: str, results: Sequence[Any],
                             audit: AuditEntry) -> None:
        """Append the paths' outcomes to an override, whatever its status meanwhile."""
        with self._tx() as s:
            row = s.get(CmbOverrideRow, override_id)
            if row is not None:
                row.results = [*(row.results or []), *results]
            s.add(_audit_row(audit))

    def override(self, override_id: str) -> OverrideEntry | None:
        with Session(self.engine) as s:
            row = s.get(CmbOverrideRow, override_id)
            return _entry(row) if row else None

    def overrides(self, status: OverrideStatus | None = None) -> list[OverrideEntry]:
        q = select(CmbOverrideRow).order_by(col(CmbOverrideRow.created))
        if status is not None:
            q = q.where(col(CmbOverrideRow.status) == str(status))
        with Session(self.engine) as s:
            return [_entry(r) for r in s.exec(q)]

    # --- expectations: prognoses and tariffs --------------------------------------------

    def save_prognosis(self, p: Prognosis, audit: AuditEntry) -> None:
        with self._tx() as s:
            s.merge(CmbPrognosisRow(aggregator=p.aggregator, network_area=p.network_area,
                                    body=_PROGNOSIS.dump_python(p, mode="json")))
            s.add(_audit_row(audit))

    def prognoses(self) -> list[Prognosis]:
        with Session(self.engine) as s:
            return [_PROGNOSIS.validate_python(r.body) for r in s.exec(select(CmbPrognosisRow))]

    def save_tariff(self, t: Tariff, audit: AuditEntry) -> None:
        with self._tx() as s:
            s.merge(CmbTariffRow(tariff_id=t.tariff_id, body=_TARIFF.dump_python(t, mode="json")))
            s.add(_audit_row(audit))

    def tariffs(self) -> list[Tariff]:
        with Session(self.engine) as s:
            return [_TARIFF.validate_python(r.body) for r in s.exec(select(CmbTariffRow))]

    # --- audit --------------------------------------------------------------------------

    def audit(self, *, action: str | None = None, subject: str | None = None,
              limit: int = 500) -> list[AuditEntry]:
        """Oldest first."""
        q = select(CmbAuditRow).order_by(col(CmbAuditRow.id)).limit(limit)
        if action is not None:
            q = q.where(col(CmbAuditRow.action) == action)
        if subject is not None:
            q = q.where(col(CmbAuditRow.subject) == subject)
        with Session(self.engine) as s:
            return [AuditEntry(at=as_utc(r.at) or datetime.min, actor=r.actor, action=r.action,
                               subject=r.subject, detail=r.detail or {})
                    for r in s.exec(q)]
