"""Device physics for the simulators: what each device draws under the command in force, and the
telemetry it publishes (per device, and per VEN resource as a `ven.reports.TelemetrySource`).

Time advances in steps of at most one minute, aligned to whole minutes (a read between minutes
ends a step early). Each step runs under the `Setpoint` in force at its start
(`CommandBook.active`): a command takes effect at the first step starting at or after its start,
so within a minute. No setpoint, or a device that is offline or under its owner's override, means
the device's own default behaviour (its "day job", below). Profiles (PV, household load) change
once a minute. Deterministic: the same devices, commands, seed and read times give the same
numbers; the only randomness is cloud noise, a hash of (seed, device, 10-minute slot).

Sign convention (as policies/dispatch.py): power is import at the meter, negative when exporting.
`energy_kwh` is an import register: it counts import only, so it never decreases.

Battery + PV + household load (class battery):
- site import = load - PV + battery (battery positive when charging);
- the battery charges up to `rated_import_kw` and discharges up to `rated_export_kw`; its state
  of charge stays in [SOC_MIN, SOC_MAX] x capacity (the same window policies/price_plan.py plans
  in, inside [0, capacity]); a step that would cross the window is cut to reach it exactly;
- ROUND_TRIP_EFFICIENCY, all of it counted on charging: charging b kW for h hours stores
  b x h x 0.9 kWh; discharging takes from the store what it delivers;
- PV: a clear-sky bell (sin^2 between sunrise and sunset, UTC) scaled to `pv_peak_kw`, times
  (1 - cloud x u), u uniform in [0, 1) per 10-minute slot; load: a base plus Gaussian peaks
  around 07:30 and 18:30 UTC;
- modes: CHARGE / DISCHARGE at `power_kw` (None: rated) within ratings and the window; HOLD:
  battery idle; BALANCE (the default): spare PV charges, the battery covers the load;
  LIMIT: peak shaving, site import held at level% of `rated_import_kw`: spare PV charges, the
  battery discharges only what the load draws beyond the cap and saves the rest (a battery
  cannot shed the household load: when it is empty the cap is exceeded, and the telemetry shows
  it); energized=False: inverter off, no PV and no battery, the load still draws.
EV at a charge point (class ev): plugged in during its `EvSession`; charges until the session's
energy is delivered, flat out by default (and under BALANCE), at `power_kw` under CHARGE, at
level% of rated under LIMIT; HOLD, DISCHARGE (no V2G) and energized=False: 0 kW.
Hot-water tank (class hot_water): the thermal model the price plans are made with
(`policies.price_plan.tank_step`: standing loss in degrees per hour, heating at kWh per degree,
a thermostat that calls for heat at or below max(comfort_min, comfort_max - deadband) and stops
at comfort_max). LIMIT caps the element's supply at level% of rated (the thermostat still
decides whether it heats), HOLD and DISCHARGE cut it, CHARGE boosts: held at comfort_max.
Comfort comes first: when the allowed heat would leave the tank below `comfort_min_c` at the end
of a step, it heats at rated power anyway and reports manual_override until the command in force
changes.
energized=False switches the element off (a safety cut beats comfort).
Other classes (heat pump, hvac, generic): a constant baseline; LIMIT caps it at level% of rated,
CHARGE runs at `power_kw` (pre-heating), HOLD and DISCHARGE: idle (0 kW), energized=False: off.

Failed (`fail`) or overridden (`override`) devices ignore commands and do their day job; the
meter still measures them (their power and energy stay in the readings), with online=False or
manual_override=True.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from abc import ABC, abstractmethod
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Final, TypeVar

from oadr.messages import LoadControlState
from policies.dispatch import DeviceState
from policies.plans import DeviceView
from policies.price_plan import (
    HOT_WATER_DEADBAND_C,
    HOT_WATER_KWH_PER_C,
    HOT_WATER_LOSS_C_PER_H,
    SOC_MAX,
    SOC_MIN,
    TankState,
    tank_step,
)
from ven.fleet import DeviceClass, ResourceSpec
from ven.reports import Reading

from ..channel import Command, CommandBook, Setpoint
from ..models import Device, Mode

# A lithium home battery's AC round trip is about 88-92 %.
ROUND_TRIP_EFFICIENCY: Final = 0.9
STEP: Final = timedelta(minutes=1)
CLOUD_SLOT: Final = timedelta(minutes=10)
FLEX_HORIZON: Final = timedelta(minutes=5)  # flexibility is what a device can hold this long
EV_DEFAULT_NEED_SHARE: Final = 0.5  # an EV without a declared need arrives wanting half its battery
HISTORY: Final = 512  # samples kept per resource: over 8 h of one-minute steps
_HOUR: Final = timedelta(hours=1)
_ONLINE: Final = 1
_OVERRIDE: Final = 2


# --- profiles -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class SiteProfile:
    """A battery+PV site: initial state of charge, PV and household load (hours are UTC)."""

    soc: float = 0.5  # 0..1
    pv_peak_kw: float = 4.0
    sunrise_h: float = 5.0
    sunset_h: float = 19.0
    cloud: float = 0.0  # 0: clear sky; 1: a slot may lose all its PV
    load_base_kw: float = 0.3
    load_morning_kw: float = 1.0  # extra, peaking at 07:30
    load_evening_kw: float = 1.8  # extra, peaking at 18:30

    def __post_init__(self) -> None:
        if not (0 <= self.soc <= 1 and 0 <= self.cloud <= 1
                and 0 <= self.sunrise_h < self.sunset_h <= 24
                and min(self.pv_peak_kw, self.load_base_kw, self.load_morning_kw,
                        self.load_evening_kw) >= 0):
            raise ValueError(f"site profile out of range: {self}")

    def clear_sky_pv_kw(self, hour: float) -> float:
        if not self.sunrise_h < hour < self.sunset_h:
            return 0.0
        x = (hour - self.sunrise_h) / (self.sunset_h - self.sunrise_h)
        return self.pv_peak_kw * math.sin(math.pi * x) ** 2

    def load_kw(self, hour: float) -> float:
        return (self.load_base_kw + self.load_morning_kw * _peak(hour, 7.5, 1.0)
                + self.load_evening_kw * _peak(hour, 18.5, 1.5))


def _peak(hour: float, at: float, width: float) -> float:
    distance = (hour - at + 12) % 24 - 12  # around the clock: no jump at midnight
    return math.exp(-0.5 * (distance / width) ** 2)


@dataclass(frozen=True, slots=True, kw_only=True)
class EvSession:
    arrival: datetime
    departure: datetime | None  # None: stays plugged in
    energy_kwh: float  # to deliver before departure

    def __post_init__(self) -> None:
        if self.energy_kwh < 0 or (self.departure is not None and self.departure < self.arrival):
            raise ValueError(f"EV session out of range: {self}")


@dataclass(frozen=True, slots=True, kw_only=True)
class TankProfile:
    temp_c: float | None = None  # None: the middle of the comfort band
    loss_c_per_h: float = HOT_WATER_LOSS_C_PER_H
    kwh_per_c: float = HOT_WATER_KWH_PER_C
    deadband_c: float = HOT_WATER_DEADBAND_C

    def __post_init__(self) -> None:
        if not (self.loss_c_per_h >= 0 and self.kwh_per_c > 0 and self.deadband_c >= 0):
            raise ValueError(f"tank profile out of range: {self}")


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadProfile:
    baseline_kw: float | None = None  # None: half the rated import


Profile = SiteProfile | EvSession | TankProfile | LoadProfile
_P = TypeVar("_P", SiteProfile, EvSession, TankProfile, LoadProfile)


# --- device telemetry -----------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceTelemetry:
    device_id: str
    at: datetime
    power_kw: float  # mean import over the last step (negative: exporting)
    energy_kwh: float  # import register since the simulation started
    online: bool
    manual_override: bool  # its owner overrode it, or it went against a command for comfort
    soc: float | None = None  # battery, 0..1
    temp_c: float | None = None  # hot water
    energy_needed_kwh: float | None = None  # EV: still to deliver this session
    departure: datetime | None = None  # EV


# --- device models --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Step:
    t: datetime
    length: timedelta
    hours: float
    hour: float  # UTC hour of day of the minute holding t: profiles change once a minute
    slot: int  # the cloud slot holding t


def _step(t: datetime, length: timedelta) -> _Step:
    minute = t.astimezone(UTC).replace(second=0, microsecond=0)
    return _Step(t=t, length=length, hours=length / _HOUR, hour=minute.hour + minute.minute / 60,
                 slot=int(minute.timestamp() // CLOUD_SLOT.total_seconds()))


def _power(sp: Setpoint, rated_kw: float) -> float:
    """A CHARGE or DISCHARGE setpoint's power (None: rated), within 0..rated and an override's
    cap (a cap is on import, so it only ever lowers charging)."""
    power = min(max(sp.power_kw if sp.power_kw is not None else rated_kw, 0.0), rated_kw)
    if sp.cap is not None and sp.mode is Mode.CHARGE:
        return min(power, rated_kw * min(max(sp.cap, 0), 100) / 100)
    return power


def _cap(sp: Setpoint, device: Device) -> float:
    """A LIMIT setpoint's import cap (kW); no level: no cap."""
    level = sp.level if sp.level is not None else 100
    return device.rated_import_kw * min(max(level, 0), 100) / 100


