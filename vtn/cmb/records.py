"""The Central Monitoring Body's typed records: what aggregators submit, what the CMB knows and
judges, and what it does (domain.md section 8, the seed report's section 6).

Shared by the pure rules (policies/cmb_rules.py, policies/cmb_monitors.py), the CMB service and
its API (vtn/cmb/), and the bridge's submission client. Times are aware UTC; power is kW of
import (negative: export), as everywhere in the bridge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from bridge.models import Channel, Device, Plan
from ven.fleet import DeviceClass


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceRegistration:
    """A device as the CMB's registry holds it: who may command it and how to reach it
    without them (its SAPC's EUI-64, its 2030.5 LFDI)."""

    device_id: str
    owner: str  # the aggregator allowed to plan it
    device_class: DeviceClass
    network_area: str
    channel: Channel
    reach: str  # the channel address: a SAPC's EUI-64, a 2030.5 LFDI, ...
    rated_import_kw: float
    rated_export_kw: float = 0.0
    max_ramp_kw_per_min: float | None = None  # None: the device can step to any power at once
    ven_id: str | None = None  # the owner's VEN fronting it, for the OpenADR override path
    resource_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanSubmission:
    """One plan as an aggregator submits it, before or as it dispatches it."""

    aggregator: str  # the authenticated submitter (its certificate's identity)
    plan: Plan
    device: Device  # as the aggregator declares it
    program: str | None = None  # the market context the plan serves (None: the device's own)
    received: datetime  # when the CMB received it


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One rule's judgement: which rule, the numbers and the threshold, in words too."""

    rule: str  # e.g. "sequence_increasing", "same_minute_share"
    value: float | None
    threshold: float | None
    detail: str  # a sentence naming the device/aggregator, the value and the threshold


class Decision(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """The inline judgement of one plan: rejected when any rule fails (every failure listed)."""

    plan_id: str
    device_id: str
    aggregator: str
    sequence: int
    decision: Decision
    findings: tuple[Finding, ...]  # the rules that failed; empty when accepted
    at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class StateChange:
    """A device's planned move from one power to another, as the monitors see plans."""

    device_id: str
    aggregator: str
    network_area: str
    at: datetime  # the step's start (the earliest it can happen)
    spread: timedelta  # the plan's random delay: the change falls somewhere in [at, at+spread]
    from_kw: float
    to_kw: float
    plan_id: str
    event_id: str | None = None  # the OpenADR event it answers (a dispatched window)
    program: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    """A fleet monitor's finding about an aggregator or a network area."""

    alert_id: str
    monitor: str  # e.g. "same_minute_share", "mw_step", "aggregator_cap", "area_headroom",
    #               "prognosis_deviation", "sign_flip"
    at: datetime  # the (simulated) time the monitor saw it
    window_start: datetime  # the window the numbers are about
    value: float
    threshold: float
    detail: str
    aggregator: str | None = None
    network_area: str | None = None
    devices: tuple[str, ...] = ()  # the devices behind it (for a proposed override)


@dataclass(frozen=True, slots=True, kw_only=True)
class Tariff:
    """A published time-of-use tariff: switching at its boundaries is expected, not alarming."""

    tariff_id: str
    boundaries: tuple[datetime, ...]  # when its prices change (e.g. every half hour)
    tolerance: timedelta = timedelta(minutes=2)  # how close to a boundary counts as "at" it


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatchWindow:
    """An enrolled grid service the DSO dispatched: changes inside it are expected."""

    event_id: str
    program: str
    start: datetime
    end: datetime
    aggregators: tuple[str, ...] = ()  # empty: every aggregator enrolled in the program


@dataclass(frozen=True, slots=True, kw_only=True)
class Prognosis:
    """USEF prognosis: an aggregator's forward aggregate import per network area, the baseline
    for spotting departures."""

    aggregator: str
    network_area: str
    start: datetime
    step: timedelta
    kw: tuple[float, ...]  # mean import per step, up to 48 h

    def at(self, t: datetime) -> float | None:
        i = (t - self.start) // self.step
        return self.kw[i] if 0 <= i < len(self.kw) else None


@dataclass(frozen=True, slots=True, kw_only=True)
class OverrideTarget:
    """Which devices an override reaches; every given criterion must hold (empty: any)."""

    aggregator: str | None = None
    network_area: str | None = None
    device_class: DeviceClass | None = None
    devices: tuple[str, ...] = ()

    def matches(self, r: DeviceRegistration) -> bool:
        return ((self.aggregator is None or r.owner == self.aggregator)
                and (self.network_area is None or r.network_area == self.network_area)
                and (self.device_class is None or r.device_class is self.device_class)
                and (not self.devices or r.device_id in self.devices))


class OverrideStatus(StrEnum):
    PROPOSED = "proposed"  # a monitor asked for it; an operator decides
    ACTIVE = "active"
    LIFTED = "lifted"


@dataclass(frozen=True, slots=True, kw_only=True)
class Override:
    """A cap on devices through paths the aggregator does not control. `level` 0..100 caps
    import at that percent of rated (SRV 7.16 Limit APC Level); `energized=False` also ceases
    to energize inverters (IEEE 2030.5 opModEnergize=false)."""

    override_id: str
    target: OverrideTarget
    level: int
    start: datetime
    end: datetime | None = None  # None: until lifted
    energized: bool = True
    reason: str = ""
    created_by: str = "operator"  # or "auto:<alert id>"
    status: OverrideStatus = OverrideStatus.ACTIVE
    created: datetime | None = None
    lifted: datetime | None = None
    devices: tuple[str, ...] = field(default=())  # resolved when applied
