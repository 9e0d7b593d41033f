"""Event state as seen at a given instant: status, current value, order.

Rules of this file (OpenADR 2.0b profile, section 8.1 and the certification rules):
- eventStatus follows the clock: `far` before the ramp-up window, `near` inside it, `active`
  from dtstart to the end, `completed` after; `cancelled` stays cancelled. A status change is not
  a modification: modificationNumber only moves when the operator changes the event.
- currentValue is 0 unless the event is active, then the payload of the interval containing now.
- A distribute lists active events first, then the others by start time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import datetime, timedelta

from .messages import Event, EventSignal, EventStatus

DEFAULT_NEAR = timedelta(minutes=0)


def status_at(ev: Event, now: datetime) -> EventStatus:
    if ev.status is EventStatus.CANCELLED:
        return EventStatus.CANCELLED
    ap = ev.active_period
    end = ap.end
    if end is not None and now >= end:
        return EventStatus.COMPLETED
    if now >= ap.dtstart:
        return EventStatus.ACTIVE
    if now >= ap.dtstart - (ap.ramp_up or DEFAULT_NEAR):
        return EventStatus.NEAR
    return EventStatus.FAR


def current_payload(signal: EventSignal, dtstart: datetime, now: datetime) -> float:
    """Payload of the interval containing `now`; the last interval of an open-ended event."""
    start = dtstart
    for iv in signal.intervals:
        if iv.duration == timedelta(0) or now < start + iv.duration:
            return iv.payload
        start += iv.duration
    return signal.intervals[-1].payload


def at(ev: Event, now: datetime) -> Event:
    """The event as it must be rendered at `now`: status and currentValue filled in."""
    status = status_at(ev, now)
    active = status is EventStatus.ACTIVE
    signals = tuple(
        dataclasses.replace(
            s, current_value=current_payload(s, ev.active_period.dtstart, now) if active else 0.0)
        for s in ev.signals
    )
    return dataclasses.replace(ev, status=status, signals=signals)


def ordered(events: Iterable[Event]) -> list[Event]:
    """Active events first, then by start time (then by ID, for a stable order)."""
    return sorted(events, key=lambda e: (e.status is not EventStatus.ACTIVE,
                                         e.active_period.dtstart, e.event_id))
