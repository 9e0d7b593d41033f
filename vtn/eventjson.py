"""JSON <-> `Event` for the operator API and the store.

One mapping serves both, so what an operator posts is exactly what is stored and shown.
Every error names the JSON field it concerns (`signals[0].intervals[2].duration`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar

from oadr.errors import InvalidData
from oadr.isotime import format_datetime, format_duration, parse_datetime, parse_duration
from oadr.messages import (
    ActivePeriod, Event, EventSignal, EventStatus, Interval, ItemBase, ResponseRequired, Target,
)

T = TypeVar("T")


class FieldError(ValueError):
    """A JSON field is missing or invalid; `field` is its path."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


def _get(obj: Mapping[str, Any], key: str, path: str, conv: Callable[[Any], T],
         default: T | None = None, required: bool = False) -> T | None:
    here = f"{path}{key}"
    if key not in obj or obj[key] is None:
        if required:
            raise FieldError(here, "is required")
        return default
    try:
        return conv(obj[key])
    except FieldError:
        raise
    except (InvalidData, ValueError, TypeError, KeyError) as exc:
        raise FieldError(here, str(exc) or type(exc).__name__) from None


def _duration(v: Any) -> timedelta:
    if isinstance(v, bool):
        raise ValueError("expected an ISO 8601 duration or seconds")
    if isinstance(v, (int, float)):
        if v < 0:
            raise ValueError("must not be negative")
        try:
            return timedelta(seconds=v)
        except OverflowError:
            raise ValueError(f"{v} seconds is too long") from None
    td = parse_duration(str(v))
    if td < timedelta(0):
        raise ValueError("must not be negative")
    return td


def _datetime(v: Any) -> datetime:
    return parse_datetime(str(v))


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError("expected a non-empty string")
    return v


def _strs(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list):
        raise ValueError("expected a list of strings")
    return tuple(_str(s) for s in v)


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError("expected an integer")
    return v


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("expected true or false")
    return v


def _float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError("expected a number")
    return float(v)


def _list(v: Any) -> list[Any]:
    if not isinstance(v, list) or not v:
        raise ValueError("expected a non-empty list")
    return v


def _obj(v: Any) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise ValueError("expected an object")
    return v


def targets_from_json(obj: Mapping[str, Any], path: str = "targets.") -> Target:
    return Target(
        ven_ids=_get(obj, "ven_ids", path, _strs, ()) or (),
        group_ids=_get(obj, "group_ids", path, _strs, ()) or (),
        resource_ids=_get(obj, "resource_ids", path, _strs, ()) or (),
        party_ids=_get(obj, "party_ids", path, _strs, ()) or (),
    )


def targets_to_json(t: Target) -> dict[str, list[str]]:
    return {"ven_ids": list(t.ven_ids), "group_ids": list(t.group_ids),
            "resource_ids": list(t.resource_ids), "party_ids": list(t.party_ids)}


def _item_base(obj: Mapping[str, Any], path: str) -> ItemBase:
    return ItemBase(
        kind=_get(obj, "kind", path, _str, required=True) or "",
        description=_get(obj, "description", path, _str, required=True) or "",
        units=_get(obj, "units", path, _str, required=True) or "",
        si_scale=_get(obj, "si_scale", path, _str, "none") or "none",
        hertz=_get(obj, "hertz", path, _float),
        voltage=_get(obj, "voltage", path, _float),
        ac=_get(obj, "ac", path, _bool),
    )


def _signal(obj: Mapping[str, Any], path: str, index: int) -> EventSignal:
    raw_intervals = _get(obj, "intervals", path, _list, required=True) or []
    intervals = []
    for i, raw in enumerate(raw_intervals):
        ipath = f"{path}intervals[{i}]."
        iv = _get({"i": raw}, "i", ipath[:-1], _obj) or {}
        intervals.append(Interval(
            uid=i,
            duration=_get(iv, "duration", ipath, _duration, required=True) or timedelta(0),
            payload=_get(iv, "payload", ipath, _float, required=True) or 0.0,
        ))
    item = _get(obj, "item_base", path, _obj)
    return EventSignal(
        signal_name=_get(obj, "signal_name", path, _str, required=True) or "",
        signal_type=_get(obj, "signal_type", path, _str, required=True) or "",
        signal_id=_get(obj, "signal_id", path, _str, f"signal-{index}") or f"signal-{index}",
        intervals=tuple(intervals),
        item_base=_item_base(item, f"{path}item_base.") if item is not None else None,
    )


