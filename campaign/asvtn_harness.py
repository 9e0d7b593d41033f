"""The harness VTN's I/O: an aiohttp listener for the VEN under test, pushes to it, and the
`VtnContext` every VEN-role case runs in.

Rules of this file:
- Decisions are `asvtn_core.VtnCore`'s; here bytes move, time passes and exchanges are recorded:
  every exchange goes to `Harness.wire`, and to the running case's transcript with every message
  the VEN sent judged by `Context.conformant`.
- Every wait is bounded: the VEN has `poll_freq` to come for a queued message and
  `answer_within` for each answer. Silence becomes a failure, never a hang.
- A request the harness leaves open (a periodic report) is cancelled when its case ends, so one
  case's traffic does not run on into the next.
"""

from __future__ import annotations

import asyncio
import logging
from ssl import SSLContext
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Final, Protocol, TypeVar

import aiohttp
from aiohttp import web

from oadr import codec
from oadr.errors import AdrError, LocalAdrError
from oadr.messages import (
    SERVICE_OF, CancelReport, Event, Message, RegisterReport, ResponseMessage,
    error_response,
)
from oadr.signing import SigningKey, sign, verifier

from .asvtn_core import Inbound, Registration, Verify, VtnCore
from .context import Context, utcnow
from .model import Case, Direction, Exchange, Transport

log = logging.getLogger("adrgate.campaign")

OADR_PATH: Final = "/OpenADR2/Simple/2.0b"
SERVICES: Final = ("EiRegisterParty", "EiEvent", "EiReport", "EiOpt", "OadrPoll")
MAX_BODY: Final = 1 << 20  # bytes
PUSH_TIMEOUT: Final = aiohttp.ClientTimeout(total=10)

M = TypeVar("M")


class VenPrompt(Protocol):
    """Asks the VEN under test (its operator, or a test's automation) to do something only the
    VEN can start: send an opt, cancel one."""

    async def ask(self, instruction: str) -> None: ...


@dataclass(frozen=True, kw_only=True)
class VenUnderTest:
    listen: tuple[str, int]  # where the harness VTN serves /OpenADR2/Simple/2.0b/...
    ssl: SSLContext | None = None  # server context (TLS, client certificates)
    signing_key: SigningKey | None = None  # sign every message the harness sends
    prompt: VenPrompt | None = None  # None: cases needing "hook" are NOT_RUN
    vtn_id: str = "ADRGATE-CAMPAIGN-VTN"
    poll_freq: timedelta = timedelta(seconds=1)  # oadrRequestedOadrPollFreq given to the VEN
    answer_within: timedelta = timedelta(seconds=10)  # for each answer, beyond the next poll
    push_ssl: SSLContext | None = None  # client context for an https transport address
    # Entering the harness waits this long for the VEN to register (0: the caller waits,
    # with `wait_registered`, e.g. after starting the VEN itself).
    register_within: timedelta = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Pushed:
    """The outcome of one push: the VEN's HTTP status and parsed answer, or why there is none."""

    status: int | None
    reply: Message | None
    problem: str = ""


