"""Read-only queries and derived figures for the operator dashboard (`vtn.dashboard`).

Everything is read from the database, never from one process's memory, so two VTN replicas on
one database show the same thing. Rows stay in this module; the dashboard gets JSON-ready dicts.

Power, in kW of import:
- Delivered: the TELEMETRY_USAGE values VENs report, for the rIDs their METADATA describes as
  powerReal (scaled by the description's unit). Per time bucket each series counts with its
  mean in the bucket, else its last value (at most `STALE` old); series are summed.
- Requested, per VEN an event reaches (each VEN is sent the whole signal):
  LOAD_DISPATCH setpoint: the value (kW by the signal's unit);
  LOAD_DISPATCH delta: the VEN's mean delivered power over the STALE window before the
  event (its baseline), plus the value;
  LOAD_CONTROL x-loadControlCapacity: the value times the rated import of the VEN's devices the
  event reaches, as the CMB's device registry knows them (no registry: not charted).
  A cancelled event requests nothing after its cancellation.
- Network areas come from the CMB's device registry (`DeviceRegistration.network_area`, with
  the `ven_id` and `resource_id` fronting each device): the VTN itself learns no areas. A VEN's
  resource is split across areas, and a VEN's request across its reached resources, in
  proportion to the devices' rated import; a resource without registered devices is
  "unregistered".
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import Engine, case, func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from oadr import events as ev_time
from oadr.isotime import format_datetime
from oadr.messages import Event, EventSignal, ItemBase
from policies.flexibility import KW_PER_UNIT
from ven.signals import unit_of

from .records import Delivery, EventRecord
from .tables import (
    DeliveryRow,
    EventRow,
    OptRow,
    OutboxRow,
    PushStateRow,
    ReportMetaRow,
    ReportRequestRow,
    ReportValueRow,
    VenPollRow,
    VenRow,
    as_utc,
    delivery_record,
    description_from_json,
    event_record,
)

PARTS: Final = ("fleet", "events", "power", "cmb")
EVENTS_SHOWN: Final = 50  # the newest events in the timeline
CHARTED: Final = 12  # the newest events with a power request get a chart
BUCKETS: Final = 120  # points per chart at most
STALE_MINUTES: Final = 10
STALE: Final = timedelta(minutes=STALE_MINUTES)  # a series' last value counts this long
MAX_SAMPLES: Final = 200_000  # telemetry rows read per chart request, newest first
# Only the newest report values are looked at: bounded work however long the VTN has run.
RECENT_VALUES: Final = 1_000_000
UNREGISTERED: Final = "unregistered"

Marker = dict[str, tuple[Any, ...]]


def iso(dt: datetime | None) -> str | None:
    return format_datetime(dt) if dt is not None else None


# --- change marker ------------------------------------------------------------------------

def change_marker(engine: Engine, *, with_cmb: bool) -> Marker:
    """A cheap fingerprint per dashboard part: when a part's tuple changes, so did its data.

    Aggregates only (counts, sums, maxima), in one connection, so it costs a few index scans.
    """
    m = func.max
    with engine.connect() as c:
        ven = c.execute(sa_select(
            func.count(), m(col(VenRow.registered_at)), m(col(VenRow.created)),
            func.sum(case((col(VenRow.status) == "registered", 1), else_=0)))).one()
        push = c.execute(sa_select(func.count(), func.sum(col(PushStateRow.failures)),
                                   m(col(PushStateRow.next_attempt)))).one()
        values = c.execute(sa_select(m(col(ReportValueRow.id)))).one()
        event = c.execute(sa_select(func.count(), func.sum(col(EventRow.modification_number)),
                                    m(col(EventRow.modified)))).one()
        delivery = c.execute(sa_select(
            func.count(), func.sum(col(DeliveryRow.delivered_mod)),
            func.sum(col(DeliveryRow.acked_mod)),
            m(col(DeliveryRow.delivered_at)), m(col(DeliveryRow.responded_at)),
            func.sum(case((col(DeliveryRow.removed), 1), else_=0)))).one()
        opt = c.execute(sa_select(func.count(), m(col(OptRow.created)),
                                  m(col(OptRow.cancelled_at)))).one()
        outbox = c.execute(sa_select(m(col(OutboxRow.sent_at)))).one()
        poll = c.execute(sa_select(m(col(VenPollRow.last_poll)))).one()
        cmb: tuple[Any, ...] = ()
        if with_cmb:
            from .cmb.tables import CmbAuditRow, CmbVerdictRow

            # every CMB change (registry, alert, override and its paths' results) is audited
            cmb = (*c.execute(sa_select(m(col(CmbAuditRow.id)))).one(),
                   *c.execute(sa_select(m(col(CmbVerdictRow.id)))).one())
    return {"fleet": (*ven, *push, *values, *delivery[3:5], *outbox, *opt, *poll),
            "events": (*event, *delivery, *opt),
            "power": (*values, *event),
            "cmb": cmb}


def changed_parts(old: Marker | None, new: Marker) -> list[str]:
    return [p for p in PARTS if old is None or old.get(p) != new.get(p)]


# --- fleet --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Contact:
    last_contact: datetime | None  # the latest trace a VEN left in the database
    open_events: int


def contacts(engine: Engine) -> dict[str, Contact]:
    """Per VEN, when it last left a trace (a distribute sent to it, an answer, an outbox
    message sent, an opt) and how many events are open for it. The VTN does not record idle
    polls here (`VtnStore.last_polls` has those), so this is the last exchange that changed
    something."""
    seen: dict[str, list[datetime]] = defaultdict(list)
    open_events: dict[str, int] = {}
    with Session(engine) as s:
        for ven_id, delivered, responded, n_open in s.execute(sa_select(
                col(DeliveryRow.ven_id), func.max(col(DeliveryRow.delivered_at)),
                func.max(col(DeliveryRow.responded_at)),
                func.sum(case((~col(DeliveryRow.removed) & ~col(DeliveryRow.finished), 1),
                              else_=0))).group_by(col(DeliveryRow.ven_id))):
            seen[ven_id] += [t for t in (delivered, responded) if t is not None]
            open_events[ven_id] = int(n_open or 0)
        for ven, column in ((col(OutboxRow.ven_id), col(OutboxRow.sent_at)),
                            (col(OptRow.ven_id), col(OptRow.created))):
            for ven_id, at in s.execute(sa_select(ven, func.max(column)).group_by(ven)):
                if at is not None:
                    seen[ven_id].append(at)
    return {v: Contact(last_contact=max((as_utc(t) for t in seen.get(v, [])), default=None),
                       open_events=open_events.get(v, 0))
            for v in set(seen) | set(open_events)}


SILENT_AFTER: Final = 3  # report periods without a report before a VEN counts as silent


@dataclass(frozen=True, slots=True)
class Presence:
    online: int  # resources whose latest status report says online
    offline: int
    last_report: datetime | None  # the newest telemetry interval start
    period: timedelta | None = None  # the longest granularity of its active report requests

    def silent(self, now: datetime) -> bool:
        """Reports stopped: the status it last reported no longer tells its state."""
        return (self.last_report is not None and self.period is not None
                and now - self.last_report > SILENT_AFTER * self.period)


def _recent(s: Session) -> Any:
    """The condition selecting the newest RECENT_VALUES report values (a primary-key range)."""
    newest = s.execute(sa_select(func.max(col(ReportValueRow.id)))).scalar() or 0
    return col(ReportValueRow.id) > newest - RECENT_VALUES


def presence(engine: Engine) -> dict[str, Presence]:
    """Per VEN, from its latest TELEMETRY_STATUS value per rID (oadrOnline) and how often it
    was asked to report."""
    ven = col(ReportValueRow.ven_id)
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    with Session(engine) as s:
        recent = _recent(s)
        latest = (sa_select(func.max(col(ReportValueRow.id)).label("id"))
                  .where(recent, col(ReportValueRow.online).is_not(None))
                  .group_by(ven, col(ReportValueRow.r_id)).subquery())
        for ven_id, online in s.execute(sa_select(ven, col(ReportValueRow.online))
                                        .join(latest, col(ReportValueRow.id) == latest.c.id)):
            counts[ven_id][0 if online else 1] += 1
        last: dict[str, datetime | None] = dict(s.execute(
            sa_select(ven, func.max(col(ReportValueRow.dtstart))).where(recent)
            .group_by(ven)).all())
        asked = col(ReportRequestRow.ven_id)
        period: dict[str, int | None] = dict(s.execute(
            sa_select(asked, func.max(col(ReportRequestRow.granularity_s)))
            .where(col(ReportRequestRow.status) == "active").group_by(asked)).all())
    return {v: Presence(online=counts[v][0], offline=counts[v][1],
                        last_report=as_utc(last.get(v)),
                        period=timedelta(seconds=p) if (p := period.get(v)) else None)
            for v in set(counts) | set(last)}


def online_state(p: Presence | None, unreachable: bool, now: datetime) -> str:
    """A word, so the state is never told by colour alone."""
    if unreachable:
        return "unreachable"
    if p is None or p.online + p.offline == 0:
        return "unknown"
    if p.silent(now):
        return "silent"
    if p.offline == 0:
        return "online"
    return "offline" if p.online == 0 else "partly online"


# --- events -------------------------------------------------------------------------------

def recent_events(engine: Engine, limit: int = EVENTS_SHOWN) -> list[EventRecord]:
    """The newest events, newest first."""
    with Session(engine) as s:
        return [event_record(r) for r in s.exec(
            select(EventRow).order_by(col(EventRow.created).desc()).limit(limit))]


def deliveries(engine: Engine, event_ids: Sequence[str]) -> dict[str, list[Delivery]]:
    out: dict[str, list[Delivery]] = {e: [] for e in event_ids}
    if not event_ids:
        return out
    with Session(engine) as s:
        for row in s.exec(select(DeliveryRow).where(col(DeliveryRow.event_id).in_(event_ids))
                          .order_by(col(DeliveryRow.ven_id))):
            out[row.event_id].append(delivery_record(row))
    return out


def delivery_state(d: Delivery, modification: int) -> str:
    """Where one VEN stands with the event's current modification."""
    if d.removed:
        return "removed"  # no longer targeted: one more distribute without it
    if d.acked_mod >= modification:
        return "acknowledged"
    if d.delivered_mod >= modification:
        return "delivered"
    return "outdated" if d.delivered_mod >= 0 else "pending"


