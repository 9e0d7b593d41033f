"""The IEEE 2030.5 channel for inverters: plans become DERControls that the devices pull.

In 2030.5 the server publishes DERControls in a DERProgram's DERControlList; each end device
polls the list and POSTs a Response per control (1 received, 2 started, 3 completed, ...).
The documents are envoy-schema's pydantic-xml models; the encode/decode functions here do no I/O.

Plan step -> DERControlBase (the sign convention follows 2030.5: positive W is delivered by the
DER, i.e. discharge; negative W is absorbed, i.e. charge):
    CHARGE p     opModTargetW = -p W
    DISCHARGE p  opModTargetW = +p W
    HOLD         opModTargetW = 0
    LIMIT l      csipaus:opModImpLimW = l % of rated import, in W (LIMIT caps import; the core
                 opModMaxLimW caps generation, so it cannot express it)
    BALANCE      opModEnergize = true and no other mode: the inverter's own self-consumption
                 control (an empty DERControlBase would vanish from the XML)
An override that must stop the device sends `cease_to_energize` (opModEnergize = false).

The server is a loopback subset of the 2030.5 resource tree, per end device (Device.reach: its LFDI
or a short id):
    GET  /edev/{reach}/derp                    DERProgramList (one program per primacy in use)
    GET  /edev/{reach}/derp/{primacy}/derc     DERControlList
    POST /edev/{reach}/rsp                     DERControlResponse -> 201
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler
from envoy_schema.server.schema.sep2.der import (
    DERControlBase, DERControlListResponse, DERControlResponse, DERProgramListResponse,
    DERProgramResponse)
from envoy_schema.server.schema.sep2.der_control_types import ActivePower
from envoy_schema.server.schema.sep2.event import EventStatus, EventStatusType
from envoy_schema.server.schema.sep2.identification import ListLink
from envoy_schema.server.schema.sep2.response import DERControlResponse as ControlResponse
from envoy_schema.server.schema.sep2.response import ResponseType
from envoy_schema.server.schema.sep2.types import DateTimeIntervalType
from lxml import etree
from pydantic_xml.errors import BaseError as XmlModelError

from .channel import (
    PLAN_PRIMACY, ChannelError, Delivery, DeviceUnavailable, Dispatch, Setpoint)
from .loopback import Served
from .models import Channel, Device, Mode, Plan, PlanStep

CONTENT_TYPE: Final = "application/sep+xml"
MAX_RANDOMIZE_S: Final = 3600  # OneHourRangeType
# Bit flags of responseRequired: message received (0x01) and specific responses (0x02).
RESPONSE_REQUIRED: Final = "03"
ACTIVE: Final = (EventStatusType.Scheduled, EventStatusType.Active)
_LFDI: Final = re.compile(r"[0-9a-fA-F]{40}")

Clock = Callable[[], datetime]
# What the parsers raise on anything that is not the document they expect.
BAD_DOCUMENT: Final = (XmlModelError, etree.LxmlError, ValueError)  # ValueError: pydantic's


def _now() -> datetime:
    return datetime.now(UTC)


def lfdi(reach: str) -> str:
    """The end device's LFDI: `reach` itself when it is one (40 hex digits), else derived from it
    (a short id stands for a device whose certificate this loopback setup does not have)."""
    if _LFDI.fullmatch(reach):
        return reach.lower()
    return hashlib.sha256(reach.encode()).hexdigest()[:40]


def control_mrid(plan: Plan, index: int) -> str:
    """Deterministic per plan, sequence and step: a re-sent plan publishes the same controls."""
    return hashlib.sha256(f"{plan.plan_id}#{plan.sequence}#{index}".encode()).hexdigest()[:32]


def step_base(step: PlanStep, device: Device) -> DERControlBase:
    if step.mode is Mode.LIMIT:
        assert step.level is not None  # models.validate
        watts = round(device.rated_import_kw * 1000 * step.level / 100)
        return DERControlBase(opModImpLimW=ActivePower(multiplier=0, value=watts))
    if step.mode is Mode.BALANCE:
        return DERControlBase(opModEnergize=True)
    sign = {Mode.CHARGE: -1, Mode.DISCHARGE: 1, Mode.HOLD: 0}[step.mode]
    watts = round(sign * (step.power_kw or 0.0) * 1000)
    return DERControlBase(opModTargetW=ActivePower(multiplier=0, value=watts))


def plan_controls(plan: Plan, device: Device, *, now: datetime,
                  steps: Iterable[int] | None = None) -> list[DERControlResponse]:
    """One DERControl per plan step (or per index in `steps`). Raises ValueError when the plan's
    random delay exceeds what randomizeStart can carry."""
    randomize = round(plan.random_delay.total_seconds())
    if randomize > MAX_RANDOMIZE_S:
        raise ValueError(f"random delay {randomize} s exceeds {MAX_RANDOMIZE_S} s (randomizeStart)")
    indices = range(len(plan.steps)) if steps is None else list(steps)
    if any(not 0 <= i < len(plan.steps) for i in indices):
        raise ValueError(f"no step {list(indices)} in a plan of {len(plan.steps)}")
    return [der_control(control_mrid(plan, i), plan.steps[i].start, plan.steps[i].end,
                        step_base(plan.steps[i], device), now=now, randomize_s=randomize,
                        description=f"{plan.plan_id}#{plan.sequence} step {i}")
            for i in indices]


def cease_to_energize(device: Device, start: datetime, end: datetime, mrid: str,
                      *, now: datetime | None = None) -> DERControlResponse:
    """A control telling the device to stop exchanging power (opModEnergize=false), no random
    start. Primacy belongs to the program, not the control: an override publishes it with
    `Ieee20305Server.publish(reach, [control], primacy)` at a primacy below PLAN_PRIMACY."""
    return der_control(mrid, start, end, DERControlBase(opModEnergize=False),
                       now=now or _now(), randomize_s=0,
                       description=f"cease {device.device_id}")


def der_control(mrid: str, start: datetime, end: datetime, base: DERControlBase, *,
                now: datetime, randomize_s: int, description: str) -> DERControlResponse:
    """One DERControl of `base` over [start, end), `randomize_s` its randomizeStart."""
    status = EventStatusType.Active if start <= now else EventStatusType.Scheduled
    return DERControlResponse(
        mRID=mrid, description=description, creationTime=_epoch(now),
        EventStatus_=EventStatus(currentStatus=status, dateTime=_epoch(now),
                                 potentiallySuperseded=False),
        interval=DateTimeIntervalType(start=_epoch(start),
                                      duration=round((end - start).total_seconds())),
        randomizeStart=randomize_s or None, DERControlBase_=base,
        responseRequired=RESPONSE_REQUIRED)


def setpoint(base: DERControlBase, device: Device) -> Setpoint:
    """What a device does under a control (the inverse of `step_base`, plus cease to energize)."""
    if base.opModEnergize is False:
        return Setpoint(mode=Mode.HOLD, energized=False)
    if base.opModImpLimW is not None:
        watts = base.opModImpLimW.value * 10 ** base.opModImpLimW.multiplier
        return Setpoint(mode=Mode.LIMIT, level=round(100 * watts / (device.rated_import_kw * 1000)))
    if base.opModTargetW is not None:
        kw = base.opModTargetW.value * 10 ** base.opModTargetW.multiplier / 1000
        if kw == 0:
            return Setpoint(mode=Mode.HOLD)
        return Setpoint(mode=Mode.DISCHARGE if kw > 0 else Mode.CHARGE, power_kw=abs(kw))
    return Setpoint(mode=Mode.BALANCE)


def interval(control: DERControlResponse) -> tuple[datetime, datetime]:
    start = datetime.fromtimestamp(control.interval.start, UTC)
    return start, start + timedelta(seconds=control.interval.duration)


def _epoch(t: datetime) -> int:
    return round(t.timestamp())


@dataclass(slots=True)
class _EndDevice:
    programs: dict[int, dict[str, DERControlResponse]] = field(default_factory=dict)  # by primacy
    responses: dict[str, set[int]] = field(default_factory=dict)  # by control mRID
    requests: int = 0


class Ieee20305Server(Served):
    """Publishes DERControls per end device and collects their Responses."""

    def __init__(self, devices: Iterable[str], *, poll_rate_s: int = 60,
                 clock: Clock = _now) -> None:
        self.poll_rate_s = poll_rate_s
        self._clock = clock
        self._devices = {reach: _EndDevice() for reach in devices}
        self._responded = asyncio.Condition()
        self.app = web.Application(middlewares=[self._count])
        self.app.router.add_get("/edev/{reach}/derp", self._programs)
        self.app.router.add_get("/edev/{reach}/derp/{primacy}/derc", self._controls)
        self.app.router.add_post("/edev/{reach}/rsp", self._response)

    def publish(self, reach: str, controls: Sequence[DERControlResponse],
                primacy: int) -> list[str]:
        """Add `controls` to the device's program of `primacy`; returns the mRIDs that are new
        (a control already held is left as it is). Older controls of that program overlapping a
        new one are marked superseded; controls that have ended are dropped. KeyError: unknown."""
        device = self._devices[reach]
        now = self._clock()
        program = device.programs.setdefault(primacy, {})
        for mrid in [m for m, c in program.items() if interval(c)[1] <= now]:
            del program[mrid]
            device.responses.pop(mrid, None)
        new = [c for c in controls if c.mRID not in program]
        for old in program.values():
            if old.EventStatus_.currentStatus in ACTIVE and any(_overlap(old, c) for c in new):
                old.EventStatus_ = EventStatus(currentStatus=EventStatusType.Superseded,
                                               dateTime=_epoch(now), potentiallySuperseded=False)
        for control in new:
            control.replyTo = f"/edev/{reach}/rsp"
            program[control.mRID] = control
        return [c.mRID for c in new]

    def cancel(self, reach: str, mrids: Iterable[str]) -> list[str]:
        """Mark the device's held controls in `mrids` cancelled (EventStatus 2): on its next poll
        the device withdraws them and answers 6. Returns the mRIDs that were still in force
        (scheduled or active). KeyError: unknown device."""
        device = self._devices[reach]
        wanted, now = set(mrids), _epoch(self._clock())
        cancelled = []
        for program in device.programs.values():
            for mrid in wanted & program.keys():
                control = program[mrid]
                if control.EventStatus_.currentStatus in ACTIVE:
                    control.EventStatus_ = EventStatus(currentStatus=EventStatusType.Cancelled,
                                                       dateTime=now, potentiallySuperseded=False)
                    cancelled.append(mrid)
        return cancelled

    def responses(self, reach: str, mrid: str) -> set[int]:
        return set(self._devices[reach].responses.get(mrid, ()))

    def requests(self, reach: str) -> int:
        """Requests the device has made (polls and responses), good or bad."""
        return self._devices[reach].requests

    async def received(self, reach: str, mrids: Iterable[str], timeout_s: float, *,
                       status: int | None = None) -> None:
        """Wait until the device has acknowledged every control in `mrids` (with `status`, if
        given: e.g. 6, cancelled). TimeoutError; a rejection (status >= 252) raises
        ChannelError."""
        wanted = list(mrids)
        def acknowledged() -> bool:
            return all(status in got if status is not None else got
                       for got in (self.responses(reach, m) for m in wanted))
        async with self._responded:
            await asyncio.wait_for(self._responded.wait_for(acknowledged), timeout_s)
        rejected = {m: s for m in wanted for s in self.responses(reach, m)
                    if s >= ResponseType.REJECTED_CONTROL_PARAM_NOT_APPLICABLE}
        if rejected:
            raise ChannelError(f"{reach} rejected {rejected}", retryable=False)

    @web.middleware
    async def _count(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        device = self._devices.get(request.match_info.get("reach", ""))
        if device is not None:
            device.requests += 1
        return await handler(request)

    def _device(self, request: web.Request) -> tuple[str, _EndDevice]:
        reach = request.match_info["reach"]
        if reach not in self._devices:
            raise web.HTTPNotFound(text=f"unknown end device {reach!r}")
        return reach, self._devices[reach]

    async def _programs(self, request: web.Request) -> web.Response:
        reach, device = self._device(request)
        programs = [DERProgramResponse(
            href=f"/edev/{reach}/derp/{primacy}", mRID=f"{primacy:032x}", primacy=primacy,
            DERControlListLink=ListLink(href=f"/edev/{reach}/derp/{primacy}/derc",
                                        all_=len(controls)))
            for primacy, controls in sorted(device.programs.items())]
        document = DERProgramListResponse(href=f"/edev/{reach}/derp", all_=len(programs),
                                          results=len(programs), DERProgram=programs,
                                          pollRate=self.poll_rate_s)
        return _sep(document.to_xml(skip_empty=True))

    async def _controls(self, request: web.Request) -> web.Response:
        _, device = self._device(request)
        try:
            program = device.programs[int(request.match_info["primacy"])]
        except (ValueError, KeyError):
            raise web.HTTPNotFound(text="no such program") from None
        controls = sorted(program.values(), key=lambda c: c.interval.start)
        document = DERControlListResponse(href=request.path, all_=len(controls),
                                          results=len(controls), DERControl=controls)
        return _sep(document.to_xml(skip_empty=True))

    async def _response(self, request: web.Request) -> web.Response:
        reach, device = self._device(request)
        try:
            response = ControlResponse.from_xml(await request.read())
        except BAD_DOCUMENT as e:
            raise web.HTTPBadRequest(text=f"not a DERControlResponse: {e}") from e
        if response.endDeviceLFDI.lower() != lfdi(reach):
            raise web.HTTPBadRequest(
                text=f"endDeviceLFDI {response.endDeviceLFDI} is not {reach}'s")
        if response.status is None:
            raise web.HTTPBadRequest(text="Response without status")
        if not any(response.subject in program for program in device.programs.values()):
            raise web.HTTPBadRequest(text=f"no control {response.subject} for {reach}")
        device.responses.setdefault(response.subject, set()).add(response.status)
        async with self._responded:
            self._responded.notify_all()
        return web.Response(status=201, headers={"Location": f"/edev/{reach}/rsp"})


def _overlap(a: DERControlResponse, b: DERControlResponse) -> bool:
    (a0, a1), (b0, b1) = interval(a), interval(b)
    return a0 < b1 and b0 < a1


def _sep(xml: str | bytes) -> web.Response:
    body = xml if isinstance(xml, bytes) else xml.encode()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


class Ieee20305Driver:
    """Publishes each dispatch's controls in the aggregator's program (primacy PLAN_PRIMACY) and
    returns once the device has acknowledged every one. A plan older than the newest delivered
    to the device is refused (no rollback); a re-sent plan republishes nothing. The device
    pulls, so `Delivery.messages` counts its requests (polls included) from publishing to the
    last acknowledgement, each with its answer."""

    channel = Channel.IEEE_2030_5

    def __init__(self, server: Ieee20305Server, *, ack_timeout_s: float = 180.0,
                 clock: Clock = _now) -> None:
        self._server = server
        self._timeout_s = ack_timeout_s
        self._clock = clock
        self._sequence: dict[str, int] = {}  # newest plan sequence delivered, per device

    async def deliver(self, dispatch: Dispatch) -> Delivery:
        plan, device = dispatch.plan, dispatch.device
        newest = self._sequence.get(device.device_id, plan.sequence)
        if plan.sequence < newest:
            raise ChannelError(f"{dispatch.key}: sequence {plan.sequence} is older than {newest}",
                               retryable=False)
        sent_at = self._clock()
        try:
            controls = plan_controls(plan, device, now=sent_at,
                                     steps=None if dispatch.step is None else [dispatch.step])
            before = self._server.requests(device.reach)
            new = self._server.publish(device.reach, controls, PLAN_PRIMACY)
        except ValueError as e:
            raise ChannelError(f"{dispatch.key}: {e}", retryable=False) from e
        except KeyError as e:
            raise ChannelError(f"{dispatch.key}: unknown end device {device.reach}",
                               retryable=False) from e
        self._sequence[device.device_id] = plan.sequence
        mrids = [c.mRID for c in controls]
        try:
            await self._server.received(device.reach, mrids, self._timeout_s)
        except TimeoutError as e:
            raise DeviceUnavailable(f"{device.reach} did not acknowledge {dispatch.key} in "
                                    f"{self._timeout_s} s") from e
        return Delivery(key=dispatch.key, plan_id=plan.plan_id, device_id=device.device_id,
                        channel=self.channel,
                        messages=2 * (self._server.requests(device.reach) - before),
                        sent_at=sent_at, acked_at=self._clock(),
                        detail=f"{len(new)} new of {len(mrids)} controls: {' '.join(mrids)}")

    async def aclose(self) -> None:
        """The server belongs to whoever started it."""