class _Sim(ABC):
    __slots__ = ("defied", "device", "energy_kwh", "online", "power_kw", "user_override")

    def __init__(self, device: Device) -> None:
        self.device = device
        self.energy_kwh = 0.0
        self.power_kw = 0.0
        self.online = True
        self.user_override = False
        self.defied: Command | None = None  # the command it is going against for comfort

    @property
    def follows(self) -> bool:
        """It takes commands: online and not under its owner's override."""
        return self.online and not self.user_override

    @property
    def manual_override(self) -> bool:
        return self.user_override or self.defied is not None

    def step(self, s: _Step, command: Command | None) -> None:
        """Run one step under `command` (None: the day job)."""
        kw, defied = self.draw(s, None if command is None else command.setpoint, commit=True)
        self.power_kw = kw
        self.energy_kwh += max(kw, 0.0) * s.hours
        if defied:
            self.defied = command
        elif self.defied is not command:  # the command it defied is no longer in force
            self.defied = None

    @abstractmethod
    def draw(self, s: _Step, sp: Setpoint | None, *, commit: bool) -> tuple[float, bool]:
        """Mean site import over the step (kW), and whether the device went against `sp` to do
        its day job. Changes the device's state only when `commit`."""

    @abstractmethod
    def bounds(self, s: _Step, sp: Setpoint | None) -> tuple[float, float]:
        """The least and most import (kW) it could hold for the step's length from now."""

    def uncontrolled_kw(self, s: _Step) -> float:
        """The import behind the same meter that no command moves (a site's load less its PV)."""
        return 0.0

    def telemetry(self, at: datetime) -> DeviceTelemetry:
        return DeviceTelemetry(device_id=self.device.device_id, at=at, power_kw=self.power_kw,
                               energy_kwh=self.energy_kwh, online=self.online,
                               manual_override=self.manual_override)


