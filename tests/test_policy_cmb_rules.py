"""The CMB's inline rules: each one rejects the plan that breaks it, and only that one, with the
numbers and the threshold; the plans beside it that keep the rule pass."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from bridge.models import Channel, Device, Mode, Plan, PlanStep
from policies.cmb_rules import (RULES, PlanContext, RuleLimits, check_plan, state_changes,
                                step_kw, verdict)
from ven.fleet import DeviceClass
from ven.records import Purpose
from vtn.cmb.records import (Decision, DeviceRegistration, Finding, Override, OverrideStatus,
                             OverrideTarget, PlanSubmission)

T0 = datetime(2026, 11, 27, 17, tzinfo=UTC)
HALF_HOUR = timedelta(minutes=30)
REG = DeviceRegistration(device_id="dev-1", owner="agg-a", device_class=DeviceClass.BATTERY,
                         network_area="area-1", channel=Channel.BATTERY_HUB, reach="hub/dev-1",
                         rated_import_kw=5.0, rated_export_kw=5.0, max_ramp_kw_per_min=1.0)
DEVICE = Device(device_id="dev-1", resource_id="fleet", device_class=DeviceClass.BATTERY,
                channel=Channel.BATTERY_HUB, network_area="area-1", rated_import_kw=5.0,
                rated_export_kw=5.0, capacity_kwh=10.0, max_ramp_kw_per_min=1.0)


def steps(*modes: tuple[Mode, float | None], start: datetime = T0,
          length: timedelta = HALF_HOUR) -> tuple[PlanStep, ...]:
    return tuple(PlanStep(mode=m, start=start + i * length, end=start + (i + 1) * length,
                          power_kw=None if m is Mode.LIMIT else p,
                          level=int(p) if m is Mode.LIMIT and p is not None else None)
                 for i, (m, p) in enumerate(modes))


def submission(plan_steps: tuple[PlanStep, ...] | None = None, *, sequence: int = 8,
               purpose: Purpose = Purpose.ROUTINE, delay: timedelta = timedelta(seconds=300),
               aggregator: str = "agg-a", program: str | None = "agile",
               device: Device = DEVICE, received: datetime = T0 - HALF_HOUR) -> PlanSubmission:
    plan = Plan(plan_id=f"p{sequence}", device_id="dev-1", sequence=sequence, issuer="agg-a",
                purpose=purpose, priority=0, random_delay=delay,
                steps=plan_steps if plan_steps is not None else steps((Mode.CHARGE, 3.0), (Mode.HOLD, None),
                                          (Mode.DISCHARGE, 4.0)))
    return PlanSubmission(aggregator=aggregator, plan=plan, device=device, program=program,
                          received=received)


def context(**changes: object) -> PlanContext:
    base: dict[str, object] = {"registry": {"dev-1": REG}, "last_sequence": {"dev-1": 7},
                               "response_programs": frozenset({"dfs"})}
    return PlanContext(**(base | changes))  # type: ignore[arg-type]


def failed(sub: PlanSubmission, ctx: PlanContext | None = None) -> dict[str, Finding]:
    return {f.rule: f for f in check_plan(sub, ctx or context())}


def test_a_sound_plan_passes_every_rule_and_is_accepted() -> None:
    sub = submission()
    assert check_plan(sub, context()) == ()
    v = verdict(sub, context(), T0)
    assert (v.decision, v.findings, v.plan_id, v.sequence) == (Decision.ACCEPTED, (), "p8", 8)
    assert len(RULES) == 8


def test_sender_must_own_the_registered_device() -> None:
    stranger = failed(submission(aggregator="agg-b"))
    assert set(stranger) == {"sender_owns_device"}
    assert "belongs to agg-a, not to the submitter agg-b" in stranger["sender_owns_device"].detail
    unknown = failed(submission(), context(registry={}))
    assert "not in the registry" in unknown["sender_owns_device"].detail


@pytest.mark.parametrize("lie, words", [
    ({"rated_import_kw": 7.0}, "rated import 7 kW for dev-1, above the registered 5 kW"),
    ({"rated_export_kw": 9.0}, "rated export 9 kW for dev-1, above the registered 5 kW"),
    ({"max_ramp_kw_per_min": None}, "ramp unlimited for dev-1, above the registered 1 kW/min"),
    ({"network_area": "area-9"}, "in network area area-9, registered in area-1"),
])
def test_a_lying_aggregator_declaring_more_than_the_registry_is_caught(
        lie: dict[str, object], words: str) -> None:
    found = failed(submission(device=dataclasses.replace(DEVICE, **lie)))  # type: ignore[arg-type]
    assert set(found) == {"sender_owns_device"}
    assert words in found["sender_owns_device"].detail


def test_declaring_less_than_the_registry_is_fine() -> None:
    modest = dataclasses.replace(DEVICE, rated_import_kw=4.0, max_ramp_kw_per_min=0.5)
    assert failed(submission(device=modest)) == {}


@pytest.mark.parametrize("sequence", [7, 3])
def test_a_replayed_or_rolled_back_sequence_is_rejected(sequence: int) -> None:
    f = failed(submission(sequence=sequence))["sequence_increasing"]
    assert (f.value, f.threshold) == (sequence, 7)
    assert f.detail == f"sequence {sequence} is not above 7, the highest accepted for dev-1"
    assert verdict(submission(sequence=sequence), context(), T0).decision is Decision.REJECTED


def test_the_first_plan_of_a_device_needs_no_earlier_sequence() -> None:
    assert failed(submission(sequence=1), context(last_sequence={})) == {}


def test_validity_above_48_hours_is_rejected() -> None:
    long = steps(*[(Mode.HOLD, None)] * 97)  # 48.5 h
    f = failed(submission(long, received=T0))["validity_48h"]
    assert (f.value, f.threshold) == (48.5, 48.0)
    assert "valid for 48.50 h, above 48 h" in f.detail
    assert failed(submission(long[:96], received=T0)) == {}  # exactly 48 h


def test_a_plan_reaching_beyond_48_hours_from_receipt_or_already_over_is_rejected() -> None:
    later = steps(*[(Mode.HOLD, None)] * 3, start=T0 + timedelta(hours=47))
    f = failed(submission(later, received=T0))["validity_48h"]
    assert f.value == 48.5 and f.threshold == 48
    assert failed(submission(later[:2], received=T0)) == {}
    over = failed(submission(received=T0 + timedelta(hours=2)))["validity_48h"]
    assert over.value == -0.5 and "before it was received" in over.detail


def test_gaps_overlaps_and_empty_plans_break_contiguity() -> None:
    first, second, third = steps((Mode.CHARGE, 3.0), (Mode.HOLD, None), (Mode.CHARGE, 3.0))
    gap = (first, third)
    f = failed(submission(gap))["steps_contiguous"]
    assert f.value == 1800 and f.threshold == 0 and "starts 1800 s after step 0 ends" in f.detail
    backwards = dataclasses.replace(second, end=second.start)
    assert failed(submission((first, backwards)))["steps_contiguous"].value == 0
    assert "has no steps" in failed(submission(()))["steps_contiguous"].detail


@pytest.mark.parametrize("step, rated, words", [
    ((Mode.CHARGE, 6.0), 5.0, "power 6.0 kW outside 0..5 kW rated import"),
    ((Mode.DISCHARGE, 5.5), 5.0, "power 5.5 kW outside 0..5 kW rated export"),
    ((Mode.CHARGE, None), 5.0, "power None kW"),
    ((Mode.LIMIT, 120), 100, "level 120 outside 0..100 %"),
])
def test_power_beyond_the_registered_rating_is_rejected(
        step: tuple[Mode, float | None], rated: float, words: str) -> None:
    f = failed(submission(steps((Mode.HOLD, None), step)))["within_ratings"]
    assert f.threshold == rated and words in f.detail


def test_ratings_come_from_the_registry_not_the_declaration() -> None:
    """The aggregator says 8 kW; the registry says 5 kW: a 6 kW step is refused on both counts."""
    inflated = dataclasses.replace(DEVICE, rated_import_kw=8.0)
    found = failed(submission(steps((Mode.CHARGE, 6.0)), device=inflated))
    assert set(found) == {"sender_owns_device", "within_ratings"}
    assert found["within_ratings"].threshold == 5.0


def test_a_ramp_faster_than_registered_is_rejected() -> None:
    """0 -> 5 kW within a 2-minute step is 2.5 kW/min against 1 kW/min."""
    fast = steps((Mode.HOLD, None), (Mode.CHARGE, 5.0), length=timedelta(minutes=2))
    f = failed(submission(fast))["ramp_within_limits"]
    assert (f.value, f.threshold) == (2.5, 1.0)
    assert "0 -> 5 kW in 2 min: 2.5 kW/min, above the registered 1 kW/min" in f.detail
    slow = steps((Mode.HOLD, None), (Mode.CHARGE, 5.0), length=timedelta(minutes=5))
    assert failed(submission(slow)) == {}


def test_the_ramp_from_the_previous_accepted_plan_counts_when_known() -> None:
    sub = submission(steps((Mode.DISCHARGE, 5.0), length=timedelta(minutes=4)))
    assert failed(sub) == {}
    f = failed(sub, context(last_kw={"dev-1": 5.0}))["ramp_within_limits"]
    assert f.value == pytest.approx(2.5)


def test_a_device_without_ramp_limit_may_step_at_once() -> None:
    reg = dataclasses.replace(REG, max_ramp_kw_per_min=None)
    fast = steps((Mode.HOLD, None), (Mode.CHARGE, 5.0), length=timedelta(minutes=1))
    assert failed(submission(fast), context(registry={"dev-1": reg})) == {}


def test_routine_plans_need_a_random_start_and_only_known_response_programs_skip_it() -> None:
    f = failed(submission(delay=timedelta(0)))["random_start_unless_response"]
    assert (f.value, f.threshold) == (0, 1) and "routine DSR" in f.detail
    assert failed(submission(delay=timedelta(0), purpose=Purpose.RESPONSE, program="dfs")) == {}
    sham = failed(submission(delay=timedelta(0), purpose=Purpose.RESPONSE, program="agile"))
    assert "program agile is not a response program" in sham[
        "random_start_unless_response"].detail


def _override(**changes: object) -> Override:
    base: dict[str, object] = {
        "override_id": "ov-1", "target": OverrideTarget(aggregator="agg-a"), "level": 40,
        "start": T0 + HALF_HOUR, "end": T0 + 2 * HALF_HOUR, "devices": ("dev-1",)}
    return Override(**(base | changes))  # type: ignore[arg-type]


def test_a_step_drawing_above_an_active_override_cap_is_rejected() -> None:
    """Cap: 40 % of 5 kW rated = 2 kW, from 17:30 to 18:00: charging 3 kW then is refused."""
    ctx = context(overrides=(_override(),))
    plan = steps((Mode.HOLD, None), (Mode.CHARGE, 3.0), (Mode.CHARGE, 5.0))
    f = failed(submission(plan), ctx)["no_step_against_override"]
    assert (f.value, f.threshold) == (3.0, 2.0)
    assert "step 1" in f.detail and "40 % of 5 kW rated import" in f.detail
    assert failed(submission(steps((Mode.HOLD, None), (Mode.CHARGE, 2.0), (Mode.CHARGE, 5.0))),
                  ctx) == {}
    assert failed(submission(steps((Mode.HOLD, None), (Mode.LIMIT, 60))), ctx)[
        "no_step_against_override"].value == 3.0


def test_an_override_only_bites_in_its_window_on_its_devices_while_active() -> None:
    plan = submission(steps((Mode.CHARGE, 5.0), (Mode.HOLD, None), (Mode.CHARGE, 5.0)))
    for ov in (_override(), _override(devices=("dev-2",)),
               _override(level=100, start=T0),
               _override(start=T0, status=OverrideStatus.LIFTED)):
        assert failed(plan, context(overrides=(ov,))) == {}, ov


def test_an_unresolved_override_is_matched_by_its_target() -> None:
    ov = _override(devices=(), start=T0)
    assert "no_step_against_override" in failed(submission(), context(overrides=(ov,)))
    elsewhere = _override(devices=(), start=T0, target=OverrideTarget(network_area="area-2"))
    assert failed(submission(), context(overrides=(elsewhere,))) == {}


def test_cease_to_energize_forbids_any_import_export_or_balance() -> None:
    ctx = context(overrides=(_override(energized=False, level=100, end=None),))
    discharging = failed(submission(steps((Mode.HOLD, None), (Mode.DISCHARGE, 1.0))), ctx)
    f = discharging["no_step_against_override"]
    assert (f.value, f.threshold) == (-1.0, 0.0) and "would energize" in f.detail
    assert "no_step_against_override" in failed(
        submission(steps((Mode.HOLD, None), (Mode.BALANCE, None))), ctx)
    assert failed(submission(steps((Mode.CHARGE, 3.0), (Mode.HOLD, None))), ctx) == {}


def test_every_failed_rule_is_listed_in_rules_order() -> None:
    bad = submission(steps((Mode.CHARGE, 9.0), length=timedelta(minutes=1)), sequence=2,
                     delay=timedelta(0))
    rules = [f.rule for f in check_plan(bad, context(last_kw={"dev-1": 0.0}))]
    assert rules == ["sequence_increasing", "within_ratings", "ramp_within_limits",
                     "random_start_unless_response"]
    assert verdict(bad, context(), T0).decision is Decision.REJECTED


def test_limits_are_configurable() -> None:
    strict = context(limits=RuleLimits(routine_min_random_delay=timedelta(seconds=600)))
    assert failed(submission(), strict)["random_start_unless_response"].threshold == 600


def test_state_changes_are_the_plan_power_changes() -> None:
    plan = steps((Mode.CHARGE, 3.0), (Mode.CHARGE, 3.0), (Mode.LIMIT, 20), (Mode.BALANCE, None),
                 (Mode.DISCHARGE, 2.0))
    sub = submission(plan)
    changes = state_changes(sub, REG, previous_kw=0.0)
    assert [(c.at, c.from_kw, c.to_kw) for c in changes] == [
        (plan[0].start, 0.0, 3.0), (plan[2].start, 3.0, 1.0), (plan[3].start, 1.0, 0.0),
        (plan[4].start, 0.0, -2.0)]
    assert {(c.spread, c.aggregator, c.network_area, c.program) for c in changes} == {
        (timedelta(seconds=300), "agg-a", "area-1", "agile")}
    assert state_changes(sub, REG, previous_kw=3.0)[0].at == plan[2].start
    assert step_kw(plan[2], 5.0) == 1.0
