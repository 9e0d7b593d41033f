"""The control override (issue 5 item 4): cap or stop devices through paths that do not go
through the aggregator's bridge, each with a primacy that beats every aggregator plan.

Paths, each optional, run concurrently; one failing never stops the others:

- "openadr": one event at priority 1 (the highest) in a CMB program, created with the VTN's
  `Operator`, to the VENs fronting the devices (`DeviceRegistration.ven_id`):
  LOAD_CONTROL / x-loadControlCapacity = level / 100 (0 when the override ceases to energize:
  OpenADR has no cease-to-energize). Its eiTarget names the VENs and, where given, the devices'
  resourceIDs; resourceIDs are left out when another VEN owns one of them, because the VTN
  reaches every VEN owning a named resource and the override must not reach another
  aggregator's devices (the event then covers each named VEN as a whole). "Reached" means the
  VTN owes the event to the device's VEN: it goes out on the VEN's next poll. Lift: cancel it.
  Two overrides overlapping on one VEN conflict (one event per VEN and program at a time): the
  second is reported as failed with the VTN's reason.
- "sapc": SRV 7.16 Limit APC Level, through the DCC, as the CMB's own service user in the Load
  Controller role (its own EUI-64, key and counters), to every SAPC device (`reach`: the
  SAPC's EUI-64). The SAPC holds it at LIMIT_PRIMACY and alerts the CMB: ECS101 when applied,
  ECS102 when lifted. Level 0 when the override ceases to energize (a SAPC can only cap load).
  Lift: the same request again with ExecutionDateTime 3000-12-31 (the DUIS cancellation).
  At most `concurrency` devices are in flight at once (the DCC throttles per user); a
  retryable failure (throttled, DCC unreachable, no answer) is tried again with the same
  counter, so a request the device did apply is answered "already applied".
- "ieee2030_5": a DERControl per inverter in the CMB's DERProgram (CMB_PRIMACY, below
  PLAN_PRIMACY): csipaus:opModImpLimW = level % of rated import, plus opModEnergize=false when
  the override ceases to energize; published on the `Ieee20305Server` the inverters poll.
  "Reached" means the inverter acknowledged it. Lift: the control is cancelled (EventStatus 2)
  and the inverter answers 6. Its mRID derives from the override and the device, so applying
  an override twice publishes nothing new. A newer override on the same inverter supersedes
  an older one (one CMB program per device).

An override without an end lasts OPEN_ENDED (a year) on every path: 7.16 and 2030.5 need an
end, and a year is far past any plan's 48 h validity, so it holds until lifted.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, Protocol

from envoy_schema.server.schema.sep2.der import DERControlBase
from envoy_schema.server.schema.sep2.der_control_types import ActivePower
from envoy_schema.server.schema.sep2.response import ResponseType

from bridge.channel import ChannelError
from bridge.duis import DuisError, LimitApcLevel
from bridge.ieee2030_5 import Ieee20305Server, der_control
from bridge.models import Channel
from bridge.sapc import Exchange, SapcDriver
from oadr.messages import Target
from vtn.eventjson import FieldError
from vtn.operator import Conflict, NotFound, Operator
from vtn.records import VenStatus
from vtn.targets import audience

from .records import DeviceRegistration, Override, OverrideTarget

CMB_PRIMACY: Final = 1  # the CMB's DERProgram: below PLAN_PRIMACY (100), so it beats every plan
OVERRIDE_PRIORITY: Final = 1  # OpenADR: 1 is the highest priority (0 means none)
CMB_PROGRAM: Final = "http://cmb.example/programs/override"
OPEN_ENDED: Final = timedelta(days=365)

PathName = Literal["openadr", "sapc", "ieee2030_5"]
Action = Literal["apply", "lift"]
Clock = Callable[[], datetime]
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def resolve(target: OverrideTarget, registry: Iterable[DeviceRegistration]
            ) -> list[DeviceRegistration]:
    """The registered devices an override reaches, in registry order."""
    return [r for r in registry if target.matches(r)]


def window_end(override: Override) -> datetime:
    return override.end if override.end is not None else override.start + OPEN_ENDED


def event_id(override: Override) -> str:
    """The OpenADR event of an override: derived, so a restarted CMB lifts what it applied."""
    return f"cmb-{override.override_id}"


def control_mrid(override: Override, reach: str) -> str:
    """The DERControl mRID of an override on one inverter (derived, as `event_id`)."""
    return hashlib.sha256(f"cmb#{override.override_id}#{reach}".encode()).hexdigest()[:32]


@dataclass(slots=True, kw_only=True)
class PathOutcome:
    """What one path did: the devices it reached, those it failed with why, or why the whole
    path failed (`error`)."""

    reached: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    messages: int = 0  # protocol messages, both ways (OpenADR: distributes owed)
    detail: str = ""
    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PathResult:
    path: PathName
    action: Action
    override_id: str
    reached: tuple[str, ...]  # device ids
    failed: dict[str, str]  # device id -> reason
    error: str | None  # the path failed as a whole
    messages: int
    started: datetime
    finished: datetime
    detail: str = ""
    # Derived, but fields, so that the record's JSON (the audit log) carries them.
    ok: bool = field(init=False)
    reason: str | None = field(init=False)  # why it did not fully succeed

    def __post_init__(self) -> None:
        object.__setattr__(self, "ok", self.error is None and not self.failed)
        object.__setattr__(self, "reason", self._reason())

    def _reason(self) -> str | None:
        if self.error is not None:
            return self.error
        if not self.failed:
            return None
        device, why = next(iter(self.failed.items()))
        return f"{len(self.failed)} of {len(self.failed) + len(self.reached)} devices failed; " \
               f"{device}: {why}"


class OverridePath(Protocol):
    name: PathName

    async def apply(self, override: Override, devices: Sequence[DeviceRegistration]
                    ) -> PathOutcome: ...

    async def lift(self, override: Override, devices: Sequence[DeviceRegistration]
                   ) -> PathOutcome: ...

    async def aclose(self) -> None: ...


# -- OpenADR -------------------------------------------------------------------------------------

class OpenAdrPath:
    name: PathName = "openadr"

    def __init__(self, operator: Operator, *, program: str = CMB_PROGRAM,
                 clock: Clock = _now) -> None:
        self._operator = operator
        self._program = program
        self._clock = clock

    async def apply(self, override: Override, devices: Sequence[DeviceRegistration]
                    ) -> PathOutcome:
        out = PathOutcome()
        fronted = [d for d in devices if d.ven_id is not None]
        vens = self._known_vens(fronted, out)
        if not vens:
            out.detail = "no known VEN fronts these devices"
            return out
        ev_id = event_id(override)
        existing = self._operator.store.get_event(ev_id)
        if existing is not None and not existing.cancelled:
            out.detail = f"event {ev_id} already published"
        else:
            now = self._clock()
            try:
                self._operator.create_event(self._event(override, fronted, vens), now)
            except (FieldError, Conflict) as exc:
                out.error = f"the VTN refused event {ev_id}: {exc}"
                return out
            out.detail = f"event {ev_id}"
        owed = {d.ven_id for d in self._operator.store.deliveries_for_event(ev_id)
                if not d.removed}
        out.messages = len(owed)
        for d in fronted:
            if d.ven_id in owed:
                out.reached.append(d.device_id)
            elif d.device_id not in out.failed:
                out.failed[d.device_id] = f"event {ev_id} does not reach VEN {d.ven_id}"
        return out

    async def lift(self, override: Override, devices: Sequence[DeviceRegistration]
                   ) -> PathOutcome:
        out = PathOutcome()
        ev_id = event_id(override)
        try:
            self._operator.cancel_event(ev_id, self._clock(),
                                        f"CMB override {override.override_id} lifted")
        except NotFound:
            if any(d.ven_id is not None for d in devices):
                out.error = f"no event {ev_id} to cancel"
            return out
        owed = {d.ven_id for d in self._operator.store.deliveries_for_event(ev_id)
                if not d.removed}
        out.reached = [d.device_id for d in devices if d.ven_id in owed]
        out.messages = len(owed)
        out.detail = f"event {ev_id} cancelled"
        return out

    async def aclose(self) -> None:
        """The VTN belongs to whoever runs it."""

    def _known_vens(self, devices: Sequence[DeviceRegistration], out: PathOutcome) -> list[str]:
        """The devices' VENs the VTN can send to (registered or provisioned); devices behind
        any other are failed with the reason."""
        usable = []
        for ven_id in sorted({d.ven_id for d in devices if d.ven_id is not None}):
            try:
                status = self._operator.ven(ven_id).status
            except NotFound:
                why = f"VEN {ven_id} is unknown to the VTN"
            else:
                if status in (VenStatus.REGISTERED, VenStatus.PROVISIONED):
                    usable.append(ven_id)
                    continue
                why = f"VEN {ven_id} is {status}"
            out.failed |= {d.device_id: why for d in devices if d.ven_id == ven_id}
        return usable

    def _event(self, override: Override, devices: Sequence[DeviceRegistration],
               vens: list[str]) -> dict[str, object]:
        resources = sorted({d.resource_id for d in devices
                            if d.ven_id in vens and d.resource_id is not None})
        others = audience(Target(resource_ids=tuple(resources)), self._program,
                          self._operator.store.list_vens())
        if not set(others) <= set(vens):
            resources = []  # naming them would reach another aggregator's VEN
        seconds = round((window_end(override) - override.start).total_seconds())
        capacity = override.level / 100 if override.energized else 0.0
        return {
            "event_id": event_id(override),
            "market_context": self._program,
            "dtstart": override.start.isoformat(),
            "duration": seconds,
            "priority": OVERRIDE_PRIORITY,
            "targets": {"ven_ids": vens, "resource_ids": resources},
            "vtn_comment": " ".join(filter(None, (f"CMB override {override.override_id}",
                                                  override.reason))),
            "signals": [{"signal_name": "LOAD_CONTROL", "signal_type": "x-loadControlCapacity",
                         "signal_id": "cmb-cap",
                         "intervals": [{"duration": seconds, "payload": capacity}]}],
        }


# -- smart metering ------------------------------------------------------------------------------

class ClockCounters:
    """GBCS counters for the CMB's DCC user: strictly increasing, and never reused after a
    restart without persisting anything. Each is the wall clock in microseconds since 1970,
    or one more than the last when the clock has not moved on; a counter runs ahead of the
    clock only by the requests sent within one microsecond (each waits for a DCC round trip),
    so a restarted CMB, reading the clock again, starts above every counter it used. Assumes
    the wall clock does not step back across a restart by more than that."""

    def __init__(self, clock: Clock = _now) -> None:
        self._clock = clock
        self._last = 0

    def next(self) -> int:
        self._last = max(self._last + 1, (self._clock() - _EPOCH) // timedelta(microseconds=1))
        return self._last


class SapcPath:
    name: PathName = "sapc"

    def __init__(self, driver: SapcDriver, *, counters: ClockCounters | None = None,
                 controller: int = 1, concurrency: int = 2048, attempts: int = 3,
                 backoff_s: float = 1.0) -> None:
        """`driver` is the CMB's own DCC user, registered with the DCC as a Load Controller."""
        self._driver = driver
        self._counters = counters or ClockCounters()
        self._controller = controller
        self._slots = asyncio.Semaphore(concurrency)
        self._attempts = attempts
        self._backoff_s = backoff_s

    def limit(self, override: Override) -> LimitApcLevel:
        """The 7.16 body of an override: derived from it alone, so a lift (which repeats the
        body) works after a restart."""
        return LimitApcLevel(controller=self._controller, start=override.start,
                             end=window_end(override),
                             level=override.level if override.energized else 0)

    async def apply(self, override: Override, devices: Sequence[DeviceRegistration]
                    ) -> PathOutcome:
        return await self._each(override, devices, lambda eui, body, counter: self._driver.limit(
            eui, body, counter=counter))

    async def lift(self, override: Override, devices: Sequence[DeviceRegistration]
                   ) -> PathOutcome:
        return await self._each(override, devices, lambda eui, body, counter: self._driver.cancel(
            eui, body, counter=counter))

    async def aclose(self) -> None:
        await self._driver.aclose()

    async def _each(self, override: Override, devices: Sequence[DeviceRegistration],
                    send: Callable[[str, LimitApcLevel, int], Awaitable[Exchange]]
                    ) -> PathOutcome:
        out = PathOutcome()
        try:
            body = self.limit(override)
        except DuisError as exc:
            out.error = f"no Limit APC Level for override {override.override_id}: {exc}"
            return out
        ids: list[str] = []

        async def one(device: DeviceRegistration) -> None:
            async with self._slots:
                counter = self._counters.next()
                for attempt in range(1, self._attempts + 1):
                    try:
                        exchange = await send(device.reach, body, counter)
                    except ChannelError as exc:
                        if exc.retryable and attempt < self._attempts:
                            await asyncio.sleep(self._backoff_s * attempt)
                            continue
                        out.failed[device.device_id] = str(exc)
                        return
                    out.reached.append(device.device_id)
                    out.messages += exchange.messages
                    ids.extend(exchange.request_ids)
                    return

        await asyncio.gather(*(one(d) for d in devices if d.channel is Channel.SAPC))
        out.detail = " ".join(ids)
        return out


