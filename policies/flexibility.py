"""The opt decision: is there enough flexibility to answer an event's request?

Pure: frozen values in, an `OptDecision` out; no I/O, no clock. The request is estimated in kW
from each signal (`requested_kw`), the offer is the flexible kW of the reached resources not opted
out for the event's window; the VEN opts in when the offer covers `min_share` of the request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from oadr.messages import OptType
from ven.fleet import AvailabilitySpec, ResourceSpec
from ven.records import GridSignal

# LOAD_DISPATCH values are power (a conformance rule); a missing unit is read as kW.
KW_PER_UNIT: Final[Mapping[str | None, float]] = {"W": 1e-3, "kW": 1.0, "MW": 1e3, "GW": 1e6}
# SIMPLE levels and thermostat offsets are read on a 0..3 scale: 3 (or 3 degrees) asks for all of
# the flexible band, less asks for a proportional share of it.
_FULL_SCALE: Final = 3.0


@dataclass(frozen=True, slots=True, kw_only=True)
class OptDecision:
    opt: OptType
    reason: str


@dataclass(frozen=True, slots=True)
class _Totals:
    baseline: float
    rated: float
    flexible: float


def unavailable(availability: Sequence[AvailabilitySpec], resources: Sequence[str],
                start: datetime, end: datetime | None) -> frozenset[str]:
    """The resources an optOut availability window overlapping [start, end) covers; a window
    naming no resources covers them all. `end` None: the event runs until cancelled."""
    out: set[str] = set()
    for a in availability:
        if a.opt_type is not OptType.OPT_OUT:
            continue
        if a.start + a.duration > start and (end is None or a.start < end):
            out.update(r for r in resources if not a.resources or r in a.resources)
    return frozenset(out)


def signal_kw(signal: GridSignal, value: float) -> float:
    return value * KW_PER_UNIT.get(signal.unit, 1.0)


# (signalName, signalType) -> kW asked for one interval value, given the resources' totals.
_RULES: Final[Mapping[tuple[str, str], Callable[[GridSignal, float, _Totals], float]]] = {
    ("LOAD_DISPATCH", "setpoint"): lambda s, v, t: abs(t.baseline - signal_kw(s, v)),
    ("LOAD_DISPATCH", "delta"): lambda s, v, t: abs(signal_kw(s, v)),
    ("LOAD_CONTROL", "x-loadControlCapacity"): lambda s, v, t: max(0.0, t.baseline - v * t.rated),
    ("LOAD_CONTROL", "x-loadControlPercentOffset"): lambda s, v, t: abs(v) / 100 * t.baseline,
    # Thermostats: an offset of 3 degrees or more uses the whole flexible band. A setpoint is an
    # absolute temperature, so it nearly always counts as the whole band: the safe side.
    ("LOAD_CONTROL", "x-loadControlLevelOffset"):
        lambda s, v, t: t.flexible * min(1.0, abs(v) / _FULL_SCALE),
    ("LOAD_CONTROL", "x-loadControlSetpoint"):
        lambda s, v, t: t.flexible * min(1.0, abs(v) / _FULL_SCALE),
    ("SIMPLE", "level"): lambda s, v, t: t.flexible * min(1.0, abs(v) / _FULL_SCALE),
    # CHARGE_STATE (a state-of-charge target, checked by the bridge) and ELECTRICITY_PRICE
    # (routine: no obligation) ask for nothing here.
}


def requested_kw(signal: GridSignal, resources: Sequence[ResourceSpec]) -> float:
    """The largest flexibility, in kW, the signal asks of `resources` over its intervals; 0 for
    signals that carry no power obligation."""
    rule = _RULES.get((signal.signal_name, signal.signal_type))
    if rule is None:
        return 0.0
    totals = _Totals(baseline=sum(r.baseline_kw for r in resources),
                     rated=sum(r.rated_kw for r in resources),
                     flexible=sum(r.flexible_kw for r in resources))
    return max((rule(signal, iv.value, totals) for iv in signal.intervals), default=0.0)


def _window(signals: Sequence[GridSignal]) -> tuple[datetime, datetime | None]:
    intervals = [iv for s in signals for iv in s.intervals]
    ends = [iv.end for iv in intervals]
    end = None if None in ends else max(e for e in ends if e is not None)
    return min(iv.start for iv in intervals), end


def decide(signals: Sequence[GridSignal], resources: Sequence[ResourceSpec],
           availability: Sequence[AvailabilitySpec], min_share: float) -> OptDecision:
    """Opt in or out of one event, given all its signals and this VEN's resources.

    The event's request is the largest of its signals' (they are alternative expressions of one
    request, e.g. SIMPLE beside LOAD_DISPATCH). Availability windows scoped to another market
    context are ignored.
    """
    if any(s.test_event for s in signals):
        return OptDecision(opt=OptType.OPT_IN, reason="test event: acknowledged, not acted on")
    reached_ids = {r for s in signals for r in s.resources}
    reached = [r for r in resources if r.resource_id in reached_ids]
    if not reached:
        return OptDecision(opt=OptType.OPT_OUT, reason="no resource targeted")
    requested = max(requested_kw(s, [r for r in reached if r.resource_id in s.resources])
                    for s in signals)
    start, end = _window(signals)
    program = signals[0].program
    off = unavailable([a for a in availability if a.market_context in (None, program)],
                      [r.resource_id for r in reached], start, end)
    usable = [r for r in reached if r.resource_id not in off]
    available = sum(r.flexible_kw for r in usable)
    numbers = (f"requested {requested:.1f} kW, available {available:.1f} kW from "
               f"{len(usable)} of {len(reached)} resources, need {min_share:.0%}")
    if requested == 0:
        return OptDecision(opt=OptType.OPT_IN, reason=f"{numbers}: nothing to deliver")
    if available >= min_share * requested:
        return OptDecision(opt=OptType.OPT_IN, reason=numbers)
    return OptDecision(opt=OptType.OPT_OUT, reason=numbers)