def _energized(sp: Setpoint | None) -> bool:
    return sp is None or sp.energized


class _Site(_Sim):
    __slots__ = ("_cloud_factor", "_cloud_slot", "_noise", "profile", "soc_kwh")

    def __init__(self, device: Device, profile: SiteProfile, seed: str) -> None:
        super().__init__(device)
        self.profile = profile
        self.soc_kwh = profile.soc * device.capacity_kwh
        self._noise = f"{seed}/{device.device_id}/"
        self._cloud_slot = -1
        self._cloud_factor = 1.0

    def _pv_kw(self, s: _Step) -> float:
        if self.profile.cloud and s.slot != self._cloud_slot:
            digest = hashlib.blake2b(f"{self._noise}{s.slot}".encode(), digest_size=8).digest()
            self._cloud_factor = 1 - self.profile.cloud * int.from_bytes(digest) / 2 ** 64
            self._cloud_slot = s.slot
        return self.profile.clear_sky_pv_kw(s.hour) * self._cloud_factor

    def _limits(self, hours: float) -> tuple[float, float]:
        """The most the battery can charge and discharge (kW) for `hours`."""
        d, cap = self.device, self.device.capacity_kwh
        charge = max(0.0, SOC_MAX * cap - self.soc_kwh) / (hours * ROUND_TRIP_EFFICIENCY)
        discharge = max(0.0, self.soc_kwh - SOC_MIN * cap) / hours
        return min(d.rated_import_kw, charge), min(d.rated_export_kw, discharge)

    def draw(self, s: _Step, sp: Setpoint | None, *, commit: bool) -> tuple[float, bool]:
        load = self.profile.load_kw(s.hour)
        if not _energized(sp):
            return load, False
        net = load - self._pv_kw(s)
        charge, discharge = self._limits(s.hours)
        mode = Mode.BALANCE if sp is None else sp.mode
        if sp is not None and mode is Mode.CHARGE:
            battery = min(_power(sp, self.device.rated_import_kw), charge)
        elif sp is not None and mode is Mode.DISCHARGE:
            battery = -min(_power(sp, self.device.rated_export_kw), discharge)
        elif mode is Mode.HOLD:
            battery = 0.0
        elif sp is not None and mode is Mode.LIMIT:  # peak shaving: only the excess
            excess = net - _cap(sp, self.device)
            battery = min(max(-net, 0.0), charge) - min(max(excess, 0.0), discharge)
        else:
            battery = min(max(-net, -discharge), charge)
        if commit:
            stored = battery * ROUND_TRIP_EFFICIENCY if battery > 0 else battery
            self.soc_kwh = min(max(self.soc_kwh + stored * s.hours, 0.0),
                               self.device.capacity_kwh)
        return net + battery, False

    def uncontrolled_kw(self, s: _Step) -> float:
        return self.profile.load_kw(s.hour) - self._pv_kw(s)

    def bounds(self, s: _Step, sp: Setpoint | None) -> tuple[float, float]:
        load = self.profile.load_kw(s.hour)
        if not _energized(sp):
            return load, load
        net = load - self._pv_kw(s)
        charge, discharge = self._limits(s.hours)
        return net - discharge, net + charge

    def telemetry(self, at: datetime) -> DeviceTelemetry:
        base = super().telemetry(at)
        return replace(base, soc=self.soc_kwh / self.device.capacity_kwh)


