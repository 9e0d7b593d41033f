"""The VTN's OpenADR handlers: one per message type, typed both ways, no XML or HTTP here."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Generic, TypeVar

from oadr import events as ev_time
from oadr.errors import InvalidId, NotAllowed, NotRegisteredOrAuthorized
from oadr.messages import (
    CancelOpt, CanceledOpt, CanceledPartyRegistration, CanceledReport, CancelPartyRegistration,
    CancelReport, CreatedEvent, CreatedOpt, CreatedPartyRegistration, CreatedReport, CreateOpt,
    CreatePartyRegistration, CreateReport, DistributeEvent, EventStatus, Message, Poll,
    QueryRegistration,
    RegisteredReport, RegisterReport, ReportRequest, RequestEvent, RequestReregistration,
    Response, ResponseMessage, ResponseRequired, SpecifierPayload, UpdatedReport, UpdateReport,
)
from oadr.router import Router, on

from .batch import Batch
from .records import (
    Delivery, EventRecord, MetadataReport, OptRecord, OutboxItem, OutboxKind, ReportRequestRecord,
    RegistrationPolicy, ReportValue, ReportVia, VenRecord, VenStatus,
)
from .store import VtnStore
from .targets import live_events_reaching, narrowed


# Reports the DSO asks every VEN for, when the VEN offers them.
REQUESTED_REPORTS = ("TELEMETRY_USAGE", "TELEMETRY_STATUS")


@dataclass(frozen=True, slots=True, kw_only=True)
class VtnConfig:
    vtn_id: str = "ADRGATE-VTN"
    poll_freq: timedelta = timedelta(seconds=10)
    registration_policy: RegistrationPolicy = RegistrationPolicy.OPEN
    report_via: ReportVia = ReportVia.REGISTERED
    report_granularity: timedelta = timedelta(seconds=60)
    secure: bool = False  # mutual TLS: the connection's fingerprint must be the VEN's

    def __post_init__(self) -> None:
        # xs:duration in oadrRequestedOadrPollFreq takes whole seconds only.
        if self.poll_freq < timedelta(seconds=1) or self.poll_freq.microseconds:
            raise ValueError(f"poll frequency must be a whole number of seconds >= 1, "
                             f"not {self.poll_freq.total_seconds()}")


Sent = tuple[str, int, bool]  # an event in a distribute: eventID, modificationNumber, needs ack

M_co = TypeVar("M_co", bound=Message, covariant=True)


@dataclass(frozen=True, slots=True)
class Owed(Generic[M_co]):
    """A message a VEN is owed, and the bookkeeping that records it as sent at a time."""

    message: M_co
    record: Callable[[datetime], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Ctx:
    now: datetime
    tls_fingerprint: str | None = None
    signer: str | None = None


def ok(request_id: str) -> Response:
    return Response(code=200, description="OK", request_id=request_id)


def _nobody() -> None:
    pass


class VtnHandlers(Router[Ctx]):
    def __init__(self, store: VtnStore, config: VtnConfig, new_id: Callable[[], str]) -> None:
        self.store = store
        self.config = config
        self.new_id = new_id
        # called after a VEN is newly owed something: the pusher hooks in here
        self.notify: Callable[[], None] = _nobody
        # oadrCreatedEvents arriving together (a fan-out's answers) share one transaction
        self._answers = Batch(store.record_event_responses_many)
        # venID -> time of its latest poll, not yet written (the app writes them in bulk:
        # a write per poll would double the cost of the commonest message)
        self.polls: dict[str, datetime] = {}

    # --- identity -----------------------------------------------------------------------

    def authenticate(self, ven_id: str | None, ctx: Ctx) -> VenRecord:
        """The registered VEN that sent this message.

        Raises:
            NotRegisteredOrAuthorized: unknown or unregistered venID, or a TLS/signature
                fingerprint that is not this VEN's (463).
        """
        if ven_id is None and ctx.tls_fingerprint is not None:
            ven = self.store.ven_by_fingerprint(ctx.tls_fingerprint)
        else:
            ven = self.store.get_ven(ven_id) if ven_id else None
        return self._admit(ven, ven_id, ctx)

    def _sender(self, ven_id: str | None, ctx: Ctx) -> str:
        """`authenticate` for handlers that need only the venID: the poll hot path's one read
        instead of loading the whole VEN."""
        if ven_id is None:
            return self.authenticate(ven_id, ctx).ven_id
        state = self.store.poll_state(ven_id, ctx.now)
        if not state.registered:
            raise NotRegisteredOrAuthorized(f"venID {ven_id!r} is not registered with this VTN")
        self._check_fingerprints(ven_id, state.fingerprint, ctx)
        return ven_id

    def _admit(self, ven: VenRecord | None, ven_id: str | None, ctx: Ctx) -> VenRecord:
        if ven is None or not ven.is_registered:
            raise NotRegisteredOrAuthorized(f"venID {ven_id!r} is not registered with this VTN")
        self._check_fingerprints(ven.ven_id, ven.fingerprint, ctx)
        return ven

    def _check_fingerprints(self, ven_id: str, registered: str | None, ctx: Ctx) -> None:
        for seen, what in ((ctx.tls_fingerprint, "TLS certificate"), (ctx.signer, "signature")):
            if (self.config.secure or what == "signature") and seen is not None \
                    and registered is not None and seen != registered:
                raise NotRegisteredOrAuthorized(
                    f"the {what} fingerprint {seen} is not the one registered for {ven_id}")
        if self.config.secure and ctx.tls_fingerprint is None:
            raise NotRegisteredOrAuthorized("a client certificate is required")

    # --- registration -------------------------------------------------------------------

    def _registered_reply(self, request_id: str, ven: VenRecord | None) -> CreatedPartyRegistration:
        return CreatedPartyRegistration(
            response=ok(request_id), vtn_id=self.config.vtn_id,
            registration_id=ven.registration_id if ven else None,
            ven_id=ven.ven_id if ven else None, poll_freq=self.config.poll_freq)

    @on(QueryRegistration, CreatedPartyRegistration)
    async def on_query_registration(self, msg: QueryRegistration, ctx: Ctx) -> CreatedPartyRegistration:
        return self._registered_reply(msg.request_id, None)

    @on(CreatePartyRegistration, CreatedPartyRegistration)
    async def on_create_party_registration(
        self, msg: CreatePartyRegistration, ctx: Ctx
    ) -> CreatedPartyRegistration:
        ven = self._find_registrant(msg, ctx)
        fingerprint = ctx.tls_fingerprint or ctx.signer
        if self.config.secure and ven.fingerprint is not None and fingerprint != ven.fingerprint:
            raise NotRegisteredOrAuthorized(
                f"certificate fingerprint {fingerprint} is not provisioned for {ven.ven_name}")
        if ven.status is VenStatus.PENDING:
            self.store.save_ven(ven)
            raise NotAllowed(f"registration of {ven.ven_name} is pending operator approval")
        if not msg.http_pull_model and not msg.transport_address:
            raise NotAllowed("a push VEN must give an oadrTransportAddress")
        registration_id = ven.registration_id if ven.is_registered else self.new_id()
        ven = dataclasses.replace(
            ven, status=VenStatus.REGISTERED, registration_id=registration_id,
            fingerprint=ven.fingerprint or fingerprint, http_pull_model=msg.http_pull_model,
            transport_address=msg.transport_address, xml_signature=msg.xml_signature,
            report_only=msg.report_only, profile_name=msg.profile_name, registered_at=ctx.now)
        self.store.register(ven, live_events_reaching(ven, self.store.list_events(), ctx.now),
                            ctx.now)
        self.notify()
        return self._registered_reply(msg.request_id, ven)

    def _find_registrant(self, msg: CreatePartyRegistration, ctx: Ctx) -> VenRecord:
        """The VEN record a registration request is about, created if the policy allows.

        Raises:
            InvalidId: a venID or registrationID that does not match this VTN's records (452).
            NotRegisteredOrAuthorized: under `allowlist`, a VEN that was not provisioned (463).
        """
        if msg.registration_id is not None:
            ven = self.store.ven_by_registration(msg.registration_id)
            if ven is None or (msg.ven_id is not None and msg.ven_id != ven.ven_id):
                raise InvalidId(f"registrationID {msg.registration_id} does not match")
            return ven
        if msg.ven_id is not None:
            ven = self.store.get_ven(msg.ven_id)
            if ven is None:
                raise InvalidId(f"venID {msg.ven_id} was not allocated by this VTN")
            return ven
        name = msg.ven_name or ""
        ven = self.store.ven_by_name(name) if name else None
        if ven is not None:
            return ven
        policy = self.config.registration_policy
        if policy is RegistrationPolicy.ALLOWLIST or not name:
            raise NotRegisteredOrAuthorized(f"VEN {name!r} is not provisioned on this VTN")
        status = VenStatus.PENDING if policy is RegistrationPolicy.APPROVAL else VenStatus.PROVISIONED
        return VenRecord(ven_id=self.new_id(), ven_name=name, status=status, created=ctx.now,
                         fingerprint=ctx.tls_fingerprint or ctx.signer)

    @on(CancelPartyRegistration, CanceledPartyRegistration)
    async def on_cancel_party_registration(
        self, msg: CancelPartyRegistration, ctx: Ctx
    ) -> CanceledPartyRegistration:
        ven = self.authenticate(msg.ven_id, ctx)
        if msg.registration_id != ven.registration_id:
            raise InvalidId(f"registrationID {msg.registration_id} does not match")
        self._unregister(ven)
        return CanceledPartyRegistration(response=ok(msg.request_id),
                                         registration_id=msg.registration_id, ven_id=ven.ven_id)

    @on(CanceledPartyRegistration, ResponseMessage)
    async def on_canceled_party_registration(
        self, msg: CanceledPartyRegistration, ctx: Ctx
    ) -> ResponseMessage:
        ven = self.authenticate(msg.ven_id, ctx)
        if msg.registration_id is not None and msg.registration_id != ven.registration_id:
            raise InvalidId(f"registrationID {msg.registration_id} does not match")
        if msg.response.code == 200:
            self.store.ack_outbox(ven.ven_id, OutboxKind.CANCEL_REGISTRATION, ctx.now)
            self._unregister(ven)
        return ResponseMessage(response=ok(msg.response.request_id), ven_id=ven.ven_id)

    def _unregister(self, ven: VenRecord) -> None:
        self.store.save_ven(dataclasses.replace(ven, status=VenStatus.CANCELLED,
                                                registration_id=None))

    @on(ResponseMessage, ResponseMessage)
    async def on_response(self, msg: ResponseMessage, ctx: Ctx) -> ResponseMessage:
        ven = self.authenticate(msg.ven_id, ctx)
        return ResponseMessage(response=ok(msg.response.request_id), ven_id=ven.ven_id)

    # --- events -------------------------------------------------------------------------

    def distribute(self, ven: VenRecord, now: datetime) -> DistributeEvent:
        """Every current event of this VEN, rendered for it at `now`, and recorded as sent."""
        owed = self._distribute(ven, now)
        owed.record(now)
        return owed.message

    def _distribute(self, ven: VenRecord, now: datetime) -> Owed[DistributeEvent]:
        message, sent = self.render_distribute(ven, now)
        return Owed(message, partial(self.store.mark_distributed, ven.ven_id, sent))

    def render_distribute(
        self, ven: VenRecord, now: datetime,
        opened: Sequence[tuple[Delivery, EventRecord]] | None = None,
    ) -> tuple[DistributeEvent, list[Sent]]:
        """Every current event of this VEN rendered for it at `now`, and what that sends, for
        `store.mark_distributed`. `opened`: the VEN's `store.ven_events`, when already read."""
        rendered, finished = [], []
        if opened is None:
            opened = self.store.ven_events(ven.ven_id)
        for delivery, record in opened:
            event = ev_time.at(record.event, now)
            acked = delivery.acked_mod >= event.modification_number
            delivered = delivery.delivered_mod >= event.modification_number
            if event.status is EventStatus.COMPLETED or (
                    event.status is EventStatus.CANCELLED and (
                        acked or (delivered and event.response_required is ResponseRequired.NEVER))):
                finished.append(event.event_id)
                continue
            rendered.append(dataclasses.replace(event, targets=narrowed(event.targets, ven)))
        events = ev_time.ordered(rendered)
        self.store.close_finished(ven.ven_id, finished)
        sent = [(e.event_id, e.modification_number, e.response_required is ResponseRequired.ALWAYS)
                for e in events]
        return DistributeEvent(request_id=self.new_id(), vtn_id=self.config.vtn_id,
                               events=tuple(events)), sent

    @on(RequestEvent, DistributeEvent)
    async def on_request_event(self, msg: RequestEvent, ctx: Ctx) -> DistributeEvent:
        ven = self.authenticate(msg.ven_id, ctx)
        reply = self.distribute(ven, ctx.now)
        return dataclasses.replace(reply, response=ok(msg.request_id))

    @on(CreatedEvent, ResponseMessage)
    async def on_created_event(self, msg: CreatedEvent, ctx: Ctx) -> ResponseMessage:
        ven_id = self._sender(msg.ven_id, ctx)
        stranger = await self._answers((ven_id, [
            (a.event_id, a.modification_number, a.opt_type, a.code)
            for a in msg.event_responses], ctx.now))
        if stranger is not None:
            raise InvalidId(f"eventID {stranger} is not an event of {ven_id}")
        return ResponseMessage(response=ok(msg.response.request_id), ven_id=ven_id)

    # --- poll ---------------------------------------------------------------------------

    @on(Poll, DistributeEvent, CreateReport, CancelReport, RequestReregistration,
        CancelPartyRegistration, ResponseMessage)
    async def on_poll(self, msg: Poll, ctx: Ctx) -> object:
        resend_before = ctx.now - 3 * self.config.poll_freq
        state = self.store.poll_state(msg.ven_id, resend_before)
        if not state.registered:
            raise NotRegisteredOrAuthorized(f"venID {msg.ven_id!r} is not registered")
        self._check_fingerprints(msg.ven_id, state.fingerprint, ctx)
        if not state.http_pull_model:
            raise NotAllowed("a push VEN does not poll")
        self.polls[msg.ven_id] = ctx.now
        if state.due or state.outbox:  # rare: now load the whole VEN
            owed = self.owed(self.authenticate(msg.ven_id, ctx), ctx.now, resend_before,
                             distribute=state.due)
            if owed is not None:
                owed.record(ctx.now)
                return owed.message
        return ResponseMessage(response=ok(""), ven_id=msg.ven_id)

    def take_polls(self) -> dict[str, datetime]:
        """The poll times noted since the last call (on the event loop, as polls are noted)."""
        polls, self.polls = self.polls, {}
        return polls

    def owed(self, ven: VenRecord, now: datetime, resend_before: datetime, *,
             distribute: bool) -> Owed[Message] | None:
        """What the VEN gets next (the answer to its poll, or the next push): the distribute
        when one is owed, else the oldest outbox item not sent since `resend_before`; None when
        nothing waits. Nothing is recorded as sent until the caller runs `record`."""
        if distribute:
            return self._distribute(ven, now)
        item = self.store.next_outbox(ven.ven_id, resend_before)
        if item is None:
            return None
        return Owed(self._outbox_message(ven, item), partial(self.store.mark_sent, item.id))

    def _outbox_message(self, ven: VenRecord, item: OutboxItem) -> Message:
        if item.kind is OutboxKind.CREATE_REPORT:
            requests = [r for r in (self.store.get_report_request(i) for i in item.ref.split(","))
                        if r is not None]
            return CreateReport(request_id=self.new_id(), ven_id=ven.ven_id,
                                report_requests=tuple(self._report_request(r) for r in requests))
        if item.kind is OutboxKind.CANCEL_REPORT:
            return CancelReport(request_id=self.new_id(), ven_id=ven.ven_id,
                                report_request_ids=tuple(item.ref.split(",")),
                                report_to_follow=False)
        if item.kind is OutboxKind.REREGISTER:
            return RequestReregistration(ven_id=ven.ven_id)
        return CancelPartyRegistration(request_id=self.new_id(), registration_id=item.ref,
                                       ven_id=ven.ven_id)

    # --- reports ------------------------------------------------------------------------

    @staticmethod
    def _report_request(r: ReportRequestRecord) -> ReportRequest:
        return ReportRequest(
            report_request_id=r.report_request_id, report_specifier_id=r.report_specifier_id,
            granularity=timedelta(seconds=r.granularity_s),
            report_back_duration=timedelta(seconds=r.report_back_s),
            specifiers=tuple(SpecifierPayload(r_id=i) for i in r.r_ids))

    def plan_report_requests(self, ven: VenRecord, metadata: list[MetadataReport],
                             via: ReportVia, now: datetime) -> list[ReportRequestRecord]:
        """Requests for the telemetry reports this VEN offers, at a granularity it supports."""
        planned = []
        for meta in metadata:
            name = meta.report_name.removeprefix("METADATA_")
            if name not in REQUESTED_REPORTS or not meta.descriptions:
                continue
            floor = max((d.min_period for d in meta.descriptions if d.min_period), default=None)
            granularity = max(self.config.report_granularity, floor or timedelta(0))
            planned.append(ReportRequestRecord(
                report_request_id=self.new_id(), ven_id=ven.ven_id,
                report_specifier_id=meta.report_specifier_id, report_name=name,
                granularity_s=int(granularity.total_seconds()),
                report_back_s=int(granularity.total_seconds()),
                r_ids=tuple(d.r_id for d in meta.descriptions), via=str(via), created=now))
        return planned

    @on(RegisterReport, RegisteredReport)
    async def on_register_report(self, msg: RegisterReport, ctx: Ctx) -> RegisteredReport:
        ven = self.authenticate(msg.ven_id, ctx)
        metadata = [MetadataReport(ven_id=ven.ven_id, report_specifier_id=r.report_specifier_id,
                                   report_name=r.report_name, descriptions=r.descriptions)
                    for r in msg.reports if r.is_metadata]
        self.store.save_metadata(metadata)
        resources = {d.resource_id for m in metadata for d in m.descriptions if d.resource_id}
        if not resources <= set(ven.resources):
            ven = dataclasses.replace(ven, resources=tuple(sorted(set(ven.resources) | resources)))
            self.store.save_ven(ven)
        via = self.config.report_via
        planned = self.plan_report_requests(ven, metadata, via, ctx.now)
        self.store.save_report_requests(planned)
        if via is ReportVia.CREATE and planned:
            self.store.enqueue(ven.ven_id, OutboxKind.CREATE_REPORT,
                               ",".join(r.report_request_id for r in planned), ctx.now)
            self.notify()
            planned = []
        return RegisteredReport(response=ok(msg.request_id), ven_id=ven.ven_id,
                                report_requests=tuple(self._report_request(r) for r in planned))

    @on(CreatedReport, ResponseMessage)
    async def on_created_report(self, msg: CreatedReport, ctx: Ctx) -> ResponseMessage:
        ven = self.authenticate(msg.ven_id, ctx)
        self.store.ack_outbox(ven.ven_id, OutboxKind.CREATE_REPORT, ctx.now)
        self.store.set_report_request_status(msg.pending_reports, "active")
        return ResponseMessage(response=ok(msg.response.request_id), ven_id=ven.ven_id)

    @on(UpdateReport, UpdatedReport)
    async def on_update_report(self, msg: UpdateReport, ctx: Ctx) -> UpdatedReport:
        ven = self.authenticate(msg.ven_id, ctx)
        resource_of = {d.r_id: d.resource_id for m in self.store.metadata(ven.ven_id)
                       for d in m.descriptions}
        values = []
        for report in msg.reports:
            request = self.store.get_report_request(report.report_request_id)
            if request is None or request.ven_id != ven.ven_id:
                raise InvalidId(f"reportRequestID {report.report_request_id} is not "
                                f"a request of this VTN to {ven.ven_id}")
            for interval in report.intervals:
                for point in interval.points:
                    values.append(ReportValue(
                        ven_id=ven.ven_id, report_request_id=request.report_request_id,
                        report_specifier_id=report.report_specifier_id, r_id=point.r_id,
                        report_name=report.report_name, dtstart=interval.dtstart,
                        duration_s=interval.duration.total_seconds()
                        if interval.duration is not None else None,
                        resource_id=resource_of.get(point.r_id), value=point.value,
                        status=point.status))
        self.store.add_report_values(values)
        return UpdatedReport(response=ok(msg.request_id), ven_id=ven.ven_id)

    @on(CanceledReport, ResponseMessage)
    async def on_canceled_report(self, msg: CanceledReport, ctx: Ctx) -> ResponseMessage:
        ven = self.authenticate(msg.ven_id, ctx)
        for item in self.store.pending_outbox(ven.ven_id):
            if item.kind is OutboxKind.CANCEL_REPORT:
                self.store.ack_outbox(ven.ven_id, item.kind, ctx.now, ref=item.ref)
                self.store.set_report_request_status(item.ref.split(","), "cancelled")
        return ResponseMessage(response=ok(msg.response.request_id), ven_id=ven.ven_id)

    # --- opt ----------------------------------------------------------------------------

    @on(CreateOpt, CreatedOpt)
    async def on_create_opt(self, msg: CreateOpt, ctx: Ctx) -> CreatedOpt:
        ven = self.authenticate(msg.ven_id, ctx)
        stranger = self.store.save_opt(OptRecord(
            opt_id=msg.opt_id, ven_id=ven.ven_id, opt_type=msg.opt_type,
            opt_reason=str(msg.opt_reason), created=ctx.now, market_context=msg.market_context,
            event_id=msg.event_id, modification_number=msg.modification_number,
            availability=tuple((a.dtstart, a.duration.total_seconds()) for a in msg.availability),
            targets=msg.targets))
        if stranger is not None:
            raise InvalidId(f"eventID {stranger} is not an event of {ven.ven_id}")
        return CreatedOpt(response=ok(msg.request_id), opt_id=msg.opt_id)

    @on(CancelOpt, CanceledOpt)
    async def on_cancel_opt(self, msg: CancelOpt, ctx: Ctx) -> CanceledOpt:
        ven = self.authenticate(msg.ven_id, ctx)
        if not self.store.cancel_opt(ven.ven_id, msg.opt_id, ctx.now):
            raise InvalidId(f"optID {msg.opt_id} is unknown for {ven.ven_id}")
        return CanceledOpt(response=ok(msg.request_id), opt_id=msg.opt_id)
