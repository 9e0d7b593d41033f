"""The Central Monitoring Body's inline rules: is one submitted plan acceptable (domain.md section 8).

Pure: no I/O, no clock; what the CMB knows (registry, sequences, active overrides) comes in a
`PlanContext`, built once per batch and precomputed so that judging one plan only walks its steps.
Every failed rule gives a `Finding` naming the rule, the numbers and the threshold.

Power is kW of import at the meter (negative: export), as `step_kw` reads a step: CHARGE imports
`power_kw`, DISCHARGE exports it, LIMIT draws at most `level`% of rated import (taken at the cap,
the most it may draw), HOLD idles and BALANCE (self-consumption: spare PV charges, the battery
covers the load) nets to about 0 kW at the meter, so it counts as 0 kW.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from bridge.models import MAX_VALIDITY, Device, Mode, PlanStep
from ven.records import Purpose
from vtn.cmb.records import (Decision, DeviceRegistration, Finding, Override, OverrideStatus,
                             PlanSubmission, StateChange, Verdict)

RULES: Final = ("sender_owns_device", "sequence_increasing", "validity_48h", "steps_contiguous",
                "within_ratings", "ramp_within_limits", "random_start_unless_response",
                "no_step_against_override")
_MINUTE: Final = timedelta(minutes=1)
_EPSILON_KW: Final = 1e-9  # float slack when comparing powers computed from percentages


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleLimits:
    max_validity: timedelta = MAX_VALIDITY
    routine_min_random_delay: timedelta = timedelta(seconds=1)  # "a randomised start is present"
    ramp_tolerance: float = 0.01  # fraction above the registered ramp rate still accepted


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanContext:
    """What the CMB knows when it judges a batch of plans.

    `last_kw` (optional): each device's power at the end of its previous accepted plan, so the
    ramp from it into a new plan's first step is judged too. `overrides` are the active ones,
    `devices` resolved; an override whose `devices` is empty is matched by its target instead.
    """

    registry: Mapping[str, DeviceRegistration]
    last_sequence: Mapping[str, int]
    overrides: Sequence[Override] = ()
    response_programs: frozenset[str] = frozenset()
    limits: RuleLimits = field(default_factory=RuleLimits)
    last_kw: Mapping[str, float] = field(default_factory=dict)
    _overrides_by_device: dict[str, tuple[Override, ...]] = field(
        init=False, repr=False, compare=False)
    _unresolved: tuple[Override, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_device: dict[str, tuple[Override, ...]] = {}
        unresolved: list[Override] = []
        for o in self.overrides:
            if o.status is not OverrideStatus.ACTIVE:
                continue
            if not o.devices:
                unresolved.append(o)
            for d in o.devices:
                by_device[d] = by_device.get(d, ()) + (o,)
        object.__setattr__(self, "_overrides_by_device", by_device)
        object.__setattr__(self, "_unresolved", tuple(unresolved))

    def overrides_for(self, reg: DeviceRegistration) -> tuple[Override, ...]:
        found = self._overrides_by_device.get(reg.device_id, ())
        if self._unresolved:
            found += tuple(o for o in self._unresolved if o.target.matches(reg))
        return found


def step_kw(step: PlanStep, rated_import_kw: float) -> float:
    """The step's power at the meter, kW of import (module docstring)."""
    if step.mode is Mode.CHARGE:
        return step.power_kw or 0.0
    if step.mode is Mode.DISCHARGE:
        return -(step.power_kw or 0.0)
    if step.mode is Mode.LIMIT:
        return rated_import_kw * (step.level or 0) / 100
    return 0.0


@dataclass(slots=True)
class _Subject:
    """One plan under judgement with what every rule reads: the registry's ratings when the
    device is registered (an aggregator's declaration is not trusted), else the declared ones."""

    sub: PlanSubmission
    reg: DeviceRegistration | None
    rated_import_kw: float
    rated_export_kw: float
    max_ramp_kw_per_min: float | None
    powers: list[float]

    @classmethod
    def of(cls, sub: PlanSubmission, ctx: PlanContext) -> _Subject:
        reg = ctx.registry.get(sub.plan.device_id)
        ratings: DeviceRegistration | Device = sub.device if reg is None else reg
        rated = ratings.rated_import_kw
        return cls(sub, reg, rated, ratings.rated_export_kw, ratings.max_ramp_kw_per_min,
                   [step_kw(s, rated) for s in sub.plan.steps])

    @property
    def device_id(self) -> str:
        return self.sub.plan.device_id


def _finding(rule: str, value: float | None, threshold: float | None, detail: str) -> Finding:
    return Finding(rule=rule, value=value, threshold=threshold, detail=detail)


