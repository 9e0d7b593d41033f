"""The documented default telemetry source: a deterministic model of each resource, used until
the bridge feeds real device telemetry.

The model, per resource (a `ResourceSpec`) at time t:
- Availability: `availability(resource_id, t) -> (online, manual_override)`, given by the caller,
  is reported as is. A resource that is offline or under manual override does not follow grid
  signals: it draws its baseline and reports no load control state.
- Signals: `signals(resource_id, t)` gives the grid signals in force for the resource. A signal
  applies at t when one of its intervals, shifted by the resource's randomised start, holds t.
  Among the applicable signals the model acts on, `ven.signals.winner` picks one (lowest
  non-zero priority; test events never).
- Power (kW), from the winner:
  LOAD_CONTROL / x-loadControlCapacity v (a share of rated): min(baseline, v * rated);
  LOAD_DISPATCH / setpoint s (kW, or W / MW by the signal's unit): s clamped to
  [baseline - flexible, baseline + flexible];
  SIMPLE / level L (0..3): baseline - flexible * L / 3;
  no applicable signal, or any other signal: baseline.
  The result is clamped to [0, rated]: the model imports only.
- Energy (kWh): a counter per resource, 0 at the resource's first reading, integrating the power
  above in steps of at most one minute (the power at the start of each step), so it is monotone.
  Readings come in any order (two report requests sample the same resource on different grids):
  a reading later than the last one extends the counter; an earlier one is interpolated
  linearly between the recorded readings around it (before the first: 0).
- Load control: while a LOAD_CONTROL capacity signal wins, LoadControlState(kind="oadrCapacity",
  current=v) with v clamped to [0, 1]; otherwise None.
No randomness: the same signals, availability and reading times give the same readings.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Final

from oadr.messages import LoadControlState, OptReason
from policies.flexibility import KW_PER_UNIT

from .fleet import AvailabilitySpec, ResourceSpec
from .records import GridSignal
from .reports import Reading
from .signals import value_at, winner

Signals = Callable[[str, datetime], Sequence[GridSignal]]
Availability = Callable[[str, datetime], tuple[bool, bool]]

_STEP: Final = timedelta(minutes=1)
_HOUR: Final = timedelta(hours=1)
_KEEP: Final = 4096  # recorded readings per resource: far more than one report window needs
_CAPACITY: Final = ("LOAD_CONTROL", "x-loadControlCapacity")
_MODELLED: Final = frozenset({_CAPACITY, ("LOAD_DISPATCH", "setpoint"), ("SIMPLE", "level")})


def always_available(resource_id: str, now: datetime) -> tuple[bool, bool]:
    """Online, no manual override."""
    return True, False


def declared_availability(windows: Sequence[AvailabilitySpec]) -> Availability:
    """Availability as the fleet file declares it: offline inside an outageRunStatus window,
    under manual override inside an overrideStatus window (for the resources it names, or all)."""

    def availability(resource_id: str, now: datetime) -> tuple[bool, bool]:
        online, override = True, False
        for a in windows:
            if a.start <= now < a.start + a.duration and (not a.resources
                                                         or resource_id in a.resources):
                online = online and a.reason is not OptReason.OUTAGE_RUN_STATUS
                override = override or a.reason is OptReason.OVERRIDE_STATUS
        return online, override

    return availability


class ModelTelemetry:
    """A `TelemetrySource` following the model in this module's docstring."""

    def __init__(self, signals: Signals, availability: Availability = always_available) -> None:
        self._signals = signals
        self._availability = availability
        # Per resource: the readings so far, as (time, kWh) in time order.
        self._meters: dict[str, list[tuple[datetime, float]]] = {}

    def read(self, resource: ResourceSpec, now: datetime) -> Reading:
        online, manual_override = self._availability(resource.resource_id, now)
        power, capacity = self._power(resource, now)
        return Reading(
            power_kw=power, energy_kwh=self._energy(resource, now), online=online,
            manual_override=manual_override,
            load_control=None if capacity is None
            else LoadControlState(kind="oadrCapacity", current=capacity))

    def _winner(self, resource: ResourceSpec, t: datetime) -> tuple[GridSignal, float] | None:
        rid = resource.resource_id

        def modelled(s: GridSignal) -> bool:
            return (s.signal_name.upper(), s.signal_type) in _MODELLED \
                and value_at(s, rid, t) is not None

        signal = winner(self._signals(rid, t), rid, t, modelled)
        value = None if signal is None else value_at(signal, rid, t)
        return None if signal is None or value is None else (signal, value)

    def _power(self, resource: ResourceSpec, t: datetime) -> tuple[float, float | None]:
        """Power at `t` (kW) and the capacity share of a winning LOAD_CONTROL signal."""
        baseline, flexible = resource.baseline_kw, resource.flexible_kw
        online, manual_override = self._availability(resource.resource_id, t)
        winner = self._winner(resource, t) if online and not manual_override else None
        power, capacity = baseline, None
        if winner is not None:
            signal, value = winner
            kind = (signal.signal_name.upper(), signal.signal_type)
            if kind == _CAPACITY:
                capacity = min(max(value, 0.0), 1.0)
                power = min(baseline, capacity * resource.rated_kw)
            elif kind[0] == "LOAD_DISPATCH":
                setpoint = value * KW_PER_UNIT.get(signal.unit, 1.0)
                power = min(max(setpoint, baseline - flexible), baseline + flexible)
            else:
                power = baseline - flexible * min(max(value, 0.0), 3.0) / 3
        return min(max(power, 0.0), resource.rated_kw), capacity

    def _energy(self, resource: ResourceSpec, t: datetime) -> float:
        meter = self._meters.setdefault(resource.resource_id, [])
        if not meter:
            meter.append((t, 0.0))
            return 0.0
        last, kwh = meter[-1]
        if t < last:
            i = bisect.bisect_right(meter, t, key=lambda point: point[0])
            if i == 0:
                return meter[0][1]
            (t0, e0), (t1, e1) = meter[i - 1], meter[i]
            return e0 + (e1 - e0) * ((t - t0) / (t1 - t0))
        while last < t:
            step_end = min(last + _STEP, t)
            kwh += self._power(resource, last)[0] * ((step_end - last) / _HOUR)
            last = step_end
        if t > meter[-1][0]:
            meter.append((t, kwh))
            if len(meter) > _KEEP:
                del meter[:_KEEP // 2]
        return kwh
