"""The bridge: grid signals in, per-device plans out to the channels, outcomes back.

For each VEN of the fleet, every change of its signals (`on_signals`, the fleet's hook) is
compared with what the bridge has planned: a new signal (or a new modification) is planned with
`policies.plans`, each plan validated against its device (a plan the device cannot execute is
stored as refused with the reasons, never sent), stored, then handed to its channel: the whole
plan at once, or step by step at the steps' start times for devices that take no time-limited
plan. A signal that is gone (the event cancelled or ended) releases its devices: each gets a plan
back to its day job. Planned signals are stored, so a restart neither plans them again nor
forgets to release them; a LOAD_DISPATCH window's allocation is not stored, so after a restart
it is no longer re-dispatched. A cap combined with a device's plan from another event, and a
device handed back to that plan when the cap is withdrawn, read the plans sent from the store,
so they too hold across a restart.

With a CMB (`reviewer`), every plan is also submitted to it: routine plans are dispatched only
once accepted (a rejection is stored with the CMB's findings; a CMB that cannot be reached holds
them and they are submitted again), response plans answering a dispatched event go at once and
are judged alongside.

During a LOAD_DISPATCH window the bridge re-dispatches every `redispatch_every` and at once when a
channel reports a device unavailable: devices that failed, went offline or (once the interval is
in force) deviate lose their share, which goes to others (`policies.dispatch.redispatch`). A
storage site on a price plan is planned again when what its plan does not control (load less
PV) leaves the forecast the plan was made on by more than `replan_margin_kw`, at most once per
price step.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol

from policies.dispatch import Allocation, redispatch
from policies.ladder import plan_for_signal
from policies.plans import (
    OPEN_END, PRICE_STEP, DeviceView, Forecast, Planned, cap_over, dispatch_plan,
    dispatch_step, interval_target, plans_for_signal, resumed, under_cap, within_caps)
from policies.price_plan import needs_replan
from ven.fleet import FleetSpec
from ven.records import GridSignal, SignalInterval

from vtn.cmb.records import Decision, Verdict
from vtn.cmb.signing import Item

from .channel import Dispatch
from .cmb_client import CmbError
from .inventory import devices_of
from .models import Device, Mode, Plan, validate
from .store import BridgeStore, PlanRecord, PlanStatus, PowerSample
from .streams import DispatchResult, Outcome

log = logging.getLogger(__name__)

SignalKey = tuple[str, int, str]  # event id, modification number, signal id
Views = Callable[[Sequence[Device], datetime], Mapping[str, DeviceView]]
CAP_SIGNALS = ("SIMPLE", "LOAD_CONTROL")  # the ladder's signals: import caps


class Reviewer(Protocol):
    """The CMB's judgement of plans (bridge/cmb_client.py's CmbReviewer over the wire)."""

    async def immediate(self, plan: Plan, program: str | None) -> bool: ...

    async def review(self, aggregator: str, items: Sequence[Item]) -> list[Verdict]: ...


class Outlet(Protocol):
    """Where dispatches go: the channel streams, and the step scheduler for devices that take
    one command per step."""

    async def enqueue(self, dispatch: Dispatch) -> None: ...

    def schedule(self, plan: Plan, device: Device) -> None: ...


@dataclass(slots=True, kw_only=True)
class _Window:
    """A LOAD_DISPATCH signal being delivered: what re-dispatch needs."""

    ven: str
    signal: GridSignal
    devices: tuple[Device, ...]
    fleet_kw: float  # the devices' import before the dispatch: setpoints are measured from it
    allocations: list[tuple[SignalInterval, Allocation]]


@dataclass(slots=True)
class _Tracked:
    """An event's devices, for its power samples."""

    baseline: dict[str, float] = field(default_factory=dict)  # import when first planned
    plans: dict[str, Plan] = field(default_factory=dict)  # the latest one sent, per device


@dataclass(slots=True, kw_only=True)
class _Priced:
    """A storage site on a price plan: the forecast it was planned on, to spot deviations."""

    ven: str
    key: SignalKey
    start: datetime
    forecast_kw: list[float]  # the site's import no plan moves (load - PV), per PRICE_STEP
    replanned: datetime | None = None  # at most one re-plan per price step: no thrashing


