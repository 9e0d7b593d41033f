"""The Central Monitoring Body's service: plan verdicts, fleet monitors, detection -> response.

`Cmb` keeps what the inline rules need in memory (registry, highest accepted sequence per
device, active overrides), loaded from the store once and kept in step with every write, so a
verdict costs no database read. A batch is judged in order (a later plan for the same device
must beat an earlier accepted one) and written in one transaction; the memory is updated only
after that transaction committed.

Detection -> response: each alert proposes an override of its aggregator's devices (an area
alert: of the area's). When the aggregator's profile lists the alert's monitor in
`auto_response` (area alerts: `CmbConfig.area_auto_response`), the override is ACTIVE at once
(the inline rule `no_step_against_override` applies to the next plan) and goes out through the
`OverrideExecutor` in the background; otherwise it waits as PROPOSED for the operator.

Dispatch policy: a response-DSR plan inside a dispatched window of a program the aggregator's
profile does not list in `wait_programs` is released IMMEDIATE: the aggregator dispatches it and
submits it at once, the CMB checks it alongside. Every other plan is AFTER_VERDICT: dispatched
only once accepted. The CMB learns dispatched windows from the VTN's own events.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import ChainMap
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from pydantic_core import to_jsonable_python

from bridge.models import MAX_VALIDITY
from policies.cmb_monitors import FleetMonitors, MonitorConfig
from policies.cmb_rules import PlanContext, RuleLimits, state_changes, step_kw, verdict
from ven.records import Purpose
from vtn.store import VtnStore

from .override import resolve
from .records import (
    Alert,
    Decision,
    DeviceRegistration,
    DispatchWindow,
    Override,
    OverrideStatus,
    OverrideTarget,
    PlanSubmission,
    Prognosis,
    StateChange,
    Tariff,
)
from .signing import PublicKey, load_public_key
from .store import AggregatorProfile, AuditEntry, CmbStore, Judged, OverrideEntry, Release

log = logging.getLogger("adrgate.cmb")

CMB_ACTOR = "cmb"


class Executor(Protocol):
    """The override paths (vtn.cmb.override.OverrideExecutor): each result is one path's outcome."""

    async def apply(self, override: Override,
                    devices: Sequence[DeviceRegistration]) -> Sequence[Any]: ...

    async def lift(self, override: Override,
                   devices: Sequence[DeviceRegistration]) -> Sequence[Any]: ...


class EventSource(Protocol):
    """Where the CMB learns the grid services dispatched and the programs enrolled."""

    def windows(self) -> Sequence[DispatchWindow]: ...

    def response_programs(self) -> frozenset[str]: ...


class VtnEvents:
    """The VTN's own events as dispatched windows: every live event of an enrolled program."""

    def __init__(self, store: VtnStore) -> None:
        self.store = store

    def windows(self) -> list[DispatchWindow]:
        out = []
        for rec in self.store.list_events():
            if rec.cancelled:
                continue
            period = rec.event.active_period
            # an open-ended event (duration 0) runs until cancelled: no plan outlives 48 h
            end = period.end or period.dtstart + MAX_VALIDITY
            out.append(DispatchWindow(event_id=rec.event.event_id,
                                      program=rec.event.market_context,
                                      start=period.dtstart, end=end))
        return out

    def response_programs(self) -> frozenset[str]:
        return frozenset(mc for mc, _, _ in self.store.list_programs())


class NoEvents:
    def windows(self) -> list[DispatchWindow]:
        return []

    def response_programs(self) -> frozenset[str]:
        return frozenset()


class NotFound(KeyError):
    """No such override or aggregator (HTTP 404)."""


class Conflict(ValueError):
    """The override is not in a state that allows it (HTTP 409)."""


class StoreFailed(RuntimeError):
    """The batch could not be written; nothing of it was (HTTP 503: submit again)."""