class _Ev(_Sim):
    __slots__ = ("delivered_kwh", "session")

    def __init__(self, device: Device, session: EvSession) -> None:
        super().__init__(device)
        self.session = session
        self.delivered_kwh = 0.0

    def _needed(self) -> float:
        return max(0.0, self.session.energy_kwh - self.delivered_kwh)

    def _plugged_hours(self, start: datetime, end: datetime) -> float:
        arrival, departure = self.session.arrival, self.session.departure
        latest = end if departure is None else min(end, departure)
        return max(0.0, (latest - max(start, arrival)) / _HOUR)

    def _rate(self, sp: Setpoint | None) -> float:
        rated = self.device.rated_import_kw
        if sp is None:
            return rated
        if not sp.energized:
            return 0.0
        if sp.mode is Mode.BALANCE:
            return rated
        if sp.mode is Mode.CHARGE:
            return _power(sp, rated)
        return min(rated, _cap(sp, self.device)) if sp.mode is Mode.LIMIT else 0.0

    def draw(self, s: _Step, sp: Setpoint | None, *, commit: bool) -> tuple[float, bool]:
        energy = min(self._rate(sp) * self._plugged_hours(s.t, s.t + s.length), self._needed())
        if commit:
            self.delivered_kwh += energy
        return energy / s.hours, False

    def bounds(self, s: _Step, sp: Setpoint | None) -> tuple[float, float]:
        if not _energized(sp) or not self._plugged_hours(s.t, s.t + STEP):
            return 0.0, 0.0
        return 0.0, min(self.device.rated_import_kw, self._needed() / s.hours)

    def telemetry(self, at: datetime) -> DeviceTelemetry:
        return replace(super().telemetry(at), energy_needed_kwh=self._needed(),
                     departure=self.session.departure)


