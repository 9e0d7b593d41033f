"""What every channel shares: the dispatch it is given, the delivery it reports, the errors it
raises, and the device side's view of what it was told (`Command`, `CommandBook`).

A channel driver turns one `Dispatch` into its own protocol's frames, sends them to the device
(or its gateway) and returns a `Delivery` once the device has acknowledged. Device simulators
decode what arrives and record it as `Command`s in a `CommandBook`: the device's state at any
moment is the command in force then, so a test checks the device, not the wire.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Final, Protocol

from pydantic import TypeAdapter

from .models import Channel, Device, Mode, Plan

PLAN_PRIMACY: Final = 100  # an aggregator's plan; a lower number wins (IEEE 2030.5 primacy)


@dataclass(frozen=True, slots=True, kw_only=True)
class Dispatch:
    """One unit of channel work: the whole plan, or (for devices that take no time-limited plan)
    one step of it, sent when the step starts."""

    plan: Plan
    device: Device
    step: int | None = None  # None: the whole plan

    @property
    def key(self) -> str:
        """The idempotency key: a dispatch with the same key is applied at most once."""
        whole = "plan" if self.step is None else f"step{self.step}"
        return f"{self.plan.plan_id}#{self.plan.sequence}#{whole}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """What a channel reports once the device has acknowledged a dispatch."""

    key: str
    plan_id: str
    device_id: str
    channel: Channel
    messages: int  # protocol messages sent for it, both ways (a DCC critical command: 4 or more)
    sent_at: datetime
    acked_at: datetime
    detail: str = ""  # request IDs, profile ids, what the device read back


class ChannelError(Exception):
    """The channel or the device refused or failed a dispatch. `retryable`: worth trying again
    (a busy gateway, a dropped connection); not: the device said no (bad frame, wrong ID)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class DeviceUnavailable(ChannelError):
    """The device did not answer in time or is not connected: the bridge marks it unavailable
    and re-allocates its share to other devices."""


class Driver(Protocol):
    channel: Channel

    async def deliver(self, dispatch: Dispatch) -> Delivery: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Setpoint:
    """What a device does while a command is in force."""

    mode: Mode
    power_kw: float | None = None  # CHARGE / DISCHARGE
    level: int | None = None  # LIMIT: import capped at this percent of rated
    energized: bool = True  # False: cease to energize (IEEE 2030.5 opModEnergize=false)
    cap: int | None = None  # an override's cap on whatever the plan does, percent of rated


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    """One instruction as the device received it, in force from `start` until `end`."""

    device_id: str
    setpoint: Setpoint
    start: datetime
    end: datetime | None  # None: until replaced
    source: str  # who sent it: a plan id, or an override id
    received_at: datetime
    primacy: int = PLAN_PRIMACY  # lower wins: an override beats every plan


@dataclass(slots=True)
class CommandBook:
    """The commands each device has received, and which one is in force at a moment.

    In force at t: among the commands covering t, the lowest primacy; among equals the one
    received last (a newer plan replaces an older one where they overlap). An override (primacy
    below PLAN_PRIMACY) caps rather than replaces: under a LIMIT override the plan in force still
    runs, with its level, and any power it draws, capped at the override's level
    (`Setpoint.cap`), so no plan can raise a device above the cap; a cease-to-energize override
    stops it. Withdrawing the override restores the plan.
    """

    _by_device: dict[str, list[Command]] = field(default_factory=dict)

    def record(self, command: Command) -> None:
        self._by_device.setdefault(command.device_id, []).append(command)

    def withdraw(self, device_id: str, source: str) -> None:
        """Forget every command `source` sent the device (a cancelled plan or lifted override)."""
        kept = [c for c in self._by_device.get(device_id, ()) if c.source != source]
        self._by_device[device_id] = kept

    def prune(self, before: datetime) -> None:
        """Forget commands that ended before `before`: the book stays as small as what is in
        force or to come, so looking up the active command stays cheap."""
        for device_id, commands in self._by_device.items():
            if any(c.end is not None and c.end < before for c in commands):
                self._by_device[device_id] = [c for c in commands
                                              if c.end is None or c.end >= before]

    def commands(self, device_id: str) -> Sequence[Command]:
        return tuple(self._by_device.get(device_id, ()))

    def active(self, device_id: str, at: datetime) -> Command | None:
        plan: Command | None = None
        override: Command | None = None
        for c in self._by_device.get(device_id, ()):
            if c.start <= at and (c.end is None or at < c.end):
                if c.primacy < PLAN_PRIMACY:
                    override = _better(c, override)
                else:
                    plan = _better(c, plan)
        if override is None or plan is None or not override.setpoint.energized \
                or override.setpoint.level is None:
            return override or plan
        cap = override.setpoint.level
        sp = plan.setpoint
        capped = replace(sp, cap=min(cap, sp.cap if sp.cap is not None else 100),
                         level=None if sp.level is None else min(sp.level, cap))
        return replace(plan, setpoint=capped, source=f"{plan.source} capped by {override.source}",
                       primacy=override.primacy)

    def setpoint(self, device_id: str, at: datetime) -> Setpoint | None:
        command = self.active(device_id, at)
        return None if command is None else command.setpoint


def _better(c: Command, best: Command | None) -> Command:
    """The lower primacy; among equals the one received last."""
    if best is None or (c.primacy, -c.received_at.timestamp()) \
            <= (best.primacy, -best.received_at.timestamp()):
        return c
    return best


_DISPATCH: Final = TypeAdapter(Dispatch)


def encode_dispatch(dispatch: Dispatch) -> bytes:
    """JSON, for a stream entry or a database column."""
    return _DISPATCH.dump_json(dispatch)


def decode_dispatch(data: bytes | str) -> Dispatch:
    """Raises pydantic.ValidationError on anything that is not an encoded dispatch."""
    return _DISPATCH.validate_json(data)
