"""One VEN's OpenADR 2.0b behaviour, sans-IO: what to send next and what each reply changes.

Rules of this file:
- No I/O and no clock: `now`, the random source, new IDs and the history reader are given.
- Level-triggered: the next message is derived from state (not yet registered, an event not yet
  answered, an opt not yet acknowledged, a report due, a poll due), never taken from a queue of
  built messages. A failed send loses nothing and a restart derives the same message again.
  Only answers to requests the VTN made on a poll are queued (`answers`).
- Registration steps are data (`states.REG_NEXT`, `states.REG_AFTER`); a reply of the wrong kind for the
  state is refused like any malformed reply.
- Every state change goes through `_put_*`/`_drop_*`, which record it in `pending` for the store;
  the caller flushes `take_changes()` after each exchange.
- A push VEN (`push_address` given) gets the VTN's requests by `on_pushed` instead of on polls,
  and takes them in the same way; with the configured fallback, a long silence makes it
  register again as a pull VEN.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple, cast

from oadr.errors import AdrError, InvalidId, NotAllowed, NotRegisteredOrAuthorized
from oadr.events import status_at
from oadr.messages import (
    SERVICE_OF, Availability, CancelOpt, CanceledPartyRegistration, CanceledReport, CancelPartyRegistration,
    CancelReport, CreatedEvent, CreatedOpt, CreatedPartyRegistration, CreatedReport, CreateOpt,
    CreatePartyRegistration, CreateReport, DistributeEvent, Event, EventResponse, EventStatus,
    Message, OptReason, OptType, Poll, QueryRegistration, RegisteredReport, RegisterReport,
    ReportRequest, RequestEvent, RequestReregistration, Response, ResponseMessage, ResponseRequired, Target,
    UpdatedReport, UpdateReport, error_response,
)
from policies.flexibility import OptDecision, decide, unavailable

from . import reports
from .fleet import VenSpec
from .records import (
    Changes, GridSignal, OptState, RegState, RequestState, Sample, VenEvent,
    VenSnapshot,
)
from .signals import grid_signals, reached_resources, signals_of, start_offsets, unsupported
from .states import REG_AFTER, REG_NEXT, backoff

History = Callable[[Sequence[str], datetime, datetime], Sequence[Sample]]

# What a VTN may push to a VEN: what it may answer a poll with (oadrResponse aside).
PUSHED = (DistributeEvent, CreateReport, CancelReport, RequestReregistration,
          CancelPartyRegistration, RegisterReport)


class Outgoing(NamedTuple):
    message: Message
    service: str  # simpleHttp endpoint: EiEvent, EiReport, ...


class BadReply(Exception):
    """The VTN answered with something that is not a reply to what we sent."""


def _response(msg: Message) -> Response | None:
    response = getattr(msg, "response", None)
    return response if isinstance(response, Response) else None


def _code(msg: Message) -> int | None:
    response = _response(msg)
    return None if response is None else response.code


@dataclass(slots=True)
class _Inflight:
    """What a sent message will settle when its reply comes."""

    events: tuple[tuple[str, int], ...] = ()  # (event_id, modificationNumber) answered
    report: RequestState | None = None  # the request's next state once the update is taken
    keep_from: datetime | None = None  # buffered samples from here on are for the next update


class VenAgent:
    def __init__(self, spec: VenSpec, snapshot: VenSnapshot, *, rng: random.Random,
                 new_id: Callable[[], str], telemetry: reports.TelemetrySource,
                 history: History, push_address: str | None = None) -> None:
        self.spec = spec
        self.push_address = push_address  # our oadrTransportAddress; None: we poll
        self.reg = snapshot.registration
        self.events = snapshot.events
        self.opts = snapshot.opts
        self.requests = snapshot.requests
        self.rng = rng
        self.new_id = new_id
        self.telemetry = telemetry
        self.history = history
        self.log = logging.LoggerAdapter(logging.getLogger("adrgate.ven"), {"ven": spec.name})
        self.pending = Changes()
        self.answers: deque[Outgoing] = deque()
        self.buffers: dict[str, list[Sample]] = {}
        self.next_poll: datetime | None = None
        self.last_poll: datetime | None = None
        self.last_push: datetime | None = None
        self.last_error: str | None = None
        self.failures = 0
        self.retry_at: datetime | None = None
        self.signals_changed = True
        self._inflight = _Inflight()
        self._next_reassess: datetime | None = None

    # --- lifecycle ----------------------------------------------------------------------

    def start(self, now: datetime) -> None:
        """After loading: a registered VEN resyncs its events (oadrRequestEvent) and carries on."""
        if self.reg.state is RegState.READY:
            self.next_poll = self._first_poll(now)
            self._put_registration(resync=True)
            self._sync_availability(now)
            self._reassess(now)

    def shutdown_message(self) -> Outgoing | None:
        """oadrCancelPartyRegistration, when configured to leave the VTN on shutdown."""
        if not (self.spec.cancel_on_shutdown and self.reg.registration_id):
            return None
        return self._out(CancelPartyRegistration(
            request_id=self.new_id(), registration_id=self.reg.registration_id,
            ven_id=self.reg.ven_id))

    # --- what to send -------------------------------------------------------------------

    def tick(self, now: datetime) -> None:
        """Take due telemetry samples and re-decide opts when an availability window opens."""
        for rid, state in list(self.requests.items()):
            if state.next_sample is not None and state.next_sample <= now:
                state, samples = reports.take_samples(state, self.spec, self.telemetry, now)
                self.buffers.setdefault(rid, []).extend(samples)
                self._put_request(state)
                self.pending.samples += samples
        if self._next_reassess is not None and now >= self._next_reassess:
            self._reassess(now)

    def next_message(self, now: datetime) -> Outgoing | None:
        """The message this VEN should send now, or None when nothing is due before
        `next_wakeup`."""
        if self.reg.state is RegState.CANCELLED or (self.retry_at and now < self.retry_at):
            return None
        if self.answers:  # the VTN's request is answered first (oadrResponse, then re-register)
            return self.answers[0]
        step = REG_NEXT.get(self.reg.state)
        if step is not None:
            return self._registration_message(step, now)
        ven_id = self._ven_id()
        if self.reg.resync:
            return self._out(RequestEvent(request_id=self.new_id(), ven_id=ven_id))
        for make in (self._created_event, self._opt_message, self._due_report):
            out = make(now)
            if out is not None:
                return out
        if self._polls() and (self.next_poll is None or now >= self.next_poll):
            if self.push_address is not None:
                # No push for too long: fall back to pull by registering again as a pull VEN
                # (a VTN takes no oadrPoll from a push VEN).
                self.push_address = None
                self._note_error("no push came: registering again as a pull VEN")
                self._put_registration(state=RegState.QUERIED)
                return self._registration_message(REG_NEXT[RegState.QUERIED], now)
            return self._out(Poll(ven_id=ven_id))
        return None

    def next_wakeup(self, now: datetime) -> datetime | None:
        if self.reg.state is RegState.CANCELLED:
            return None
        if self.retry_at is not None and self.retry_at > now:
            return self.retry_at
        if self.reg.state is not RegState.READY:
            return now
        times = [t for t in (self.next_poll, self._next_reassess) if t is not None]
        times += [t for t in map(reports.next_wakeup, self.requests.values()) if t is not None]
        return max(now, min(times)) if times else None  # a push VEN may wait for the VTN

    def _registration_message(self, step: type, now: datetime) -> Outgoing:
        if step is QueryRegistration:
            return self._out(QueryRegistration(request_id=self.new_id()))
        if step is CreatePartyRegistration:
            return self._out(CreatePartyRegistration(
                request_id=self.new_id(), ven_name=self.spec.name,
                ven_id=self.reg.ven_id or self.spec.ven_id,
                registration_id=self.reg.registration_id, xml_signature=self.spec.sign,
                http_pull_model=self.push_address is None, transport_address=self.push_address))
        return self._out(RegisterReport(request_id=self.new_id(), ven_id=self._ven_id(),
                                        reports=reports.metadata_reports(self.spec, now)))

    def _created_event(self, now: datetime) -> Outgoing | None:
        owed = [ve for ve in self.events.values()
                if ve.answered_mod < ve.event.modification_number]
        if not owed:
            return None
        self._inflight.events = tuple((ve.event.event_id, ve.event.modification_number)
                                      for ve in owed)
        return self._out(CreatedEvent(
            response=Response(code=200, description="OK", request_id=owed[0].request_id),
            ven_id=self._ven_id(),
            event_responses=tuple(
                EventResponse(code=ve.response_code,
                              description="OK" if ve.opt is OptType.OPT_IN else ve.opt_reason,
                              request_id=ve.request_id, event_id=ve.event.event_id,
                              modification_number=ve.event.modification_number, opt_type=ve.opt)
                for ve in owed)))

    def _opt_message(self, now: datetime) -> Outgoing | None:
        for st in self.opts.values():
            if st.cancelled and st.acked and not st.cancel_acked:
                return self._out(CancelOpt(request_id=self.new_id(), opt_id=st.opt.opt_id,
                                           ven_id=self._ven_id()))
            if not st.acked and not st.cancelled:
                # createdDateTime must be within a minute of sending: stamp it now.
                return self._out(dataclasses.replace(
                    st.opt, request_id=self.new_id(), created=now, ven_id=self._ven_id()))
        return None

    def _due_report(self, now: datetime) -> Outgoing | None:
        for rid, state in list(self.requests.items()):
            if not reports.due(state, now):
                continue
            if state.report_name == reports.HISTORY_USAGE:
                samples: Sequence[Sample] = self.history(
                    [s.r_id for s in state.request.specifiers], *reports.history_window(state))
            else:
                samples = self.buffers.get(rid, [])
            nxt, update = reports.build_update(
                state, samples, self.spec, now, self.rng, report_id=self.new_id(),
                request_id=self.new_id(), ven_id=self._ven_id())
            inflight = _Inflight(report=nxt, keep_from=reports.report_window(state, now)[1])
            if update is None:  # nothing sampled in the window: the schedule moves on
                self._settle_report(None, inflight)
                continue
            self._inflight = inflight
            return self._out(update)
        return None

    # --- what replies change ------------------------------------------------------------

    def on_reply(self, sent: Outgoing, reply: Message, now: datetime) -> None:
        """Apply the VTN's reply to `sent`.

        Raises:
            BadReply: the reply does not answer `sent` (the caller treats it as a refusal).
        """
        self.failures, self.retry_at = 0, None
        msg = sent.message
        leaving = (CancelPartyRegistration, CanceledPartyRegistration)
        # 463 to a registered VEN: the VTN forgot it. While registering it is a refusal, which
        # the registration step backs off from.
        if _code(reply) == 463 and self.reg.state is RegState.READY \
                and not isinstance(msg, leaving):
            self._registration_lost(f"VTN answered 463 to {type(msg).__name__}")
            return
        if isinstance(msg, (QueryRegistration, CreatePartyRegistration, RegisterReport)):
            self._registration_reply(msg, reply, now)
        elif self.answers and sent is self.answers[0]:
            self.answers.popleft()
            if isinstance(msg, CanceledPartyRegistration):
                self._cancelled_by_vtn()
        elif isinstance(msg, Poll):
            self.last_poll = now
            # A fixed rate from the VEN's own phase: a late poll does not shift the next one,
            # and a fleet that registered together does not poll together.
            period = self._poll_period()
            due = (self.next_poll or now) + period
            self.next_poll = due if due > now else now + period
            self._on_vtn_request(reply, now)
        elif isinstance(msg, RequestEvent):
            if isinstance(reply, ResponseMessage) and _code(reply) == 200:
                # openleadr's way of saying "no events": as an empty distribute, every event we
                # hold is gone
                reply = DistributeEvent(request_id=reply.response.request_id,
                                        vtn_id=self.reg.vtn_id or "")
            if not isinstance(reply, DistributeEvent):
                raise BadReply(f"oadrRequestEvent answered with {type(reply).__name__}")
            self._put_registration(resync=False)
            self._on_distribute(reply, now)
        else:
            self._settle(msg, reply, now)

    def on_pushed(self, msg: Message, now: datetime) -> ResponseMessage:
        """Take in a payload the VTN pushed, exactly as if it had answered a poll with it, and
        return the oadrResponse the push is answered with (an error code when refused). What the
        payload asks of us goes out by `next_message`, as in pull mode."""
        request_id = getattr(msg, "request_id", None) or ""
        try:
            if not isinstance(msg, PUSHED):
                raise NotAllowed(f"{type(msg).__name__} is not pushed to a VEN")
            if self.reg.state is not RegState.READY:
                raise NotRegisteredOrAuthorized(f"not registered ({self.reg.state})")
            ven_id = getattr(msg, "ven_id", None)
            if ven_id is not None and ven_id != self.reg.ven_id:
                raise InvalidId(f"venID {ven_id!r} is not ours ({self.reg.ven_id!r})")
            try:
                self._on_vtn_request(msg, now, pushed=True)
            except BadReply as exc:  # a distribute from a vtnID we did not register with
                raise InvalidId(str(exc)) from None
        except AdrError as exc:
            self._note_error(f"pushed {type(msg).__name__} refused ({exc.code}): {exc}")
            return error_response(exc, request_id=request_id, ven_id=self.reg.ven_id)
        self.last_push = now
        if self.spec.push_fallback_to_pull is not None:
            self.next_poll = self._first_poll(now)
        return ResponseMessage(response=Response(request_id=request_id), ven_id=self.reg.ven_id)

    def on_refused(self, sent: Outgoing, problem: str, now: datetime) -> None:
        """The VTN refused `sent` (HTTP 4xx, or a reply we cannot accept): settle what would loop
        forever, back off for the rest."""
        msg = sent.message
        self._note_error(f"{type(msg).__name__} refused: {problem}")
        if self.answers and sent is self.answers[0]:
            self.answers.popleft()
        elif isinstance(msg, (CreatedEvent, CreateOpt, CancelOpt, UpdateReport)):
            self._settle(msg, None, now)  # resending an identical message cannot help
        else:
            self._back_off(now)

    def on_unreachable(self, sent: Outgoing, problem: str, now: datetime) -> None:
        """No answer (connection refused, timeout, HTTP 5xx): keep everything and retry later."""
        self._note_error(f"VTN unreachable ({type(sent.message).__name__}): {problem}")
        self._back_off(now)

    def on_internal_error(self, problem: str, now: datetime) -> None:
        """Our bug while handling an exchange: log it and back off rather than spin."""
        self._note_error(f"internal error: {problem}")
        self._back_off(now)

    def take_changes(self) -> Changes:
        changes, self.pending = self.pending, Changes()
        return changes

    def keep_changes(self, changes: Changes) -> None:
        """Changes whose write failed come back, under any made since, for the next write."""
        changes.update(self.pending)
        self.pending = changes

    def signals(self, now: datetime) -> tuple[GridSignal, ...]:
        return signals_of(self.events.values(), self.spec, now)

    # --- registration -------------------------------------------------------------------

    def _registration_reply(self, msg: Message, reply: Message, now: datetime) -> None:
        expected, state = REG_AFTER[type(msg)]
        code = _code(reply)
        # An error may come as the expected payload or as a bare oadrResponse (our VTN's way).
        if not isinstance(reply, expected) and (code in (None, 200)
                                                or not isinstance(reply, ResponseMessage)):
            raise BadReply(f"{type(msg).__name__} answered with {type(reply).__name__}")
        if code != 200:
            if code == 463 and isinstance(msg, RegisterReport):
                # The VTN lost the registration it just gave (restarted without it): start over,
                # after a backoff in case it keeps doing so.
                self._registration_lost("VTN answered 463 to RegisterReport")
                self._back_off(now)
                return
            if isinstance(msg, CreatePartyRegistration) and self.reg.ven_id != self.spec.ven_id:
                # A venID the VTN gave us earlier and has forgotten: register afresh.
                self._put_registration(ven_id=None, registration_id=None)
            response = _response(reply)
            self._note_error(f"{type(msg).__name__} answered {code}: "
                             f"{response.description if response else ''}")
            self._back_off(now)
            return
        if isinstance(reply, CreatedPartyRegistration):
            fields = dict(vtn_id=reply.vtn_id, poll_freq=reply.poll_freq or self.reg.poll_freq)
            if isinstance(msg, CreatePartyRegistration):
                fields |= dict(ven_id=reply.ven_id, registration_id=reply.registration_id)
                self.log.info("registered venID=%s registrationID=%s", reply.ven_id,
                              reply.registration_id)
            self._put_registration(state=state, **fields)
        else:
            assert isinstance(reply, RegisteredReport)
            code, text = self._accept_requests(reply.report_requests, now)
            if reply.report_requests:  # 2.0b: requests made here are answered oadrCreatedReport
                self._answer(CreatedReport(response=Response(
                    code=code, description=text, request_id=reply.response.request_id),
                    ven_id=self._ven_id(), pending_reports=tuple(self.requests)))
            self._put_registration(state=state, resync=True)
            self.next_poll = self._first_poll(now)
            self._sync_availability(now)
            self._reassess(now)

    def _registration_lost(self, why: str) -> None:
        """The VTN no longer knows us: register again (keeping a pre-allocated venID); what it
        requested of us went with its memory of us, what we told it must be told again."""
        self.log.warning("%s: registering again", why)
        self._put_registration(state=RegState.UNREGISTERED, ven_id=self.spec.ven_id,
                               registration_id=None, resync=False)
        self.answers.clear()
        for rid in list(self.requests):
            self._drop_request(rid)
        for st in list(self.opts.values()):
            self._put_opt(dataclasses.replace(st, acked=False, cancel_acked=st.cancelled))

    def _cancelled_by_vtn(self) -> None:
        self.log.warning("the VTN cancelled our registration: staying quiet until restarted")
        self._put_registration(state=RegState.CANCELLED, registration_id=None)

    # --- requests the VTN makes on a poll -----------------------------------------------

    def _on_vtn_request(self, msg: Message, now: datetime, *, pushed: bool = False) -> None:
        ven_id = self._ven_id()
        if isinstance(msg, ResponseMessage):
            return
        if isinstance(msg, DistributeEvent):
            self._on_distribute(msg, now)
        elif isinstance(msg, CreateReport):
            code, text = self._accept_requests(msg.report_requests, now)
            self._answer(CreatedReport(
                response=Response(code=code, description=text, request_id=msg.request_id),
                ven_id=ven_id, pending_reports=tuple(self.requests)))
        elif isinstance(msg, CancelReport):
            final = self._final_reports(msg.report_request_ids, now) if msg.report_to_follow \
                else []
            self._cancel_requests(msg.report_request_ids)
            self._answer(CanceledReport(response=Response(request_id=msg.request_id),
                                        pending_reports=tuple(self.requests), ven_id=ven_id))
            for update in final:
                self._answer(update)
        elif isinstance(msg, RequestReregistration):
            if not pushed:  # a push is acknowledged by the oadrResponse that answers it
                self._answer(ResponseMessage(response=Response(), ven_id=ven_id),
                             service="EiRegisterParty")
            self._put_registration(state=RegState.QUERIED)
        elif isinstance(msg, CancelPartyRegistration):
            self._answer(CanceledPartyRegistration(
                response=Response(request_id=msg.request_id),
                registration_id=msg.registration_id, ven_id=ven_id))
        elif isinstance(msg, RegisterReport):  # the VTN's own reports: we request none
            self._answer(RegisteredReport(response=Response(request_id=msg.request_id),
                                          ven_id=ven_id))
        else:
            raise BadReply(f"oadrPoll answered with {type(msg).__name__}")

    def _answer(self, msg: Message, service: str | None = None) -> None:
        self.answers.append(Outgoing(msg, service or SERVICE_OF[type(msg)]))

    # --- events -------------------------------------------------------------------------

    def _on_distribute(self, msg: DistributeEvent, now: datetime) -> None:
        if self.reg.vtn_id is not None and msg.vtn_id != self.reg.vtn_id:
            raise BadReply(f"distribute from vtnID {msg.vtn_id!r}, registered with "
                           f"{self.reg.vtn_id!r}")
        seen = set()
        for ev in msg.events:
            seen.add(ev.event_id)
            known = self.events.get(ev.event_id)
            if known is not None and ev.modification_number <= known.event.modification_number:
                continue  # a status change is not a modification: nothing to answer
            self._accept_event(ev, msg.request_id, known, now)
        for event_id in [e for e in self.events if e not in seen]:
            self.log.info("event %s implicitly cancelled (absent from the distribute)", event_id)
            self._drop_event(event_id)

    def _accept_event(self, ev: Event, request_id: str, known: VenEvent | None,
                      now: datetime) -> None:
        code, offsets = 200, cast(tuple[tuple[str, timedelta], ...], ())
        if ev.status is EventStatus.CANCELLED:
            opt, reason = (known.opt if known else OptType.OPT_IN), "cancelled by the VTN"
        elif bad := unsupported(ev):
            code, opt, reason = 460, OptType.OPT_OUT, "signal not supported: " + ", ".join(bad)
        else:
            resources = reached_resources(ev, self.spec)
            offsets = start_offsets(ev, resources, self.rng)
            decision = self._decide(ev, offsets)
            opt, reason = decision.opt, decision.reason
        answered = ev.modification_number if ev.response_required is ResponseRequired.NEVER \
            else (known.answered_mod if known else -1)
        self.log.info("event %s mod %d: %s (%s)", ev.event_id, ev.modification_number, opt, reason)
        self._put_event(VenEvent(event=ev, received=now, request_id=request_id, opt=opt,
                                 opt_reason=reason, response_code=code, answered_mod=answered,
                                 start_offsets=offsets))

    def _decide(self, ev: Event, offsets: tuple[tuple[str, timedelta], ...]
                ) -> OptDecision:
        signals = grid_signals(ev, self.spec, offsets)
        return decide(signals, self.spec.resources, self.spec.availability,
                      self.spec.min_opt_in_share)

    def _reassess(self, now: datetime) -> None:
        """An event we opted into but can no longer serve (an availability window opened or
        changed) gets an event-scoped oadrCreateOpt optOut."""
        boundaries = [t for a in self.spec.availability for t in (a.start, a.start + a.duration)
                      if t > now]
        self._next_reassess = min(boundaries, default=None)
        for ve in list(self.events.values()):
            ev = ve.event
            if ve.opt is not OptType.OPT_IN or ve.response_code != 200 or ev.test_event \
                    or status_at(ev, now) in (EventStatus.CANCELLED, EventStatus.COMPLETED):
                continue
            decision = self._decide(ev, ve.start_offsets)
            if decision.opt is OptType.OPT_IN:
                continue
            out = unavailable(self.spec.availability, [r.resource_id for r in self.spec.resources],
                              ev.active_period.dtstart, ev.active_period.end)
            self._put_event(dataclasses.replace(ve, opt=OptType.OPT_OUT, opt_reason=decision.reason))
            self._put_opt(OptState(opt=CreateOpt(
                request_id=self.new_id(), opt_id=f"{ev.event_id}.{ev.modification_number}",
                opt_type=OptType.OPT_OUT, opt_reason=OptReason.NOT_PARTICIPATING,
                ven_id=self._ven_id(), created=now, event_id=ev.event_id,
                modification_number=ev.modification_number,
                targets=Target(resource_ids=tuple(sorted(out))))))

    # --- opts ---------------------------------------------------------------------------

    def _sync_availability(self, now: datetime) -> None:
        """The fleet file's availability windows, as opts: new ones sent, removed ones cancelled."""
        wanted = {a.opt_id: a for a in self.spec.availability if a.start + a.duration > now}
        for opt_id, a in wanted.items():
            opt = CreateOpt(request_id=self.new_id(), opt_id=opt_id, opt_type=a.opt_type,
                            opt_reason=a.reason, ven_id=self._ven_id(), created=now,
                            market_context=a.market_context,
                            availability=(Availability(dtstart=a.start, duration=a.duration),),
                            targets=Target(resource_ids=a.resources))
            known = self.opts.get(opt_id)
            if known is None or not _same_opt(known.opt, opt):
                self._put_opt(OptState(opt=opt))
        for st in list(self.opts.values()):
            if st.opt.event_id is None and st.opt.opt_id not in wanted and not st.cancelled:
                self._put_opt(dataclasses.replace(st, cancelled=True, cancel_acked=not st.acked))

    # --- reports ------------------------------------------------------------------------

    def _accept_requests(self, requests: Sequence[ReportRequest],
                         now: datetime) -> tuple[int, str]:
        """Take each report request on its own schedule; answer with the first refusal."""
        code, text = 200, "OK"
        for req in requests:
            try:
                state = reports.accept(req, self.spec, now, self.rng)
            except AdrError as exc:
                self.log.warning("report request %s refused: %s", req.report_request_id, exc)
                if code == 200:
                    code, text = exc.code, exc.description or type(exc).__name__
                continue
            self.buffers.pop(req.report_request_id, None)
            self._put_request(state)
        return code, text

    def _final_reports(self, ids: Sequence[str], now: datetime) -> list[UpdateReport]:
        """reportToFollow: one last update of what each cancelled telemetry request sampled."""
        out = []
        for rid in ids:
            state = self.requests.get(rid)
            if state is None or state.report_name == reports.HISTORY_USAGE:
                continue
            _, update = reports.build_update(
                reports.cut_short(state, now), self.buffers.get(rid, []), self.spec, now, self.rng,
                report_id=self.new_id(), request_id=self.new_id(), ven_id=self._ven_id())
            if update is not None:
                out.append(update)
        return out

    def _cancel_requests(self, ids: Sequence[str]) -> None:
        for rid in ids:
            if rid in self.requests:
                self._drop_request(rid)

    # --- settling our own messages ------------------------------------------------------

    def _settle(self, msg: Message, reply: Message | None, now: datetime) -> None:
        """Apply the reply to (or refusal of, when `reply` is None) a message we sent."""
        inflight, self._inflight = self._inflight, _Inflight()
        if isinstance(msg, CreatedEvent):
            for event_id, mod in inflight.events:
                ve = self.events.get(event_id)
                if ve is not None and ve.event.modification_number == mod:
                    self._put_event(dataclasses.replace(ve, answered_mod=mod))
            if reply is not None and _code(reply) != 200:
                self._note_error(f"oadrCreatedEvent answered {_code(reply)}")
        elif isinstance(msg, CreateOpt):
            st = self.opts.get(msg.opt_id)
            if st is not None:
                self._expect(reply, CreatedOpt, msg)
                self._put_opt(dataclasses.replace(st, acked=True))
        elif isinstance(msg, CancelOpt):
            st = self.opts.get(msg.opt_id)
            if st is not None:
                self._put_opt(dataclasses.replace(st, cancel_acked=True))
        elif isinstance(msg, UpdateReport):
            self._settle_report(reply, inflight)
        else:
            raise BadReply(f"no reply expected for {type(msg).__name__}")

    def _settle_report(self, reply: Message | None, inflight: _Inflight) -> None:
        state = inflight.report
        if state is None:
            return
        rid = state.request.report_request_id
        buffer = self.buffers.get(rid)
        if buffer is not None and inflight.keep_from is not None:
            buffer[:] = [s for s in buffer if s.at >= inflight.keep_from]
        if rid in self.requests:
            if state.next_report is None:
                self._drop_request(rid)
            else:
                self._put_request(state)
        if isinstance(reply, UpdatedReport) and reply.cancel_report is not None:
            self._cancel_requests(reply.cancel_report.report_request_ids)

    @staticmethod
    def _expect(reply: Message | None, cls: type, msg: Message) -> None:
        if reply is not None and not isinstance(reply, (cls, ResponseMessage)):
            raise BadReply(f"{type(msg).__name__} answered with {type(reply).__name__}")

    # --- state changes, recorded for the store ------------------------------------------

    def _put_registration(self, **fields: object) -> None:
        self.reg = dataclasses.replace(self.reg, **fields)  # type: ignore[arg-type]
        self.pending.registration = self.reg

    def _put_event(self, ve: VenEvent) -> None:
        old = self.events.get(ve.event.event_id)
        self.events[ve.event.event_id] = ve
        self.pending.put_event(ve)
        # An acknowledged answer changes no signal; a new modification, opt or offset does.
        if old is None or (old.event, old.opt, old.start_offsets) != (ve.event, ve.opt,
                                                                      ve.start_offsets):
            self.signals_changed = True

    def _drop_event(self, event_id: str) -> None:
        del self.events[event_id]
        self.pending.drop_event(event_id)
        self.signals_changed = True

    def _put_opt(self, st: OptState) -> None:
        self.opts[st.opt.opt_id] = st
        self.pending.put_opt(st)

    def _put_request(self, state: RequestState) -> None:
        self.requests[state.request.report_request_id] = state
        self.pending.put_request(state)

    def _drop_request(self, rid: str) -> None:
        del self.requests[rid]
        self.buffers.pop(rid, None)
        self.pending.drop_request(rid)

    # --- helpers ------------------------------------------------------------------------

    def _ven_id(self) -> str:
        if self.reg.ven_id is None:
            raise AssertionError("no venID before registration")  # guarded by REG_NEXT
        return self.reg.ven_id

    def _poll_period(self) -> timedelta:
        return self.reg.poll_freq or self.spec.poll_interval

    def _polls(self) -> bool:
        return self.push_address is None or self.spec.push_fallback_to_pull is not None

    def _first_poll(self, now: datetime) -> datetime | None:
        """When to poll first after registering (or, pushed to, after the last push)."""
        if self.push_address is None:
            # A random phase: a fleet that registered together does not poll together.
            return now + self._poll_period() * self.rng.random()
        if self.spec.push_fallback_to_pull is None:
            return None
        return now + self._poll_period() * self.spec.push_fallback_to_pull

    def _out(self, msg: Message) -> Outgoing:
        return Outgoing(msg, SERVICE_OF[type(msg)])

    def _note_error(self, text: str) -> None:
        self.last_error = text
        self.log.warning("%s", text)

    def _back_off(self, now: datetime) -> None:
        self._inflight = _Inflight()
        self.retry_at = now + backoff(self.failures, self.rng)
        self.failures += 1


def _same_opt(a: CreateOpt, b: CreateOpt) -> bool:
    """Equal but for the request ID and creation time, which are stamped at sending."""
    return dataclasses.replace(a, request_id="", created=b.created, ven_id=b.ven_id) == \
        dataclasses.replace(b, request_id="")