@dataclass(frozen=True, kw_only=True)
class CmbConfig:
    limits: RuleLimits = field(default_factory=RuleLimits)
    monitors: MonitorConfig = field(default_factory=MonitorConfig)
    # monitors whose alerts about no registered aggregator (area, national) override at once
    area_auto_response: tuple[str, ...] = ()
    area_override_level: int = 0
    tick_every: timedelta = timedelta(seconds=10)  # the time-based monitors' period
    window_refresh: timedelta = timedelta(seconds=1)  # how stale the VTN's events may be


def _new_id() -> str:
    return uuid.uuid4().hex


class Cmb:
    """The CMB's decisions; synchronous store writes, awaited override paths. `submit` does not
    await before its write, so batches on one event loop never interleave."""

    def __init__(self, store: CmbStore, *, events: EventSource | None = None,
                 executor: Executor | None = None, config: CmbConfig | None = None,
                 new_id: Callable[[], str] = _new_id) -> None:
        self.store = store
        self.events: EventSource = events or NoEvents()
        self.executor = executor
        self.config = config or CmbConfig()
        self.new_id = new_id
        self._tasks: set[asyncio.Task[None]] = set()
        self._windows_at: datetime | None = None
        self._known_windows: dict[str, DispatchWindow] = {}
        self._programs: frozenset[str] = frozenset()
        self._last_kw: dict[str, float] = {}  # each device's planned power after its last plan
        self.reload()

    def reload(self) -> None:
        """Read the store's state into memory (at start, or after another process wrote it)."""
        self._profiles = self.store.aggregators()
        self._keys = {a: load_public_key(p.public_key) for a, p in self._profiles.items()}
        self._registry = self.store.registry()
        self._sequences = self.store.sequences()
        self._active = {e.override.override_id: e.override
                        for e in self.store.overrides(OverrideStatus.ACTIVE)}
        self._known_windows = {}
        self._windows_at = None
        self._rebuild_monitors()

    def _rebuild_monitors(self) -> None:
        self.monitors = FleetMonitors(self.config.monitors, self._registry,
                                      tariffs=self.store.tariffs(),
                                      windows=tuple(self._known_windows.values()),
                                      prognoses=self.store.prognoses())

    # --- aggregators and registry -------------------------------------------------------

    def profile(self, aggregator: str) -> AggregatorProfile | None:
        return self._profiles.get(aggregator)

    def key(self, aggregator: str) -> PublicKey | None:
        return self._keys.get(aggregator)

    def register_aggregator(self, profile: AggregatorProfile, actor: str, now: datetime) -> None:
        """Raises: ValueError (the key is unusable, the level outside 0..100)."""
        key = load_public_key(profile.public_key)
        if not 0 <= profile.override_level <= 100:
            raise ValueError(f"override_level {profile.override_level} outside 0..100")
        self.store.save_aggregator(profile, AuditEntry(
            at=now, actor=actor, action="aggregator_registered", subject=profile.aggregator,
            detail={"auto_response": list(profile.auto_response),
                    "wait_programs": list(profile.wait_programs),
                    "fingerprint": profile.fingerprint}))
        self._profiles[profile.aggregator] = profile
        self._keys[profile.aggregator] = key

    def put_devices(self, devices: Sequence[DeviceRegistration], actor: str,
                    now: datetime) -> None:
        self.store.put_devices(devices, AuditEntry(
            at=now, actor=actor, action="registry_updated", subject=f"{len(devices)} devices",
            detail={"devices": [d.device_id for d in devices[:100]]}))
        self._registry.update((d.device_id, d) for d in devices)
        self.monitors.set_registry(self._registry)

    @property
    def registry(self) -> Mapping[str, DeviceRegistration]:
        return self._registry

    # --- expectations -------------------------------------------------------------------

    def add_prognosis(self, p: Prognosis, actor: str, now: datetime) -> None:
        self.store.save_prognosis(p, AuditEntry(
            at=now, actor=actor, action="prognosis", subject=f"{p.aggregator}/{p.network_area}",
            detail={"start": p.start.isoformat(), "steps": len(p.kw)}))
        self.monitors.add_prognosis(p)

    def add_tariff(self, t: Tariff, actor: str, now: datetime) -> None:
        self.store.save_tariff(t, AuditEntry(at=now, actor=actor, action="tariff",
                                             subject=t.tariff_id,
                                             detail={"boundaries": len(t.boundaries)}))
        self.monitors.add_tariff(t)

    def _sync_windows(self, now: datetime) -> None:
        if self._windows_at is not None and \
                timedelta(0) <= now - self._windows_at < self.config.window_refresh:
            return
        self._windows_at = now
        self._programs = self.events.response_programs()
        for w in self.events.windows():
            if self._known_windows.get(w.event_id) != w:
                self._known_windows[w.event_id] = w
                self.monitors.add_window(w)

    def release(self, sub: PlanSubmission) -> Release:
        """IMMEDIATE for a response-DSR plan inside a dispatched window of a program the
        aggregator's policy does not hold back; AFTER_VERDICT otherwise."""
        profile = self._profiles.get(sub.aggregator)
        plan = sub.plan
        if plan.purpose is not Purpose.RESPONSE or profile is None:
            return Release.AFTER_VERDICT
        for w in self._known_windows.values():
            if (plan.event_id in (None, w.event_id) and sub.program in (None, w.program)
                    and w.program not in profile.wait_programs
                    and (not w.aggregators or sub.aggregator in w.aggregators)
                    and w.start <= plan.start < w.end):
                return Release.IMMEDIATE
        return Release.AFTER_VERDICT

    # --- submissions --------------------------------------------------------------------

    async def submit(self, batch: Sequence[PlanSubmission], now: datetime) -> list[Judged]:
        """Judge a batch in order and record it in one transaction.

        Raises:
            StoreFailed: nothing was recorded; the memory is as before.
        """
        self._sync_windows(now)
        pending: dict[str, int] = {}
        last_kw: dict[str, float] = {}
        ctx = PlanContext(registry=self._registry,
                          last_sequence=ChainMap(pending, self._sequences),
                          overrides=tuple(self._active.values()),
                          response_programs=self._programs, limits=self.config.limits,
                          last_kw=ChainMap(last_kw, self._last_kw))
        judged: list[Judged] = []
        changes: list[StateChange] = []
        starts: dict[str, datetime] = {}  # a new plan replaces the device's old one from here
        audit: list[AuditEntry] = []
        for sub in batch:
            v = verdict(sub, ctx, now)
            release = self.release(sub)
            judged.append(Judged(verdict=v, release=release))
            accepted = v.decision is Decision.ACCEPTED
            audit.append(AuditEntry(
                at=now, actor=sub.aggregator,
                action="plan_accepted" if accepted else "plan_rejected", subject=v.plan_id,
                detail={"device_id": v.device_id, "sequence": v.sequence,
                        "release": str(release),
                        "findings": [{"rule": f.rule, "value": f.value,
                                      "threshold": f.threshold} for f in v.findings]}))
            if accepted:
                reg = self._registry[v.device_id]
                changes += state_changes(sub, reg, ctx.last_kw.get(v.device_id, 0.0))
                starts[sub.plan.plan_id] = sub.plan.start
                pending[v.device_id] = v.sequence
                last_kw[v.device_id] = step_kw(sub.plan.steps[-1], reg.rated_import_kw)
        alerts = self.monitors.observe(changes, now, starts) if changes else []
        overrides = [self._respond(a, now) for a in alerts]
        try:
            self.store.record_batch(judged, pending, alerts, overrides,
                                    audit + self._alert_audit(alerts, overrides, now))
        except Exception as exc:
            log.exception("could not record a batch of %d plans", len(batch))
            raise StoreFailed(str(exc)) from exc
        self._sequences.update(pending)
        self._last_kw.update(last_kw)
        self._activate(overrides)
        return judged

    async def tick(self, now: datetime) -> list[Alert]:
        """Run the time-based monitors (prognosis deviation, area headroom), and mark overrides
        whose window has ended as lifted (the devices let them go at their end already)."""
        for o in [o for o in self._active.values() if o.end is not None and o.end <= now]:
            del self._active[o.override_id]
            ended = replace(o, status=OverrideStatus.LIFTED, lifted=o.end)
            self.store.save_override(ended, self._override_audit(ended, CMB_ACTOR, now))
        self._sync_windows(now)
        alerts = self.monitors.tick(now)
        if alerts:
            overrides = [self._respond(a, now) for a in alerts]
            self.store.record_alerts(alerts, overrides, self._alert_audit(alerts, overrides, now))
            self._activate(overrides)
        return alerts

    async def run_ticks(self, clock: Callable[[], datetime]) -> None:
        """Tick every `config.tick_every` until cancelled; a failed tick is logged, not fatal."""
        while True:
            await asyncio.sleep(self.config.tick_every.total_seconds())
            try:
                await self.tick(clock())
            except Exception:
                log.exception("CMB monitor tick failed")

    def _respond(self, alert: Alert, now: datetime) -> Override:
        """The override an alert asks for: ACTIVE (devices resolved) where the response to its
        monitor is automatic, else PROPOSED. Its target: the alert's aggregator, else its
        network area, else (a national alert) the devices behind it."""
        profile = self._profiles.get(alert.aggregator) if alert.aggregator else None
        if profile is not None:
            target = OverrideTarget(aggregator=alert.aggregator)
            auto, level = alert.monitor in profile.auto_response, profile.override_level
        else:
            target = OverrideTarget(aggregator=alert.aggregator, network_area=alert.network_area,
                                    devices=() if alert.network_area else alert.devices)
            auto = alert.monitor in self.config.area_auto_response
            level = self.config.area_override_level
        auto = auto and target != OverrideTarget()  # never cap every device on one alert
        o = Override(override_id=self.new_id(), target=target, level=level, start=now,
                     reason=f"{alert.monitor}: {alert.detail}",
                     created_by=f"auto:{alert.alert_id}", created=now,
                     status=OverrideStatus.ACTIVE if auto else OverrideStatus.PROPOSED)
        return self._resolved(o, first=alert.devices) if auto else o

    def _alert_audit(self, alerts: Sequence[Alert], overrides: Sequence[Override],
                     now: datetime) -> list[AuditEntry]:
        out = []
        for a, o in zip(alerts, overrides):
            out.append(AuditEntry(at=now, actor=CMB_ACTOR, action="alert", subject=a.alert_id,
                                  detail={"monitor": a.monitor, "aggregator": a.aggregator,
                                          "network_area": a.network_area, "value": a.value,
                                          "threshold": a.threshold, "detail": a.detail}))
            out.append(self._override_audit(o, CMB_ACTOR, now))
        return out

    @staticmethod
    def _override_audit(o: Override, actor: str, now: datetime,
                        results: Sequence[Any] = ()) -> AuditEntry:
        action = {OverrideStatus.PROPOSED: "override_proposed",
                  OverrideStatus.ACTIVE: "override_applied",
                  OverrideStatus.LIFTED: "override_lifted"}[o.status]
        return AuditEntry(at=now, actor=actor, action=action, subject=o.override_id,
                          detail={"target": to_jsonable_python(o.target), "level": o.level,
                                  "energized": o.energized, "reason": o.reason,
                                  "devices": len(o.devices), "results": list(results)})

    # --- overrides ----------------------------------------------------------------------

    def _resolved(self, o: Override, first: Sequence[str] = ()) -> Override:
        """The override with its devices, those in `first` (the ones an alert names) leading:
        the paths reach devices in this order, so the suspects are capped first."""
        targeted = [d.device_id for d in resolve(o.target, self._registry.values())]
        suspects = set(first).intersection(targeted)
        ordered = [d for d in first if d in suspects] + [d for d in targeted if d not in suspects]
        return replace(o, devices=tuple(dict.fromkeys(ordered)))

    def _devices(self, o: Override) -> list[DeviceRegistration]:
        return [self._registry[d] for d in o.devices if d in self._registry]

    def _activate(self, overrides: Iterable[Override]) -> None:
        """Put committed ACTIVE overrides in force: inline at once, on the paths in the
        background (their results are recorded when they come)."""
        for o in overrides:
            if o.status is OverrideStatus.ACTIVE:
                self._active[o.override_id] = o
                self._spawn(self._run_paths(o))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """Wait for the override paths started in the background (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run_paths(self, o: Override) -> None:
        results = await self._paths(o, lifting=False)
        self.store.add_override_results(o.override_id, results, AuditEntry(
            at=o.start, actor=CMB_ACTOR, action="override_paths", subject=o.override_id,
            detail={"results": results}))

    async def _paths(self, o: Override, *, lifting: bool) -> list[Any]:
        if self.executor is None:
            return []
        try:
            run = self.executor.lift if lifting else self.executor.apply
            return [to_jsonable_python(r) for r in await run(o, self._devices(o))]
        except Exception as exc:  # a path failing is an outcome to record, not a crash
            log.exception("override %s: the executor failed", o.override_id)
            return [{"path": "executor", "ok": False, "detail": repr(exc)}]

    async def create_override(self, *, target: OverrideTarget, level: int, actor: str,
                              now: datetime, energized: bool = True, end: datetime | None = None,
                              reason: str = "") -> OverrideEntry:
        """An operator's override: in force at once, applied through every path.

        Raises: ValueError (level outside 0..100, an end not after now).
        """
        if not 0 <= level <= 100:
            raise ValueError(f"level {level} outside 0..100")
        if end is not None and end <= now:
            raise ValueError("the override would already be over")
        o = self._resolved(Override(override_id=self.new_id(), target=target, level=level,
                                    start=now, end=end, energized=energized, reason=reason,
                                    created_by=actor, created=now))
        return await self._put_in_force(o, actor, now)

    async def _put_in_force(self, o: Override, actor: str, now: datetime) -> OverrideEntry:
        self._active[o.override_id] = o  # plans are checked against it from now on
        results = await self._paths(o, lifting=False)
        self.store.save_override(o, self._override_audit(o, actor, now, results), results)
        return self._entry(o.override_id)

    async def approve(self, override_id: str, actor: str, now: datetime) -> OverrideEntry:
        """Apply a PROPOSED override. Raises: NotFound, Conflict."""
        o = self._entry(override_id).override
        if o.status is not OverrideStatus.PROPOSED:
            raise Conflict(f"override {override_id} is {o.status}, not proposed")
        return await self._put_in_force(
            self._resolved(replace(o, status=OverrideStatus.ACTIVE, start=now)), actor, now)

    async def lift(self, override_id: str, actor: str, now: datetime) -> OverrideEntry:
        """Lift an ACTIVE override through every path (the plans in force come back), or
        dismiss a PROPOSED one. Raises: NotFound, Conflict."""
        o = self._entry(override_id).override
        if o.status is OverrideStatus.LIFTED:
            raise Conflict(f"override {override_id} is already lifted")
        lifted = replace(o, status=OverrideStatus.LIFTED, lifted=now)
        self._active.pop(override_id, None)
        results = await self._paths(lifted, lifting=True) \
            if o.status is OverrideStatus.ACTIVE else []
        self.store.save_override(lifted, self._override_audit(lifted, actor, now, results),
                                 results)
        return self._entry(override_id)

    def _entry(self, override_id: str) -> OverrideEntry:
        entry = self.store.override(override_id)
        if entry is None:
            raise NotFound(f"no override {override_id}")
        return entry

    def overrides(self, status: OverrideStatus | None = None) -> list[OverrideEntry]:
        return self.store.overrides(status)

    @property
    def active_overrides(self) -> Sequence[Override]:
        return tuple(self._active.values())
