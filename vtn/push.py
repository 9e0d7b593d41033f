"""HTTP push (OpenADR 2.0b simpleHttp, `oadrHttpPullModel` false): the VTN POSTs to the VEN.

A push VEN gets exactly what it would have got on its next poll (`VtnHandlers.owed`), at once:
the operator and the handlers `notify` the pusher when a VEN is newly owed something, and a
periodic sweep catches the rest (a missed notify, a backoff that ended, a distribute still
unacknowledged after `resend_after`, whatever was owed when the VTN last stopped). What is owed
lives in the database (delivery rows, outbox); a message counts as sent only once the VEN took
it (HTTP 200 carrying an oadrResponse with code 200).

The decisions (where to POST, whether the VEN took it, how long to back off) are plain
functions; `Pusher` does the I/O.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp

from oadr import codec
from oadr.errors import AdrError
from oadr.messages import SERVICE_OF, Message, ResponseMessage
from oadr.signing import verifier

from adrgate.tls import client_context, pin

from .batch import Batch
from .handlers import VtnHandlers
from .records import Delivery, EventRecord, VenRecord
from .store import PushState, PushWork, VtnStore

log = logging.getLogger("adrgate.vtn.push")


@dataclass(frozen=True, slots=True, kw_only=True)
class PushTls:
    """Mutual TLS as a client: the VTN's own certificate, and the CA VEN listeners chain to."""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class PushConfig:
    concurrency: int = 100  # pushes in flight at once, over all VENs
    timeout: timedelta = timedelta(seconds=10)  # one POST, connect to answer
    backoff: timedelta = timedelta(seconds=1)  # after the first failure; doubles per failure
    backoff_max: timedelta = timedelta(seconds=300)
    unreachable_after: int = 5  # consecutive failures
    sweep_every: timedelta = timedelta(seconds=5)
    sweep_limit: int = 10_000  # VENs started per sweep; the next sweep takes the rest
    resend_after: timedelta = timedelta(seconds=30)  # an unacknowledged distribute is re-pushed
    rounds: int = 20  # messages pushed to one VEN in a row before it waits for a sweep
    tls: PushTls | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.unreachable_after < 1 or self.rounds < 1 \
                or self.sweep_limit < 1:
            raise ValueError("push concurrency, rounds, sweep limit and unreachable-after "
                             "must be at least 1")
        for name in ("timeout", "backoff", "backoff_max", "sweep_every", "resend_after"):
            if getattr(self, name) <= timedelta(0):
                raise ValueError(f"push {name} must be positive")


# --- decisions (no I/O) ---------------------------------------------------------------------

def pushable(ven: VenRecord | None) -> bool:
    return ven is not None and ven.is_registered and not ven.http_pull_model \
        and bool(ven.transport_address)


def push_url(transport_address: str, message: Message) -> str:
    """`{transport address}/{service}`: EiEvent, EiReport or EiRegisterParty by payload."""
    return f"{transport_address.rstrip('/')}/{SERVICE_OF[type(message)]}"


def refusal(status: int, body: bytes, ven: VenRecord, *, now: datetime,
            require_signatures: bool) -> str | None:
    """Why the VEN did not take a push, or None when it answered HTTP 200 with an oadrResponse
    of code 200 (signed by its registered certificate, when signed)."""
    if status != 200:
        return f"HTTP {status}"
    try:
        received = codec.parse(body, verify=verifier(now=now, required=require_signatures))
    except AdrError as exc:
        return f"unreadable answer: {exc.description or type(exc).__name__}"
    msg = received.message
    if not isinstance(msg, ResponseMessage):
        return f"answered {type(msg).__name__}, not oadrResponse"
    if msg.response.code != 200:
        return f"refused with {msg.response.code} {msg.response.description or ''}".rstrip()
    if msg.ven_id is not None and msg.ven_id != ven.ven_id:
        return f"answered for venID {msg.ven_id}"
    signer = received.signature.signer if received.signature is not None else None
    if signer is not None and ven.fingerprint is not None and signer != ven.fingerprint:
        return f"answer signed by {signer}, not the VEN's certificate"
    return None


