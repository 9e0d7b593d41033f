"""The harness VTN's decisions, sans-IO: what it answers each message of the VEN under test.

Rules of this file:
- No I/O and no clock: `take(service, body, now)` parses one message, decides the reply and
  logs both as an `Inbound`; the aiohttp view (campaign/asvtn.py) only moves bytes.
- One VEN under test, one registration. What the cases ask of the VEN waits in `queue` for its
  next polls (pull) or is pushed by the harness (push); `events` is what every
  oadrDistributeEvent carries (all events that apply, so a missing one is cancelled).
- A misbehaving VEN gets the OpenADR code it deserves and the harness serves on: unreadable
  bytes an HTTP 400, invalid data 454, unknown IDs 452, not registered 463, a payload a VEN does
  not send 453, a poll from a push VEN 451.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from lxml import etree

from oadr import codec
from oadr.errors import (
    AdrError, InvalidData, InvalidId, MalformedMessage, NotAllowed, NotRecognized,
    NotRegisteredOrAuthorized,
)
from oadr.events import at, ordered
from oadr.messages import (
    SERVICE_OF, CanceledOpt, CanceledPartyRegistration, CanceledReport, CancelOpt,
    CancelPartyRegistration, CreatedEvent, CreatedOpt, CreatedPartyRegistration, CreatedReport,
    CreateOpt, CreatePartyRegistration, DistributeEvent, Event, Message, Poll, QueryRegistration,
    RegisteredReport, RegisterReport, Report, ReportRequest, RequestEvent, Response,
    ResponseMessage, UpdatedReport, UpdateReport, error_response,
)
from oadr.signing import Verified

Verify = Callable[[etree._Element], Verified | None]


@dataclass(frozen=True, slots=True)
class Registration:
    ven_id: str
    registration_id: str
    ven_name: str | None
    pull: bool
    transport_address: str | None
    at: datetime


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message from the VEN and the harness's answer to it."""

    seq: int
    at: datetime
    service: str
    body: bytes
    message: Message | None  # None: unreadable
    reply: Message | None  # None: answered at HTTP level (`status`, `problem`)
    status: int = 200
    problem: str = ""  # why the message was refused
    signed: bool = False
    delivered: Message | None = None  # what a poll fetched from the queue