class _Tank(_Sim):
    __slots__ = ("high", "low", "profile", "tank")

    def __init__(self, device: Device, profile: TankProfile) -> None:
        super().__init__(device)
        assert device.comfort_min_c is not None and device.comfort_max_c is not None
        self.low, self.high = device.comfort_min_c, device.comfort_max_c
        self.profile = profile
        self.tank = TankState(profile.temp_c if profile.temp_c is not None
                              else (self.low + self.high) / 2)

    @property
    def temp_c(self) -> float:
        return self.tank.temp_c

    def _heat(self, s: _Step, kw: float, *, boost: bool) -> tuple[TankState, float]:
        p = self.profile
        return tank_step(self.device, self.tank, kw=kw, hours=s.hours,
                         loss_c_per_h=p.loss_c_per_h, kwh_per_c=p.kwh_per_c,
                         deadband_c=p.deadband_c, boost=boost)

    def draw(self, s: _Step, sp: Setpoint | None, *, commit: bool) -> tuple[float, bool]:
        rated = self.device.rated_import_kw
        mode = Mode.BALANCE if sp is None else sp.mode
        if sp is not None and (not sp.energized or mode in (Mode.HOLD, Mode.DISCHARGE)):
            allowed = 0.0
        elif sp is None or mode is Mode.BALANCE:
            allowed = rated
        else:
            allowed = _power(sp, rated) if mode is Mode.CHARGE else min(rated, _cap(sp, self.device))
        end, kwh = self._heat(s, allowed, boost=mode is Mode.CHARGE)
        defied = end.temp_c < self.low and allowed < rated and _energized(sp)
        if defied:  # the day job first: comfort beats the command
            end, kwh = self._heat(s, rated, boost=True)
        if commit:
            self.tank = end
        return kwh / s.hours, defied

    def bounds(self, s: _Step, sp: Setpoint | None) -> tuple[float, float]:
        if not _energized(sp):
            return 0.0, 0.0
        p, rated = self.profile, self.device.rated_import_kw
        cooled = self.temp_c - p.loss_c_per_h * s.hours

        def holding(temp_c: float) -> float:
            return min(max((temp_c - cooled) * p.kwh_per_c / s.hours, 0.0), rated)

        return holding(self.low), holding(self.high)

    def telemetry(self, at: datetime) -> DeviceTelemetry:
        return replace(super().telemetry(at), temp_c=self.temp_c)


class _Load(_Sim):
    __slots__ = ("baseline_kw",)

    def __init__(self, device: Device, profile: LoadProfile) -> None:
        super().__init__(device)
        rated = device.rated_import_kw
        baseline = profile.baseline_kw if profile.baseline_kw is not None else rated / 2
        self.baseline_kw = min(max(baseline, 0.0), rated)

    def draw(self, s: _Step, sp: Setpoint | None, *, commit: bool) -> tuple[float, bool]:
        if sp is not None and not sp.energized:
            return 0.0, False
        if sp is None or sp.mode is Mode.BALANCE:
            return self.baseline_kw, False
        if sp.mode is Mode.CHARGE:
            return _power(sp, self.device.rated_import_kw), False
        if sp.mode is Mode.LIMIT:
            return min(self.baseline_kw, _cap(sp, self.device)), False
        return 0.0, False

    def bounds(self, s: _Step, sp: Setpoint | None) -> tuple[float, float]:
        return (0.0, self.device.rated_import_kw) if _energized(sp) else (0.0, 0.0)


