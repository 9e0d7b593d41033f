"""The Central Monitoring Body's fleet monitors: sliding windows over planned state changes
(domain.md section 8).

Pure and incremental: `observe` takes the planned changes of newly accepted plans, `tick` moves
simulated time on; no clock is read. Each change is spread over the one-minute buckets it may fall
in (uniformly over its random delay, so a randomised start is not synchronous), the cost per change
is bounded by its spread (at most 31 buckets for the 30 min SI 2021/1467 allows), and buckets
behind `now - keep` are pruned.

A device's newer plan replaces its older one from the newer plan's start (`observe(starts=)`, else
its first change) on: the older plan's changes from then are retracted from every window, so
revisions are not counted twice.

Expected correlation does not alarm:
- a change inside a dispatched window, for that window's event or program and an aggregator it
  covers, is expected;
- a change that starts within a published tariff boundary's tolerance *and* carries a random delay
  (at least `tariff_min_spread`) is price-driven switching, expected; a synchronous change at a
  boundary is not (routine DSR must randomise, so an attacker cannot hide at a boundary), nor
  are an aggregator's changes at a boundary that `boundary_spread` found synchronous.
Expected changes are left out of `same_minute_share`, `mw_step` and `aggregator_cap` (they still
move the scheduled aggregates `area_headroom` and `prognosis_deviation` watch); `sign_flip`
ignores flips inside dispatched windows and a plan's own flips at a tariff boundary (a battery
turning from charging to discharging as the price rises), never a revision that reverses what the
previous plan had the device do at that time.

Monitors (each `Alert.monitor`):
- same_minute_share: weighted number of an aggregator's changes that may fall in one minute, over
  `same_minute_share` of its registered devices (fleets under `min_devices` are not judged);
- mw_step: net planned change of every aggregator together in one minute, MW, over the national
  budget (10 % of 1,320 MW);
- aggregator_cap: an aggregator's net change in one minute, MW, over its own cap;
- sign_flip: an aggregator's devices flipping between charging and discharging within one
  `flip_window`, over `flip_share` of its registered devices;
- boundary_spread: at a tariff boundary, the share of an aggregator's exempt changes there
  whose random delay may put them within `boundary_fast` of their start (each counts the chance,
  fast/spread), over `boundary_fast_share` once at least max(`min_devices`,
  `boundary_min_share` of its fleet) changed: randomised switching spreads over minutes (delays
  uniform up to 600 s put 10 % in the first minute; users' boosts and re-plans with shorter
  delays raise that, hence 75 %); those changes then count for the minute monitors;
- area_headroom (tick): the scheduled import of a network area's devices over its headroom;
- prognosis_deviation (tick and observe): an aggregator's scheduled aggregate in an area, and its
  total over its areas, as a mean over each prognosis step (like the prognosis), departing
  from it by more than the largest of `prognosis_fraction`, `prognosis_floor_kw` and
  `prognosis_noise_kw` x sqrt(devices behind it) (chance in users' behaviour grows so), for at
  least `prognosis_persist`. The current step is judged both ways, as it happened and as
  planned for its rest; the steps starting within `prognosis_lookahead` only above the
  prognosis, so a departure is caught when planned: plans still to come (users' boosts
  minutes ahead, a dispatch's response just before its window) can only bring a planned step
  up to its prognosis here, and steps a dispatched window for the aggregator overlaps are not
  judged ahead. A slow ramp under every per-minute limit still adds up to this.
Minute monitors raise once per (monitor, subject, minute, flip window or boundary); the
prognosis and headroom monitors once per episode (from when the breach starts until a check
finds none), `window_start` being the step judged (the headroom: the episode's start).
The scheduled aggregates count the devices with observed plans, each from its power before its
first observed change.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from vtn.cmb.records import (Alert, DeviceRegistration, DispatchWindow, Prognosis, StateChange,
                             Tariff)

_NATIONAL: Final = "national"
_FLIP: Final = 1  # flag bits kept with each change
_EXPECTED: Final = 2
_BOUNDARY: Final = 4  # expected as price-driven switching at a tariff boundary


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitorConfig:
    same_minute_share: float = 0.2
    min_devices: int = 20
    national_mw_step_per_min: float = 132.0  # 10 % of 1,320 MW
    aggregator_cap_mw: Mapping[str, float] = field(default_factory=dict)  # net MW step per minute
    area_headroom_kw: Mapping[str, float] = field(default_factory=dict)  # scheduled import
    prognosis_fraction: float = 0.2
    prognosis_floor_kw: float = 20.0  # the least departure judged, whatever the fleet
    prognosis_noise_kw: float = 6.0  # per square root of the devices behind the aggregate
    prognosis_persist: timedelta = timedelta(minutes=2)  # a breach must last this long
    prognosis_lookahead: timedelta = timedelta(minutes=30)  # planned steps judged ahead of now
    boundary_fast: timedelta = timedelta(minutes=1)
    boundary_fast_share: float = 0.75
    boundary_min_share: float = 0.2  # of the aggregator's registered devices, at least min_devices
    flip_share: float = 0.1
    flip_window: timedelta = timedelta(minutes=30)
    tariff_min_spread: timedelta = timedelta(seconds=1)
    keep: timedelta = timedelta(minutes=60)  # how long buckets behind `now` are kept


def _minute(t: datetime) -> int:
    return int(t.timestamp() // 60)


def _at_minute(m: int) -> datetime:
    return datetime.fromtimestamp(m * 60, UTC)


def _weights(change: StateChange) -> list[tuple[int, float]]:
    """The minutes the change may fall in and the share of it in each (uniform over its spread)."""
    start = change.at.timestamp()
    spread = change.spread.total_seconds()
    if spread <= 0:
        return [(int(start // 60), 1.0)]
    end = start + spread
    out = []
    m = int(start // 60)
    while m * 60 < end:
        out.append((m, (min(end, m * 60 + 60) - max(start, m * 60)) / spread))
        m += 1
    return out


def _prune(buckets: dict[int, float], below: int, since: int | None) -> None:
    """Drop minutes before `below`: walk the minutes since the last prune, or every key the
    first time (or after a long jump)."""
    if since is None or below - since > len(buckets):
        for m in [m for m in buckets if m < below]:
            del buckets[m]
    else:
        for m in range(since, below):
            buckets.pop(m, None)


class _Level:
    """A scheduled aggregate (kW): its value as of minute `through`, its values at the minutes
    up to `through` still in `past` (the last `history` minutes: a prognosis step's worth),
    and the deltas still to come."""

    __slots__ = ("future", "history", "past", "through", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.through: int | None = None
        self.future: dict[int, float] = {}
        self.past: dict[int, float] = {}
        self.history = 0

    def add(self, minute: int, delta: float) -> None:
        if self.through is not None and minute <= self.through:
            self.value += delta
            for m in range(max(minute, self.through - self.history + 1), self.through + 1):
                if m in self.past:
                    self.past[m] += delta
        else:
            self.future[minute] = self.future.get(minute, 0.0) + delta

    def advance(self, minute: int) -> None:
        if self.through is not None and minute <= self.through:
            return
        keep_from = minute - self.history + 1
        if self.through is None or keep_from - self.through > len(self.future):
            for m in [m for m in self.future if m < keep_from]:
                self.value += self.future.pop(m)
            walk_from = keep_from
        else:
            walk_from = self.through + 1
        for m in range(walk_from, minute + 1):
            self.value += self.future.pop(m, 0.0)
            if m >= keep_from:
                self.past[m] = self.value
        for m in [m for m in self.past if m < keep_from]:
            del self.past[m]
        self.through = minute

    def mean(self, lo: int, hi: int) -> float:
        """The mean over minutes [lo, hi): as it was where still held, as planned ahead."""
        through = self.through if self.through is not None else lo - 1
        value = self.value
        if lo > through + 1:  # the deltas due before `lo` count from its start
            value += sum(d for m, d in self.future.items() if m < lo)
        total = 0.0
        for m in range(lo, hi):
            if m <= through:
                total += self.past.get(m, self.value)
            else:
                value += self.future.get(m, 0.0)
                total += value
        return total / (hi - lo)


@dataclass(slots=True)
class _Track:
    """A device's observed plan: its changes (with flag bits) and its power before them."""

    aggregator: str
    network_area: str
    plan_id: str
    base_kw: float
    changes: list[tuple[StateChange, int]]

    def kw_at(self, t: datetime) -> float:
        kw = self.base_kw
        for c, _ in self.changes:
            if c.at > t:
                break
            kw = c.to_kw
        return kw


@dataclass(frozen=True, slots=True)
class _Step:
    """A prognosis step as judged: the scheduled mean and the prognosis for it."""

    start: datetime
    end: datetime
    scheduled: float
    expected: float
    devices: int
    areas: int


class FleetMonitors:
    def __init__(self, config: MonitorConfig, registry: Mapping[str, DeviceRegistration],
                 tariffs: Sequence[Tariff] = (), windows: Sequence[DispatchWindow] = (),
                 prognoses: Sequence[Prognosis] = ()) -> None:
        self.config = config
        self.set_registry(registry)
        self._boundaries: dict[int, list[tuple[float, float, int]]] = {}
        self._at_boundaries: dict[tuple[str, int], list[float]] = {}  # changes, fast ones
        self._synchronous: set[tuple[str, int]] = set()  # (aggregator, boundary) not exempt
        self._windows: list[DispatchWindow] = []
        self._prognoses: dict[str, dict[str, Prognosis]] = {}  # aggregator -> area -> latest
        self._history = 0  # minutes of past levels kept: the longest prognosis step
        self._tracks: dict[str, _Track] = {}
        self._count: dict[str, dict[int, float]] = {}  # aggregator -> minute -> changes
        self._step: dict[str, dict[int, float]] = {}  # aggregator or _NATIONAL -> minute -> kW
        self._flips: dict[str, dict[int, float]] = {}  # aggregator -> flip window -> flips
        self._levels: dict[tuple[str, str], _Level] = {}  # (aggregator, area)
        self._area_levels: dict[str, _Level] = {}
        self._raised: set[tuple[str, str, int]] = set()
        self._episodes: dict[tuple[str, str, str], tuple[datetime, bool]] = {}  # since, raised
        self._now: datetime | None = None
        self._pruned: int | None = None
        self._flip_minutes = max(1, int(config.flip_window / timedelta(minutes=1)))
        for t in tariffs:
            self.add_tariff(t)
        for w in windows:
            self.add_window(w)
        for p in prognoses:
            self.add_prognosis(p)


    def set_registry(self, registry: Mapping[str, DeviceRegistration]) -> None:
        """The fleets the shares are measured against (a registry change keeps the windows)."""
        self._fleet = Counter(r.owner for r in registry.values())
        self._fleet_in = Counter((r.owner, r.network_area) for r in registry.values())

    def add_tariff(self, tariff: Tariff) -> None:
        tol = tariff.tolerance.total_seconds()
        for b in tariff.boundaries:
            at = b.timestamp()
            lo, hi = at - tol, at + tol
            for m in range(int(lo // 60), int(hi // 60) + 1):
                self._boundaries.setdefault(m, []).append((lo, hi, int(at)))

    def add_window(self, window: DispatchWindow) -> None:
        self._windows.append(window)

    def add_prognosis(self, prognosis: Prognosis) -> None:
        """The latest prognosis for its aggregator and area replaces the previous one."""
        self._prognoses.setdefault(prognosis.aggregator, {})[prognosis.network_area] = prognosis
        self._history = max(self._history, -(-prognosis.step // timedelta(minutes=1)))
        for level in self._levels.values():
            level.history = self._history

    def observe(self, changes: Sequence[StateChange], now: datetime | None = None,
                starts: Mapping[str, datetime] | None = None) -> list[Alert]:
        """Take newly planned changes; alerts for minutes (or flip windows, or tariff
        boundaries) they push over a threshold, and for the planned aggregates they move away
        from the prognosis. `now` stamps the alerts (default: the last tick, else the first
        change). `starts` (plan id -> plan start): from when each plan replaces the device's
        previous one; without it, from the plan's first change (a plan opening with an
        unchanged power then leaves the previous plan's changes before its first change
        standing)."""
        candidates: set[tuple[str, str, int]] = set()
        by_device: dict[str, list[StateChange]] = {}
        for c in changes:
            by_device.setdefault(c.device_id, []).append(c)
        for device_id, new in by_device.items():
            new.sort(key=lambda c: c.at)
            start = starts.get(new[0].plan_id, new[0].at) if starts else new[0].at
            self._replan(device_id, new, min(start, new[0].at), candidates)
        at = now or self._now or (changes[0].at if changes else None)
        if at is None:
            return []
        alerts = self._raise(candidates, at)
        for aggregator in sorted({c.aggregator for c in changes} & set(self._prognoses)):
            alerts += self._against_prognosis(aggregator, at)
        return alerts

    def tick(self, now: datetime) -> list[Alert]:
        """Move simulated time to `now`: check the scheduled aggregates and prune old windows."""
        self._now = now
        minute = _minute(now)
        for series in (*self._levels.values(), *self._area_levels.values()):
            series.advance(minute)
        alerts: list[Alert] = []
        for area, headroom in self.config.area_headroom_kw.items():
            level = self._area_levels.get(area)
            value = level.value if level is not None else 0.0
            key = ("area_headroom", "", area)
            if value <= headroom:
                self._episodes.pop(key, None)
                continue
            alerts += self._episode(key, now, timedelta(0), Alert(
                alert_id=f"area_headroom:{area}:{area}:{now:%Y%m%dT%H%M}", monitor="area_headroom",
                at=now, window_start=now, value=value, threshold=headroom,
                detail=f"scheduled import in network area {area} is {value:.1f} kW at "
                       f"{now:%H:%M}, above its headroom of {headroom:g} kW",
                network_area=area, devices=tuple(sorted(
                    d for d, t in self._tracks.items()
                    if t.network_area == area and t.kw_at(now) > 0))))
        for aggregator in sorted(self._prognoses):
            alerts += self._against_prognosis(aggregator, now)
        self._prune_before(minute - int(self.config.keep / timedelta(minutes=1)))
        return alerts

    # --- the prognosis

    def _against_prognosis(self, aggregator: str, now: datetime) -> list[Alert]:
        """Each area's scheduled aggregate, and the aggregator's total over its areas, as a
        mean over each prognosis step (like the prognosis, a mean per step): the current step,
        as it happened so far and as planned for the rest, both ways; the planned steps
        starting within `prognosis_lookahead`, only above the prognosis (module docstring)."""
        areas = self._prognoses[aggregator]
        judged: dict[str | None, list[_Step]] = {}
        totals: dict[datetime, _Step] = {}
        for area, prognosis in sorted(areas.items()):
            level = self._levels.get((aggregator, area))
            devices = self._fleet_in[aggregator, area]
            for start, end, expected in self._steps(prognosis, now):
                if start > now and self._dispatched(aggregator, start, end):
                    continue
                scheduled = level.mean(_minute(start), _minute(end)) if level else 0.0
                judged.setdefault(area, []).append(
                    _Step(start, end, scheduled, expected, devices, 1))
                t = totals.get(start)
                totals[start] = _Step(start, end, scheduled, expected, devices, 1) if t is None \
                    else _Step(start, end, t.scheduled + scheduled, t.expected + expected,
                               t.devices + devices, t.areas + 1)
        if len(areas) > 1:
            judged[None] = [t for t in totals.values() if t.areas == len(areas)]
        return [a for area, steps in judged.items()
                for a in self._deviation(aggregator, area, now, steps)]

    def _steps(self, prognosis: Prognosis, now: datetime
               ) -> Iterable[tuple[datetime, datetime, float]]:
        """(start, end, expected kW) of the current step and the planned ones starting within
        the lookahead."""
        i = (now - prognosis.start) // prognosis.step
        horizon = now + self.config.prognosis_lookahead
        while 0 <= i < len(prognosis.kw):
            start = prognosis.start + i * prognosis.step
            if start > horizon:
                break
            yield start, start + prognosis.step, prognosis.kw[i]
            i += 1

    def _dispatched(self, aggregator: str, start: datetime, end: datetime) -> bool:
        """A dispatched window covering the aggregator overlaps the step: its response plans
        arrive just before the window, so the planned step is not judged ahead."""
        return any(w.start < end and start < w.end
                   and (not w.aggregators or aggregator in w.aggregators)
                   for w in self._windows)

    def _deviation(self, aggregator: str, area: str | None, now: datetime,
                   steps: Sequence[_Step]) -> list[Alert]:
        """One episode per aggregator and area (or its total): breached while any judged step
        is beyond its tolerance; the first such step is the one reported."""
        cfg = self.config
        found: tuple[_Step, float, float] | None = None
        for step in steps:
            allowed = max(cfg.prognosis_fraction * abs(step.expected), cfg.prognosis_floor_kw,
                          cfg.prognosis_noise_kw * math.sqrt(step.devices))
            departure = step.scheduled - step.expected
            if (departure if step.start > now else abs(departure)) > allowed:
                found = (step, departure, allowed)
                break
        key = ("prognosis_deviation", aggregator, area or "")
        if found is None:
            self._episodes.pop(key, None)
            return []
        step, departure, allowed = found
        where = f"network area {area}" if area else f"its {step.areas} network areas together"
        when = "planned for the step" if step.start > now else "over the current step"
        detail = (f"{aggregator}'s scheduled aggregate in {where} averages "
                  f"{step.scheduled:.1f} kW {when} {step.start:%H:%M}-{step.end:%H:%M} "
                  f"(as of {now:%H:%M:%S}), {departure:+.1f} kW from its prognosis of "
                  f"{step.expected:.1f} kW, beyond {allowed:.1f} kW (the largest of "
                  f"{cfg.prognosis_fraction:.0%}, {cfg.prognosis_floor_kw:g} kW and "
                  f"{cfg.prognosis_noise_kw:g} kW x sqrt({step.devices} devices)) for at "
                  f"least {cfg.prognosis_persist.total_seconds():g} s")
        devices = tuple(sorted(
            d for d, t in self._tracks.items()
            if t.aggregator == aggregator and (area is None or t.network_area == area)
            and t.kw_at(step.end - timedelta(seconds=1)) != t.base_kw))
        return self._episode(key, now, cfg.prognosis_persist, Alert(
            alert_id=f"prognosis_deviation:{aggregator}:{area or '*'}:{now:%Y%m%dT%H%M%S}",
            monitor="prognosis_deviation", at=now, window_start=step.start,
            value=abs(departure), threshold=allowed, detail=detail, aggregator=aggregator,
            network_area=area, devices=devices))

    # --- observing

    def _replan(self, device_id: str, new: list[StateChange], start: datetime,
                candidates: set[tuple[str, str, int]]) -> None:
        first = new[0]
        track = self._tracks.get(device_id)
        previous: _Track | None = None
        if track is None:
            track = _Track(first.aggregator, first.network_area, first.plan_id, first.from_kw, [])
            self._tracks[device_id] = track
            self._level(first).value += first.from_kw
            self._area_level(first.network_area).value += first.from_kw
        elif track.plan_id != first.plan_id:
            previous = _Track(track.aggregator, track.network_area, track.plan_id, track.base_kw,
                              list(track.changes))
            kept = [(c, f) for c, f in track.changes if c.at < start]
            for c, flags in track.changes[len(kept):]:
                self._apply(c, flags, -1.0, candidates)
            track.changes = self._fold_past(track, kept)
            track.plan_id = first.plan_id
        for c in new:
            flags = self._flags(c, previous)
            self._apply(c, flags, 1.0, candidates)
            track.changes.append((c, flags))

    def _fold_past(self, track: _Track, changes: list[tuple[StateChange, int]]
                   ) -> list[tuple[StateChange, int]]:
        """Fold changes already pruned from every window into the track's base power, so a
        device's track holds only its plans' changes still in view."""
        if self._pruned is None:
            return changes
        horizon = _at_minute(self._pruned)
        gone = 0
        while gone < len(changes) and changes[gone][0].at + changes[gone][0].spread < horizon:
            track.base_kw = changes[gone][0].to_kw
            gone += 1
        return changes[gone:]

    def _flags(self, c: StateChange, previous: _Track | None) -> int:
        if self._in_window(c):
            return _EXPECTED
        at_boundary = self._boundary(c) is not None
        direct = c.from_kw * c.to_kw < 0 and not at_boundary
        reversed_plan = previous is not None and previous.kw_at(c.at) * c.to_kw < 0
        return ((_EXPECTED | _BOUNDARY if at_boundary else 0)
                | (_FLIP if direct or reversed_plan else 0))

    def _in_window(self, c: StateChange) -> bool:
        return any(w.start <= c.at < w.end
                   and (w.event_id == c.event_id or w.program == c.program)
                   and (not w.aggregators or c.aggregator in w.aggregators)
                   for w in self._windows)

    def _boundary(self, c: StateChange) -> int | None:
        """The minute of the tariff boundary exempting the change: it starts within the
        boundary's tolerance, with a random delay, and the boundary has not been found
        synchronous for its aggregator."""
        if c.spread < self.config.tariff_min_spread:
            return None
        t = c.at.timestamp()
        for lo, hi, at in self._boundaries.get(int(t // 60), ()):
            if lo <= t <= hi and (c.aggregator, at // 60) not in self._synchronous:
                return at // 60
        return None

    def _fast(self, c: StateChange) -> float:
        """The chance that the change's random delay (uniform over its spread) falls within
        `boundary_fast`."""
        spread = c.spread.total_seconds()
        return min(1.0, self.config.boundary_fast.total_seconds() / spread) if spread else 1.0

    def _unexempt(self, aggregator: str, boundary: int,
                  candidates: set[tuple[str, str, int]]) -> None:
        """The aggregator's changes at a synchronous boundary count as unexpected, already
        observed ones and later ones alike."""
        hits = [(track, i) for track in self._tracks.values() if track.aggregator == aggregator
                for i, (c, flags) in enumerate(track.changes)
                if flags & _BOUNDARY and self._boundary(c) == boundary]
        for track, i in hits:
            self._apply(*track.changes[i], -1.0, candidates)
        self._synchronous.add((aggregator, boundary))
        for track, i in hits:
            c, flags = track.changes[i]
            renewed = self._flags(c, None) | (flags & _FLIP)
            self._apply(c, renewed, 1.0, candidates)
            track.changes[i] = (c, renewed)

    def _level(self, c: StateChange) -> _Level:
        key = (c.aggregator, c.network_area)
        found = self._levels.get(key)
        if found is None:
            found = self._levels[key] = _Level()
            found.history = self._history
        return found

    def _area_level(self, area: str) -> _Level:
        found = self._area_levels.get(area)
        if found is None:
            found = self._area_levels[area] = _Level()
        return found

    def _apply(self, c: StateChange, flags: int, sign: float,
               candidates: set[tuple[str, str, int]]) -> None:
        """Add (sign 1) or retract (sign -1) one change in every window it counts in."""
        delta = c.to_kw - c.from_kw
        weights = _weights(c)
        level, area_level = self._level(c), self._area_level(c.network_area)
        for m, w in weights:
            level.add(m, sign * w * delta)
            area_level.add(m, sign * w * delta)
        agg = c.aggregator
        if flags & _FLIP:
            window = _minute(c.at) // self._flip_minutes
            flips = self._flips.setdefault(agg, {})
            flips[window] = flips.get(window, 0.0) + sign
            if sign > 0:
                candidates.add(("sign_flip", agg, window))
        if flags & _BOUNDARY:
            boundary = self._boundary(c)
            assert boundary is not None  # a boundary turns synchronous only by _unexempt
            seen = self._at_boundaries.setdefault((agg, boundary), [0.0, 0.0])
            seen[0] += sign
            seen[1] += sign * self._fast(c)
            if sign > 0:
                candidates.add(("boundary_spread", agg, boundary))
        if flags & _EXPECTED:
            return
        count = self._count.setdefault(agg, {})
        step = self._step.setdefault(agg, {})
        national = self._step.setdefault(_NATIONAL, {})
        for m, w in weights:
            count[m] = count.get(m, 0.0) + sign * w
            step[m] = step.get(m, 0.0) + sign * w * delta
            national[m] = national.get(m, 0.0) + sign * w * delta
            if sign > 0:
                candidates.add(("same_minute_share", agg, m))
                candidates.add(("aggregator_cap", agg, m))
                candidates.add(("mw_step", _NATIONAL, m))

    # --- alerting

    def _raise(self, candidates: set[tuple[str, str, int]], at: datetime) -> list[Alert]:
        """Alerts for the candidate windows over their threshold once the whole batch is in."""
        alerts = []
        # boundaries first: one found synchronous adds its changes to the minute windows
        for key in sorted(k for k in candidates if k[0] == "boundary_spread"):
            if key not in self._raised and (alert := self._judge(*key, at=at)) is not None:
                self._raised.add(key)
                alerts.append(alert)
                self._unexempt(key[1], key[2], candidates)
        for key in sorted(k for k in candidates if k[0] != "boundary_spread"):
            if key not in self._raised and (alert := self._judge(*key, at=at)) is not None:
                self._raised.add(key)
                alerts.append(alert)
        return alerts

    def _judge(self, monitor: str, subject: str, window: int, *, at: datetime) -> Alert | None:
        cfg = self.config
        fleet = self._fleet.get(subject, 0)
        if monitor == "same_minute_share":
            value = self._count[subject].get(window, 0.0)
            threshold = cfg.same_minute_share * fleet
            if fleet < cfg.min_devices or value <= threshold:
                return None
            start = _at_minute(window)
            detail = (f"{value:.1f} of {subject}'s {fleet} registered devices ({value / fleet:.0%})"
                      f" may change state in the minute from {start:%Y-%m-%d %H:%M}, above "
                      f"{cfg.same_minute_share:.0%} ({threshold:.1f}), outside tariff boundaries "
                      "and dispatched windows")
        elif monitor in ("mw_step", "aggregator_cap"):
            cap = (cfg.national_mw_step_per_min if monitor == "mw_step"
                   else cfg.aggregator_cap_mw.get(subject))
            value = abs(self._step[subject].get(window, 0.0)) / 1000
            if cap is None or value <= cap:
                return None
            threshold, start = cap, _at_minute(window)
            whose = "every aggregator's" if monitor == "mw_step" else f"{subject}'s"
            detail = (f"{whose} planned changes step the aggregate by {value:.2f} MW in the minute "
                      f"from {start:%Y-%m-%d %H:%M}, above the {cap:g} MW/min "
                      f"{'national budget' if monitor == 'mw_step' else 'cap'}, outside tariff "
                      "boundaries and dispatched windows")
        elif monitor == "boundary_spread":
            changed, fast = self._at_boundaries.get((subject, window), (0.0, 0.0))
            least = max(cfg.min_devices, cfg.boundary_min_share * fleet)
            threshold = cfg.boundary_fast_share
            if changed < least or fast / changed <= threshold:
                return None
            value, start = fast / changed, _at_minute(window)
            quick = cfg.boundary_fast.total_seconds()
            detail = (f"{changed:.0f} of {subject}'s {fleet} registered devices change state at the"
                      f" tariff boundary {start:%Y-%m-%d %H:%M}, {fast:.1f} of them "
                      f"({value:.0%}) within {quick:g} s of their start by their random delays, "
                      f"above {threshold:.0%} once at least {least:.0f} changed (routine random "
                      f"delays up to 600 s put {quick / 600:.0%} there): not price-driven, so not"
                      " exempt")
        else:
            value = self._flips[subject].get(window, 0.0)
            threshold = cfg.flip_share * fleet
            if fleet < cfg.min_devices or value <= threshold:
                return None
            start = _at_minute(window * self._flip_minutes)
            detail = (f"{value:g} of {subject}'s {fleet} registered devices ({value / fleet:.0%}) "
                      f"flip between charging and discharging in the {self._flip_minutes} min from"
                      f" {start:%Y-%m-%d %H:%M}, outside dispatched windows, above "
                      f"{cfg.flip_share:.0%} ({threshold:.1f})")
        aggregator = None if subject == _NATIONAL else subject
        return Alert(alert_id=f"{monitor}:{subject}:{start:%Y%m%dT%H%M}", monitor=monitor, at=at,
                     window_start=start, value=value, threshold=threshold, detail=detail,
                     aggregator=aggregator, devices=self._behind(monitor, aggregator, window))

    def _behind(self, monitor: str, aggregator: str | None, window: int) -> tuple[str, ...]:
        """The devices whose changes make up a minute (or flip window) alert: found only when
        an alert is raised, so no window holds device lists."""
        found = []
        for device_id, track in self._tracks.items():
            if aggregator is not None and track.aggregator != aggregator:
                continue
            for c, flags in track.changes:
                if monitor == "sign_flip":
                    hit = bool(flags & _FLIP) and _minute(c.at) // self._flip_minutes == window
                elif monitor == "boundary_spread":
                    hit = bool(flags & _BOUNDARY) and self._boundary(c) == window
                else:
                    hit = not flags & _EXPECTED and any(m == window for m, _ in _weights(c))
                if hit:
                    found.append(device_id)
                    break
        return tuple(sorted(found))

    def _episode(self, key: tuple[str, str, str], now: datetime, persist: timedelta,
                 alert: Alert) -> list[Alert]:
        """A breach seen now: the alert once it has lasted `persist`, once per episode (an
        episode ends when a check finds no breach)."""
        since, raised = self._episodes.setdefault(key, (now, False))
        if raised or now - since < persist:
            return []
        self._episodes[key] = (since, True)
        return [alert]

    # --- pruning

    def _prune_before(self, below: int) -> None:
        flip_below = below // self._flip_minutes
        flip_since = None if self._pruned is None else self._pruned // self._flip_minutes
        for buckets in (*self._count.values(), *self._step.values()):
            _prune(buckets, below, self._pruned)
        for buckets in self._flips.values():
            _prune(buckets, flip_below, flip_since)
        self._raised = {k for k in self._raised
                        if k[2] >= (flip_below if k[0] == "sign_flip" else below)}
        for key in [k for k in self._at_boundaries if k[1] < below]:
            del self._at_boundaries[key]
        self._synchronous = {k for k in self._synchronous if k[1] >= below}
        self._pruned = below

