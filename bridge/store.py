"""The bridge's durable state: every plan it made (dispatched or refused, with the reasons) and
every channel outcome. On SQLite or PostgreSQL, beside the VEN fleet's tables (same metadata,
``bridge_`` prefix), so one database holds the aggregator side.

After a restart the bridge rebuilds its step schedules and sequence numbers from here, and
`adrgate trace` reads the path of an event from here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final

from pydantic import TypeAdapter
from sqlalchemy import JSON, Column, Engine, Text, delete, func
from sqlmodel import Field, Session, col, select

from adrgate.services import upsert_values
from ven.records import GridSignal
from ven.tables import FLEET_METADATA, FleetTable, ts_field

from .channel import Dispatch, decode_dispatch, encode_dispatch
from .models import Device, Plan
from .streams import DispatchResult, decode_result, encode_result


class PlanStatus(StrEnum):
    DISPATCHED = "dispatched"  # handed to its channel
    REFUSED = "refused"  # the device cannot execute it: never sent (reasons say why)
    SUPERSEDED = "superseded"  # a newer plan for the device replaced it
    HELD = "held"  # waits for the CMB's verdict (the CMB could not be reached): sent once accepted


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanRecord:
    plan: Plan
    device: Device
    status: PlanStatus
    created: datetime
    reasons: tuple[str, ...] = ()
    requested_kw: float | None = None  # the change in import the plan asks of the device


@dataclass(frozen=True, slots=True, kw_only=True)
class PowerSample:
    """An event's devices at one moment: the change in import asked of them and the change they
    show, both against their import when the event was planned (negative: importing less)."""

    event_id: str
    at: datetime
    requested_kw: float
    delivered_kw: float
    devices: int
    online: int


class PlanRow(FleetTable, table=True):
    __tablename__ = "bridge_plan"
    plan_id: str = Field(primary_key=True)
    device_id: str = Field(index=True)
    event_id: str | None = Field(default=None, index=True)
    sequence: int
    status: str
    created: datetime = ts_field(nullable=False)
    end: datetime = ts_field(nullable=False)
    reasons: list[str] = Field(sa_column=Column(JSON, nullable=False))
    requested_kw: float | None = None
    dispatch: str = Field(sa_column=Column(Text, nullable=False))  # plan and device, as JSON


class SignalRow(FleetTable, table=True):
    """A grid signal the bridge has planned, so a restart does not plan it again."""

    __tablename__ = "bridge_signal"
    ven_name: str = Field(primary_key=True)
    event_id: str = Field(primary_key=True)
    modification_number: int = Field(primary_key=True)
    signal_id: str = Field(primary_key=True)
    signal: str = Field(sa_column=Column(Text, nullable=False))  # the GridSignal, as JSON
    devices: list[str] = Field(sa_column=Column(JSON, nullable=False))  # those given a plan


class PowerRow(FleetTable, table=True):
    __tablename__ = "bridge_power"
    event_id: str = Field(primary_key=True)
    at: datetime = ts_field(nullable=False, primary_key=True)
    requested_kw: float
    delivered_kw: float
    devices: int
    online: int


class OutcomeRow(FleetTable, table=True):
    # stream entry ids are unique within one channel's stream only, so the key is both
    __tablename__ = "bridge_channel_outcome"
    channel: str = Field(primary_key=True)
    entry_id: str = Field(primary_key=True)  # the dispatch stream entry: one outcome each
    key: str = Field(index=True)
    plan_id: str = Field(index=True)
    result: str = Field(sa_column=Column(Text, nullable=False))  # the DispatchResult, as JSON


_POWER: Final = TypeAdapter(PowerSample)
_SIGNAL: Final = TypeAdapter(GridSignal)


class BridgeStore:
    """Plans and outcomes. Each method is one short transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        FLEET_METADATA.create_all(engine, checkfirst=True)

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    def save_plans(self, records: Sequence[PlanRecord]) -> None:
        """Insert or replace (by plan id) in one statement per batch."""
        rows = [{
            "plan_id": r.plan.plan_id, "device_id": r.plan.device_id,
            "event_id": r.plan.event_id, "sequence": r.plan.sequence, "status": r.status.value,
            "created": r.created, "end": r.plan.end, "reasons": list(r.reasons),
            "requested_kw": r.requested_kw,
            "dispatch": encode_dispatch(Dispatch(plan=r.plan, device=r.device)).decode(),
        } for r in records]
        with self._tx() as s:
            upsert_values(s, PlanRow.__table__, rows)

    def plans(self, *, event_id: str | None = None, device_id: str | None = None,
              status: PlanStatus | None = None, ending_after: datetime | None = None
              ) -> list[PlanRecord]:
        q = select(PlanRow).order_by(col(PlanRow.device_id), col(PlanRow.sequence))
        if event_id is not None:
            q = q.where(PlanRow.event_id == event_id)
        if device_id is not None:
            q = q.where(PlanRow.device_id == device_id)
        if status is not None:
            q = q.where(PlanRow.status == status.value)
        if ending_after is not None:
            q = q.where(col(PlanRow.end) > ending_after)
        with self._tx() as s:
            return [_plan_record(row) for row in s.exec(q)]

    def last_sequences(self) -> dict[str, int]:
        """The highest plan sequence number per device: the next plan must be higher."""
        q = select(PlanRow.device_id, func.max(PlanRow.sequence)).group_by(
            col(PlanRow.device_id))
        with self._tx() as s:
            return {device_id: sequence for device_id, sequence in s.exec(q)}

    def record_outcomes(self, results: Sequence[DispatchResult]) -> None:
        """Idempotent by stream entry: a result read again after a restart is stored once."""
        with self._tx() as s:
            upsert_values(s, OutcomeRow.__table__, [
                {"channel": r.channel.value, "entry_id": r.entry_id, "key": r.key,
                 "plan_id": r.plan_id,
                 "result": encode_result(r).decode()} for r in results])

    def outcomes(self, plan_ids: Sequence[str]) -> list[DispatchResult]:
        """The outcomes of these plans, in the order the channels finished them."""
        q = select(OutcomeRow).where(col(OutcomeRow.plan_id).in_(plan_ids))
        with self._tx() as s:
            results = [decode_result(row.result) for row in s.exec(q)]
        return sorted(results, key=lambda r: (r.finished_at, r.channel, r.entry_id))


    def save_signal(self, ven_name: str, signal: GridSignal, devices: Sequence[str]) -> None:
        with self._tx() as s:
            upsert_values(s, SignalRow.__table__, [{
                "ven_name": ven_name, "event_id": signal.event_id,
                "modification_number": signal.modification_number,
                "signal_id": signal.signal_id, "signal": _SIGNAL.dump_json(signal).decode(),
                "devices": list(devices)}])

    def forget_signal(self, ven_name: str, signal: GridSignal) -> None:
        with self._tx() as s:
            s.exec(delete(SignalRow).where(
                col(SignalRow.ven_name) == ven_name, col(SignalRow.event_id) == signal.event_id,
                col(SignalRow.modification_number) == signal.modification_number,
                col(SignalRow.signal_id) == signal.signal_id))

    def signals(self) -> list[tuple[str, GridSignal, tuple[str, ...]]]:
        """Every planned signal not yet released: (VEN, signal, devices given a plan)."""
        with self._tx() as s:
            return [(row.ven_name, _SIGNAL.validate_json(row.signal), tuple(row.devices))
                    for row in s.exec(select(SignalRow))]

    def record_power(self, samples: Sequence[PowerSample]) -> None:
        with self._tx() as s:
            upsert_values(s, PowerRow.__table__, [_POWER.dump_python(p) for p in samples])

    def power(self, event_id: str) -> list[PowerSample]:
        q = select(PowerRow).where(PowerRow.event_id == event_id).order_by(col(PowerRow.at))
        with self._tx() as s:
            return [_POWER.validate_python(row.model_dump()) for row in s.exec(q)]


def _plan_record(row: PlanRow) -> PlanRecord:
    dispatch = decode_dispatch(row.dispatch)
    return PlanRecord(plan=dispatch.plan, device=dispatch.device, status=PlanStatus(row.status),
                      created=row.created, reasons=tuple(row.reasons),
                      requested_kw=row.requested_kw)
