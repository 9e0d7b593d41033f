"""policies.flexibility: availability windows, requested kW per signal kind, the opt decision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from oadr.messages import OptReason, OptType
from policies.flexibility import decide, requested_kw, unavailable
from ven.fleet import AvailabilitySpec, DeviceClass, ResourceSpec
from ven.records import GridSignal, Purpose, SignalInterval

T0 = datetime(2024, 2, 1, 17, 0, tzinfo=UTC)
M = timedelta(minutes=1)
FLEX = "http://dso.example/programs/flex"

# Two resources: baseline 30 + 50 = 80 kW, rated 40 + 80 = 120 kW, flexible 20 + 60 = 80 kW.
HP = ResourceSpec(resource_id="hp", device_class=DeviceClass.HEAT_PUMP, rated_kw=40.0,
                  baseline_kw=30.0, flexible_kw=20.0)
BAT = ResourceSpec(resource_id="bat", device_class=DeviceClass.BATTERY, rated_kw=80.0,
                   baseline_kw=50.0, flexible_kw=60.0)
BOTH = (HP, BAT)


def signal(name: str, type_: str, *values: float, unit: str | None = None,
           resources: tuple[str, ...] = ("hp", "bat"), test_event: bool = False,
           open_end: bool = False, event_id: str = "e1") -> GridSignal:
    values = values or (1.0,)
    intervals = tuple(
        SignalInterval(start=T0 + 10 * i * M,
                       end=None if open_end and i == len(values) - 1 else T0 + 10 * (i + 1) * M,
                       value=v)
        for i, v in enumerate(values))
    return GridSignal(program=FLEX, event_id=event_id, modification_number=0, priority=0,
                      signal_name=name, signal_type=type_, signal_id="s", unit=unit,
                      intervals=intervals, resources=resources, purpose=Purpose.RESPONSE,
                      test_event=test_event)


def window(start: datetime, minutes: int, *resources: str, opt: OptType = OptType.OPT_OUT,
           market_context: str | None = None) -> AvailabilitySpec:
    return AvailabilitySpec(opt_id=f"opt-{start:%H%M}", opt_type=opt,
                            reason=OptReason.OVERRIDE_STATUS, start=start,
                            duration=minutes * M, resources=resources,
                            market_context=market_context)


# --- unavailable ------------------------------------------------------------------------

@pytest.mark.parametrize("windows,end,expected", [
    ([], T0 + 30 * M, frozenset()),
    ([window(T0 - 10 * M, 15, "hp")], T0 + 30 * M, {"hp"}),  # overlaps the start
    ([window(T0 + 20 * M, 60, "bat")], T0 + 30 * M, {"bat"}),  # overlaps the end
    ([window(T0 - 10 * M, 10, "hp")], T0 + 30 * M, frozenset()),  # ends as the event starts
    ([window(T0 + 30 * M, 10, "hp")], T0 + 30 * M, frozenset()),  # starts as the event ends
    ([window(T0 + 5 * M, 5)], T0 + 30 * M, {"hp", "bat"}),  # no resources named: all
    ([window(T0 + 5 * M, 5, "hp", "elsewhere")], T0 + 30 * M, {"hp"}),
    ([window(T0 + 5 * M, 5, "hp", opt=OptType.OPT_IN)], T0 + 30 * M, frozenset()),
    ([window(T0 + timedelta(days=9), 5, "hp")], None, {"hp"}),  # open-ended event
    ([window(T0 + timedelta(days=9), 5, "hp")], T0 + 30 * M, frozenset()),
], ids=["none", "over-start", "over-end", "touching-before", "touching-after", "all",
        "foreign-name", "opt-in-window", "open-end", "later"])
def test_unavailable(windows: list[AvailabilitySpec], end: datetime | None,
                     expected: frozenset[str]) -> None:
    assert unavailable(windows, ["hp", "bat"], T0, end) == expected


# --- requested_kw -----------------------------------------------------------------------

@pytest.mark.parametrize("sig,expected", [
    (signal("LOAD_DISPATCH", "setpoint", 50.0, unit="kW"), 30.0),  # 80 -> 50
    (signal("LOAD_DISPATCH", "setpoint", 120.0, unit="kW"), 40.0),  # 80 -> 120: import more
    (signal("LOAD_DISPATCH", "setpoint", 60.0, 20.0, 70.0, unit="kW"), 60.0),  # largest interval
    (signal("LOAD_DISPATCH", "setpoint", 20_000.0, unit="W"), 60.0),
    (signal("LOAD_DISPATCH", "setpoint", 0.05, unit="MW"), 30.0),
    (signal("LOAD_DISPATCH", "setpoint", 50.0), 30.0),  # no unit: kW
    (signal("LOAD_DISPATCH", "delta", -25.0, unit="kW"), 25.0),
    (signal("LOAD_CONTROL", "x-loadControlCapacity", 0.5), 20.0),  # 80 - 0.5 * 120
    (signal("LOAD_CONTROL", "x-loadControlCapacity", 0.0), 80.0),  # off
    (signal("LOAD_CONTROL", "x-loadControlCapacity", 1.0), 0.0),  # clipped at 0
    (signal("LOAD_CONTROL", "x-loadControlPercentOffset", -25.0), 20.0),
    (signal("LOAD_CONTROL", "x-loadControlLevelOffset", -1.5), 40.0),
    (signal("LOAD_CONTROL", "x-loadControlLevelOffset", 6.0), 80.0),  # capped at the band
    (signal("LOAD_CONTROL", "x-loadControlSetpoint", 19.0), 80.0),
    (signal("SIMPLE", "level", 1.0), 80.0 / 3),
    (signal("SIMPLE", "level", 0.0, 3.0), 80.0),
    (signal("CHARGE_STATE", "setpoint", 90.0), 0.0),
    (signal("ELECTRICITY_PRICE", "price", 0.35, unit="GBP/kWh"), 0.0),
], ids=["dispatch-setpoint-down", "dispatch-setpoint-up", "dispatch-max", "dispatch-W",
        "dispatch-MW", "dispatch-no-unit", "dispatch-delta", "capacity-half", "capacity-off",
        "capacity-full", "percent-offset", "level-offset", "level-offset-capped", "setpoint",
        "simple-1", "simple-3", "charge-state", "price"])
def test_requested_kw(sig: GridSignal, expected: float) -> None:
    assert requested_kw(sig, BOTH) == pytest.approx(expected)


def test_requested_kw_counts_only_given_resources() -> None:
    assert requested_kw(signal("SIMPLE", "level", 3.0), [HP]) == pytest.approx(20.0)


# --- decide -----------------------------------------------------------------------------

def test_test_event_is_acknowledged() -> None:
    got = decide([signal("SIMPLE", "level", 3.0, test_event=True, resources=())], BOTH, [], 0.5)
    assert got.opt is OptType.OPT_IN and "test event" in got.reason


def test_no_resource_targeted_opts_out() -> None:
    got = decide([signal("SIMPLE", "level", 1.0, resources=("elsewhere",))], BOTH, [], 0.5)
    assert got.opt is OptType.OPT_OUT and got.reason == "no resource targeted"


def test_nothing_requested_opts_in_with_numbers() -> None:
    got = decide([signal("ELECTRICITY_PRICE", "price", 0.3)], BOTH, [], 0.5)
    assert got.opt is OptType.OPT_IN
    assert got.reason == ("requested 0.0 kW, available 80.0 kW from 2 of 2 resources, "
                          "need 50%: nothing to deliver")


@pytest.mark.parametrize("setpoint,windows,min_share,opt,reason", [
    (-40.0, [], 0.5, OptType.OPT_IN,
     "requested 120.0 kW, available 80.0 kW from 2 of 2 resources, need 50%"),
    (-40.0, [], 0.7, OptType.OPT_OUT,
     "requested 120.0 kW, available 80.0 kW from 2 of 2 resources, need 70%"),
    (-40.0, [window(T0 + 5 * M, 60, "bat")], 0.5, OptType.OPT_OUT,
     "requested 120.0 kW, available 20.0 kW from 1 of 2 resources, need 50%"),
    (40.0, [window(T0 + 5 * M, 60, "bat")], 0.5, OptType.OPT_IN,  # 40 kW asked, 20 offered
     "requested 40.0 kW, available 20.0 kW from 1 of 2 resources, need 50%"),
    (-40.0, [window(T0 + 20 * M, 60, "bat")], 0.5, OptType.OPT_IN,  # after the event
     "requested 120.0 kW, available 80.0 kW from 2 of 2 resources, need 50%"),
    (-40.0, [window(T0 + 5 * M, 60, "bat", market_context="http://other")], 0.5,
     OptType.OPT_IN, "requested 120.0 kW, available 80.0 kW from 2 of 2 resources, need 50%"),
    (-40.0, [window(T0 + 5 * M, 60, "bat", market_context=FLEX)], 0.5, OptType.OPT_OUT,
     "requested 120.0 kW, available 20.0 kW from 1 of 2 resources, need 50%"),
], ids=["enough", "threshold-not-met", "unavailable", "smaller-request", "window-after",
        "other-program-window", "same-program-window"])
def test_decide_threshold(setpoint: float, windows: list[AvailabilitySpec], min_share: float,
                          opt: OptType, reason: str) -> None:
    # One 20-minute dispatch: baseline 80 kW to `setpoint`.
    sig = signal("LOAD_DISPATCH", "setpoint", setpoint, setpoint, unit="kW")
    got = decide([sig], BOTH, windows, min_share)
    assert (got.opt, got.reason) == (opt, reason)


def test_decide_exact_threshold_opts_in() -> None:
    sig = signal("LOAD_DISPATCH", "delta", -160.0, unit="kW")
    assert decide([sig], BOTH, [], 0.5).opt is OptType.OPT_IN
    assert decide([sig], BOTH, [], 0.51).opt is OptType.OPT_OUT


def test_decide_takes_the_largest_signal_and_the_union_of_resources() -> None:
    simple = signal("SIMPLE", "level", 1.0, resources=("hp",))
    dispatch = signal("LOAD_DISPATCH", "delta", -100.0, unit="kW", resources=("bat",))
    got = decide([simple, dispatch], BOTH, [], 0.9)
    assert got.opt is OptType.OPT_OUT
    assert got.reason == "requested 100.0 kW, available 80.0 kW from 2 of 2 resources, need 90%"


def test_open_ended_event_meets_any_later_window() -> None:
    sig = signal("LOAD_DISPATCH", "delta", -100.0, unit="kW", open_end=True)
    later = window(T0 + timedelta(days=3), 60)
    assert decide([sig], BOTH, [], 0.5).opt is OptType.OPT_IN
    got = decide([sig], BOTH, [later], 0.5)
    assert got.opt is OptType.OPT_OUT and "from 0 of 2 resources" in got.reason
