"""ven.signals: support, targets, purpose, start offsets, GridSignal building, priority."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from oadr.messages import (
    ActivePeriod, Event, EventSignal, EventStatus, Interval, ItemBase, Target,
)
from ven.fleet import ResourceSpec, VenSpec
from ven.records import GridSignal, Purpose, SignalInterval
from ven.signals import (
    grid_signals, purpose, reached_resources, signal_resources, start_offsets, unit_of,
    unsupported, value_at, winning,
)

T0 = datetime(2024, 2, 1, 17, 0, tzinfo=UTC)
M = timedelta(minutes=1)
FLEX = "http://dso.example/programs/flex"
TARIFF = "http://supplier.example/tariffs/agile"
KW = ItemBase(kind="powerReal", description="RealPower", units="W", si_scale="k")


def resource(rid: str) -> ResourceSpec:
    return ResourceSpec(resource_id=rid, rated_kw=10.0, baseline_kw=5.0, flexible_kw=4.0)


SPEC = VenSpec(name="agg-1", vtn_url="https://vtn.example/OpenADR2/Simple/2.0b",
               resources=(resource("r1"), resource("r2"), resource("r3")))


def sig(name: str = "SIMPLE", type_: str = "level", *values_minutes: tuple[float, int],
        sid: str = "s0", targets: Target | None = None,
        item_base: ItemBase | None = None) -> EventSignal:
    pairs = values_minutes or ((1.0, 10),)
    return EventSignal(signal_name=name, signal_type=type_, signal_id=sid,
                       intervals=tuple(Interval(uid=i, duration=m * M, payload=v)
                                       for i, (v, m) in enumerate(pairs)),
                       targets=targets, item_base=item_base)


def event(*signals: EventSignal, targets: Target = Target(), market_context: str = FLEX,
          duration: timedelta | None = None, start_after: timedelta | None = None,
          ramp_up: timedelta | None = None, status: EventStatus = EventStatus.FAR,
          priority: int = 0, test_event: bool = False) -> Event:
    signals = signals or (sig(),)
    if duration is None:
        duration = sum((iv.duration for iv in signals[0].intervals), timedelta(0))
    period = ActivePeriod(dtstart=T0, duration=duration, start_after=start_after,
                          ramp_up=ramp_up, recovery=5 * M)
    return Event(event_id="e1", modification_number=2, market_context=market_context,
                 created=T0 - 60 * M, status=status, active_period=period, signals=signals,
                 targets=targets, priority=priority, test_event=test_event)


# --- support ----------------------------------------------------------------------------

def test_unsupported_names_each_signal_we_cannot_act_on() -> None:
    ev = event(sig("SIMPLE", "level"), sig("LOAD_DISPATCH", "delta", sid="s1"),
               sig("SIMPLE", "price", sid="s2"), sig("BID_LOAD", "setpoint", sid="s3"))
    assert unsupported(ev) == ["SIMPLE/price", "BID_LOAD/setpoint"]


@pytest.mark.parametrize("name,type_", [
    ("SIMPLE", "level"), ("LOAD_CONTROL", "x-loadControlCapacity"),
    ("LOAD_CONTROL", "x-loadControlSetpoint"), ("LOAD_DISPATCH", "setpoint"),
    ("ELECTRICITY_PRICE", "priceMultiplier"), ("CHARGE_STATE", "delta"),
], ids=lambda v: str(v))
def test_supported_pairs_pass(name: str, type_: str) -> None:
    assert unsupported(event(sig(name, type_))) == []


# --- targets ----------------------------------------------------------------------------

@pytest.mark.parametrize("targets,expected", [
    (Target(), ("r1", "r2", "r3")),
    (Target(ven_ids=("VEN-1",)), ("r1", "r2", "r3")),
    (Target(group_ids=("g",)), ("r1", "r2", "r3")),
    (Target(party_ids=("p",)), ("r1", "r2", "r3")),
    (Target(resource_ids=("r3", "r1")), ("r1", "r3")),  # spec order, not target order
    (Target(resource_ids=("r2", "elsewhere")), ("r2",)),  # resources we lack are ignored
    (Target(resource_ids=("elsewhere",)), ()),
    (Target(ven_ids=("VEN-1",), resource_ids=("r2",)), ("r2",)),
], ids=["empty", "ven", "group", "party", "resources", "foreign-ignored", "only-foreign",
        "ven-and-resource"])
def test_reached_resources(targets: Target, expected: tuple[str, ...]) -> None:
    assert reached_resources(event(targets=targets), SPEC) == expected


def test_signal_targets_narrow_the_event_targets() -> None:
    narrow = sig(sid="a", targets=Target(resource_ids=("r3", "r2")))
    venwide = sig(sid="b", targets=Target(ven_ids=("VEN-1",)))
    ev = event(narrow, venwide, targets=Target(resource_ids=("r1", "r2")))
    assert signal_resources(ev, narrow, SPEC) == ("r2",)  # r3 is outside the event's targets
    assert signal_resources(ev, venwide, SPEC) == ("r1", "r2")


# --- purpose ----------------------------------------------------------------------------

@pytest.mark.parametrize("signals,context,expected", [
    ((sig("ELECTRICITY_PRICE", "price"),), TARIFF, Purpose.ROUTINE),
    ((sig("ELECTRICITY_PRICE", "price"),), FLEX, Purpose.RESPONSE),  # a response program
    ((sig("ELECTRICITY_PRICE", "price"), sig("SIMPLE", "level", sid="s1")), TARIFF,
     Purpose.RESPONSE),
    ((sig("LOAD_DISPATCH", "setpoint"),), TARIFF, Purpose.RESPONSE),
], ids=["price-only", "price-in-response-program", "price-and-simple", "dispatch"])
def test_purpose(signals: tuple[EventSignal, ...], context: str, expected: Purpose) -> None:
    spec = replace(SPEC, response_programs=(FLEX,))
    assert purpose(event(*signals, market_context=context), spec) is expected


# --- start offsets ----------------------------------------------------------------------

def test_start_offsets_within_bounds_whole_seconds_and_seeded() -> None:
    ev = event(start_after=5 * M)
    names = [f"r{i}" for i in range(200)]
    got = start_offsets(ev, names, random.Random(7))
    assert [r for r, _ in got] == names
    assert all(timedelta(0) <= d <= 5 * M and d.microseconds == 0 for _, d in got)
    assert len({d for _, d in got}) > 1  # actually random, not a constant
    assert got == start_offsets(ev, names, random.Random(7))
    assert got != start_offsets(ev, names, random.Random(8))


@pytest.mark.parametrize("start_after", [None, timedelta(0)], ids=["none", "zero"])
def test_no_start_offsets_without_startafter(start_after: timedelta | None) -> None:
    assert start_offsets(event(start_after=start_after), ["r1"], random.Random(1)) == ()


# --- grid signals -----------------------------------------------------------------------

def test_intervals_become_absolute_utc_times() -> None:
    ev = event(sig("LOAD_DISPATCH", "setpoint", (10.0, 15), (20.0, 30), (0.0, 15)))
    (gs,) = grid_signals(ev, SPEC, ())
    assert gs.intervals == (
        SignalInterval(start=T0, end=T0 + 15 * M, value=10.0),
        SignalInterval(start=T0 + 15 * M, end=T0 + 45 * M, value=20.0),
        SignalInterval(start=T0 + 45 * M, end=T0 + 60 * M, value=0.0),
    )


def test_open_ended_event_leaves_last_interval_without_end() -> None:
    ev = event(sig("SIMPLE", "level", (1.0, 10), (2.0, 10)), duration=timedelta(0))
    (gs,) = grid_signals(ev, SPEC, ())
    assert gs.intervals[0].end == T0 + 10 * M
    assert gs.intervals[1] == SignalInterval(start=T0 + 10 * M, end=None, value=2.0)


def test_zero_length_interval_has_no_end() -> None:
    ev = event(sig("SIMPLE", "level", (2.0, 0)), duration=timedelta(0))
    assert grid_signals(ev, SPEC, ())[0].intervals == (SignalInterval(start=T0, end=None,
                                                                      value=2.0),)


def test_grid_signal_copies_event_fields() -> None:
    narrow = sig("LOAD_DISPATCH", "delta", sid="d", targets=Target(resource_ids=("r2",)),
                 item_base=KW)
    ev = event(sig(), narrow, priority=4, test_event=True, ramp_up=2 * M)
    offsets = (("r1", timedelta(seconds=30)), ("r2", timedelta(seconds=45)))
    simple, dispatch = grid_signals(ev, SPEC, offsets)
    assert (simple.signal_name, simple.signal_id, simple.unit) == ("SIMPLE", "s0", None)
    assert simple.resources == ("r1", "r2", "r3")
    assert simple.start_offsets == offsets
    assert dispatch.resources == ("r2",)
    assert dispatch.start_offsets == (("r2", timedelta(seconds=45)),)
    assert dispatch.unit == "kW"
    assert (dispatch.program, dispatch.event_id, dispatch.modification_number) == (FLEX, "e1", 2)
    assert (dispatch.priority, dispatch.test_event, dispatch.purpose) == (4, True,
                                                                          Purpose.RESPONSE)
    assert (dispatch.ramp_up, dispatch.recovery) == (2 * M, 5 * M)


def test_cancelled_event_yields_no_signals() -> None:
    assert grid_signals(event(status=EventStatus.CANCELLED), SPEC, ()) == ()


@pytest.mark.parametrize("item,expected", [
    (None, None),
    (KW, "kW"),
    (ItemBase(kind="powerReal", description="RealPower", units="W", si_scale="M"), "MW"),
    (ItemBase(kind="energyReal", description="RealEnergy", units="Wh", si_scale="k"), "kWh"),
    (ItemBase(kind="powerReal", description="RealPower", units="W"), "W"),
    (ItemBase(kind="currencyPerKWh", description="currencyPerKWh", units="GBP"), "GBP/kWh"),
    (ItemBase(kind="currencyPerKW", description="currencyPerKW", units="EUR"), "EUR/kW"),
    (ItemBase(kind="currency", description="currency", units="GBP"), "GBP"),
    (ItemBase(kind="customUnit", description="x", units=""), None),
], ids=["none", "kW", "MW", "kWh", "W", "GBP/kWh", "EUR/kW", "GBP", "no-units"])
def test_unit_of(item: ItemBase | None, expected: str | None) -> None:
    assert unit_of(item) == expected


# --- priority ---------------------------------------------------------------------------

def grid(event_id: str, priority: int, *, start: datetime = T0, minutes: int = 60,
         value: float = 1.0, test_event: bool = False, ramp_up: timedelta | None = None,
         resources: tuple[str, ...] = ("r1",), end_open: bool = False,
         offsets: tuple[tuple[str, timedelta], ...] = ()) -> GridSignal:
    end = None if end_open else start + minutes * M
    return GridSignal(program=FLEX, event_id=event_id, modification_number=0, priority=priority,
                      signal_name="SIMPLE", signal_type="level", signal_id="s0", unit=None,
                      intervals=(SignalInterval(start=start, end=end, value=value),),
                      resources=resources, purpose=Purpose.RESPONSE, test_event=test_event,
                      ramp_up=ramp_up, start_offsets=offsets)


NOW = T0 + 30 * M


@pytest.mark.parametrize("signals,winner", [
    ([grid("a", 3), grid("b", 1), grid("c", 2)], "b"),
    ([grid("a", 0), grid("b", 7)], "b"),
    ([grid("b", 7), grid("a", 0)], "b"),
    ([grid("a", 0), grid("b", 0)], "a"),
    ([grid("a", 1, test_event=True), grid("b", 5)], "b"),
    ([grid("a", 1, start=T0 + 40 * M), grid("b", 5)], "b"),  # a not started yet
    ([grid("a", 1, start=T0 - 60 * M), grid("b", 5)], "b"),  # a over
    ([grid("a", 1, resources=("r2",)), grid("b", 5)], "b"),  # a does not reach r1
    ([grid("a", 2, start=T0 - 60 * M, minutes=120), grid("b", 2, start=T0)], "b"),
    ([grid("z", 2), grid("b", 2)], "b"),
], ids=["lowest-wins", "zero-loses", "zero-loses-any-order", "tie-event-id", "test-never-wins",
        "not-yet", "over", "other-resource", "tie-later-start", "tie-id-any-order"])
def test_winning(signals: list[GridSignal], winner: str) -> None:
    got = winning(signals, "r1", "SIMPLE", NOW)
    assert got is not None and got.event_id == winner


def test_winning_none_when_nothing_applies() -> None:
    assert winning([grid("a", 1, test_event=True)], "r1", "SIMPLE", NOW) is None
    assert winning([grid("a", 1)], "r1", "LOAD_DISPATCH", NOW) is None
    assert winning([grid("a", 1)], "r1", "SIMPLE", T0 + 60 * M) is None  # end is exclusive


def test_ramp_up_brings_the_window_forward() -> None:
    early = T0 - 5 * M
    assert winning([grid("a", 1)], "r1", "SIMPLE", early) is None
    assert winning([grid("a", 1, ramp_up=5 * M)], "r1", "SIMPLE", early) is not None
    assert winning([grid("a", 1, ramp_up=4 * M)], "r1", "SIMPLE", early) is None


def test_open_ended_signal_stays_in_force() -> None:
    s = grid("a", 1, end_open=True)
    assert winning([s], "r1", "SIMPLE", T0 + timedelta(days=30)) is s


def test_start_offset_shifts_the_window_per_resource() -> None:
    s = grid("a", 1, resources=("r1", "r2"), offsets=(("r2", 10 * M),))
    at = T0 + 65 * M
    assert winning([s], "r1", "SIMPLE", at) is None
    assert winning([s], "r2", "SIMPLE", at) is s


# --- value_at ---------------------------------------------------------------------------

def test_value_at_follows_intervals_and_offsets() -> None:
    ev = event(sig("SIMPLE", "level", (1.0, 10), (3.0, 10)))
    (gs,) = grid_signals(ev, SPEC, (("r2", 2 * M),))
    assert value_at(gs, "r1", T0 - timedelta(seconds=1)) is None
    assert value_at(gs, "r1", T0) == 1.0
    assert value_at(gs, "r1", T0 + 10 * M) == 3.0
    assert value_at(gs, "r2", T0 + 11 * M) == 1.0  # r2 runs two minutes late
    assert value_at(gs, "r1", T0 + 20 * M) is None
    assert value_at(gs, "elsewhere", T0) is None


def test_value_at_zero_length_interval_gives_way_to_the_next() -> None:
    ev = event(sig("SIMPLE", "level", (2.0, 0), (1.0, 10)), duration=10 * M)
    (gs,) = grid_signals(ev, SPEC, ())
    assert value_at(gs, "r1", T0 + M) == 1.0
