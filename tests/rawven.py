"""A raw OpenADR VEN for protocol tests: typed `oadr.messages` in, `codec` bytes over HTTP.

Tests read as protocol scripts: `await ven.register()`, `await ven.poll()`,
`await ven.send(CreateOpt(...))`. Every reply the VTN emits goes through `RawVen.post`, which
asserts it passes `oadr.conformance.check` (XSD plus the certification rules) before a test
sees it, so no test can forget to validate what the VTN sent.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import aiohttp

from oadr import codec, conformance
from oadr.messages import (
    SERVICE_OF, CreatedEvent, CreatedPartyRegistration, CreatePartyRegistration,
    DistributeEvent, EventResponse, ItemBase, Message, OptType, Poll, QueryRegistration,
    RegisteredReport, RegisterReport, Report, ReportDescription, Response,
)
from oadr.signing import SigningKey, sign

from tests.vtnkit import Vtn, utcnow


def new_id() -> str:
    return uuid.uuid4().hex


def code(msg: Any) -> int:
    """The OpenADR response code a reply carries."""
    return int(msg.response.code)


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    message: Message | None  # the parsed payload when the VTN answered with XML


def assert_conformant_reply(body: bytes, now: datetime) -> Message:
    """The one check every message the VTN emits in these tests passes; returns it parsed."""
    conformance.assert_conformant(body, now=now)
    return codec.parse(body).message


class Clock:
    """A VTN clock for tests: real time plus an offset the test moves forward.

    Install it with `Clock.install(vtn)`; the VTN then reads every `now` from it.
    """

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return utcnow() + self.offset

    def advance(self, by: timedelta) -> None:
        self.offset += by

    @classmethod
    def install(cls, vtn: Vtn) -> Clock:
        clock = cls()
        vtn.deps.clock = clock
        return clock


class RawVen:
    """A VEN that speaks OpenADR 2.0b by hand, one message at a time, with no automatic replies.

    `key` signs every message (for a VTN that requires XML signatures).
    """

    def __init__(self, vtn: Vtn, name: str, *, key: SigningKey | None = None) -> None:
        self.vtn = vtn
        self.name = name
        self.key = key
        self.ven_id: str | None = None
        self.registration_id: str | None = None

    # --- transport ------------------------------------------------------------------------

    def encode(self, msg: Message) -> bytes:
        signer = None
        if self.key is not None:
            signer = partial(sign, key=self.key, now=utcnow(), nonce=new_id())
        return codec.serialize(msg, sign=signer)

    async def post(self, service: str, body: bytes) -> Reply:
        """POST raw bytes to `/OpenADR2/Simple/2.0b/<service>`; an XML reply must conform."""
        connector = aiohttp.TCPConnector(ssl=False)
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.post(f"{self.vtn.oadr_url}/{service}", data=body,
                                    headers={"Content-Type": "application/xml"}) as resp:
                status, data = resp.status, await resp.read()
        assert status < 500, f"VTN answered HTTP {status}: {data[:300]!r}"
        message = None
        if status == 200 or data.lstrip().startswith(b"<?xml"):
            message = assert_conformant_reply(data, now=self.vtn.deps.clock())
        return Reply(status=status, body=data, message=message)

    async def send(self, msg: Message, *, service: str | None = None) -> Any:
        """Send a typed message on its service (or `service`) and return the typed reply."""
        reply = await self.post(service or SERVICE_OF[type(msg)], self.encode(msg))
        assert reply.status == 200 and reply.message is not None, reply
        return reply.message

    # --- protocol steps -------------------------------------------------------------------

    async def query_registration(self) -> CreatedPartyRegistration:
        reply = await self.send(QueryRegistration(request_id=new_id()))
        assert isinstance(reply, CreatedPartyRegistration), reply
        return reply

    async def try_register(self, **fields: Any) -> Any:
        """Send oadrCreatePartyRegistration (name, pull model, plus `fields`); return the reply.

        On success the VEN adopts the venID and registrationID it was given.
        """
        fields.setdefault("ven_name", self.name)
        reply = await self.send(CreatePartyRegistration(request_id=new_id(), **fields))
        if isinstance(reply, CreatedPartyRegistration) and code(reply) == 200:
            self.ven_id, self.registration_id = reply.ven_id, reply.registration_id
        return reply

    async def register(self, **fields: Any) -> CreatedPartyRegistration:
        reply = await self.try_register(**fields)
        assert isinstance(reply, CreatedPartyRegistration) and code(reply) == 200, reply
        assert reply.ven_id and reply.registration_id and reply.poll_freq, reply
        return reply

    async def poll(self) -> Any:
        assert self.ven_id is not None, "register first"
        return await self.send(Poll(ven_id=self.ven_id))

    async def created_event(self, distribute: DistributeEvent,
                            opt: OptType = OptType.OPT_IN) -> Any:
        """Answer a distribute with `opt` for each of its events."""
        assert self.ven_id is not None
        responses = tuple(
            EventResponse(code=200, description="OK", request_id=distribute.request_id,
                          event_id=e.event_id, modification_number=e.modification_number,
                          opt_type=opt)
            for e in distribute.events)
        return await self.send(CreatedEvent(
            response=Response(code=200, description="OK", request_id=distribute.request_id),
            ven_id=self.ven_id, event_responses=responses))

    async def register_reports(self, *reports: Report) -> RegisteredReport:
        assert self.ven_id is not None
        reply = await self.send(RegisterReport(request_id=new_id(), ven_id=self.ven_id,
                                               reports=reports))
        assert isinstance(reply, RegisteredReport) and code(reply) == 200, reply
        return reply


# --- report builders -----------------------------------------------------------------------

POWER = ItemBase(kind="powerReal", description="RealPower", units="W", si_scale="k",
                 hertz=50, voltage=230, ac=True)


def metadata_report(name: str, specifier: str, *descriptions: ReportDescription,
                    now: datetime | None = None) -> Report:
    """A METADATA_<name> report offering `descriptions`."""
    return Report(report_specifier_id=specifier, report_name=f"METADATA_{name}",
                  created=now or utcnow(), duration=timedelta(0), descriptions=descriptions)


def telemetry_metadata(min_period: timedelta) -> tuple[Report, Report]:
    """METADATA_TELEMETRY_USAGE (rID usage-1) and METADATA_TELEMETRY_STATUS (rID status-1) of
    resource battery-1, sampled no faster than `min_period`."""
    rate = {"min_period": min_period, "max_period": min_period * 10}
    usage = metadata_report("TELEMETRY_USAGE", "spec-usage", ReportDescription(
        r_id="usage-1", report_type="usage", reading_type="Direct Read",
        resource_id="battery-1", item_base=POWER, **rate))
    status = metadata_report("TELEMETRY_STATUS", "spec-status", ReportDescription(
        r_id="status-1", report_type="x-resourceStatus", reading_type="x-notApplicable",
        resource_id="battery-1", **rate))
    return usage, status