# --- per-resource history -------------------------------------------------------------------

class _History:
    """A ring of a resource's samples, one per step end, in time order: its total power over the
    step that ended there, energy register, status and load control share (NaN: none)."""

    __slots__ = ("_energy", "_first", "_flags", "_power", "_share", "_size", "_t")

    def __init__(self, size: int) -> None:
        self._t = array("d", bytes(8 * size))
        self._power = array("d", bytes(8 * size))
        self._energy = array("d", bytes(8 * size))
        self._share = array("d", bytes(8 * size))
        self._flags = array("B", bytes(size))
        self._first = 0
        self._size = 0

    def _at(self, k: int) -> int:
        return (self._first + k) % len(self._t)

    def append(self, t: datetime, power: float, energy: float, flags: int, share: float) -> None:
        i = self._at(self._size)
        if self._size == len(self._t):
            self._first = self._at(1)
        else:
            self._size += 1
        self._t[i], self._power[i], self._energy[i] = t.timestamp(), power, energy
        self._share[i], self._flags[i] = share, flags

    def reading(self, t: datetime) -> Reading:
        """The reading at `t`: between two samples, the later one's power and status (they held
        over its whole step) and the energy interpolated; before the oldest kept, the oldest."""
        x = t.timestamp()
        k = min(bisect.bisect_left(range(self._size), x, key=lambda k: self._t[self._at(k)]),
                self._size - 1)
        i = self._at(k)
        energy = self._energy[i]
        if k > 0 and x < self._t[i]:
            j = self._at(k - 1)
            energy = self._energy[j] + (energy - self._energy[j]) * (
                (x - self._t[j]) / (self._t[i] - self._t[j]))
        share, flags = self._share[i], self._flags[i]
        return Reading(power_kw=self._power[i], energy_kwh=energy, online=bool(flags & _ONLINE),
                       manual_override=bool(flags & _OVERRIDE),
                       load_control=None if math.isnan(share)
                       else LoadControlState(kind="oadrCapacity", current=share))


# --- the fleet ------------------------------------------------------------------------------