class Harness:
    """The harness VTN for one VEN under test: `async with Harness(ven) as h:` listens."""

    def __init__(self, ven: VenUnderTest, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.ven = ven
        self.clock = clock
        self.core = VtnCore(vtn_id=ven.vtn_id, poll_freq=ven.poll_freq, new_id=_new_id)
        self.wire: list[Exchange] = []  # every exchange of the run, cases or not
        self.tls_seen: set[tuple[str | None, str | None]] = set()  # (version, cipher) seen
        self.started_at = clock()
        self._ctx: VtnContext | None = None
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""  # base URL the VEN under test is pointed at, once listening

    async def __aenter__(self) -> Harness:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post(OADR_PATH + "/{service:" + "|".join(SERVICES) + "}", self._view)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, port = self.ven.listen
        await web.TCPSite(self._runner, host, port, ssl_context=self.ven.ssl).start()
        bound = self._runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{'https' if self.ven.ssl else 'http'}://{shown}:{bound}{OADR_PATH}"
        self._session = aiohttp.ClientSession(timeout=PUSH_TIMEOUT)
        self.started_at = self.clock()
        if self.ven.register_within > timedelta(0):
            log.info("harness VTN at %s: waiting for the VEN under test to register", self.url)
            await self.wait_registered(self.ven.register_within.total_seconds())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- the campaign's view of the harness ---------------------------------------------

    def available(self) -> frozenset[str]:
        """Capabilities of this run: "hook" with a prompt, "tls" with a server context,
        "signing" with a key, and "push" or "pull" as the VEN registered; call it once the VEN
        has registered (entering the harness waits for that, see `register_within`)."""
        caps = set()
        if self.ven.prompt is not None:
            caps.add("hook")
        if self.ven.ssl is not None:
            caps.add("tls")
        if self.ven.signing_key is not None:
            caps.add("signing")
        # A VEN that never registered is taken for a pull VEN: its cases fail, saying so.
        reg = self.core.registration
        caps.add("push" if reg is not None and not reg.pull else "pull")
        return frozenset(caps)

    async def wait_registered(self, timeout_s: float) -> bool:
        """Wait (bounded) until the VEN under test has registered and registered its reports;
        call it before `available`, which tells pull from push by the registration."""
        return await self.until(lambda: self.core.registration is not None
                                and any(isinstance(i.message, RegisterReport)
                                        for i in self.core.log), timeout_s)

    def context(self, case: Case) -> AbstractAsyncContextManager[VtnContext]:
        return self._context(case)

    @asynccontextmanager
    async def _context(self, case: Case) -> AsyncIterator[VtnContext]:
        ctx = VtnContext(clock=self.clock, harness=self, case=case, start=len(self.core.log))
        self._ctx = ctx
        try:
            yield ctx
        finally:
            self._ctx = None
            self.core.queue.clear()  # what the case left undelivered is withdrawn
            if ctx.open_requests:
                await self._cancel_quietly(sorted(ctx.open_requests))

    async def _cancel_quietly(self, request_ids: Sequence[str]) -> None:
        """Stop report requests a case left running (not judged: the case is over)."""
        reg = self.core.registration
        if reg is None:
            return
        cancel = CancelReport(request_id=_new_id(), report_request_ids=tuple(request_ids),
                              ven_id=reg.ven_id)
        if reg.pull:
            self.core.queue.append(cancel)
        else:
            await self.push(cancel)

    # --- waiting ------------------------------------------------------------------------

    async def until(self, ready: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until `ready()` holds after some message from the VEN, at most `timeout_s`."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(ready), max(timeout_s, 0.0))
            except TimeoutError:
                return ready()
        return True

    # --- wire ---------------------------------------------------------------------------

    def encode(self, msg: Message) -> bytes:
        key = self.ven.signing_key
        if key is None:
            return codec.serialize(msg)
        return codec.serialize(msg, sign=partial(sign, key=key, now=self.clock(),
                                                 nonce=_new_id()))

    def _note(self, direction: Direction, endpoint: str, body: bytes,
              status: int | None = None) -> None:
        exchange = Exchange(self.clock(), direction, endpoint, body, status)
        self.wire.append(exchange)
        if self._ctx is not None:
            self._ctx.transcript.append(exchange)
            if direction is Direction.RECEIVED:
                self._ctx.conformant(body)

    def _verify(self, now: datetime) -> Verify | None:
        # With a key the harness checks every signature the VEN sends (unsigned is allowed
        # here; the signing case judges whether the VEN signs).
        return verifier(now=now, required=False) if self.ven.signing_key else None

    async def _view(self, request: web.Request) -> web.Response:
        service = request.match_info["service"]
        body = await request.read()
        now = self.clock()
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport \
            else None
        if ssl_object is not None:
            cipher = ssl_object.cipher()
            self.tls_seen.add((ssl_object.version(), cipher[0] if cipher else None))
        else:
            self.tls_seen.add((None, None))
        inbound = self.core.take(service, body, now, self._verify(now))
        self._note(Direction.RECEIVED, service, body)
        if inbound.reply is None:
            response = web.Response(status=inbound.status, text=inbound.problem + "\n")
            self._note(Direction.SENT, service, response.text.encode() if response.text else b"",
                       inbound.status)
        else:
            data = self._encode_reply(inbound.reply)
            self._note(Direction.SENT, service, data, 200)
            response = web.Response(body=data, content_type="application/xml")
        async with self._changed:
            self._changed.notify_all()
        return response

    def _encode_reply(self, reply: Message) -> bytes:
        try:
            return self.encode(reply)
        except LocalAdrError:  # our bug: answered 469, the harness serves on
            log.exception("could not serialize %s", type(reply).__name__)
            return self.encode(error_response(RuntimeError()))

    async def push(self, msg: Message) -> Pushed:
        """POST `msg` to the push VEN's transport address and read its oadrResponse."""
        reg = self.core.registration
        if reg is None or reg.transport_address is None or self._session is None:
            return Pushed(None, None, "the VEN gave no transport address")
        service = SERVICE_OF[type(msg)]
        url = f"{reg.transport_address.rstrip('/')}/{service}"
        body = self.encode(msg)
        self.core.note_sent(msg)
        self._note(Direction.SENT, service, body)
        try:
            async with self._session.post(url, data=body, ssl=self.ven.push_ssl or True,
                                          headers={"Content-Type": "application/xml"}) as resp:
                status, data = resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            return Pushed(None, None, f"{url}: {type(exc).__name__}: {exc}")
        self._note(Direction.RECEIVED, service, data, status)
        try:
            reply = codec.parse(data, verify=self._verify(self.clock())).message
        except AdrError as exc:
            return Pushed(status, None, f"HTTP {status}, unreadable answer: {exc}")
        return Pushed(status, reply)


def _new_id() -> str:
    return uuid.uuid4().hex


@dataclass(slots=True, kw_only=True)
class VtnContext(Context):
    """What a VEN-role case works with: the harness, and waits bounded by the VEN's poll
    frequency and `answer_within`."""

    harness: Harness
    case: Case
    start: int  # index in the harness log where this case began
    open_requests: set[str] = field(default_factory=set)

    @property
    def core(self) -> VtnCore:
        return self.harness.core

    @property
    def push(self) -> bool:
        return self.case.transport is Transport.PUSH

    @property
    def patience_s(self) -> float:
        """How long the VEN has for an answer: its next poll (pull) and `answer_within`."""
        ven = self.harness.ven
        return (ven.answer_within + (timedelta(0) if self.push else ven.poll_freq)).total_seconds()

    def now(self) -> datetime:
        return self.clock()

    def mark(self) -> int:
        return len(self.core.log)

    def received(self, cls: type[M], since: int | None = None) -> list[tuple[Inbound, M]]:
        """Messages of type `cls` the VEN sent since log index `since` (default: the case's)."""
        return [(i, i.message) for i in self.core.log[self.start if since is None else since:]
                if isinstance(i.message, cls)]

    async def wait_for(self, cls: type[M], *, since: int | None = None,
                       where: Callable[[M], bool] = lambda _: True,
                       within_s: float | None = None) -> M | None:
        """The first `cls` message since `since` satisfying `where`, waiting at most
        `within_s` (default `patience_s`) for it."""
        def found() -> M | None:
            return next((m for _, m in self.received(cls, since) if where(m)), None)

        await self.harness.until(lambda: found() is not None,
                                 self.patience_s if within_s is None else within_s)
        return found()

    async def quiet(self, seconds: float) -> None:
        """Let the VEN act for a while (what it must not do is judged afterwards)."""
        await asyncio.sleep(seconds)

    async def registered(self) -> Registration:
        """The VEN's registration; the case stops when it has none."""
        ok = await self.harness.until(lambda: self.core.registration is not None,
                                      self.patience_s)
        self.require(ok, "ven.registered", "the VEN under test is registered",
                     "no registration with the harness VTN")
        reg = self.core.registration
        assert reg is not None
        return reg

    async def send(self, msg: Message) -> None:
        """Deliver a request to the VEN: queued for its next poll (pull) or pushed (push).

        Raises:
            CaseStopped: the VEN did not come for it, or refused the push.
        """
        await self.registered()
        name = type(msg).__name__
        if self.push:
            pushed = await self.harness.push(msg)
            reply = pushed.reply
            code = reply.response.code if isinstance(reply, ResponseMessage) else None
            self.require(pushed.status == 200 and code == 200, "ven.push-accepted",
                         f"the VEN takes the pushed {name} (HTTP 200, oadrResponse 200)",
                         pushed.problem or f"HTTP {pushed.status}, {type(reply).__name__} {code}")
            return
        self.core.note_sent(msg)
        self.core.queue.append(msg)
        since = self.mark()
        fetched = await self.harness.until(
            lambda: any(i.delivered is msg for i in self.core.log[since:]),
            self.patience_s + self.harness.ven.poll_freq.total_seconds())
        if not fetched and msg in self.core.queue:
            self.core.queue.remove(msg)
        self.require(fetched, "ven.fetches", f"the VEN polls and fetches the queued {name}",
                     "not fetched")

    async def publish(self, *events: Event) -> None:
        """Make `events` the VEN's whole event set and distribute it (events of earlier cases
        left out are implicitly cancelled)."""
        self.core.events = {e.event_id: e for e in events}
        await self.send(self.core.distribute(self.now()))

    async def ask(self, instruction: str) -> None:
        prompt = self.harness.ven.prompt
        self.require(prompt is not None, "harness.hook", "a prompt for the VEN's operator",
                     "none given")
        assert prompt is not None
        await prompt.ask(instruction)