# -- IEEE 2030.5 ---------------------------------------------------------------------------------

class Ieee20305Path:
    name: PathName = "ieee2030_5"

    def __init__(self, server: Ieee20305Server, *, primacy: int = CMB_PRIMACY,
                 ack_timeout_s: float = 180.0, clock: Clock = _now) -> None:
        self._server = server
        self._primacy = primacy
        self._timeout_s = ack_timeout_s
        self._clock = clock

    def control_base(self, override: Override, device: DeviceRegistration) -> DERControlBase:
        watts = round(device.rated_import_kw * 1000 * override.level / 100)
        return DERControlBase(opModImpLimW=ActivePower(multiplier=0, value=watts),
                              opModEnergize=None if override.energized else False)

    async def apply(self, override: Override, devices: Sequence[DeviceRegistration]
                    ) -> PathOutcome:
        async def one(device: DeviceRegistration, mrid: str) -> None:
            control = der_control(mrid, override.start, window_end(override),
                                  self.control_base(override, device), now=self._clock(),
                                  randomize_s=0,
                                  description=f"CMB override {override.override_id}")
            self._server.publish(device.reach, [control], self._primacy)
            await self._server.received(device.reach, [mrid], self._timeout_s)

        return await self._each(override, devices, one)

    async def lift(self, override: Override, devices: Sequence[DeviceRegistration]
                   ) -> PathOutcome:
        async def one(device: DeviceRegistration, mrid: str) -> None:
            if self._server.cancel(device.reach, [mrid]):  # else: ended or never held
                await self._server.received(device.reach, [mrid], self._timeout_s,
                                            status=ResponseType.EVENT_CANCELLED)

        return await self._each(override, devices, one)

    async def aclose(self) -> None:
        """The server belongs to whoever started it."""

    async def _each(self, override: Override, devices: Sequence[DeviceRegistration],
                    act: Callable[[DeviceRegistration, str], Awaitable[None]]) -> PathOutcome:
        """Run `act` per inverter; the device pulls, so messages are its requests meanwhile
        (polls included), each with its answer."""
        out = PathOutcome()
        mrids: list[str] = []

        async def one(device: DeviceRegistration) -> None:
            mrid = control_mrid(override, device.reach)
            try:
                before = self._server.requests(device.reach)
                await act(device, mrid)
            except KeyError:
                out.failed[device.device_id] = f"unknown end device {device.reach}"
                return
            except TimeoutError:
                out.failed[device.device_id] = (f"{device.reach} did not acknowledge {mrid} "
                                                f"in {self._timeout_s} s")
                return
            except ChannelError as exc:
                out.failed[device.device_id] = str(exc)
                return
            out.reached.append(device.device_id)
            out.messages += 2 * (self._server.requests(device.reach) - before)
            mrids.append(mrid)

        await asyncio.gather(*(one(d) for d in devices if d.channel is Channel.IEEE_2030_5))
        out.detail = " ".join(mrids)
        return out