# --- power --------------------------------------------------------------------------------

SeriesKey = tuple[str, str, str]  # ven_id, resource_id, r_id


@dataclass(frozen=True, slots=True)
class Telemetry:
    """Power samples per series, in time order."""

    times: dict[SeriesKey, list[datetime]]
    kw: dict[SeriesKey, list[float]]

    def by_ven(self) -> dict[str, list[SeriesKey]]:
        out: dict[str, list[SeriesKey]] = defaultdict(list)
        for key in self.times:
            out[key[0]].append(key)
        return out

    def level(self, keys: Iterable[SeriesKey], start: datetime, end: datetime) -> float | None:
        """The summed power of `keys` over [start, end): each series' mean there, else its
        last value before (at most STALE old); None when no series has a value."""
        total, found = 0.0, False
        for key in keys:
            times, kw = self.times[key], self.kw[key]
            lo, hi = bisect.bisect_left(times, start), bisect.bisect_left(times, end)
            if hi > lo:
                total += sum(kw[lo:hi]) / (hi - lo)
                found = True
            elif lo > 0 and start - times[lo - 1] <= STALE:
                total += kw[lo - 1]
                found = True
        return total if found else None


def _power_factor(item: ItemBase | None) -> float | None:
    """kW per reported unit of a powerReal description; None for anything else."""
    if item is None or item.kind != "powerReal":
        return None
    return KW_PER_UNIT.get(unit_of(item))


