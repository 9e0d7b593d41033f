"""The bridge store keeps every plan (dispatched or refused, with reasons) and every outcome, on
SQLite and PostgreSQL, beside the fleet's tables."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from sqlmodel import create_engine

from bridge.models import Mode
from bridge.channel import Delivery
from bridge.models import Channel
from bridge.store import BridgeStore, PlanRecord, PlanStatus
from bridge.streams import DispatchResult, Outcome
from tests.test_bridge_models import BATTERY, HEATER, T0, plan, step
from ven.store import FleetStore

H = timedelta(hours=1)


def test_plans_and_outcomes_round_trip(database_url: str) -> None:
    engine = create_engine(database_url)
    FleetStore(engine)  # the fleet's tables and the bridge's live side by side
    store = BridgeStore(engine)
    charge = plan(step(Mode.CHARGE, 0, 2, power_kw=4.0), event_id="ev-1", sequence=3)
    limit = plan(step(Mode.LIMIT, 0, 1, level=30), device="hw-1", plan_id="p2", event_id="ev-1",
                 sequence=8)
    refused = plan(step(Mode.DISCHARGE, 0, 1, power_kw=9.0), plan_id="p3", event_id="ev-2",
                   sequence=4)
    records = [
        PlanRecord(plan=charge, device=BATTERY, status=PlanStatus.DISPATCHED, created=T0,
                   requested_kw=-4.0),
        PlanRecord(plan=limit, device=HEATER, status=PlanStatus.DISPATCHED, created=T0),
        PlanRecord(plan=refused, device=BATTERY, status=PlanStatus.REFUSED, created=T0,
                   reasons=("step 0 (discharge): power 9.0 kW outside 0..5 kW rated export",)),
    ]
    store.save_plans(records)
    assert store.plans(event_id="ev-1") == records[:2]
    assert store.plans(status=PlanStatus.REFUSED) == records[2:]
    assert store.plans(ending_after=T0 + H) == [records[0]]
    assert store.last_sequences() == {"bat-1": 4, "hw-1": 8}
    superseded = dataclasses.replace(records[0], status=PlanStatus.SUPERSEDED)
    store.save_plans([superseded])
    assert store.plans(device_id="bat-1") == [superseded, records[2]]

    delivered = DispatchResult(
        key="p1#3#plan", plan_id="p1", device_id="bat-1", event_id="ev-1",
        channel=Channel.BATTERY_HUB, outcome=Outcome.DELIVERED, attempts=2, entry_id="1-0",
        enqueued_at=T0, finished_at=T0 + H,
        delivery=Delivery(key="p1#3#plan", plan_id="p1", device_id="bat-1",
                          channel=Channel.BATTERY_HUB, messages=2, sent_at=T0, acked_at=T0 + H,
                          detail="plan p1 accepted"))
    lost = DispatchResult(
        key="p2#8#plan", plan_id="p2", device_id="hw-1", event_id="ev-1", channel=Channel.SAPC,
        outcome=Outcome.UNAVAILABLE, attempts=1, entry_id="2-0", enqueued_at=T0,
        finished_at=T0 + 2 * H, reason="timeout")
    store.record_outcomes([lost, delivered])
    store.record_outcomes([lost])  # read again after a restart: stored once
    assert store.outcomes(["p1", "p2"]) == [delivered, lost]
    assert store.outcomes(["p2"]) == [lost]
    # entry ids repeat across channels' streams: a SAPC entry "1-0" is not the hub's "1-0"
    same_entry = dataclasses.replace(lost, entry_id="1-0")
    store.record_outcomes([same_entry])
    assert store.outcomes(["p1", "p2"]) == [delivered, same_entry, lost]
    reopened = BridgeStore(create_engine(database_url))
    assert reopened.plans(event_id="ev-1")[1] == records[1]


def test_planned_signals_are_kept_until_released(database_url: str) -> None:
    from tests.test_policy_ladder import simple

    store = BridgeStore(create_engine(database_url))
    first, modified = simple(2), dataclasses.replace(simple(3), modification_number=3)
    store.save_signal("agg", first, ["hw-1", "hw-2"])
    store.save_signal("agg", modified, ["hw-1"])
    store.save_signal("agg", first, ["hw-1", "hw-2", "hw-3"])  # re-dispatch brought one in
    assert sorted(store.signals(), key=lambda r: r[1].modification_number) == [
        ("agg", first, ("hw-1", "hw-2", "hw-3")), ("agg", modified, ("hw-1",))]
    store.forget_signal("agg", first)
    assert store.signals() == [("agg", modified, ("hw-1",))]
