"""The harness VEN's wire: one case's VEN (`VenContext`) and the session's push listener.

A `VenContext` is a fresh VEN per case (its own venName, so cases are independent). It sends
typed messages (`oadr.messages`, written by `oadr.codec`), records every exchange in the
transcript, runs `Context.conformant` on every message the VTN sends, and behaves as a VEN
when the VTN sends something (answers events with oadrCreatedEvent, report requests with
oadrCreatedReport, cancellations with their answers). Pull and push share the cases: `receive`
polls (pull) or takes the next message the VTN pushed (push).

Tolerant of the peer: an HTTP error, an empty or unreadable answer becomes a failure and `None`;
a timeout or refused connection propagates and ends the case as ERROR (`campaign.runner`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from ssl import SSLContext  # the field `ssl` hides the module in the dataclass
from typing import TypeVar
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from oadr import codec, signing
from oadr.errors import AdrError
from oadr.messages import (
    SERVICE_OF,
    TAG_OF,
    CanceledPartyRegistration,
    CanceledReport,
    CancelPartyRegistration,
    CancelReport,
    CreatedEvent,
    CreatedPartyRegistration,
    CreatedReport,
    CreatePartyRegistration,
    CreateReport,
    DistributeEvent,
    EventResponse,
    Message,
    OptType,
    Poll,
    ReportRequest,
    Response,
    ResponseMessage,
    ResponseRequired,
)

from . import vtn_rules
from .context import Context
from .hooks import EventHook, EventRequest, ReportHook
from .model import Case, Direction, Transport

log = logging.getLogger("adrgate.campaign")

M = TypeVar("M", bound=Message)

HTTP_TIMEOUT_S = 10.0  # one request to the VTN, connect to answer
DEFAULT_POLL = timedelta(seconds=10)
MIN_POLL = timedelta(seconds=1)
MAX_POLLS = 200  # per `receive`: bounds a VTN that asks for a tiny poll frequency
EVERY_INTERFACE = frozenset({"0.0.0.0", "::", ""})  # bindable, but no address to push to


@dataclass(frozen=True, kw_only=True)
class VtnTarget:
    url: str  # OpenADR base, e.g. http://127.0.0.1:8080/OpenADR2/Simple/2.0b
    ssl: ssl.SSLContext | None = None  # client context (client cert) for TLS targets
    signing_key: signing.SigningKey | None = None  # sign what the harness sends
    hook: EventHook | None = None  # None -> cases needing "hook" are NOT_RUN
    push_listen: tuple[str, int] | None = None  # where the harness VEN listens for push cases
    # the listener's server context: a push VEN serves mutual TLS, the VTN being the client
    push_ssl: SSLContext | None = None
    push_url: str | None = None  # the listener's base URL for the VTN; None: from push_listen
    ven_name: str = "adrgate-campaign"

    def __post_init__(self) -> None:
        if self.push_listen is None:
            if self.push_ssl is not None or self.push_url is not None:
                raise ValueError("push_ssl and push_url need push_listen")
            return
        if self.push_url is not None:
            url = urlsplit(self.push_url)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ValueError(f"push URL {self.push_url!r} is not an http:// or https:// URL")
            if self.push_ssl is not None and url.scheme != "https":
                raise ValueError(f"push URL {self.push_url!r} must be https:// (the push "
                                 "listener serves TLS)")
        elif self.push_listen[0] in EVERY_INTERFACE:
            raise ValueError(f"the push listener binds every interface ({self.push_listen[0]}),"
                             " which is no address a VTN can push to: give push_url (--push-url "
                             "BASE), the base URL at which the VTN under test reaches it")

    def push_base(self, port: int) -> str:
        """The base URL the VTN pushes to: `push_url`, or the listening host at `port` (the
        bound one, should push_listen ask for any free port)."""
        if self.push_url is not None:
            return self.push_url.rstrip("/")
        assert self.push_listen is not None, "a push base needs a push listener"
        host = self.push_listen[0]
        bracketed = f"[{host}]" if ":" in host else host
        return f"{'https' if self.push_ssl is not None else 'http'}://{bracketed}:{port}"


_ids = itertools.count(1)


def new_id(prefix: str = "req") -> str:
    return f"{prefix}-{next(_ids)}-{uuid.uuid4().hex[:8]}"


class PushListener:
    """One listener for the session (https with the target's `push_ssl`); a push VEN's transport
    address is `{push base}/campaign/{token}` and the VTN POSTs to `{address}/{service}`."""

    def __init__(self, target: VtnTarget) -> None:
        assert target.push_listen is not None, "a push listener needs push_listen"
        self.target = target
        self.host, self.port = target.push_listen
        self.routes: dict[str, VenContext] = {}
        self._runner: web.AppRunner | None = None

    def address(self, token: str) -> str:
        return f"{self.target.push_base(self.port)}/campaign/{token}"

    async def start(self) -> None:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/campaign/{token}/{service}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.target.push_ssl)
        try:
            await site.start()
        except BaseException:  # e.g. the address is taken: release what setup took
            await self._runner.cleanup()
            raise
        if self.port == 0:  # an ephemeral port: learn which
            self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        ctx = self.routes.get(request.match_info["token"])
        if ctx is None:
            return web.Response(status=404, text="no such VEN here\n")
        status, body = ctx.pushed(request.match_info["service"], await request.read())
        return web.Response(status=status, body=body, content_type="application/xml")


class RecordedHook:
    """The run's hook, with each request to the operator written into the case's transcript
    (endpoint "hook"), so a report shows what the VTN was asked to do and when."""

    def __init__(self, hook: EventHook, ctx: Context) -> None:
        self.inner, self.ctx = hook, ctx

    def _note(self, direction: Direction, text: str) -> None:
        self.ctx.record(direction, "hook", text.encode())

    async def create(self, request: EventRequest) -> str:
        self._note(Direction.SENT, f"create {request.describe()}")
        event_id = await self.inner.create(request)
        self._note(Direction.RECEIVED, f"eventID {event_id}")
        return event_id

    async def modify(self, event_id: str, request: EventRequest) -> None:
        self._note(Direction.SENT, f"modify {event_id} into {request.describe()}")
        await self.inner.modify(event_id, request)

    async def cancel(self, event_id: str) -> None:
        self._note(Direction.SENT, f"cancel {event_id}")
        await self.inner.cancel(event_id)

    async def cancel_report(self, ven_id: str, report_request_id: str) -> None:
        assert isinstance(self.inner, ReportHook), "report-hook cases run only with one"
        self._note(Direction.SENT, f"cancel report request {report_request_id} of {ven_id}")
        await self.inner.cancel_report(ven_id, report_request_id)


@dataclass(slots=True, kw_only=True)
class VenContext(Context):
    """One case's VEN and its judgement (`Context`)."""

    target: VtnTarget
    case: Case
    session: aiohttp.ClientSession
    listener: PushListener | None = None
    ven_name: str = ""
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    ven_id: str | None = None
    registration_id: str | None = None
    poll_freq: timedelta = DEFAULT_POLL
    opt: OptType = OptType.OPT_IN
    answer_events: bool = True  # False: swallow oadrCreatedEvent (a lost response)
    distributes: list[DistributeEvent] = field(default_factory=list)
    report_requests: list[ReportRequest] = field(default_factory=list)
    answered: set[tuple[str, int]] = field(default_factory=set)
    inbox: asyncio.Queue[Message] = field(default_factory=asyncio.Queue)

    @property
    def hook(self) -> RecordedHook:
        assert self.target.hook is not None, "the runner runs hook cases only with a hook"
        return RecordedHook(self.target.hook, self)

    @property
    def push(self) -> bool:
        return self.case.transport is Transport.PUSH

    # --- sending ------------------------------------------------------------------------

    def encode(self, msg: Message) -> bytes:
        key = self.target.signing_key
        if key is None:
            return codec.serialize(msg)
        now = self.clock()
        return codec.serialize(msg, sign=lambda obj: signing.sign(obj, key, now=now,
                                                                 nonce=uuid.uuid4().hex))

    async def post(self, endpoint: str, body: bytes) -> tuple[int, bytes]:
        """POST `body` to the VTN's `endpoint`; both directions go into the transcript."""
        self.record(Direction.SENT, endpoint, body)
        async with self.session.post(
                f"{self.target.url.rstrip('/')}/{endpoint}", data=body,
                headers={"Content-Type": "application/xml"},
                ssl=self.target.ssl if self.target.ssl is not None else True,
                timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)) as resp:
            answer = await resp.content.read(1 << 22)  # bounded: a VTN's answer is small
            self.record(Direction.RECEIVED, endpoint, answer, resp.status)
            return resp.status, answer

    def judge(self, status: int, body: bytes, what: str) -> Message | None:
        """Read a message from the VTN: HTTP 200, conformant, parseable; else a failure."""
        if not self.expect(status == 200, "vtn.http-status",
                           f"the VTN answers {what} with HTTP 200", f"HTTP {status}"):
            return None
        return self.read(body, what)

    def read(self, body: bytes, what: str) -> Message | None:
        if not self.expect(bool(body.strip()), "vtn.answer-type",
                           f"the VTN answers {what} with an OpenADR message", "an empty body"):
            return None
        self.conformant(body)
        try:
            return codec.parse(body).message
        except AdrError as exc:
            self.expect(False, "vtn.parse", f"the VTN's answer to {what} is a 2.0b message",
                        f"{type(exc).__name__}: {exc.description}")
            return None

    async def send(self, msg: Message) -> Message | None:
        status, body = await self.post(SERVICE_OF[type(msg)], self.encode(msg))
        return self.judge(status, body, TAG_OF[type(msg)])

    async def call(self, msg: Message, expected: type[M]) -> M | None:
        """Send `msg` and judge that the answer is `expected` with code 200 echoing its
        requestID (when it has one)."""
        answer = await self.send(msg)
        for f in vtn_rules.answered(answer, expected, getattr(msg, "request_id", None)):
            self.failures.append(f)
        return answer if isinstance(answer, expected) else None

    # --- registration ---------------------------------------------------------------------

    async def register(self, *, report_only: bool = False) -> CreatedPartyRegistration:
        """Register this case's VEN (pull or push by the case), or stop the case."""
        address = None
        if self.push:
            assert self.listener is not None, "the runner runs push cases only with a listener"
            address = self.listener.address(self.token)
            self.listener.routes[self.token] = self
        msg = CreatePartyRegistration(
            request_id=new_id(), ven_name=self.ven_name, http_pull_model=not self.push,
            transport_address=address, xml_signature=self.target.signing_key is not None,
            report_only=report_only)
        answer = await self.call(msg, CreatedPartyRegistration)
        self.require(answer is not None and bool(answer.registration_id and answer.ven_id),
                     "vtn.registration", "a CreatePartyRegistration is accepted with a "
                     "registrationID and a venID", repr(answer))
        assert answer is not None and answer.ven_id is not None
        self.ven_id, self.registration_id = answer.ven_id, answer.registration_id
        if answer.poll_freq is not None:  # the pace of polls and windows; never below 1 s
            self.poll_freq = max(answer.poll_freq, MIN_POLL)
        return answer

    async def unregister_quietly(self) -> None:
        """Best-effort cleanup after a case: not judged, bounded in time."""
        if self.listener is not None:
            self.listener.routes.pop(self.token, None)
        if self.registration_id is None:
            return
        msg = CancelPartyRegistration(request_id=new_id(), registration_id=self.registration_id,
                                      ven_id=self.ven_id)
        try:
            await asyncio.wait_for(self.post("EiRegisterParty", self.encode(msg)), 5.0)
        except Exception:  # the peer may be gone: cleanup never fails a case
            log.debug("cleanup of %s failed", self.ven_name, exc_info=True)
        self.registration_id = None

    # --- receiving ------------------------------------------------------------------------

    async def poll(self) -> Message | None:
        assert self.ven_id is not None
        return await self.send(Poll(ven_id=self.ven_id))

    async def receive(self, within: timedelta) -> Message | None:
        """The next message the VTN sends this VEN within `within` (polling at the VTN's poll
        frequency, or waiting for a push), already answered as a VEN answers it. Pull: an empty
        poll answer goes on polling; a refusal (code not 200) is returned."""
        if self.push:
            try:
                msg = await asyncio.wait_for(self.inbox.get(), within.total_seconds())
            except TimeoutError:
                return None
        else:
            msg = None
            loop = asyncio.get_running_loop()
            deadline = loop.time() + within.total_seconds()
            for _ in range(MAX_POLLS):
                got = await self.poll()
                if got is None or not isinstance(got, ResponseMessage) \
                        or got.response.code != 200:
                    msg = got
                    break
                if loop.time() + self.poll_freq.total_seconds() > deadline:
                    break
                await asyncio.sleep(self.poll_freq.total_seconds())
        if msg is not None:
            await self.behave(msg)
        return msg

    async def receive_until(self, wanted: Callable[[Message], bool], within: timedelta
                            ) -> Message | None:
        """Receive (and answer) messages until one is `wanted`; None when none came in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within.total_seconds()
        for _ in range(MAX_POLLS):
            left = deadline - loop.time()
            if left <= 0:
                return None
            msg = await self.receive(timedelta(seconds=left))
            if msg is not None and wanted(msg):
                return msg
            if not self.push and (msg is None or isinstance(msg, ResponseMessage)):
                # nothing, garbage or a refusal (already judged): poll again at the VTN's pace
                await asyncio.sleep(min(left, self.poll_freq.total_seconds()))
        return None

    def pushed(self, service: str, body: bytes) -> tuple[int, bytes]:
        """A message the VTN pushed to this VEN: judged, queued for the case, acknowledged."""
        endpoint = f"push/{service}"
        self.record(Direction.RECEIVED, endpoint, body)
        msg = self.read(body, f"a push to {service}")
        if msg is None:
            reply, status = b"unreadable OpenADR message\n", 400
        else:
            self.inbox.put_nowait(msg)
            reply, status = self.encode(ResponseMessage(
                response=Response(code=200, description="OK",
                                  request_id=str(getattr(msg, "request_id", "") or "")),
                ven_id=self.ven_id)), 200
        self.record(Direction.SENT, endpoint, reply, status)
        return status, reply

    # --- behaving as a VEN ----------------------------------------------------------------

    async def behave(self, msg: Message) -> None:
        """Answer what the VTN sent, as a VEN does; each answer must be acknowledged 200."""
        if isinstance(msg, DistributeEvent):
            self.distributes.append(msg)
            if self.answer_events:
                await self.answer_events_of(msg)
        elif isinstance(msg, CreateReport):
            self.report_requests.extend(msg.report_requests)
            await self.call(CreatedReport(
                response=Response(request_id=msg.request_id), ven_id=self.ven_id or "",
                pending_reports=tuple(r.report_request_id for r in msg.report_requests)),
                ResponseMessage)
        elif isinstance(msg, CancelReport):
            await self.call(CanceledReport(response=Response(request_id=msg.request_id),
                                           ven_id=self.ven_id), ResponseMessage)
        elif isinstance(msg, CancelPartyRegistration):
            await self.call(CanceledPartyRegistration(
                response=Response(request_id=msg.request_id),
                registration_id=msg.registration_id, ven_id=self.ven_id), ResponseMessage)
            self.registration_id = None

    async def answer_events_of(self, msg: DistributeEvent) -> None:
        owed = [e for e in msg.events if e.response_required is ResponseRequired.ALWAYS
                and (e.event_id, e.modification_number) not in self.answered]
        if not owed:
            return
        await self.call(CreatedEvent(
            response=Response(request_id=msg.request_id), ven_id=self.ven_id or "",
            event_responses=tuple(EventResponse(
                code=200, description="OK", request_id=msg.request_id, event_id=e.event_id,
                modification_number=e.modification_number, opt_type=self.opt) for e in owed)),
            ResponseMessage)
        self.answered.update((e.event_id, e.modification_number) for e in owed)
