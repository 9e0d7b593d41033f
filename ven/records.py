"""Typed records of a VEN's state: what the agent keeps, the store persists and the bridge reads.

No ORM rows and no openleadr dicts leave the store; these are the only shapes that travel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from oadr.messages import CreateOpt, Event, OptType, ReportRequest


class Purpose(StrEnum):
    """PAS 1879: routine DSR (scheduled, price-led: devices randomise their start) or response
    DSR (dispatched inside a grid-service window: no random delay)."""

    ROUTINE = "routine"
    RESPONSE = "response"


@dataclass(frozen=True, slots=True, kw_only=True)
class SignalInterval:
    start: datetime  # absolute UTC
    end: datetime | None  # None: until the event is cancelled
    value: float


@dataclass(frozen=True, slots=True, kw_only=True)
class GridSignal:
    """One event signal, neutral of OpenADR, as the bridge consumes it."""

    program: str  # marketContext
    event_id: str
    modification_number: int
    priority: int  # lower number wins; 0 = no priority (lowest)
    signal_name: str  # SIMPLE, LOAD_CONTROL, LOAD_DISPATCH, ELECTRICITY_PRICE, ...
    signal_type: str  # level, x-loadControlCapacity, setpoint, price, ...
    signal_id: str
    unit: str | None  # e.g. "kW", "GBP/kWh"; None for levels and ratios
    intervals: tuple[SignalInterval, ...]
    resources: tuple[str, ...]  # this VEN's resourceIDs the event reaches
    purpose: Purpose
    start_offsets: tuple[tuple[str, timedelta], ...] = ()  # per resource randomised start
    ramp_up: timedelta | None = None  # devices may start moving this long before the start
    recovery: timedelta | None = None  # and take this long to return to normal after the end
    test_event: bool = False

    def offset(self, resource_id: str) -> timedelta:
        return dict(self.start_offsets).get(resource_id, timedelta(0))

    def schedule(self, resource_id: str) -> tuple[SignalInterval, ...]:
        """The intervals as one resource executes them: shifted by its randomised start."""
        shift = self.offset(resource_id)
        return tuple(SignalInterval(start=i.start + shift,
                                    end=None if i.end is None else i.end + shift, value=i.value)
                     for i in self.intervals)


class RegState(StrEnum):
    UNREGISTERED = "unregistered"
    QUERIED = "queried"  # the VTN answered oadrQueryRegistration
    REGISTERED = "registered"  # holds a registrationID; reports not yet registered
    READY = "ready"  # reports registered; events requested; polling
    CANCELLED = "cancelled"  # the VTN cancelled the registration: stay quiet until restarted


@dataclass(frozen=True, slots=True, kw_only=True)
class Registration:
    state: RegState = RegState.UNREGISTERED
    vtn_id: str | None = None
    ven_id: str | None = None
    registration_id: str | None = None
    poll_freq: timedelta | None = None
    resync: bool = False  # ask for all events (oadrRequestEvent) before the next poll


@dataclass(frozen=True, slots=True, kw_only=True)
class VenEvent:
    """An event this VEN received, with its answer and the VTN's acknowledgement of it."""

    event: Event
    received: datetime
    request_id: str  # of the oadrDistributeEvent that brought this modification (echoed back)
    opt: OptType
    opt_reason: str  # why the policy decided so, for status and logs
    response_code: int = 200  # 200, or 460 for an unsupported signal
    answered_mod: int = -1  # modificationNumber the VTN acknowledged our oadrCreatedEvent for
    start_offsets: tuple[tuple[str, timedelta], ...] = ()  # per resource randomised start


@dataclass(frozen=True, slots=True, kw_only=True)
class OptState:
    """An oadrCreateOpt we sent (or must send), and whether it has been withdrawn."""

    opt: CreateOpt
    acked: bool = False
    cancelled: bool = False
    cancel_acked: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestState:
    """A report request the VTN made, with its schedule."""

    request: ReportRequest
    report_name: str  # e.g. TELEMETRY_USAGE, HISTORY_USAGE
    created: datetime
    next_sample: datetime | None
    next_report: datetime | None  # None: nothing more to send (one-shot done)
    one_shot: bool = False
    sent: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    """One telemetry reading of one report data point, kept for HISTORY_USAGE."""

    r_id: str
    at: datetime
    value: float | None = None
    online: bool | None = None
    manual_override: bool | None = None


@dataclass(slots=True, kw_only=True)
class VenSnapshot:
    """Everything persisted for one VEN, as loaded at start."""

    registration: Registration = field(default_factory=Registration)
    events: dict[str, VenEvent] = field(default_factory=dict)
    opts: dict[str, OptState] = field(default_factory=dict)
    requests: dict[str, RequestState] = field(default_factory=dict)


@dataclass(slots=True)
class Changes:
    """State changes not yet written; the store applies them in one transaction. Later changes
    to the same record replace earlier ones, so a burst of updates costs one write."""

    registration: Registration | None = None
    events: dict[str, VenEvent] = field(default_factory=dict)
    dropped_events: set[str] = field(default_factory=set)
    opts: dict[str, OptState] = field(default_factory=dict)
    requests: dict[str, RequestState] = field(default_factory=dict)
    dropped_requests: set[str] = field(default_factory=set)
    samples: list[Sample] = field(default_factory=list)

    def empty(self) -> bool:
        return (self.registration is None and not self.events and not self.dropped_events
                and not self.opts and not self.requests and not self.dropped_requests
                and not self.samples)

    def update(self, newer: Changes) -> None:
        """Lay `newer` changes over these (a failed write's changes, kept for the next one)."""
        if newer.registration is not None:
            self.registration = newer.registration
        for ve in newer.events.values():
            self.put_event(ve)
        for event_id in newer.dropped_events:
            self.drop_event(event_id)
        self.opts.update(newer.opts)
        for state in newer.requests.values():
            self.put_request(state)
        for rid in newer.dropped_requests:
            self.drop_request(rid)
        self.samples += newer.samples

    def put_event(self, ve: VenEvent) -> None:
        self.events[ve.event.event_id] = ve
        self.dropped_events.discard(ve.event.event_id)

    def drop_event(self, event_id: str) -> None:
        self.events.pop(event_id, None)
        self.dropped_events.add(event_id)

    def put_opt(self, st: OptState) -> None:
        self.opts[st.opt.opt_id] = st

    def put_request(self, state: RequestState) -> None:
        self.requests[state.request.report_request_id] = state
        self.dropped_requests.discard(state.request.report_request_id)

    def drop_request(self, rid: str) -> None:
        self.requests.pop(rid, None)
        self.dropped_requests.add(rid)