def _sender_owns_device(s: _Subject, ctx: PlanContext) -> Finding | None:
    rule, sub, reg = "sender_owns_device", s.sub, s.reg
    if sub.device.device_id != s.device_id:
        return _finding(rule, None, None, f"plan {sub.plan.plan_id} is for {s.device_id} but "
                        f"declares device {sub.device.device_id}")
    if reg is None:
        return _finding(rule, None, None, f"{s.device_id} is not in the registry")
    if reg.owner != sub.aggregator:
        return _finding(rule, None, None, f"{s.device_id} belongs to {reg.owner}, "
                        f"not to the submitter {sub.aggregator}")
    declared = sub.device
    for what, told, registered in (("rated import", declared.rated_import_kw, reg.rated_import_kw),
                                   ("rated export", declared.rated_export_kw, reg.rated_export_kw)):
        if told > registered + _EPSILON_KW:
            return _finding(rule, told, registered, f"{sub.aggregator} declares {what} "
                            f"{told:g} kW for {s.device_id}, above the registered {registered:g} kW")
    if reg.max_ramp_kw_per_min is not None and (
            declared.max_ramp_kw_per_min is None
            or declared.max_ramp_kw_per_min > reg.max_ramp_kw_per_min + _EPSILON_KW):
        told_ramp = declared.max_ramp_kw_per_min
        return _finding(rule, told_ramp, reg.max_ramp_kw_per_min,
                        f"{sub.aggregator} declares ramp "
                        f"{'unlimited' if told_ramp is None else f'{told_ramp:g} kW/min'} for "
                        f"{s.device_id}, above the registered {reg.max_ramp_kw_per_min:g} kW/min")
    if declared.network_area != reg.network_area:
        return _finding(rule, None, None, f"{sub.aggregator} declares {s.device_id} in network "
                        f"area {declared.network_area}, registered in {reg.network_area}")
    return None


def _sequence_increasing(s: _Subject, ctx: PlanContext) -> Finding | None:
    last = ctx.last_sequence.get(s.device_id)
    sequence = s.sub.plan.sequence
    if last is None or sequence > last:
        return None
    return _finding("sequence_increasing", sequence, last, f"sequence {sequence} is not above "
                    f"{last}, the highest accepted for {s.device_id}")


def _validity_48h(s: _Subject, ctx: PlanContext) -> Finding | None:
    """The plan governs the device from its start (or from receipt, if it starts later) to its
    end: both spans must stay within the limit, and it must not have ended already."""
    plan, received, limit = s.sub.plan, s.sub.received, ctx.limits.max_validity
    if not plan.steps:
        return None  # steps_contiguous reports the empty plan
    hours = limit / timedelta(hours=1)
    if plan.end <= received:
        return _finding("validity_48h", (plan.end - received) / timedelta(hours=1), 0.0,
                        f"plan {plan.plan_id} for {s.device_id} ended at {plan.end:%Y-%m-%d %H:%M},"
                        f" before it was received at {received:%Y-%m-%d %H:%M}")
    span = max(plan.end - plan.start, plan.end - received)
    if span <= limit:
        return None
    return _finding("validity_48h", span / timedelta(hours=1), hours,
                    f"plan {plan.plan_id} for {s.device_id} is valid for "
                    f"{span / timedelta(hours=1):.2f} h, above {hours:g} h")


def _steps_contiguous(s: _Subject, ctx: PlanContext) -> Finding | None:
    steps = s.sub.plan.steps
    if not steps:
        return _finding("steps_contiguous", 0, 1, f"plan {s.sub.plan.plan_id} for {s.device_id} "
                        "has no steps")
    for i, step in enumerate(steps):
        if step.end <= step.start:
            return _finding("steps_contiguous", (step.end - step.start).total_seconds(), 0.0,
                            f"step {i} of {s.device_id}'s plan ends at {step.end:%H:%M:%S}, "
                            f"not after its start {step.start:%H:%M:%S}")
        if i and steps[i - 1].end != step.start:
            gap = (step.start - steps[i - 1].end).total_seconds()
            return _finding("steps_contiguous", gap, 0.0,
                            f"step {i} of {s.device_id}'s plan starts {gap:g} s after step "
                            f"{i - 1} ends (gap or overlap; must be 0 s)")
    return None


def _within_ratings(s: _Subject, ctx: PlanContext) -> Finding | None:
    for i, step in enumerate(s.sub.plan.steps):
        mode = step.mode
        if mode is Mode.LIMIT:
            if step.level is None or not 0 <= step.level <= 100:
                return _finding("within_ratings", step.level, 100,
                                f"step {i} ({mode}) of {s.device_id}'s plan: level {step.level} "
                                "outside 0..100 %")
        elif mode is Mode.CHARGE or mode is Mode.DISCHARGE:
            rated = s.rated_import_kw if mode is Mode.CHARGE else s.rated_export_kw
            power = step.power_kw
            if power is None or not 0 <= power <= rated + _EPSILON_KW:
                return _finding("within_ratings", power, rated,
                                f"step {i} ({mode}) of {s.device_id}'s plan: power {power} kW "
                                f"outside 0..{rated:g} kW rated "
                                f"{'import' if mode is Mode.CHARGE else 'export'}")
    return None


