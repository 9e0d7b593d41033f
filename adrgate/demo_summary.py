"""The demo's summary, read back from the databases the run wrote: the VTN's (events,
deliveries, opts, the CMB's verdicts, alerts and overrides) and each aggregator's (plans, channel
outcomes, power samples). Nothing here is counted while the day runs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from bridge.store import BridgeStore, PlanRecord, PlanStatus
from bridge.streams import Outcome
from oadr.messages import OptType
from vtn.cmb.records import Decision
from vtn.cmb.store import CmbStore
from vtn.store import VtnStore


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    label: str  # what the event was in the script
    event_id: str | None  # the VTN's event (None: plans no event asked for)
    vens: int  # VENs the VTN delivered the event to
    opt_ins: int  # of those, answered optIn
    devices: int  # devices given a plan
    acked: dict[str, int]  # per channel: commands the devices acknowledged (outcome delivered)
    sent: dict[str, int]  # per channel: plans handed to it (re-dispatches count again)
    requested_kw: float | None  # mean change in import asked over the event's samples
    delivered_kw: float | None  # mean change the devices showed
    accepted: int  # CMB verdicts on the plans
    rejected: int
    rules: dict[str, int]  # the rules the rejected plans broke, how often


@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    as_of: datetime  # the day's end: plans made and commands acknowledged until then count
    rows: list[Row]
    alerts: list[dict[str, Any]] = field(default_factory=list)
    overrides: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(vtn: VtnStore, bridges: Mapping[str, BridgeStore],
              roles: Mapping[str, str], attack_plans: Sequence[str], *,
              as_of: datetime) -> Summary:
    """`roles`: label -> VTN event id, in table order; `attack_plans`: the injected plans. The
    devices go on after the day; what comes after `as_of` is not counted."""
    cmb = CmbStore(vtn.engine)
    events: dict[str, tuple[str, datetime | None]] = {
        label: (event_id, None) for label, event_id in roles.items()}
    for entry in cmb.overrides():  # the OpenADR path's event, when it made one
        event_id = f"cmb-{entry.override.override_id}"
        if vtn.get_event(event_id) is not None:  # its window ends when the override is lifted
            events[f"CMB override {entry.override.level} %"] = (event_id, entry.override.lifted)
    rows = [_event_row(label, event_id, until, vtn, bridges, cmb, as_of)
            for label, (event_id, until) in events.items()]
    if attack_plans:  # plans no event asked for: no VEN, no window
        ids = set(attack_plans)
        plans = [r for b in bridges.values() for r in b.plans() if r.plan.plan_id in ids]
        rows.append(_plans_row("attack (injected)", None, plans, bridges, cmb, as_of, vens=0,
                               opt_ins=0, window=None))
    return Summary(
        as_of=as_of, rows=rows,
        alerts=[{"monitor": a.monitor, "aggregator": a.aggregator, "area": a.network_area,
                 "value": a.value, "threshold": a.threshold, "at": a.at.isoformat()}
                for a in reversed(cmb.alerts())],
        overrides=[{"override_id": e.override.override_id, "level": e.override.level,
                    "status": str(e.override.status), "created_by": e.override.created_by,
                    "devices": len(e.override.devices),
                    "paths": {r["path"]: {"action": r["action"], "reached": len(r["reached"]),
                                          "failed": len(r["failed"])}
                              for r in e.results if r["action"] == "apply"}}
                   for e in cmb.overrides()])


def _event_row(label: str, event_id: str, until: datetime | None, vtn: VtnStore,
               bridges: Mapping[str, BridgeStore], cmb: CmbStore, as_of: datetime) -> Row:
    deliveries = [d for d in vtn.deliveries_for_event(event_id) if not d.removed]
    record = vtn.get_event(event_id)
    window = None
    if record is not None:
        period = record.event.active_period
        end = period.end if until is None or (period.end is not None and period.end < until) \
            else until
        window = (period.dtstart, end)
    plans = [r for b in bridges.values() for r in b.plans(event_id=event_id)]
    return _plans_row(label, event_id, plans, bridges, cmb, as_of, vens=len(deliveries),
                      opt_ins=sum(d.opt_type is OptType.OPT_IN for d in deliveries),
                      window=window)


def _plans_row(label: str, event_id: str | None, plans: Sequence[PlanRecord],
               bridges: Mapping[str, BridgeStore], cmb: CmbStore, as_of: datetime, *,
               vens: int, opt_ins: int, window: tuple[datetime, datetime | None] | None) -> Row:
    plans = [r for r in plans if r.created <= as_of]
    sent = Counter(r.device.channel.value for r in plans
                   if r.status in (PlanStatus.DISPATCHED, PlanStatus.SUPERSEDED))
    ids = [r.plan.plan_id for r in plans]
    acked = Counter(o.channel.value for b in bridges.values() for o in b.outcomes(ids)
                    if o.outcome is Outcome.DELIVERED and o.finished_at <= as_of)
    verdicts = [j.verdict for r in plans for j in cmb.verdicts(plan_id=r.plan.plan_id, limit=1)]
    requested = delivered = None
    if window is not None and event_id is not None:
        start, end = window
        means = []
        for b in bridges.values():
            samples = [s for s in b.power(event_id)
                       if start <= s.at and (end is None or s.at < end)]
            if samples:
                means.append((sum(s.requested_kw for s in samples) / len(samples),
                              sum(s.delivered_kw for s in samples) / len(samples)))
        if means:
            requested = round(sum(m[0] for m in means), 1)
            delivered = round(sum(m[1] for m in means), 1)
    return Row(label=label, event_id=event_id, vens=vens, opt_ins=opt_ins,
               devices=len({r.device.device_id for r in plans}),
               acked=dict(sorted(acked.items())), sent=dict(sorted(sent.items())),
               requested_kw=requested,
               delivered_kw=delivered,
               accepted=sum(v.decision is Decision.ACCEPTED for v in verdicts),
               rejected=sum(v.decision is not Decision.ACCEPTED for v in verdicts),
               rules=dict(Counter(f.rule for v in verdicts for f in v.findings)))


def table(summary: Summary) -> str:
    """The summary as a plain-text table, then the CMB's alerts and overrides."""
    head = ("event", "VENs", "opt-in", "devices", "commands acked/sent", "requested kW",
            "delivered kW", "CMB ok/rejected")
    body = [(r.label, str(r.vens), str(r.opt_ins), str(r.devices),
             " ".join(f"{c}:{r.acked.get(c, 0)}/{n}" for c, n in r.sent.items()) or "-",
             _kw(r.requested_kw), _kw(r.delivered_kw), f"{r.accepted}/{r.rejected}"
             + (" (" + ", ".join(f"{rule} {n}" for rule, n in r.rules.items()) + ")"
                if r.rules else ""))
            for r in summary.rows]
    widths = [max(len(x[i]) for x in (head, *body)) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
             for row in (head, tuple("-" * w for w in widths), *body)]
    lines.append("")
    lines.append(f"CMB alerts: {len(summary.alerts)}")
    lines += [f"  {a['monitor']} {a['aggregator'] or a['area']}: {a['value']:.2f} > "
              f"threshold {a['threshold']:.2f}" for a in summary.alerts]
    lines.append(f"CMB overrides: {len(summary.overrides)}")
    lines += [f"  {o['override_id'][:8]} level {o['level']} % by {o['created_by']}, "
              f"{o['status']}, {o['devices']} devices" + "".join(
                  f"; {p} reached {v['reached']} failed {v['failed']}"
                  for p, v in o["paths"].items())
              for o in summary.overrides]
    return "\n".join(lines)


def _kw(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
