"""policies.dispatch: sharing a fleet power target by flexibility, and re-dispatch when devices
fail, go offline or deviate."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

import pytest

from bridge.models import Channel, Device
from policies.dispatch import Allocation, DeviceState, allocate, redispatch
from ven.fleet import DeviceClass


def state(n: int, *, down: float = 1.0, up: float = 0.0, current: float = 2.0,
          available: bool = True) -> DeviceState:
    device = Device(device_id=f"d{n}", resource_id="r", device_class=DeviceClass.BATTERY,
                    channel=Channel.BATTERY_HUB, network_area="A", rated_import_kw=5.0)
    return DeviceState(device=device, available=available, flex_down_kw=down, flex_up_kw=up,
                       current_kw=current)


def kw(a: Allocation) -> dict[str, float]:
    return {device_id: share.kw for device_id, share in a.shares.items()}


def follow(a: Allocation, states: list[DeviceState]) -> list[DeviceState]:
    """The devices' states once each has delivered its share exactly."""
    return [replace(s, current_kw=a.shares[s.device.device_id].expected_kw,
                    flex_down_kw=s.flex_down_kw + a.shares[s.device.device_id].kw)
            if s.device.device_id in a.shares and a.target_kw < 0 else s for s in states]


# --- allocate ---------------------------------------------------------------------------

@pytest.mark.parametrize("target,states,expected,shortfall", [
    # Proportional to flexibility, the same fraction (here 50 %) of each.
    (-3.0, [state(0, down=1.0), state(1, down=2.0), state(2, down=3.0)],
     {"d0": -0.5, "d1": -1.0, "d2": -1.5}, 0.0),
    # A positive target raises import and uses the upward flexibility.
    (2.0, [state(0, down=5.0, up=1.0), state(1, down=5.0, up=3.0)],
     {"d0": 0.5, "d1": 1.5}, 0.0),
    # More than the fleet can give: each gives all it has, the rest is shortfall.
    (-10.0, [state(0, down=1.0), state(1, down=3.0)], {"d0": -1.0, "d1": -3.0}, 6.0),
    # Unavailable devices and devices without flexibility in the direction take nothing.
    (-1.0, [state(0, down=2.0, available=False), state(1, down=0.0), state(2, down=2.0)],
     {"d2": -1.0}, 0.0),
    (0.0, [state(0), state(1)], {}, 0.0),
    (-1.0, [], {}, 1.0),
    (-1.0, [state(0, available=False)], {}, 1.0),
    (1.0, [state(0, down=4.0, up=0.0)], {}, 1.0),
], ids=["proportional", "turn-up", "shortfall", "unavailable", "zero-target", "no-devices",
        "none-available", "wrong-direction"])
def test_allocate(target: float, states: list[DeviceState], expected: dict[str, float],
                  shortfall: float) -> None:
    a = allocate(target, states)
    assert kw(a) == pytest.approx(expected)
    assert a.target_kw == target
    assert a.shortfall_kw == pytest.approx(shortfall)
    assert a.delivered_kw == pytest.approx(sum(expected.values()))
    assert a.dropped == ()


def test_allocate_never_exceeds_a_device_flexibility() -> None:
    states = [state(i, down=0.1 + (i % 7) * 0.5) for i in range(500)]
    for target in (-10.0, -500.0, -5000.0):
        a = allocate(target, states)
        for s in states:
            assert abs(a.shares[s.device.device_id].kw) <= s.flex_down_kw * (1 + 1e-12)
        assert abs(a.delivered_kw) + a.shortfall_kw == pytest.approx(abs(target))


def test_share_records_the_import_to_expect() -> None:
    a = allocate(-1.0, [state(0, down=2.0, current=3.0)])
    assert a.shares["d0"].expected_kw == pytest.approx(2.0)


def test_negative_flexibility_is_refused() -> None:
    with pytest.raises(ValueError, match="d0"):
        state(0, down=-1.0)


# --- redispatch -------------------------------------------------------------------------

def test_devices_on_track_keep_their_share() -> None:
    states = [state(i, down=2.0) for i in range(4)]
    a = allocate(-4.0, states)
    b = redispatch(a, follow(a, states), -4.0, deviation_margin=0.1)
    assert kw(b) == pytest.approx(kw(a))
    assert b.dropped == () and b.shortfall_kw == 0.0


@pytest.mark.parametrize("change", [
    lambda s: replace(s, available=False),
    lambda s: replace(s, current_kw=s.current_kw + 0.5),  # delivers half its 1 kW share
    None,  # missing from the states
], ids=["offline", "deviates", "missing"])
def test_failed_device_is_replaced(change: Callable[[DeviceState], DeviceState] | None) -> None:
    states = [state(i, down=2.0) for i in range(4)] + [state(9, down=3.0, available=False)]
    a = allocate(-4.0, states)  # d0..d3 give 1 kW each
    now = follow(a, states)
    now[4] = replace(now[4], available=True)  # a new device comes online
    if change is None:
        del now[0]
    else:
        now[0] = change(now[0])
    b = redispatch(a, now, -4.0, deviation_margin=0.2)
    assert b.dropped == ("d0",)
    assert "d0" not in b.shares
    assert b.delivered_kw == pytest.approx(-4.0) and b.shortfall_kw == 0.0
    # The 1 kW gap is shared by the 6 kW of headroom left: 1 kW each on d1..d3, 3 kW on d9.
    extra = 1 / 6
    assert kw(b) == pytest.approx({"d1": -1 - extra, "d2": -1 - extra, "d3": -1 - extra,
                                   "d9": -3 * extra})
    assert b.shares["d9"].expected_kw == pytest.approx(2.0 - 3 * extra)
    assert b.shares["d1"].expected_kw == pytest.approx(2.0 - 1 - extra)


