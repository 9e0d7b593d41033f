"""A smart-metering network on loopback: a DCC that service users reach over HTTP, and the
ESMEs/SAPCs behind it (the far end of `bridge.sapc`; domain.md section 5).

    POST {dcc}/duis/services   body SignedRequest -> Response (always a DUIS Response body)

The DCC checks the signature against the user's registered P-256 key, then its capacity
(requests per rolling minute; a critical command counts once), its role, and that the device
exists. A critical request (7.13, 7.16, 6.14.3) is answered with its pre-command
(CommandVariant 4); only a CommandVariant 5 identical to a pre-command the DCC issued goes on to
the device. Every refusal is a Response with its code and a 4xx status; the DCC keeps serving.

The SAPC applies what reaches it (`SapcSim.handle`):
- 7.12 sets the device's randomised offset limit (seconds, initially 0).
- 7.13 records `Setpoint(LIMIT, level)` as a `Command` for the load on that controller, its
  window moved later by a random offset in [0, limit] (one draw per command, so the switch at
  its start is randomised, as a SAPC does it). Primacy: a plan's.
- 7.16 records the cap at `LIMIT_PRIMACY` (beats every plan) at once, unrandomised, and alerts
  the user: ECS101 when processed, ECS102 when its window ends or it is cancelled.
- 6.14.3 is stored as the device's calendar (not expanded into commands).
- A request sent again with ExecutionDateTime 3000-12-31 (same service and body, same user,
  fresh counter) cancels the command it matches.
- Anti-replay: per (user, device) a counter must exceed every counter already applied.

Latency is simulated per one-way hop (user<->DCC, DCC<->device); `hops` counts the messages.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from bridge.channel import PLAN_PRIMACY, Command, CommandBook, Setpoint
from bridge.loopback import Served
from bridge.duis import (
    MAX_FRAME_BYTES, SERVICES_PATH, Alert, AlertCode, AuxControllerCalendar, CommandVariant,
    ControllerLevel, DuisError, LimitApcLevel, RequestId, Response, ResponseCode, Service,
    ServiceRequest, SetRandomisedOffsetLimit, decode_signed, encode_response, verify)
from bridge.models import Mode

LIMIT_PRIMACY: Final = 10  # a Limit APC Level beats every plan (PLAN_PRIMACY 100)

log = logging.getLogger(__name__)

AlertSink = Callable[[Alert], Awaitable[None]]
Clock = Callable[[], datetime]


class Role(StrEnum):
    SUPPLIER = "supplier"  # (or an aggregator acting for one) runs the APC: 7.12, 7.13, 6.14.3
    LOAD_CONTROLLER = "load_controller"  # caps it: 7.16


ALLOWED: Final[Mapping[Role, frozenset[Service]]] = {
    Role.SUPPLIER: frozenset({Service.SET_RANDOMISED_OFFSET_LIMIT,
                              Service.SET_AUX_CONTROLLER_STATE, Service.AUX_CONTROLLER_CALENDAR}),
    Role.LOAD_CONTROLLER: frozenset({Service.LIMIT_APC_LEVEL}),
}


@dataclass(frozen=True, slots=True)
class Latency:
    """One-way delay per hop, seconds."""

    user_dcc: float
    dcc_device: float


# A critical command crosses user<->DCC four times and DCC<->device twice: 4 x 1.5 + 2 x 8 = 22 s,
# inside the 25 s on-demand target; the accelerated preset is the same shape, 100 times faster.
REALISTIC: Final = Latency(user_dcc=1.5, dcc_device=8.0)
ACCELERATED: Final = Latency(user_dcc=0.015, dcc_device=0.08)
INSTANT: Final = Latency(user_dcc=0.0, dcc_device=0.0)

_STATUS: Final[Mapping[ResponseCode, int]] = {
    ResponseCode.SUCCESS: 200, ResponseCode.PRE_COMMAND: 200,
    ResponseCode.MALFORMED: 400, ResponseCode.INVALID: 400,
    ResponseCode.BAD_SIGNATURE: 401, ResponseCode.UNKNOWN_USER: 401,
    ResponseCode.ROLE_NOT_ALLOWED: 403,
    ResponseCode.UNKNOWN_DEVICE: 404, ResponseCode.NO_SUCH_COMMAND: 404,
    ResponseCode.REPLAYED_COUNTER: 409, ResponseCode.NO_PRE_COMMAND: 409,
    ResponseCode.NOT_SUPPORTED: 422, ResponseCode.THROTTLED: 429,
}


def _now() -> datetime:
    return datetime.now(UTC)


def _refuse(request: ServiceRequest | None, code: ResponseCode, detail: str) -> Response:
    return Response(request_id="" if request is None else str(request.request_id), code=code,
                    detail=detail)


def _ok(request: ServiceRequest, detail: str = "") -> Response:
    return Response(request_id=str(request.request_id), code=ResponseCode.SUCCESS, detail=detail)


class SapcSim:
    """ESMEs / SAPCs by EUI-64; `devices[eui][n]` is the device_id (in `book`) of the load on
    Auxiliary Controller n."""

    def __init__(self, book: CommandBook, devices: Mapping[str, Mapping[int, str]], *,
                 rng: random.Random, clock: Clock = _now) -> None:
        self.book = book
        self.on_alert: Callable[[Alert], None] = lambda alert: None  # set by the DCC
        self._devices = devices
        self._rng = rng
        self._clock = clock
        self._offset_limit: dict[str, int] = {}
        self._counters: dict[tuple[str, str], int] = {}  # (user, device) -> highest applied
        # (user, device, body) -> the RequestID that set it: what a cancellation matches.
        self._held: dict[tuple[str, str, ControllerLevel], str] = {}
        self._ends: dict[str, asyncio.TimerHandle] = {}  # 7.16 RequestID -> its ECS102 timer
        self.calendars: dict[str, AuxControllerCalendar] = {}

    def knows(self, eui: str) -> bool:
        return eui in self._devices

    def offset_limit(self, eui: str) -> int:
        return self._offset_limit.get(eui, 0)

    def handle(self, request: ServiceRequest) -> Response:
        rid = request.request_id
        controllers = self._devices.get(rid.device)
        if controllers is None:
            return _refuse(request, ResponseCode.UNKNOWN_DEVICE, f"no device {rid.device}")
        last = self._counters.get((rid.user, rid.device), -1)
        if rid.counter <= last:
            return _refuse(request, ResponseCode.REPLAYED_COUNTER,
                           f"counter {rid.counter} not above {last}")
        response = self._apply(request, controllers)
        if response.ok:
            self._counters[rid.user, rid.device] = rid.counter
        return response

    def _apply(self, request: ServiceRequest, controllers: Mapping[int, str]) -> Response:
        rid = request.request_id
        match request.body:
            case SetRandomisedOffsetLimit(seconds=seconds) if not request.cancels:
                self._offset_limit[rid.device] = seconds
                return _ok(request)
            case AuxControllerCalendar() as calendar if not request.cancels:
                self.calendars[rid.device] = calendar
                return _ok(request)
            case ControllerLevel() as window:
                device_id = controllers.get(window.controller)
                if device_id is None:
                    return _refuse(request, ResponseCode.NOT_SUPPORTED,
                                   f"no load on controller {window.controller}")
                if request.cancels:
                    return self._cancel(request, window, device_id)
                return self._set(request, window, device_id)
        return _refuse(request, ResponseCode.NOT_SUPPORTED,
                       f"SRV {request.service} cannot be cancelled")

    def _set(self, request: ServiceRequest, window: ControllerLevel, device_id: str) -> Response:
        rid = request.request_id
        limit = isinstance(window, LimitApcLevel)
        offset = timedelta(seconds=0 if limit else
                           self._rng.randint(0, self.offset_limit(rid.device)))
        self.book.record(Command(
            device_id=device_id, setpoint=Setpoint(mode=Mode.LIMIT, level=window.level),
            start=window.start + offset, end=window.end + offset, source=str(rid),
            received_at=self._clock(), primacy=LIMIT_PRIMACY if limit else PLAN_PRIMACY))
        self._held[rid.user, rid.device, window] = str(rid)
        if limit:
            self._alert(AlertCode.LIMIT_PROCESSED, rid, window.controller)
            delay = max(0.0, (window.end - self._clock()).total_seconds())
            self._ends[str(rid)] = asyncio.get_running_loop().call_later(
                delay, self._ended, rid, window)
        return _ok(request, f"offset {offset.total_seconds():g} s")

    def _cancel(self, request: ServiceRequest, window: ControllerLevel,
                device_id: str) -> Response:
        rid = request.request_id
        source = self._held.pop((rid.user, rid.device, window), None)
        if source is None:
            return _refuse(request, ResponseCode.NO_SUCH_COMMAND, "no such command held")
        self.book.withdraw(device_id, source)
        timer = self._ends.pop(source, None)
        if timer is not None:
            timer.cancel()
            self._alert(AlertCode.LIMIT_ENDED, RequestId.parse(source), window.controller,
                        "cancelled")
        return _ok(request, f"cancelled {source}")

    def _ended(self, rid: RequestId, window: ControllerLevel) -> None:
        self._ends.pop(str(rid), None)
        self._held.pop((rid.user, rid.device, window), None)
        self._alert(AlertCode.LIMIT_ENDED, rid, window.controller, "ended")

    def _alert(self, code: AlertCode, rid: RequestId, controller: int, reason: str = "") -> None:
        self.on_alert(Alert(code=code, request_id=rid, controller=controller,
                            at=self._clock(), reason=reason))

    def close(self) -> None:
        for timer in self._ends.values():
            timer.cancel()
        self._ends.clear()


@dataclass(frozen=True, slots=True)
class ServiceUser:
    eui: str
    key: ec.EllipticCurvePublicKey
    roles: frozenset[Role]
    alerts: AlertSink | None = None


class DccSim(Served):
    def __init__(self, sapc: SapcSim, *, latency: Latency = ACCELERATED,
                 capacity_per_minute: int | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 max_pending: int = 10_000) -> None:
        self.sapc = sapc
        self.latency = latency
        self.capacity_per_minute = capacity_per_minute
        self.hops: Counter[str] = Counter()  # "user->dcc", "dcc->user", "dcc->device", ...
        self._monotonic = monotonic
        self._max_pending = max_pending
        self._users: dict[str, ServiceUser] = {}
        self._recent: dict[str, deque[float]] = {}  # per user: when its requests arrived
        self._pending: OrderedDict[str, ServiceRequest] = OrderedDict()  # RequestID -> variant 4
        self._tasks: set[asyncio.Task[None]] = set()
        sapc.on_alert = self._relay_alert
        self.app = web.Application(client_max_size=MAX_FRAME_BYTES)
        self.app.router.add_post(SERVICES_PATH, self._post)

    def add_user(self, user: ServiceUser) -> None:
        self._users[user.eui] = user

    async def close(self) -> None:
        self.sapc.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await super().close()

    async def _post(self, http: web.Request) -> web.Response:
        self.hops["user->dcc"] += 1
        await asyncio.sleep(self.latency.user_dcc)
        status: int | None = None
        try:
            response = await self._serve(await http.read())
        except web.HTTPRequestEntityTooLarge:
            response = _refuse(None, ResponseCode.MALFORMED,
                               f"body over {MAX_FRAME_BYTES} bytes")
            status = 413
        await asyncio.sleep(self.latency.user_dcc)
        self.hops["dcc->user"] += 1
        return web.Response(body=encode_response(response), content_type="application/xml",
                            status=status or _STATUS[response.code])

    async def _serve(self, data: bytes) -> Response:
        try:
            signed = decode_signed(data)
        except DuisError as exc:
            return _refuse(None, exc.code, str(exc))
        request = signed.request
        rid = request.request_id
        user = self._users.get(rid.user)
        if user is None:
            return _refuse(request, ResponseCode.UNKNOWN_USER, f"no service user {rid.user}")
        if not verify(signed, user.key):
            return _refuse(request, ResponseCode.BAD_SIGNATURE, "signature does not verify")
        match request.variant:
            case CommandVariant.REQUEST:
                return await self._request(request, user)
            case CommandVariant.SIGNED_PRE_COMMAND:
                issued = self._pending.pop(str(rid), None)
                if issued is None or dataclasses.replace(
                        issued, variant=CommandVariant.SIGNED_PRE_COMMAND) != request:
                    return _refuse(request, ResponseCode.NO_PRE_COMMAND,
                                   "no identical pre-command was issued for this RequestID")
                return await self._forward(request)
        return _refuse(request, ResponseCode.INVALID, "users do not send pre-commands")

    async def _request(self, request: ServiceRequest, user: ServiceUser) -> Response:
        if self._throttled(user.eui):
            return _refuse(request, ResponseCode.THROTTLED,
                           f"over {self.capacity_per_minute} requests per minute")
        if not any(request.service in ALLOWED[role] for role in user.roles):
            return _refuse(request, ResponseCode.ROLE_NOT_ALLOWED,
                           f"roles {sorted(user.roles)} may not send SRV {request.service}")
        if not self.sapc.knows(request.request_id.device):
            return _refuse(request, ResponseCode.UNKNOWN_DEVICE,
                           f"no device {request.request_id.device}")
        if not request.service.critical:
            return await self._forward(request)
        pre = dataclasses.replace(request, variant=CommandVariant.PRE_COMMAND)
        self._pending[str(request.request_id)] = pre
        while len(self._pending) > self._max_pending:
            self._pending.popitem(last=False)
        return Response(request_id=str(request.request_id), code=ResponseCode.PRE_COMMAND,
                        pre_command=pre)

    def _throttled(self, user: str) -> bool:
        if self.capacity_per_minute is None:
            return False
        now = self._monotonic()
        recent = self._recent.setdefault(user, deque())
        while recent and recent[0] <= now - 60.0:
            recent.popleft()
        if len(recent) >= self.capacity_per_minute:
            return True
        recent.append(now)
        return False

    async def _forward(self, request: ServiceRequest) -> Response:
        self.hops["dcc->device"] += 1
        await asyncio.sleep(self.latency.dcc_device)
        response = self.sapc.handle(request)
        await asyncio.sleep(self.latency.dcc_device)
        self.hops["device->dcc"] += 1
        return response

    def _relay_alert(self, alert: Alert) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver_alert(alert))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver_alert(self, alert: Alert) -> None:
        self.hops["device->dcc"] += 1
        await asyncio.sleep(self.latency.dcc_device)
        user = self._users.get(alert.request_id.user)
        if user is None or user.alerts is None:
            return
        await asyncio.sleep(self.latency.user_dcc)
        self.hops["dcc->user"] += 1
        try:
            await user.alerts(alert)
        except Exception:  # the user's sink failing must not stop the DCC
            log.exception("alert sink of %s failed on %s", user.eui, alert.code)
