"""SQLModel tables of the CMB store, in the VTN's metadata (one schema, one `create_all`).

Records travel as JSON bodies (their pydantic form), with the columns the queries filter on
beside them. Only `vtn.cmb.store` uses these.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column
from sqlalchemy import DateTime as SaDateTime
from sqlmodel import Field, SQLModel


def _ts(index: bool = False) -> Any:
    return Field(default=None, sa_column=Column(SaDateTime(timezone=True), nullable=True,
                                                index=index))


def _json() -> Any:
    return Field(default=None, sa_column=Column(JSON, nullable=True))


class CmbAggregatorRow(SQLModel, table=True):
    __tablename__ = "cmb_aggregator"
    aggregator: str = Field(primary_key=True)
    body: dict[str, Any] | None = _json()


class CmbDeviceRow(SQLModel, table=True):
    __tablename__ = "cmb_device"
    device_id: str = Field(primary_key=True)
    owner: str = Field(index=True)
    body: dict[str, Any] | None = _json()


class CmbSequenceRow(SQLModel, table=True):
    """The highest accepted plan sequence per device (kept when the registry changes)."""

    __tablename__ = "cmb_sequence"
    device_id: str = Field(primary_key=True)
    sequence: int


class CmbVerdictRow(SQLModel, table=True):
    __tablename__ = "cmb_verdict"
    id: int | None = Field(default=None, primary_key=True)
    plan_id: str = Field(index=True)
    device_id: str = Field(index=True)
    aggregator: str = Field(index=True)
    decision: str
    release: str
    at: datetime | None = _ts()
    body: dict[str, Any] | None = _json()


class CmbAlertRow(SQLModel, table=True):
    __tablename__ = "cmb_alert"
    alert_id: str = Field(primary_key=True)
    monitor: str
    aggregator: str | None = Field(default=None, index=True)
    at: datetime | None = _ts(index=True)
    body: dict[str, Any] | None = _json()


class CmbOverrideRow(SQLModel, table=True):
    __tablename__ = "cmb_override"
    override_id: str = Field(primary_key=True)
    status: str = Field(index=True)
    created: datetime | None = _ts()
    body: dict[str, Any] | None = _json()
    results: list[Any] | None = _json()  # the paths' outcomes, apply then lift


class CmbPrognosisRow(SQLModel, table=True):
    """The latest prognosis per aggregator and network area (a new one replaces it)."""

    __tablename__ = "cmb_prognosis"
    aggregator: str = Field(primary_key=True)
    network_area: str = Field(primary_key=True)
    body: dict[str, Any] | None = _json()


class CmbTariffRow(SQLModel, table=True):
    __tablename__ = "cmb_tariff"
    tariff_id: str = Field(primary_key=True)
    body: dict[str, Any] | None = _json()


class CmbAuditRow(SQLModel, table=True):
    """Append-only: the store inserts and reads, never updates or deletes."""

    __tablename__ = "cmb_audit"
    id: int | None = Field(default=None, primary_key=True)
    at: datetime | None = _ts(index=True)
    actor: str
    action: str = Field(index=True)
    subject: str
    detail: dict[str, Any] | None = _json()
