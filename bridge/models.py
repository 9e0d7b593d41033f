"""The bridge's typed models: devices, plans, and what each channel carries.

A plan is a time-limited sequence of operating modes for one device (domain.md section 4),
validated before it is dispatched (`validate`): a plan the device cannot execute is refused with
the reasons, never sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

from ven.fleet import DeviceClass
from ven.records import Purpose

from .kinds import Channel as Channel

MAX_VALIDITY: Final = timedelta(hours=48)


class Mode(StrEnum):
    CHARGE = "charge"  # import from the grid at `power_kw`
    DISCHARGE = "discharge"  # export to the grid or the load at `power_kw`
    BALANCE = "balance"  # self-consumption: spare PV charges, the load is covered
    HOLD = "hold"  # idle
    LIMIT = "limit"  # import capped at `level` percent of rated (what a SAPC can do)


@dataclass(frozen=True, slots=True, kw_only=True)
class Device:
    device_id: str
    resource_id: str  # the VEN resource (device group) it belongs to
    device_class: DeviceClass
    channel: Channel
    network_area: str
    address: str = ""  # where the channel reaches it (SAPC EUI-64, charge point id, ...); "": device_id
    takes_plans: bool = True  # False: it takes no time-limited plan, one command per mode change
    rated_import_kw: float
    rated_export_kw: float = 0.0  # 0: cannot export
    capacity_kwh: float = 0.0  # storage (battery, EV) or thermal equivalent
    max_ramp_kw_per_min: float | None = None
    comfort_min_c: float | None = None  # hot water / heating comfort band
    comfort_max_c: float | None = None
    departure: datetime | None = None  # EV: when it must have `departure_energy_kwh`
    departure_energy_kwh: float | None = None

    @property
    def reach(self) -> str:
        """The address its channel uses for it."""
        return self.address or self.device_id


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanStep:
    mode: Mode
    start: datetime
    end: datetime
    power_kw: float | None = None  # for CHARGE and DISCHARGE
    level: int | None = None  # for LIMIT: 0..100 percent of rated import
    soc_min: float | None = None  # state-of-charge bounds the device keeps, 0..1
    soc_max: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    plan_id: str
    device_id: str
    sequence: int  # increases with every plan for the device: no replay, no rollback
    issuer: str  # the aggregator (VEN name)
    purpose: Purpose
    priority: int  # from the grid signal: lower number wins, 0 = none
    steps: tuple[PlanStep, ...]
    random_delay: timedelta = timedelta(0)
    event_id: str | None = None  # the OpenADR event it serves

    @property
    def start(self) -> datetime:
        return self.steps[0].start

    @property
    def end(self) -> datetime:
        return self.steps[-1].end


def validate(plan: Plan, device: Device) -> list[str]:
    """Why `device` cannot execute `plan` (empty: it can). Each reason names the step and numbers."""
    reasons: list[str] = []
    if plan.device_id != device.device_id:
        reasons.append(f"plan is for {plan.device_id}, not {device.device_id}")
    if not plan.steps:
        return reasons + ["plan has no steps"]
    if plan.end - plan.start > MAX_VALIDITY:
        reasons.append(f"valid for {plan.end - plan.start}, more than {MAX_VALIDITY}")
    if plan.purpose is Purpose.RESPONSE and plan.random_delay:
        reasons.append("response DSR takes no random delay")
    for i, (step, following) in enumerate(zip(plan.steps, plan.steps[1:] + (None,))):
        where = f"step {i} ({step.mode})"
        if step.end <= step.start:
            reasons.append(f"{where}: ends at or before it starts")
        if following is not None and following.start != step.end:
            reasons.append(f"{where}: ends at {step.end}, the next starts at {following.start}")
        reasons += [f"{where}: {r}" for r in _step_problems(step, device)]
    return reasons


def _step_problems(step: PlanStep, device: Device) -> list[str]:
    if step.mode is Mode.LIMIT:
        ok = step.level is not None and 0 <= step.level <= 100
        return [] if ok else [f"level {step.level} outside 0..100"]
    if step.mode is Mode.CHARGE:
        return _power(step.power_kw, device.rated_import_kw, "import")
    if step.mode is Mode.DISCHARGE:
        if device.rated_export_kw <= 0:
            return [f"a {device.device_class} cannot discharge"]
        return _power(step.power_kw, device.rated_export_kw, "export")
    if step.mode is Mode.BALANCE and device.capacity_kwh <= 0:
        return ["balance needs storage"]
    return []


def _power(power_kw: float | None, rated_kw: float, direction: str) -> list[str]:
    if power_kw is None or not 0 <= power_kw <= rated_kw:
        return [f"power {power_kw} kW outside 0..{rated_kw:g} kW rated {direction}"]
    return []
