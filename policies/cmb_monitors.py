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
  boundary is not (routine DSR must randomise, so an attacker cannot hide at a boundary).
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
- area_headroom (tick): the scheduled import of a network area's devices over its headroom;
- prognosis_deviation (tick): an aggregator's scheduled aggregate in an area departing from its
  latest prognosis by more than max(`prognosis_fraction` of it, `prognosis_floor_kw`): a slow
  ramp under every per-minute limit still adds up to this.
Minute monitors raise once per (monitor, subject, minute or flip window); tick monitors once per
episode (from when the breach starts until it ends), `window_start` being the episode's start.
The scheduled aggregates count the devices with observed plans, each from its power before its
first observed change.
"""

from __future__ import annotations

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


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitorConfig:
    same_minute_share: float = 0.2
    min_devices: int = 20
    national_mw_step_per_min: float = 132.0  # 10 % of 1,320 MW
    aggregator_cap_mw: Mapping[str, float] = field(default_factory=dict)  # net MW step per minute
    area_headroom_kw: Mapping[str, float] = field(default_factory=dict)  # scheduled import
    prognosis_fraction: float = 0.2
    prognosis_floor_kw: float = 100.0
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
    """A scheduled aggregate (kW): its value as of minute `through` plus deltas still to come."""

    __slots__ = ("future", "through", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.through: int | None = None
        self.future: dict[int, float] = {}

    def add(self, minute: int, delta: float) -> None:
        if self.through is not None and minute <= self.through:
            self.value += delta
        else:
            self.future[minute] = self.future.get(minute, 0.0) + delta

    def advance(self, minute: int) -> None:
        if self.through is not None and minute <= self.through:
            return
        due: Iterable[int] = (range(self.through + 1, minute + 1)
                              if self.through is not None and minute - self.through
                              <= len(self.future) else [m for m in self.future if m <= minute])
        for m in due:
            self.value += self.future.pop(m, 0.0)
        self.through = minute


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


class FleetMonitors:
    def __init__(self, config: MonitorConfig, registry: Mapping[str, DeviceRegistration],
                 tariffs: Sequence[Tariff] = (), windows: Sequence[DispatchWindow] = (),
                 prognoses: Sequence[Prognosis] = ()) -> None:
        self.config = config
        self._fleet = Counter(r.owner for r in registry.values())
        self._boundaries: dict[int, list[tuple[float, float]]] = {}
        self._windows: list[DispatchWindow] = []
        self._prognoses: dict[tuple[str, str], Prognosis] = {}
        self._tracks: dict[str, _Track] = {}
        self._count: dict[str, dict[int, float]] = {}  # aggregator -> minute -> changes
        self._step: dict[str, dict[int, float]] = {}  # aggregator or _NATIONAL -> minute -> kW
        self._flips: dict[str, dict[int, float]] = {}  # aggregator -> flip window -> flips
        self._levels: dict[tuple[str, str], _Level] = {}  # (aggregator, area)
        self._area_levels: dict[str, _Level] = {}
        self._raised: set[tuple[str, str, int]] = set()
        self._episodes: dict[tuple[str, str, str], datetime] = {}
        self._now: datetime | None = None
        self._pruned: int | None = None
        self._flip_minutes = max(1, int(config.flip_window / timedelta(minutes=1)))
        for t in tariffs:
            self.add_tariff(t)
        for w in windows:
            self.add_window(w)
        for p in prognoses:
            self.add_prognosis(p)

    def add_tariff(self, tariff: Tariff) -> None:
        tol = tariff.tolerance.total_seconds()
        for b in tariff.boundaries:
            lo, hi = b.timestamp() - tol, b.timestamp() + tol
            for m in range(int(lo // 60), int(hi // 60) + 1):
                self._boundaries.setdefault(m, []).append((lo, hi))

    def add_window(self, window: DispatchWindow) -> None:
        self._windows.append(window)

    def add_prognosis(self, prognosis: Prognosis) -> None:
        """The latest prognosis for its aggregator and area replaces the previous one."""
        self._prognoses[prognosis.aggregator, prognosis.network_area] = prognosis

    def observe(self, changes: Sequence[StateChange], now: datetime | None = None,
                starts: Mapping[str, datetime] | None = None) -> list[Alert]:
        """Take newly planned changes; alerts for minutes (or flip windows) they push over a
        threshold. `now` stamps the alerts (default: the last tick, else the first change).
        `starts` (plan id -> plan start): from when each plan replaces the device's previous
        one; without it, from the plan's first change (a plan opening with an unchanged power
        then leaves the previous plan's changes before its first change standing)."""
        candidates: set[tuple[str, str, int]] = set()
        by_device: dict[str, list[StateChange]] = {}
        for c in changes:
            by_device.setdefault(c.device_id, []).append(c)
        for device_id, new in by_device.items():
            new.sort(key=lambda c: c.at)
            start = starts.get(new[0].plan_id, new[0].at) if starts else new[0].at
            self._replan(device_id, new, min(start, new[0].at), candidates)
        at = now or self._now or (changes[0].at if changes else None)
        return [] if at is None else self._raise(candidates, at)

    def tick(self, now: datetime) -> list[Alert]:
        """Move simulated time to `now`: check the scheduled aggregates and prune old windows."""
        self._now = now
        minute = _minute(now)
        for series in (*self._levels.values(), *self._area_levels.values()):
            series.advance(minute)
        alerts: list[Alert] = []
        cfg = self.config
        for area, headroom in cfg.area_headroom_kw.items():
            level = self._area_levels.get(area)
            value = level.value if level is not None else 0.0
            alerts += self._episode(
                "area_headroom", None, area, now, value > headroom, value, headroom,
                f"scheduled import in network area {area} is {value:.1f} kW at {now:%H:%M}, "
                f"above its headroom of {headroom:g} kW")
        for (aggregator, area), prognosis in self._prognoses.items():
            expected = prognosis.at(now)
            if expected is None:
                continue
            level = self._levels.get((aggregator, area))
            value = level.value if level is not None else 0.0
            allowed = max(cfg.prognosis_fraction * abs(expected), cfg.prognosis_floor_kw)
            departure = value - expected
            alerts += self._episode(
                "prognosis_deviation", aggregator, area, now, abs(departure) > allowed,
                abs(departure), allowed,
                f"{aggregator}'s scheduled aggregate in network area {area} is {value:.1f} kW at "
                f"{now:%H:%M}, {departure:+.1f} kW from its prognosis of {expected:.1f} kW, beyond "
                f"{allowed:.1f} kW (the larger of {cfg.prognosis_fraction:.0%} and "
                f"{cfg.prognosis_floor_kw:g} kW)")
        self._prune_before(minute - int(cfg.keep / timedelta(minutes=1)))
        return alerts

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
        at_boundary = self._at_boundary(c)
        direct = c.from_kw * c.to_kw < 0 and not at_boundary
        reversed_plan = previous is not None and previous.kw_at(c.at) * c.to_kw < 0
        return (_EXPECTED if at_boundary else 0) | (_FLIP if direct or reversed_plan else 0)

    def _in_window(self, c: StateChange) -> bool:
        return any(w.start <= c.at < w.end
                   and (w.event_id == c.event_id or w.program == c.program)
                   and (not w.aggregators or c.aggregator in w.aggregators)
                   for w in self._windows)

    def _at_boundary(self, c: StateChange) -> bool:
        if c.spread < self.config.tariff_min_spread:
            return False
        t = c.at.timestamp()
        return any(lo <= t <= hi for lo, hi in self._boundaries.get(int(t // 60), ()))

    def _level(self, c: StateChange) -> _Level:
        key = (c.aggregator, c.network_area)
        found = self._levels.get(key)
        if found is None:
            found = self._levels[key] = _Level()
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
        for key in sorted(candidates):
            if key in self._raised:
                continue
            alert = self._judge(*key, at=at)
            if alert is not None:
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
                else:
                    hit = not flags & _EXPECTED and any(m == window for m, _ in _weights(c))
                if hit:
                    found.append(device_id)
                    break
        return tuple(sorted(found))

    def _episode(self, monitor: str, aggregator: str | None, area: str, now: datetime,
                 breach: bool, value: float, threshold: float, detail: str) -> list[Alert]:
        key = (monitor, aggregator or "", area)
        if not breach:
            self._episodes.pop(key, None)
            return []
        if key in self._episodes:
            return []
        self._episodes[key] = now
        devices = tuple(sorted(
            d for d, t in self._tracks.items()
            if t.network_area == area and (aggregator is None or t.aggregator == aggregator)
            and (t.kw_at(now) > 0 if monitor == "area_headroom" else t.kw_at(now) != t.base_kw)))
        return [Alert(alert_id=f"{monitor}:{aggregator or area}:{area}:{now:%Y%m%dT%H%M}",
                      monitor=monitor, at=now, window_start=now, value=value,
                      threshold=threshold, detail=detail, aggregator=aggregator,
                      network_area=area, devices=devices)]

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
        self._pruned = below

