"""Operator actions on the VTN: events, VENs, programs, report requests.

The API and the CLI (through the API) call these; they validate, decide the audience and write
the store in one go, so an invalid request changes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from oadr import codec, conformance
from oadr import events as ev_time
from oadr.messages import DistributeEvent, Event, EventStatus

from .eventjson import FieldError, event_from_json
from .handlers import VtnConfig, VtnHandlers
from .records import EventRecord, OutboxKind, ReportRequestRecord, VenRecord, VenStatus
from .store import VtnStore
from .targets import audience, live_events_reaching, narrowed


class Conflict(ValueError):
    """The request contradicts current state (HTTP 409)."""


class NotFound(KeyError):
    """No such object (HTTP 404)."""


# Freshness of createdDateTime is a property of when a message is sent, not of the event.
_TIMELESS_RULES = {"event.created-date-time"}
# Conformance rules one signal can break, and the part of its JSON (`signals[i].<part>`) named.
_SIGNAL_FIELDS = {"event.signal-type": "signal_type", "event.signal-unit": "item_base",
                  "event.simple-payload": "intervals", "event.duration-sum": "intervals",
                  "event.payload-count": "intervals"}


class Operator:
    def __init__(self, store: VtnStore, config: VtnConfig, handlers: VtnHandlers,
                 new_id: Callable[[], str]) -> None:
        self.store = store
        self.config = config
        self.handlers = handlers
        self.new_id = new_id

    # --- events -------------------------------------------------------------------------

    def _validate(self, ev: Event, now: datetime) -> None:
        """Refuse an event that would not pass the certification rules when delivered.

        Raises:
            FieldError: the first rule the event breaks, by name.
        """
        if ev.active_period.end is not None and ev.active_period.end <= now \
                and ev.status is not EventStatus.CANCELLED:
            raise FieldError("dtstart", "the event would already be over")
        problems = self._violations(ev, now)
        if problems:
            raise FieldError(self._field_of(ev, problems[0].rule, now),
                             "; ".join(f"{p.rule}: {p.message}" for p in problems))

    def _violations(self, ev: Event, now: datetime) -> list[conformance.Violation]:
        probe = dataclasses.replace(ev_time.at(ev, now), targets=narrowed(ev.targets, _PROBE_VEN))
        xml = codec.serialize(DistributeEvent(request_id="validation", vtn_id=self.config.vtn_id,
                                              events=(probe,)))
        return [v for v in conformance.check(xml, now=now) if v.rule not in _TIMELESS_RULES]

    def _field_of(self, ev: Event, rule: str, now: datetime) -> str:
        """The JSON field a broken rule concerns: `signals[i].<part>` of the first signal that
        breaks it on its own, else the whole event."""
        part = _SIGNAL_FIELDS.get(rule)
        for i, signal in enumerate(ev.signals if part else ()):
            if any(v.rule == rule for v in self._violations(
                    dataclasses.replace(ev, signals=(signal,)), now)):
                return f"signals[{i}].{part}"
        return "event"

    def _check_overlap(self, ev: Event, ven_ids: list[str]) -> None:
        """No two live events of one market context may overlap for the same VEN."""
        mine = set(ven_ids)
        start, end = ev.active_period.dtstart, ev.active_period.end
        for other in self.store.list_events():
            o = other.event
            if other.cancelled or o.event_id == ev.event_id or o.market_context != ev.market_context:
                continue
            o_end = o.active_period.end
            if (end is None or o.active_period.dtstart < end) and (o_end is None or start < o_end):
                shared = mine & {d.ven_id for d in self.store.deliveries_for_event(o.event_id)
                                 if not d.removed}
                if shared:
                    raise Conflict(f"overlaps event {o.event_id} in {o.market_context} "
                                   f"for {sorted(shared)[:3]}")

    def _publish(self, ev: Event, now: datetime, *, cancelled: bool = False) -> EventRecord:
        ven_ids = audience(ev.targets, ev.market_context,
                           [v for v in self.store.list_vens() if v.is_registered
                            or v.status is VenStatus.PROVISIONED])
        if not cancelled:
            self._validate(ev, now)
            self._check_overlap(ev, ven_ids)
        self.store.save_event(ev, ven_ids, cancelled=cancelled)
        self.handlers.notify()
        return EventRecord(event=ev, cancelled=cancelled)

    def create_event(self, body: Mapping[str, Any], now: datetime) -> EventRecord:
        """Raises: FieldError (400), Conflict (409)."""
        event_id = body.get("event_id") or self.new_id()
        if not isinstance(event_id, str):
            raise FieldError("event_id", "expected a string")
        if self.store.get_event(event_id) is not None:
            raise Conflict(f"event {event_id} exists; modify it instead")
        return self._publish(event_from_json(body, event_id=event_id, created=now), now)

    def _current(self, event_id: str) -> EventRecord:
        rec = self.store.get_event(event_id)
        if rec is None:
            raise NotFound(f"no event {event_id}")
        return rec

    def modify_event(self, event_id: str, body: Mapping[str, Any], now: datetime) -> EventRecord:
        """Replace an event's definition; modificationNumber + 1. Raises: NotFound, FieldError,
        Conflict."""
        rec = self._current(event_id)
        if rec.cancelled:
            raise Conflict(f"event {event_id} is cancelled")
        reason = body.get("modification_reason")
        if reason is not None and not isinstance(reason, str):
            raise FieldError("modification_reason", "expected a string")
        ev = event_from_json(body, event_id=event_id, created=rec.event.created,
                             modification_number=rec.event.modification_number + 1,
                             modification_reason=reason, modified=now)
        return self._publish(ev, now)

    def cancel_event(self, event_id: str, now: datetime, reason: str | None = None) -> EventRecord:
        """Cancel: modificationNumber + 1, status cancelled, delivered until acknowledged."""
        rec = self._current(event_id)
        if rec.cancelled:
            return rec
        ev = dataclasses.replace(rec.event, status=EventStatus.CANCELLED,
                                 modification_number=rec.event.modification_number + 1,
                                 modification_reason=reason or "cancelled",
                                 modification_date_time=now)
        return self._publish(ev, now, cancelled=True)

    def get_event(self, event_id: str) -> EventRecord:
        return self._current(event_id)

    # --- VENs ---------------------------------------------------------------------------

    def ven(self, ven_id: str) -> VenRecord:
        ven = self.store.get_ven(ven_id)
        if ven is None:
            raise NotFound(f"no VEN {ven_id}")
        return ven

    def provision_ven(self, *, ven_name: str, now: datetime, ven_id: str | None = None,
                      fingerprint: str | None = None, **attrs: Any) -> VenRecord:
        """Allow a VEN (allowlist), optionally with a pre-allocated venID. Raises: Conflict."""
        if self.store.ven_by_name(ven_name) is not None:
            raise Conflict(f"a VEN named {ven_name} exists")
        if ven_id is not None and self.store.get_ven(ven_id) is not None:
            raise Conflict(f"venID {ven_id} is taken")
        return self.store.save_ven(VenRecord(
            ven_id=ven_id or self.new_id(), ven_name=ven_name, status=VenStatus.PROVISIONED,
            fingerprint=fingerprint, created=now, **attrs))

    def update_ven(self, ven_id: str, now: datetime, **attrs: Any) -> VenRecord:
        """Change a VEN's programs, groups, resources, party or fingerprint; live events that
        now reach it are owed to it."""
        ven = self.store.save_ven(dataclasses.replace(self.ven(ven_id), **attrs))
        self.store.add_deliveries(ven_id, live_events_reaching(ven, self.store.list_events(), now))
        self.handlers.notify()
        return ven

    def approve_ven(self, ven_id: str) -> VenRecord:
        ven = self.ven(ven_id)
        if ven.status is not VenStatus.PENDING:
            raise Conflict(f"VEN {ven_id} is {ven.status}, not pending")
        return self.store.save_ven(dataclasses.replace(ven, status=VenStatus.PROVISIONED))

    def _registered(self, ven_id: str) -> VenRecord:
        ven = self.ven(ven_id)
        if not ven.is_registered:
            raise Conflict(f"VEN {ven_id} is not registered")
        return ven

    def request_reregistration(self, ven_id: str, now: datetime) -> None:
        self._queue(self._registered(ven_id).ven_id, OutboxKind.REREGISTER, "", now)

    def cancel_registration(self, ven_id: str, now: datetime) -> None:
        ven = self._registered(ven_id)
        self._queue(ven.ven_id, OutboxKind.CANCEL_REGISTRATION, ven.registration_id or "", now)

    def _queue(self, ven_id: str, kind: OutboxKind, ref: str, now: datetime) -> None:
        self.store.enqueue(ven_id, kind, ref, now)
        self.handlers.notify()

    # --- reports ------------------------------------------------------------------------

    def request_reports(self, ven_id: str, now: datetime) -> list[ReportRequestRecord]:
        """Ask a VEN for its telemetry reports now, with oadrCreateReport on its next poll."""
        from .records import ReportVia

        ven = self._registered(ven_id)
        planned = self.handlers.plan_report_requests(ven, self.store.metadata(ven_id),
                                                     ReportVia.CREATE, now)
        if not planned:
            raise Conflict(f"VEN {ven_id} has registered no telemetry reports")
        self.store.save_report_requests(planned)
        self._queue(ven_id, OutboxKind.CREATE_REPORT,
                    ",".join(r.report_request_id for r in planned), now)
        return planned

    def cancel_report(self, report_request_id: str, now: datetime) -> ReportRequestRecord:
        rq = self.store.get_report_request(report_request_id)
        if rq is None:
            raise NotFound(f"no report request {report_request_id}")
        self.store.set_report_request_status([report_request_id], "cancelling")
        self._queue(rq.ven_id, OutboxKind.CANCEL_REPORT, report_request_id, now)
        return dataclasses.replace(rq, status="cancelling")


_PROBE_VEN = VenRecord(ven_id="validation-probe", ven_name="validation-probe",
                       status=VenStatus.REGISTERED)