def power_rids(engine: Engine) -> dict[tuple[str, str], tuple[str, float]]:
    """(ven_id, rID) -> (resource_id, kW per unit) for every power rID VENs offer in
    TELEMETRY_USAGE metadata."""
    out: dict[tuple[str, str], tuple[str, float]] = {}
    with Session(engine) as s:
        for row in s.exec(select(ReportMetaRow).where(
                col(ReportMetaRow.report_name) == "METADATA_TELEMETRY_USAGE")):
            for raw in row.descriptions or ():
                d = description_from_json(raw)
                factor = _power_factor(d.item_base)
                if factor is not None:
                    out[(row.ven_id, d.r_id)] = (d.resource_id or d.r_id, factor)
    return out


def telemetry(engine: Engine, since: datetime, until: datetime) -> Telemetry:
    """Power samples with interval starts in [since, until]: the newest MAX_SAMPLES among the
    newest RECENT_VALUES report values."""
    rids = power_rids(engine)
    times: dict[SeriesKey, list[datetime]] = defaultdict(list)
    kw: dict[SeriesKey, list[float]] = defaultdict(list)
    with Session(engine) as s:
        rows = s.execute(sa_select(col(ReportValueRow.ven_id), col(ReportValueRow.r_id),
                                   col(ReportValueRow.dtstart), col(ReportValueRow.value)).where(
            _recent(s), col(ReportValueRow.report_name) == "TELEMETRY_USAGE",
            col(ReportValueRow.value).is_not(None),
            col(ReportValueRow.dtstart) >= since, col(ReportValueRow.dtstart) <= until)
            .order_by(col(ReportValueRow.id).desc()).limit(MAX_SAMPLES)).all()
    for ven_id, r_id, dtstart, value in sorted(rows, key=lambda r: as_utc(r[2])):
        found = rids.get((ven_id, r_id))
        if found is None or value is None or dtstart is None:
            continue
        key = (ven_id, found[0], r_id)
        times[key].append(as_utc(dtstart))
        kw[key].append(value * found[1])
    return Telemetry(times=dict(times), kw=dict(kw))