def event_from_json(obj: Mapping[str, Any], *, event_id: str, created: datetime,
                    modification_number: int = 0, status: EventStatus = EventStatus.FAR,
                    modification_reason: str | None = None,
                    modified: datetime | None = None) -> Event:
    """Build an `Event` from the operator's JSON.

    The active period's duration defaults to the longest signal's total; `0` means until
    cancelled.

    Raises:
        FieldError: a field is missing or invalid (the message names it).
    """
    obj = _obj(obj)
    raw_signals = _get(obj, "signals", "", _list, required=True) or []
    signals = tuple(
        _signal(_get({"s": s}, "s", f"signals[{i}]", _obj) or {}, f"signals[{i}].", i)
        for i, s in enumerate(raw_signals)
    )
    total = max(sum((iv.duration for iv in s.intervals), timedelta(0)) for s in signals)
    dtstart = _get(obj, "dtstart", "", _datetime, required=True)
    assert dtstart is not None
    duration = _get(obj, "duration", "", _duration, total)
    assert duration is not None
    try:
        active = ActivePeriod(
            dtstart=dtstart, duration=duration,
            start_after=_get(obj, "start_after", "", _duration),
            notification=_get(obj, "notification", "", _duration),
            ramp_up=_get(obj, "ramp_up", "", _duration),
            recovery=_get(obj, "recovery", "", _duration),
        )
        rr = _get(obj, "response_required", "", ResponseRequired, ResponseRequired.ALWAYS)
        return Event(
            event_id=event_id, modification_number=modification_number,
            market_context=_get(obj, "market_context", "", _str, required=True) or "",
            created=created, status=status, active_period=active, signals=signals,
            targets=targets_from_json(_get(obj, "targets", "", _obj, {}) or {}),
            priority=_get(obj, "priority", "", _int, 0) or 0,
            test_event=_get(obj, "test_event", "", _bool, False) or False,
            modification_reason=modification_reason,
            modification_date_time=modified,
            vtn_comment=_get(obj, "vtn_comment", "", _str),
            response_required=rr or ResponseRequired.ALWAYS,
        )
    except InvalidData as exc:
        raise FieldError("event", exc.description) from None


def _opt_duration(td: timedelta | None) -> str | None:
    return None if td is None else format_duration(td)


def event_to_json(ev: Event) -> dict[str, Any]:
    """The operator-facing JSON of an event; `event_from_json` reads it back."""
    ap = ev.active_period
    out: dict[str, Any] = {
        "event_id": ev.event_id,
        "modification_number": ev.modification_number,
        "modification_reason": ev.modification_reason,
        "market_context": ev.market_context,
        "created": format_datetime(ev.created),
        "priority": ev.priority,
        "test_event": ev.test_event,
        "response_required": str(ev.response_required),
        "vtn_comment": ev.vtn_comment,
        "dtstart": format_datetime(ap.dtstart),
        "duration": format_duration(ap.duration),
        "start_after": _opt_duration(ap.start_after),
        "notification": _opt_duration(ap.notification),
        "ramp_up": _opt_duration(ap.ramp_up),
        "recovery": _opt_duration(ap.recovery),
        "targets": targets_to_json(ev.targets),
        "signals": [
            {
                "signal_name": s.signal_name, "signal_type": s.signal_type,
                "signal_id": s.signal_id,
                "item_base": None if s.item_base is None else {
                    "kind": s.item_base.kind, "description": s.item_base.description,
                    "units": s.item_base.units, "si_scale": s.item_base.si_scale,
                    "hertz": s.item_base.hertz, "voltage": s.item_base.voltage,
                    "ac": s.item_base.ac,
                },
                "intervals": [
                    {"duration": format_duration(iv.duration), "payload": iv.payload}
                    for iv in s.intervals
                ],
            }
            for s in ev.signals
        ],
    }
    return out