@dataclass(slots=True)
class _VenPlans:
    signals: dict[SignalKey, GridSignal] = field(default_factory=dict)
    devices: dict[SignalKey, tuple[str, ...]] = field(default_factory=dict)  # with a plan


def signal_key(signal: GridSignal) -> SignalKey:
    return signal.event_id, signal.modification_number, signal.signal_id


def requested_change(plan: Plan, device: Device, baseline_kw: float, at: datetime, *,
                     uncontrolled_kw: float = 0.0) -> float:
    """The change in import from `baseline_kw` that the plan's step in force at `at` asks. A
    CHARGE or DISCHARGE step sets a battery's power: the meter also shows `uncontrolled_kw`,
    the import behind it that no plan moves (a site's load less PV)."""
    step = next((s for s in plan.steps if s.start <= at < s.end), None)
    if step is None or (step.mode is Mode.LIMIT and step.level is None):
        return 0.0
    match step.mode:
        case Mode.LIMIT:
            return min(baseline_kw, (step.level or 0) / 100 * device.rated_import_kw) - baseline_kw
        case Mode.CHARGE:
            return uncontrolled_kw + (step.power_kw or 0.0) - baseline_kw
        case Mode.DISCHARGE:
            return uncontrolled_kw - (step.power_kw or 0.0) - baseline_kw
    return 0.0