@dataclass(frozen=True, slots=True)
class Device:
    """What the charts need of a CMB registration."""

    ven_id: str
    resource_id: str
    network_area: str
    rated_import_kw: float


def chart_signal(ev: Event) -> EventSignal | None:
    """The event's first signal that asks for power."""
    for s in ev.signals:
        if (s.signal_name, s.signal_type) in (("LOAD_DISPATCH", "setpoint"),
                                              ("LOAD_DISPATCH", "delta"),
                                              ("LOAD_CONTROL", "x-loadControlCapacity")):
            return s
    return None


def _payload_at(ev: Event, signal: EventSignal, t: datetime, until: datetime | None
                ) -> float | None:
    """The signal's value at t, None outside the event (or after `until`, its cancellation)."""
    ap = ev.active_period
    if t < ap.dtstart or (ap.end is not None and t >= ap.end) or (until is not None
                                                                 and t >= until):
        return None
    return ev_time.current_payload(signal, ap.dtstart, t)


@dataclass(frozen=True, slots=True)
class Reach:
    """One VEN an event reaches: the power series and registered devices it reaches."""

    ven_id: str
    series: tuple[SeriesKey, ...]
    devices: tuple[Device, ...]

    @property
    def rated_kw(self) -> float:
        return sum(d.rated_import_kw for d in self.devices)


