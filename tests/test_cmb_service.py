"""The CMB service over its store (SQLite and PostgreSQL): verdicts and sequences, audit entries,
batch atomicity, detection -> response (proposed and automatic overrides), lifting, restart."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from adrgate.services import make_engine
from bridge.models import Channel, Device, Mode, Plan, PlanStep
from policies.cmb_monitors import MonitorConfig
from ven.fleet import DeviceClass
from ven.records import Purpose
from vtn.cmb.override import PathResult
from vtn.cmb.records import (
    Decision,
    DeviceRegistration,
    DispatchWindow,
    Override,
    OverrideStatus,
    OverrideTarget,
    PlanSubmission,
)
from vtn.cmb.service import Cmb, CmbConfig, StoreFailed
from vtn.cmb.signing import public_pem
from vtn.cmb.store import AggregatorProfile, CmbStore, Release

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)
AGG, OTHER = "agg-a", "agg-b"
PROGRAM = "http://dso.example/programs/flex"
KEY = ec.generate_private_key(ec.SECP256R1())


def registration(device_id: str, owner: str = AGG, **extra: Any) -> DeviceRegistration:
    return DeviceRegistration(device_id=device_id, owner=owner, device_class=DeviceClass.EV,
                              network_area="area-1", channel=Channel.SAPC, reach=f"eui-{device_id}",
                              rated_import_kw=7.0, **extra)


def device(reg: DeviceRegistration) -> Device:
    return Device(device_id=reg.device_id, resource_id="res-1", device_class=reg.device_class,
                  channel=reg.channel, network_area=reg.network_area,
                  rated_import_kw=reg.rated_import_kw, rated_export_kw=reg.rated_export_kw,
                  max_ramp_kw_per_min=reg.max_ramp_kw_per_min)


def plan(device_id: str, sequence: int, *, kw: float = 7.0,
         start: datetime = T0 + timedelta(hours=1), minutes: int = 30,
         delay: timedelta = timedelta(seconds=1), purpose: Purpose = Purpose.ROUTINE,
         event_id: str | None = None, steps: tuple[PlanStep, ...] | None = None) -> Plan:
    return Plan(plan_id=f"{device_id}-{sequence}", device_id=device_id, sequence=sequence,
                issuer=AGG, purpose=purpose, priority=0, random_delay=delay, event_id=event_id,
                steps=steps or (PlanStep(mode=Mode.CHARGE, start=start,
                                         end=start + timedelta(minutes=minutes), power_kw=kw),))


def submission(p: Plan, reg: DeviceRegistration, *, aggregator: str = AGG,
               program: str | None = None, at: datetime = T0) -> PlanSubmission:
    return PlanSubmission(aggregator=aggregator, plan=p, device=device(reg), program=program,
                          received=at)


def path_result(o: Override, action: str, devices: Sequence[DeviceRegistration]) -> PathResult:
    return PathResult(path="sapc", action=action,  # type: ignore[arg-type]
                      override_id=o.override_id, reached=tuple(d.device_id for d in devices),
                      failed={}, error=None, messages=len(devices), started=T0, finished=T0)


@dataclass
class FakeExecutor:
    """Records what the CMB asked of the override paths."""

    calls: list[tuple[str, str, tuple[str, ...], int]] = field(default_factory=list)

    async def apply(self, override: Override,
                    devices: Sequence[DeviceRegistration]) -> list[PathResult]:
        self.calls.append(("apply", override.override_id, tuple(d.device_id for d in devices),
                           override.level))
        return [path_result(override, "apply", devices)]

    async def lift(self, override: Override,
                   devices: Sequence[DeviceRegistration]) -> list[PathResult]:
        self.calls.append(("lift", override.override_id, tuple(d.device_id for d in devices),
                           override.level))
        return [path_result(override, "lift", devices)]


@dataclass
class FakeEvents:
    windows_: list[DispatchWindow] = field(default_factory=list)

    def windows(self) -> list[DispatchWindow]:
        return self.windows_

    def response_programs(self) -> frozenset[str]:
        return frozenset({PROGRAM})


FLEET = [registration(f"ev-{i}") for i in range(4)] + [registration("ev-b", owner=OTHER)]
SENSITIVE = MonitorConfig(min_devices=2, same_minute_share=0.5)


def profile(aggregator: str = AGG, **extra: Any) -> AggregatorProfile:
    return AggregatorProfile(aggregator=aggregator, public_key=public_pem(KEY), **extra)


@pytest.fixture
def store(database_url: str) -> Iterator[CmbStore]:
    s = CmbStore(make_engine(database_url))
    s.create_schema()
    yield s
    s.engine.dispose()


def make_cmb(store: CmbStore, *, auto: tuple[str, ...] = (), executor: FakeExecutor | None = None,
             events: FakeEvents | None = None, wait_programs: tuple[str, ...] = ()) -> Cmb:
    cmb = Cmb(store, executor=executor or FakeExecutor(), events=events or FakeEvents(),
              config=CmbConfig(monitors=SENSITIVE), new_id=iter(
                  f"id-{i}" for i in range(1000)).__next__)
    cmb.register_aggregator(profile(auto_response=auto, override_level=10,
                                    wait_programs=wait_programs), "operator", T0)
    cmb.register_aggregator(profile(OTHER), "operator", T0)
    cmb.put_devices(FLEET, "operator", T0)
    return cmb


async def test_accepted_plans_advance_the_sequence_and_are_audited(store: CmbStore) -> None:
    cmb = make_cmb(store)
    [first] = await cmb.submit([submission(plan("ev-0", 1), FLEET[0])], T0)
    assert first.verdict.decision is Decision.ACCEPTED and first.verdict.findings == ()
    assert store.sequences() == {"ev-0": 1}
    # the same plan again is a replay; a rollback to an older sequence too
    replay, older = await cmb.submit([submission(plan("ev-0", 1), FLEET[0]),
                                      submission(plan("ev-0", 0), FLEET[0])], T0)
    for j in (replay, older):
        assert j.verdict.decision is Decision.REJECTED
        assert [f.rule for f in j.verdict.findings] == ["sequence_increasing"]
    assert store.sequences() == {"ev-0": 1}
    audit = store.audit(subject="ev-0-1")
    assert [(e.action, e.actor) for e in audit] == [("plan_accepted", AGG), ("plan_rejected", AGG)]
    assert audit[1].detail["findings"][0]["rule"] == "sequence_increasing"
    assert [j.verdict.plan_id for j in store.verdicts(device_id="ev-0")] == [
        "ev-0-0", "ev-0-1", "ev-0-1"]


async def test_a_batch_is_judged_in_order(store: CmbStore) -> None:
    cmb = make_cmb(store)
    judged = await cmb.submit([submission(plan("ev-1", 5), FLEET[1]),
                               submission(plan("ev-1", 5), FLEET[1]),
                               submission(plan("ev-1", 6), FLEET[1]),
                               submission(plan("ev-b", 1), FLEET[4])], T0)
    assert [j.verdict.decision for j in judged] == [
        Decision.ACCEPTED, Decision.REJECTED, Decision.ACCEPTED, Decision.REJECTED]
    assert [f.rule for f in judged[3].verdict.findings] == ["sender_owns_device"]
    assert store.sequences() == {"ev-1": 6}


async def test_a_batch_that_cannot_be_written_leaves_nothing(
        store: CmbStore, monkeypatch: pytest.MonkeyPatch) -> None:
    cmb = make_cmb(store)
    batch = [submission(plan(r.device_id, 1), r) for r in FLEET[:2]]

    def broken(*args: Any) -> None:
        raise RuntimeError("disk full")

    before = len(store.audit())
    monkeypatch.setattr(store, "_add_alerts", broken)  # fails inside the batch's transaction
    with pytest.raises(StoreFailed):
        await cmb.submit(batch, T0)
    monkeypatch.undo()
    assert store.verdicts() == [] and store.sequences() == {} and len(store.audit()) == before
    # memory was not advanced either: the same plans are accepted when submitted again
    judged = await cmb.submit(batch, T0)
    assert {j.verdict.decision for j in judged} == {Decision.ACCEPTED}
    assert store.sequences() == {"ev-0": 1, "ev-1": 1}


async def synchronous_switch(cmb: Cmb, sequence: int = 1) -> list[Any]:
    """Every device of agg-a charging at the same second: a compromised aggregator."""
    return await cmb.submit([submission(plan(r.device_id, sequence), r) for r in FLEET[:4]], T0)


async def test_an_alert_proposes_an_override_for_the_operator(store: CmbStore) -> None:
    executor = FakeExecutor()
    cmb = make_cmb(store, executor=executor)
    await synchronous_switch(cmb)
    [alert] = [a for a in store.alerts() if a.monitor == "same_minute_share"]
    assert alert.aggregator == AGG and alert.value > alert.threshold
    [proposed] = cmb.overrides(OverrideStatus.PROPOSED)
    o = proposed.override
    assert o.target.aggregator == AGG and o.created_by == f"auto:{alert.alert_id}"
    assert executor.calls == [] and cmb.active_overrides == ()
    actions = [e.action for e in store.audit() if e.actor == "cmb"]
    assert "alert" in actions and "override_proposed" in actions
    # the operator applies it: every agg-a device is capped through the paths
    applied = await cmb.approve(o.override_id, "operator", T0 + timedelta(minutes=1))
    assert applied.override.status is OverrideStatus.ACTIVE
    assert executor.calls == [("apply", o.override_id, ("ev-0", "ev-1", "ev-2", "ev-3"), 10)]
    assert applied.results[0]["reached"] == ["ev-0", "ev-1", "ev-2", "ev-3"]


async def test_an_alert_applies_an_override_at_once_where_configured(store: CmbStore) -> None:
    executor = FakeExecutor()
    cmb = make_cmb(store, auto=("same_minute_share",), executor=executor)
    await synchronous_switch(cmb)
    await cmb.settle()
    [active] = cmb.overrides(OverrideStatus.ACTIVE)
    o = active.override
    assert o.devices == ("ev-0", "ev-1", "ev-2", "ev-3") and o.level == 10
    assert executor.calls == [("apply", o.override_id, o.devices, 10)]
    assert [r["path"] for r in active.results] == ["sapc"]
    # while it is in force no agg-a plan may draw above 10 % of rated; agg-b is not capped
    capped, free = await cmb.submit([submission(plan("ev-0", 2), FLEET[0]),
                                     submission(plan("ev-b", 1), FLEET[4], aggregator=OTHER)], T0)
    assert [f.rule for f in capped.verdict.findings] == ["no_step_against_override"]
    assert free.verdict.decision is Decision.ACCEPTED
    actions = [e.action for e in store.audit(subject=o.override_id)]
    assert actions == ["override_applied", "override_paths"]
    # lifting restores the plans
    lifted = await cmb.lift(o.override_id, "operator", T0 + timedelta(minutes=5))
    assert lifted.override.status is OverrideStatus.LIFTED
    assert executor.calls[-1] == ("lift", o.override_id, o.devices, 10)
    [after] = await cmb.submit([submission(plan("ev-0", 3), FLEET[0])], T0)
    assert after.verdict.decision is Decision.ACCEPTED
    assert store.audit(subject=o.override_id)[-1].action == "override_lifted"


async def test_a_restarted_cmb_remembers_sequences_and_overrides(store: CmbStore) -> None:
    cmb = make_cmb(store)
    await cmb.submit([submission(plan("ev-0", 4), FLEET[0])], T0)
    entry = await cmb.create_override(target=OverrideTarget(devices=("ev-1",)), level=0,
                                      actor="operator", now=T0)
    again = Cmb(store, config=CmbConfig(monitors=SENSITIVE))
    replay, capped = await again.submit([submission(plan("ev-0", 4), FLEET[0]),
                                         submission(plan("ev-1", 1), FLEET[1])], T0)
    assert [f.rule for f in replay.verdict.findings] == ["sequence_increasing"]
    assert [f.rule for f in capped.verdict.findings] == ["no_step_against_override"]
    assert [o.override_id for o in again.active_overrides] == [entry.override.override_id]


async def test_response_plans_in_a_dispatched_window_are_released_at_once(
        store: CmbStore) -> None:
    window = DispatchWindow(event_id="ev-1", program=PROGRAM, start=T0, end=T0 + timedelta(hours=2))
    response = plan("ev-0", 1, purpose=Purpose.RESPONSE, event_id="ev-1",
                    delay=timedelta(0))
    routine = plan("ev-1", 1)
    outside = plan("ev-2", 1, purpose=Purpose.RESPONSE, event_id="ev-1", delay=timedelta(0),
                   start=T0 + timedelta(hours=3))
    cmb = make_cmb(store, events=FakeEvents([window]))
    judged = await cmb.submit([submission(response, FLEET[0], program=PROGRAM),
                               submission(routine, FLEET[1]),
                               submission(outside, FLEET[2], program=PROGRAM)], T0)
    assert [j.release for j in judged] == [Release.IMMEDIATE, Release.AFTER_VERDICT,
                                           Release.AFTER_VERDICT]
    assert judged[0].verdict.decision is Decision.ACCEPTED  # no random delay needed
    # the aggregator's policy may hold the program's plans back until their verdict
    held = make_cmb(store, events=FakeEvents([window]), wait_programs=(PROGRAM,))
    [j] = await held.submit([submission(plan("ev-0", 2, purpose=Purpose.RESPONSE,
                                             event_id="ev-1", delay=timedelta(0)),
                                        FLEET[0], program=PROGRAM)], T0)
    assert j.release is Release.AFTER_VERDICT


async def test_an_override_cannot_be_lifted_twice_or_found_if_unknown(store: CmbStore) -> None:
    from vtn.cmb.service import Conflict, NotFound

    cmb = make_cmb(store)
    entry = await cmb.create_override(target=OverrideTarget(network_area="area-1"), level=50,
                                      actor="operator", now=T0)
    assert entry.override.devices == tuple(r.device_id for r in FLEET)
    await cmb.lift(entry.override.override_id, "operator", T0)
    with pytest.raises(Conflict):
        await cmb.lift(entry.override.override_id, "operator", T0)
    with pytest.raises(NotFound):
        await cmb.approve("nope", "operator", T0)
    with pytest.raises(ValueError):
        await cmb.create_override(target=OverrideTarget(aggregator=AGG), level=101,
                                  actor="operator", now=T0)


async def test_a_time_based_alert_about_an_area_caps_the_area_where_configured(
        store: CmbStore) -> None:
    executor = FakeExecutor()
    cmb = Cmb(store, executor=executor, config=CmbConfig(
        monitors=MonitorConfig(area_headroom_kw={"area-1": 10.0}),
        area_auto_response=("area_headroom",), area_override_level=30))
    cmb.register_aggregator(profile(), "operator", T0)
    cmb.put_devices(FLEET, "operator", T0)
    await cmb.submit([submission(plan(r.device_id, 1), r) for r in FLEET[:2]], T0)
    assert await cmb.tick(T0 + timedelta(minutes=30)) == []  # before the plans: 0 kW scheduled
    [alert] = await cmb.tick(T0 + timedelta(hours=1, minutes=5))
    assert alert.monitor == "area_headroom" and alert.value == 14.0
    await cmb.settle()
    [active] = cmb.overrides(OverrideStatus.ACTIVE)
    assert active.override.target.network_area == "area-1" and active.override.level == 30
    assert executor.calls == [("apply", active.override.override_id,
                               tuple(r.device_id for r in FLEET), 30)]
    assert [e.action for e in store.audit() if e.actor == "cmb"] == [
        "alert", "override_applied", "override_paths"]


async def test_an_automatic_override_reaches_the_devices_the_alert_names_first(
        store: CmbStore) -> None:
    executor = FakeExecutor()
    cmb = make_cmb(store, auto=("same_minute_share",), executor=executor)
    # three of agg-a's four devices switch in the same second; ev-0 is not among them
    await cmb.submit([submission(plan(r.device_id, 1), r) for r in FLEET[1:4]], T0)
    await cmb.settle()
    [alert] = [a for a in store.alerts() if a.monitor == "same_minute_share"]
    assert set(alert.devices) == {"ev-1", "ev-2", "ev-3"}
    [active] = cmb.overrides(OverrideStatus.ACTIVE)
    assert active.override.devices[-1] == "ev-0"  # the whole aggregator, suspects first
    assert set(active.override.devices[:3]) == set(alert.devices)


async def test_an_override_whose_window_ended_is_marked_lifted_on_the_next_tick(
        store: CmbStore) -> None:
    executor = FakeExecutor()
    cmb = make_cmb(store, executor=executor)
    entry = await cmb.create_override(target=OverrideTarget(devices=("ev-1",)), level=0,
                                      actor="operator", now=T0, end=T0 + timedelta(minutes=30))
    await cmb.tick(T0 + timedelta(minutes=29))
    assert [o.override_id for o in cmb.active_overrides] == [entry.override.override_id]
    await cmb.tick(T0 + timedelta(minutes=31))
    assert cmb.active_overrides == ()
    [ended] = cmb.overrides(OverrideStatus.LIFTED)
    assert ended.override.lifted == T0 + timedelta(minutes=30)
    assert store.audit(subject=entry.override.override_id)[-1].action == "override_lifted"
    assert [c[0] for c in executor.calls] == ["apply"]  # nothing to send: the devices let go
