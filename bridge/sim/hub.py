"""A simulated battery control hub on loopback: the far end of `bridge.hub`.

It validates each document, refuses replays and rollbacks, acknowledges identical re-sends as
already applied, and records what its devices were told as `Command`s in the `CommandBook` it is
given. It executes a plan locally: the whole plan starts up to `random_delay_s` late (one draw
per plan). BALANCE is recorded as such: the device physics make it follow live PV and load.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import ValidationError

from bridge.channel import Command, CommandBook, Setpoint
from bridge.hub import HubCommand, HubPlan, HubReply, wire
from bridge.loopback import Served

Clock = Callable[[], datetime]
D = TypeVar("D", HubPlan, HubCommand)


def _now() -> datetime:
    return datetime.now(UTC)


class HubSimulator(Served):
    def __init__(self, book: CommandBook, devices: Iterable[str], *, takes_plans: bool,
                 rng: random.Random | None = None, clock: Clock = _now) -> None:
        self.book = book
        self.takes_plans = takes_plans
        self.requests = 0  # every request that reached the hub, good or bad
        self._rng = rng or random.Random(0)
        self._clock = clock
        # Per device: the last document applied (for order and identical re-sends).
        self._held: dict[str, HubPlan | HubCommand | None] = dict.fromkeys(devices)
        app = web.Application(middlewares=[self._count])
        app.router.add_post("/devices/{device}/commands", self._command)
        app.router.add_put("/devices/{device}/plan", self._plan if takes_plans else _no_plans)
        self.app = app

    @web.middleware
    async def _count(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.requests += 1
        return await handler(request)

    async def _plan(self, request: web.Request) -> web.Response:
        device, plan = await self._read(request, HubPlan)
        if (refused := self._refusal(device, plan)) is not None:
            return refused
        self._held[device] = plan
        delay = timedelta(seconds=self._rng.randint(0, plan.random_delay_s))
        # A plan replaces everything the device was told by that plan id before.
        self.book.withdraw(device, plan.plan_id)
        for step in plan.steps:
            self._record(device, plan.plan_id, step.start + delay, step.end + delay,
                         Setpoint(mode=step.mode, power_kw=step.power_kw, level=step.level))
        return _reply(plan, "applied")

    async def _command(self, request: web.Request) -> web.Response:
        device, command = await self._read(request, HubCommand)
        if (refused := self._refusal(device, command)) is not None:
            return refused
        self._held[device] = command
        self._record(device, command.plan_id, command.start, command.until,
                     Setpoint(mode=command.mode, power_kw=command.power_kw, level=command.level))
        return _reply(command, "applied")

    async def _read(self, request: web.Request, kind: type[D]) -> tuple[str, D]:
        device = request.match_info["device"]
        if device not in self._held:
            raise _error(web.HTTPNotFound, f"unknown device {device!r}")
        try:
            document = kind.model_validate_json(await request.read())
        except ValidationError as e:
            raise _error(web.HTTPBadRequest, _reasons(e)) from e
        if document.device != device:
            raise _error(web.HTTPBadRequest, f"document is for {document.device!r}, not {device!r}")
        return device, document

    def _refusal(self, device: str, document: HubPlan | HubCommand) -> web.Response | None:
        """None: apply it. An identical re-send is acknowledged, anything not newer refused."""
        held = self._held[device]
        if held is None:
            return None
        if held == document:
            return _reply(document, "already applied")
        if _order(document) <= _order(held):
            reason = (f"(sequence, step) {_order(document)} is not after {_order(held)}: "
                      "replay or rollback")
            return web.json_response({"error": reason}, status=409)
        return None

    def _record(self, device: str, source: str, start: datetime, end: datetime,
                setpoint: Setpoint) -> None:
        self.book.record(Command(device_id=device, setpoint=setpoint, start=start, end=end,
                                 source=source, received_at=self._clock()))


async def _no_plans(request: web.Request) -> web.Response:
    reason = "this hub accepts no time-limited plan: send one command per mode change"
    raise web.HTTPMethodNotAllowed(request.method, [], text=json.dumps({"error": reason}),
                                   content_type="application/json")


def _order(document: HubPlan | HubCommand) -> tuple[int, int]:
    """(sequence, step): a plan counts as its sequence's first step."""
    return (document.sequence, document.step if isinstance(document, HubCommand) else 0)


def _reply(document: HubPlan | HubCommand, status: str) -> web.Response:
    reply = HubReply.model_validate(
        {"status": status, "plan_id": document.plan_id, "sequence": document.sequence})
    return web.Response(body=wire(reply), content_type="application/json")


def _reasons(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                     for e in error.errors())


def _error(kind: type[web.HTTPError], reason: str) -> web.HTTPError:
    return kind(text=json.dumps({"error": reason}), content_type="application/json")