class PowerView:
    """Requested and delivered power per event and per network area, over one read of the
    telemetry and registry."""

    def __init__(self, telemetry: Telemetry, devices: Sequence[Device],
                 audiences: Mapping[str, Sequence[str]]) -> None:
        self.telemetry = telemetry
        self.devices = devices
        self.audiences = audiences  # event_id -> the VENs it reaches (not removed)
        self._series = telemetry.by_ven()
        self._shares = self._area_shares()
        self._baselines: dict[tuple[str, str], float | None] = {}

    def _area_shares(self) -> dict[tuple[str, str], dict[str, float]]:
        rated: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for d in self.devices:
            rated[(d.ven_id, d.resource_id)][d.network_area] += d.rated_import_kw
        out: dict[tuple[str, str], dict[str, float]] = {}
        for key, areas in rated.items():
            total = sum(areas.values())
            out[key] = {a: (kw / total if total else 1 / len(areas)) for a, kw in areas.items()}
        return out

    def areas_of(self, ven_id: str, resource_id: str) -> dict[str, float]:
        return self._shares.get((ven_id, resource_id), {UNREGISTERED: 1.0})

    def reach(self, ev: Event) -> list[Reach]:
        wanted = set(ev.targets.resource_ids)
        out = []
        for ven_id in self.audiences.get(ev.event_id, ()):
            series = tuple(k for k in self._series.get(ven_id, ())
                           if not wanted or k[1] in wanted)
            devices = tuple(d for d in self.devices
                            if d.ven_id == ven_id and (not wanted or d.resource_id in wanted))
            out.append(Reach(ven_id=ven_id, series=series, devices=devices))
        return out

    def requested(self, ev: Event, signal: EventSignal, r: Reach, t: datetime,
                  until: datetime | None) -> float | None:
        """kW requested of one reached VEN at t; None when not requested or not knowable."""
        value = _payload_at(ev, signal, t, until)
        if value is None:
            return None
        if signal.signal_name == "LOAD_CONTROL":
            return value * r.rated_kw if r.devices else None
        kw = value * KW_PER_UNIT.get(unit_of(signal.item_base), 1.0)
        if signal.signal_type == "delta":
            before = self._baseline(ev, r)
            return None if before is None else before + kw
        return kw

    def _baseline(self, ev: Event, r: Reach) -> float | None:
        """The VEN's mean delivered power over STALE before the event (asked once per chart
        point otherwise)."""
        key = (ev.event_id, r.ven_id)
        if key not in self._baselines:
            start = ev.active_period.dtstart
            self._baselines[key] = self.telemetry.level(r.series, start - STALE, start)
        return self._baselines[key]

    def split(self, r: Reach) -> dict[str, float]:
        """A reached VEN's request shared over areas by its reached devices' rated import."""
        if not r.devices or not r.rated_kw:
            return {UNREGISTERED: 1.0}
        shares: dict[str, float] = defaultdict(float)
        for d in r.devices:
            shares[d.network_area] += d.rated_import_kw / r.rated_kw
        return shares