def backoff(failures: int, config: PushConfig, rng: random.Random) -> timedelta:
    """Exponential in consecutive failures, capped, with jitter so VENs that failed together
    (a fleet listener restarting) are not retried in lockstep."""
    ceiling: timedelta = min(config.backoff * 2 ** min(failures - 1, 32), config.backoff_max)
    return ceiling * rng.uniform(0.5, 1.0)


def after_failure(state: PushState, error: str, now: datetime, config: PushConfig,
                  rng: random.Random) -> PushState:
    failures = state.failures + 1
    return dataclasses.replace(
        state, failures=failures, unreachable=failures >= config.unreachable_after,
        next_attempt=now + backoff(failures, config, rng), last_error=error)


# --- I/O ------------------------------------------------------------------------------------

class Pusher:
    """Pushes what push VENs are owed; `start` it on the app's loop, `notify` it on changes."""

    def __init__(self, store: VtnStore, handlers: VtnHandlers, *,
                 encode: Callable[[Message], bytes], clock: Callable[[], datetime],
                 config: PushConfig = PushConfig(), require_signatures: bool = False,
                 rng: random.Random | None = None) -> None:
        self.store = store
        self.handlers = handlers
        self.encode = encode
        self.clock = clock
        self.config = config
        self.require_signatures = require_signatures
        self.rng = rng or random.Random()
        self._slots = asyncio.Semaphore(config.concurrency)
        self._wake = asyncio.Event()
        self._busy: set[str] = set()  # VENs with a worker: one push at a time per VEN
        self._tasks: set[asyncio.Task[None]] = set()
        self._failing: dict[str, PushState] = {}
        self._contexts: dict[str | None, ssl.SSLContext] = {}
        self._session: aiohttp.ClientSession | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._notices = 0  # `notify` calls so far: a worker pushes again only after one
        # distributes the VENs took are recorded in batches, one transaction for many VENs
        self._distributed = Batch(store.mark_distributed_many, wait=0.005)

    def notify(self) -> None:
        """Some VEN is newly owed something: sweep now (safe to call often)."""
        self._notices += 1
        self._wake.set()

    async def start(self) -> None:
        self._failing = self.store.push_states()
        for state in self._failing.values():  # backoffs that ran when the VTN stopped
            self._wake_at(state.next_attempt)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.config.concurrency),
            timeout=aiohttp.ClientTimeout(total=self.config.timeout.total_seconds()))
        self.handlers.notify = self.notify
        self._loop_task = asyncio.create_task(self._run(), name="vtn-pusher")

    async def stop(self) -> None:
        self.handlers.notify = lambda: None
        self._distributed.flush()  # distributes VENs already took
        tasks = [t for t in (self._loop_task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        every = self.config.sweep_every.total_seconds()
        while True:
            self._wake.clear()
            try:
                self.sweep()
            except Exception:  # the database hiccupped: the next sweep tries again
                log.exception("push sweep failed")
            try:
                await asyncio.wait_for(self._wake.wait(), every)
            except TimeoutError:
                pass

    def sweep(self) -> None:
        """Start a worker for every push VEN owed something and not backing off."""
        now = self.clock()
        seen = self._notices
        work = [w for w in self.store.push_work(now, now - self.config.resend_after,
                                                self.config.sweep_limit)
                if w.ven.ven_id not in self._busy and pushable(w.ven)]
        # one read of the distributes' deliveries for the whole fan-out, not one per VEN
        opened = self.store.open_deliveries([w.ven.ven_id for w in work if w.distribute])
        for w in work:
            self._busy.add(w.ven.ven_id)
            task = asyncio.create_task(self._serve(w, opened.get(w.ven.ven_id), seen))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, work: PushWork, opened: Sequence[tuple[Delivery, EventRecord]] | None,
                     seen: int) -> None:
        # push while the VEN is owed something, as successive polls would fetch it
        ven_id = work.ven.ven_id
        try:
            for _ in range(self.config.rounds):
                if not await self._push(work, opened):
                    break
                if work.distribute and not work.outbox and self._notices == seen:
                    break  # the distribute was all it was owed, and nothing changed since
                seen, opened = self._notices, None
                now = self.clock()
                again = self.store.push_work(now, now - self.config.resend_after, 1, ven_id)
                if not again or not pushable(again[0].ven):
                    break
                work = again[0]
        except Exception:
            log.exception("pushing to %s failed", ven_id)
        finally:
            self._busy.discard(ven_id)

    async def _push(self, work: PushWork,
                    opened: Sequence[tuple[Delivery, EventRecord]] | None) -> bool:
        """Push the next message the VEN is owed; True when it took one (look for more)."""
        ven, now = work.ven, self.clock()
        if work.distribute:
            message, sent = self.handlers.render_distribute(ven, now, opened)
            error = await self._post(ven, message)
            if error is None:
                await self._distributed((ven.ven_id, sent, self.clock()))
        else:
            owed = self.handlers.owed(ven, now, now - self.config.resend_after, distribute=False)
            if owed is None:
                return False
            error = await self._post(ven, owed.message)
            if error is None:
                owed.record(self.clock())
        if error is not None:
            self._failed(ven, error)
            return False
        self._succeeded(ven)
        return True

    async def _post(self, ven: VenRecord, message: Message) -> str | None:
        assert self._session is not None and ven.transport_address
        url = push_url(ven.transport_address, message)
        async with self._slots:
            try:
                async with self._session.post(
                        url, data=self.encode(message), ssl=self._ssl_for(ven),
                        headers={"Content-Type": "application/xml"}) as resp:
                    status, body = resp.status, await resp.read()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                return f"{type(exc).__name__}: {exc}"[:300]
        return refusal(status, body, ven, now=self.clock(),
                       require_signatures=self.require_signatures)

    def _ssl_for(self, ven: VenRecord) -> ssl.SSLContext | bool:
        """With TLS configured: present the VTN's certificate, verify the listener against the
        CA and, when the VEN registered one, its certificate fingerprint (inside the handshake,
        before the payload leaves). Contexts are cached per fingerprint."""
        tls = self.config.tls
        if tls is None:
            return True  # aiohttp's default verification, should the address be https
        ctx = self._contexts.get(ven.fingerprint)
        if ctx is None:
            # VEN certificates name no host: the fingerprint is their identity
            ctx = client_context(tls.cert, tls.key, tls.ca, check_hostname=False)
            if ven.fingerprint is not None:
                ctx = pin(ctx, ven.fingerprint)
            self._contexts[ven.fingerprint] = ctx
        return ctx

    def _failed(self, ven: VenRecord, error: str) -> None:
        before = self._failing.get(ven.ven_id, PushState(ven_id=ven.ven_id))
        state = after_failure(before, error, self.clock(), self.config, self.rng)
        self.store.save_push_state(state)
        self._failing[ven.ven_id] = state
        if state.unreachable and not before.unreachable:
            log.warning("VEN %s (%s) is unreachable after %d failed pushes: %s",
                        ven.ven_name, ven.ven_id, state.failures, error)
        else:
            log.info("push to %s failed (%d in a row): %s", ven.ven_name, state.failures, error)
        self._wake_at(state.next_attempt)

    def _wake_at(self, when: datetime | None) -> None:
        """Sweep when a backoff ends, rather than at the next periodic sweep."""
        if when is not None:
            delay = (when - self.clock()).total_seconds()
            asyncio.get_running_loop().call_later(max(delay, 0.0), self.notify)

    def _succeeded(self, ven: VenRecord) -> None:
        before = self._failing.pop(ven.ven_id, None)
        if before is None:
            return
        self.store.clear_push_state(ven.ven_id)
        if before.unreachable:
            log.warning("VEN %s (%s) is reachable again", ven.ven_name, ven.ven_id)