class SimulatedFleet:
    """Devices with the physics of this module's docstring, following the commands `book` holds,
    from `start` on. `profiles` by device id; a device without one gets its class default
    (`default_profile`).

    A `ven.reports.TelemetrySource`: `read(resource, now)` sums the devices whose resource_id is
    the resource's. Work is O(devices x minutes) and memory per device a few hundred bytes; each
    resource keeps `history` samples for readings asked out of order.

    Raises:
        ValueError: a naive `start`, a device id twice, a battery without storage, a hot-water
        tank without a comfort band, a profile for an unknown device, or `history` below 2.
        TypeError: a profile of the wrong kind for its device's class.
    """

    def __init__(self, devices: Sequence[Device], book: CommandBook, *, start: datetime,
                 seed: int | str = 0, profiles: Mapping[str, Profile] | None = None,
                 history: int = HISTORY) -> None:
        if start.tzinfo is None:
            raise ValueError(f"start {start} has no time zone")
        if history < 2:
            raise ValueError(f"history of {history} samples: at least 2 are needed")
        profiles = profiles or {}
        unknown = sorted(set(profiles) - {d.device_id for d in devices})
        if unknown:
            raise ValueError(f"profiles for unknown devices: {', '.join(unknown)}")
        self._book = book
        self._now = start.astimezone(UTC)
        self._sims: dict[str, _Sim] = {}
        self._groups: dict[str, list[_Sim]] = {}
        for device in devices:
            if device.device_id in self._sims:
                raise ValueError(f"device {device.device_id} is listed twice")
            profile = profiles.get(device.device_id) or default_profile(device, self._now)
            sim = _sim(device, profile, str(seed))
            self._sims[device.device_id] = sim
            self._groups.setdefault(device.resource_id, []).append(sim)
        self._history = {rid: _History(history) for rid in self._groups}
        first = _step(self._now, STEP)
        for rid, group in self._groups.items():
            setpoints = [self._setpoint(sim, self._now) for sim in group]
            for sim, sp in zip(group, setpoints):  # as it starts: what its first step draws
                sim.power_kw = sim.draw(first, sp, commit=False)[0]
            self._history[rid].append(self._now, *_status(group, setpoints))

    @property
    def now(self) -> datetime:
        """How far the simulation has run."""
        return self._now

    def advance(self, to: datetime) -> None:
        """Run the physics up to `to`; an earlier `to` does nothing (time never runs back)."""
        while self._now < to:
            t = self._now
            end = min(t.replace(second=0, microsecond=0) + STEP, to)
            s = _step(t, end - t)
            for rid, group in self._groups.items():
                setpoints = []
                for sim in group:
                    command = self._book.active(sim.device.device_id, t) if sim.follows else None
                    sim.step(s, command)
                    setpoints.append(None if command is None else command.setpoint)
                self._history[rid].append(end, *_status(group, setpoints))
            if end.hour != t.hour:
                self._book.prune(end)
            self._now = end

    def _setpoint(self, sim: _Sim, t: datetime) -> Setpoint | None:
        return self._book.setpoint(sim.device.device_id, t) if sim.follows else None

    def read(self, resource: ResourceSpec, now: datetime) -> Reading:
        """The resource's reading at `now` (the TelemetrySource protocol). A resource without
        simulated devices reads as offline and empty."""
        self.advance(now)
        history = self._history.get(resource.resource_id)
        if history is None:
            return Reading(power_kw=0.0, energy_kwh=0.0, online=False, manual_override=False)
        return history.reading(now)

    def _sim(self, device_id: str) -> _Sim:
        try:
            return self._sims[device_id]
        except KeyError:
            raise KeyError(f"no simulated device {device_id!r}") from None

    def fail(self, device_id: str) -> None:
        """From now on the device is offline: it ignores commands and reports online=False."""
        self._sim(device_id).online = False

    def recover(self, device_id: str) -> None:
        self._sim(device_id).online = True

    def override(self, device_id: str, on: bool = True) -> None:
        """Its owner takes over (on) or hands back (off): it ignores commands meanwhile."""
        self._sim(device_id).user_override = on

    def telemetry(self, device_id: str) -> DeviceTelemetry:
        """What the device reports now (at `now`)."""
        return self._sim(device_id).telemetry(self._now)

    def states(self, device_ids: Iterable[str] | None = None, *,
               horizon: timedelta = FLEX_HORIZON) -> list[DeviceState]:
        """Each device's state now, for LOAD_DISPATCH: its flexibility is how far its import can
        fall or rise from its last step's and stay there for `horizon`; available: online and
        not overridden."""
        s = _step(self._now, horizon)
        sims = self._sims.values() if device_ids is None else map(self._sim, device_ids)
        out = []
        for sim in sims:
            least, most = sim.bounds(s, self._setpoint(sim, self._now))
            out.append(DeviceState(device=sim.device,
                                   available=sim.online and not sim.manual_override,
                                   flex_down_kw=max(0.0, sim.power_kw - least),
                                   flex_up_kw=max(0.0, most - sim.power_kw),
                                   current_kw=sim.power_kw))
        return out

    def views(self, device_ids: Iterable[str] | None = None, *,
              horizon: timedelta = FLEX_HORIZON) -> dict[str, DeviceView]:
        """What `policies.plans` plans from, per device: its state and telemetry now."""
        views = {}
        now = _step(self._now, STEP)
        for state in self.states(device_ids, horizon=horizon):
            t = self.telemetry(state.device.device_id)
            views[t.device_id] = DeviceView(state=state, soc=t.soc, temp_c=t.temp_c,
                                            uncontrolled_kw=self._sims[t.device_id]
                                            .uncontrolled_kw(now),
                                            energy_needed_kwh=t.energy_needed_kwh,
                                            departure=t.departure)
        return views

    def forecast(self, device: Device, start: datetime, step: timedelta,
                 steps: int) -> tuple[list[float], list[float]]:
        """A site's clear-sky PV and load forecast, mean kW per step (a `policies.plans.Forecast`):
        clouds are what makes the measurements deviate from it.

        Raises:
            ValueError: the device is not a simulated battery+PV site.
        """
        sim = self._sims.get(device.device_id)
        if not isinstance(sim, _Site):
            raise ValueError(f"{device.device_id} is not a simulated battery+PV site")
        minutes = max(1, round(step / STEP))
        pv, load = [], []
        for i in range(steps):
            hours = [_step(start + i * step + m * STEP, STEP).hour for m in range(minutes)]
            pv.append(math.fsum(map(sim.profile.clear_sky_pv_kw, hours)) / minutes)
            load.append(math.fsum(map(sim.profile.load_kw, hours)) / minutes)
        return pv, load