def buckets(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    width = max((end - start) / BUCKETS, timedelta(seconds=1))
    out: list[tuple[datetime, datetime]] = []
    t = start
    while t < end and len(out) < BUCKETS:
        out.append((t, t + width))
        t += width
    return out


def _point(t: datetime, kw: float) -> dict[str, Any]:
    return {"t": iso(t), "kw": round(kw, 3)}


def event_window(ev: Event, now: datetime) -> tuple[datetime, datetime]:
    """The event's span with a fifth of it before (what was drawn before it began)."""
    ap = ev.active_period
    end = ap.end if ap.end is not None else max(now, ap.dtstart) + timedelta(hours=1)
    return ap.dtstart - (end - ap.dtstart) / 5, end


def cancelled_at(rec: EventRecord) -> datetime | None:
    return rec.event.modification_date_time if rec.cancelled else None


def event_chart(view: PowerView, rec: EventRecord, now: datetime) -> dict[str, Any] | None:
    ev = rec.event
    signal = chart_signal(ev)
    if signal is None:
        return None
    reached = view.reach(ev)
    series = [k for r in reached for k in r.series]
    start, end = event_window(ev, now)
    requested, delivered = [], []
    until = cancelled_at(rec)
    for b0, b1 in buckets(start, end):
        mid = b0 + (b1 - b0) / 2
        asks = [view.requested(ev, signal, r, mid, until) for r in reached]
        if asks and all(a is not None for a in asks):
            requested.append(_point(mid, sum(a for a in asks if a is not None)))
        if b0 <= now and (got := view.telemetry.level(series, b0, min(b1, now))) is not None:
            delivered.append(_point(mid, got))
    return {"event_id": ev.event_id, "signal": f"{signal.signal_name} {signal.signal_type}",
            "start": iso(start), "end": iso(end), "dtstart": iso(ev.active_period.dtstart),
            "vens": len(reached), "series": len(series),
            "requested": requested, "delivered": delivered,
            "note": None if requested or not reached else _unknowable(signal)}


def _unknowable(signal: EventSignal) -> str | None:
    """Why a request in kW cannot be charted, for the signals whose kW needs more than the
    event itself."""
    if signal.signal_name == "LOAD_CONTROL":
        return "capacity in kW needs the devices' ratings from the CMB's device registry"
    if signal.signal_type == "delta":
        return (f"a delta in kW needs the VENs' delivered power in the {STALE_MINUTES} minutes "
                "before the event (its baseline)")
    return None


def area_charts(view: PowerView, events: Sequence[EventRecord], start: datetime,
                end: datetime, now: datetime) -> list[dict[str, Any]]:
    """Requested and delivered power per network area over [start, end)."""
    plans: list[tuple[Event, EventSignal, datetime | None,
                      list[tuple[Reach, dict[str, float]]]]] = []
    for rec in events:
        signal = chart_signal(rec.event)
        if signal is not None:
            plans.append((rec.event, signal, cancelled_at(rec),
                          [(r, view.split(r)) for r in view.reach(rec.event)]))
    series_areas = {k: view.areas_of(k[0], k[1]) for k in view.telemetry.times}
    areas = sorted({a for shares in series_areas.values() for a in shares}
                   | {a for *_, reached in plans for _, split in reached for a in split}
                   | {d.network_area for d in view.devices})
    requested: dict[str, list[dict[str, Any]]] = {a: [] for a in areas}
    delivered: dict[str, list[dict[str, Any]]] = {a: [] for a in areas}
    for b0, b1 in buckets(start, end):
        mid = b0 + (b1 - b0) / 2
        asks: dict[str, float] = defaultdict(float)
        for ev, signal, until, reached in plans:
            for r, split in reached:
                if (kw := view.requested(ev, signal, r, mid, until)) is not None:
                    for area, share in split.items():
                        asks[area] += kw * share
        got: dict[str, float] = defaultdict(float)
        if b0 <= now:
            for key, shares in series_areas.items():
                if (kw := view.telemetry.level((key,), b0, min(b1, now))) is not None:
                    for area, share in shares.items():
                        got[area] += kw * share
        for area, kw in asks.items():
            requested[area].append(_point(mid, kw))
        for area, kw in got.items():
            delivered[area].append(_point(mid, kw))
    return [{"network_area": a, "start": iso(start), "end": iso(end),
             "requested": requested[a], "delivered": delivered[a]} for a in areas]


def verdict_counts(engine: Engine) -> dict[str, dict[str, int]]:
    """aggregator -> decision -> number of plan verdicts (the CMB's tables)."""
    from .cmb.tables import CmbVerdictRow

    out: dict[str, dict[str, int]] = defaultdict(dict)
    with Session(engine) as s:
        for aggregator, decision, n in s.execute(sa_select(
                col(CmbVerdictRow.aggregator), col(CmbVerdictRow.decision), func.count())
                .group_by(col(CmbVerdictRow.aggregator), col(CmbVerdictRow.decision))):
            out[aggregator][decision] = n
    return out