class Bridge:
    def __init__(self, fleet: FleetSpec, store: BridgeStore, outlet: Outlet, views: Views,
                 forecast: Forecast, *, clock: Callable[[], datetime], seed: int | None = None,
                 redispatch_every: timedelta = timedelta(minutes=5),
                 sample_every: timedelta = timedelta(minutes=1),
                 deviation_margin: float = 0.2, replan_margin_kw: float = 0.5,
                 reviewer: Reviewer | None = None,
                 review_retry: timedelta = timedelta(seconds=10)) -> None:
        self.store = store
        self.outlet = outlet
        self.views = views
        self.forecast = forecast
        self.clock = clock
        self.redispatch_every = redispatch_every
        self.sample_every = sample_every
        self.deviation_margin = deviation_margin
        self.replan_margin_kw = replan_margin_kw
        self.reviewer = reviewer
        self.review_retry = review_retry
        self._held: dict[str, tuple[PlanRecord, str | None]] = {}  # plan id -> record, program
        self._reviews: set[asyncio.Task[None]] = set()
        self.devices = {ven.name: devices_of(ven) for ven in fleet.vens}
        self._by_id = {d.device_id: d for ds in self.devices.values() for d in ds}
        self._rng = random.Random(seed)
        self._sequences = store.last_sequences()
        self._vens = {name: _VenPlans() for name in self.devices}
        for ven, signal, device_ids in store.signals():  # planned before a restart
            if ven in self._vens:
                self._vens[ven].signals[signal_key(signal)] = signal
                self._vens[ven].devices[signal_key(signal)] = device_ids
        self._windows: dict[SignalKey, _Window] = {}
        self._events: dict[str, _Tracked] = {}
        self._priced: dict[str, _Priced] = {}
        self.unavailable: set[str] = set()
        self._last_sample = clock()
        self._inbox: asyncio.Queue[tuple[str, tuple[GridSignal, ...]]] = asyncio.Queue()

    # --- inputs ---------------------------------------------------------------------------

    def on_signals(self, ven: str, signals: tuple[GridSignal, ...]) -> None:
        """The fleet's hook: called from the event loop whenever a VEN's signals change."""
        self._inbox.put_nowait((ven, signals))

    async def on_results(self, results: Sequence[DispatchResult]) -> None:
        """Channels' outcomes: recorded; an unavailable device's share goes elsewhere now, and
        a device that acknowledged is available again."""
        self.store.record_outcomes(results)
        lost = set()
        for r in results:
            if r.outcome is Outcome.UNAVAILABLE:
                lost.add(r.device_id)
            elif r.outcome is Outcome.DELIVERED:
                self.unavailable.discard(r.device_id)
        self.unavailable |= lost
        for key, window in list(self._windows.items()):
            if any(d.device_id in lost for d in window.devices):
                await self._redispatch(key, window)

    async def run(self) -> None:
        """Plan signal changes as they come, and re-dispatch open windows on the clock."""
        ticker = asyncio.create_task(self._tick())
        try:
            while True:
                ven, signals = await self._inbox.get()
                await self.update(ven, signals)
        finally:
            ticker.cancel()

    async def _tick(self) -> None:
        """Sample every `sample_every` of the clock, re-dispatch every `redispatch_every`."""
        last_redispatch = last_retry = self.clock()
        while True:
            await asyncio.sleep(0.1)
            now = self.clock()
            if self._held and now - last_retry >= self.review_retry:
                last_retry = now
                await self.retry_held(now)
            if now - last_redispatch >= self.redispatch_every:
                last_redispatch = now
                for key, window in list(self._windows.items()):
                    await self._redispatch(key, window)
            if now - self._last_sample >= self.sample_every:
                now = self.clock()  # the awaits above took time: their plans may start later
                self.sample(now)
                await self.replan_deviations(now)

    def sample(self, now: datetime) -> list[PowerSample]:
        """Record each tracked event's requested and delivered power; stop tracking an event
        once its plans have ended."""
        self._last_sample = now
        samples = []
        for event_id, tracked in list(self._events.items()):
            devices = [self._by_id[d] for d in tracked.plans]
            views = self._views(devices, now)
            samples.append(PowerSample(
                event_id=event_id, at=now, devices=len(devices),
                online=sum(v.state.available for v in views.values()),
                requested_kw=sum(requested_change(
                    tracked.plans[d.device_id], d, tracked.baseline[d.device_id], now,
                    uncontrolled_kw=views[d.device_id].uncontrolled_kw) for d in devices),
                delivered_kw=sum(views[d.device_id].state.current_kw
                                 - tracked.baseline[d.device_id] for d in devices)))
            if all(p.end <= now for p in tracked.plans.values()):
                del self._events[event_id]
        self.store.record_power(samples)
        return samples

    # --- planning -------------------------------------------------------------------------

    async def update(self, ven: str, signals: Sequence[GridSignal]) -> list[PlanRecord]:
        """Plan what is new in `signals` for `ven` and release what is gone; the records made."""
        state = self._vens[ven]
        now = self.clock()
        current = {signal_key(s): s for s in signals}
        records: list[PlanRecord] = []
        for key in [k for k in state.signals if k not in current]:
            replaced = any(k[0] == key[0] for k in current)  # a modification replans them
            records += await self._release(ven, key, now, replaced=replaced)
        for key, signal in current.items():
            if key not in state.signals:
                records += await self._plan(ven, signal, now)
        return records

    def next_sequence(self, device_id: str) -> int:
        """The device's next plan sequence number, taken: a plan made outside the signals (see
        `send`) must take its number here too, or the bridge's next plan would repeat it."""
        self._sequences[device_id] = self._sequences.get(device_id, 0) + 1
        return self._sequences[device_id]

    async def send(self, plans: Sequence[Plan], program: str | None = None) -> list[PlanRecord]:
        """Plans no signal asked for (an operator's own, numbered by `next_sequence`), on the
        bridge's path: validated, reviewed by the CMB, stored, handed to their channels."""
        return await self._send([Planned(plan=p) for p in plans], self.clock(), program)

    def _views(self, devices: Sequence[Device], now: datetime) -> dict[str, DeviceView]:
        views = dict(self.views(devices, now))
        for device_id in self.unavailable.intersection(views):
            view = views[device_id]
            views[device_id] = replace(view, state=replace(view.state, available=False))
        return views

    async def _plan(self, ven: str, signal: GridSignal, now: datetime) -> list[PlanRecord]:
        devices = [d for d in self.devices[ven] if d.resource_id in signal.resources]
        views = self._views(devices, now)
        # Sequence numbers are only taken by devices that get a plan.
        peek = {d.device_id: self._sequences.get(d.device_id, 0) + 1 for d in devices}
        caps = {d.device_id: self._caps(ven, d, signal.event_id) for d in devices} \
            if signal.signal_name.upper() == "LOAD_DISPATCH" else None  # only shares use them
        result = plans_for_signal(signal, views, sequences=peek, issuer=ven, now=now,
                                  rng=self._rng, forecast=self.forecast, caps=caps)
        for planned in result.plans:
            self._sequences[planned.plan.device_id] = planned.plan.sequence
        for device_id, why in result.skipped:
            log.info("no plan for %s on event %s: %s", device_id, signal.event_id, why)
        key = signal_key(signal)
        state = self._vens[ven]
        state.signals[key] = signal
        state.devices[key] = tuple(p.plan.device_id for p in result.plans)
        self.store.save_signal(ven, signal, state.devices[key])
        if result.allocations:
            self._windows[key] = _Window(
                ven=ven, signal=signal, devices=tuple(devices),
                fleet_kw=sum(v.state.current_kw for v in views.values()),
                allocations=list(result.allocations))
        self._watch_forecasts(ven, key, result.plans)
        return await self._send(self._capping(ven, signal, result.plans, views), now,
                                signal.program)

    def _capping(self, ven: str, signal: GridSignal, planned: Sequence[Planned],
                 views: Mapping[str, DeviceView]) -> list[Planned]:
        """Plans that keep caps capping: a device runs only the newest plan it was sent, so a
        cap's plan carries the lower of it and what the device already follows from other
        events (`cap_over`), and a price plan or a dispatch made while a cap is in force keeps
        under the cap (`under_cap`). A dispatch sizes a site's battery at its meter: `views`
        give the import behind it now."""
        name = signal.signal_name.upper()
        if name in CAP_SIGNALS:
            out = []
            for p in planned:
                device_id = p.plan.device_id
                beneath = self._beneath(ven, device_id, signal.event_id, p.plan.start,
                                        p.plan.end)
                if beneath is not None:
                    dispatched = self._dispatches(ven, beneath.event_id)
                    p = replace(p, plan=cap_over(
                        p.plan, beneath, self._by_id[device_id],
                        uncontrolled_kw=views[device_id].uncontrolled_kw if dispatched else None))
                out.append(p)
            return out
        if name not in ("ELECTRICITY_PRICE", "LOAD_DISPATCH"):
            return list(planned)
        out = []
        for p in planned:
            device, plan = self._by_id[p.plan.device_id], p.plan
            uncontrolled = views[device.device_id].uncontrolled_kw \
                if name == "LOAD_DISPATCH" else None
            for cap in self._caps(ven, device, signal.event_id):
                plan = under_cap(plan, cap, device, uncontrolled_kw=uncontrolled)
            out.append(replace(p, plan=plan))
        return out

    def _caps(self, ven: str, device: Device, event_id: str) -> list[Plan]:
        """The caps other planned events put on the device: their own steps (as sent, they
        carry the plan beneath them too)."""
        caps = (plan_for_signal(s, device, sequence=0, issuer=ven, rng=random.Random(0))
                for s in self._vens[ven].signals.values()
                if s.signal_name.upper() in CAP_SIGNALS and s.event_id != event_id)
        return [c for c in caps if c is not None]

    def _dispatches(self, ven: str, event_id: str | None) -> bool:
        """Whether the event's plans are a LOAD_DISPATCH's (their batteries sized at the meter)."""
        return any(s.event_id == event_id and s.signal_name.upper() == "LOAD_DISPATCH"
                   for s in self._vens[ven].signals.values())

    def _beneath(self, ven: str, device_id: str, event_id: str, start: datetime, end: datetime
                 ) -> Plan | None:
        """The plan the device follows from another event still planned over [start, end): of
        each such event the newest plan sent, of those the newest. Read from the store, so a
        restart forgets none; plans of released events (and those that handed their devices
        back) follow nothing. Only plans still in force at `start` are read."""
        planned = {key[0] for key in self._vens[ven].signals} - {event_id}
        newest: dict[str, Plan] = {}
        for r in self.store.plans(device_id=device_id, status=PlanStatus.DISPATCHED,
                                  ending_after=start):  # by sequence: the newest comes last
            if r.plan.event_id is not None and r.plan.event_id in planned:
                newest[r.plan.event_id] = r.plan
        overlapping = [p for p in newest.values() if p.start < end]
        return max(overlapping, key=lambda p: p.sequence, default=None)

    def _watch_forecasts(self, ven: str, key: SignalKey, planned: Sequence[Planned],
                         replanned: datetime | None = None) -> None:
        """Remember the forecast each storage site's price plan was made on."""
        if self._vens[ven].signals[key].signal_name.upper() != "ELECTRICITY_PRICE":
            return
        for p in planned:
            device = self._by_id[p.plan.device_id]
            if device.capacity_kwh > 0 and device.rated_export_kw > 0:
                steps = max(1, -(-(p.plan.end - p.plan.start) // PRICE_STEP))
                pv, load = self.forecast(device, p.plan.start, PRICE_STEP, steps)
                self._priced[device.device_id] = _Priced(
                    ven=ven, key=key, start=p.plan.start, replanned=replanned,
                    forecast_kw=[lo - pv_kw for pv_kw, lo in zip(pv, load)])

    async def replan_deviations(self, now: datetime) -> list[PlanRecord]:
        """Plan again, from now, each storage site whose import outside the plan's control has
        left its forecast by more than `replan_margin_kw` (`policies.price_plan.needs_replan`)."""
        watched = {}
        for device_id, priced in list(self._priced.items()):
            step = (now - priced.start) // PRICE_STEP
            if step >= len(priced.forecast_kw) or priced.key not in self._vens[priced.ven].signals:
                del self._priced[device_id]
            elif step >= 0 and (priced.replanned is None
                                or now - priced.replanned >= PRICE_STEP):
                watched[device_id] = (priced, priced.forecast_kw[step])
        if not watched:
            return []
        views = self._views([self._by_id[d] for d in watched], now)
        records = []
        for device_id, (priced, forecast_kw) in watched.items():
            view = views[device_id]
            if not view.state.available or not needs_replan(
                    [forecast_kw], [view.uncontrolled_kw], margin=self.replan_margin_kw):
                continue
            signal = self._vens[priced.ven].signals[priced.key]
            result = plans_for_signal(
                signal, {device_id: view}, sequences={device_id: self._sequences.get(
                    device_id, 0) + 1}, issuer=priced.ven, now=now, rng=self._rng,
                forecast=self.forecast)
            for p in result.plans:
                self._sequences[device_id] = p.plan.sequence
            log.info("re-plan of %s: import outside the plan %.2f kW, forecast %.2f kW",
                     device_id, view.uncontrolled_kw, forecast_kw)
            self._watch_forecasts(priced.ven, priced.key, result.plans, replanned=now)
            records += await self._send(self._capping(priced.ven, signal, result.plans, views),
                                        now, signal.program)
        return records

    async def _send(self, planned: Sequence[Planned], now: datetime,
                    program: str | None) -> list[PlanRecord]:
        records = []
        for p in planned:
            device = self._by_id[p.plan.device_id]
            reasons = tuple(validate(p.plan, device))
            records.append(PlanRecord(
                plan=p.plan, device=device, created=now, reasons=reasons,
                requested_kw=p.requested_kw,
                status=PlanStatus.REFUSED if reasons else PlanStatus.DISPATCHED))
        if self.reviewer is not None:
            records = await self._review(records, program)
        self.store.save_plans(records)
        await self._dispatch(records, now)
        return records

    async def _dispatch(self, records: Sequence[PlanRecord], now: datetime) -> None:
        self._track([r for r in records if r.status is PlanStatus.DISPATCHED], now)
        for r in records:
            if r.status is PlanStatus.REFUSED:
                log.warning("plan %s refused: %s", r.plan.plan_id, "; ".join(r.reasons))
            elif r.status is PlanStatus.HELD:
                log.warning("plan %s held: %s", r.plan.plan_id, "; ".join(r.reasons))
            elif r.device.takes_plans:
                await self.outlet.enqueue(Dispatch(plan=r.plan, device=r.device))
            else:
                self.outlet.schedule(r.plan, r.device)

    # --- the CMB's review -----------------------------------------------------------------

    async def _review(self, records: list[PlanRecord], program: str | None) -> list[PlanRecord]:
        """Routine plans wait for the CMB's verdict; response plans answering a dispatched event
        go out at once and are judged alongside. When the CMB cannot be reached, plans that must
        wait are held (and submitted again every `review_retry`), never sent unchecked."""
        reviewer = self.reviewer
        assert reviewer is not None
        valid = [r for r in records if r.status is PlanStatus.DISPATCHED]
        at_once: list[PlanRecord] = []
        waiting: list[PlanRecord] = []
        for r in valid:
            try:
                go = await reviewer.immediate(r.plan, program)
            except CmbError:
                go = False  # no policy known: the safe side is to wait
            (at_once if go else waiting).append(r)
        if at_once:
            task = asyncio.create_task(self._judge_dispatched(at_once, program))
            self._reviews.add(task)
            task.add_done_callback(self._reviews.discard)
        judged = await self._judge(waiting, program)
        return [judged.get(r.plan.plan_id, r) for r in records]

    async def _judge(self, records: Sequence[PlanRecord], program: str | None
                     ) -> dict[str, PlanRecord]:
        """Each plan as the CMB judged it: unchanged if accepted, refused with the CMB's
        findings, or held when it could not be judged."""
        reviewer = self.reviewer
        assert reviewer is not None
        out: dict[str, PlanRecord] = {}
        by_issuer: dict[str, list[PlanRecord]] = {}
        for r in records:
            by_issuer.setdefault(r.plan.issuer, []).append(r)
        for issuer, mine in by_issuer.items():
            try:
                verdicts = await reviewer.review(
                    issuer, [Item(plan=r.plan, device=r.device, program=program) for r in mine])
            except CmbError as exc:
                status = PlanStatus.HELD if exc.retryable else PlanStatus.REFUSED
                for r in mine:
                    out[r.plan.plan_id] = replace(r, status=status, reasons=(f"CMB: {exc}",))
                    if status is PlanStatus.HELD:
                        self._held[r.plan.plan_id] = (out[r.plan.plan_id], program)
                continue
            for r, v in zip(mine, verdicts):
                self._held.pop(r.plan.plan_id, None)
                out[r.plan.plan_id] = r if v.decision is Decision.ACCEPTED else replace(
                    r, status=PlanStatus.REFUSED,
                    reasons=tuple(f"CMB {f.rule}: {f.detail}" for f in v.findings))
        return out

    async def _judge_dispatched(self, records: Sequence[PlanRecord], program: str | None) -> None:
        """The parallel check of plans already sent: a rejection is recorded with the plan."""
        judged = await self._judge(records, program)
        rejected = [replace(j, status=PlanStatus.DISPATCHED) for j in judged.values()
                    if j.status is PlanStatus.REFUSED]
        for r in rejected:
            log.warning("plan %s went out and the CMB rejects it: %s", r.plan.plan_id,
                        "; ".join(r.reasons))
        for plan_id in [p for p in self._held if p in {r.plan.plan_id for r in records}]:
            del self._held[plan_id]  # already out: nothing to hold back
        self.store.save_plans(rejected)

    async def retry_held(self, now: datetime) -> list[PlanRecord]:
        """Submit held plans again; send those now accepted, drop those that have ended."""
        for plan_id, (r, _) in list(self._held.items()):
            if r.plan.end <= now:
                del self._held[plan_id]
        by_program: dict[str | None, list[PlanRecord]] = {}
        for r, program in self._held.values():
            by_program.setdefault(program, []).append(replace(r, status=PlanStatus.DISPATCHED,
                                                              reasons=()))
        records: list[PlanRecord] = []
        for program, waiting in by_program.items():
            judged = await self._judge(waiting, program)
            records += [judged[r.plan.plan_id] for r in waiting]
        decided = [r for r in records if r.status is not PlanStatus.HELD]
        self.store.save_plans(decided)
        await self._dispatch(decided, now)
        return decided

    def _track(self, records: Sequence[PlanRecord], now: datetime) -> None:
        new = [r.device for r in records if r.plan.event_id is not None
               and r.device.device_id not in self._events.get(r.plan.event_id, _Tracked()).baseline]
        views = self._views(new, now) if new else {}
        for r in records:
            if r.plan.event_id is None:
                continue
            tracked = self._events.setdefault(r.plan.event_id, _Tracked())
            tracked.plans[r.device.device_id] = r.plan
            if r.device.device_id in views:
                tracked.baseline[r.device.device_id] = views[r.device.device_id].state.current_kw

    async def _release(self, ven: str, key: SignalKey, now: datetime, *,
                       replaced: bool) -> list[PlanRecord]:
        """Forget a signal; unless a modification replans them, its devices go back to their
        day job until their old plans would have ended."""
        state = self._vens[ven]
        signal = state.signals.pop(key)
        device_ids = state.devices.pop(key, ())
        self._windows.pop(key, None)
        self.store.forget_signal(ven, signal)
        if replaced or not device_ids:
            return []
        old = {r.plan.device_id: r.plan for r in self.store.plans(event_id=signal.event_id)
               if r.status is PlanStatus.DISPATCHED and r.plan.device_id in device_ids}
        # Back to what they follow from other events (a price plan, a cap), else their day job.
        restores = [
            Planned(plan=dispatch_plan(
                self._by_id[device_id],
                resumed(self._by_id[device_id],
                        self._beneath(ven, device_id, signal.event_id, now, plan.end), now,
                        plan.end),
                signal=signal, sequence=self.next_sequence(device_id), issuer=ven,
                rng=self._rng))
            for device_id, plan in old.items() if plan.end > now]
        self.store.save_plans([PlanRecord(plan=p, device=self._by_id[p.device_id],
                                          status=PlanStatus.SUPERSEDED, created=now)
                               for p in old.values()])
        return await self._send(restores, now, signal.program)

    async def _redispatch(self, key: SignalKey, window: _Window) -> list[PlanRecord]:
        """Re-share the interval in force (and the ones after it) given the devices now."""
        now = self.clock()
        live = [(i, iv) for i, (iv, _) in enumerate(window.allocations)
                if (iv.end or iv.start + OPEN_END) > now]
        if not live:
            self._windows.pop(key, None)
            return []
        views = self._views(window.devices, now)
        caps = {d.device_id: self._caps(window.ven, d, key[0]) for d in window.devices}
        changed: set[str] = set()
        for i, interval in live:
            previous = window.allocations[i][1]
            target = interval_target(window.signal, interval.value, window.fleet_kw)
            if target * previous.target_kw < 0:
                continue
            states = [within_caps(v.state, caps[d], interval.start,
                                  interval.end or interval.start + OPEN_END)
                      for d, v in views.items()]
            # Before its interval a device still does its day job: only its availability counts.
            again = redispatch(previous, states, target, deviation_margin=self.deviation_margin,
                               in_force=interval.start <= now)
            window.allocations[i] = (interval, again)
            changed.update(device_id for device_id in set(again.shares) | set(previous.shares)
                           if again.shares.get(device_id) != previous.shares.get(device_id))
        if not changed:
            return []
        planned = []
        for device_id in sorted(changed):
            device = self._by_id[device_id]
            steps = [dispatch_step(device, window.allocations[i][1].shares.get(device_id),
                                   max(iv.start, now), iv.end or iv.start + OPEN_END,
                                   uncontrolled_kw=views[device_id].uncontrolled_kw)
                     for i, iv in live]
            requested = [window.allocations[i][1].shares.get(device_id) for i, _ in live]
            kws = [s.kw for s in requested if s is not None]
            planned.append(Planned(
                plan=dispatch_plan(device, steps, signal=window.signal,
                                   sequence=self.next_sequence(device_id), issuer=window.ven,
                                   rng=self._rng),
                requested_kw=max(kws, key=abs) if kws else 0.0))
        log.info("re-dispatch of %s: %d devices re-planned", key[0], len(planned))
        state = self._vens[window.ven]
        state.devices[key] = tuple(sorted(set(state.devices.get(key, ())) | set(changed)))
        self.store.save_signal(window.ven, window.signal, state.devices[key])
        return await self._send(self._capping(window.ven, window.signal, planned, views), now,
                                window.signal.program)

