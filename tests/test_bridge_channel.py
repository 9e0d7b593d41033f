"""The channel contract: dispatches survive a round trip through JSON, and the device side's
command book says which command is in force."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from bridge.channel import (
    Command, CommandBook, Dispatch, Setpoint, decode_dispatch, encode_dispatch)
from bridge.models import Mode
from tests.test_bridge_models import BATTERY, HEATER, T0, plan, step

H = timedelta(hours=1)


def command(source: str, start: int, end: int | None, level: int, *, received: int = 0,
            primacy: int = 100) -> Command:
    return Command(device_id="hw-1", setpoint=Setpoint(mode=Mode.LIMIT, level=level),
                   start=T0 + start * H, end=None if end is None else T0 + end * H,
                   source=source, received_at=T0 + received * timedelta(seconds=1),
                   primacy=primacy)


def test_dispatch_round_trips_through_json_and_keys_by_plan_sequence_and_step() -> None:
    whole = Dispatch(plan=plan(step(Mode.CHARGE, 0, 1, power_kw=2.0), step(Mode.HOLD, 1, 2),
                               random_delay=timedelta(seconds=90), sequence=7),
                     device=BATTERY)
    one_step = Dispatch(plan=whole.plan, device=BATTERY, step=1)
    assert decode_dispatch(encode_dispatch(whole)) == whole
    assert decode_dispatch(encode_dispatch(one_step).decode()) == one_step
    assert (whole.key, one_step.key) == ("p1#7#plan", "p1#7#step1")


@pytest.mark.parametrize("data", [b"", b"{}", b"[1]", b'{"plan": 3, "device": {}}'])
def test_anything_else_is_refused(data: bytes) -> None:
    with pytest.raises(ValidationError):
        decode_dispatch(data)


def test_newest_command_wins_where_plans_overlap_and_lower_primacy_beats_all() -> None:
    book = CommandBook()
    book.record(command("plan-1", 0, 4, 60, received=1))
    book.record(command("plan-2", 2, None, 30, received=2))
    assert book.setpoint("hw-1", T0 + H) == Setpoint(mode=Mode.LIMIT, level=60)
    assert book.setpoint("hw-1", T0 + 3 * H) == Setpoint(mode=Mode.LIMIT, level=30)
    book.record(command("override", 0, 5, 0, received=0, primacy=0))
    assert book.active("hw-1", T0 + 3 * H).source == "plan-2 capped by override"  # type: ignore[union-attr]
    assert book.setpoint("hw-1", T0 + 3 * H) == Setpoint(mode=Mode.LIMIT, level=0, cap=0)
    book.withdraw("hw-1", "override")
    assert book.active("hw-1", T0 + 3 * H).source == "plan-2"  # type: ignore[union-attr]
    assert book.setpoint("hw-1", T0 - H) is None
    assert book.setpoint(HEATER.device_id, T0 + 4 * H) == Setpoint(mode=Mode.LIMIT, level=30)
    assert [c.source for c in book.commands("hw-1")] == ["plan-1", "plan-2"]


def test_pruning_forgets_only_commands_that_have_ended() -> None:
    book = CommandBook()
    book.record(command("old", 0, 1, 60))
    book.record(command("open", 0, None, 40))
    book.record(command("later", 2, 3, 20, received=1))
    book.prune(T0 + 2 * H)
    assert [c.source for c in book.commands("hw-1")] == ["open", "later"]
    assert book.setpoint("hw-1", T0 + 2 * H) == Setpoint(mode=Mode.LIMIT, level=20)


def test_an_override_caps_the_plan_and_never_raises_it() -> None:
    book = CommandBook()
    book.record(command("plan", 0, 4, 30, received=1))
    book.record(command("cap", 0, 2, 50, received=2, primacy=0))
    assert book.setpoint("hw-1", T0 + H) == Setpoint(mode=Mode.LIMIT, level=30, cap=50)
    assert book.setpoint("hw-1", T0 + 3 * H) == Setpoint(mode=Mode.LIMIT, level=30)  # lifted
    charging = Command(device_id="hw-1", setpoint=Setpoint(mode=Mode.CHARGE, power_kw=3.0),
                       start=T0, end=None, source="charge", received_at=T0 + 3 * H)
    book.record(charging)
    assert book.setpoint("hw-1", T0 + H) == Setpoint(mode=Mode.CHARGE, power_kw=3.0, cap=50)
    off = Command(device_id="hw-1", setpoint=Setpoint(mode=Mode.HOLD, energized=False),
                  start=T0, end=None, source="off", received_at=T0 + 4 * H, primacy=0)
    book.record(off)  # the newest override: cease to energize, whatever the plan
    assert book.setpoint("hw-1", T0 + H) == Setpoint(mode=Mode.HOLD, energized=False)
    assert book.setpoint("hw-2", T0 + H) is None