def _ramp_within_limits(s: _Subject, ctx: PlanContext) -> Finding | None:
    """A change of power into a step must be reachable at the device's ramp rate within that
    step: |change| / the step's minutes, from the previous step (or the previous accepted plan's
    last power, when the context has it)."""
    ramp = s.max_ramp_kw_per_min
    if ramp is None:
        return None
    allowed = ramp * (1 + ctx.limits.ramp_tolerance)
    previous = ctx.last_kw.get(s.device_id)
    for i, (step, kw) in enumerate(zip(s.sub.plan.steps, s.powers)):
        if previous is not None and kw != previous and step.end > step.start:
            minutes = (step.end - step.start) / _MINUTE
            rate = abs(kw - previous) / minutes
            if rate > allowed:
                return _finding("ramp_within_limits", rate, ramp,
                                f"step {i} of {s.device_id}'s plan moves {previous:g} -> {kw:g} kW "
                                f"in {minutes:g} min: {rate:.3g} kW/min, above the registered "
                                f"{ramp:g} kW/min")
        previous = kw
    return None


def _random_start_unless_response(s: _Subject, ctx: PlanContext) -> Finding | None:
    """Exempt only response DSR in a program the CMB knows as one: an aggregator cannot skip
    the random delay by calling a routine plan a response."""
    plan, program = s.sub.plan, s.sub.program
    if plan.purpose is Purpose.RESPONSE and program in ctx.response_programs:
        return None
    minimum = ctx.limits.routine_min_random_delay
    if plan.random_delay >= minimum:
        return None
    why = ("routine DSR" if plan.purpose is Purpose.ROUTINE
           else f"program {program} is not a response program")
    return _finding("random_start_unless_response", plan.random_delay.total_seconds(),
                    minimum.total_seconds(),
                    f"{s.device_id}'s plan {plan.plan_id} has a random delay of "
                    f"{plan.random_delay.total_seconds():g} s, under "
                    f"{minimum.total_seconds():g} s ({why})")


def _no_step_against_override(s: _Subject, ctx: PlanContext) -> Finding | None:
    """During an active override covering the device, no step may draw above its cap (level %
    of the registered rated import) and, with energized=False, none may import, export or
    balance (the inverter must not energize)."""
    if s.reg is None:
        return None
    for o in ctx.overrides_for(s.reg):
        cap = s.rated_import_kw * o.level / 100
        for i, (step, kw) in enumerate(zip(s.sub.plan.steps, s.powers)):
            if step.end <= o.start or (o.end is not None and step.start >= o.end):
                continue
            if not o.energized and (kw != 0 or step.mode is Mode.BALANCE):
                return _finding("no_step_against_override", kw, 0.0,
                                f"{_where(i, step, kw)} of {s.device_id}'s plan would energize "
                                f"during override {o.override_id} (cease to energize): must be "
                                "0 kW")
            if kw > cap + _EPSILON_KW:
                return _finding("no_step_against_override", kw, cap,
                                f"{_where(i, step, kw)} of {s.device_id}'s plan draws more than "
                                f"{cap:g} kW, the cap of override {o.override_id} ({o.level} % "
                                f"of {s.rated_import_kw:g} kW rated import)")
    return None


def _where(i: int, step: PlanStep, kw: float) -> str:
    return f"step {i} ({step.mode}, {kw:g} kW from {step.start:%Y-%m-%d %H:%M})"


_CHECKS: Final[tuple[Callable[[_Subject, PlanContext], Finding | None], ...]] = (
    _sender_owns_device, _sequence_increasing, _validity_48h, _steps_contiguous, _within_ratings,
    _ramp_within_limits, _random_start_unless_response, _no_step_against_override)


def check_plan(sub: PlanSubmission, ctx: PlanContext) -> tuple[Finding, ...]:
    """Every failed rule, in `RULES` order, one finding each (the first offending step);
    empty: accepted."""
    subject = _Subject.of(sub, ctx)
    return tuple(f for check in _CHECKS if (f := check(subject, ctx)) is not None)


def verdict(sub: PlanSubmission, ctx: PlanContext, at: datetime) -> Verdict:
    findings = check_plan(sub, ctx)
    return Verdict(plan_id=sub.plan.plan_id, device_id=sub.plan.device_id,
                   aggregator=sub.aggregator, sequence=sub.plan.sequence,
                   decision=Decision.REJECTED if findings else Decision.ACCEPTED,
                   findings=findings, at=at)


def state_changes(sub: PlanSubmission, reg: DeviceRegistration,
                  previous_kw: float) -> list[StateChange]:
    """The plan's steps as planned power changes, from `previous_kw` (the device's power before
    the plan), only where the power changes; each may fall anywhere within the plan's random
    delay. After the last step the device's own behaviour resumes, which no plan says: no
    change is made up for it."""
    changes: list[StateChange] = []
    plan = sub.plan
    for step in plan.steps:
        kw = step_kw(step, reg.rated_import_kw)
        if kw != previous_kw:
            changes.append(StateChange(
                device_id=plan.device_id, aggregator=sub.aggregator, network_area=reg.network_area,
                at=step.start, spread=plan.random_delay, from_kw=previous_kw, to_kw=kw,
                plan_id=plan.plan_id, event_id=plan.event_id, program=sub.program))
            previous_kw = kw
    return changes
