"""A simulated IEEE 2030.5 inverter: an end device that polls its server for DERControls.

Each poll reads the DERProgramList, then every program's DERControlList. A control it has not
seen (by mRID) is recorded as a `Command` with the program's primacy and acknowledged (Response
status 1); once a control starts and ends the device says so (2, 3). A superseded or cancelled
control is withdrawn and answered (7, 6). The device draws its own start delay within
randomizeStart (seeded); a control that follows on from one it holds keeps that one's delay, so
back-to-back plan steps stay back to back.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import aiohttp
from envoy_schema.server.schema.sep2.der import (
    DERControlListResponse, DERControlResponse, DERProgramListResponse)
from envoy_schema.server.schema.sep2.event import EventStatusType
from envoy_schema.server.schema.sep2.response import DERControlResponse as ControlResponse
from envoy_schema.server.schema.sep2.response import ResponseType

from bridge.channel import Command, CommandBook
from bridge.ieee2030_5 import (
    ACTIVE, BAD_DOCUMENT, CONTENT_TYPE, Clock, interval, lfdi, setpoint)
from bridge.models import Device

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class _Held:
    primacy: int
    scheduled: tuple[datetime, datetime]
    delay: timedelta
    reported: set[ResponseType] = field(default_factory=set)

    @property
    def effective(self) -> tuple[datetime, datetime]:
        return self.scheduled[0] + self.delay, self.scheduled[1] + self.delay


class SimInverter:
    def __init__(self, server_url: str, device: Device, book: CommandBook, *,
                 period_s: float = 5.0, rng: random.Random | None = None,
                 clock: Clock = _now) -> None:
        self.device = device
        self.book = book
        self.polls = 0
        self.url = server_url  # the server it polls; may be re-pointed while it runs
        self._period_s = period_s
        self._rng = rng or random.Random(0)
        self._clock = clock
        self._held: dict[str, _Held] = {}  # by mRID, as long as the server lists it
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self._task = asyncio.create_task(self._run())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        while True:
            try:
                await self.poll()
            except (aiohttp.ClientError, TimeoutError, *BAD_DOCUMENT) as e:
                log.warning("%s: poll failed: %r", self.device.reach, e)
            await asyncio.sleep(self._period_s)

    async def poll(self) -> None:
        """One poll: read every program's controls, act on what changed, report progress."""
        self.polls += 1
        programs = DERProgramListResponse.from_xml(
            await self._get(f"/edev/{self.device.reach}/derp"))
        listed: set[str] = set()
        for program in programs.DERProgram or []:
            if program.DERControlListLink is None:
                continue
            controls = DERControlListResponse.from_xml(
                await self._get(program.DERControlListLink.href))
            for control in controls.DERControl or []:
                listed.add(control.mRID)
                await self._consider(control, program.primacy)
        for gone in set(self._held) - listed:  # the server dropped it: it has ended
            del self._held[gone]
        await self._report_progress()

    async def _consider(self, control: DERControlResponse, primacy: int) -> None:
        held = self._held.get(control.mRID)
        if control.EventStatus_.currentStatus in ACTIVE:
            if held is None:
                await self._accept(control, primacy)
            return
        if held is not None and not held.reported & _ENDINGS:
            self.book.withdraw(self.device.device_id, control.mRID)
            superseded = control.EventStatus_.currentStatus == EventStatusType.Superseded
            await self._respond(control.mRID, held, ResponseType.EVENT_SUPERSEDED if superseded
                                else ResponseType.EVENT_CANCELLED)

    async def _accept(self, control: DERControlResponse, primacy: int) -> None:
        scheduled = interval(control)
        delay = next((h.delay for h in self._held.values()
                      if h.primacy == primacy and h.scheduled[1] == scheduled[0]), None)
        if delay is None:
            bound = control.randomizeStart or 0
            delay = timedelta(seconds=self._rng.randint(min(bound, 0), max(bound, 0)))
        held = self._held[control.mRID] = _Held(primacy, scheduled, delay)
        start, end = held.effective
        self.book.record(Command(
            device_id=self.device.device_id,
            setpoint=setpoint(control.DERControlBase_, self.device), start=start, end=end,
            source=control.mRID, received_at=self._clock(), primacy=primacy))
        await self._respond(control.mRID, held, ResponseType.EVENT_RECEIVED)

    async def _report_progress(self) -> None:
        now = self._clock()
        for mrid, held in list(self._held.items()):
            if held.reported & _ENDINGS:
                continue
            start, end = held.effective
            if now >= start and ResponseType.EVENT_STARTED not in held.reported:
                await self._respond(mrid, held, ResponseType.EVENT_STARTED)
            if now >= end:
                await self._respond(mrid, held, ResponseType.EVENT_COMPLETED)

    async def _respond(self, mrid: str, held: _Held, status: ResponseType) -> None:
        response = ControlResponse(createdDateTime=round(self._clock().timestamp()),
                                   endDeviceLFDI=lfdi(self.device.reach), status=status,
                                   subject=mrid)
        assert self._session is not None
        async with self._session.post(f"{self.url}/edev/{self.device.reach}/rsp",
                                      data=response.to_xml(skip_empty=True),
                                      headers={"Content-Type": CONTENT_TYPE}) as r:
            r.raise_for_status()
        held.reported.add(status)

    async def _get(self, path: str) -> bytes:
        assert self._session is not None, "start() first"
        async with self._session.get(f"{self.url}{path}", headers={"Accept": CONTENT_TYPE}) as r:
            r.raise_for_status()
            return await r.read()


_ENDINGS = {ResponseType.EVENT_COMPLETED, ResponseType.EVENT_SUPERSEDED,
            ResponseType.EVENT_CANCELLED}
