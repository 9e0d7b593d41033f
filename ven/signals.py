"""From OpenADR events to the neutral `GridSignal`s the bridge executes.

Pure: no I/O and no clock (`now` and the random generator are parameters). The rules:
- Targets: event-level resourceIDs select this VEN's resources (in fleet-file order); venID,
  groupID and partyID targets, or none, reach all of them (the VTN only sends us events that
  concern us). Signal-level resourceIDs narrow further for that signal.
- Times: interval i starts at dtstart plus the durations before it; an interval lasting 0, or the
  last interval of an event open until cancelled (activePeriod duration 0), has no end.
- Priority: lower number wins; 0 means "no priority" and loses to any positive number.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Final

from oadr.messages import Event, EventSignal, EventStatus, ItemBase, OptType, Target

from .fleet import VenSpec
from .records import GridSignal, Purpose, SignalInterval, VenEvent

# domain.md section 3: the signalName/signalType pairs some device class can act on.
SUPPORTED: Final[Mapping[str, frozenset[str]]] = {
    "SIMPLE": frozenset({"level"}),
    "LOAD_CONTROL": frozenset({"x-loadControlCapacity", "x-loadControlLevelOffset",
                               "x-loadControlPercentOffset", "x-loadControlSetpoint"}),
    "LOAD_DISPATCH": frozenset({"setpoint", "delta"}),
    "ELECTRICITY_PRICE": frozenset({"price", "priceRelative", "priceMultiplier"}),
    "CHARGE_STATE": frozenset({"setpoint", "delta"}),
}

# siScaleCode (EMIX) -> unit prefix.
_SI_PREFIX: Final[Mapping[str, str]] = {
    "p": "p", "n": "n", "micro": "µ", "m": "m", "c": "c", "d": "d",
    "k": "k", "M": "M", "G": "G", "T": "T", "none": "",
}
# Currency item kinds: itemUnits holds the ISO 4217 code, the kind names the denominator.
_PER: Final[Mapping[str, str]] = {
    "currency": "", "currencyPerKWh": "/kWh", "currencyPerKW": "/kW", "currencyPerThm": "/therm",
}


def unsupported(ev: Event) -> list[str]:
    """`name/type` of every signal of `ev` we cannot act on; any one makes the answer 460."""
    return [f"{s.signal_name}/{s.signal_type}" for s in ev.signals
            if s.signal_type not in SUPPORTED.get(s.signal_name, frozenset())]


def _resolve(targets: Target | None, among: Sequence[str]) -> tuple[str, ...]:
    if targets is None or not targets.resource_ids:
        return tuple(among)
    named = set(targets.resource_ids)
    return tuple(r for r in among if r in named)


def reached_resources(ev: Event, spec: VenSpec) -> tuple[str, ...]:
    """This VEN's resourceIDs the event's targets reach, in fleet-file order; resourceIDs we do
    not have are ignored."""
    return _resolve(ev.targets, [r.resource_id for r in spec.resources])


def signal_resources(ev: Event, signal: EventSignal, spec: VenSpec) -> tuple[str, ...]:
    """The resources one signal reaches: the event's, narrowed by the signal's own targets."""
    return _resolve(signal.targets, reached_resources(ev, spec))


def purpose(ev: Event, spec: VenSpec) -> Purpose:
    """PAS 1879 purpose of an event.

    RESPONSE when its program is one of `spec.response_programs`; otherwise ROUTINE when it only
    carries prices (a tariff: devices re-plan, nobody dispatched them); anything else (SIMPLE,
    LOAD_CONTROL, LOAD_DISPATCH, CHARGE_STATE) is a request from the grid, so RESPONSE.
    """
    if ev.market_context in spec.response_programs:
        return Purpose.RESPONSE
    if {s.signal_name for s in ev.signals} == {"ELECTRICITY_PRICE"}:
        return Purpose.ROUTINE
    return Purpose.RESPONSE


def start_offsets(ev: Event, resources: Sequence[str],
                  rng: random.Random) -> tuple[tuple[str, timedelta], ...]:
    """A random start delay per resource, whole seconds uniform in [0, startafter].

    The VTN's startafter is honoured whatever the purpose: it asked for it explicitly. The
    default random delay of routine DSR (PAS 1879, 600 s) is the bridge's business.
    """
    window = ev.active_period.start_after
    if not window:
        return ()
    top = int(window.total_seconds())
    return tuple((r, timedelta(seconds=rng.randint(0, top))) for r in resources)


def unit_of(item: ItemBase | None) -> str | None:
    """A short unit label: "kW" (powerReal, W, k), "GBP/kWh" (currencyPerKWh, GBP); None
    without an item base or units."""
    if item is None or not item.units:
        return None
    if item.kind in _PER:
        return item.units + _PER[item.kind]
    return _SI_PREFIX.get(item.si_scale, "") + item.units


def _intervals(ev: Event, signal: EventSignal) -> tuple[SignalInterval, ...]:
    start = ev.active_period.dtstart
    open_ended = not ev.active_period.duration
    out = []
    last = len(signal.intervals) - 1
    for i, iv in enumerate(signal.intervals):
        start = iv.dtstart or start  # a peer's explicit interval start wins over the sum
        endless = not iv.duration or (open_ended and i == last)
        out.append(SignalInterval(start=start, end=None if endless else start + iv.duration,
                                  value=iv.payload))
        start += iv.duration
    return tuple(out)


def grid_signals(ev: Event, spec: VenSpec,
                 offsets: tuple[tuple[str, timedelta], ...]) -> tuple[GridSignal, ...]:
    """One `GridSignal` per signal of `ev`, with absolute UTC intervals; none when cancelled.

    `offsets` come from `start_offsets`; each signal keeps those of the resources it reaches.
    """
    if ev.status is EventStatus.CANCELLED:
        return ()
    why = purpose(ev, spec)
    out = []
    for s in ev.signals:
        resources = signal_resources(ev, s, spec)
        out.append(GridSignal(
            program=ev.market_context, event_id=ev.event_id,
            modification_number=ev.modification_number, priority=ev.priority,
            signal_name=s.signal_name, signal_type=s.signal_type, signal_id=s.signal_id,
            unit=unit_of(s.item_base), intervals=_intervals(ev, s), resources=resources,
            purpose=why, start_offsets=tuple((r, d) for r, d in offsets if r in resources),
            ramp_up=ev.active_period.ramp_up, recovery=ev.active_period.recovery,
            test_event=ev.test_event,
        ))
    return tuple(out)


def in_force(signal: GridSignal, resource_id: str, now: datetime) -> bool:
    """Whether `signal` governs the resource at `now`: from its shifted first start, less the
    ramp-up, to its shifted last end (no end: until cancelled)."""
    if resource_id not in signal.resources or not signal.intervals:
        return False
    plan = signal.schedule(resource_id)
    begin = plan[0].start - (signal.ramp_up or timedelta(0))
    end = plan[-1].end
    return begin <= now and (end is None or now < end)


def winning(signals: Iterable[GridSignal], resource_id: str, signal_name: str,
            now: datetime) -> GridSignal | None:
    """The signal named `signal_name` that governs the resource at `now`, or None (`winner`)."""
    return winner(signals, resource_id, now, lambda s: s.signal_name == signal_name)


def winner(signals: Iterable[GridSignal], resource_id: str, now: datetime,
           accept: Callable[[GridSignal], bool]) -> GridSignal | None:
    """Among the `accept`ed signals governing the resource at `now`, the one that wins.

    Lowest positive priority wins, 0 ("no priority") loses to any. Ties: the signal whose
    schedule starts later wins (the newer instruction), then the lower eventID and signalID, so
    the choice never depends on input order. Test events never win: they are acknowledged only.
    """
    candidates = [s for s in signals
                  if not s.test_event and in_force(s, resource_id, now) and accept(s)]
    if not candidates:
        return None

    def rank(s: GridSignal) -> tuple[float, float, str, str]:
        prio = float(s.priority) if s.priority > 0 else float("inf")
        return (prio, -s.schedule(resource_id)[0].start.timestamp(), s.event_id, s.signal_id)

    return min(candidates, key=rank)


def value_at(signal: GridSignal, resource_id: str, now: datetime) -> float | None:
    """The payload of the interval in force for the resource at `now` (shifted by its start
    offset); None before the first interval, after the last, or for a resource not reached."""
    if resource_id not in signal.resources:
        return None
    value = None
    # The last match wins: a 0-length (endless) interval gives way to the next one.
    for iv in signal.schedule(resource_id):
        if iv.start <= now and (iv.end is None or now < iv.end):
            value = iv.value
    return value


def over(signal: GridSignal, now: datetime) -> bool:
    """The signal has ended and its recovery period too: nothing left for devices to do."""
    last = max((i.end for i in signal.intervals if i.end is not None), default=None)
    open_ended = any(i.end is None for i in signal.intervals)
    if open_ended or last is None:
        return False
    latest_offset = max((o for _, o in signal.start_offsets), default=timedelta(0))
    return last + latest_offset + (signal.recovery or timedelta(0)) <= now


def signals_of(events: Iterable[VenEvent], spec: VenSpec, now: datetime
               ) -> tuple[GridSignal, ...]:
    """The grid signals of the events a VEN takes part in that still matter at `now`."""
    out: list[GridSignal] = []
    for ve in events:
        if ve.response_code == 200 and ve.opt is OptType.OPT_IN \
                and ve.event.status is not EventStatus.CANCELLED:
            out += [s for s in grid_signals(ve.event, spec, ve.start_offsets) if not over(s, now)]
    return tuple(out)