# -- the executor --------------------------------------------------------------------------------

class OverrideExecutor:
    """Applies and lifts overrides on every configured path at once."""

    def __init__(self, *, openadr: OpenAdrPath | None = None, sapc: SapcPath | None = None,
                 ieee2030_5: Ieee20305Path | None = None, clock: Clock = _now) -> None:
        self.paths: tuple[OverridePath, ...] = tuple(
            p for p in (openadr, sapc, ieee2030_5) if p is not None)
        self._clock = clock

    async def apply(self, override: Override, devices: Sequence[DeviceRegistration]
                    ) -> list[PathResult]:
        return await self._all("apply", override, devices)

    async def lift(self, override: Override, devices: Sequence[DeviceRegistration]
                   ) -> list[PathResult]:
        return await self._all("lift", override, devices)

    async def aclose(self) -> None:
        for path in self.paths:
            await path.aclose()

    async def _all(self, action: Action, override: Override,
                   devices: Sequence[DeviceRegistration]) -> list[PathResult]:
        return list(await asyncio.gather(*(self._one(p, action, override, devices)
                                           for p in self.paths)))

    async def _one(self, path: OverridePath, action: Action, override: Override,
                   devices: Sequence[DeviceRegistration]) -> PathResult:
        started = self._clock()
        run = path.apply if action == "apply" else path.lift
        try:
            out = await run(override, devices)
        except Exception as exc:  # one path failing must not stop the others: reported
            out = PathOutcome(error=f"{type(exc).__name__}: {exc}")
        return PathResult(path=path.name, action=action, override_id=override.override_id,
                          reached=tuple(out.reached), failed=dict(out.failed), error=out.error,
                          messages=out.messages, started=started, finished=self._clock(),
                          detail=out.detail)
