"""The battery hub channel: plans pushed as JSON over HTTP to an aggregator's control hub, which
executes the modes locally (domain.md section 4, seed use case 1).

Two kinds of hub. A plan-capable hub takes the whole time-limited plan in one `PUT`. A per-command
hub accepts no plan: the bridge dispatches each step when it starts and the driver `POST`s one
command per change of setpoint, so a plan of n mode changes costs n round trips instead of one.

The API (both kinds serve the command route; only plan-capable hubs serve the plan route):

    PUT  {hub}/devices/{device_id}/plan      body HubPlan     -> 200 HubReply
    POST {hub}/devices/{device_id}/commands  body HubCommand  -> 200 HubReply
    errors: 4xx/5xx with {"error": reason}

A hub refuses a document whose (sequence[, step]) is not above the one it holds (no replay, no
rollback) unless it is an identical re-send, which it acknowledges as already applied. A device's
`address` names its hub: `HubDriver(hubs={"hub-1": Hub(...)})` reaches devices with address "hub-1".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Literal, Self
from urllib.parse import quote

import aiohttp
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from .channel import ChannelError, Delivery, DeviceUnavailable, Dispatch
from .models import Channel, Mode, Plan, PlanStep

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Power = Annotated[float, Field(ge=0.0)]
Level = Annotated[int, Field(ge=0, le=100)]


class _Document(BaseModel):
    # A hub rejects what it does not understand rather than ignoring it.
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Setting(_Document):
    mode: Mode
    power_kw: Power | None = None  # CHARGE / DISCHARGE
    level: Level | None = None  # LIMIT: percent of rated import

    @model_validator(mode="after")
    def _mode_has_its_value(self) -> Self:
        if self.mode in (Mode.CHARGE, Mode.DISCHARGE) and self.power_kw is None:
            raise ValueError(f"{self.mode} needs power_kw")
        if self.mode is Mode.LIMIT and self.level is None:
            raise ValueError("limit needs level")
        return self


class HubStep(_Setting):
    start: AwareDatetime
    end: AwareDatetime
    soc_min: Fraction | None = None
    soc_max: Fraction | None = None

    @model_validator(mode="after")
    def _ends_after_start(self) -> Self:
        if self.end <= self.start:
            raise ValueError(f"step ends at {self.end}, not after its start {self.start}")
        return self


class HubPlan(_Document):
    plan_id: str = Field(min_length=1)
    sequence: int = Field(ge=0)
    device: str = Field(min_length=1)
    steps: list[HubStep] = Field(min_length=1)
    random_delay_s: int = Field(ge=0)  # the hub starts the plan up to this late, drawn once


class HubCommand(_Setting):
    """One mode change, in force from `from` until `until`. (sequence, step) orders commands."""

    plan_id: str = Field(min_length=1)
    sequence: int = Field(ge=0)
    step: int = Field(ge=0)  # the first plan step the command covers
    device: str = Field(min_length=1)
    start: AwareDatetime = Field(alias="from")
    until: AwareDatetime

    @model_validator(mode="after")
    def _until_after_from(self) -> Self:
        if self.until <= self.start:
            raise ValueError(f"until {self.until} is not after from {self.start}")
        return self


class HubReply(_Document):
    status: Literal["applied", "already applied"]
    plan_id: str
    sequence: int


def encode_plan(plan: Plan) -> HubPlan:
    return HubPlan(plan_id=plan.plan_id, sequence=plan.sequence, device=plan.device_id,
                   steps=[_step(s) for s in plan.steps],
                   random_delay_s=round(plan.random_delay.total_seconds()))


def _step(step: PlanStep) -> HubStep:
    return HubStep(mode=step.mode, start=step.start, end=step.end, power_kw=step.power_kw,
                   level=step.level, soc_min=step.soc_min, soc_max=step.soc_max)


def encode_command(plan: Plan, index: int) -> HubCommand:
    """The command in force during step `index`: it covers the whole run of consecutive steps with
    the same setpoint, so every step of a run encodes to the same command (sent once)."""
    first = last = index
    while first > 0 and _same_setting(plan.steps[first - 1], plan.steps[index]):
        first -= 1
    while last + 1 < len(plan.steps) and _same_setting(plan.steps[last + 1], plan.steps[index]):
        last += 1
    step = plan.steps[index]
    return HubCommand.model_validate({
        "plan_id": plan.plan_id, "sequence": plan.sequence, "step": first,
        "device": plan.device_id, "mode": step.mode, "power_kw": step.power_kw,
        "level": step.level, "from": plan.steps[first].start, "until": plan.steps[last].end})


def _same_setting(a: PlanStep, b: PlanStep) -> bool:
    return (a.mode, a.power_kw, a.level) == (b.mode, b.power_kw, b.level)


def wire(document: BaseModel) -> bytes:
    """The JSON a document travels as (`from`, not the Python name)."""
    return document.model_dump_json(by_alias=True, exclude_none=True).encode()


@dataclass(frozen=True, slots=True)
class Hub:
    url: str  # base URL of the hub's API
    takes_plans: bool  # False: accepts no time-limited plan, one command per mode change


class HubDriver:
    """Delivers dispatches to battery hubs. `hubs` maps a hub name (a device's `address`) to it."""

    channel = Channel.BATTERY_HUB

    def __init__(self, hubs: Mapping[str, Hub], *, timeout_s: float = 10.0) -> None:
        self._hubs = dict(hubs)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        # The command each device last acknowledged: a step that continues it sends nothing.
        self._in_force: dict[str, HubCommand] = {}

    async def deliver(self, dispatch: Dispatch) -> Delivery:
        device = dispatch.device
        hub = self._hubs.get(device.reach)
        if hub is None:
            raise ChannelError(f"{device.device_id}: no hub named {device.reach!r}",
                               retryable=False)
        base = f"{hub.url}/devices/{quote(device.device_id, safe='')}"  # ids may hold "/"
        sent_at = datetime.now(UTC)
        if dispatch.step is None:
            if not hub.takes_plans:
                raise ChannelError(f"hub {device.reach} takes no time-limited plan: dispatch it "
                                   "step by step", retryable=False)
            reply = await self._send("PUT", f"{base}/plan", wire(encode_plan(dispatch.plan)))
            return self._delivery(dispatch, sent_at, 2, reply.status)
        if not 0 <= dispatch.step < len(dispatch.plan.steps):
            raise ChannelError(f"{dispatch.key}: no step {dispatch.step}", retryable=False)
        command = encode_command(dispatch.plan, dispatch.step)
        if self._in_force.get(device.device_id) == command:
            return self._delivery(dispatch, sent_at, 0, f"continues step {command.step}")
        reply = await self._send("POST", f"{base}/commands", wire(command))
        self._in_force[device.device_id] = command
        return self._delivery(dispatch, sent_at, 2, f"{reply.status}: step {command.step}")

    async def _send(self, method: str, url: str, body: bytes) -> HubReply:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.request(
                    method, url, data=body, headers={"Content-Type": "application/json"}) as r:
                text = await r.text()
                if r.status >= 400:
                    retryable = r.status >= 500 or r.status == 429
                    raise ChannelError(f"{method} {url}: {r.status} {text}", retryable=retryable)
        except (aiohttp.ClientConnectionError, TimeoutError) as e:
            raise DeviceUnavailable(f"{method} {url}: {e!r}") from e
        try:
            return HubReply.model_validate_json(text)
        except ValidationError as e:
            raise ChannelError(f"{method} {url}: unreadable reply {text!r}") from e

    def _delivery(self, dispatch: Dispatch, sent_at: datetime, messages: int,
                  detail: str) -> Delivery:
        return Delivery(key=dispatch.key, plan_id=dispatch.plan.plan_id,
                        device_id=dispatch.device.device_id, channel=self.channel,
                        messages=messages, sent_at=sent_at, acked_at=datetime.now(UTC),
                        detail=detail)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
