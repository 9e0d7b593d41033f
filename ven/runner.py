"""The VEN fleet's I/O: many sans-IO `VenAgent`s on one event loop, one timer heap, one HTTP pool.

Rules of this file:
- One scheduler: each agent says when it next has work (`next_wakeup`); the loop's own timer heap
  (`loop.call_later`) wakes it then. There is no per-VEN task or scheduler while a VEN is idle.
- One `aiohttp.ClientSession` and connector for the whole fleet; per-VEN TLS contexts (client
  certificates) share it, keyed by the connector. `concurrency` bounds exchanges in flight.
- A `Transport` owns one VEN's wire: encode (and sign), POST, check the VTN's certificate
  fingerprint and signature, parse. It blames the VTN with `Refused` (4xx, unreadable reply) or
  `Unreachable` (no answer, 5xx); the agent decides what each means.
- State changes are flushed to the store after every exchange: a crash loses at most the exchange
  in flight, which the level-triggered agent derives again. A push is flushed before it is
  answered, since the VTN counts it delivered once answered.
- Push VENs share one listener (ven/push.py), bound before the agents start so that their
  transport addresses carry its real port; it reads and answers through each VEN's `Transport`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import ssl
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from typing import Final

import aiohttp

from adrgate.tls import client_context, pin
from oadr import codec
from oadr.errors import AdrError, LocalAdrError
from oadr.messages import Message, Poll, ResponseMessage
from oadr.schema import DEFAULT_MAX_BYTES
from oadr.signing import InMemoryReplayCache, ReplayCache, SigningKey, admit, check_signature, sign

from .agent import BadReply, Outgoing, VenAgent
from .fleet import FleetSpec, TlsSpec, VenSpec
from .push import Observer, PushListener, listener_context, transport_address
from .records import GridSignal, VenSnapshot
from .reports import TelemetrySource
from .store import FleetStore
from .telemetry import ModelTelemetry, declared_availability

log = logging.getLogger("adrgate.ven")

WAKE_SLOT: Final = 0.1  # seconds; see Fleet._schedule
MAX_EXCHANGES_PER_WAKE: Final = 20  # then yield to the other VENs and come back at once
HEARTBEAT_EVERY: Final = 5.0  # seconds between batched last-poll writes
REQUEST_TIMEOUT: Final = aiohttp.ClientTimeout(total=30)
SHUTDOWN_TIMEOUT: Final = 10.0

Clock = Callable[[], datetime]
SignalSink = Callable[[str, tuple[GridSignal, ...]], None]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Refused(Exception):
    """The VTN answered, but not with an acceptable reply to what we sent."""


class Unreachable(Exception):
    """No answer from the VTN."""


class Transport:
    def __init__(self, session: aiohttp.ClientSession, spec: VenSpec, *,
                 ssl_context: ssl.SSLContext | None, key: SigningKey | None,
                 replay: ReplayCache, clock: Clock, observer: Observer | None) -> None:
        self.session = session
        self.spec = spec
        self.ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else False
        self.key = key
        self.replay = replay
        self.clock = clock
        self.observer = observer
        self._poll: tuple[Poll, bytes] | None = None  # an unsigned poll never changes
        self._last_reply: tuple[bytes, Message] | None = None  # the VTN's repeated idle answer

    def encode(self, msg: Message) -> bytes:
        if self.key is not None:
            return codec.serialize(msg, sign=partial(sign, key=self.key, now=self.clock(),
                                                     nonce=uuid.uuid4().hex))
        if isinstance(msg, Poll):
            if self._poll is None or self._poll[0] != msg:
                self._poll = (msg, codec.serialize(msg))
            return self._poll[1]
        return codec.serialize(msg)

    async def exchange(self, out: Outgoing) -> Message:
        """POST one message and return the VTN's parsed reply.

        Raises:
            Unreachable: connection failure, timeout, HTTP 5xx, or a VTN certificate that is not
                the pinned one (refused inside the TLS handshake: see `adrgate.tls.pin`).
            Refused: HTTP 4xx, or a reply that is malformed, invalid or badly signed; or our
                message cannot be written (it fails the XSD).
        """
        try:
            body = self.encode(out.message)
        except LocalAdrError as exc:  # our bug; the agent settles it rather than resend forever
            log.error("cannot send %s: %s", type(out.message).__name__, exc,
                      extra={"ven": self.spec.name})
            raise Refused(f"not sent, it cannot be written: {exc}") from None
        url = f"{self.spec.vtn_url.rstrip('/')}/{out.service}"
        try:
            async with self.session.post(url, data=body, ssl=self.ssl,
                                         headers={"Content-Type": "application/xml"}) as resp:
                status, data = resp.status, await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc}") from None
        if self.observer is not None:
            self.observer(self.spec.name, out.service, body, data)
        if status >= 500:
            raise Unreachable(f"HTTP {status}")
        if status >= 400:
            raise Refused(f"HTTP {status}: {data[:200]!r}")
        return await self._parse(data)

    async def receive(self, data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> codec.Received:
        """Parse a payload from the VTN (a reply or a push); when this VEN signs, its signature
        must check out against the pinned fingerprint and its nonce must be new.

        Raises:
            AdrError: malformed, invalid, unsigned or badly signed, or replayed.
        """
        check = None
        if self.key is not None:
            check = partial(check_signature, expected_fingerprint=self.spec.vtn_fingerprint,
                            now=self.clock())
        received = codec.parse(data, max_bytes=max_bytes, verify=check)
        if received.signature is not None:
            await admit(received.signature, self.replay)
        return received

    async def _parse(self, data: bytes) -> Message:
        if self._last_reply is not None and self._last_reply[0] == data:
            return self._last_reply[1]
        try:
            received = await self.receive(data)
        except AdrError as exc:
            raise Refused(f"unacceptable reply ({exc.code}): {exc}") from None
        if received.signature is None:  # identical unsigned bytes parse to the same message
            self._last_reply = (data, received.message)
        return received.message


class Fleet:
    """Runs every VEN of a fleet file until `stop` is set."""

    def __init__(self, spec: FleetSpec, store: FleetStore, *, clock: Clock = utcnow,
                 telemetry: TelemetrySource | None = None, seed: int | None = None,
                 on_signals: SignalSink | None = None, observer: Observer | None = None) -> None:
        self.spec = spec
        self.store = store
        self.clock = clock
        self.rng = random.Random(seed)
        self.on_signals = on_signals
        self.observer = observer
        self.telemetry = telemetry  # None: each VEN gets the documented model (ven/telemetry.py)
        self.agents: dict[str, VenAgent] = {}
        self.transports: dict[str, Transport] = {}
        self._timers: dict[str, asyncio.Handle] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._beats: dict[str, tuple[datetime | None, str | None]] = {}  # as last written
        self._stopping = False
        self.started = asyncio.Event()  # every agent loaded and scheduled
        self.push_url: str | None = None  # the push listener's base URL, once it listens
        self._semaphore = asyncio.Semaphore(spec.concurrency)

    # --- run ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        connector = aiohttp.TCPConnector(limit=self.spec.max_connections)
        async with aiohttp.ClientSession(connector=connector, timeout=REQUEST_TIMEOUT) as session:
            listener = await self._listen()
            try:
                self._start(session)
                self.started.set()
                heartbeat = asyncio.create_task(self._heartbeats(stop))
                try:
                    await stop.wait()
                finally:
                    if listener is not None:  # no push is taken in while the VENs stop
                        await listener.close()
                    await self._shutdown()
                    heartbeat.cancel()
                    self._write_heartbeats()
            finally:  # also when the VENs could not start (closing twice is harmless)
                if listener is not None:
                    await listener.close()

    async def _listen(self) -> PushListener | None:
        """Start the push VENs' listener (None without push VENs) and set `push_url`.

        Raises:
            ValueError: push VENs without `push_listen`, or some with tls and some without.
            OSError: the address cannot be bound.
        """
        pushing = [ven for ven in self.spec.vens if ven.push]
        if not pushing:
            return None
        if self.spec.push_listen is None:
            raise ValueError(f"{pushing[0].name} has push but the fleet has no push_listen")
        ctx = listener_context(pushing)
        listener = PushListener(self.agents, self.transports, self._pushed,
                                observer=self.observer)
        host, port = self.spec.push_listen
        bound = await listener.start(host, port, ctx)
        bracketed = f"[{host}]" if ":" in host else host
        self.push_url = self.spec.push_url or \
            f"{'https' if ctx is not None else 'http'}://{bracketed}:{bound}"
        log.info("push listener on %s:%d, reached at %s", host, bound, self.push_url)
        return listener

    def _pushed(self, name: str, msg: Message) -> ResponseMessage:
        """A push for `name`: taken in, saved, and the VEN woken to send what it owes."""
        agent = self.agents[name]
        reply = agent.on_pushed(msg, self.clock())
        try:
            self._flush(name, agent)
        except Exception:  # kept by the agent, written with the next flush
            log.exception("could not save a push; keeping it for the next write",
                          extra={"ven": name})
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        self._wake(name)
        return reply

    def _start(self, session: aiohttp.ClientSession) -> None:
        snapshots = self.store.load_all()
        keys: dict[tuple[TlsSpec, str | None], tuple[ssl.SSLContext, SigningKey]] = {}
        replay = InMemoryReplayCache(self.clock)  # one for replies and pushes: nonces are per VTN
        now = self.clock()
        for ven in self.spec.vens:
            ctx, key = None, None
            if ven.tls is not None:
                ident = (ven.tls, ven.vtn_fingerprint)
                if ident not in keys:
                    keys[ident] = _load_tls(ven.tls, ven.vtn_fingerprint)
                ctx, key = keys[ident]
            snapshot = snapshots.get(ven.name)
            agent = VenAgent(ven, snapshot if snapshot is not None else VenSnapshot(),
                             rng=self.rng, new_id=_new_id,
                             telemetry=self.telemetry or self._model_telemetry(ven),
                             history=partial(self.store.samples, ven.name),
                             push_address=transport_address(self.push_url, ven.name)
                             if ven.push and self.push_url is not None else None)
            agent.start(now)
            self.agents[ven.name] = agent
            self.transports[ven.name] = Transport(
                session, ven, ssl_context=ctx, key=key if ven.sign else None, replay=replay,
                clock=self.clock, observer=self.observer)
            self._wake(ven.name)

    async def _shutdown(self) -> None:
        self._stopping = True
        for handle in self._timers.values():
            handle.cancel()
        if self._running:
            await asyncio.wait(list(self._running.values()), timeout=SHUTDOWN_TIMEOUT)
        leaving = [(name, out) for name, agent in self.agents.items()
                   if (out := agent.shutdown_message()) is not None]
        if leaving:
            await asyncio.wait([asyncio.create_task(self._leave(name, out))
                                for name, out in leaving], timeout=SHUTDOWN_TIMEOUT)

    async def _leave(self, name: str, out: Outgoing) -> None:
        try:
            await self.transports[name].exchange(out)
        except (Refused, Unreachable) as exc:
            log.warning("could not cancel the registration: %s", exc, extra={"ven": name})
            return
        self.store.forget(name)
        log.info("registration cancelled on shutdown", extra={"ven": name})

    # --- scheduling ---------------------------------------------------------------------

    def _wake(self, name: str) -> None:
        self._timers.pop(name, None)
        if self._stopping:
            return
        if name in self._running:
            self._again.add(name)
            return
        self._running[name] = asyncio.create_task(self._drive(name))

    def _schedule(self, name: str) -> None:
        agent = self.agents[name]
        now = self.clock()
        when = agent.next_wakeup(now)
        if name in self._again:
            self._again.discard(name)
            when = now
        if when is None or self._stopping:
            return
        loop = asyncio.get_running_loop()
        previous = self._timers.pop(name, None)
        if previous is not None:
            previous.cancel()
        delay = (when - now).total_seconds()
        if delay <= 0:
            self._timers[name] = loop.call_soon(self._wake, name)
            return
        # Wake-ups share slots of WAKE_SLOT seconds: VENs due in the same slot are served in one
        # turn of the loop (one poll of the selector for many), at most a slot late.
        slot = math.ceil((loop.time() + delay) / WAKE_SLOT) * WAKE_SLOT
        self._timers[name] = loop.call_at(slot, self._wake, name)

    async def _drive(self, name: str) -> None:
        agent, transport = self.agents[name], self.transports[name]
        try:
            for _ in range(MAX_EXCHANGES_PER_WAKE):
                agent.tick(self.clock())
                out = agent.next_message(self.clock())
                if out is None:
                    break
                async with self._semaphore:
                    await self._exchange(agent, transport, out)
                self._flush(name, agent)
            else:
                self._again.add(name)
        except Exception as exc:  # a bug in one VEN must not stop the fleet
            log.exception("failed; retrying later", extra={"ven": name})
            agent.on_internal_error(repr(exc), self.clock())
        finally:
            try:
                self._flush(name, agent)
            except Exception:  # kept by the agent: the next flush writes it
                log.exception("could not save state; keeping it for the next write",
                              extra={"ven": name})
            del self._running[name]
            self._schedule(name)

    async def _exchange(self, agent: VenAgent, transport: Transport, out: Outgoing) -> None:
        try:
            reply = await transport.exchange(out)
        except Unreachable as exc:
            agent.on_unreachable(out, str(exc), self.clock())
            return
        except Refused as exc:
            agent.on_refused(out, str(exc), self.clock())
            return
        try:
            agent.on_reply(out, reply, self.clock())
        except BadReply as exc:
            agent.on_refused(out, str(exc), self.clock())

    def _flush(self, name: str, agent: VenAgent) -> None:
        if not agent.pending.empty():  # an idle poll changes nothing: no new change set
            changes = agent.take_changes()
            try:
                self.store.save(name, changes)
            except Exception:
                agent.keep_changes(changes)  # nothing is lost: written with the next flush
                raise
        if agent.signals_changed:
            agent.signals_changed = False
            if self.on_signals is not None:
                self.on_signals(name, agent.signals(self.clock()))

    async def _heartbeats(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(HEARTBEAT_EVERY)
            self._write_heartbeats()

    def _write_heartbeats(self) -> None:
        beats = {name: (a.last_poll, a.last_error) for name, a in self.agents.items()}
        changed = {name: beat for name, beat in beats.items() if self._beats.get(name) != beat}
        if changed:
            self.store.save_heartbeats(changed)
        self._beats = beats

    def _model_telemetry(self, ven: VenSpec) -> TelemetrySource:
        """The documented telemetry model of one VEN's resources, driven by its own signals."""

        def signals(resource_id: str, now: datetime) -> tuple[GridSignal, ...]:
            return tuple(s for s in self.agents[ven.name].signals(now)
                         if resource_id in s.resources)

        return ModelTelemetry(signals, declared_availability(ven.availability))

    def signals(self, name: str) -> tuple[GridSignal, ...]:
        return self.agents[name].signals(self.clock())


def _load_tls(tls: TlsSpec, vtn_fingerprint: str | None) -> tuple[ssl.SSLContext, SigningKey]:
    with open(tls.cert, "rb") as cert, open(tls.key, "rb") as key:
        signing_key = SigningKey.load(cert.read(), key.read())
    # With a pin the VTN is identified by its fingerprint (and CA), not by the URL's host name.
    ctx = client_context(tls.cert, tls.key, tls.ca, check_hostname=vtn_fingerprint is None)
    return (pin(ctx, vtn_fingerprint) if vtn_fingerprint else ctx), signing_key


def _new_id() -> str:
    return uuid.uuid4().hex