def test_deviation_within_the_margin_is_kept() -> None:
    states = [state(i, down=2.0) for i in range(2)]
    a = allocate(-2.0, states)
    now = follow(a, states)
    now[0] = replace(now[0], current_kw=now[0].current_kw + 0.15)  # 15 % of its 1 kW share
    assert redispatch(a, now, -2.0, deviation_margin=0.2).dropped == ()
    assert redispatch(a, now, -2.0, deviation_margin=0.1).dropped == ("d0",)


def test_before_the_interval_only_availability_is_judged() -> None:
    states = [state(i, down=2.0) for i in range(4)]
    a = allocate(-4.0, states)
    # not in force yet: every device still draws its 2 kW, 100 % off its share's import
    b = redispatch(a, states, -4.0, deviation_margin=0.2, in_force=False)
    assert b == a
    assert redispatch(a, states, -4.0, deviation_margin=0.2).dropped == ("d0", "d1", "d2", "d3")
    offline = [replace(states[0], available=False)] + states[1:]
    c = redispatch(a, offline, -4.0, deviation_margin=0.2, in_force=False)
    assert c.dropped == ("d0",) and c.shortfall_kw == 0.0


def test_a_share_not_yet_delivered_uses_up_its_device_flexibility() -> None:
    states = [state(0, down=2.0), state(1, down=2.0), state(9, down=2.0, available=False)]
    a = allocate(-2.0, states)  # d0 and d1 1 kW each, d9 offline
    now = [replace(states[0], available=False), states[1], replace(states[2], available=True)]
    b = redispatch(a, now, -2.0, deviation_margin=0.2, in_force=False)
    # d1 still draws 2 kW with 2 kW of flexibility, 1 kW of it already asked: 1 kW of headroom
    # against d9's 2 kW, so the 1 kW gap goes 1/3 to d1, 2/3 to d9.
    assert kw(b) == pytest.approx({"d1": -1 - 1 / 3, "d9": -2 / 3})
    assert b.shares["d1"].expected_kw == pytest.approx(2.0 - 1 - 1 / 3)


def test_a_redispatch_with_every_device_on_track_changes_no_share() -> None:
    rng = random.Random(3)
    for _ in range(200):  # fleets whose shares do not add up exactly in floating point
        states = [state(i, down=round(rng.uniform(0.5, 4.0), 3),
                        current=round(rng.uniform(-1.0, 3.0), 3)) for i in range(10)]
        a = allocate(-15.0 * rng.uniform(0.3, 1.0), states)
        failed = [replace(s, available=False) if s.device.device_id in ("d0", "d5") else s
                  for s in states]
        b = redispatch(a, follow(a, failed), a.target_kw, deviation_margin=0.2)
        on_track = [replace(s, available=False) if s.device.device_id in ("d0", "d5") else s
                    for s in follow(b, states)]
        c = redispatch(b, on_track, a.target_kw, deviation_margin=0.2)
        assert c.shares == b.shares  # equal to the last bit: nothing to send again


def test_smaller_target_scales_the_kept_shares_down() -> None:
    states = [state(0, down=1.0), state(1, down=3.0)]
    a = allocate(-2.0, states)
    b = redispatch(a, follow(a, states), -1.0, deviation_margin=0.1)
    assert kw(b) == pytest.approx({"d0": -0.25, "d1": -0.75})
    assert b.shares["d1"].expected_kw == pytest.approx(2.0 - 0.75)
    assert redispatch(a, follow(a, states), 0.0, deviation_margin=0.1).shares == {}


def test_redispatch_reports_a_shortfall_when_flexibility_runs_out() -> None:
    states = [state(i, down=1.0) for i in range(4)]
    a = allocate(-3.0, states)
    now = follow(a, states)
    now[0] = replace(now[0], available=False)
    now[1] = replace(now[1], available=False)
    b = redispatch(a, now, -3.0, deviation_margin=0.1)
    assert b.delivered_kw == pytest.approx(-2.0)
    assert b.shortfall_kw == pytest.approx(1.0)


def test_reversing_the_target_is_refused() -> None:
    a = allocate(-1.0, [state(0)])
    with pytest.raises(ValueError, match="reverses"):
        redispatch(a, [state(0)], 1.0, deviation_margin=0.1)
    with pytest.raises(ValueError, match="margin"):
        redispatch(a, [state(0)], -1.0, deviation_margin=-0.1)


def test_100k_devices_with_20_percent_failing_mid_window() -> None:
    n = 100_000
    states = [state(i, down=1.0 + (i % 5) * 0.5, current=4.0) for i in range(n)]
    target = -120_000.0  # 60 % of the fleet's 200,000 kW flexibility
    a = allocate(target, states)
    assert a.delivered_kw == pytest.approx(target) and a.shortfall_kw == 0.0
    now = follow(a, states)
    for i in range(0, n, 5):  # every fifth device fails
        now[i] = replace(now[i], available=False)
    b = redispatch(a, now, target, deviation_margin=0.1)
    assert len(b.dropped) == n // 5
    assert b.delivered_kw == pytest.approx(target, rel=1e-6) and b.shortfall_kw == 0.0
    assert not set(b.dropped) & set(b.shares)
    for s in states[:1000]:
        share = b.shares.get(s.device.device_id)
        assert share is not None or s.device.device_id in b.dropped
        assert share is None or abs(share.kw) <= s.flex_down_kw * (1 + 1e-9)
    # Deterministic: the same inputs give the same allocation.
    assert redispatch(a, now, target, deviation_margin=0.1) == b
