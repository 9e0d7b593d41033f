"""`adrgate trace EVENT_ID`: the path of one event from the VTN to the devices and back.

Read from the aggregator side's database (the fleet's tables and the bridge's): which VENs hold
the event and how they answered, the plan each device got (and plans refused, with reasons), what
each channel did with it (messages, acknowledgement, or why not), and the power the event asked
for against what the devices showed. The VTN's own view (delivery per VEN) is added by the
command line when a VTN API is given.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ven.store import FleetStore

from .store import BridgeStore, PlanRecord
from .streams import DispatchResult


@dataclass(frozen=True, slots=True, kw_only=True)
class Trace:
    event_id: str
    vens: list[dict[str, Any]]
    plans: list[dict[str, Any]]
    channels: dict[str, dict[str, int]]
    power: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "vens": self.vens, "plans": self.plans,
                "channels": self.channels, "power": self.power}


def trace(event_id: str, fleet: FleetStore, bridge: BridgeStore) -> Trace:
    vens = []
    for name, snapshot in sorted(fleet.load_all().items()):
        held = snapshot.events.get(event_id)
        if held is not None:
            vens.append({
                "ven": name, "modification_number": held.event.modification_number,
                "received": _time(held.received), "opt": held.opt.value,
                "opt_reason": held.opt_reason, "response_code": held.response_code,
                "acknowledged": held.answered_mod == held.event.modification_number,
                "start_offsets": {r: d.total_seconds() for r, d in held.start_offsets}})
    records = bridge.plans(event_id=event_id)
    outcomes: dict[str, list[DispatchResult]] = {}
    for o in bridge.outcomes([r.plan.plan_id for r in records]):
        outcomes.setdefault(o.plan_id, []).append(o)
    channels: dict[str, Counter[str]] = {}
    for r in records:
        counts = channels.setdefault(r.device.channel.value, Counter())
        counts[f"plans_{r.status.value}"] += 1
        for o in outcomes.get(r.plan.plan_id, ()):
            counts[o.outcome.value] += 1
            counts["messages"] += o.delivery.messages if o.delivery is not None else 0
    return Trace(
        event_id=event_id, vens=vens,
        plans=[_plan(r, outcomes.get(r.plan.plan_id, [])) for r in records],
        channels={c: dict(sorted(n.items())) for c, n in sorted(channels.items())},
        power=[{"at": _time(p.at), "requested_kw": round(p.requested_kw, 3),
                "delivered_kw": round(p.delivered_kw, 3), "devices": p.devices,
                "online": p.online} for p in bridge.power(event_id)])


def _plan(r: PlanRecord, outcomes: list[DispatchResult]) -> dict[str, Any]:
    return {
        "device": r.device.device_id, "channel": r.device.channel.value,
        "address": r.device.reach, "plan_id": r.plan.plan_id, "sequence": r.plan.sequence,
        "status": r.status.value, "reasons": list(r.reasons), "created": _time(r.created),
        "purpose": r.plan.purpose.value, "random_delay_s": r.plan.random_delay.total_seconds(),
        "requested_kw": r.requested_kw,
        "steps": [{"mode": s.mode.value, "start": _time(s.start), "end": _time(s.end),
                   **({"level": s.level} if s.level is not None else {}),
                   **({"power_kw": s.power_kw} if s.power_kw is not None else {})}
                  for s in r.plan.steps],
        "outcomes": [_outcome(o) for o in outcomes],
    }


def _outcome(o: DispatchResult) -> dict[str, Any]:
    out = {"key": o.key, "outcome": o.outcome.value, "attempts": o.attempts,
           "enqueued": _time(o.enqueued_at), "finished": _time(o.finished_at)}
    if o.delivery is None:
        return out | {"reason": o.reason}
    d = o.delivery
    return out | {"messages": d.messages, "sent": _time(d.sent_at),
                  "acknowledged": _time(d.acked_at), "detail": d.detail}


def _time(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