@dataclass(slots=True)
class VtnCore:
    vtn_id: str
    poll_freq: timedelta
    new_id: Callable[[], str]
    registration: Registration | None = None
    metadata: tuple[Report, ...] = ()  # the VEN's last oadrRegisterReport
    queue: deque[Message] = field(default_factory=deque)
    events: dict[str, Event] = field(default_factory=dict)
    sent_events: set[str] = field(default_factory=set)  # every eventID ever distributed
    requested: dict[str, ReportRequest] = field(default_factory=dict)  # by reportRequestID
    registered_requests: list[ReportRequest] = field(default_factory=list)  # next RegisteredReport
    opts: set[str] = field(default_factory=set)
    log: list[Inbound] = field(default_factory=list)

    # --- what the harness sends ---------------------------------------------------------

    def distribute(self, now: datetime) -> DistributeEvent:
        """An oadrDistributeEvent carrying every current event, as it stands at `now`."""
        return DistributeEvent(request_id=self.new_id(), vtn_id=self.vtn_id,
                               events=tuple(ordered(at(e, now) for e in self.events.values())))

    def note_sent(self, msg: Message) -> None:
        """Remember what a sent request names, so the VEN's answers can be told from strays."""
        if isinstance(msg, DistributeEvent):
            self.sent_events.update(e.event_id for e in msg.events)
        for req in getattr(msg, "report_requests", ()):
            self.requested[req.report_request_id] = req

    # --- what the VEN sends -------------------------------------------------------------

    def take(self, service: str, body: bytes, now: datetime,
             verify: Verify | None = None) -> Inbound:
        """Read one message the VEN POSTed on `service` and decide the answer; never raises for
        the VEN's faults."""
        seq = len(self.log)
        message: Message | None = None
        delivered: Message | None = None
        signed = False
        try:
            received = codec.parse(body, verify=verify)
            message, signed = received.message, received.signature is not None
            if not isinstance(message, ResponseMessage) and SERVICE_OF[type(message)] != service:
                raise NotRecognized(f"{type(message).__name__} does not belong on {service}")
            reply = self._answer(message, now)
            if isinstance(message, Poll) and not isinstance(reply, ResponseMessage):
                delivered = reply
        except MalformedMessage as exc:
            inbound = Inbound(seq, now, service, body, message, None, status=exc.http_status,
                              problem=str(exc))
            self.log.append(inbound)
            return inbound
        except AdrError as exc:
            reply = error_response(exc, request_id=getattr(message, "request_id", "") or "",
                                   ven_id=getattr(message, "ven_id", None))
        inbound = Inbound(seq, now, service, body, message, reply, signed=signed,
                          problem=_problem(reply), delivered=delivered)
        self.log.append(inbound)
        return inbound

    def _answer(self, msg: Message, now: datetime) -> Message:
        if isinstance(msg, QueryRegistration):
            reg = self.registration
            return CreatedPartyRegistration(
                response=Response(request_id=msg.request_id), vtn_id=self.vtn_id,
                registration_id=reg.registration_id if reg else None,
                ven_id=reg.ven_id if reg else None, poll_freq=self.poll_freq)
        if isinstance(msg, CreatePartyRegistration):
            return self._register(msg, now)
        reg = self._registered(msg)
        ok = Response(request_id=getattr(msg, "request_id", "") or "")
        if isinstance(msg, Poll):
            if not reg.pull:
                raise NotAllowed("a push VEN does not poll: it registered oadrHttpPullModel "
                                 "false")
            if self.queue:
                return self.queue.popleft()
            return ResponseMessage(response=Response(request_id=""), ven_id=reg.ven_id)
        if isinstance(msg, RequestEvent):
            distribute = DistributeEvent(request_id=msg.request_id, vtn_id=self.vtn_id,
                                         events=self.distribute(now).events)
            self.note_sent(distribute)
            return distribute
        if isinstance(msg, CreatedEvent):
            unknown = sorted({r.event_id for r in msg.event_responses} - self.sent_events)
            if unknown:
                raise InvalidId(f"no event {', '.join(unknown)} was sent to this VEN",
                                request_id=msg.response.request_id)
            return ResponseMessage(response=Response(request_id=msg.response.request_id),
                                   ven_id=reg.ven_id)
        if isinstance(msg, RegisterReport):
            self.metadata = msg.reports
            requests, self.registered_requests = tuple(self.registered_requests), []
            for req in requests:
                self.requested[req.report_request_id] = req
            return RegisteredReport(response=ok, ven_id=reg.ven_id, report_requests=requests)
        if isinstance(msg, CreatedReport | CanceledReport):
            return ResponseMessage(response=Response(request_id=msg.response.request_id),
                                   ven_id=reg.ven_id)
        if isinstance(msg, UpdateReport):
            unknown = sorted({r.report_request_id for r in msg.reports} - set(self.requested))
            if unknown:
                raise InvalidId(f"no report request {', '.join(unknown)} was made",
                                request_id=msg.request_id)
            return UpdatedReport(response=ok, ven_id=reg.ven_id)
        if isinstance(msg, CreateOpt):
            self.opts.add(msg.opt_id)
            return CreatedOpt(response=ok, opt_id=msg.opt_id)
        if isinstance(msg, CancelOpt):
            if msg.opt_id not in self.opts:
                raise InvalidId(f"no opt {msg.opt_id} was created", request_id=msg.request_id)
            return CanceledOpt(response=ok, opt_id=msg.opt_id)
        if isinstance(msg, CancelPartyRegistration):
            if msg.registration_id != reg.registration_id:
                raise InvalidId(f"registrationID {msg.registration_id} is not "
                                f"{reg.registration_id}", request_id=msg.request_id)
            self.registration = None
            return CanceledPartyRegistration(response=ok, registration_id=reg.registration_id,
                                             ven_id=reg.ven_id)
        if isinstance(msg, CanceledPartyRegistration):
            # The VEN confirms the cancellation the harness asked for: it is no longer registered.
            self.registration = None
            return ResponseMessage(response=Response(request_id=msg.response.request_id),
                                   ven_id=reg.ven_id)
        if isinstance(msg, ResponseMessage):  # e.g. acknowledging oadrRequestReregistration
            return ResponseMessage(response=Response(request_id=msg.response.request_id),
                                   ven_id=reg.ven_id)
        raise NotRecognized(f"a VEN does not send {type(msg).__name__}")

    def _register(self, msg: CreatePartyRegistration, now: datetime) -> CreatedPartyRegistration:
        reg = self.registration
        if msg.registration_id and (reg is None or msg.registration_id != reg.registration_id):
            raise InvalidId(f"registrationID {msg.registration_id} was not given by this VTN",
                            request_id=msg.request_id)
        if reg is not None and msg.ven_id and msg.ven_id != reg.ven_id:
            raise InvalidId(f"venID {msg.ven_id} is not the registered {reg.ven_id}",
                            request_id=msg.request_id)
        if not msg.http_pull_model and not msg.transport_address:
            raise InvalidData("a push VEN (oadrHttpPullModel false) must give "
                              "oadrTransportAddress", request_id=msg.request_id)
        if msg.profile_name != "2.0b" or msg.transport_name != "simpleHttp":
            raise InvalidData(f"this VTN serves profile 2.0b over simpleHttp, not "
                              f"{msg.profile_name} over {msg.transport_name}",
                              request_id=msg.request_id)
        ven_id = reg.ven_id if reg else msg.ven_id or self.new_id()
        registration_id = reg.registration_id if reg else self.new_id()
        self.registration = Registration(
            ven_id=ven_id, registration_id=registration_id, ven_name=msg.ven_name,
            pull=msg.http_pull_model, transport_address=msg.transport_address, at=now)
        return CreatedPartyRegistration(
            response=Response(request_id=msg.request_id), vtn_id=self.vtn_id,
            registration_id=registration_id, ven_id=ven_id, poll_freq=self.poll_freq)

    def _registered(self, msg: Message) -> Registration:
        reg = self.registration
        if reg is None:
            raise NotRegisteredOrAuthorized("not registered with this VTN")
        ven_id = getattr(msg, "ven_id", None)
        if ven_id is not None and ven_id != reg.ven_id:
            raise InvalidId(f"venID {ven_id} is not the registered {reg.ven_id}")
        return reg


def _problem(reply: Message) -> str:
    response = getattr(reply, "response", None)
    if isinstance(response, Response) and response.code != 200:
        return f"{response.code} {response.description}"
    return ""