def _status(group: Sequence[_Sim], setpoints: Sequence[Setpoint | None]
            ) -> tuple[float, float, int, float]:
    """A resource's power, energy, status flags and load control share (NaN: none) for a step
    its devices ran under `setpoints`: the share is the mean LIMIT level when every device that
    follows commands is under a LIMIT setpoint."""
    flags, levels, followers = 0, 0.0, 0
    limited = True
    for sim, sp in zip(group, setpoints):
        flags |= (_ONLINE if sim.online else 0) | (_OVERRIDE if sim.manual_override else 0)
        if sim.follows:
            followers += 1
            if sp is None or sp.mode is not Mode.LIMIT:
                limited = False
            else:
                levels += min(max(sp.level if sp.level is not None else 100, 0), 100) / 100
    share = levels / followers if followers and limited else math.nan
    return (math.fsum(s.power_kw for s in group), math.fsum(s.energy_kwh for s in group),
            flags, share)


def default_profile(device: Device, start: datetime) -> Profile:
    """A device class's profile when none is given: a default site; an EV that arrives at
    `start` wanting its declared departure energy (else EV_DEFAULT_NEED_SHARE of its battery);
    a tank mid-band; a load at half its rating."""
    match device.device_class:
        case DeviceClass.BATTERY:
            return SiteProfile()
        case DeviceClass.EV:
            need = device.departure_energy_kwh
            return EvSession(arrival=start, departure=device.departure,
                             energy_kwh=need if need is not None
                             else EV_DEFAULT_NEED_SHARE * device.capacity_kwh)
        case DeviceClass.HOT_WATER:
            return TankProfile()
    return LoadProfile()


def _sim(device: Device, profile: Profile, seed: str) -> _Sim:
    kind = device.device_class
    if kind is DeviceClass.BATTERY:
        if device.capacity_kwh <= 0:
            raise ValueError(f"battery {device.device_id} has no storage")
        return _Site(device, _of(SiteProfile, profile, device), seed)
    if kind is DeviceClass.EV:
        return _Ev(device, _of(EvSession, profile, device))
    if kind is DeviceClass.HOT_WATER:
        if device.comfort_min_c is None or device.comfort_max_c is None \
                or device.comfort_min_c > device.comfort_max_c:
            raise ValueError(f"hot-water tank {device.device_id} needs a comfort band")
        return _Tank(device, _of(TankProfile, profile, device))
    return _Load(device, _of(LoadProfile, profile, device))


def _of(kind: type[_P], profile: Profile, device: Device) -> _P:
    if not isinstance(profile, kind):
        raise TypeError(f"{device.device_id} ({device.device_class}) takes a {kind.__name__}, "
                         f"not a {type(profile).__name__}")
    return profile
